-- Run trace contexts: the W3C trace context (traceparent, tracestate) of the call that started
-- a run, written in the run's own transaction by start_flow_with_states_traced, so workers can
-- put the run's task spans in that trace. A run started any other way has no row. Kept beside
-- pgflow.runs rather than in it, so runs and queue messages keep pgflow's shape; deleted with
-- the run.
create table pgflow.run_trace_contexts (
  run_id uuid primary key references pgflow.runs (run_id) on delete cascade,
  traceparent text not null,
  tracestate text,
  constraint traceparent_is_valid check (
    traceparent ~ '^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$'
    and traceparent !~ '^ff-'
    and substr(traceparent, 4, 32) <> repeat('0', 32)
    and substr(traceparent, 37, 16) <> repeat('0', 16)),
  constraint tracestate_is_short check (length(tracestate) <= 512)
);
