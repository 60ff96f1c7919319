-- Archives the queue message of one task (no-op when it is already gone).
create or replace function pgflow._archive_task_message(
  p_run_id uuid,
  p_step_slug text,
  p_task_index integer
)
returns void
language plpgsql
set search_path to pg_catalog, pg_temp
as $fn$
declare
  v_queue_name text;
  v_message_id bigint;
begin
  select t.queue_name, t.message_id
    into v_queue_name, v_message_id
    from pgflow.step_tasks as t
   where t.run_id = p_run_id
     and t.step_slug = p_step_slug
     and t.task_index = p_task_index;
  if v_message_id is not null then
    perform pgflow._archive_message(v_queue_name, v_message_id);
  end if;
end;
$fn$;
