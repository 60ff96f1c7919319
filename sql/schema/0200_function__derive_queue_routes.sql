-- The queue of every step of a shape, in shape order, as [{stepSlug, queueName}]: lower(flow
-- slug) for each in queue mode 'flow', each step's private queue in mode 'step'. Checks first
-- what makes routes impossible, so nothing is written when they are: an unknown mode, a
-- step-mode flow without steps, invalid slugs, steps equal ignoring case, and queue names that
-- are not unique or that pgmq refuses.
create or replace function pgflow._derive_queue_routes(
  p_flow_slug text,
  p_shape jsonb,
  p_queue_mode text
)
returns jsonb
language plpgsql
set search_path to pg_catalog, pg_temp
as $fn$
declare
  v_steps jsonb := coalesce(p_shape -> 'steps', '[]'::jsonb);
  v_step jsonb;
  v_slug text;
  v_index integer := 0;
  v_queue text;
  v_routes jsonb := '[]'::jsonb;
  v_first text;
  v_hint constant text :=
    'A slug has 1 to 128 letters, digits or underscores, starts with a letter, ends with a '
    'letter or digit, has no "__", and is not "run".';
begin
  if p_queue_mode is null or p_queue_mode not in ('flow', 'step') then
    raise exception using
      errcode = 'invalid_parameter_value',
      message = format('flow %L asks for queue mode %s; expected ''flow'' or ''step''',
                       p_flow_slug, coalesce(quote_literal(p_queue_mode), 'NULL'));
  end if;
  if jsonb_typeof(v_steps) is distinct from 'array' then
    raise exception using
      errcode = 'invalid_parameter_value',
      message = format('the shape of flow %L must be an object with a "steps" array, got %s',
                       p_flow_slug, coalesce(p_shape::text, 'NULL'));
  end if;
  if p_queue_mode = 'step' and jsonb_array_length(v_steps) = 0 then
    raise exception using
      errcode = 'invalid_parameter_value',
      message = format('flow %L cannot use per-step queues: it has no steps', p_flow_slug);
  end if;
  if not pgflow.is_valid_slug(p_flow_slug) then
    raise exception using
      errcode = 'check_violation',
      message = format('%s is not a valid flow slug', coalesce(quote_literal(p_flow_slug), 'NULL')),
      hint = v_hint;
  end if;
  for v_step in select value from jsonb_array_elements(v_steps) loop
    v_slug := case when jsonb_typeof(v_step) = 'object' then v_step ->> 'slug' end;
    if not pgflow.is_valid_slug(v_slug) then
      raise exception using
        errcode = 'check_violation',
        message = format('%s is not a valid step slug (flow %L)',
                         coalesce(quote_literal(v_slug), 'NULL'), p_flow_slug),
        hint = v_hint;
    end if;
  end loop;

  for v_step in select value from jsonb_array_elements(v_steps) loop
    v_slug := v_step ->> 'slug';
    select r ->> 'stepSlug' into v_first
      from jsonb_array_elements(v_routes) as r
     where lower(r ->> 'stepSlug') = lower(v_slug);
    if found then
      raise exception using
        errcode = 'unique_violation',
        message = format('steps %L and %L of flow %L differ only in case; step slugs are '
                         'unique ignoring case', v_first, v_slug, p_flow_slug);
    end if;
    if p_queue_mode = 'step' then
      v_queue := pgflow._resolve_step_queue_name(p_flow_slug, v_slug, v_index);
      perform pgmq.validate_queue_name(v_queue);
      select r ->> 'stepSlug' into v_first
        from jsonb_array_elements(v_routes) as r
       where r ->> 'queueName' = v_queue;
      if found then
        raise exception using
          errcode = 'unique_violation',
          message = format('steps %L and %L of flow %L would share the queue %L',
                           v_first, v_slug, p_flow_slug, v_queue),
          hint = 'Rename one of the two steps.';
      end if;
    else
      v_queue := lower(p_flow_slug);
    end if;
    v_routes := v_routes || jsonb_build_object('stepSlug', v_slug, 'queueName', v_queue);
    v_index := v_index + 1;
  end loop;
  return v_routes;
end;
$fn$;
