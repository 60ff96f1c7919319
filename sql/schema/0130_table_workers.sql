-- Workers: one row per worker process, kept alive by its heartbeats. `pgflow_version` is what
-- the worker reports itself to be (pgflow's workers since 0.17 fill it; NULL for older ones).
create table pgflow.workers (
  worker_id uuid primary key,
  queue_name text not null,
  function_name text not null,
  started_at timestamptz not null default now(),
  deprecated_at timestamptz,
  stopped_at timestamptz,
  last_heartbeat_at timestamptz not null default now(),
  pgflow_version text
);

create index idx_workers_queue_name on pgflow.workers (queue_name);
