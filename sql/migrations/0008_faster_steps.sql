-- pgflow-py SQL core, migration 0008: faster_steps.
--
-- The same functions, signatures, queue messages and events, in less time. Single messages are
-- archived, and sent, through a prepared statement per connection and queue instead of pgmq's
-- functions: its archive plans its statement again on every call, and so does its send with a
-- delay in seconds (start_ready_steps now has one path for a single task on every pgmq
-- version). complete_task completes a step, counts its dependents down and starts those it
-- makes ready in one update, where it took three statements and a call of start_ready_steps.
--
-- Started from the schema files below by
--   python -m pgflow_worker._database.derive next faster_steps ...
-- A function added here gets EXECUTE for PUBLIC unless this migration revokes it, as
-- sql/schema/0900_privileges.sql does for the schema; the drift test compares the two.

-- ---- schema/0200_function__archive_message.sql ----

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

-- ---- schema/0200_function__archive_task_message.sql ----

-- Archives the queue message of one task (no-op when it is already gone).
create or replace function pgflow._archive_task_message(
  p_run_id uuid,
  p_step_slug text,
  p_task_index integer
)
returns void
language plpgsql
set search_path to pg_catalog, pg_temp
as $fn$
declare
  v_queue_name text;
  v_message_id bigint;
begin
  select t.queue_name, t.message_id
    into v_queue_name, v_message_id
    from pgflow.step_tasks as t
   where t.run_id = p_run_id
     and t.step_slug = p_step_slug
     and t.task_index = p_task_index;
  if v_message_id is not null then
    perform pgflow._archive_message(v_queue_name, v_message_id);
  end if;
end;
$fn$;

-- ---- schema/0200_function__queue_statement.sql ----

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

-- ---- schema/0200_function__send_message.sql ----

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

-- ---- schema/0200_function__start_step_tasks.sql ----

-- Broadcasts a step's start and creates its tasks, one queue message each, visible after the
-- step's start delay: what starting a step does once its state row says 'started'.
create or replace function pgflow._start_step_tasks(
  p_run_id uuid,
  p_flow_slug text,
  p_step_slug text,
  p_initial_tasks integer,
  p_started_at timestamptz,
  p_queue_name text,
  p_start_delay integer
)
returns void
language plpgsql
set search_path to pg_catalog, pg_temp
as $fn$
begin
  perform realtime.send(
    jsonb_build_object(
      'event_type', 'step:started',
      'run_id', p_run_id,
      'step_slug', p_step_slug,
      'status', 'started',
      'started_at', p_started_at,
      'remaining_tasks', p_initial_tasks,
      'remaining_deps', 0),
    'step:' || p_step_slug || ':started',
    'pgflow:run:' || p_run_id,
    false);

  if p_initial_tasks = 1 then
    insert into pgflow.step_tasks (flow_slug, run_id, step_slug, task_index, message_id,
                                   queue_name)
    values (p_flow_slug, p_run_id, p_step_slug, 0,
            pgflow._send_message(
              p_queue_name,
              jsonb_build_object(
                'flow_slug', p_flow_slug,
                'run_id', p_run_id,
                'step_slug', p_step_slug,
                'task_index', 0),
              coalesce(p_start_delay, 0)),
            p_queue_name);
  else
    -- Message ids come from one sequence in insertion order, so the k-th smallest id belongs
    -- to task k.
    insert into pgflow.step_tasks (flow_slug, run_id, step_slug, task_index, message_id,
                                   queue_name)
    select p_flow_slug, p_run_id, p_step_slug,
           (row_number() over (order by sent.msg_id) - 1)::integer, sent.msg_id, p_queue_name
      from pgmq.send_batch(
             p_queue_name,
             array(
               select jsonb_build_object(
                        'flow_slug', p_flow_slug,
                        'run_id', p_run_id,
                        'step_slug', p_step_slug,
                        'task_index', i)
                 from generate_series(0, p_initial_tasks - 1) as i
                order by i),
             coalesce(p_start_delay, 0)) as sent (msg_id);
  end if;
