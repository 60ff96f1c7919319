-- Marks a worker stopped (it shut down cleanly).
create or replace function pgflow.mark_worker_stopped(worker_id uuid)
returns void
language sql
set search_path to pg_catalog, pg_temp
as $fn$
  update pgflow.workers as w
     set stopped_at = clock_timestamp()
   where w.worker_id = mark_worker_stopped.worker_id
$fn$;
