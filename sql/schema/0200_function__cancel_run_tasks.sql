-- When a run fails, ends every task of it still queued or started as `cancelled` and archives
-- their messages, so nothing is left to cycle through workers. Tasks that already finished
-- (the failed culprit among them) keep their outcome. Returns how many tasks it cancelled.
create or replace function pgflow._cancel_run_tasks(p_run_id uuid)
returns integer
language plpgsql
set search_path to pg_catalog, pg_temp
as $fn$
declare
  v_flow_slug text;
  v_count integer;
  v_message_ids bigint[];
begin
  -- Lock the rows in message order first: start_tasks claims tasks in that order, so the two
  -- never wait for each other in a cycle. (The update alone locks in whatever order its plan
  -- visits the rows.) Task rows are always updated before the queue's rows are touched.
  perform 1
     from pgflow.step_tasks as t
    where t.run_id = p_run_id
      and t.status in ('queued', 'started')
    order by t.message_id
      for update;

  with cancelled as (
    update pgflow.step_tasks as t
       set status = 'cancelled'
     where t.run_id = p_run_id
       and t.status in ('queued', 'started')
    returning t.flow_slug, t.message_id
  )
  select min(cancelled.flow_slug), count(*),
         array_agg(cancelled.message_id) filter (where cancelled.message_id is not null)
    into v_flow_slug, v_count, v_message_ids
    from cancelled;
  if cardinality(v_message_ids) > 0 then
    perform pgmq.archive(v_flow_slug, v_message_ids);
  end if;
  return v_count;
end;
$fn$;
