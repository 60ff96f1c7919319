-- pgflow-py SQL core, migration 0007: faster_core.
--
-- The same functions, signatures, queue messages and events, in fewer statements: complete_task
-- counts a task down and completes its step in one update, and starts the dependents only when
-- one became ready; start_ready_steps starts every ready step with one update; start_flow skips
-- the condition and empty-step passes for flows that have neither; start_tasks claims a batch
-- with one update. Step tasks check their queue name without a function call, and step states
-- are updated in place (HOT).
--
-- The tables by hand, the functions started from their schema files by
--   python -m pgflow_worker._database.derive next faster_core ...
-- A function added here gets EXECUTE for PUBLIC unless this migration revokes it, as
-- sql/schema/0900_privileges.sql does for the schema; the drift test compares the two.

-- ---- tables ----

-- A task's queue name is checked by the expression of pgflow.is_valid_queue_name written out:
-- the function, whose search_path is pinned, cannot be inlined and was parsed and planned again
-- for every task row written. The same rule, so the rows already there pass it.
alter table pgflow.step_tasks
  drop constraint queue_name_is_valid,
  add constraint queue_name_is_valid check (
    queue_name <> '' and length(queue_name) <= 47 and queue_name = lower(queue_name));

-- Step states: no index on the columns their updates change, and room in each page, so the
-- updates of a run's steps stay on their page (HOT) and add no index entries. The dropped index
-- on (run_id, status, remaining_deps) only narrowed a run's few steps, which the primary key
-- (run_id first) finds as well. The fill factor applies to pages written from now on.
drop index pgflow.idx_step_states_ready;
alter table pgflow.step_states set (fillfactor = 75);

-- ---- schema/0200_function_complete_task.sql ----

-- Records a task's output: the step completes with its last task, and its dependents may start.
-- A late or duplicate result (the run or the step already ended, or the task is not `started`)
-- changes nothing and returns the task row as it is.
create or replace function pgflow.complete_task(
  run_id uuid,
  step_slug text,
  task_index integer,
  output jsonb
)
returns setof pgflow.step_tasks
language plpgsql
set search_path to pg_catalog, pg_temp
as $fn$
declare
  v_run_status text;
  v_flow_slug text;
  v_state_status text;
  v_step_type text;
  v_feeds_map boolean;
  v_conditional boolean;
  v_task pgflow.step_tasks;
  v_map_child text;
  v_got text;
  v_step_error text;
  v_remaining_tasks integer;
  v_initial_tasks integer;
  v_output jsonb;
  v_completed_at timestamptz;
  v_child_tasks integer;
  v_ready integer;
  v_taskless integer;
  v_remaining_steps integer;
