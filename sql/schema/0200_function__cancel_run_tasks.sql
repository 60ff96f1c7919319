-- When a run fails, ends every task of it still queued or started as `cancelled` and archives
-- their messages, so nothing is left to cycle through workers. Tasks that already finished
-- (the failed culprit among them) keep their outcome. Returns how many tasks it cancelled.
create or replace function pgflow._cancel_run_tasks(p_run_id uuid)
returns integer
language plpgsql
set search_path to pg_catalog, pg_temp
as $fn$
declare
  v_count integer;
  v_queues text[];
  v_message_ids bigint[];
  v_queue record;
begin
  -- Lock the rows in (queue, message) order first: start_tasks claims one queue's tasks in
  -- message order, so the two never wait for each other in a cycle. (The update alone locks
  -- in whatever order its plan visits the rows.) Task rows are always updated before the
  -- queues' rows are touched; the messages are archived queue by queue.
  perform 1
     from pgflow.step_tasks as t
    where t.run_id = p_run_id
      and t.status in ('queued', 'started')
    order by t.queue_name, t.message_id
      for update;

  with cancelled as (
    update pgflow.step_tasks as t
       set status = 'cancelled'
     where t.run_id = p_run_id
       and t.status in ('queued', 'started')
    returning t.queue_name, t.message_id
  )
  select count(*),
         array_agg(cancelled.queue_name) filter (where cancelled.message_id is not null),
         array_agg(cancelled.message_id) filter (where cancelled.message_id is not null)
    into v_count, v_queues, v_message_ids
    from cancelled;
  for v_queue in
    select m.queue_name, array_agg(m.message_id) as message_ids
      from unnest(v_queues, v_message_ids) as m (queue_name, message_id)
     group by m.queue_name
  loop
    perform pgmq.archive(v_queue.queue_name, v_queue.message_ids);
  end loop;
  return v_count;
end;
$fn$;
