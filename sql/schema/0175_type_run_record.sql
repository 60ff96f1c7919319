-- What list_runs returns for each run: everything but its input and output, which can be big.
create type pgflow.run_record as (
  run_id uuid,
  flow_slug text,
  status text,
  remaining_steps integer,
  started_at timestamptz,
  completed_at timestamptz,
  failed_at timestamptz,
  cancelled_at timestamptz,
  cancel_reason text,
  restart_of_run_id uuid
);
