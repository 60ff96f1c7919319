-- Creates a flow from its shape (see _get_flow_shape) with create_flow and one add_step per
-- step, in order; the shape's `options` (maxAttempts, baseDelay, timeout, and startDelay for a
-- step) are passed on, a missing one taking the default. pgflow 0.17's third argument chooses
-- per-step queues; pgflow-py has only the flow's queue, so anything but 'flow' is refused.
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
begin
  if coalesce(p_queue_mode, 'flow') <> 'flow' then
    raise exception using
      errcode = 'feature_not_supported',
      message = format('_create_flow_from_shape: queue mode %L is not supported (flow %L); '
                       'pgflow-py has one queue per flow, queue mode ''flow''',
                       p_queue_mode, p_flow_slug);
  end if;
  if jsonb_typeof(p_shape) is distinct from 'object'
     or jsonb_typeof(p_shape -> 'steps') is distinct from 'array' then
    raise exception using
      errcode = 'invalid_parameter_value',
      message = format('_create_flow_from_shape: the shape of flow %L must be an object with a '
                       '"steps" array, got %s', p_flow_slug, coalesce(p_shape::text, 'NULL'));
  end if;

  perform pg_advisory_xact_lock(1, hashtext(lower(p_flow_slug)));

  v_options := coalesce(p_shape -> 'options', '{}'::jsonb);
  perform pgflow.create_flow(
    p_flow_slug,
    max_attempts => (v_options ->> 'maxAttempts')::integer,
    base_delay => (v_options ->> 'baseDelay')::integer,
    timeout => (v_options ->> 'timeout')::integer);

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
end;
$fn$;
