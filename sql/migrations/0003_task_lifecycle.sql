-- pgflow-py SQL core, migration 0003: task_lifecycle.
--
-- The task lifecycle of pgflow 0.15.1: tasks end `skipped` with their step and `cancelled` with
-- their failed run; late and duplicate reports change nothing; start_tasks checks that every
-- claimed message got its visibility; requeue_stalled_tasks leaves tasks of ended steps alone.
-- Check constraints take pgflow's names. Old data is repaired as pgflow's migration does.
--
-- Tables by hand, functions started from the schema files below by
--   python -m pgflow_worker._database.derive next task_lifecycle ...
-- A function added here gets EXECUTE for PUBLIC unless this migration revokes it, as
-- sql/schema/0900_privileges.sql does for the schema; the drift test compares the two.

-- ---- tables ----

alter table pgflow.step_tasks
  drop constraint valid_status,
  add constraint valid_status check (
    status in ('queued', 'started', 'completed', 'failed', 'skipped', 'cancelled')),
  add constraint completed_at_is_after_started_at check (
    completed_at is null or started_at is null or completed_at >= started_at),
  add constraint failed_at_is_after_started_at check (
    failed_at is null or started_at is null or failed_at >= started_at);
alter table pgflow.step_tasks
  rename constraint output_valid_only_for_completed_or_failed to output_valid_only_for_completed;

alter table pgflow.step_states
  drop constraint status_and_remaining_tasks_match,
  drop constraint skip_reason_is_valid,
  add constraint remaining_tasks_state_consistency check (
    remaining_tasks is null or status not in ('created', 'skipped'));
alter table pgflow.step_states
  rename constraint completed_means_no_remaining_tasks to status_and_remaining_tasks_match;
alter table pgflow.step_states
  rename constraint output_only_when_completed to output_only_for_completed_or_null;
alter table pgflow.step_states
  rename constraint remaining_deps_valid to step_states_remaining_deps_check;
alter table pgflow.step_states
  rename constraint initial_tasks_nonnegative to step_states_initial_tasks_check;

alter table pgflow.runs rename constraint remaining_steps_valid to runs_remaining_steps_check;
alter table pgflow.steps rename constraint slug_is_valid to steps_step_slug_check;
alter table pgflow.steps rename constraint step_type_is_known to steps_step_type_check;
alter table pgflow.steps rename constraint deps_count_nonnegative to steps_deps_count_check;
alter table pgflow.deps rename constraint no_self_dependency to deps_check;

-- ---- old data ----

-- Tasks left active under a step that was skipped end `skipped`, whatever their run's status;
-- then tasks left active in a failed run end `cancelled`. Their messages are archived, task rows
-- first, queue rows after, as everywhere else.
do $repair$
declare
  v_slugs text[];
  v_ids bigint[];
  v_more_slugs text[];
  v_more_ids bigint[];
  v_queue record;
begin
  with skipped as (
    update pgflow.step_tasks as t
       set status = 'skipped'
      from pgflow.step_states as ss
     where ss.run_id = t.run_id
       and ss.step_slug = t.step_slug
       and ss.status = 'skipped'
       and t.status in ('queued', 'started')
    returning t.flow_slug, t.message_id
  )
  select coalesce(array_agg(s.flow_slug), '{}'), coalesce(array_agg(s.message_id), '{}')
    into v_slugs, v_ids
    from skipped as s
   where s.message_id is not null;

  with cancelled as (
    update pgflow.step_tasks as t
       set status = 'cancelled'
      from pgflow.runs as r
     where r.run_id = t.run_id
       and r.status = 'failed'
       and t.status in ('queued', 'started')
    returning t.flow_slug, t.message_id
  )
  select coalesce(array_agg(c.flow_slug), '{}'), coalesce(array_agg(c.message_id), '{}')
    into v_more_slugs, v_more_ids
    from cancelled as c
   where c.message_id is not null;

  -- A queue dropped by hand has no message left to archive.
  for v_queue in
    select m.flow_slug, array_agg(m.message_id order by m.message_id) as ids
      from unnest(v_slugs || v_more_slugs, v_ids || v_more_ids) as m (flow_slug, message_id)
     where exists (select 1 from pgmq.meta as q where lower(q.queue_name) = lower(m.flow_slug))
     group by m.flow_slug
  loop
    perform pgmq.archive(v_queue.flow_slug, v_queue.ids);
  end loop;
