-- pgflow-py SQL core: the baseline migration, the whole schema as of the first release.
--
-- Derived from sql/schema (each file in order, under a line naming it) by
--   python -m pgflow_worker._database.derive baseline
-- Once released it never changes: later changes to sql/schema reach existing databases through
-- later migrations (see docs/sql.md, "Changing the SQL").

-- ---- schema/0010_schema.sql ----

-- The pgflow schema; PUBLIC gets no privilege on it, nor on anything in it (0900_privileges.sql
-- revokes EXECUTE, which PostgreSQL gives PUBLIC on every new function, once everything exists).
create schema if not exists pgflow;
revoke all on schema pgflow from public;

-- ---- schema/0020_function_is_valid_slug.sql ----

-- Whether a flow or step slug is valid: 1 to 128 letters, digits or underscores, not starting
-- with a digit, and not 'run'.
create or replace function pgflow.is_valid_slug(slug text)
returns boolean
language sql
immutable
set search_path to pg_catalog, pg_temp
as $fn$
  select slug is not null
     and slug <> ''
     and length(slug) <= 128
     and slug ~ '^[a-zA-Z_][a-zA-Z0-9_]*$'
     and slug <> 'run'
$fn$;

-- ---- schema/0100_table_flows.sql ----

-- Flow definitions: one row per flow, with the flow-wide defaults of its steps' options.
create table pgflow.flows (
  flow_slug text primary key,
  opt_max_attempts integer not null default 3,
  opt_base_delay integer not null default 1,
  opt_timeout integer not null default 60,
  created_at timestamptz not null default now(),
  constraint slug_is_valid check (pgflow.is_valid_slug(flow_slug)),
  constraint opt_max_attempts_is_nonnegative check (opt_max_attempts >= 0),
  constraint opt_base_delay_is_nonnegative check (opt_base_delay >= 0),
  constraint opt_timeout_is_positive check (opt_timeout > 0)
);

-- ---- schema/0110_table_steps.sql ----

-- Step definitions: one row per step of a flow, numbered in the order they were added.
--
-- Conditions: `required_input_pattern` (DSL `if`) and `forbidden_input_pattern` (`if_not`) are
-- jsonb objects checked with `@>` when the step becomes ready, against the run input for a root
-- step and against `{dep_slug: output}` of its completed dependencies otherwise. `when_unmet`
-- says what an unmet condition does ('fail' the step and the run, 'skip' the step,
-- 'skip-cascade' it and everything downstream); `when_exhausted` says the same for a task that
-- ran out of attempts. The columns after `created_at` keep the order they were added in, which
-- is the order of the pgflow.steps row type.
create table pgflow.steps (
  flow_slug text not null references pgflow.flows (flow_slug),
  step_slug text not null,
  step_type text not null default 'single',
  step_index integer not null default 0,
  deps_count integer not null default 0,
  opt_max_attempts integer,
  opt_base_delay integer,
  opt_timeout integer,
  opt_start_delay integer,
  created_at timestamptz not null default now(),
  required_input_pattern jsonb,
  forbidden_input_pattern jsonb,
  when_unmet text not null default 'skip',
  when_exhausted text not null default 'fail',
  primary key (flow_slug, step_slug),
  unique (flow_slug, step_index),
  constraint slug_is_valid check (pgflow.is_valid_slug(step_slug)),
  constraint step_type_is_known check (step_type in ('single', 'map')),
  constraint deps_count_nonnegative check (deps_count >= 0),
  constraint opt_max_attempts_is_nonnegative check (opt_max_attempts is null or opt_max_attempts >= 0),
  constraint opt_base_delay_is_nonnegative check (opt_base_delay is null or opt_base_delay >= 0),
  constraint opt_timeout_is_positive check (opt_timeout is null or opt_timeout > 0),
  constraint opt_start_delay_is_nonnegative check (opt_start_delay is null or opt_start_delay >= 0),
  constraint required_input_pattern_is_object check (
    required_input_pattern is null or jsonb_typeof(required_input_pattern) = 'object'),
  constraint forbidden_input_pattern_is_object check (
    forbidden_input_pattern is null or jsonb_typeof(forbidden_input_pattern) = 'object'),
  constraint when_unmet_is_valid check (when_unmet in ('fail', 'skip', 'skip-cascade')),
  constraint when_exhausted_is_valid check (when_exhausted in ('fail', 'skip', 'skip-cascade'))
);

-- ---- schema/0120_table_deps.sql ----

-- Dependencies between the steps of a flow: `step_slug` waits for `dep_slug`.
create table pgflow.deps (
  flow_slug text not null references pgflow.flows (flow_slug),
  dep_slug text not null,
  step_slug text not null,
  created_at timestamptz not null default now(),
  primary key (flow_slug, dep_slug, step_slug),
  foreign key (flow_slug, dep_slug) references pgflow.steps (flow_slug, step_slug),
  foreign key (flow_slug, step_slug) references pgflow.steps (flow_slug, step_slug),
  constraint no_self_dependency check (dep_slug <> step_slug)
);

create index idx_deps_by_flow_step on pgflow.deps (flow_slug, step_slug);
create index idx_deps_by_flow_dep on pgflow.deps (flow_slug, dep_slug);

-- ---- schema/0130_table_workers.sql ----

-- Workers: one row per worker process, kept alive by its heartbeats.
create table pgflow.workers (
  worker_id uuid primary key,
  queue_name text not null,
  function_name text not null,
  started_at timestamptz not null default now(),
  deprecated_at timestamptz,
  stopped_at timestamptz,
  last_heartbeat_at timestamptz not null default now()
);

create index idx_workers_queue_name on pgflow.workers (queue_name);

-- ---- schema/0140_table_runs.sql ----

-- Runs: one row per run of a flow, with its input, and its output once it completes.
create table pgflow.runs (
  run_id uuid primary key not null default gen_random_uuid(),
  flow_slug text not null references pgflow.flows (flow_slug),
  status text not null default 'started',
  input jsonb not null,
  output jsonb,
  remaining_steps integer not null default 0,
  started_at timestamptz not null default now(),
  completed_at timestamptz,
  failed_at timestamptz,
  constraint status_is_valid check (status in ('started', 'failed', 'completed')),
  constraint remaining_steps_valid check (remaining_steps >= 0),
  constraint completed_at_or_failed_at check (not (completed_at is not null and failed_at is not null)),
  constraint completed_at_is_after_started_at check (completed_at is null or completed_at >= started_at),
  constraint failed_at_is_after_started_at check (failed_at is null or failed_at >= started_at)
);

create index idx_runs_flow_slug on pgflow.runs (flow_slug);
create index idx_runs_status on pgflow.runs (status);

-- ---- schema/0150_table_step_states.sql ----

-- Step states: one row per step of a run. A skipped step is terminal, with its reason
-- (`skip_reason`, `skipped_at`); the two columns come last, the order they were added in.
create table pgflow.step_states (
  flow_slug text not null references pgflow.flows (flow_slug),
  run_id uuid not null references pgflow.runs (run_id),
  step_slug text not null,
  status text not null default 'created',
  remaining_tasks integer,
  initial_tasks integer,
  remaining_deps integer not null default 0,
  output jsonb,
  error_message text,
  created_at timestamptz not null default now(),
  started_at timestamptz,
  completed_at timestamptz,
  failed_at timestamptz,
  skip_reason text,
  skipped_at timestamptz,
  primary key (run_id, step_slug),
  foreign key (flow_slug, step_slug) references pgflow.steps (flow_slug, step_slug),
  constraint status_is_valid check (
    status in ('created', 'started', 'completed', 'failed', 'skipped')),
  constraint status_and_remaining_tasks_match check (
    (status in ('created', 'skipped') and remaining_tasks is null)
    or (status not in ('created', 'skipped') and (remaining_tasks is not null or status = 'failed'))
  ),
  constraint remaining_tasks_valid check (remaining_tasks is null or remaining_tasks >= 0),
  constraint remaining_deps_valid check (remaining_deps >= 0),
  constraint initial_tasks_nonnegative check (initial_tasks is null or initial_tasks >= 0),
  constraint initial_tasks_known_when_started check (status <> 'started' or initial_tasks is not null),
  constraint completed_means_no_remaining_tasks check (status <> 'completed' or remaining_tasks = 0),
  constraint output_only_when_completed check (output is null or status = 'completed'),
  constraint completed_at_or_failed_at_or_skipped_at check (
    num_nonnulls(completed_at, failed_at, skipped_at) <= 1),
  constraint started_at_is_after_created_at check (started_at is null or started_at >= created_at),
  constraint completed_at_is_after_started_at check (completed_at is null or completed_at >= started_at),
  constraint failed_at_is_after_started_at check (failed_at is null or failed_at >= started_at),
  constraint skip_reason_matches_status check (
    (status = 'skipped' and skip_reason is not null)
    or (status <> 'skipped' and skip_reason is null)),
  constraint skip_reason_is_valid check (
    skip_reason is null
    or skip_reason in ('condition_unmet', 'handler_failed', 'dependency_skipped')),
  constraint skipped_at_matches_status check ((status = 'skipped') = (skipped_at is not null)),
  constraint skipped_at_is_after_created_at check (skipped_at is null or skipped_at >= created_at)
);

create index idx_step_states_ready on pgflow.step_states (run_id, status, remaining_deps)
  where status = 'created';
create index idx_step_states_flow_slug on pgflow.step_states (flow_slug);

-- ---- schema/0160_table_step_tasks.sql ----

