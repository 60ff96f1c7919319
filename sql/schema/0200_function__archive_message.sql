-- Moves one message of a queue to its archive (a no-op when it is already gone), in half the
-- time of pgmq's archive. Through the connection's prepared statement for the queue (see
-- _queue_statement), or pgmq's archive.
create or replace function pgflow._archive_message(p_queue_name text, p_message_id bigint)
returns void
language plpgsql
set search_path to pg_catalog, pg_temp
as $fn$
declare
  v_statement text := pgflow._queue_statement(p_queue_name, 'archive');
begin
  if v_statement is null then
    perform pgmq.archive(p_queue_name, p_message_id);
  else
    execute format('execute %I(%s)', v_statement, p_message_id);
  end if;
end;
$fn$;