end;
$fn$;

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
  v_child_tasks integer;
  v_start_children boolean;
  v_state record;
  v_ready integer := 0;
  v_taskless integer := 0;
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
    select ss.status, ss.remaining_tasks, ss.initial_tasks, st.step_type,
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
      into v_state_status, v_remaining_tasks, v_initial_tasks, v_step_type, v_feeds_map,
           v_conditional
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
    perform pgflow._archive_message(v_task.queue_name, v_task.message_id);
  end if;

  -- Not the step's last task: it only counts down.
  if v_remaining_tasks > 1 then
    update pgflow.step_states as ss
       set remaining_tasks = ss.remaining_tasks - 1
     where ss.run_id = complete_task.run_id and ss.step_slug = complete_task.step_slug;
    return next v_task;
    return;
  end if;

  -- The step's last task. The step's output (a map's: its tasks' outputs in task order), and
  -- the task count a map child learns from it (the planner would fold the length call for any
  -- output if it sat inside the update below).
  if v_step_type = 'map' then
    select coalesce(jsonb_agg(t.output order by t.task_index), '[]'::jsonb)
      into v_output
      from pgflow.step_tasks as t
     where t.run_id = complete_task.run_id and t.step_slug = complete_task.step_slug;
    v_child_tasks := v_initial_tasks;
  else
    v_output := complete_task.output;
    if jsonb_typeof(v_output) = 'array' then
      v_child_tasks := jsonb_array_length(v_output);
    end if;
  end if;

  -- Without conditions, and unless a map child gets no task, a dependent this completion makes
  -- ready starts in the same update; otherwise the passes below find it.
  v_start_children := not v_conditional and v_child_tasks is distinct from 0;

  -- One update completes the step and counts its dependents down: each gets one dependency
  -- less, a map child its task count, and a dependent left with none starts when it may. The
  -- run's lock orders completions of one run; the expressions read the rows being updated
  -- all the same, never a copy of them.
  for v_state in
    with changed as (
      update pgflow.step_states as ss
         set status = case
               when ss.step_slug = complete_task.step_slug then 'completed'
               when v_start_children and ss.status = 'created' and ss.remaining_deps = 1
                    and coalesce(ss.initial_tasks,
                                 case when st.step_type = 'map' then v_child_tasks end) > 0
                 then 'started'
               else ss.status
             end,
             completed_at = case
               when ss.step_slug = complete_task.step_slug then now() else ss.completed_at
             end,
             output = case
               when ss.step_slug = complete_task.step_slug then v_output else ss.output
             end,
             remaining_tasks = case
               when ss.step_slug = complete_task.step_slug then 0
               when v_start_children and ss.status = 'created' and ss.remaining_deps = 1
                    and coalesce(ss.initial_tasks,
                                 case when st.step_type = 'map' then v_child_tasks end) > 0
                 then coalesce(ss.initial_tasks, v_child_tasks)
               else ss.remaining_tasks
             end,
             started_at = case
               when ss.step_slug <> complete_task.step_slug and v_start_children
                    and ss.status = 'created' and ss.remaining_deps = 1
                    and coalesce(ss.initial_tasks,
                                 case when st.step_type = 'map' then v_child_tasks end) > 0
                 then now()
               else ss.started_at
             end,
             remaining_deps = case
               when ss.step_slug = complete_task.step_slug then ss.remaining_deps
               else ss.remaining_deps - 1
             end,
             initial_tasks = case
               when ss.step_slug <> complete_task.step_slug and st.step_type = 'map'
                    and ss.initial_tasks is null
                 then v_child_tasks
               else ss.initial_tasks
             end
        from pgflow.steps as st
       where ss.run_id = complete_task.run_id
         and st.flow_slug = ss.flow_slug
         and st.step_slug = ss.step_slug
         and (ss.step_slug = complete_task.step_slug
              or ss.step_slug in (
                select d.step_slug from pgflow.deps as d
                 where d.flow_slug = v_flow_slug and d.dep_slug = complete_task.step_slug))
      returning ss.step_slug, ss.status, ss.remaining_deps, ss.initial_tasks, ss.remaining_tasks,
                ss.started_at, ss.completed_at, st.step_index, st.queue_name, st.opt_start_delay
    )
    select * from changed as c
     order by c.step_slug <> complete_task.step_slug, c.step_index
  loop
    if v_state.step_slug = complete_task.step_slug then
      perform realtime.send(
        jsonb_build_object(
          'event_type', 'step:completed',
          'run_id', complete_task.run_id,
          'step_slug', complete_task.step_slug,
          'status', 'completed',
          'output', v_output,
          'completed_at', v_state.completed_at),
        'step:' || complete_task.step_slug || ':completed',
        'pgflow:run:' || complete_task.run_id,
        false);
    elsif v_state.status = 'started' and v_state.remaining_deps = 0 then
      -- It still waited for this step, so it started just now: its event and tasks, in step
      -- order after this step's event, as start_ready_steps would send them.
      perform pgflow._start_step_tasks(complete_task.run_id, v_flow_slug, v_state.step_slug,
                                       v_state.remaining_tasks, v_state.started_at,
                                       v_state.queue_name, v_state.opt_start_delay);
    elsif v_state.status = 'created' and v_state.remaining_deps = 0 then
      if v_state.initial_tasks > 0 then
        v_ready := v_ready + 1;
      elsif v_state.initial_tasks = 0 then
        v_taskless := v_taskless + 1;
      end if;
    end if;
  end loop;

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
    -- Without conditions only the dependents just counted down can have become ready.
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

