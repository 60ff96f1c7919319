-- Sets each message's visibility to now + its own offset, in one statement. As in pgflow, a
-- NULL array means nothing to do (no row), and arrays of different lengths raise P0001.
create or replace function pgflow.set_vt_batch(queue_name text, msg_ids bigint[], vt_offsets integer[])
returns table (
  msg_id bigint,
  read_ct integer,
  enqueued_at timestamptz,
  vt timestamptz,
  message jsonb,
  headers jsonb
)
language plpgsql
set search_path to pg_catalog, pg_temp
as $fn$
begin
  if msg_ids is null or vt_offsets is null then
    return;
  end if;
  if cardinality(msg_ids) <> cardinality(vt_offsets) then
    raise exception using
      errcode = 'raise_exception',
      message = format('msg_ids length (%s) must equal vt_offsets length (%s)',
                       cardinality(msg_ids), cardinality(vt_offsets)),
      hint = 'Give set_vt_batch one visibility offset per message id.';
  end if;
  if cardinality(msg_ids) = 0 then
    return;
  end if;
  return query execute format(
    $q$
      update pgmq.%I as q
         set vt = clock_timestamp() + make_interval(secs => u.vt_offset)
        from unnest($1::bigint[], $2::integer[]) as u (msg_id, vt_offset)
       where q.msg_id = u.msg_id
      returning q.msg_id, q.read_ct, q.enqueued_at, q.vt, q.message, q.headers
    $q$,
    pgmq.format_table_name(queue_name, 'q'))
  using msg_ids, vt_offsets;
end;
$fn$;
