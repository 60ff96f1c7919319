-- The name of this connection's prepared statement for one operation on a queue's own pgmq
-- tables ('send' or 'archive' one message), prepared on first use; null when the queue has no
-- such tables (its callers then use pgmq's function, and its error). pgmq's archive builds its
-- statement as text and plans it again on every call, which cost twice the move itself; its send
-- with a delay in seconds (the only one before pgmq 1.5) is an SQL function, planned again on
-- every call too. A prepared statement is planned once per connection and queue. The archive
-- moves the columns both tables have, so it follows the installed pgmq's layout.
create or replace function pgflow._queue_statement(p_queue_name text, p_operation text)
returns text
language plpgsql
set search_path to pg_catalog, pg_temp
as $fn$
declare
  v_name text := 'pgflow_' || p_operation || '_' || p_queue_name;
  v_queue regclass;
  v_archive regclass;
  v_columns text;
begin
  if exists (select 1 from pg_prepared_statements as ps where ps.name = v_name) then
    return v_name;
  end if;
  -- Longer names would be cut short by the parser and never found again under the full one.
  if octet_length(v_name) > 63 then
    return null;
  end if;
  v_queue := to_regclass(format('pgmq.%I', 'q_' || p_queue_name));
  if v_queue is null then
    return null;
  end if;

  if p_operation = 'send' then
    execute format(
      'prepare %I (jsonb, timestamptz) as '
      'insert into %s (vt, message) values ($2, $1) returning msg_id',
      v_name, v_queue);
  elsif p_operation = 'archive' then
    v_archive := to_regclass(format('pgmq.%I', 'a_' || p_queue_name));
    if v_archive is null then
      return null;
    end if;
    select string_agg(quote_ident(a.attname), ', ' order by a.attnum)
      into v_columns
      from pg_attribute as a
     where a.attrelid = v_archive and a.attnum > 0 and not a.attisdropped
       and exists (
         select 1 from pg_attribute as q
          where q.attrelid = v_queue and q.attname = a.attname
            and q.attnum > 0 and not q.attisdropped);
    execute format(
      'prepare %I (bigint) as '
      'with moved as (delete from %s where msg_id = $1 returning %s) '
      'insert into %s (%s) select %s from moved returning msg_id',
      v_name, v_queue, v_columns, v_archive, v_columns, v_columns);
  else
    raise exception using
      errcode = 'invalid_parameter_value',
      message = format('_queue_statement: no operation %L (send or archive)', p_operation);
  end if;
  return v_name;
end;
$fn$;
