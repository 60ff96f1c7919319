-- Worker functions: one row per kind of worker (pgflow's Edge Function name), registered by
-- track_worker_function when a worker starts. pgflow's ensure_workers pings the enabled `http`
-- ones; pgflow-py installs no such pinger, so here the table records which workers exist and how
-- they start. Columns are in pgflow's order (`start_mode` came last, in 0.15).
create table pgflow.worker_functions (
  function_name text primary key,
  enabled boolean not null default true,
  debounce interval not null default '6 seconds',
  last_invoked_at timestamptz,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  start_mode text not null default 'http',
  constraint worker_functions_debounce_check check (debounce >= '1 second'),
  constraint worker_functions_start_mode_check check (start_mode in ('http', 'process'))
);
