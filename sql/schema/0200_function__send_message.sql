-- Sends one message to a queue, visible after a delay in seconds; its message id. Through the
-- connection's prepared statement for the queue (see _queue_statement), or pgmq's send: one
-- path for every pgmq version, as fast as pgmq's timed send (1.5 on), twice the speed of the
-- older send with a delay.
create or replace function pgflow._send_message(
  p_queue_name text,
  p_message jsonb,
  p_delay integer
)
returns bigint
language plpgsql
set search_path to pg_catalog, pg_temp
as $fn$
declare
  v_statement text := pgflow._queue_statement(p_queue_name, 'send');
  v_message_id bigint;
begin
  if v_statement is null then
    select sent.msg_id into v_message_id
      from pgmq.send(p_queue_name, p_message, p_delay) as sent (msg_id);
    return v_message_id;
  end if;
  execute format('execute %I(%L, %L)', v_statement, p_message,
                 clock_timestamp() + make_interval(secs => p_delay))
     into v_message_id;
  return v_message_id;
end;
$fn$;
