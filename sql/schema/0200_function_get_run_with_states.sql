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
