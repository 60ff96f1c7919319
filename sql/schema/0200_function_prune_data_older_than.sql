-- Deletes what is older than the retention interval: runs that completed or failed before
-- it (with their step states, tasks, leftover queue messages and, where the realtime schema
-- is pgflow-py's stand-in, their broadcast rows), archived messages of the flows' queues,
-- and worker rows that stopped heartbeating before it. Runs still going are never touched.
-- Schedule it (pg_cron, or any scheduler), e.g. select pgflow.prune_data_older_than('28 days').
create or replace function pgflow.prune_data_older_than(retention_interval interval)
returns void
language plpgsql
set search_path to pg_catalog, pg_temp
as $fn$
declare
  v_cutoff timestamptz;
  v_runs uuid[];
  v_queue record;
begin
  if retention_interval is null or retention_interval < interval '0' then
    raise exception using
      errcode = 'invalid_parameter_value',
      message = format('prune_data_older_than: the retention interval must be zero or more '
                       '(got %s)', coalesce(retention_interval::text, 'NULL'));
  end if;
  v_cutoff := now() - retention_interval;

  -- The runs are chosen once: a run finishing while this runs is kept whole.
  select coalesce(array_agg(r.run_id), '{}') into v_runs
    from pgflow.runs as r
   where (r.status = 'completed' and r.completed_at < v_cutoff)
      or (r.status = 'failed' and r.failed_at < v_cutoff);

  if cardinality(v_runs) > 0 then
    -- Normally every message of a finished run is archived already; delete any left over,
    -- so that no message outlives its task.
    for v_queue in
      select t.queue_name, array_agg(t.message_id) as message_ids
        from pgflow.step_tasks as t
       where t.run_id = any (v_runs)
         and t.message_id is not null
         and exists (select 1 from pgmq.meta as m where lower(m.queue_name) = t.queue_name)
       group by t.queue_name
    loop
      perform pgmq.delete(v_queue.queue_name, v_queue.message_ids);
    end loop;

    -- Supabase's Realtime server owns and expires its own messages table: leave it alone.
    if to_regclass('realtime.messages') is not null
       and coalesce(obj_description(to_regprocedure('realtime.send(jsonb,text,text,boolean)'),
                                    'pg_proc'), '') like '%pgflow-py realtime stand-in%' then
      execute 'delete from realtime.messages where topic = any ($1)'
        using array(select 'pgflow:run:' || x from unnest(v_runs) as x);
    end if;

    delete from pgflow.step_tasks as t where t.run_id = any (v_runs);
    delete from pgflow.step_states as ss where ss.run_id = any (v_runs);
    delete from pgflow.runs as r where r.run_id = any (v_runs);
  end if;

  for v_queue in
    select distinct s.queue_name
      from pgflow.steps as s
     where exists (select 1 from pgmq.meta as m where lower(m.queue_name) = s.queue_name)
    union
    select lower(f.flow_slug)
      from pgflow.flows as f
     where f.queue_mode = 'flow'
       and exists (select 1 from pgmq.meta as m where lower(m.queue_name) = lower(f.flow_slug))
  loop
    execute format('delete from pgmq.%I where archived_at < $1',
                   pgmq.format_table_name(v_queue.queue_name, 'a'))
      using v_cutoff;
  end loop;

  delete from pgflow.workers as w where w.last_heartbeat_at < v_cutoff;
end;
$fn$;