begin
  -- Locks in pgflow's order: the run, the step state, the task.
  select r.status, r.flow_slug into v_run_status, v_flow_slug
    from pgflow.runs as r
   where r.run_id = complete_task.run_id
     for update;
  if not found then
    raise exception using
      errcode = 'no_data_found',
      message = format('complete_task: run %s does not exist', complete_task.run_id);
  end if;

  -- What the rest needs to know of the step and its flow, read with the step state's lock:
  -- whether a map may wait for this single step's array, and whether any step of the flow has
  -- a condition (without any, readiness follows from the dependency counts alone).
  if v_run_status = 'started' then
    select ss.status, st.step_type,
           st.step_type = 'single' and exists (
             select 1
               from pgflow.deps as d
               join pgflow.steps as cs on cs.flow_slug = d.flow_slug and cs.step_slug = d.step_slug
              where d.flow_slug = st.flow_slug and d.dep_slug = st.step_slug
                and cs.step_type = 'map'),
           exists (
             select 1 from pgflow.steps as fs
              where fs.flow_slug = st.flow_slug
                and (fs.required_input_pattern is not null
                     or fs.forbidden_input_pattern is not null))
      into v_state_status, v_step_type, v_feeds_map, v_conditional
      from pgflow.step_states as ss
      join pgflow.steps as st on st.flow_slug = ss.flow_slug and st.step_slug = ss.step_slug
     where ss.run_id = complete_task.run_id and ss.step_slug = complete_task.step_slug
       for update of ss;
  end if;

  -- A late result for a run that already ended (its tasks cancelled if it failed), or for a step
  -- that ended meanwhile (failed, or skipped after a sibling task ran out of attempts), changes
  -- nothing; its message is archived (a no-op when the end archived it already).
  if v_run_status <> 'started' or v_state_status is distinct from 'started' then
    select * into v_task
      from pgflow.step_tasks as t
     where t.run_id = complete_task.run_id
       and t.step_slug = complete_task.step_slug
       and t.task_index = complete_task.task_index;
    if not found then
      raise exception using
        errcode = 'no_data_found',
        message = format('complete_task: run %s of flow %L has no task %s[%s]',
                         complete_task.run_id, v_flow_slug, complete_task.step_slug,
                         complete_task.task_index);
    end if;
    perform pgflow._archive_task_message(v_task.run_id, v_task.step_slug, v_task.task_index);
    return next v_task;
    return;
  end if;

  -- A single step feeding a map that still waits for it must produce an array; anything else
  -- fails the run at once (whatever the step's when_exhausted says).
  if v_feeds_map
     and (complete_task.output is null or jsonb_typeof(complete_task.output) <> 'array') then
    select * into v_task
      from pgflow.step_tasks as t
     where t.run_id = complete_task.run_id
       and t.step_slug = complete_task.step_slug
       and t.task_index = complete_task.task_index
       for update;
    if not found then
      raise exception using
        errcode = 'no_data_found',
        message = format('complete_task: run %s of flow %L has no task %s[%s]',
                         complete_task.run_id, v_flow_slug, complete_task.step_slug,
                         complete_task.task_index);
    end if;
    -- A duplicate or stale report is ignored before the output is looked at.
    if v_task.status <> 'started' then
      return next v_task;
      return;
    end if;

    select d.step_slug into v_map_child
      from pgflow.deps as d
      join pgflow.steps as cs on cs.flow_slug = d.flow_slug and cs.step_slug = d.step_slug
      join pgflow.step_states as child
        on child.run_id = complete_task.run_id and child.step_slug = d.step_slug
     where d.flow_slug = v_flow_slug
       and d.dep_slug = complete_task.step_slug
       and cs.step_type = 'map'
       and child.status = 'created'
       and child.initial_tasks is null
     order by cs.step_index
     limit 1;
    if v_map_child is not null then
      v_got := coalesce(jsonb_typeof(complete_task.output), 'null');
      v_step_error := format('[TYPE_VIOLATION] Map step %s expects array input but dependency %s '
                             'produced %s', v_map_child, complete_task.step_slug, v_got);

      update pgflow.runs as r
         set status = 'failed', failed_at = now()
       where r.run_id = complete_task.run_id;
      perform realtime.send(
        jsonb_build_object(
          'event_type', 'run:failed',
          'run_id', complete_task.run_id,
          'flow_slug', v_flow_slug,
          'status', 'failed',
          'error_message', v_step_error,
          'failed_at', now()),
        'run:failed',
        'pgflow:run:' || complete_task.run_id,
        false);

      update pgflow.step_tasks as t
         set status = 'failed',
             failed_at = now(),
             output = complete_task.output,
             error_message = format('[TYPE_VIOLATION] Produced %s instead of array', v_got)
       where t.run_id = complete_task.run_id
         and t.step_slug = complete_task.step_slug
         and t.task_index = complete_task.task_index
      returning * into v_task;

      update pgflow.step_states as ss
         set status = 'failed', failed_at = now(), error_message = v_step_error
       where ss.run_id = complete_task.run_id and ss.step_slug = complete_task.step_slug;
      perform realtime.send(
        jsonb_build_object(
          'event_type', 'step:failed',
          'run_id', complete_task.run_id,
          'step_slug', complete_task.step_slug,
          'status', 'failed',
          'error_message', v_step_error,
          'failed_at', now()),
        'step:' || complete_task.step_slug || ':failed',
        'pgflow:run:' || complete_task.run_id,
        false);

      perform pgflow._archive_task_message(v_task.run_id, v_task.step_slug, v_task.task_index);
      perform pgflow._cancel_run_tasks(complete_task.run_id);
      return next v_task;
      return;
    end if;
  end if;

  update pgflow.step_tasks as t
     set status = 'completed', completed_at = now(), output = complete_task.output
   where t.run_id = complete_task.run_id
     and t.step_slug = complete_task.step_slug
     and t.task_index = complete_task.task_index
     and t.status = 'started'
  returning * into v_task;
  if not found then
    select * into v_task
      from pgflow.step_tasks as t
     where t.run_id = complete_task.run_id
       and t.step_slug = complete_task.step_slug
       and t.task_index = complete_task.task_index;
    if not found then
      raise exception using
        errcode = 'no_data_found',
        message = format('complete_task: run %s of flow %L has no task %s[%s]',
                         complete_task.run_id, v_flow_slug, complete_task.step_slug,
                         complete_task.task_index);
    end if;
    -- Not claimed (still queued, e.g. waiting for a retry) or already finished: a duplicate or
    -- stale report, ignored. The message stays: a queued task still needs it.
    return next v_task;
    return;
  end if;

  if v_task.message_id is not null then
    perform pgmq.archive(v_task.queue_name, v_task.message_id);
  end if;

  -- One update counts the task down and, with the step's last task, completes the step: a
  -- single step with this output, a map with its tasks' outputs in task order, gathered below
  -- (kept out of this update, which would otherwise be planned afresh on every call).
  update pgflow.step_states as ss
     set remaining_tasks = ss.remaining_tasks - 1,
         status = case when ss.remaining_tasks = 1 then 'completed' else ss.status end,
         completed_at = case when ss.remaining_tasks = 1 then now() else ss.completed_at end,
         output = case
           when ss.remaining_tasks = 1 and v_step_type = 'single' then complete_task.output
           else ss.output
         end
   where ss.run_id = complete_task.run_id and ss.step_slug = complete_task.step_slug
  returning ss.remaining_tasks, ss.initial_tasks, ss.output, ss.completed_at
    into v_remaining_tasks, v_initial_tasks, v_output, v_completed_at;

  if v_remaining_tasks > 0 then
    return next v_task;
    return;
  end if;

  if v_step_type = 'map' then
    update pgflow.step_states as ss
       set output = (
         select coalesce(jsonb_agg(t.output order by t.task_index), '[]'::jsonb)
           from pgflow.step_tasks as t
          where t.run_id = complete_task.run_id and t.step_slug = complete_task.step_slug)
     where ss.run_id = complete_task.run_id and ss.step_slug = complete_task.step_slug
    returning ss.output into v_output;
  end if;

  perform realtime.send(
    jsonb_build_object(
      'event_type', 'step:completed',
      'run_id', complete_task.run_id,
      'step_slug', complete_task.step_slug,
      'status', 'completed',
      'output', v_output,
      'completed_at', v_completed_at),
    'step:' || complete_task.step_slug || ':completed',
    'pgflow:run:' || complete_task.run_id,
    false);

  -- A map child learns its task count from this output (the planner would fold the length
  -- call for any output if it sat inside the update's CASE).
  if v_step_type = 'map' then
    v_child_tasks := v_initial_tasks;
  elsif jsonb_typeof(v_output) = 'array' then
    v_child_tasks := jsonb_array_length(v_output);
  end if;

  with children as (
    update pgflow.step_states as child
       set remaining_deps = child.remaining_deps - 1,
           initial_tasks = case
             when cs.step_type = 'map' and child.initial_tasks is null then v_child_tasks
             else child.initial_tasks
           end
      from pgflow.deps as d, pgflow.steps as cs
     where d.flow_slug = v_flow_slug
       and d.dep_slug = complete_task.step_slug
       and cs.flow_slug = d.flow_slug
       and cs.step_slug = d.step_slug
       and child.run_id = complete_task.run_id
       and child.step_slug = d.step_slug
    returning child.status, child.remaining_deps, child.initial_tasks
  )
  select count(*) filter (where c.initial_tasks > 0),
         count(*) filter (where c.initial_tasks = 0)
    into v_ready, v_taskless
    from children as c
   where c.status = 'created' and c.remaining_deps = 0;

  update pgflow.runs as r
     set remaining_steps = r.remaining_steps - 1
   where r.run_id = complete_task.run_id
  returning r.remaining_steps into v_remaining_steps;

  if v_conditional then
    if pgflow.cascade_resolve_conditions(complete_task.run_id) then
      perform pgflow.cascade_complete_taskless_steps(complete_task.run_id);
      perform pgflow.start_ready_steps(complete_task.run_id);
      perform pgflow.maybe_complete_run(complete_task.run_id);
    end if;
  else
    -- Without conditions only the children just counted down can have become ready.
    if v_taskless > 0 then
      perform pgflow.cascade_complete_taskless_steps(complete_task.run_id);
    end if;
    if v_ready > 0 or v_taskless > 0 then
      perform pgflow.start_ready_steps(complete_task.run_id);
    end if;
    if v_remaining_steps = 0 or v_taskless > 0 then
      perform pgflow.maybe_complete_run(complete_task.run_id);
    end if;
  end if;

  return next v_task;
end;
$fn$;

-- ---- schema/0200_function_start_flow.sql ----

-- Starts a run of a flow with its input: one state per step; the steps without dependencies
-- start at once, or are skipped when their condition is unmet.
create or replace function pgflow.start_flow(flow_slug text, input jsonb, run_id uuid default null)
returns setof pgflow.runs
language plpgsql
set search_path to pg_catalog, pg_temp
as $fn$
declare
  v_step_count integer;
  v_root_maps integer;
  v_conditional boolean;
  v_input_length integer;
  v_ready integer;
  v_taskless integer;
  v_run pgflow.runs;
begin
  select count(s.step_slug),
         count(*) filter (where s.step_type = 'map' and s.deps_count = 0),
         coalesce(bool_or(s.required_input_pattern is not null
                          or s.forbidden_input_pattern is not null), false)
    into v_step_count, v_root_maps, v_conditional
    from pgflow.flows as f
    left join pgflow.steps as s on s.flow_slug = f.flow_slug
   where f.flow_slug = start_flow.flow_slug
   group by f.flow_slug;
  if not found then
    raise exception using
      errcode = 'foreign_key_violation',
      message = format('start_flow: flow %s does not exist',
                       coalesce(quote_literal(start_flow.flow_slug), 'NULL'));
  end if;

  if v_root_maps > 0 and start_flow.input is null then
    raise exception using
      errcode = 'raise_exception',
      message = format('Flow %s has root map steps but input is NULL', start_flow.flow_slug);
  end if;
  if v_root_maps > 0 and jsonb_typeof(start_flow.input) <> 'array' then
    raise exception using
      errcode = 'raise_exception',
      message = format('Flow %s has root map steps but input is not an array (got %s)',
                       start_flow.flow_slug, jsonb_typeof(start_flow.input));
  end if;
  if start_flow.input is null then
    raise exception using
      errcode = 'not_null_violation',
      message = format('start_flow: the input for flow %L is NULL; pass a JSON value '
                       '(''{}'' or ''null''::jsonb for none)', start_flow.flow_slug);
  end if;
  if start_flow.run_id is not null and exists (
       select 1 from pgflow.runs as r where r.run_id = start_flow.run_id) then
    raise exception using
      errcode = 'unique_violation',
      message = format('start_flow: a run with id %s already exists', start_flow.run_id);
  end if;

  -- Computed apart: inside the insert's CASE the planner would fold it for any input.
  if jsonb_typeof(start_flow.input) = 'array' then
    v_input_length := jsonb_array_length(start_flow.input);
  end if;

  insert into pgflow.runs (run_id, flow_slug, input, remaining_steps)
  values (coalesce(start_flow.run_id, gen_random_uuid()), start_flow.flow_slug,
          start_flow.input, v_step_count)
  returning * into v_run;

  with states as (
    insert into pgflow.step_states (flow_slug, run_id, step_slug, remaining_deps, initial_tasks)
    select s.flow_slug, v_run.run_id, s.step_slug, s.deps_count,
           case
             when s.step_type = 'map' and s.deps_count = 0 then v_input_length
             when s.step_type = 'map' then null
             else 1
           end
      from pgflow.steps as s
     where s.flow_slug = start_flow.flow_slug
    returning step_states.remaining_deps, step_states.initial_tasks
  )
  select count(*) filter (where st.remaining_deps = 0 and st.initial_tasks > 0),
         count(*) filter (where st.remaining_deps = 0 and st.initial_tasks = 0)
    into v_ready, v_taskless
    from states as st;

  perform realtime.send(
    jsonb_build_object(
      'event_type', 'run:started',
      'run_id', v_run.run_id,
      'flow_slug', v_run.flow_slug,
      'input', v_run.input,
      'status', 'started',
      'remaining_steps', v_run.remaining_steps,
      'started_at', v_run.started_at),
    'run:started',
    'pgflow:run:' || v_run.run_id,
    false);

  if v_conditional then
    if pgflow.cascade_resolve_conditions(v_run.run_id) then
      perform pgflow.cascade_complete_taskless_steps(v_run.run_id);
      perform pgflow.start_ready_steps(v_run.run_id);
      perform pgflow.maybe_complete_run(v_run.run_id);
    end if;
  elsif v_taskless > 0 or v_step_count = 0 then
    perform pgflow.cascade_complete_taskless_steps(v_run.run_id);
    perform pgflow.start_ready_steps(v_run.run_id);
    perform pgflow.maybe_complete_run(v_run.run_id);
  else
    -- Without conditions nor taskless steps, the ready steps start and the run is as inserted.
    if v_ready > 0 then
      perform pgflow.start_ready_steps(v_run.run_id);
    end if;
    return next v_run;
    return;
  end if;

  return query select * from pgflow.runs as r where r.run_id = v_run.run_id;
end;
$fn$;

-- ---- schema/0200_function_start_ready_steps.sql ----

-- Starts every created step whose dependencies are done and whose task count is known and
-- positive: one queue message per task, sent to the step's queue with the step's start delay.
create or replace function pgflow.start_ready_steps(run_id uuid)
returns void
language plpgsql
set search_path to pg_catalog, pg_temp
as $fn$
declare
  v_flow_slug text;
  v_step record;
  v_send_at boolean :=
    to_regprocedure('pgmq.send(text, jsonb, jsonb, timestamp with time zone)') is not null;
begin
  select r.flow_slug into v_flow_slug
    from pgflow.runs as r
   where r.run_id = start_ready_steps.run_id and r.status = 'started';
  if not found then
    return;
  end if;

  -- One update starts them all; events and messages follow in step order.
  for v_step in
    with started as (
      update pgflow.step_states as ss
         set status = 'started',
             started_at = now(),
             remaining_tasks = ss.initial_tasks
        from pgflow.steps as st
       where ss.run_id = start_ready_steps.run_id
         and ss.status = 'created'
         and ss.remaining_deps = 0
         and ss.initial_tasks > 0
         and st.flow_slug = ss.flow_slug
         and st.step_slug = ss.step_slug
      returning ss.step_slug, ss.initial_tasks, ss.started_at, st.step_index, st.opt_start_delay,
                st.queue_name
    )
    select * from started order by started.step_index
  loop
    perform realtime.send(
      jsonb_build_object(
        'event_type', 'step:started',
        'run_id', start_ready_steps.run_id,
        'step_slug', v_step.step_slug,
        'status', 'started',
        'started_at', v_step.started_at,
        'remaining_tasks', v_step.initial_tasks,
        'remaining_deps', 0),
      'step:' || v_step.step_slug || ':started',
      'pgflow:run:' || start_ready_steps.run_id,
      false);

    if v_step.initial_tasks = 1 and v_send_at then
      -- A single task: pgmq's plain send, a shorter path than a batch of one, through the
      -- form with headers and a time where pgmq has it (1.5 on): the one with a delay in
      -- seconds wraps it in an SQL function, parsed and planned again on every call.
      insert into pgflow.step_tasks (flow_slug, run_id, step_slug, task_index, message_id,
                                     queue_name)
      select v_flow_slug, start_ready_steps.run_id, v_step.step_slug, 0, sent.msg_id,
             v_step.queue_name
        from pgmq.send(
               v_step.queue_name,
               jsonb_build_object(
                 'flow_slug', v_flow_slug,
                 'run_id', start_ready_steps.run_id,
                 'step_slug', v_step.step_slug,
                 'task_index', 0),
               null::jsonb,
               clock_timestamp() + make_interval(secs => coalesce(v_step.opt_start_delay, 0)))
             as sent (msg_id);
    elsif v_step.initial_tasks = 1 then
      insert into pgflow.step_tasks (flow_slug, run_id, step_slug, task_index, message_id,
                                     queue_name)
      select v_flow_slug, start_ready_steps.run_id, v_step.step_slug, 0, sent.msg_id,
             v_step.queue_name
        from pgmq.send(
               v_step.queue_name,
               jsonb_build_object(
                 'flow_slug', v_flow_slug,
                 'run_id', start_ready_steps.run_id,
                 'step_slug', v_step.step_slug,
                 'task_index', 0),
               coalesce(v_step.opt_start_delay, 0)) as sent (msg_id);
    else
      -- Message ids come from one sequence in insertion order, so the k-th smallest id
      -- belongs to task k.
      insert into pgflow.step_tasks (flow_slug, run_id, step_slug, task_index, message_id,
                                     queue_name)
      select v_flow_slug, start_ready_steps.run_id, v_step.step_slug,
             (row_number() over (order by sent.msg_id) - 1)::integer, sent.msg_id,
             v_step.queue_name
        from pgmq.send_batch(
               v_step.queue_name,
               array(
                 select jsonb_build_object(
                          'flow_slug', v_flow_slug,
                          'run_id', start_ready_steps.run_id,
                          'step_slug', v_step.step_slug,
                          'task_index', i)
                   from generate_series(0, v_step.initial_tasks - 1) as i
                  order by i),
               coalesce(v_step.opt_start_delay, 0)) as sent (msg_id);
    end if;
  end loop;
end;
$fn$;

-- ---- schema/0200_function_start_tasks.sql ----

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
