-- pgflow-py realtime stand-in
--
-- Supabase's Realtime server creates the `realtime` schema itself. On plain PostgreSQL this file
-- stands in for the two objects pgflow uses, with the same shape and behaviour:
--   * realtime.messages, range-partitioned by inserted_at (one default partition here);
--   * realtime.send(payload, event, topic, private default true), which adds an `id` to the
--     payload when it has none, sets the `realtime.topic` setting for the transaction, inserts
--     a broadcast row, and turns any error into a WARNING so the caller never fails.
-- On top, every inserted row raises a NOTIFY on channel `realtime_broadcast` carrying only the
-- row's id and topic (payloads can exceed NOTIFY's 8000-byte limit); listeners read the row.
-- NOTIFY is delivered at commit, so listeners see committed events in commit order.
--
-- `pgflow migrate` applies this only where no realtime.send exists; it is idempotent.

create schema if not exists realtime;

create table if not exists realtime.messages (
  topic text not null,
  extension text not null,
  payload jsonb,
  event text,
  private boolean default false,
  updated_at timestamp without time zone not null default now(),
  inserted_at timestamp without time zone not null default now(),
  id uuid not null default gen_random_uuid(),
  primary key (id, inserted_at)
) partition by range (inserted_at);

create table if not exists realtime.messages_default
  partition of realtime.messages default;

create index if not exists messages_topic_inserted_at_idx
  on realtime.messages (topic, inserted_at);

create or replace function realtime.topic()
returns text
language sql
stable
as $fn$ select nullif(current_setting('realtime.topic', true), '') $fn$;

create or replace function realtime.send(
  payload jsonb,
  event text,
  topic text,
  private boolean default true
)
returns void
language plpgsql
as $fn$
declare
  message_id uuid;
  message_payload jsonb;
begin
  begin
    if payload ? 'id' then
      message_id := case
        when (payload ->> 'id') ~* '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$'
        then (payload ->> 'id')::uuid
        else gen_random_uuid()
      end;
      message_payload := payload;
    else
      message_id := gen_random_uuid();
      message_payload := payload || jsonb_build_object('id', message_id);
    end if;

    perform set_config('realtime.topic', topic, true);

    insert into realtime.messages (id, payload, event, topic, private, extension)
    values (message_id, message_payload, event, topic, private, 'broadcast');
  exception when others then
    raise warning 'ErrorSendingBroadcastMessage: %', sqlerrm;
  end;
end;
$fn$;

comment on function realtime.send(jsonb, text, text, boolean) is
  'pgflow-py realtime stand-in: same signature and behaviour as Supabase''s realtime.send';

create or replace function realtime.notify_message_inserted()
returns trigger
language plpgsql
as $fn$
begin
  perform pg_notify(
    'realtime_broadcast',
    json_build_object('id', new.id, 'topic', new.topic)::text
  );
  return null;
end;
$fn$;

drop trigger if exists notify_message_inserted on realtime.messages;
create trigger notify_message_inserted
  after insert on realtime.messages
  for each row execute function realtime.notify_message_inserted();
