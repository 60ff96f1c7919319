-- Schedules requeue_stalled_tasks with pg_cron as job 'pgflow_requeue_stalled_tasks' (replacing
-- an earlier one), every cron_interval ('15 seconds', or any pg_cron schedule); returns what it
-- did. Without pg_cron it raises, naming it. pgflow runs this from its migration; pgflow-py does
-- not, since start_tasks already fails expired leases.
create or replace function pgflow.setup_requeue_stalled_tasks_cron(
  cron_interval text default '15 seconds'
)
returns text
language plpgsql
security definer
set search_path to pg_catalog, pg_temp
as $fn$
declare
  v_job_id bigint;
begin
  if to_regprocedure('cron.schedule(text,text,text)') is null then
    raise exception using
      errcode = 'undefined_function',
      message = 'setup_requeue_stalled_tasks_cron needs the pg_cron extension, which is not '
                'installed in this database',
      hint = 'Install pg_cron (create extension pg_cron; on Supabase, enable it under '
             'Database > Extensions), or call pgflow.requeue_stalled_tasks() from another '
             'scheduler.';
  end if;
  if cron_interval is null then
    raise exception using
      errcode = 'invalid_parameter_value',
      message = 'setup_requeue_stalled_tasks_cron: cron_interval cannot be NULL';
  end if;

  execute 'select cron.unschedule(jobid) from cron.job where jobname = $1'
    using 'pgflow_requeue_stalled_tasks';
  begin
    execute 'select cron.schedule($1, $2, $3)'
      into v_job_id
      using 'pgflow_requeue_stalled_tasks', cron_interval, 'select pgflow.requeue_stalled_tasks()';
  exception when invalid_parameter_value then
    raise exception using
      errcode = 'invalid_parameter_value',
      message = format('setup_requeue_stalled_tasks_cron: pg_cron refused the schedule %L (%s); '
                       'the job scheduled before, if any, is kept', cron_interval, sqlerrm),
      hint = 'pg_cron takes intervals such as ''15 seconds'' from version 1.5 on; before, only '
             'cron expressions such as ''* * * * *''.';
  end;
  return format('Scheduled pgflow_requeue_stalled_tasks (every %s, job_id=%s)',
                cron_interval, v_job_id);
end;
$fn$;
