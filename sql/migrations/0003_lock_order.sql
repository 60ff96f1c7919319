-- pgflow-py SQL core, part 3: lock order when a run or a step ends its tasks; the flow in the
-- map-step dependency error.
--
--   * `_terminate_run_tasks` (a run fails) and `_skip_step` (a step is skipped) lock the tasks
--     they end in message order before updating them. `start_tasks` claims tasks in message
--     order; the update alone locked them in its plan's order (by step slug through the index,
--     by physical position in a sequential scan), so a run failing while a worker claimed its
--     tasks could deadlock (40P01).
--   * `add_step` names the flow in the message of the "map step with more than one dependency"
--     error, at its end (it was in the DETAIL only); the rest of the message is unchanged.
--
-- Every function keeps its signature (`create or replace`), so grants on them are kept.

--------------------------------------------------------------------------------------------------
-- Ending tasks in message order
--------------------------------------------------------------------------------------------------

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

--------------------------------------------------------------------------------------------------
-- Defining steps
--------------------------------------------------------------------------------------------------

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
