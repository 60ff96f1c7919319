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
    select t.run_id, t.step_slug, t.task_index, t.queue_name, t.message_id, t.requeued_count
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
        perform pgmq.set_vt(v_task.queue_name, v_task.message_id, 0);
      end if;
      v_requeued := v_requeued + 1;
    else
      update pgflow.step_tasks as t
         set permanently_stalled_at = now()
       where t.run_id = v_task.run_id
         and t.step_slug = v_task.step_slug
         and t.task_index = v_task.task_index;
      if v_task.message_id is not null then
        perform pgflow._archive_message(v_task.queue_name, v_task.message_id);
      end if;
    end if;
  end loop;
  return v_requeued;
end;
$fn$;
