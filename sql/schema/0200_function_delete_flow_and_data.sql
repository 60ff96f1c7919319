-- Deletes a flow with everything it holds: its tasks, step states and runs, its definition, and
-- its pgmq queues (every step's queue, and in queue mode 'flow' the flow's). Destructive by design: ensure_flow_compiled uses it to recompile a changed
-- flow in development. Serialized with the other definition writers of the flow.
create or replace function pgflow.delete_flow_and_data(p_flow_slug text)
returns void
language plpgsql
set search_path to pg_catalog, pg_temp
as $fn$
declare
  v_mode text;
begin
  perform pg_advisory_xact_lock(1, hashtext(lower(p_flow_slug)));

  -- Only a flow of exactly this slug has queues to drop.
  select f.queue_mode into v_mode from pgflow.flows as f where f.flow_slug = p_flow_slug;
  if v_mode is not null then
    perform pgmq.drop_queue(pgflow._listed_queue_name(q.queue_name))
       from (select s.queue_name from pgflow.steps as s where s.flow_slug = p_flow_slug
             union
             select lower(p_flow_slug) where v_mode = 'flow') as q
      where exists (select 1 from pgmq.list_queues() as l
                     where lower(l.queue_name) = q.queue_name);
  end if;

  delete from pgflow.step_tasks as t where t.flow_slug = p_flow_slug;
  delete from pgflow.step_states as s where s.flow_slug = p_flow_slug;
  delete from pgflow.runs as r where r.flow_slug = p_flow_slug;
  delete from pgflow.deps as d where d.flow_slug = p_flow_slug;
  delete from pgflow.steps as s where s.flow_slug = p_flow_slug;
  delete from pgflow.flows as f where f.flow_slug = p_flow_slug;
end;
$fn$;
