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
