-- Phase two of polling: claims the queued tasks behind the messages a worker has read and
-- returns what their handlers need: only the tasks it moved from `queued` to `started`, each
-- message hidden for its step's timeout + 2 s. A message whose task is still `started` after
-- that time means the lease expired (the worker vanished or the handler hung): that attempt is
-- failed through fail_task, which retries it with backoff or fails the step. Any other message
-- (its task finished, skipped, cancelled, or not found) claims nothing.
-- The messages are those of one queue: queue_name, the flow's (lower(flow_slug)) in queue mode
-- 'flow', or in mode 'step' the queue of step_slug, which must then be given (pgflow 0.17).
create or replace function pgflow.start_tasks(
  flow_slug text,
  msg_ids bigint[],
  worker_id uuid,
  queue_name text,
  step_slug text default null
)
returns setof pgflow.step_task_record
language plpgsql
set search_path to pg_catalog, pg_temp
as $fn$
declare
  v_msg_id bigint;
  v_task pgflow.step_tasks;
  v_tasks pgflow.step_tasks[] := '{}';
  v_step_of text;
  v_step_type text;
  v_deps_count integer;
  v_timeout integer;
  v_source_of text;
  v_source jsonb;
  v_flow_input jsonb;
  v_record pgflow.step_task_record;
  v_claimed_ids bigint[] := '{}';
  v_offsets integer[] := '{}';
  v_extended integer;
  v_mode text;
  v_tids tid[];
