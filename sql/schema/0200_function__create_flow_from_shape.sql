-- Creates a flow from its shape (see _get_flow_shape) with create_flow and one add_step per
-- step, in order; the shape's `options` (maxAttempts, baseDelay, timeout, and startDelay for a
-- step) are passed on, a missing one taking the default. In queue mode 'step' (pgflow 0.17's
-- per-step queues) every step gets its private queue and the flow none: every route is checked
-- before any queue is created, so a refused flow leaves nothing behind.
create or replace function pgflow._create_flow_from_shape(
  p_flow_slug text,
  p_shape jsonb,
  p_queue_mode text default 'flow'
)
returns void
language plpgsql
set search_path to pg_catalog, pg_temp
as $fn$
declare
  v_step jsonb;
  v_options jsonb;
  v_mode text := coalesce(p_queue_mode, 'flow');
  v_routes jsonb;
  v_route jsonb;
  v_missing text[] := '{}';
begin
  if jsonb_typeof(p_shape) is distinct from 'object'
     or jsonb_typeof(p_shape -> 'steps') is distinct from 'array' then
    raise exception using
      errcode = 'invalid_parameter_value',
      message = format('_create_flow_from_shape: the shape of flow %L must be an object with a '
                       '"steps" array, got %s', p_flow_slug, coalesce(p_shape::text, 'NULL'));
  end if;

  perform pg_advisory_xact_lock(1, hashtext(lower(p_flow_slug)));

  v_routes := pgflow._derive_queue_routes(p_flow_slug, p_shape, v_mode);
  v_options := coalesce(p_shape -> 'options', '{}'::jsonb);
  if v_mode = 'flow' then
    perform pgflow.create_flow(
      p_flow_slug,
      max_attempts => (v_options ->> 'maxAttempts')::integer,
      base_delay => (v_options ->> 'baseDelay')::integer,
      timeout => (v_options ->> 'timeout')::integer);
  else
    for v_route in select value from jsonb_array_elements(v_routes) loop
      if pgflow._assert_step_queue_available(p_flow_slug, v_route ->> 'queueName') then
        v_missing := v_missing || (v_route ->> 'queueName');
      end if;
    end loop;
    if (v_options ->> 'maxAttempts')::integer < 0 or (v_options ->> 'baseDelay')::integer < 0
       or (v_options ->> 'timeout')::integer <= 0 then
      raise exception using
        errcode = 'check_violation',
        message = format('_create_flow_from_shape: flow %L needs maxAttempts >= 0, baseDelay '
                         '>= 0 and timeout > 0, got %s', p_flow_slug, v_options);
    end if;
    -- Written in mode 'flow' so that add_step checks each step as for any flow; the routes and
    -- the mode are set once every step is in, in this same transaction.
    insert into pgflow.flows (flow_slug, opt_max_attempts, opt_base_delay, opt_timeout)
    values (p_flow_slug,
            coalesce((v_options ->> 'maxAttempts')::integer, 3),
            coalesce((v_options ->> 'baseDelay')::integer, 5),
            coalesce((v_options ->> 'timeout')::integer, 60));
  end if;

  for v_step in select value from jsonb_array_elements(p_shape -> 'steps') loop
    if jsonb_typeof(v_step) is distinct from 'object' then
      raise exception using
        errcode = 'invalid_parameter_value',
        message = format('_create_flow_from_shape: every step of flow %L''s shape must be an '
                         'object, got %s', p_flow_slug, v_step);
    end if;
    v_options := coalesce(v_step -> 'options', '{}'::jsonb);
    perform pgflow.add_step(
      flow_slug => p_flow_slug,
      step_slug => v_step ->> 'slug',
      deps_slugs => array(select jsonb_array_elements_text(
                            coalesce(v_step -> 'dependencies', '[]'::jsonb))),
      max_attempts => (v_options ->> 'maxAttempts')::integer,
      base_delay => (v_options ->> 'baseDelay')::integer,
      timeout => (v_options ->> 'timeout')::integer,
      start_delay => (v_options ->> 'startDelay')::integer,
      step_type => coalesce(v_step ->> 'stepType', 'single'),
      required_input_pattern => case when (v_step -> 'requiredInputPattern' ->> 'defined')::boolean
                                     then v_step -> 'requiredInputPattern' -> 'value' end,
      forbidden_input_pattern => case when (v_step -> 'forbiddenInputPattern' ->> 'defined')::boolean
                                      then v_step -> 'forbiddenInputPattern' -> 'value' end,
      when_unmet => coalesce(v_step ->> 'whenUnmet', 'skip'),
      when_exhausted => coalesce(v_step ->> 'whenExhausted', 'fail'));
  end loop;

  if v_mode = 'step' then
    update pgflow.steps as s
       set queue_name = r.value ->> 'queueName'
      from jsonb_array_elements(v_routes) as r
     where s.flow_slug = p_flow_slug and s.step_slug = r.value ->> 'stepSlug';
    update pgflow.flows as f set queue_mode = 'step' where f.flow_slug = p_flow_slug;
    perform pgmq.create(m.queue_name) from unnest(v_missing) as m (queue_name);
  end if;
end;
$fn$;
