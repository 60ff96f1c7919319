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