end;
$repair$;

-- ---- functions ----

-- ---- schema/0200_function__cancel_run_tasks.sql ----

-- When a run fails, ends every task of it still queued or started as `cancelled` and archives
-- their messages, so nothing is left to cycle through workers. Tasks that already finished
-- (the failed culprit among them) keep their outcome. Returns how many tasks it cancelled.
create or replace function pgflow._cancel_run_tasks(p_run_id uuid)
returns integer
language plpgsql
set search_path to pg_catalog, pg_temp
as $fn$
declare
  v_flow_slug text;
  v_count integer;
  v_message_ids bigint[];
begin
  -- Lock the rows in message order first: start_tasks claims tasks in that order, so the two
  -- never wait for each other in a cycle. (The update alone locks in whatever order its plan
  -- visits the rows.) Task rows are always updated before the queue's rows are touched.
  perform 1
     from pgflow.step_tasks as t
    where t.run_id = p_run_id
      and t.status in ('queued', 'started')
    order by t.message_id
      for update;

  with cancelled as (
    update pgflow.step_tasks as t
       set status = 'cancelled'
     where t.run_id = p_run_id
       and t.status in ('queued', 'started')
    returning t.flow_slug, t.message_id
  )
  select min(cancelled.flow_slug), count(*),
         array_agg(cancelled.message_id) filter (where cancelled.message_id is not null)
    into v_flow_slug, v_count, v_message_ids
    from cancelled;
  if cardinality(v_message_ids) > 0 then
    perform pgmq.archive(v_flow_slug, v_message_ids);
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

  -- Lock the step's rows in message order first, as _cancel_run_tasks does.
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
      hint = 'A slug has 1 to 128 letters, digits or underscores, starts with a letter, ends '
             'with a letter or digit, has no "__", and is not "run".';
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
      message = format('Map step "%s" can have at most one dependency, but %s were provided: '
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

-- ---- schema/0200_function_cascade_resolve_conditions.sql ----

-- Evaluates the conditions of every step that is ready (created, no pending dependency) and
-- acts on the unmet ones, until no step changes: a skipped step can make its dependents ready.
-- Unmet with 'fail' (looked for first, in step order) fails the step and the run and returns
-- false (its active tasks are cancelled; a run no longer `started` is left alone, so a replay
-- sends no event twice); 'skip' skips the step; 'skip-cascade' skips it and everything
-- downstream. Returns true while the run goes on. Each round skips at least one step or ends
-- the loop, so it ends after at most as many rounds as the flow has steps.
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
        -- Takes the run's lock and rechecks its status: a concurrent call that failed or
        -- completed the run first wins.
        update pgflow.runs as r
           set status = 'failed', failed_at = now()
         where r.run_id = v_run.run_id and r.status = 'started';
        if not found then
          return not exists (select 1 from pgflow.runs as r
                              where r.run_id = v_run.run_id and r.status = 'failed');
        end if;
        update pgflow.step_states as ss
           set status = 'failed', failed_at = now(), error_message = 'Condition not met'
         where ss.run_id = v_run.run_id and ss.step_slug = v_step.step_slug;
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
        perform pgflow._cancel_run_tasks(v_run.run_id);
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
-- A late or duplicate result (the run or the step already ended, or the task is not `started`)
-- changes nothing and returns the task row as it is.
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

  -- A late result for a run that already ended (its tasks cancelled if it failed) changes
  -- nothing; its message is archived (a no-op when the run's end archived it already).
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
  -- Not claimed (still queued, e.g. waiting for a retry) or already finished: a duplicate or
  -- stale report, ignored. The message stays: a queued task still needs it.
  if v_task.status <> 'started' then
    return next v_task;
    return;
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
      perform pgflow._cancel_run_tasks(complete_task.run_id);
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

-- ---- schema/0200_function_fail_task.sql ----

-- Records a task's failure: a retry while attempts are left, else what the step's
-- when_exhausted says (fail the step and the run, or skip the step). A late or duplicate
-- report (the run or the step already ended, or the task is not `started`) changes nothing and
-- returns the task row as it is.
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

  -- Late failure on a run that already ended: the task keeps the status the run's end gave
  -- it (`cancelled` when the run failed); its message is archived if still there.
  if v_run.status <> 'started' then
    perform pgflow._archive_task_message(fail_task.run_id, fail_task.step_slug,
                                         fail_task.task_index);
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
  -- Not claimed (still queued, e.g. waiting for a retry) or already finished: a duplicate or
  -- stale report, ignored. The message stays: a queued task still needs it.
  if v_task.status <> 'started' then
    return next v_task;
    return;
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

  perform pgflow._cancel_run_tasks(fail_task.run_id);

  return next v_task;
end;
$fn$;

-- ---- schema/0200_function_requeue_stalled_tasks.sql ----

-- Gives back tasks whose worker stopped answering: a task `started` longer than its step's
-- effective timeout + 30 s, in a run and a step both still `started`, goes back to the queue
-- (no worker), at most 3 times; after that it is marked permanently stalled and its message
-- archived. Returns how many tasks were requeued.
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
      join pgflow.step_states as ss on ss.run_id = t.run_id and ss.step_slug = t.step_slug
      join pgflow.steps as s on s.flow_slug = t.flow_slug and s.step_slug = t.step_slug
      join pgflow.flows as f on f.flow_slug = t.flow_slug
     where t.status = 'started'
       and t.permanently_stalled_at is null
       and r.status = 'started'
       and ss.status = 'started'
       and t.started_at
           < now() - make_interval(secs => coalesce(s.opt_timeout, f.opt_timeout) + 30)
     order by t.started_at
       for update of t skip locked
  loop
    if v_task.requeued_count < 3 then
      update pgflow.step_tasks as t
         set status = 'queued',
             started_at = null,
             last_worker_id = null,
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

-- Sets each message's visibility to now + its own offset, in one statement. As in pgflow, a
-- NULL array means nothing to do (no row), and arrays of different lengths raise P0001.
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
  if msg_ids is null or vt_offsets is null then
    return;
  end if;
  if cardinality(msg_ids) <> cardinality(vt_offsets) then
    raise exception using
      errcode = 'raise_exception',
      message = format('msg_ids length (%s) must equal vt_offsets length (%s)',
                       cardinality(msg_ids), cardinality(vt_offsets)),
      hint = 'Give set_vt_batch one visibility offset per message id.';
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

-- ---- schema/0200_function_start_tasks.sql ----

-- Phase two of polling: claims the queued tasks behind the messages a worker has read and
-- returns what their handlers need: only the tasks it moved from `queued` to `started`, each
-- message hidden for its step's timeout + 2 s. A message whose task is still `started` after
-- that time means the lease expired (the worker vanished or the handler hung): that attempt is
-- failed through fail_task, which retries it with backoff or fails the step. Any other message
-- (its task finished, skipped, cancelled, or not found) claims nothing.
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
  v_extended integer;
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
    -- A task its worker finished meanwhile is left as it is by fail_task.
    perform pgflow.fail_task(
      v_task.run_id, v_task.step_slug, v_task.task_index,
      format('Task lease expired: no result within %s s of its start (the worker stopped '
             'or the handler hung)', v_timeout + 2));
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

  -- Every claimed message must be hidden for its task's run time, or another worker would
  -- read it again meanwhile: a message gone from the queue undoes the whole claim (SQLSTATE
  -- 22P02, as pgflow's).
  select count(*) into v_extended
    from pgflow.set_vt_batch(start_tasks.flow_slug, v_claimed_ids, v_offsets);
  if v_extended <> cardinality(v_claimed_ids) then
    raise exception using
      errcode = 'invalid_text_representation',
      message = format('start_tasks(): visibility updated %s of %s claimed messages',
                       v_extended, cardinality(v_claimed_ids)),
      detail = format('Claimed messages of queue %L: %s. A message of a queued task was deleted '
                      'or archived outside pgflow; nothing was claimed.',
                      start_tasks.flow_slug, v_claimed_ids);
  end if;
end;
$fn$;

-- ---- dropped and new functions ----

-- Replaced by _cancel_run_tasks: failed runs now cancel their tasks instead of failing them.
drop function pgflow._terminate_run_tasks(uuid, text);
revoke all on function pgflow._cancel_run_tasks(uuid) from public;