-- Step tasks: one row per task of a started step (one for a single step, one per element for
-- a map), tied to its pgmq message; `attempts_count` counts the attempts started.
create table pgflow.step_tasks (
  flow_slug text not null references pgflow.flows (flow_slug),
  run_id uuid not null references pgflow.runs (run_id),
  step_slug text not null,
  message_id bigint,
  task_index integer not null default 0,
  status text not null default 'queued',
  attempts_count integer not null default 0,
  error_message text,
  output jsonb,
  queued_at timestamptz not null default now(),
  started_at timestamptz,
  completed_at timestamptz,
  failed_at timestamptz,
  last_worker_id uuid references pgflow.workers (worker_id) on delete set null,
  requeued_count integer not null default 0,
  last_requeued_at timestamptz,
  permanently_stalled_at timestamptz,
  primary key (run_id, step_slug, task_index),
  foreign key (run_id, step_slug) references pgflow.step_states (run_id, step_slug),
  constraint valid_status check (
    status in ('queued', 'started', 'completed', 'failed', 'skipped')),
  constraint output_valid_only_for_completed_or_failed check (
    output is null or status in ('completed', 'failed')
  ),
  constraint attempts_count_nonnegative check (attempts_count >= 0),
  constraint task_index_nonnegative check (task_index >= 0),
  constraint completed_at_or_failed_at check (not (completed_at is not null and failed_at is not null)),
  constraint completed_at_is_after_queued_at check (completed_at is null or completed_at >= queued_at),
  constraint failed_at_is_after_queued_at check (failed_at is null or failed_at >= queued_at),
  constraint started_at_is_after_queued_at check (started_at is null or started_at >= queued_at)
);

create index idx_step_tasks_message_id on pgflow.step_tasks (flow_slug, message_id);
-- Keyed like the primary key: planners without statistics happily pick this partial index for
-- a primary-key lookup that also names the status, and it must stay a single probe then.
create index idx_step_tasks_active on pgflow.step_tasks (run_id, step_slug, task_index)
  where status in ('queued', 'started');
create index idx_step_tasks_started on pgflow.step_tasks (started_at)
  where status = 'started';
create index idx_step_tasks_worker on pgflow.step_tasks (last_worker_id)
  where status = 'started';

-- ---- schema/0170_type_step_task_record.sql ----

-- What start_tasks returns for each task it claims: where the task is and its handler's input.
create type pgflow.step_task_record as (
  flow_slug text,
  run_id uuid,
  step_slug text,
  input jsonb,
  msg_id bigint,
  task_index integer,
  flow_input jsonb
);

-- ---- schema/0200_function__archive_task_message.sql ----

-- Archives the queue message of one task (no-op when it is already gone).
create or replace function pgflow._archive_task_message(
  p_run_id uuid,
  p_step_slug text,
  p_task_index integer
)
returns void
language plpgsql
set search_path to pg_catalog, pg_temp
as $fn$
declare
  v_flow_slug text;
  v_message_id bigint;
begin
  select t.flow_slug, t.message_id
    into v_flow_slug, v_message_id
    from pgflow.step_tasks as t
   where t.run_id = p_run_id
     and t.step_slug = p_step_slug
     and t.task_index = p_task_index;
  if v_message_id is not null then
    perform pgmq.archive(v_flow_slug, v_message_id);
  end if;
end;
$fn$;

-- ---- schema/0200_function__cascade_force_skip_steps.sql ----

-- Skips a step and every step downstream of it, in step order: the step with the given
-- reason, the others with 'dependency_skipped'. Steps already terminal are left alone; a run
-- left with no open step completes. Returns how many steps it skipped.
create or replace function pgflow._cascade_force_skip_steps(run_id uuid, step_slug text, skip_reason text)
returns integer
language plpgsql
set search_path to pg_catalog, pg_temp
as $fn$
declare
  v_run pgflow.runs;
  v_slug text;
  v_state pgflow.step_states;
  v_count integer := 0;
begin
  if _cascade_force_skip_steps.skip_reason is null or _cascade_force_skip_steps.skip_reason
     not in ('condition_unmet', 'handler_failed', 'dependency_skipped') then
    raise exception using
      errcode = 'invalid_parameter_value',
      message = format('_cascade_force_skip_steps: skip reason %s is not one of '
                       'condition_unmet, handler_failed, dependency_skipped',
                       coalesce(quote_literal(_cascade_force_skip_steps.skip_reason), 'NULL'));
  end if;
  select * into v_run from pgflow.runs as r where r.run_id = _cascade_force_skip_steps.run_id;
  if not found then
    raise exception using
      errcode = 'no_data_found',
      message = format('_cascade_force_skip_steps: run %s does not exist',
                       _cascade_force_skip_steps.run_id);
  end if;
  if not exists (
    select 1 from pgflow.steps as s
     where s.flow_slug = v_run.flow_slug and s.step_slug = _cascade_force_skip_steps.step_slug)
  then
    raise exception using
      errcode = 'no_data_found',
      message = format('_cascade_force_skip_steps: flow %L of run %s has no step %s',
                       v_run.flow_slug, v_run.run_id,
                       coalesce(quote_literal(_cascade_force_skip_steps.step_slug), 'NULL'));
  end if;
  if v_run.status <> 'started' then
    return 0;
  end if;

  for v_slug in
    with recursive downstream (slug) as (
      select _cascade_force_skip_steps.step_slug
      union
      select d.step_slug
        from pgflow.deps as d
        join downstream on d.dep_slug = downstream.slug
       where d.flow_slug = v_run.flow_slug
    )
    select s.step_slug
      from pgflow.steps as s
      join downstream on downstream.slug = s.step_slug
     where s.flow_slug = v_run.flow_slug
     order by s.step_index
  loop
    v_state := pgflow._skip_step(
      v_run.run_id, v_slug,
      case when v_slug = _cascade_force_skip_steps.step_slug
           then _cascade_force_skip_steps.skip_reason
           else 'dependency_skipped' end,
      null, false);
    continue when v_state.run_id is null;
    perform realtime.send(
      jsonb_build_object(
        'event_type', 'step:skipped',
        'run_id', v_state.run_id,
        'flow_slug', v_state.flow_slug,
        'step_slug', v_state.step_slug,
        'status', 'skipped',
        'skip_reason', v_state.skip_reason,
        'skipped_at', v_state.skipped_at),
      'step:' || v_state.step_slug || ':skipped',
      'pgflow:run:' || v_state.run_id,
      false);
    v_count := v_count + 1;
  end loop;
  if v_count > 0 then
    perform pgflow.maybe_complete_run(v_run.run_id);
  end if;
  return v_count;
end;
$fn$;

-- ---- schema/0200_function__skip_step.sql ----

-- Marks one created or started step skipped: its unfinished tasks end as `skipped` (messages
-- archived) and the run has one step less to wait for. With p_release_dependents, each
-- dependent has one dependency less to wait for (a dependent map gets no tasks). Returns the
-- skipped row, or NULL when the step was already terminal. Sends no event: callers do, since
-- pgflow's payloads differ by cause.
create or replace function pgflow._skip_step(
  p_run_id uuid,
  p_step_slug text,
  p_skip_reason text,
  p_error_message text,
  p_release_dependents boolean
)
returns pgflow.step_states
language plpgsql
set search_path to pg_catalog, pg_temp
as $fn$
declare
  v_state pgflow.step_states;
  v_message_ids bigint[];
begin
  update pgflow.step_states as ss
     set status = 'skipped',
         skip_reason = p_skip_reason,
         skipped_at = now(),
         remaining_tasks = null,
         error_message = coalesce(p_error_message, ss.error_message)
   where ss.run_id = p_run_id
     and ss.step_slug = p_step_slug
     and ss.status in ('created', 'started')
  returning * into v_state;
  if not found then
    return null;
  end if;

  -- Lock the step's rows in message order first, as _terminate_run_tasks does.
  perform 1
     from pgflow.step_tasks as t
    where t.run_id = p_run_id
      and t.step_slug = p_step_slug
      and t.status in ('queued', 'started')
    order by t.message_id
      for update;

  with ended as (
    update pgflow.step_tasks as t
       set status = 'skipped'
     where t.run_id = p_run_id
       and t.step_slug = p_step_slug
       and t.status in ('queued', 'started')
    returning t.message_id
  )
  select array_agg(ended.message_id) filter (where ended.message_id is not null)
    into v_message_ids
    from ended;
  if cardinality(v_message_ids) > 0 then
    perform pgmq.archive(v_state.flow_slug, v_message_ids);
  end if;

  if p_release_dependents then
    -- A map step has exactly one dependency: when it is skipped, there is nothing to map.
    update pgflow.step_states as child
       set remaining_deps = child.remaining_deps - 1,
           initial_tasks = case when cs.step_type = 'map' then 0 else child.initial_tasks end
      from pgflow.deps as d, pgflow.steps as cs
     where d.flow_slug = v_state.flow_slug
       and d.dep_slug = p_step_slug
       and cs.flow_slug = d.flow_slug
       and cs.step_slug = d.step_slug
       and child.run_id = p_run_id
       and child.step_slug = d.step_slug;
  end if;

  update pgflow.runs as r
     set remaining_steps = r.remaining_steps - 1
   where r.run_id = p_run_id;

  return v_state;
end;
$fn$;

-- ---- schema/0200_function__terminate_run_tasks.sql ----

-- When a run fails, ends every task still queued or started (marking it failed with the
-- reason) and archives their messages, so nothing is left to cycle through workers.
create or replace function pgflow._terminate_run_tasks(p_run_id uuid, p_reason text)
returns integer
language plpgsql
set search_path to pg_catalog, pg_temp
as $fn$
declare
  v_flow_slug text;
  v_message_ids bigint[];
