-- pgflow-py SQL core, migration 0006: trace_context.
--
-- Trace propagation from start_flow to tasks without touching pgflow's wire format: the table
-- pgflow.run_trace_contexts holds the W3C trace context of the call that started a run, and
-- start_flow_with_states_traced starts a run and stores it in one transaction.
--
-- The table by hand, the function
-- started from its schema file by
--   python -m pgflow_worker._database.derive next trace_context ...
-- A function added here gets EXECUTE for PUBLIC unless this migration revokes it, as
-- sql/schema/0900_privileges.sql does for the schema; the drift test compares the two.

-- ---- tables ----

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

-- ---- schema/0200_function_start_flow_with_states_traced.sql ----

-- start_flow_with_states that also stores the caller's W3C trace context with the new run, in
-- the same transaction, before any of its tasks can be read: workers then trace the run's tasks
-- in the caller's trace. A null traceparent stores nothing. The queue messages and the run are
-- exactly those of start_flow: pgflow's workers and clients see no difference.
create or replace function pgflow.start_flow_with_states_traced(
  flow_slug text,
  input jsonb,
  run_id uuid default null,
  traceparent text default null,
  tracestate text default null
)
returns jsonb
language plpgsql
security definer
set search_path to pg_catalog, pg_temp
as $fn$
declare
  v_run_id uuid;
  v_traceparent text := lower(btrim(start_flow_with_states_traced.traceparent));
  v_tracestate text := nullif(btrim(start_flow_with_states_traced.tracestate), '');
begin
  if v_traceparent is not null and (
       v_traceparent !~ '^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$'
       or v_traceparent ~ '^ff-'
       or substr(v_traceparent, 4, 32) = repeat('0', 32)
       or substr(v_traceparent, 37, 16) = repeat('0', 16)) then
    raise exception using
      errcode = 'invalid_parameter_value',
      message = format('start_flow_with_states_traced: traceparent %L is not a valid W3C '
                       'traceparent', start_flow_with_states_traced.traceparent),
      hint = 'Expected version-traceid-parentid-flags in lowercase hex, e.g. '
             '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01.';
  end if;
  if length(v_tracestate) > 512 then
    raise exception using
      errcode = 'invalid_parameter_value',
      message = format('start_flow_with_states_traced: tracestate is %s characters long; '
                       'at most 512 are kept', length(v_tracestate));
  end if;

  select r.run_id into v_run_id
    from pgflow.start_flow(start_flow_with_states_traced.flow_slug,
                           start_flow_with_states_traced.input,
                           start_flow_with_states_traced.run_id) as r;
  if v_traceparent is not null then
    insert into pgflow.run_trace_contexts (run_id, traceparent, tracestate)
    values (v_run_id, v_traceparent, v_tracestate);
  end if;
  return pgflow.get_run_with_states(v_run_id);
end;
$fn$;

revoke all on table pgflow.run_trace_contexts from public;
revoke all on function pgflow.start_flow_with_states_traced(text, jsonb, uuid, text, text)
  from public;