-- ---- schema/0200_function_requeue_stalled_tasks.sql ----

-- Gives back tasks whose worker stopped answering: a task `started` longer than its step's
-- effective timeout + 30 s, in a run and a step both still `started`, goes back to the queue
-- (no worker), at most 3 times; after that it is marked permanently stalled and its message
-- archived. Returns how many tasks were requeued.
create or replace function pgflow.requeue_stalled_tasks()
returns integer
language plpgsql
set search_path to pg_catalog, pg_temp
as $fn$
declare
  v_task record;
  v_requeued integer := 0;
begin
  for v_task in
    select t.run_id, t.step_slug, t.task_index, t.queue_name, t.message_id, t.requeued_count
      from pgflow.step_tasks as t
      join pgflow.runs as r on r.run_id = t.run_id
      join pgflow.step_states as ss on ss.run_id = t.run_id and ss.step_slug = t.step_slug
      join pgflow.steps as s on s.flow_slug = t.flow_slug and s.step_slug = t.step_slug
      join pgflow.flows as f on f.flow_slug = t.flow_slug
     where t.status = 'started'
       and t.permanently_stalled_at is null
       and r.status = 'started'
       and ss.status = 'started'
       and t.started_at
           < now() - make_interval(secs => coalesce(s.opt_timeout, f.opt_timeout) + 30)
     order by t.started_at
       for update of t skip locked
  loop
    if v_task.requeued_count < 3 then
      update pgflow.step_tasks as t
         set status = 'queued',
             started_at = null,
             last_worker_id = null,
             requeued_count = t.requeued_count + 1,
             last_requeued_at = now()
       where t.run_id = v_task.run_id
         and t.step_slug = v_task.step_slug
         and t.task_index = v_task.task_index;
      if v_task.message_id is not null then
        perform pgmq.set_vt(v_task.queue_name, v_task.message_id, 0);
      end if;
      v_requeued := v_requeued + 1;
    else
      update pgflow.step_tasks as t
         set permanently_stalled_at = now()
       where t.run_id = v_task.run_id
         and t.step_slug = v_task.step_slug
         and t.task_index = v_task.task_index;
      if v_task.message_id is not null then
        perform pgflow._archive_message(v_task.queue_name, v_task.message_id);
      end if;
    end if;
  end loop;
  return v_requeued;
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
    perform pgflow._start_step_tasks(start_ready_steps.run_id, v_flow_slug, v_step.step_slug,
                                     v_step.initial_tasks, v_step.started_at,
                                     v_step.queue_name, v_step.opt_start_delay);
  end loop;
end;
$fn$;

revoke all on function pgflow._queue_statement(text, text) from public;
revoke all on function pgflow._send_message(text, jsonb, integer) from public;
revoke all on function pgflow._archive_message(text, bigint) from public;
revoke all on function pgflow._start_step_tasks(uuid, text, text, integer, timestamptz, text,
  integer) from public;