begin
  -- Lock the rows in message order first: start_tasks claims tasks in that order, so the two
  -- never wait for each other in a cycle. (The update alone locks in whatever order its plan
  -- visits the rows.)
  perform 1
     from pgflow.step_tasks as t
    where t.run_id = p_run_id
      and t.status in ('queued', 'started')
    order by t.message_id
      for update;

  with ended as (
    update pgflow.step_tasks as t
       set status = 'failed',
           failed_at = now(),
           error_message = coalesce(t.error_message, p_reason)
     where t.run_id = p_run_id
       and t.status in ('queued', 'started')
    returning t.flow_slug, t.message_id
  )
  select min(ended.flow_slug), array_agg(ended.message_id) filter (where ended.message_id is not null)
    into v_flow_slug, v_message_ids
    from ended;
  if cardinality(v_message_ids) > 0 then
    perform pgmq.archive(v_flow_slug, v_message_ids);
  end if;
  return coalesce(cardinality(v_message_ids), 0);
end;
$fn$;

-- ---- schema/0200_function_add_step.sql ----

-- Adds a step to a flow, after its dependencies (idempotent: an existing step is returned
-- unchanged).
create or replace function pgflow.add_step(
  flow_slug text,
  step_slug text,
  deps_slugs text[] default '{}',
  max_attempts integer default null,
  base_delay integer default null,
  timeout integer default null,
  start_delay integer default null,
  step_type text default 'single',
  required_input_pattern jsonb default null,
  forbidden_input_pattern jsonb default null,
  when_unmet text default 'skip',
  when_exhausted text default 'fail'
)
returns pgflow.steps
language plpgsql
set search_path to pg_catalog, pg_temp
as $fn$
declare
  v_deps text[] := coalesce(add_step.deps_slugs, '{}');
  v_step pgflow.steps;
  v_unknown text[];
begin
  perform 1 from pgflow.flows as f where f.flow_slug = add_step.flow_slug for update;
  if not found then
    raise exception using
      errcode = 'foreign_key_violation',
      message = format('add_step: flow %s does not exist; create it with pgflow.create_flow first',
                       coalesce(quote_literal(add_step.flow_slug), 'NULL'));
  end if;

  if not pgflow.is_valid_slug(add_step.step_slug) then
    raise exception using
      errcode = 'check_violation',
      message = format('add_step: %s is not a valid step slug (flow %L)',
                       coalesce(quote_literal(add_step.step_slug), 'NULL'), add_step.flow_slug),
      hint = 'A slug has 1 to 128 letters, digits or underscores, does not start with a digit, '
             'and is not "run".';
  end if;

  select * into v_step
    from pgflow.steps as s
   where s.flow_slug = add_step.flow_slug and s.step_slug = add_step.step_slug;
  if found then
    return v_step;  -- idempotent: an existing step is returned unchanged
  end if;

  if add_step.step_type is null or add_step.step_type not in ('single', 'map') then
    raise exception using
      errcode = 'check_violation',
      message = format('add_step: step %L of flow %L has step_type %s; expected ''single'' or ''map''',
                       add_step.step_slug, add_step.flow_slug,
                       coalesce(quote_literal(add_step.step_type), 'NULL'));
  end if;
  if add_step.max_attempts < 0 or add_step.base_delay < 0 or add_step.timeout <= 0
     or add_step.start_delay < 0 then
    raise exception using
      errcode = 'check_violation',
      message = format('add_step: step %L of flow %L needs max_attempts >= 0, base_delay >= 0, '
                       'timeout > 0 and start_delay >= 0 (got %s, %s, %s, %s)',
                       add_step.step_slug, add_step.flow_slug, add_step.max_attempts,
                       add_step.base_delay, add_step.timeout, add_step.start_delay);
  end if;
  if jsonb_typeof(add_step.required_input_pattern) <> 'object' then
    raise exception using
      errcode = 'check_violation',
      message = format('add_step: step %L of flow %L has a required_input_pattern that is a '
                       'JSON %s; a pattern is a JSON object',
                       add_step.step_slug, add_step.flow_slug,
                       jsonb_typeof(add_step.required_input_pattern));
  end if;
  if jsonb_typeof(add_step.forbidden_input_pattern) <> 'object' then
    raise exception using
      errcode = 'check_violation',
      message = format('add_step: step %L of flow %L has a forbidden_input_pattern that is a '
                       'JSON %s; a pattern is a JSON object',
                       add_step.step_slug, add_step.flow_slug,
                       jsonb_typeof(add_step.forbidden_input_pattern));
  end if;
  if add_step.when_unmet is null or add_step.when_unmet not in ('fail', 'skip', 'skip-cascade') then
    raise exception using
      errcode = 'check_violation',
      message = format('add_step: step %L of flow %L has when_unmet %s; expected ''fail'', '
                       '''skip'' or ''skip-cascade''', add_step.step_slug, add_step.flow_slug,
                       coalesce(quote_literal(add_step.when_unmet), 'NULL'));
  end if;
  if add_step.when_exhausted is null
     or add_step.when_exhausted not in ('fail', 'skip', 'skip-cascade') then
    raise exception using
      errcode = 'check_violation',
      message = format('add_step: step %L of flow %L has when_exhausted %s; expected ''fail'', '
                       '''skip'' or ''skip-cascade''', add_step.step_slug, add_step.flow_slug,
                       coalesce(quote_literal(add_step.when_exhausted), 'NULL'));
  end if;
  if array_position(v_deps, null) is not null
     or cardinality(v_deps) <> (select count(distinct d) from unnest(v_deps) as d) then
    raise exception using
      errcode = 'invalid_parameter_value',
      message = format('add_step: step %L of flow %L lists a dependency twice or a NULL one: %s',
                       add_step.step_slug, add_step.flow_slug, v_deps);
  end if;
  if add_step.step_slug = any (v_deps) then
    raise exception using
      errcode = 'check_violation',
      message = format('add_step: step %L of flow %L cannot depend on itself',
                       add_step.step_slug, add_step.flow_slug);
  end if;
  if add_step.step_type = 'map' and cardinality(v_deps) > 1 then
    raise exception using
      errcode = 'raise_exception',
      message = format('Map step "%s" can only have zero or one dependency, but %s were provided: '
                       '%s (flow %L)', add_step.step_slug, cardinality(v_deps),
                       array_to_string(v_deps, ', '), add_step.flow_slug),
      hint = 'A map step maps over the run input (no dependency) or over the array output of '
             'its one dependency.';
  end if;

  select array_agg(d order by d) into v_unknown
    from unnest(v_deps) as d
   where not exists (
     select 1 from pgflow.steps as s where s.flow_slug = add_step.flow_slug and s.step_slug = d);
  if v_unknown is not null then
    raise exception using
      errcode = 'foreign_key_violation',
      message = format('add_step: step %L of flow %L depends on unknown step(s): %s',
                       add_step.step_slug, add_step.flow_slug, array_to_string(v_unknown, ', ')),
      hint = 'Add the dependencies first: steps are added in dependency order.';
  end if;

  insert into pgflow.steps as s (
    flow_slug, step_slug, step_type, step_index, deps_count,
    opt_max_attempts, opt_base_delay, opt_timeout, opt_start_delay,
    required_input_pattern, forbidden_input_pattern, when_unmet, when_exhausted)
  values (
    add_step.flow_slug, add_step.step_slug, add_step.step_type,
    (select coalesce(max(x.step_index) + 1, 0) from pgflow.steps as x
      where x.flow_slug = add_step.flow_slug),
    cardinality(v_deps),
    add_step.max_attempts, add_step.base_delay, add_step.timeout, add_step.start_delay,
    add_step.required_input_pattern, add_step.forbidden_input_pattern,
    add_step.when_unmet, add_step.when_exhausted)
  returning * into v_step;

  insert into pgflow.deps (flow_slug, dep_slug, step_slug)
  select add_step.flow_slug, d, add_step.step_slug from unnest(v_deps) as d;

  return v_step;
end;
$fn$;

-- ---- schema/0200_function_calculate_retry_delay.sql ----

-- Seconds to keep a failed task's message invisible before its next attempt.
create or replace function pgflow.calculate_retry_delay(base_delay numeric, attempts_count integer)
returns integer
language sql
immutable
set search_path to pg_catalog, pg_temp
as $fn$
  select least(floor(base_delay * power(2::numeric, attempts_count)), 2147483647)::integer
$fn$;

-- ---- schema/0200_function_cascade_complete_taskless_steps.sql ----

-- Completes, level by level, every ready step that has no tasks (empty maps, maps fed by an
-- empty array or by a skipped step), so an empty array cascades through a chain in one
-- transaction. The conditions of the steps each level makes ready are resolved before the
-- next level; the cascade stops when one of them fails the run.
create or replace function pgflow.cascade_complete_taskless_steps(run_id uuid)
returns integer
language plpgsql
set search_path to pg_catalog, pg_temp
as $fn$
declare
  v_total integer := 0;
  v_level text[];
  v_state record;
