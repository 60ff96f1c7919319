-- The spelling under which pgmq lists a queue, found ignoring case (queues of flows created
-- before pgflow 0.17 may be mixed-case): the name itself when pgmq lists no such queue, and an
-- error when it lists several spellings, which only a hand-made queue can cause.
create or replace function pgflow._listed_queue_name(p_queue_name text)
returns text
language plpgsql
stable
set search_path to pg_catalog, pg_temp
as $fn$
declare
  v_listed text[];
begin
  select array_agg(q.queue_name order by q.queue_name) into v_listed
    from pgmq.list_queues() as q
   where lower(q.queue_name) = lower(p_queue_name);
  if v_listed is null then
    return p_queue_name;
  end if;
  if cardinality(v_listed) > 1 then
    raise exception using
      errcode = 'ambiguous_alias',
      message = format('queue name %L is ambiguous: pgmq lists it as %s', p_queue_name,
                       array_to_string(v_listed, ', ')),
      hint = 'Drop the queue spellings no flow uses, then retry.';
  end if;
  return v_listed[1];
end;
$fn$;
