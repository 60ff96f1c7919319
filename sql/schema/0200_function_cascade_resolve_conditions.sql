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