begin
  if not exists (
    select 1 from pgflow.runs as r
     where r.run_id = cascade_complete_taskless_steps.run_id and r.status = 'started') then
    return 0;
  end if;

  loop
    v_level := '{}';
    for v_state in
      select ss.step_slug, st.step_type
        from pgflow.step_states as ss
        join pgflow.steps as st
          on st.flow_slug = ss.flow_slug and st.step_slug = ss.step_slug
       where ss.run_id = cascade_complete_taskless_steps.run_id
         and ss.status = 'created'
         and ss.remaining_deps = 0
         and ss.initial_tasks = 0
       order by st.step_index
    loop
      update pgflow.step_states as ss
         set status = 'completed',
             started_at = now(),
             completed_at = now(),
             remaining_tasks = 0,
             output = case when v_state.step_type = 'map' then '[]'::jsonb end
       where ss.run_id = cascade_complete_taskless_steps.run_id
         and ss.step_slug = v_state.step_slug;

      perform realtime.send(
        jsonb_build_object(
          'event_type', 'step:completed',
          'run_id', cascade_complete_taskless_steps.run_id,
          'step_slug', v_state.step_slug,
          'status', 'completed',
          'started_at', now(),
          'completed_at', now(),
          'remaining_tasks', 0,
          'remaining_deps', 0,
          'output', case when v_state.step_type = 'map' then '[]'::jsonb else 'null'::jsonb end),
        'step:' || v_state.step_slug || ':completed',
        'pgflow:run:' || cascade_complete_taskless_steps.run_id,
        false);

      v_level := v_level || v_state.step_slug;
    end loop;

    exit when cardinality(v_level) = 0;
    v_total := v_total + cardinality(v_level);

    -- Children lose one pending dependency per completed parent; a map child of an empty
    -- parent learns it has no tasks either.
    update pgflow.step_states as child
       set remaining_deps = child.remaining_deps - parents.n,
           initial_tasks = case
             when cs.step_type = 'map' and child.initial_tasks is null then 0
             else child.initial_tasks
           end
      from (
        select d.step_slug, count(*)::integer as n
          from pgflow.deps as d
          join pgflow.runs as r on r.flow_slug = d.flow_slug
         where r.run_id = cascade_complete_taskless_steps.run_id
           and d.dep_slug = any (v_level)
         group by d.step_slug
      ) as parents,
      pgflow.steps as cs
     where child.run_id = cascade_complete_taskless_steps.run_id
       and child.step_slug = parents.step_slug
       and cs.flow_slug = child.flow_slug
       and cs.step_slug = child.step_slug;

    update pgflow.runs as r
       set remaining_steps = r.remaining_steps - cardinality(v_level)
     where r.run_id = cascade_complete_taskless_steps.run_id;

    exit when not pgflow.cascade_resolve_conditions(cascade_complete_taskless_steps.run_id);
  end loop;

  return v_total;
end;
$fn$;

-- ---- schema/0200_function_cascade_resolve_conditions.sql ----

-- Evaluates the conditions of every step that is ready (created, no pending dependency) and
-- acts on the unmet ones, until no step changes: a skipped step can make its dependents ready.
-- Unmet with 'fail' (looked for first, in step order) fails the step and the run and returns
-- false; 'skip' skips the step; 'skip-cascade' skips it and everything downstream. Returns
-- true while the run goes on. Each round skips at least one step or ends the loop, so it
-- ends after at most as many rounds as the flow has steps.
create or replace function pgflow.cascade_resolve_conditions(run_id uuid)
returns boolean
language plpgsql
set search_path to pg_catalog, pg_temp
as $fn$
declare
  v_run pgflow.runs;
  v_step record;
  v_state pgflow.step_states;
  v_progress boolean;
begin
  select * into v_run from pgflow.runs as r where r.run_id = cascade_resolve_conditions.run_id;
  if not found then
    raise exception using
      errcode = 'no_data_found',
      message = format('cascade_resolve_conditions: run %s does not exist',
                       cascade_resolve_conditions.run_id);
  end if;
  if v_run.status <> 'started' then
    return v_run.status <> 'failed';
  end if;

  loop
    v_progress := false;
    for v_step in
      select ready.step_slug, ready.when_unmet
        from (
          select ss.step_slug, st.step_index, st.when_unmet,
                 (st.required_input_pattern is null or source.input @> st.required_input_pattern)
                 and (st.forbidden_input_pattern is null
                      or not source.input @> st.forbidden_input_pattern) as met
            from pgflow.step_states as ss
            join pgflow.steps as st
              on st.flow_slug = ss.flow_slug and st.step_slug = ss.step_slug
            cross join lateral (
              select case
                       when st.deps_count = 0 then v_run.input
                       else coalesce((
                         select jsonb_object_agg(d.dep_slug, ps.output)
                           from pgflow.deps as d
                           join pgflow.step_states as ps
                             on ps.run_id = ss.run_id and ps.step_slug = d.dep_slug
                          where d.flow_slug = st.flow_slug
                            and d.step_slug = st.step_slug
                            and ps.status = 'completed'), '{}'::jsonb)
                     end as input
            ) as source
           where ss.run_id = v_run.run_id
             and ss.status = 'created'
             and ss.remaining_deps = 0
             and (st.required_input_pattern is not null or st.forbidden_input_pattern is not null)
        ) as ready
       where not ready.met
       order by case ready.when_unmet when 'fail' then 0 when 'skip' then 1 else 2 end,
                ready.step_index
    loop
      if v_step.when_unmet = 'fail' then
        update pgflow.step_states as ss
           set status = 'failed', failed_at = now(), error_message = 'Condition not met'
         where ss.run_id = v_run.run_id and ss.step_slug = v_step.step_slug;
        update pgflow.runs as r
           set status = 'failed', failed_at = now()
         where r.run_id = v_run.run_id;
        perform realtime.send(
          jsonb_build_object(
            'event_type', 'step:failed',
            'run_id', v_run.run_id,
            'step_slug', v_step.step_slug,
            'status', 'failed',
            'error_message', 'Condition not met',
            'failed_at', now()),
          'step:' || v_step.step_slug || ':failed',
          'pgflow:run:' || v_run.run_id,
          false);
        perform realtime.send(
          jsonb_build_object(
            'event_type', 'run:failed',
            'run_id', v_run.run_id,
            'flow_slug', v_run.flow_slug,
            'status', 'failed',
            'error_message', 'Condition not met',
            'failed_at', now()),
          'run:failed',
          'pgflow:run:' || v_run.run_id,
          false);
        perform pgflow._terminate_run_tasks(
          v_run.run_id,
          format('Run failed: step %s failed: Condition not met', v_step.step_slug));
        return false;
      elsif v_step.when_unmet = 'skip' then
        v_state := pgflow._skip_step(v_run.run_id, v_step.step_slug, 'condition_unmet', null, true);
        continue when v_state.run_id is null;
        perform realtime.send(
          jsonb_build_object(
            'event_type', 'step:skipped',
            'run_id', v_state.run_id,
            'flow_slug', v_state.flow_slug,
            'step_slug', v_state.step_slug,
            'status', 'skipped',
            'skip_reason', 'condition_unmet',
            'skipped_at', v_state.skipped_at),
          'step:' || v_state.step_slug || ':skipped',
          'pgflow:run:' || v_state.run_id,
          false);
      else
        perform pgflow._cascade_force_skip_steps(v_run.run_id, v_step.step_slug,
                                                 'condition_unmet');
      end if;
      v_progress := true;
    end loop;
    exit when not v_progress;
  end loop;
  return true;
end;
$fn$;

-- ---- schema/0200_function_complete_task.sql ----

-- Records a task's output: the step completes with its last task, and its dependents may start.
create or replace function pgflow.complete_task(
  run_id uuid,
  step_slug text,
  task_index integer,
  output jsonb
)
returns setof pgflow.step_tasks
language plpgsql
set search_path to pg_catalog, pg_temp
as $fn$
declare
  v_run pgflow.runs;
  v_state pgflow.step_states;
  v_task pgflow.step_tasks;
  v_step pgflow.steps;
  v_map_child text;
  v_got text;
  v_step_error text;
  v_child_tasks integer;
