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
    perform realtime.send(
      jsonb_build_object(
        'event_type', 'step:started',
        'run_id', start_ready_steps.run_id,
        'step_slug', v_step.step_slug,
        'status', 'started',
        'started_at', v_step.started_at,
        'remaining_tasks', v_step.initial_tasks,
        'remaining_deps', 0),
      'step:' || v_step.step_slug || ':started',
      'pgflow:run:' || start_ready_steps.run_id,
      false);

    if v_step.initial_tasks = 1 then
      insert into pgflow.step_tasks (flow_slug, run_id, step_slug, task_index, message_id,
                                     queue_name)
      values (v_flow_slug, start_ready_steps.run_id, v_step.step_slug, 0,
              pgflow._send_message(
                v_step.queue_name,
                jsonb_build_object(
                  'flow_slug', v_flow_slug,
                  'run_id', start_ready_steps.run_id,
                  'step_slug', v_step.step_slug,
                  'task_index', 0),
                coalesce(v_step.opt_start_delay, 0)),
              v_step.queue_name);
    else
      -- Message ids come from one sequence in insertion order, so the k-th smallest id
      -- belongs to task k.
      insert into pgflow.step_tasks (flow_slug, run_id, step_slug, task_index, message_id,
                                     queue_name)
      select v_flow_slug, start_ready_steps.run_id, v_step.step_slug,
             (row_number() over (order by sent.msg_id) - 1)::integer, sent.msg_id,
             v_step.queue_name
        from pgmq.send_batch(
               v_step.queue_name,
               array(
                 select jsonb_build_object(
                          'flow_slug', v_flow_slug,
                          'run_id', start_ready_steps.run_id,
                          'step_slug', v_step.step_slug,
                          'task_index', i)
                   from generate_series(0, v_step.initial_tasks - 1) as i
                  order by i),
               coalesce(v_step.opt_start_delay, 0)) as sent (msg_id);
    end if;
  end loop;
end;
$fn$;
