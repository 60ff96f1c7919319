-- pgflow-py SQL core, migration 0005: operate_runs.
--
-- Operating runs: cancel_run (a run ends failed, marked cancelled with when and why),
-- retry_run (a new run of the same flow and input naming its source in restart_of_run_id)
-- and list_runs (newest first, with the indexes it needs).
--
-- Tables and types by hand, functions
-- started from the schema files below by
--   python -m pgflow_worker._database.derive next operate_runs ...
-- A function added here gets EXECUTE for PUBLIC unless this migration revokes it, as
-- sql/schema/0900_privileges.sql does for the schema; the drift test compares the two.

-- ---- tables and types ----

alter table pgflow.runs
  add column cancelled_at timestamptz,
  add column cancel_reason text,
  add column restart_of_run_id uuid references pgflow.runs (run_id) on delete set null,
  add constraint cancelled_only_when_failed check (
    cancelled_at is null or (status = 'failed' and failed_at is not null)),
  add constraint cancel_reason_only_when_cancelled check (
    cancel_reason is null or cancelled_at is not null);

create index idx_runs_started_at on pgflow.runs (started_at, run_id);
create index idx_runs_flow_slug_started_at on pgflow.runs (flow_slug, started_at, run_id);
create index idx_runs_status_started_at on pgflow.runs (status, started_at, run_id);
create index idx_runs_restart_of_run_id on pgflow.runs (restart_of_run_id)
  where restart_of_run_id is not null;

create type pgflow.run_record as (
  run_id uuid,
  flow_slug text,
  status text,
  remaining_steps integer,
  started_at timestamptz,
  completed_at timestamptz,
  failed_at timestamptz,
  cancelled_at timestamptz,
  cancel_reason text,
  restart_of_run_id uuid
);

-- ---- schema/0200_function_cancel_run.sql ----

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

-- ---- schema/0200_function_list_runs.sql ----

-- Runs, newest first (by start, then id), without their input and output: at most max_runs,
-- optionally only one flow's, only those with a status (`started`, `completed`, `failed`, or
-- `cancelled` for the cancelled among the failed), only those started at or after since, and
-- only those listed after before_run_id (the last run of the previous page).
create or replace function pgflow.list_runs(
  flow_slug text default null,
  status text default null,
  since timestamptz default null,
  max_runs integer default 50,
  before_run_id uuid default null
)
returns setof pgflow.run_record
language plpgsql
stable
security definer
set search_path to pg_catalog, pg_temp
as $fn$
declare
  v_before pgflow.runs;
  v_where text := '';
begin
  if list_runs.status is not null
     and list_runs.status not in ('started', 'completed', 'failed', 'cancelled') then
    raise exception using
      errcode = 'invalid_parameter_value',
      message = format('list_runs: status %L is not one of started, completed, failed, cancelled',
                       list_runs.status);
  end if;
  if list_runs.max_runs is null or list_runs.max_runs < 1 or list_runs.max_runs > 10000 then
    raise exception using
      errcode = 'invalid_parameter_value',
      message = format('list_runs: max_runs must be between 1 and 10000, not %s',
                       coalesce(list_runs.max_runs::text, 'NULL'));
  end if;
  if list_runs.before_run_id is not null then
    select * into v_before from pgflow.runs as r where r.run_id = list_runs.before_run_id;
    if not found then
      raise exception using
        errcode = 'no_data_found',
        message = format('list_runs: run %s (before_run_id) does not exist',
                         list_runs.before_run_id);
    end if;
    v_where := v_where || ' and (r.started_at, r.run_id) < ($5, $6)';
  end if;
  if list_runs.flow_slug is not null then
    v_where := v_where || ' and r.flow_slug = $1';
  end if;
  if list_runs.status = 'cancelled' then
    v_where := v_where || ' and r.status = ''failed'' and r.cancelled_at is not null';
  elsif list_runs.status is not null then
    v_where := v_where || ' and r.status = $2';
  end if;
  if list_runs.since is not null then
    v_where := v_where || ' and r.started_at >= $3';
  end if;

  -- Built from the filters given, so each query is planned for its own index.
  return query execute
    'select r.run_id, r.flow_slug, r.status, r.remaining_steps, r.started_at, r.completed_at,'
    '       r.failed_at, r.cancelled_at, r.cancel_reason, r.restart_of_run_id'
    '  from pgflow.runs as r'
    ' where true' || v_where ||
    ' order by r.started_at desc, r.run_id desc'
    ' limit $4'
    using list_runs.flow_slug, list_runs.status, list_runs.since, list_runs.max_runs,
          v_before.started_at, v_before.run_id;
end;
$fn$;

-- ---- schema/0200_function_retry_run.sql ----

-- Retries a failed (or cancelled) run: a new run of the same flow with the same input, started
-- as start_flow starts any run, whose restart_of_run_id names the source. The source run is left
-- as it is. new_run_id chooses the new run's id (a client subscribes to it first).
create or replace function pgflow.retry_run(run_id uuid, new_run_id uuid default null)
returns pgflow.runs
language plpgsql
security definer
set search_path to pg_catalog, pg_temp
as $fn$
declare
  v_source pgflow.runs;
  v_run pgflow.runs;
begin
  select * into v_source from pgflow.runs as r where r.run_id = retry_run.run_id for key share;
  if not found then
    raise exception using
      errcode = 'no_data_found',
      message = format('retry_run: run %s does not exist', retry_run.run_id);
  end if;
  if v_source.status <> 'failed' then
    raise exception using
      errcode = 'object_not_in_prerequisite_state',
      message = format('retry_run: run %s has not failed (it is %s)', v_source.run_id,
                       v_source.status),
      hint = 'Only a failed or cancelled run can be retried.';
  end if;

  select * into v_run
    from pgflow.start_flow(v_source.flow_slug, v_source.input, retry_run.new_run_id);
  update pgflow.runs as r
     set restart_of_run_id = v_source.run_id
   where r.run_id = v_run.run_id
  returning * into v_run;
  return v_run;
end;
$fn$;

-- ---- privileges ----

revoke all on function pgflow.cancel_run(uuid, text) from public;
revoke all on function pgflow.list_runs(text, text, timestamptz, integer, uuid) from public;
revoke all on function pgflow.retry_run(uuid, uuid) from public;
