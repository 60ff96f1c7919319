-- Runs: one row per run of a flow, with its input, and its output once it completes.
-- A cancelled run is `failed`, with when and why it was cancelled; a retry names its source.
create table pgflow.runs (
  run_id uuid primary key not null default gen_random_uuid(),
  flow_slug text not null references pgflow.flows (flow_slug),
  status text not null default 'started',
  input jsonb not null,
  output jsonb,
  remaining_steps integer not null default 0,
  started_at timestamptz not null default now(),
  completed_at timestamptz,
  failed_at timestamptz,
  constraint status_is_valid check (status in ('started', 'failed', 'completed')),
  constraint runs_remaining_steps_check check (remaining_steps >= 0),
  constraint completed_at_or_failed_at check (not (completed_at is not null and failed_at is not null)),
  constraint completed_at_is_after_started_at check (completed_at is null or completed_at >= started_at),
  constraint failed_at_is_after_started_at check (failed_at is null or failed_at >= started_at),
  cancelled_at timestamptz,
  cancel_reason text,
  restart_of_run_id uuid references pgflow.runs (run_id) on delete set null,
  constraint cancelled_only_when_failed check (
    cancelled_at is null or (status = 'failed' and failed_at is not null)),
  constraint cancel_reason_only_when_cancelled check (cancel_reason is null or cancelled_at is not null)
);

create index idx_runs_flow_slug on pgflow.runs (flow_slug);
create index idx_runs_status on pgflow.runs (status);
-- list_runs: newest first, overall, by flow and by status.
create index idx_runs_started_at on pgflow.runs (started_at, run_id);
create index idx_runs_flow_slug_started_at on pgflow.runs (flow_slug, started_at, run_id);
create index idx_runs_status_started_at on pgflow.runs (status, started_at, run_id);
-- Deleting a run looks up its retries, whose restart_of_run_id it clears.
create index idx_runs_restart_of_run_id on pgflow.runs (restart_of_run_id)
  where restart_of_run_id is not null;
