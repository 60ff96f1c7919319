-- Makes the database hold a flow of the given shape, as a worker needs at startup; returns
-- {status, differences, mismatchKind}. A missing flow is created from the shape ('compiled').
-- A stored flow of the same shape is left exactly as it is, options tuned in SQL included
-- ('verified'). One of another shape is deleted with its runs and created afresh only on a
-- local development stack (is_local(): 'recompiled'); anywhere else nothing changes and the
-- status is 'mismatch', with mismatchKind 'shape'. Callers for one flow are serialized by an
-- advisory lock held until the end of their transaction, so workers starting together compile
-- it once. queue_mode and route_map are pgflow 0.17's per-step queues, which pgflow-py does not
-- have: only queue mode 'flow' without a route map is accepted.
create or replace function pgflow.ensure_flow_compiled(
  flow_slug text,
  shape jsonb,
  queue_mode text default 'flow',
  route_map jsonb default null
)
returns jsonb
language plpgsql
set search_path to pg_catalog, pg_temp
as $fn$
declare
  v_slug text := ensure_flow_compiled.flow_slug;
  v_differences text[];
begin
  if coalesce(ensure_flow_compiled.queue_mode, 'flow') <> 'flow'
     or ensure_flow_compiled.route_map is not null then
    raise exception using
      errcode = 'feature_not_supported',
      message = format('ensure_flow_compiled: flow %L asks for queue mode %L%s, but per-step '
                       'queues are not supported: pgflow-py has one queue per flow',
                       v_slug, ensure_flow_compiled.queue_mode,
                       case when ensure_flow_compiled.route_map is not null
                            then ' with a route map' else '' end),
      hint = 'Call it with queue_mode => ''flow'' (the default) and no route_map.';
  end if;
  if jsonb_typeof(ensure_flow_compiled.shape) is distinct from 'object'
     or jsonb_typeof(ensure_flow_compiled.shape -> 'steps') is distinct from 'array' then
    raise exception using
      errcode = 'invalid_parameter_value',
      message = format('ensure_flow_compiled: the shape of flow %L must be an object with a '
                       '"steps" array, got %s', v_slug,
                       coalesce(ensure_flow_compiled.shape::text, 'NULL'));
  end if;

  perform pg_advisory_xact_lock(1, hashtext(lower(v_slug)));

  if not exists (select 1 from pgflow.flows as f where f.flow_slug = v_slug) then
    perform pgflow._create_flow_from_shape(v_slug, ensure_flow_compiled.shape);
    return jsonb_build_object('status', 'compiled', 'differences', '[]'::jsonb,
                              'mismatchKind', null);
  end if;

  v_differences := pgflow._compare_flow_shapes(ensure_flow_compiled.shape,
                                               pgflow._get_flow_shape(v_slug));
  if cardinality(v_differences) = 0 then
    return jsonb_build_object('status', 'verified', 'differences', '[]'::jsonb,
                              'mismatchKind', null);
  end if;

  if pgflow.is_local() then
    perform pgflow.delete_flow_and_data(v_slug);
    perform pgflow._create_flow_from_shape(v_slug, ensure_flow_compiled.shape);
    return jsonb_build_object('status', 'recompiled', 'differences', to_jsonb(v_differences),
                              'mismatchKind', null);
  end if;
  return jsonb_build_object('status', 'mismatch', 'differences', to_jsonb(v_differences),
                            'mismatchKind', 'shape');
end;
$fn$;
