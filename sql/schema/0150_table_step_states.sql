-- Step states: one row per step of a run. A skipped step is terminal, with its reason
-- (`skip_reason`, `skipped_at`); the two columns come last, the order they were added in.
create table pgflow.step_states (
  flow_slug text not null references pgflow.flows (flow_slug),
  run_id uuid not null references pgflow.runs (run_id),
  step_slug text not null,
  status text not null default 'created',
  remaining_tasks integer,
  initial_tasks integer,
  remaining_deps integer not null default 0,
  output jsonb,
  error_message text,
  created_at timestamptz not null default now(),
  started_at timestamptz,
  completed_at timestamptz,
  failed_at timestamptz,
  skip_reason text,
  skipped_at timestamptz,
  primary key (run_id, step_slug),
  foreign key (flow_slug, step_slug) references pgflow.steps (flow_slug, step_slug),
  constraint status_is_valid check (
    status in ('created', 'started', 'completed', 'failed', 'skipped')),
  constraint remaining_tasks_state_consistency check (
    remaining_tasks is null or status not in ('created', 'skipped')),
  constraint remaining_tasks_valid check (remaining_tasks is null or remaining_tasks >= 0),
  constraint step_states_remaining_deps_check check (remaining_deps >= 0),
  constraint step_states_initial_tasks_check check (initial_tasks is null or initial_tasks >= 0),
  constraint initial_tasks_known_when_started check (status <> 'started' or initial_tasks is not null),
  constraint status_and_remaining_tasks_match check (status <> 'completed' or remaining_tasks = 0),
  constraint output_only_for_completed_or_null check (output is null or status = 'completed'),
  constraint completed_at_or_failed_at_or_skipped_at check (
    num_nonnulls(completed_at, failed_at, skipped_at) <= 1),
  constraint started_at_is_after_created_at check (started_at is null or started_at >= created_at),
  constraint completed_at_is_after_started_at check (completed_at is null or completed_at >= started_at),
  constraint failed_at_is_after_started_at check (failed_at is null or failed_at >= started_at),
  constraint skip_reason_matches_status check (
    (status = 'skipped' and skip_reason is not null)
    or (status <> 'skipped' and skip_reason is null)),
  constraint skipped_at_matches_status check ((status = 'skipped') = (skipped_at is not null)),
  constraint skipped_at_is_after_created_at check (skipped_at is null or skipped_at >= created_at)
)
-- Room in each page for the new versions of a run's step states: no index covers the columns
-- their updates change (status, counts, output, times), so each stays on its page (HOT) and
-- adds no index entries. A run's steps are found through the primary key (run_id first).
with (fillfactor = 75);

create index idx_step_states_flow_slug on pgflow.step_states (flow_slug);
