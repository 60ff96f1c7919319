-- Starts every created step whose dependencies are done and whose task count is known and
-- positive: one queue message per task, sent to the step's queue with the step's start delay.
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

  -- One update starts them all; events and messages follow in step order.
  for v_step in
    with started as (
      update pgflow.step_states as ss
         set status = 'started',
             started_at = now(),
             remaining_tasks = ss.initial_tasks
        from pgflow.steps as st
       where ss.run_id = start_ready_steps.run_id
         and ss.status = 'created'
         and ss.remaining_deps = 0
         and ss.initial_tasks > 0
         and st.flow_slug = ss.flow_slug
         and st.step_slug = ss.step_slug
      returning ss.step_slug, ss.initial_tasks, ss.started_at, st.step_index, st.opt_start_delay,
                st.queue_name
    )
    select * from started order by started.step_index
  loop
    perform pgflow._start_step_tasks(start_ready_steps.run_id, v_flow_slug, v_step.step_slug,
                                     v_step.initial_tasks, v_step.started_at,
                                     v_step.queue_name, v_step.opt_start_delay);
  end loop;
end;
$fn$;
