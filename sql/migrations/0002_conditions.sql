-- pgflow-py SQL core, part 2: conditional steps, skipped steps, when_exhausted, retention.
--
-- Brings a database built by 0001 to pgflow 0.14's behaviour, in place: existing flows keep
-- running as before (no conditions, skip when unmet, fail when exhausted), runs in flight
-- finish normally.
--
--   * Steps gain `required_input_pattern` (DSL `if`) and `forbidden_input_pattern` (`if_not`),
--     both jsonb objects checked with `@>` when the step becomes ready: against the run input
--     for a root step, against `{dep_slug: output}` of its completed dependencies otherwise.
--     `when_unmet` says what an unmet condition does: 'fail' fails the step and the run,
--     'skip' (default) skips the step, 'skip-cascade' skips it and every step downstream.
--   * `when_exhausted` says what a task that ran out of attempts does: 'fail' (default) fails
--     the step and the run, 'skip' / 'skip-cascade' skip the step (reason handler_failed, the
--     error kept) and the run goes on. Type violations always fail the run.
--   * A skipped step is a terminal status (`step_states.skip_reason`, `skipped_at`); its
--     queued or started tasks end as `skipped` and their messages are archived. A skipped
--     dependency is absent from its dependents' input and from the run output; a map step
--     whose only dependency was skipped has no tasks (it completes with `[]`).
--   * `prune_data_older_than(interval)` deletes old finished runs and old archived messages.
--
-- Differences from pgflow 0.14, on purpose:
--   * Conditions of a step made ready by a taskless completion (an empty map upstream) are
--     evaluated before it starts; pgflow starts such a step without looking at them.
--   * The queued and started tasks of a skipped step end as `skipped` (pgflow 0.14.1 archives
--     their messages but leaves the tasks as they were; later pgflow does the same as here).
--   * Skip events are emitted in step order (pgflow's bulk updates leave the order open).
--   * `_cascade_force_skip_steps` completes the run when it leaves no step open, and the type
--     check of `complete_task` ignores a map child that was skipped (it will never run).
--   * `add_step` is dropped and created again (its signature grows): grants given on the old
--     function must be given again on the new one.

--------------------------------------------------------------------------------------------------
-- Tables
--------------------------------------------------------------------------------------------------

alter table pgflow.steps
  add column required_input_pattern jsonb,
  add column forbidden_input_pattern jsonb,
  add column when_unmet text not null default 'skip',
  add column when_exhausted text not null default 'fail',
  add constraint required_input_pattern_is_object check (
    required_input_pattern is null or jsonb_typeof(required_input_pattern) = 'object'),
  add constraint forbidden_input_pattern_is_object check (
    forbidden_input_pattern is null or jsonb_typeof(forbidden_input_pattern) = 'object'),
  add constraint when_unmet_is_valid check (when_unmet in ('fail', 'skip', 'skip-cascade')),
  add constraint when_exhausted_is_valid check (when_exhausted in ('fail', 'skip', 'skip-cascade'));

alter table pgflow.step_states
  add column skip_reason text,
  add column skipped_at timestamptz,
  drop constraint status_is_valid,
  add constraint status_is_valid check (
    status in ('created', 'started', 'completed', 'failed', 'skipped')),
  drop constraint status_and_remaining_tasks_match,
  add constraint status_and_remaining_tasks_match check (
    (status in ('created', 'skipped') and remaining_tasks is null)
    or (status not in ('created', 'skipped') and (remaining_tasks is not null or status = 'failed'))
  ),
  drop constraint completed_at_or_failed_at,
  add constraint completed_at_or_failed_at_or_skipped_at check (
    num_nonnulls(completed_at, failed_at, skipped_at) <= 1),
  add constraint skip_reason_matches_status check (
    (status = 'skipped' and skip_reason is not null)
    or (status <> 'skipped' and skip_reason is null)),
  add constraint skip_reason_is_valid check (
    skip_reason is null
    or skip_reason in ('condition_unmet', 'handler_failed', 'dependency_skipped')),
  add constraint skipped_at_matches_status check ((status = 'skipped') = (skipped_at is not null)),
  add constraint skipped_at_is_after_created_at check (skipped_at is null or skipped_at >= created_at);

alter table pgflow.step_tasks
  drop constraint valid_status,
  add constraint valid_status check (
    status in ('queued', 'started', 'completed', 'failed', 'skipped'));

--------------------------------------------------------------------------------------------------
-- Defining steps
--------------------------------------------------------------------------------------------------

drop function pgflow.add_step(text, text, text[], integer, integer, integer, integer, text);

create function pgflow.add_step(
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
      message = format('Map step "%s" can only have zero or one dependency, but %s were provided: %s',
                       add_step.step_slug, cardinality(v_deps), array_to_string(v_deps, ', ')),
      detail = format('flow %L', add_step.flow_slug);
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

--------------------------------------------------------------------------------------------------
-- Skipping steps
--------------------------------------------------------------------------------------------------

-- Marks one created or started step skipped: its unfinished tasks end as `skipped` (messages
-- archived) and the run has one step less to wait for. With p_release_dependents, each
-- dependent has one dependency less to wait for (a dependent map gets no tasks). Returns the
-- skipped row, or NULL when the step was already terminal. Sends no event: callers do, since
-- pgflow's payloads differ by cause.
create function pgflow._skip_step(
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

-- Skips a step and every step downstream of it, in step order: the step with the given
-- reason, the others with 'dependency_skipped'. Steps already terminal are left alone; a run
-- left with no open step completes. Returns how many steps it skipped.
create function pgflow._cascade_force_skip_steps(run_id uuid, step_slug text, skip_reason text)
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

--------------------------------------------------------------------------------------------------
-- Conditions
--------------------------------------------------------------------------------------------------

-- Evaluates the conditions of every step that is ready (created, no pending dependency) and
-- acts on the unmet ones, until no step changes: a skipped step can make its dependents ready.
-- Unmet with 'fail' (looked for first, in step order) fails the step and the run and returns
-- false; 'skip' skips the step; 'skip-cascade' skips it and everything downstream. Returns
-- true while the run goes on. Each round skips at least one step or ends the loop, so it
-- ends after at most as many rounds as the flow has steps.
create function pgflow.cascade_resolve_conditions(run_id uuid)
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

--------------------------------------------------------------------------------------------------
-- Running flows
--------------------------------------------------------------------------------------------------

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

--------------------------------------------------------------------------------------------------
-- Tasks
--------------------------------------------------------------------------------------------------

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

--------------------------------------------------------------------------------------------------
-- Retention
--------------------------------------------------------------------------------------------------

-- Deletes what is older than the retention interval: runs that completed or failed before
-- it (with their step states, tasks, leftover queue messages and, where the realtime schema
-- is pgflow-py's stand-in, their broadcast rows), archived messages of the flows' queues,
-- and worker rows that stopped heartbeating before it. Runs still going are never touched.
-- Schedule it (pg_cron, or any scheduler), e.g. select pgflow.prune_data_older_than('28 days').
create function pgflow.prune_data_older_than(retention_interval interval)
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

--------------------------------------------------------------------------------------------------
-- Privileges: nothing for PUBLIC; grant to your roles explicitly (see the docs).
--------------------------------------------------------------------------------------------------

revoke all on function pgflow.add_step(text, text, text[], integer, integer, integer, integer, text,
                                       jsonb, jsonb, text, text) from public;
revoke all on function pgflow._skip_step(uuid, text, text, text, boolean) from public;
revoke all on function pgflow._cascade_force_skip_steps(uuid, text, text) from public;
revoke all on function pgflow.cascade_resolve_conditions(uuid) from public;
revoke all on function pgflow.prune_data_older_than(interval) from public;
