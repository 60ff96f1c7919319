-- Step tasks: one row per task of a started step (one for a single step, one per element for
-- a map), tied to its pgmq message; `attempts_count` counts the attempts started. A task goes
-- `queued` -> `started` -> `completed` or `failed` (back to `queued` for a retry); it ends
-- `skipped` when its step is skipped and `cancelled` when its run fails first. `queue_name` is
-- its step's queue when the task was created: a message is known by (queue_name, message_id).
create table pgflow.step_tasks (
  flow_slug text not null references pgflow.flows (flow_slug),
  run_id uuid not null references pgflow.runs (run_id),
  step_slug text not null,
  message_id bigint,
  task_index integer not null default 0,
  status text not null default 'queued',
  attempts_count integer not null default 0,
  error_message text,
  output jsonb,
  queued_at timestamptz not null default now(),
  started_at timestamptz,
  completed_at timestamptz,
  failed_at timestamptz,
  last_worker_id uuid references pgflow.workers (worker_id) on delete set null,
  requeued_count integer not null default 0,
  last_requeued_at timestamptz,
  permanently_stalled_at timestamptz,
  queue_name text not null,
  primary key (run_id, step_slug, task_index),
  foreign key (run_id, step_slug) references pgflow.step_states (run_id, step_slug),
  constraint valid_status check (
    status in ('queued', 'started', 'completed', 'failed', 'skipped', 'cancelled')),
  constraint output_valid_only_for_completed check (
    output is null or status in ('completed', 'failed')
  ),
  constraint attempts_count_nonnegative check (attempts_count >= 0),
  constraint task_index_nonnegative check (task_index >= 0),
  constraint completed_at_or_failed_at check (not (completed_at is not null and failed_at is not null)),
  constraint completed_at_is_after_queued_at check (completed_at is null or completed_at >= queued_at),
  constraint failed_at_is_after_queued_at check (failed_at is null or failed_at >= queued_at),
  constraint started_at_is_after_queued_at check (started_at is null or started_at >= queued_at),
  constraint completed_at_is_after_started_at check (
    completed_at is null or started_at is null or completed_at >= started_at),
  constraint failed_at_is_after_started_at check (
    failed_at is null or started_at is null or failed_at >= started_at),
  -- pgflow.is_valid_queue_name written out: a function with a pinned search_path cannot be
  -- inlined, and would be parsed and planned again for every row written.
  constraint queue_name_is_valid check (
    queue_name <> '' and length(queue_name) <= 47 and queue_name = lower(queue_name))
);

create unique index idx_step_tasks_queue_message on pgflow.step_tasks (queue_name, message_id)
  where message_id is not null;
-- Keyed like the primary key: planners without statistics happily pick this partial index for
-- a primary-key lookup that also names the status, and it must stay a single probe then.
create index idx_step_tasks_active on pgflow.step_tasks (run_id, step_slug, task_index)
  where status in ('queued', 'started');
create index idx_step_tasks_started on pgflow.step_tasks (started_at)
  where status = 'started';
create index idx_step_tasks_worker on pgflow.step_tasks (last_worker_id)
  where status = 'started';