begin
  select f.queue_mode into v_mode from pgflow.flows as f where f.flow_slug = start_tasks.flow_slug;
  if not found then
    return;  -- an unknown flow has nothing to claim
  end if;
  if v_mode = 'step' then
    if start_tasks.step_slug is null then
      raise exception using
        errcode = 'invalid_parameter_value',
        message = format('start_tasks: flow %L has a queue per step: name the step whose queue '
                         '%L was read (step_slug)', start_tasks.flow_slug, start_tasks.queue_name);
    end if;
    if not exists (select 1 from pgflow.steps as s
                    where s.flow_slug = start_tasks.flow_slug
                      and s.step_slug = start_tasks.step_slug
                      and s.queue_name = start_tasks.queue_name) then
      raise exception using
        errcode = 'invalid_parameter_value',
        message = format('start_tasks: step %L of flow %L does not use the queue %L',
                         start_tasks.step_slug, start_tasks.flow_slug, start_tasks.queue_name),
        hint = 'Read the queue stored for the step in pgflow.steps.queue_name.';
    end if;
  elsif start_tasks.step_slug is not null then
    raise exception using
      errcode = 'invalid_parameter_value',
      message = format('start_tasks: flow %L has one queue for all its steps: step_slug %L '
                       'cannot be given', start_tasks.flow_slug, start_tasks.step_slug);
  end if;

  -- One index probe per message id. (A set-based lookup is at the planner's mercy: on tables
  -- without fresh statistics it can scan every task of a big map on each call.)
  foreach v_msg_id in array array(
    select distinct m.id from unnest(start_tasks.msg_ids) as m (id) where m.id is not null
     order by m.id)
  loop
    select * into v_task
      from pgflow.step_tasks as t
     where t.queue_name = start_tasks.queue_name and t.message_id = v_msg_id;
    -- A message of another flow or step claims nothing.
    if found and v_task.flow_slug = start_tasks.flow_slug
       and (start_tasks.step_slug is null or v_task.step_slug = start_tasks.step_slug) then
      v_tasks := v_tasks || v_task;
    end if;
  end loop;

  -- Expired leases first, so a run failed by one of them has no task handed out below.
  foreach v_task in array v_tasks loop
    continue when v_task.status <> 'started';
    select coalesce(s.opt_timeout, f.opt_timeout) into v_timeout
      from pgflow.steps as s
      join pgflow.flows as f on f.flow_slug = s.flow_slug
     where s.flow_slug = v_task.flow_slug and s.step_slug = v_task.step_slug;
    continue when v_task.started_at > clock_timestamp() - make_interval(secs => v_timeout + 2)
      or not exists (select 1 from pgflow.runs as r
                      where r.run_id = v_task.run_id and r.status = 'started');
    -- A task its worker finished meanwhile is left as it is by fail_task.
    perform pgflow.fail_task(
      v_task.run_id, v_task.step_slug, v_task.task_index,
      format('Task lease expired: no result within %s s of its start (the worker stopped '
             'or the handler hung)', v_timeout + 2));
  end loop;

  -- Claim the queued ones (a failed attempt above is queued again but waits for its backoff).
  -- Their rows are locked in message order, as everything that ends a run's tasks does, so the
  -- two never deadlock: one primary-key probe per task, whatever the planner knows of the
  -- table. One update then claims them all.
  select array_agg(l.tid order by c.ordinality)
    into v_tids
    from unnest(v_tasks) with ordinality as c
   cross join lateral (
     select t.ctid as tid
       from pgflow.step_tasks as t
      where t.run_id = c.run_id
        and t.step_slug = c.step_slug
        and t.task_index = c.task_index
        and t.status = 'queued'
        and exists (select 1 from pgflow.runs as r
                     where r.run_id = t.run_id and r.status = 'started')
        and exists (select 1 from pgflow.step_states as ss
                     where ss.run_id = t.run_id and ss.step_slug = t.step_slug
                       and ss.status = 'started')
        for update of t
   ) as l
   where c.status = 'queued';

  with claimed as (
    update pgflow.step_tasks as t
       set status = 'started',
           started_at = now(),
           attempts_count = t.attempts_count + 1,
           last_worker_id = start_tasks.worker_id
     where t.ctid = any (v_tids)
    returning t
  )
  select coalesce(array_agg(claimed.t order by (claimed.t).message_id), '{}')
    into v_tasks
    from claimed;

  foreach v_task in array v_tasks loop
    -- The step's definition, loaded once per step of this batch (the flow is the same for all).
    if v_step_of is distinct from v_task.step_slug then
      v_step_of := v_task.step_slug;
      select s.step_type, s.deps_count, coalesce(s.opt_timeout, f.opt_timeout)
        into v_step_type, v_deps_count, v_timeout
        from pgflow.steps as s
        join pgflow.flows as f on f.flow_slug = s.flow_slug
       where s.flow_slug = v_task.flow_slug and s.step_slug = v_task.step_slug;
    end if;

    -- What the step's tasks read, loaded once per run and step of this batch.
    if v_source_of is distinct from v_task.run_id::text || '/' || v_task.step_slug then
      v_source_of := v_task.run_id::text || '/' || v_task.step_slug;
      v_flow_input := null;
      if v_step_type = 'single' and v_deps_count = 0 then
        -- A root step reads the run's input beside an empty object of dependencies.
        v_source := '{}'::jsonb;
        select r.input into v_flow_input from pgflow.runs as r where r.run_id = v_task.run_id;
      elsif v_step_type = 'single' then
        select coalesce(jsonb_object_agg(d.dep_slug, ps.output), '{}'::jsonb) into v_source
          from pgflow.deps as d
          join pgflow.step_states as ps on ps.run_id = v_task.run_id and ps.step_slug = d.dep_slug
         where d.flow_slug = v_task.flow_slug
           and d.step_slug = v_task.step_slug
           and ps.status = 'completed';
      else
        if v_deps_count = 0 then
          select r.input into v_source from pgflow.runs as r where r.run_id = v_task.run_id;
        else
          select ps.output into v_source
            from pgflow.deps as d
            join pgflow.step_states as ps
              on ps.run_id = v_task.run_id and ps.step_slug = d.dep_slug
           where d.flow_slug = v_task.flow_slug and d.step_slug = v_task.step_slug;
        end if;
        -- A big array is stored compressed and each `->` below would decompress all of it
        -- again; appending nothing gives the same array, decompressed once for this call.
        v_source := v_source || '[]'::jsonb;
      end if;
    end if;

    v_claimed_ids := v_claimed_ids || v_task.message_id;
    v_offsets := v_offsets || (v_timeout + 2);
    v_record := row(
      v_task.flow_slug,
      v_task.run_id,
      v_task.step_slug,
      case when v_step_type = 'map' then v_source -> v_task.task_index else v_source end,
      v_task.message_id,
      v_task.task_index,
      v_flow_input)::pgflow.step_task_record;
    return next v_record;
  end loop;

  -- Every claimed message must be hidden for its task's run time, or another worker would
  -- read it again meanwhile: a message gone from the queue undoes the whole claim (SQLSTATE
  -- 22P02, as pgflow's).
  select count(*) into v_extended
    from pgflow.set_vt_batch(start_tasks.queue_name, v_claimed_ids, v_offsets);
  if v_extended <> cardinality(v_claimed_ids) then
    raise exception using
      errcode = 'invalid_text_representation',
      message = format('start_tasks(): visibility updated %s of %s claimed messages',
                       v_extended, cardinality(v_claimed_ids)),
      detail = format('Claimed messages of queue %L: %s. A message of a queued task was deleted '
                      'or archived outside pgflow; nothing was claimed.',
                      start_tasks.queue_name, v_claimed_ids);
  end if;
end;
$fn$;

-- The three-argument form of pgflow up to 0.16 (and of @pgflow/core 0.8.1's workers): claims from
-- the flow's queue, lower(flow_slug), of a flow in queue mode 'flow'.
create or replace function pgflow.start_tasks(flow_slug text, msg_ids bigint[], worker_id uuid)
returns setof pgflow.step_task_record
language plpgsql
set search_path to pg_catalog, pg_temp
as $fn$
begin
  -- PL/pgSQL keeps this statement's plan; a SQL function with a pinned search_path cannot be
  -- inlined and would be parsed and planned again on every call.
  return query select * from pgflow.start_tasks(start_tasks.flow_slug, start_tasks.msg_ids,
                                                start_tasks.worker_id, lower(start_tasks.flow_slug));
end;
$fn$;
