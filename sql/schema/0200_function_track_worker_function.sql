-- Registers a kind of worker (pgflow's Edge Function name) and how it starts: 'http' (started
-- by requests, pgflow's Edge Functions) or 'process' (starts itself, as pgflow-py's workers do).
-- Called by workers on startup; a second call updates start_mode and updated_at.
create or replace function pgflow.track_worker_function(
  function_name text,
  start_mode text default 'http'
)
returns void
language sql
set search_path to pg_catalog, pg_temp
as $fn$
  insert into pgflow.worker_functions as wf (function_name, start_mode, updated_at)
  values (track_worker_function.function_name, track_worker_function.start_mode, clock_timestamp())
  on conflict (function_name) do update
    set start_mode = excluded.start_mode,
        updated_at = excluded.updated_at
$fn$;
