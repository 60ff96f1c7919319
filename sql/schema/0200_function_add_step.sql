-- Adds a step to a flow, after its dependencies (idempotent: an existing step is returned
-- unchanged).
create or replace function pgflow.add_step(
  flow_slug text,
  step_slug text,
  deps_slugs text[] default '{}',
  max_attempts integer default null,
  base_delay integer default null,
  timeout integer default null,
  start_delay integer default null,
  step_type text default 'single',
  required_input_pattern jsonb default null,
  forbidden_input_pattern jsonb default null,
  when_unmet text default 'skip',
  when_exhausted text default 'fail'
)
returns pgflow.steps
language plpgsql
set search_path to pg_catalog, pg_temp
as $fn$
declare
  v_deps text[] := coalesce(add_step.deps_slugs, '{}');
  v_step pgflow.steps;
  v_unknown text[];
  v_queue_mode text;
begin
  perform pg_advisory_xact_lock(1, hashtext(lower(add_step.flow_slug)));
  select f.queue_mode into v_queue_mode
    from pgflow.flows as f where f.flow_slug = add_step.flow_slug for update;
  if not found then
    raise exception using
      errcode = 'foreign_key_violation',
      message = format('add_step: flow %s does not exist; create it with pgflow.create_flow first',
                       coalesce(quote_literal(add_step.flow_slug), 'NULL'));
  end if;

  if v_queue_mode = 'step' then
    raise exception using
      errcode = 'feature_not_supported',
      message = format('add_step: flow %L has a queue per step: its steps cannot be added one '
                       'by one', add_step.flow_slug),
      hint = 'Compile the whole flow with pgflow.ensure_flow_compiled(slug, shape, ''step'').';
  end if;

  if not pgflow.is_valid_slug(add_step.step_slug) then
    raise exception using
      errcode = 'check_violation',
      message = format('add_step: %s is not a valid step slug (flow %L)',
                       coalesce(quote_literal(add_step.step_slug), 'NULL'), add_step.flow_slug),
      hint = 'A slug has 1 to 128 letters, digits or underscores, starts with a letter, ends '
             'with a letter or digit, has no "__", and is not "run".';
  end if;

  select * into v_step
    from pgflow.steps as s
   where s.flow_slug = add_step.flow_slug and s.step_slug = add_step.step_slug;
  if found then
    return v_step;  -- idempotent: an existing step is returned unchanged
  end if;

  if add_step.step_type is null or add_step.step_type not in ('single', 'map') then
    raise exception using
      errcode = 'check_violation',
      message = format('add_step: step %L of flow %L has step_type %s; expected ''single'' or ''map''',
                       add_step.step_slug, add_step.flow_slug,
                       coalesce(quote_literal(add_step.step_type), 'NULL'));
  end if;
  if add_step.max_attempts < 0 or add_step.base_delay < 0 or add_step.timeout <= 0
     or add_step.start_delay < 0 then
    raise exception using
      errcode = 'check_violation',
      message = format('add_step: step %L of flow %L needs max_attempts >= 0, base_delay >= 0, '
                       'timeout > 0 and start_delay >= 0 (got %s, %s, %s, %s)',
                       add_step.step_slug, add_step.flow_slug, add_step.max_attempts,
                       add_step.base_delay, add_step.timeout, add_step.start_delay);
  end if;
  if jsonb_typeof(add_step.required_input_pattern) <> 'object' then
    raise exception using
      errcode = 'check_violation',
      message = format('add_step: step %L of flow %L has a required_input_pattern that is a '
                       'JSON %s; a pattern is a JSON object',
                       add_step.step_slug, add_step.flow_slug,
                       jsonb_typeof(add_step.required_input_pattern));
  end if;
  if jsonb_typeof(add_step.forbidden_input_pattern) <> 'object' then
    raise exception using
      errcode = 'check_violation',
      message = format('add_step: step %L of flow %L has a forbidden_input_pattern that is a '
                       'JSON %s; a pattern is a JSON object',
                       add_step.step_slug, add_step.flow_slug,
                       jsonb_typeof(add_step.forbidden_input_pattern));
  end if;
  if add_step.when_unmet is null or add_step.when_unmet not in ('fail', 'skip', 'skip-cascade') then
    raise exception using
      errcode = 'check_violation',
      message = format('add_step: step %L of flow %L has when_unmet %s; expected ''fail'', '
                       '''skip'' or ''skip-cascade''', add_step.step_slug, add_step.flow_slug,
                       coalesce(quote_literal(add_step.when_unmet), 'NULL'));
  end if;
  if add_step.when_exhausted is null
     or add_step.when_exhausted not in ('fail', 'skip', 'skip-cascade') then
    raise exception using
      errcode = 'check_violation',
      message = format('add_step: step %L of flow %L has when_exhausted %s; expected ''fail'', '
                       '''skip'' or ''skip-cascade''', add_step.step_slug, add_step.flow_slug,
                       coalesce(quote_literal(add_step.when_exhausted), 'NULL'));
  end if;
  if array_position(v_deps, null) is not null
     or cardinality(v_deps) <> (select count(distinct d) from unnest(v_deps) as d) then
    raise exception using
      errcode = 'invalid_parameter_value',
      message = format('add_step: step %L of flow %L lists a dependency twice or a NULL one: %s',
                       add_step.step_slug, add_step.flow_slug, v_deps);
  end if;
  if add_step.step_slug = any (v_deps) then
    raise exception using
      errcode = 'check_violation',
      message = format('add_step: step %L of flow %L cannot depend on itself',
                       add_step.step_slug, add_step.flow_slug);
  end if;
  if add_step.step_type = 'map' and cardinality(v_deps) > 1 then
    raise exception using
      errcode = 'raise_exception',
      message = format('Map step "%s" can have at most one dependency, but %s were provided: '
                       '%s (flow %L)', add_step.step_slug, cardinality(v_deps),
                       array_to_string(v_deps, ', '), add_step.flow_slug),
      hint = 'A map step maps over the run input (no dependency) or over the array output of '
             'its one dependency.';
  end if;

  select array_agg(d order by d) into v_unknown
    from unnest(v_deps) as d
   where not exists (
     select 1 from pgflow.steps as s where s.flow_slug = add_step.flow_slug and s.step_slug = d);
  if v_unknown is not null then
    raise exception using
      errcode = 'foreign_key_violation',
      message = format('add_step: step %L of flow %L depends on unknown step(s): %s',
                       add_step.step_slug, add_step.flow_slug, array_to_string(v_unknown, ', ')),
      hint = 'Add the dependencies first: steps are added in dependency order.';
  end if;

  insert into pgflow.steps as s (
    flow_slug, step_slug, step_type, step_index, deps_count,
    opt_max_attempts, opt_base_delay, opt_timeout, opt_start_delay,
    required_input_pattern, forbidden_input_pattern, when_unmet, when_exhausted, queue_name)
  values (
    add_step.flow_slug, add_step.step_slug, add_step.step_type,
    (select coalesce(max(x.step_index) + 1, 0) from pgflow.steps as x
      where x.flow_slug = add_step.flow_slug),
    cardinality(v_deps),
    add_step.max_attempts, add_step.base_delay, add_step.timeout, add_step.start_delay,
    add_step.required_input_pattern, add_step.forbidden_input_pattern,
    add_step.when_unmet, add_step.when_exhausted, lower(add_step.flow_slug))
  returning * into v_step;

  insert into pgflow.deps (flow_slug, dep_slug, step_slug)
  select add_step.flow_slug, d, add_step.step_slug from unnest(v_deps) as d;

  return v_step;
end;
$fn$;
