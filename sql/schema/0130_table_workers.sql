-- Workers: one row per worker process, kept alive by its heartbeats.
create table pgflow.workers (
  worker_id uuid primary key,
  queue_name text not null,
  function_name text not null,
  started_at timestamptz not null default now(),
  deprecated_at timestamptz,
  stopped_at timestamptz,
  last_heartbeat_at timestamptz not null default now()
);

create index idx_workers_queue_name on pgflow.workers (queue_name);
