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
