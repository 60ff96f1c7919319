-- When a run fails, ends every task still queued or started (marking it failed with the
-- reason) and archives their messages, so nothing is left to cycle through workers.
create or replace function pgflow._terminate_run_tasks(p_run_id uuid, p_reason text)
returns integer
language plpgsql
set search_path to pg_catalog, pg_temp
as $fn$
declare
  v_flow_slug text;
  v_message_ids bigint[];
begin
  -- Lock the rows in message order first: start_tasks claims tasks in that order, so the two
  -- never wait for each other in a cycle. (The update alone locks in whatever order its plan
  -- visits the rows.)
  perform 1
     from pgflow.step_tasks as t
    where t.run_id = p_run_id
      and t.status in ('queued', 'started')
    order by t.message_id
      for update;

  with ended as (
    update pgflow.step_tasks as t
       set status = 'failed',
           failed_at = now(),
           error_message = coalesce(t.error_message, p_reason)
     where t.run_id = p_run_id
       and t.status in ('queued', 'started')
    returning t.flow_slug, t.message_id
  )
  select min(ended.flow_slug), array_agg(ended.message_id) filter (where ended.message_id is not null)
    into v_flow_slug, v_message_ids
    from ended;
  if cardinality(v_message_ids) > 0 then
    perform pgmq.archive(v_flow_slug, v_message_ids);
  end if;
  return coalesce(cardinality(v_message_ids), 0);
end;
$fn$;
