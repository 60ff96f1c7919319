-- Completes the run once no step remains; its output holds the outputs of the leaf steps.
create or replace function pgflow.maybe_complete_run(run_id uuid)
returns void
language plpgsql
set search_path to pg_catalog, pg_temp
as $fn$
declare
  v_run pgflow.runs;
begin
  update pgflow.runs as r
     set status = 'completed',
         completed_at = now(),
         output = (
           select jsonb_object_agg(ss.step_slug, ss.output)
             from pgflow.step_states as ss
            where ss.run_id = r.run_id
              and ss.status = 'completed'
              and not exists (
                select 1 from pgflow.deps as d
                 where d.flow_slug = ss.flow_slug and d.dep_slug = ss.step_slug))
   where r.run_id = maybe_complete_run.run_id
     and r.status = 'started'
     and r.remaining_steps = 0
  returning * into v_run;

  if found then
    perform realtime.send(
      jsonb_build_object(
        'event_type', 'run:completed',
        'run_id', v_run.run_id,
        'flow_slug', v_run.flow_slug,
        'status', 'completed',
        'output', v_run.output,
        'completed_at', v_run.completed_at),
      'run:completed',
      'pgflow:run:' || v_run.run_id,
      false);
  end if;
end;
$fn$;
