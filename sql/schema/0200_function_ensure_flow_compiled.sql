-- Makes the database hold a flow of the given shape, as a worker needs at startup; returns
-- {status, differences, mismatchKind}. A missing flow is created from the shape ('compiled').
-- A stored flow of the same shape is left exactly as it is, options tuned in SQL included
-- ('verified'). One of another shape is deleted with its runs and created afresh only on a
-- local development stack (is_local(): 'recompiled'); anywhere else nothing changes and the
-- status is 'mismatch', with mismatchKind 'shape'. Callers for one flow are serialized by an
-- advisory lock held until the end of their transaction, so workers starting together compile
-- it once. queue_mode 'step' gives every step a private queue (pgflow 0.17); a route_map
-- ([{stepSlug, queueName}], as pgflow's withStepQueues gives it) must be exactly the routes
-- derived here. A stored flow whose mode or routes differ is a mismatch of kind 'routing'.
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
  v_mode text := coalesce(ensure_flow_compiled.queue_mode, 'flow');
  v_differences text[];
  v_routing text[] := '{}';
  v_routes jsonb;
  v_stored text;
  v_expected text;
  v_stored_mode text;
  v_kind text;
begin
  if jsonb_typeof(ensure_flow_compiled.shape) is distinct from 'object'
     or jsonb_typeof(ensure_flow_compiled.shape -> 'steps') is distinct from 'array' then
    raise exception using
      errcode = 'invalid_parameter_value',
      message = format('ensure_flow_compiled: the shape of flow %L must be an object with a '
                       '"steps" array, got %s', v_slug,
                       coalesce(ensure_flow_compiled.shape::text, 'NULL'));
  end if;

  perform pg_advisory_xact_lock(1, hashtext(lower(v_slug)));

  v_routes := pgflow._derive_queue_routes(v_slug, ensure_flow_compiled.shape, v_mode);
  if ensure_flow_compiled.route_map is not null
     and ensure_flow_compiled.route_map is distinct from v_routes then
    raise exception using
      errcode = 'invalid_parameter_value',
      message = format('ensure_flow_compiled: the route map given for flow %L is not the one '
                       'derived from its shape: given %s, derived %s', v_slug,
                       ensure_flow_compiled.route_map, v_routes),
      hint = 'Queue names follow from the flow slug, the step slugs and their order: pass '
             'the derived map, or none.';
  end if;

  select f.queue_mode into v_stored_mode from pgflow.flows as f where f.flow_slug = v_slug;
  if not found then
    perform pgflow._create_flow_from_shape(v_slug, ensure_flow_compiled.shape, v_mode);
    return jsonb_build_object('status', 'compiled', 'differences', '[]'::jsonb,
                              'mismatchKind', null);
  end if;

  v_differences := pgflow._compare_flow_shapes(ensure_flow_compiled.shape,
                                               pgflow._get_flow_shape(v_slug));
  if v_stored_mode <> v_mode then
    v_routing := v_routing || format('Queue mode differs: database has %L, worker expects %L',
                                     v_stored_mode, v_mode);
  end if;
  select string_agg(s.step_slug || ' -> ' || s.queue_name, ', ' order by s.step_index)
    into v_stored
    from pgflow.steps as s where s.flow_slug = v_slug;
  select string_agg((r.value ->> 'stepSlug') || ' -> ' || (r.value ->> 'queueName'), ', '
                    order by r.ordinality)
    into v_expected
    from jsonb_array_elements(v_routes) with ordinality as r;
  if v_stored is distinct from v_expected then
    v_routing := v_routing || format('Step routes differ: database has [%s], worker expects [%s]',
                                     coalesce(v_stored, ''), coalesce(v_expected, ''));
  end if;

  if cardinality(v_differences) = 0 and cardinality(v_routing) = 0 then
    if v_mode = 'step' then
      perform pgflow._assert_step_queue_available(v_slug, r.value ->> 'queueName')
         from jsonb_array_elements(v_routes) as r;
    end if;
    return jsonb_build_object('status', 'verified', 'differences', '[]'::jsonb,
                              'mismatchKind', null);
  end if;

  -- A shape change moves routes too: the kind is 'routing' only when the shape matches.
  v_kind := case when cardinality(v_differences) = 0 then 'routing' else 'shape' end;
  v_differences := v_differences || v_routing;
  if pgflow.is_local() then
    perform pgflow.delete_flow_and_data(v_slug);
    perform pgflow._create_flow_from_shape(v_slug, ensure_flow_compiled.shape, v_mode);
    return jsonb_build_object('status', 'recompiled', 'differences', to_jsonb(v_differences),
                              'mismatchKind', null);
  end if;
  return jsonb_build_object('status', 'mismatch', 'differences', to_jsonb(v_differences),
                            'mismatchKind', v_kind);
end;
$fn$;
