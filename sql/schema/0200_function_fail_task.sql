-- Records a task's failure: a retry while attempts are left, else what the step's
-- when_exhausted says (fail the step and the run, or skip the step). A late or duplicate
-- report (the run or the step already ended, or the task is not `started`) changes nothing and
-- returns the task row as it is.
create or replace function pgflow.fail_task(
  run_id uuid,
  step_slug text,
  task_index integer,
  error_message text
)
returns setof pgflow.step_tasks
language plpgsql
set search_path to pg_catalog, pg_temp
as $fn$
declare
  v_run pgflow.runs;
  v_state pgflow.step_states;
  v_task pgflow.step_tasks;
  v_max_attempts integer;
  v_base_delay integer;
  v_when_exhausted text;
begin
  select * into v_run from pgflow.runs as r where r.run_id = fail_task.run_id for update;
  if not found then
    raise exception using
      errcode = 'no_data_found',
      message = format('fail_task: run %s does not exist', fail_task.run_id);
  end if;

  select * into v_task
    from pgflow.step_tasks as t
   where t.run_id = fail_task.run_id
     and t.step_slug = fail_task.step_slug
     and t.task_index = fail_task.task_index;
  if not found then
    raise exception using
      errcode = 'no_data_found',
      message = format('fail_task: run %s of flow %L has no task %s[%s]',
                       fail_task.run_id, v_run.flow_slug, fail_task.step_slug,
                       fail_task.task_index);
  end if;

  -- Late failure on a run that already ended: the task keeps the status the run's end gave
  -- it (`cancelled` when the run failed); its message is archived if still there.
  if v_run.status <> 'started' then
    perform pgflow._archive_task_message(fail_task.run_id, fail_task.step_slug,
                                         fail_task.task_index);
    return next v_task;
    return;
  end if;

  -- Late failure on a step that ended meanwhile (e.g. skipped): nothing changes but the
  -- message is archived.
  select * into v_state
    from pgflow.step_states as ss
   where ss.run_id = fail_task.run_id and ss.step_slug = fail_task.step_slug
     for update;
  if v_state.status <> 'started' then
    perform pgflow._archive_task_message(fail_task.run_id, fail_task.step_slug,
                                         fail_task.task_index);
    return next v_task;
    return;
  end if;

  select * into v_task
    from pgflow.step_tasks as t
   where t.run_id = fail_task.run_id
     and t.step_slug = fail_task.step_slug
     and t.task_index = fail_task.task_index
     for update;
  -- Not claimed (still queued, e.g. waiting for a retry) or already finished: a duplicate or
  -- stale report, ignored. The message stays: a queued task still needs it.
  if v_task.status <> 'started' then
    return next v_task;
    return;
  end if;

  select coalesce(s.opt_max_attempts, f.opt_max_attempts),
         coalesce(s.opt_base_delay, f.opt_base_delay),
         s.when_exhausted
    into v_max_attempts, v_base_delay, v_when_exhausted
    from pgflow.steps as s
    join pgflow.flows as f on f.flow_slug = s.flow_slug
   where s.flow_slug = v_run.flow_slug and s.step_slug = fail_task.step_slug;

  if v_task.attempts_count < v_max_attempts then
    -- Retry: back to the queue, invisible for an exponentially growing delay. No event.
    update pgflow.step_tasks as t
       set status = 'queued', started_at = null, error_message = fail_task.error_message
     where t.run_id = fail_task.run_id
       and t.step_slug = fail_task.step_slug
       and t.task_index = fail_task.task_index
    returning * into v_task;
    if v_task.message_id is not null then
      perform pgmq.set_vt(v_task.queue_name, v_task.message_id,
                          pgflow.calculate_retry_delay(v_base_delay, v_task.attempts_count));
    end if;
    return next v_task;
    return;
  end if;

  -- Out of attempts: the task fails; what happens to its step depends on when_exhausted.
  update pgflow.step_tasks as t
     set status = 'failed', failed_at = now(), error_message = fail_task.error_message
   where t.run_id = fail_task.run_id
     and t.step_slug = fail_task.step_slug
     and t.task_index = fail_task.task_index
  returning * into v_task;
  perform pgflow._archive_task_message(fail_task.run_id, fail_task.step_slug,
                                       fail_task.task_index);

  if v_when_exhausted in ('skip', 'skip-cascade') then
    -- The step is skipped (its other tasks with it) and the run goes on without it.
    v_state := pgflow._skip_step(fail_task.run_id, fail_task.step_slug, 'handler_failed',
                                 fail_task.error_message, v_when_exhausted = 'skip');
    perform realtime.send(
      jsonb_build_object(
        'event_type', 'step:skipped',
        'run_id', fail_task.run_id,
        'step_slug', fail_task.step_slug,
        'status', 'skipped',
        'skip_reason', 'handler_failed',
        'error_message', fail_task.error_message,
        'skipped_at', v_state.skipped_at),
      'step:' || fail_task.step_slug || ':skipped',
      'pgflow:run:' || fail_task.run_id,
      false);
    if v_when_exhausted = 'skip-cascade' then
      perform pgflow._cascade_force_skip_steps(fail_task.run_id, fail_task.step_slug,
                                               'handler_failed');
      perform pgflow.maybe_complete_run(fail_task.run_id);
    elsif pgflow.cascade_resolve_conditions(fail_task.run_id) then
      perform pgflow.cascade_complete_taskless_steps(fail_task.run_id);
      perform pgflow.start_ready_steps(fail_task.run_id);
      perform pgflow.maybe_complete_run(fail_task.run_id);
    end if;
    return next v_task;
    return;
  end if;

  update pgflow.step_states as ss
     set status = 'failed', failed_at = now(), error_message = fail_task.error_message
   where ss.run_id = fail_task.run_id and ss.step_slug = fail_task.step_slug;
  perform realtime.send(
    jsonb_build_object(
      'event_type', 'step:failed',
      'run_id', fail_task.run_id,
      'step_slug', fail_task.step_slug,
      'status', 'failed',
      'error_message', fail_task.error_message,
      'failed_at', now()),
    'step:' || fail_task.step_slug || ':failed',
    'pgflow:run:' || fail_task.run_id,
    false);

  update pgflow.runs as r
     set status = 'failed', failed_at = now()
   where r.run_id = fail_task.run_id;
  perform realtime.send(
    jsonb_build_object(
      'event_type', 'run:failed',
      'run_id', fail_task.run_id,
      'flow_slug', v_run.flow_slug,
      'status', 'failed',
      'error_message', fail_task.error_message,
      'failed_at', now()),
    'run:failed',
    'pgflow:run:' || fail_task.run_id,
    false);

  perform pgflow._cancel_run_tasks(fail_task.run_id);

  return next v_task;
end;
$fn$;
