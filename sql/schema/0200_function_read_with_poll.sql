-- Reads up to qty messages, polling until some arrive or max_poll_seconds pass.
create or replace function pgflow.read_with_poll(
  queue_name text,
  vt integer,
  qty integer,
  max_poll_seconds integer default 5,
  poll_interval_ms integer default 100
)
returns setof pgmq.message_record
language plpgsql
set search_path to pg_catalog, pg_temp
as $fn$
declare
  deadline timestamptz := clock_timestamp() + make_interval(secs => max_poll_seconds);
begin
  loop
    return query select * from pgmq.read(queue_name, vt, qty);
    if found or clock_timestamp() >= deadline then
      return;
    end if;
    perform pg_sleep(poll_interval_ms / 1000.0);
  end loop;
end;
$fn$;
