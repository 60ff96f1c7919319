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
  v_conditional boolean;
  v_input_length integer;
  v_ready integer;
  v_taskless integer;
  v_run pgflow.runs;
begin
  select count(s.step_slug),
         count(*) filter (where s.step_type = 'map' and s.deps_count = 0),
         coalesce(bool_or(s.required_input_pattern is not null
                          or s.forbidden_input_pattern is not null), false)
    into v_step_count, v_root_maps, v_conditional
    from pgflow.flows as f
    left join pgflow.steps as s on s.flow_slug = f.flow_slug
   where f.flow_slug = start_flow.flow_slug
   group by f.flow_slug;
  if not found then
    raise exception using
      errcode = 'foreign_key_violation',
      message = format('start_flow: flow %s does not exist',
                       coalesce(quote_literal(start_flow.flow_slug), 'NULL'));
  end if;

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

  with states as (
    insert into pgflow.step_states (flow_slug, run_id, step_slug, remaining_deps, initial_tasks)
    select s.flow_slug, v_run.run_id, s.step_slug, s.deps_count,
           case
             when s.step_type = 'map' and s.deps_count = 0 then v_input_length
             when s.step_type = 'map' then null
             else 1
           end
      from pgflow.steps as s
     where s.flow_slug = start_flow.flow_slug
    returning step_states.remaining_deps, step_states.initial_tasks
  )
  select count(*) filter (where st.remaining_deps = 0 and st.initial_tasks > 0),
         count(*) filter (where st.remaining_deps = 0 and st.initial_tasks = 0)
    into v_ready, v_taskless
    from states as st;

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

  if v_conditional then
    if pgflow.cascade_resolve_conditions(v_run.run_id) then
      perform pgflow.cascade_complete_taskless_steps(v_run.run_id);
      perform pgflow.start_ready_steps(v_run.run_id);
      perform pgflow.maybe_complete_run(v_run.run_id);
    end if;
  elsif v_taskless > 0 or v_step_count = 0 then
    perform pgflow.cascade_complete_taskless_steps(v_run.run_id);
    perform pgflow.start_ready_steps(v_run.run_id);
    perform pgflow.maybe_complete_run(v_run.run_id);
  else
    -- Without conditions nor taskless steps, the ready steps start and the run is as inserted.
    if v_ready > 0 then
      perform pgflow.start_ready_steps(v_run.run_id);
    end if;
    return next v_run;
    return;
  end if;

  return query select * from pgflow.runs as r where r.run_id = v_run.run_id;
end;
$fn$;
