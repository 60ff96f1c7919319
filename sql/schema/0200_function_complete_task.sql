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
  v_run pgflow.runs;
  v_state pgflow.step_states;
  v_task pgflow.step_tasks;
  v_step pgflow.steps;
  v_map_child text;
  v_got text;
  v_step_error text;
  v_child_tasks integer;
begin
  select * into v_run from pgflow.runs as r where r.run_id = complete_task.run_id for update;
  if not found then
    raise exception using
      errcode = 'no_data_found',
      message = format('complete_task: run %s does not exist', complete_task.run_id);
  end if;

  select * into v_task
    from pgflow.step_tasks as t
   where t.run_id = complete_task.run_id
     and t.step_slug = complete_task.step_slug
     and t.task_index = complete_task.task_index;
  if not found then
    raise exception using
      errcode = 'no_data_found',
      message = format('complete_task: run %s of flow %L has no task %s[%s]',
                       complete_task.run_id, v_run.flow_slug, complete_task.step_slug,
                       complete_task.task_index);
  end if;

  -- A late result for a run that already ended (its tasks cancelled if it failed) changes
  -- nothing; its message is archived (a no-op when the run's end archived it already).
  if v_run.status <> 'started' then
    perform pgflow._archive_task_message(v_task.run_id, v_task.step_slug, v_task.task_index);
    return next v_task;
    return;
  end if;

  -- Likewise for a step that ended meanwhile (failed, or skipped after a sibling task ran
  -- out of attempts).
  select * into v_state
    from pgflow.step_states as ss
   where ss.run_id = complete_task.run_id and ss.step_slug = complete_task.step_slug
     for update;
  if v_state.status <> 'started' then
    perform pgflow._archive_task_message(v_task.run_id, v_task.step_slug, v_task.task_index);
    return next v_task;
    return;
  end if;

  select * into v_task
    from pgflow.step_tasks as t
   where t.run_id = complete_task.run_id
     and t.step_slug = complete_task.step_slug
     and t.task_index = complete_task.task_index
     for update;
  -- Not claimed (still queued, e.g. waiting for a retry) or already finished: a duplicate or
  -- stale report, ignored. The message stays: a queued task still needs it.
  if v_task.status <> 'started' then
    return next v_task;
    return;
  end if;

  select * into v_step
    from pgflow.steps as s
   where s.flow_slug = v_run.flow_slug and s.step_slug = complete_task.step_slug;

  -- A single step feeding a map that still waits for it must produce an array; anything else
  -- fails the run at once (whatever the step's when_exhausted says).
  if v_step.step_type = 'single'
     and (complete_task.output is null or jsonb_typeof(complete_task.output) <> 'array') then
    select d.step_slug into v_map_child
      from pgflow.deps as d
      join pgflow.steps as cs on cs.flow_slug = d.flow_slug and cs.step_slug = d.step_slug
      join pgflow.step_states as child
        on child.run_id = complete_task.run_id and child.step_slug = d.step_slug
     where d.flow_slug = v_run.flow_slug
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
          'flow_slug', v_run.flow_slug,
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
  returning * into v_task;

  update pgflow.step_states as ss
     set remaining_tasks = ss.remaining_tasks - 1
   where ss.run_id = complete_task.run_id and ss.step_slug = complete_task.step_slug
  returning * into v_state;

  perform pgflow._archive_task_message(v_task.run_id, v_task.step_slug, v_task.task_index);

  if v_state.remaining_tasks > 0 then
    return next v_task;
    return;
  end if;

  -- The step's last task: the step completes with its output (a map's outputs in task order).
  update pgflow.step_states as ss
     set status = 'completed',
         completed_at = now(),
         output = case
           when v_step.step_type = 'map' then (
             select coalesce(jsonb_agg(t.output order by t.task_index), '[]'::jsonb)
               from pgflow.step_tasks as t
              where t.run_id = complete_task.run_id and t.step_slug = complete_task.step_slug)
           else complete_task.output
         end
   where ss.run_id = complete_task.run_id and ss.step_slug = complete_task.step_slug
  returning * into v_state;

  perform realtime.send(
    jsonb_build_object(
      'event_type', 'step:completed',
      'run_id', complete_task.run_id,
      'step_slug', complete_task.step_slug,
      'status', 'completed',
      'output', v_state.output,
      'completed_at', v_state.completed_at),
    'step:' || complete_task.step_slug || ':completed',
    'pgflow:run:' || complete_task.run_id,
    false);

  -- A map child learns its task count from this output (the planner would fold the length
  -- call for any output if it sat inside the update's CASE).
  if v_step.step_type = 'map' then
    v_child_tasks := v_state.initial_tasks;
  elsif jsonb_typeof(v_state.output) = 'array' then
    v_child_tasks := jsonb_array_length(v_state.output);
  end if;

  update pgflow.step_states as child
     set remaining_deps = child.remaining_deps - 1,
         initial_tasks = case
           when cs.step_type = 'map' and child.initial_tasks is null then v_child_tasks
           else child.initial_tasks
         end
    from pgflow.deps as d, pgflow.steps as cs
   where d.flow_slug = v_run.flow_slug
     and d.dep_slug = complete_task.step_slug
     and cs.flow_slug = d.flow_slug
     and cs.step_slug = d.step_slug
     and child.run_id = complete_task.run_id
     and child.step_slug = d.step_slug;

  update pgflow.runs as r
     set remaining_steps = r.remaining_steps - 1
   where r.run_id = complete_task.run_id;

  if pgflow.cascade_resolve_conditions(complete_task.run_id) then
    perform pgflow.cascade_complete_taskless_steps(complete_task.run_id);
    perform pgflow.start_ready_steps(complete_task.run_id);
    perform pgflow.maybe_complete_run(complete_task.run_id);
  end if;

  return next v_task;
end;
$fn$;
