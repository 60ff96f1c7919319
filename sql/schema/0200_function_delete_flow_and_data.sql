-- Deletes a flow with everything it holds: its tasks, step states and runs, its definition, and
-- its pgmq queue. Destructive by design: ensure_flow_compiled uses it to recompile a changed
-- flow in development. Serialized with the other definition writers of the flow.
create or replace function pgflow.delete_flow_and_data(p_flow_slug text)
returns void
language plpgsql
set search_path to pg_catalog, pg_temp
as $fn$
begin
  perform pg_advisory_xact_lock(1, hashtext(lower(p_flow_slug)));

  delete from pgflow.step_tasks as t where t.flow_slug = p_flow_slug;
  delete from pgflow.step_states as s where s.flow_slug = p_flow_slug;
  delete from pgflow.runs as r where r.flow_slug = p_flow_slug;
  delete from pgflow.deps as d where d.flow_slug = p_flow_slug;
  delete from pgflow.steps as s where s.flow_slug = p_flow_slug;
  delete from pgflow.flows as f where f.flow_slug = p_flow_slug;

  if exists (select 1 from pgmq.meta as m where m.queue_name = p_flow_slug) then
    perform pgmq.drop_queue(p_flow_slug);
  end if;
end;
$fn$;