begin
  select * into v_run from pgflow.runs as r where r.run_id = complete_task.run_id for update;
  if not found then
    raise exception using
      errcode = 'no_data_found',
      message = format('complete_task: run %s does not exist', complete_task.run_id);
  end if;

  select * into v_task
    from pgflow.step_tasks as t
   where t.run_id = complete_task.run_id
     and t.step_slug = complete_task.step_slug
     and t.task_index = complete_task.task_index;
  if not found then
    raise exception using
      errcode = 'no_data_found',
      message = format('complete_task: run %s of flow %L has no task %s[%s]',
                       complete_task.run_id, v_run.flow_slug, complete_task.step_slug,
                       complete_task.task_index);
  end if;

  -- A late result for a run that already ended is ignored; its message is archived.
  if v_run.status <> 'started' then
    perform pgflow._archive_task_message(v_task.run_id, v_task.step_slug, v_task.task_index);
    return next v_task;
    return;
  end if;

  -- Likewise for a step that ended meanwhile (failed, or skipped after a sibling task ran
  -- out of attempts).
  select * into v_state
    from pgflow.step_states as ss
   where ss.run_id = complete_task.run_id and ss.step_slug = complete_task.step_slug
     for update;
  if v_state.status <> 'started' then
    perform pgflow._archive_task_message(v_task.run_id, v_task.step_slug, v_task.task_index);
    return next v_task;
    return;
  end if;

  select * into v_task
    from pgflow.step_tasks as t
   where t.run_id = complete_task.run_id
     and t.step_slug = complete_task.step_slug
     and t.task_index = complete_task.task_index
     for update;
  if v_task.status <> 'started' then
    raise exception using
      errcode = 'object_not_in_prerequisite_state',
      message = format('complete_task: task %s[%s] of run %s (flow %L) is %s, not started',
                       complete_task.step_slug, complete_task.task_index, complete_task.run_id,
                       v_run.flow_slug, v_task.status);
  end if;

  select * into v_step
    from pgflow.steps as s
   where s.flow_slug = v_run.flow_slug and s.step_slug = complete_task.step_slug;

  -- A single step feeding a map that still waits for it must produce an array; anything else
  -- fails the run at once (whatever the step's when_exhausted says).
  if v_step.step_type = 'single'
     and (complete_task.output is null or jsonb_typeof(complete_task.output) <> 'array') then
    select d.step_slug into v_map_child
      from pgflow.deps as d
      join pgflow.steps as cs on cs.flow_slug = d.flow_slug and cs.step_slug = d.step_slug
      join pgflow.step_states as child
        on child.run_id = complete_task.run_id and child.step_slug = d.step_slug
     where d.flow_slug = v_run.flow_slug
       and d.dep_slug = complete_task.step_slug
       and cs.step_type = 'map'
       and child.status = 'created'
       and child.initial_tasks is null
     order by cs.step_index
     limit 1;
    if v_map_child is not null then
      v_got := coalesce(jsonb_typeof(complete_task.output), 'null');
      v_step_error := format('[TYPE_VIOLATION] Map step %s expects array input but dependency %s '
                             'produced %s', v_map_child, complete_task.step_slug, v_got);

      update pgflow.runs as r
         set status = 'failed', failed_at = now()
       where r.run_id = complete_task.run_id;
      perform realtime.send(
        jsonb_build_object(
          'event_type', 'run:failed',
          'run_id', complete_task.run_id,
          'flow_slug', v_run.flow_slug,
          'status', 'failed',
          'error_message', v_step_error,
          'failed_at', now()),
        'run:failed',
        'pgflow:run:' || complete_task.run_id,
        false);

      update pgflow.step_tasks as t
         set status = 'failed',
             failed_at = now(),
             output = complete_task.output,
             error_message = format('[TYPE_VIOLATION] Produced %s instead of array', v_got)
       where t.run_id = complete_task.run_id
         and t.step_slug = complete_task.step_slug
         and t.task_index = complete_task.task_index
      returning * into v_task;

      update pgflow.step_states as ss
         set status = 'failed', failed_at = now(), error_message = v_step_error
       where ss.run_id = complete_task.run_id and ss.step_slug = complete_task.step_slug;
      perform realtime.send(
        jsonb_build_object(
          'event_type', 'step:failed',
          'run_id', complete_task.run_id,
          'step_slug', complete_task.step_slug,
          'status', 'failed',
          'error_message', v_step_error,
          'failed_at', now()),
        'step:' || complete_task.step_slug || ':failed',
        'pgflow:run:' || complete_task.run_id,
        false);

      perform pgflow._archive_task_message(v_task.run_id, v_task.step_slug, v_task.task_index);
      perform pgflow._terminate_run_tasks(complete_task.run_id,
                                          'Run failed: ' || v_step_error);
      return next v_task;
      return;
    end if;
  end if;

  update pgflow.step_tasks as t
     set status = 'completed', completed_at = now(), output = complete_task.output
   where t.run_id = complete_task.run_id
     and t.step_slug = complete_task.step_slug
     and t.task_index = complete_task.task_index
  returning * into v_task;

  update pgflow.step_states as ss
     set remaining_tasks = ss.remaining_tasks - 1
   where ss.run_id = complete_task.run_id and ss.step_slug = complete_task.step_slug
  returning * into v_state;

  perform pgflow._archive_task_message(v_task.run_id, v_task.step_slug, v_task.task_index);

  if v_state.remaining_tasks > 0 then
    return next v_task;
    return;
  end if;

  -- The step's last task: the step completes with its output (a map's outputs in task order).
  update pgflow.step_states as ss
     set status = 'completed',
         completed_at = now(),
         output = case
           when v_step.step_type = 'map' then (
             select coalesce(jsonb_agg(t.output order by t.task_index), '[]'::jsonb)
               from pgflow.step_tasks as t
              where t.run_id = complete_task.run_id and t.step_slug = complete_task.step_slug)
           else complete_task.output
         end
   where ss.run_id = complete_task.run_id and ss.step_slug = complete_task.step_slug
  returning * into v_state;

  perform realtime.send(
    jsonb_build_object(
      'event_type', 'step:completed',
      'run_id', complete_task.run_id,
      'step_slug', complete_task.step_slug,
      'status', 'completed',
      'output', v_state.output,
      'completed_at', v_state.completed_at),
    'step:' || complete_task.step_slug || ':completed',
    'pgflow:run:' || complete_task.run_id,
    false);

  -- A map child learns its task count from this output (the planner would fold the length
  -- call for any output if it sat inside the update's CASE).
  if v_step.step_type = 'map' then
    v_child_tasks := v_state.initial_tasks;
  elsif jsonb_typeof(v_state.output) = 'array' then
    v_child_tasks := jsonb_array_length(v_state.output);
  end if;

  update pgflow.step_states as child
     set remaining_deps = child.remaining_deps - 1,
         initial_tasks = case
           when cs.step_type = 'map' and child.initial_tasks is null then v_child_tasks
           else child.initial_tasks
         end
    from pgflow.deps as d, pgflow.steps as cs
   where d.flow_slug = v_run.flow_slug
     and d.dep_slug = complete_task.step_slug
     and cs.flow_slug = d.flow_slug
     and cs.step_slug = d.step_slug
     and child.run_id = complete_task.run_id
     and child.step_slug = d.step_slug;

  update pgflow.runs as r
     set remaining_steps = r.remaining_steps - 1
   where r.run_id = complete_task.run_id;

  if pgflow.cascade_resolve_conditions(complete_task.run_id) then
    perform pgflow.cascade_complete_taskless_steps(complete_task.run_id);
    perform pgflow.start_ready_steps(complete_task.run_id);
    perform pgflow.maybe_complete_run(complete_task.run_id);
  end if;

  return next v_task;
end;
$fn$;

-- ---- schema/0200_function_create_flow.sql ----

-- Defines a flow (idempotent: an existing flow is returned unchanged) and creates its pgmq queue.
create or replace function pgflow.create_flow(
  flow_slug text,
  max_attempts integer default null,
  base_delay integer default null,
  timeout integer default null
)
returns pgflow.flows
language plpgsql
set search_path to pg_catalog, pg_temp
as $fn$
declare
  v_flow pgflow.flows;
begin
  if not pgflow.is_valid_slug(create_flow.flow_slug) then
    raise exception using
      errcode = 'check_violation',
      message = format('create_flow: %s is not a valid flow slug',
                       coalesce(quote_literal(create_flow.flow_slug), 'NULL')),
      hint = 'A slug has 1 to 128 letters, digits or underscores, does not start with a digit, '
             'and is not "run".';
  end if;
  if length(create_flow.flow_slug) > 47 then
    raise exception using
      errcode = 'check_violation',
      message = format('create_flow: flow slug %L is %s characters long; its pgmq queue name '
                       'is limited to 47', create_flow.flow_slug, length(create_flow.flow_slug));
  end if;
  if create_flow.max_attempts < 0 or create_flow.base_delay < 0 or create_flow.timeout <= 0 then
    raise exception using
      errcode = 'check_violation',
      message = format('create_flow: flow %L needs max_attempts >= 0, base_delay >= 0 and '
                       'timeout > 0 (got %s, %s, %s)', create_flow.flow_slug,
                       create_flow.max_attempts, create_flow.base_delay, create_flow.timeout);
  end if;

  perform pg_advisory_xact_lock(hashtext('pgflow:flow:' || create_flow.flow_slug));

  insert into pgflow.flows as f (flow_slug, opt_max_attempts, opt_base_delay, opt_timeout)
  values (create_flow.flow_slug,
          coalesce(create_flow.max_attempts, 3),
          coalesce(create_flow.base_delay, 5),
          coalesce(create_flow.timeout, 60))
  on conflict on constraint flows_pkey do nothing;

  if not exists (select 1 from pgmq.meta as m where m.queue_name = create_flow.flow_slug) then
    perform pgmq.create(create_flow.flow_slug);
  end if;

  select * into v_flow from pgflow.flows as f where f.flow_slug = create_flow.flow_slug;
  return v_flow;
end;
$fn$;

-- ---- schema/0200_function_fail_task.sql ----

-- Records a task's failure: a retry while attempts are left, else what the step's
-- when_exhausted says (fail the step and the run, or skip the step).
create or replace function pgflow.fail_task(
  run_id uuid,
  step_slug text,
  task_index integer,
  error_message text
)
returns setof pgflow.step_tasks
language plpgsql
set search_path to pg_catalog, pg_temp
as $fn$
declare
  v_run pgflow.runs;
  v_state pgflow.step_states;
  v_task pgflow.step_tasks;
  v_max_attempts integer;
  v_base_delay integer;
  v_when_exhausted text;
begin
  select * into v_run from pgflow.runs as r where r.run_id = fail_task.run_id for update;
  if not found then
    raise exception using
      errcode = 'no_data_found',
      message = format('fail_task: run %s does not exist', fail_task.run_id);
  end if;

  select * into v_task
    from pgflow.step_tasks as t
   where t.run_id = fail_task.run_id
     and t.step_slug = fail_task.step_slug
     and t.task_index = fail_task.task_index;
  if not found then
    raise exception using
      errcode = 'no_data_found',
      message = format('fail_task: run %s of flow %L has no task %s[%s]',
                       fail_task.run_id, v_run.flow_slug, fail_task.step_slug,
                       fail_task.task_index);
  end if;

  -- Late failure on a run that already ended: record it on a still-started task, archive.
  if v_run.status <> 'started' then
    update pgflow.step_tasks as t
       set status = 'failed', failed_at = now(), error_message = fail_task.error_message
     where t.run_id = fail_task.run_id
       and t.step_slug = fail_task.step_slug
       and t.task_index = fail_task.task_index
       and t.status = 'started';
    perform pgflow._archive_task_message(fail_task.run_id, fail_task.step_slug,
                                         fail_task.task_index);
    select * into v_task
      from pgflow.step_tasks as t
     where t.run_id = fail_task.run_id
       and t.step_slug = fail_task.step_slug
       and t.task_index = fail_task.task_index;
    return next v_task;
    return;
  end if;

  -- Late failure on a step that ended meanwhile (e.g. skipped): nothing changes but the
  -- message is archived.
  select * into v_state
    from pgflow.step_states as ss
   where ss.run_id = fail_task.run_id and ss.step_slug = fail_task.step_slug
     for update;
  if v_state.status <> 'started' then
    perform pgflow._archive_task_message(fail_task.run_id, fail_task.step_slug,
                                         fail_task.task_index);
    return next v_task;
    return;
  end if;

  select * into v_task
    from pgflow.step_tasks as t
   where t.run_id = fail_task.run_id
     and t.step_slug = fail_task.step_slug
     and t.task_index = fail_task.task_index
     for update;
  if v_task.status <> 'started' then
    raise exception using
      errcode = 'object_not_in_prerequisite_state',
      message = format('fail_task: task %s[%s] of run %s (flow %L) is %s, not started',
                       fail_task.step_slug, fail_task.task_index, fail_task.run_id,
                       v_run.flow_slug, v_task.status);
  end if;

  select coalesce(s.opt_max_attempts, f.opt_max_attempts),
         coalesce(s.opt_base_delay, f.opt_base_delay),
         s.when_exhausted
    into v_max_attempts, v_base_delay, v_when_exhausted
    from pgflow.steps as s
    join pgflow.flows as f on f.flow_slug = s.flow_slug
   where s.flow_slug = v_run.flow_slug and s.step_slug = fail_task.step_slug;

  if v_task.attempts_count < v_max_attempts then
    -- Retry: back to the queue, invisible for an exponentially growing delay. No event.
    update pgflow.step_tasks as t
       set status = 'queued', started_at = null, error_message = fail_task.error_message
     where t.run_id = fail_task.run_id
       and t.step_slug = fail_task.step_slug
       and t.task_index = fail_task.task_index
    returning * into v_task;
    if v_task.message_id is not null then
      perform pgmq.set_vt(v_run.flow_slug, v_task.message_id,
                          pgflow.calculate_retry_delay(v_base_delay, v_task.attempts_count));
    end if;
    return next v_task;
    return;
  end if;

  -- Out of attempts: the task fails; what happens to its step depends on when_exhausted.
  update pgflow.step_tasks as t
     set status = 'failed', failed_at = now(), error_message = fail_task.error_message
   where t.run_id = fail_task.run_id
     and t.step_slug = fail_task.step_slug
     and t.task_index = fail_task.task_index
  returning * into v_task;
  perform pgflow._archive_task_message(fail_task.run_id, fail_task.step_slug,
                                       fail_task.task_index);

  if v_when_exhausted in ('skip', 'skip-cascade') then
    -- The step is skipped (its other tasks with it) and the run goes on without it.
    v_state := pgflow._skip_step(fail_task.run_id, fail_task.step_slug, 'handler_failed',
                                 fail_task.error_message, v_when_exhausted = 'skip');
    perform realtime.send(
      jsonb_build_object(
        'event_type', 'step:skipped',
        'run_id', fail_task.run_id,
        'step_slug', fail_task.step_slug,
        'status', 'skipped',
        'skip_reason', 'handler_failed',
        'error_message', fail_task.error_message,
        'skipped_at', v_state.skipped_at),
      'step:' || fail_task.step_slug || ':skipped',
      'pgflow:run:' || fail_task.run_id,
      false);
    if v_when_exhausted = 'skip-cascade' then
      perform pgflow._cascade_force_skip_steps(fail_task.run_id, fail_task.step_slug,
                                               'handler_failed');
      perform pgflow.maybe_complete_run(fail_task.run_id);
    elsif pgflow.cascade_resolve_conditions(fail_task.run_id) then
      perform pgflow.cascade_complete_taskless_steps(fail_task.run_id);
      perform pgflow.start_ready_steps(fail_task.run_id);
      perform pgflow.maybe_complete_run(fail_task.run_id);
    end if;
    return next v_task;
    return;
  end if;

  update pgflow.step_states as ss
     set status = 'failed', failed_at = now(), error_message = fail_task.error_message
   where ss.run_id = fail_task.run_id and ss.step_slug = fail_task.step_slug;
  perform realtime.send(
    jsonb_build_object(
      'event_type', 'step:failed',
      'run_id', fail_task.run_id,
      'step_slug', fail_task.step_slug,
      'status', 'failed',
      'error_message', fail_task.error_message,
      'failed_at', now()),
    'step:' || fail_task.step_slug || ':failed',
    'pgflow:run:' || fail_task.run_id,
    false);

  update pgflow.runs as r
     set status = 'failed', failed_at = now()
   where r.run_id = fail_task.run_id;
  perform realtime.send(
    jsonb_build_object(
      'event_type', 'run:failed',
      'run_id', fail_task.run_id,
      'flow_slug', v_run.flow_slug,
      'status', 'failed',
      'error_message', fail_task.error_message,
      'failed_at', now()),
    'run:failed',
    'pgflow:run:' || fail_task.run_id,
    false);

  perform pgflow._terminate_run_tasks(
    fail_task.run_id,
    format('Run failed: step %s failed: %s', fail_task.step_slug, fail_task.error_message));

  return next v_task;
end;
$fn$;

-- ---- schema/0200_function_get_run_with_states.sql ----

-- A run with the states of its steps in step order, as one JSON object (the client's snapshot).
create or replace function pgflow.get_run_with_states(run_id uuid)
returns jsonb
language sql
stable
security definer
set search_path to pg_catalog, pg_temp
as $fn$
  select jsonb_build_object(
           'run', to_jsonb(r),
           'steps', coalesce((
             select jsonb_agg(to_jsonb(ss) order by st.step_index)
               from pgflow.step_states as ss
               join pgflow.steps as st
                 on st.flow_slug = ss.flow_slug and st.step_slug = ss.step_slug
              where ss.run_id = r.run_id), '[]'::jsonb))
    from pgflow.runs as r
   where r.run_id = get_run_with_states.run_id
$fn$;

-- ---- schema/0200_function_mark_worker_stopped.sql ----

-- Marks a worker stopped (it shut down cleanly).
create or replace function pgflow.mark_worker_stopped(worker_id uuid)
returns void
language sql
set search_path to pg_catalog, pg_temp
as $fn$
  update pgflow.workers as w
     set stopped_at = clock_timestamp()
   where w.worker_id = mark_worker_stopped.worker_id
$fn$;

-- ---- schema/0200_function_maybe_complete_run.sql ----

-- Completes the run once no step remains; its output holds the outputs of the leaf steps.
create or replace function pgflow.maybe_complete_run(run_id uuid)
returns void
language plpgsql
set search_path to pg_catalog, pg_temp
as $fn$
declare
  v_run pgflow.runs;
begin
  update pgflow.runs as r
     set status = 'completed',
         completed_at = now(),
         output = (
           select jsonb_object_agg(ss.step_slug, ss.output)
             from pgflow.step_states as ss
            where ss.run_id = r.run_id
              and ss.status = 'completed'
              and not exists (
                select 1 from pgflow.deps as d
                 where d.flow_slug = ss.flow_slug and d.dep_slug = ss.step_slug))
   where r.run_id = maybe_complete_run.run_id
     and r.status = 'started'
     and r.remaining_steps = 0
  returning * into v_run;

  if found then
    perform realtime.send(
      jsonb_build_object(
        'event_type', 'run:completed',
        'run_id', v_run.run_id,
        'flow_slug', v_run.flow_slug,
        'status', 'completed',
        'output', v_run.output,
        'completed_at', v_run.completed_at),
      'run:completed',
      'pgflow:run:' || v_run.run_id,
      false);
  end if;
end;
$fn$;

-- ---- schema/0200_function_prune_data_older_than.sql ----

-- Deletes what is older than the retention interval: runs that completed or failed before
-- it (with their step states, tasks, leftover queue messages and, where the realtime schema
-- is pgflow-py's stand-in, their broadcast rows), archived messages of the flows' queues,
-- and worker rows that stopped heartbeating before it. Runs still going are never touched.
-- Schedule it (pg_cron, or any scheduler), e.g. select pgflow.prune_data_older_than('28 days').
create or replace function pgflow.prune_data_older_than(retention_interval interval)
returns void
language plpgsql
set search_path to pg_catalog, pg_temp
as $fn$
declare
  v_cutoff timestamptz;
  v_runs uuid[];
  v_queue record;
begin
  if retention_interval is null or retention_interval < interval '0' then
    raise exception using
      errcode = 'invalid_parameter_value',
      message = format('prune_data_older_than: the retention interval must be zero or more '
                       '(got %s)', coalesce(retention_interval::text, 'NULL'));
  end if;
  v_cutoff := now() - retention_interval;

  -- The runs are chosen once: a run finishing while this runs is kept whole.
  select coalesce(array_agg(r.run_id), '{}') into v_runs
    from pgflow.runs as r
   where (r.status = 'completed' and r.completed_at < v_cutoff)
      or (r.status = 'failed' and r.failed_at < v_cutoff);

  if cardinality(v_runs) > 0 then
    -- Normally every message of a finished run is archived already; delete any left over,
    -- so that no message outlives its task.
    for v_queue in
      select t.flow_slug, array_agg(t.message_id) as message_ids
        from pgflow.step_tasks as t
        join pgmq.meta as m on m.queue_name = t.flow_slug
       where t.run_id = any (v_runs)
         and t.message_id is not null
       group by t.flow_slug
    loop
      perform pgmq.delete(v_queue.flow_slug, v_queue.message_ids);
    end loop;

    -- Supabase's Realtime server owns and expires its own messages table: leave it alone.
    if to_regclass('realtime.messages') is not null
       and coalesce(obj_description(to_regprocedure('realtime.send(jsonb,text,text,boolean)'),
                                    'pg_proc'), '') like '%pgflow-py realtime stand-in%' then
      execute 'delete from realtime.messages where topic = any ($1)'
        using array(select 'pgflow:run:' || x from unnest(v_runs) as x);
    end if;

    delete from pgflow.step_tasks as t where t.run_id = any (v_runs);
    delete from pgflow.step_states as ss where ss.run_id = any (v_runs);
    delete from pgflow.runs as r where r.run_id = any (v_runs);
  end if;

  for v_queue in
    select f.flow_slug from pgflow.flows as f join pgmq.meta as m on m.queue_name = f.flow_slug
  loop
    execute format('delete from pgmq.%I where archived_at < $1',
                   pgmq.format_table_name(v_queue.flow_slug, 'a'))
      using v_cutoff;
  end loop;

  delete from pgflow.workers as w where w.last_heartbeat_at < v_cutoff;
end;
$fn$;

-- ---- schema/0200_function_read_with_poll.sql ----

-- Reads up to qty messages, polling until some arrive or max_poll_seconds pass.
create or replace function pgflow.read_with_poll(
  queue_name text,
  vt integer,
  qty integer,
  max_poll_seconds integer default 5,
  poll_interval_ms integer default 100
)
returns setof pgmq.message_record
language plpgsql
set search_path to pg_catalog, pg_temp
as $fn$
declare
  deadline timestamptz := clock_timestamp() + make_interval(secs => max_poll_seconds);
begin
  loop
    return query select * from pgmq.read(queue_name, vt, qty);
    if found or clock_timestamp() >= deadline then
      return;
    end if;
    perform pg_sleep(poll_interval_ms / 1000.0);
  end loop;
end;
$fn$;

-- ---- schema/0200_function_requeue_stalled_tasks.sql ----

-- Gives back tasks whose worker stopped answering: a task `started` longer than its step's
-- timeout + 30 s goes back to the queue, at most 3 times; after that it is marked permanently
-- stalled and its message archived. Returns how many tasks were requeued.
create or replace function pgflow.requeue_stalled_tasks()
returns integer
language plpgsql
set search_path to pg_catalog, pg_temp
as $fn$
declare
  v_task record;
  v_requeued integer := 0;
begin
  for v_task in
    select t.run_id, t.step_slug, t.task_index, t.flow_slug, t.message_id, t.requeued_count
      from pgflow.step_tasks as t
      join pgflow.runs as r on r.run_id = t.run_id
      join pgflow.steps as s on s.flow_slug = t.flow_slug and s.step_slug = t.step_slug
      join pgflow.flows as f on f.flow_slug = t.flow_slug
     where t.status = 'started'
       and t.permanently_stalled_at is null
       and r.status = 'started'
       and t.started_at
           < now() - make_interval(secs => coalesce(s.opt_timeout, f.opt_timeout) + 30)
     order by t.started_at
       for update of t skip locked
  loop
    if v_task.requeued_count < 3 then
      update pgflow.step_tasks as t
         set status = 'queued',
             started_at = null,
             requeued_count = t.requeued_count + 1,
             last_requeued_at = now()
       where t.run_id = v_task.run_id
         and t.step_slug = v_task.step_slug
         and t.task_index = v_task.task_index;
      if v_task.message_id is not null then
        perform pgmq.set_vt(v_task.flow_slug, v_task.message_id, 0);
      end if;
      v_requeued := v_requeued + 1;
    else
      update pgflow.step_tasks as t
         set permanently_stalled_at = now()
       where t.run_id = v_task.run_id
         and t.step_slug = v_task.step_slug
         and t.task_index = v_task.task_index;
      if v_task.message_id is not null then
        perform pgmq.archive(v_task.flow_slug, v_task.message_id);
      end if;
    end if;
  end loop;
  return v_requeued;
end;
$fn$;

-- ---- schema/0200_function_set_vt_batch.sql ----

-- Sets each message's visibility to now + its own offset, in one statement.
create or replace function pgflow.set_vt_batch(queue_name text, msg_ids bigint[], vt_offsets integer[])
returns table (
  msg_id bigint,
  read_ct integer,
  enqueued_at timestamptz,
  vt timestamptz,
  message jsonb,
  headers jsonb
)
language plpgsql
set search_path to pg_catalog, pg_temp
as $fn$
begin
  if msg_ids is null or vt_offsets is null
     or cardinality(msg_ids) <> cardinality(vt_offsets) then
    raise exception using
      errcode = 'invalid_parameter_value',
      message = format(
        'set_vt_batch: msg_ids and vt_offsets must be arrays of the same length (got %s and %s)',
        coalesce(cardinality(msg_ids)::text, 'NULL'),
        coalesce(cardinality(vt_offsets)::text, 'NULL'));
  end if;
  if cardinality(msg_ids) = 0 then
    return;
  end if;
  return query execute format(
    $q$
      update pgmq.%I as q
         set vt = clock_timestamp() + make_interval(secs => u.vt_offset)
        from unnest($1::bigint[], $2::integer[]) as u (msg_id, vt_offset)
       where q.msg_id = u.msg_id
      returning q.msg_id, q.read_ct, q.enqueued_at, q.vt, q.message, q.headers
    $q$,
    pgmq.format_table_name(queue_name, 'q'))
  using msg_ids, vt_offsets;
end;
$fn$;

-- ---- schema/0200_function_start_flow.sql ----

-- Starts a run of a flow with its input: one state per step; the steps without dependencies
-- start at once, or are skipped when their condition is unmet.
create or replace function pgflow.start_flow(flow_slug text, input jsonb, run_id uuid default null)
returns setof pgflow.runs
language plpgsql
set search_path to pg_catalog, pg_temp
as $fn$
declare
  v_step_count integer;
  v_root_maps integer;
  v_input_length integer;
  v_run pgflow.runs;
begin
  perform 1 from pgflow.flows as f where f.flow_slug = start_flow.flow_slug;
  if not found then
    raise exception using
      errcode = 'foreign_key_violation',
      message = format('start_flow: flow %s does not exist',
                       coalesce(quote_literal(start_flow.flow_slug), 'NULL'));
  end if;

  select count(*), count(*) filter (where s.step_type = 'map' and s.deps_count = 0)
    into v_step_count, v_root_maps
    from pgflow.steps as s
   where s.flow_slug = start_flow.flow_slug;

  if v_root_maps > 0 and start_flow.input is null then
    raise exception using
      errcode = 'raise_exception',
      message = format('Flow %s has root map steps but input is NULL', start_flow.flow_slug);
  end if;
  if v_root_maps > 0 and jsonb_typeof(start_flow.input) <> 'array' then
    raise exception using
      errcode = 'raise_exception',
      message = format('Flow %s has root map steps but input is not an array (got %s)',
                       start_flow.flow_slug, jsonb_typeof(start_flow.input));
  end if;
  if start_flow.input is null then
    raise exception using
      errcode = 'not_null_violation',
      message = format('start_flow: the input for flow %L is NULL; pass a JSON value '
                       '(''{}'' or ''null''::jsonb for none)', start_flow.flow_slug);
  end if;
  if start_flow.run_id is not null and exists (
       select 1 from pgflow.runs as r where r.run_id = start_flow.run_id) then
    raise exception using
      errcode = 'unique_violation',
      message = format('start_flow: a run with id %s already exists', start_flow.run_id);
  end if;

  -- Computed apart: inside the insert's CASE the planner would fold it for any input.
  if jsonb_typeof(start_flow.input) = 'array' then
    v_input_length := jsonb_array_length(start_flow.input);
  end if;

  insert into pgflow.runs (run_id, flow_slug, input, remaining_steps)
  values (coalesce(start_flow.run_id, gen_random_uuid()), start_flow.flow_slug,
          start_flow.input, v_step_count)
  returning * into v_run;

  insert into pgflow.step_states (flow_slug, run_id, step_slug, remaining_deps, initial_tasks)
  select s.flow_slug, v_run.run_id, s.step_slug, s.deps_count,
         case
           when s.step_type = 'map' and s.deps_count = 0 then v_input_length
           when s.step_type = 'map' then null
           else 1
         end
    from pgflow.steps as s
   where s.flow_slug = start_flow.flow_slug;

  perform realtime.send(
    jsonb_build_object(
      'event_type', 'run:started',
      'run_id', v_run.run_id,
      'flow_slug', v_run.flow_slug,
      'input', v_run.input,
      'status', 'started',
      'remaining_steps', v_run.remaining_steps,
      'started_at', v_run.started_at),
    'run:started',
    'pgflow:run:' || v_run.run_id,
    false);

  if pgflow.cascade_resolve_conditions(v_run.run_id) then
    perform pgflow.cascade_complete_taskless_steps(v_run.run_id);
    perform pgflow.start_ready_steps(v_run.run_id);
    perform pgflow.maybe_complete_run(v_run.run_id);
  end if;

  return query select * from pgflow.runs as r where r.run_id = v_run.run_id;
end;
$fn$;

-- ---- schema/0200_function_start_flow_with_states.sql ----

-- start_flow, returning the new run's snapshot as get_run_with_states does.
create or replace function pgflow.start_flow_with_states(
  flow_slug text,
  input jsonb,
  run_id uuid default null
)
returns jsonb
language plpgsql
security definer
set search_path to pg_catalog, pg_temp
as $fn$
declare
  v_run_id uuid;
begin
  select r.run_id into v_run_id
    from pgflow.start_flow(start_flow_with_states.flow_slug, start_flow_with_states.input,
                           start_flow_with_states.run_id) as r;
  return pgflow.get_run_with_states(v_run_id);
end;
$fn$;

-- ---- schema/0200_function_start_ready_steps.sql ----

-- Starts every created step whose dependencies are done and whose task count is known and
-- positive: one queue message per task, sent with the step's start delay.
create or replace function pgflow.start_ready_steps(run_id uuid)
returns void
language plpgsql
set search_path to pg_catalog, pg_temp
as $fn$
declare
  v_flow_slug text;
  v_step record;
begin
  select r.flow_slug into v_flow_slug
    from pgflow.runs as r
   where r.run_id = start_ready_steps.run_id and r.status = 'started';
  if not found then
    return;
  end if;

  for v_step in
    select ss.step_slug, ss.initial_tasks, st.opt_start_delay
      from pgflow.step_states as ss
      join pgflow.steps as st
        on st.flow_slug = ss.flow_slug and st.step_slug = ss.step_slug
     where ss.run_id = start_ready_steps.run_id
       and ss.status = 'created'
       and ss.remaining_deps = 0
       and ss.initial_tasks > 0
     order by st.step_index
  loop
    update pgflow.step_states as ss
       set status = 'started',
           started_at = now(),
           remaining_tasks = ss.initial_tasks
     where ss.run_id = start_ready_steps.run_id
       and ss.step_slug = v_step.step_slug;

    perform realtime.send(
      jsonb_build_object(
        'event_type', 'step:started',
        'run_id', start_ready_steps.run_id,
        'step_slug', v_step.step_slug,
        'status', 'started',
        'started_at', now(),
        'remaining_tasks', v_step.initial_tasks,
        'remaining_deps', 0),
      'step:' || v_step.step_slug || ':started',
      'pgflow:run:' || start_ready_steps.run_id,
      false);

    -- Message ids come from one sequence in insertion order, so the k-th smallest id
    -- belongs to task k.
    insert into pgflow.step_tasks (flow_slug, run_id, step_slug, task_index, message_id)
    select v_flow_slug, start_ready_steps.run_id, v_step.step_slug,
           (row_number() over (order by sent.msg_id) - 1)::integer, sent.msg_id
      from pgmq.send_batch(
             v_flow_slug,
             array(
               select jsonb_build_object(
                        'flow_slug', v_flow_slug,
                        'run_id', start_ready_steps.run_id,
                        'step_slug', v_step.step_slug,
                        'task_index', i)
                 from generate_series(0, v_step.initial_tasks - 1) as i
                order by i),
             coalesce(v_step.opt_start_delay, 0)) as sent (msg_id);
  end loop;
end;
$fn$;

-- ---- schema/0200_function_start_tasks.sql ----

-- Phase two of polling: claims the queued tasks behind the messages a worker has read and
-- returns what their handlers need. A message whose task is still `started` after its timeout
-- (+2 s) means the lease expired (the worker vanished or the handler hung): that attempt is
-- failed through fail_task, which retries it with backoff or fails the step.
create or replace function pgflow.start_tasks(flow_slug text, msg_ids bigint[], worker_id uuid)
returns setof pgflow.step_task_record
language plpgsql
set search_path to pg_catalog, pg_temp
as $fn$
declare
  v_msg_id bigint;
  v_task pgflow.step_tasks;
  v_tasks pgflow.step_tasks[] := '{}';
  v_step pgflow.steps;
  v_timeout integer;
  v_source_of text;
  v_source jsonb;
  v_flow_input jsonb;
  v_record pgflow.step_task_record;
  v_claimed_ids bigint[] := '{}';
  v_offsets integer[] := '{}';
begin
  -- One index probe per message id. (A set-based lookup is at the planner's mercy: on tables
  -- without fresh statistics it can scan every task of a big map on each call.)
  foreach v_msg_id in array array(
    select distinct m.id from unnest(start_tasks.msg_ids) as m (id) where m.id is not null
     order by m.id)
  loop
    select * into v_task
      from pgflow.step_tasks as t
     where t.flow_slug = start_tasks.flow_slug and t.message_id = v_msg_id;
    if found then
      v_tasks := v_tasks || v_task;
    end if;
  end loop;

  -- Expired leases first, so a run failed by one of them has no task handed out below.
  foreach v_task in array v_tasks loop
    continue when v_task.status <> 'started';
    select coalesce(s.opt_timeout, f.opt_timeout) into v_timeout
      from pgflow.steps as s
      join pgflow.flows as f on f.flow_slug = s.flow_slug
     where s.flow_slug = v_task.flow_slug and s.step_slug = v_task.step_slug;
    continue when v_task.started_at > clock_timestamp() - make_interval(secs => v_timeout + 2)
      or not exists (select 1 from pgflow.runs as r
                      where r.run_id = v_task.run_id and r.status = 'started');
    begin
      perform pgflow.fail_task(
        v_task.run_id, v_task.step_slug, v_task.task_index,
        format('Task lease expired: no result within %s s of its start (the worker stopped '
               'or the handler hung)', v_timeout + 2));
    exception when object_not_in_prerequisite_state then
      null;  -- finished meanwhile by its worker
    end;
  end loop;

  -- Claim the queued ones (a failed attempt above is queued again but waits for its backoff).
  foreach v_task in array v_tasks loop
    continue when v_task.status <> 'queued';
    update pgflow.step_tasks as t
       set status = 'started',
           started_at = now(),
           attempts_count = t.attempts_count + 1,
           last_worker_id = start_tasks.worker_id
     where t.run_id = v_task.run_id
       and t.step_slug = v_task.step_slug
       and t.task_index = v_task.task_index
       and t.status = 'queued'
       and exists (select 1 from pgflow.runs as r
                    where r.run_id = t.run_id and r.status = 'started')
       and exists (select 1 from pgflow.step_states as ss
                    where ss.run_id = t.run_id and ss.step_slug = t.step_slug
                      and ss.status = 'started')
    returning * into v_task;
    continue when not found;

    -- What the step's tasks read, loaded once per run and step of this batch.
    if v_source_of is distinct from v_task.run_id::text || '/' || v_task.step_slug then
      v_source_of := v_task.run_id::text || '/' || v_task.step_slug;
      v_flow_input := null;
      select * into v_step
        from pgflow.steps as s
       where s.flow_slug = v_task.flow_slug and s.step_slug = v_task.step_slug;
      select coalesce(v_step.opt_timeout, f.opt_timeout) into v_timeout
        from pgflow.flows as f where f.flow_slug = v_task.flow_slug;
      if v_step.step_type = 'single' then
        select coalesce(jsonb_object_agg(d.dep_slug, ps.output), '{}'::jsonb) into v_source
          from pgflow.deps as d
          join pgflow.step_states as ps on ps.run_id = v_task.run_id and ps.step_slug = d.dep_slug
         where d.flow_slug = v_task.flow_slug
           and d.step_slug = v_task.step_slug
           and ps.status = 'completed';
        if v_step.deps_count = 0 then
          select r.input into v_flow_input from pgflow.runs as r where r.run_id = v_task.run_id;
        end if;
      else
        if v_step.deps_count = 0 then
          select r.input into v_source from pgflow.runs as r where r.run_id = v_task.run_id;
        else
          select ps.output into v_source
            from pgflow.deps as d
            join pgflow.step_states as ps
              on ps.run_id = v_task.run_id and ps.step_slug = d.dep_slug
           where d.flow_slug = v_task.flow_slug and d.step_slug = v_task.step_slug;
        end if;
        -- A big array is stored compressed and each `->` below would decompress all of it
        -- again; appending nothing gives the same array, decompressed once for this call.
        v_source := v_source || '[]'::jsonb;
      end if;
    end if;

    v_claimed_ids := v_claimed_ids || v_task.message_id;
    v_offsets := v_offsets || (v_timeout + 2);
    v_record := row(
      v_task.flow_slug,
      v_task.run_id,
      v_task.step_slug,
      case when v_step.step_type = 'map' then v_source -> v_task.task_index else v_source end,
      v_task.message_id,
      v_task.task_index,
      v_flow_input)::pgflow.step_task_record;
    return next v_record;
  end loop;

  perform pgflow.set_vt_batch(start_tasks.flow_slug, v_claimed_ids, v_offsets);
end;
$fn$;

-- ---- schema/0900_privileges.sql ----

-- Nothing for PUBLIC: grant to your roles explicitly (see the docs). Comes last, so that it
-- covers every table and function above.
revoke all on all tables in schema pgflow from public;
revoke all on all functions in schema pgflow from public;
