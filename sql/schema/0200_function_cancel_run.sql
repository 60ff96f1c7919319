-- Cancels a started run: it ends `failed`, marked cancelled with the reason, with the same
-- run:failed event as any failure; its queued and started tasks end `cancelled` and their
-- messages are archived, so nothing of it starts again. A task in flight may still report:
-- its report changes nothing. Refuses a run that is unknown or already ended.
create or replace function pgflow.cancel_run(run_id uuid, reason text default null)
returns pgflow.runs
language plpgsql
security definer
set search_path to pg_catalog, pg_temp
as $fn$
declare
  v_run pgflow.runs;
  v_reason text := nullif(btrim(cancel_run.reason), '');
begin
  -- The run's row lock orders this against complete_task and fail_task, which take it first.
  select * into v_run from pgflow.runs as r where r.run_id = cancel_run.run_id for update;
  if not found then
    raise exception using
      errcode = 'no_data_found',
      message = format('cancel_run: run %s does not exist', cancel_run.run_id);
  end if;
  if v_run.cancelled_at is not null then
    raise exception using
      errcode = 'object_not_in_prerequisite_state',
      message = format('cancel_run: run %s was already cancelled at %s', v_run.run_id,
                       v_run.cancelled_at),
      hint = 'Only a started run can be cancelled.';
  end if;
  if v_run.status <> 'started' then
    raise exception using
      errcode = 'object_not_in_prerequisite_state',
      message = format('cancel_run: run %s has already %s at %s', v_run.run_id, v_run.status,
                       coalesce(v_run.completed_at, v_run.failed_at)),
      hint = 'Only a started run can be cancelled.';
  end if;

  update pgflow.runs as r
     set status = 'failed', failed_at = now(), cancelled_at = now(), cancel_reason = v_reason
   where r.run_id = cancel_run.run_id
  returning * into v_run;
  perform realtime.send(
    jsonb_build_object(
      'event_type', 'run:failed',
      'run_id', v_run.run_id,
      'flow_slug', v_run.flow_slug,
      'status', 'failed',
      'error_message', coalesce('Run cancelled: ' || v_reason, 'Run cancelled'),
      'failed_at', v_run.failed_at),
    'run:failed',
    'pgflow:run:' || v_run.run_id,
    false);

  perform pgflow._cancel_run_tasks(v_run.run_id);
  return v_run;
end;
$fn$;
