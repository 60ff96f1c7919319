-- Broadcasts a step's start and creates its tasks, one queue message each, visible after the
-- step's start delay: what starting a step does once its state row says 'started'.
create or replace function pgflow._start_step_tasks(
  p_run_id uuid,
  p_flow_slug text,
  p_step_slug text,
  p_initial_tasks integer,
  p_started_at timestamptz,
  p_queue_name text,
  p_start_delay integer
)
returns void
language plpgsql
set search_path to pg_catalog, pg_temp
as $fn$
begin
  perform realtime.send(
    jsonb_build_object(
      'event_type', 'step:started',
      'run_id', p_run_id,
      'step_slug', p_step_slug,
      'status', 'started',
      'started_at', p_started_at,
      'remaining_tasks', p_initial_tasks,
      'remaining_deps', 0),
    'step:' || p_step_slug || ':started',
    'pgflow:run:' || p_run_id,
    false);

  if p_initial_tasks = 1 then
    insert into pgflow.step_tasks (flow_slug, run_id, step_slug, task_index, message_id,
                                   queue_name)
    values (p_flow_slug, p_run_id, p_step_slug, 0,
            pgflow._send_message(
              p_queue_name,
              jsonb_build_object(
                'flow_slug', p_flow_slug,
                'run_id', p_run_id,
                'step_slug', p_step_slug,
                'task_index', 0),
              coalesce(p_start_delay, 0)),
            p_queue_name);
  else
    -- Message ids come from one sequence in insertion order, so the k-th smallest id belongs
    -- to task k.
    insert into pgflow.step_tasks (flow_slug, run_id, step_slug, task_index, message_id,
                                   queue_name)
    select p_flow_slug, p_run_id, p_step_slug,
           (row_number() over (order by sent.msg_id) - 1)::integer, sent.msg_id, p_queue_name
      from pgmq.send_batch(
             p_queue_name,
             array(
               select jsonb_build_object(
                        'flow_slug', p_flow_slug,
                        'run_id', p_run_id,
                        'step_slug', p_step_slug,
                        'task_index', i)
                 from generate_series(0, p_initial_tasks - 1) as i
                order by i),
             coalesce(p_start_delay, 0)) as sent (msg_id);
  end if;
end;
$fn$;
