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
