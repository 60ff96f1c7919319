-- pgflow-py SQL core, migration 0002: compile_api.
--
-- Started from the schema files below by
--   python -m pgflow_worker._database.derive next compile_api ...
-- A function added here gets EXECUTE for PUBLIC unless this migration revokes it, as
-- sql/schema/0900_privileges.sql does for the schema; the drift test compares the two.


-- ---- stricter slugs: refuse the upgrade, changing nothing, while stored slugs break them ----

do $check$
declare
  v_bad text;
  v_rule constant text :=
    '^[a-zA-Z]([a-zA-Z0-9_]*[a-zA-Z0-9])?$';
begin
  select string_agg(item, '; ' order by item) into v_bad
    from (
      select format('flow %L: not a valid slug', f.flow_slug) as item
        from pgflow.flows as f
       where not (length(f.flow_slug) between 1 and 128 and f.flow_slug ~ v_rule
                  and strpos(f.flow_slug, '__') = 0 and f.flow_slug <> 'run')
      union all
      select format('step %L of flow %L: not a valid slug', s.step_slug, s.flow_slug)
        from pgflow.steps as s
       where not (length(s.step_slug) between 1 and 128 and s.step_slug ~ v_rule
                  and strpos(s.step_slug, '__') = 0 and s.step_slug <> 'run')
      union all
      select format('flows %s: the same slug ignoring case',
                    string_agg(quote_literal(f.flow_slug), ', ' order by f.flow_slug))
        from pgflow.flows as f
       group by lower(f.flow_slug)
      having count(*) > 1
      union all
      select format('steps %s of flow %L: the same slug ignoring case',
                    string_agg(quote_literal(s.step_slug), ', ' order by s.step_slug), s.flow_slug)
        from pgflow.steps as s
       group by s.flow_slug, lower(s.step_slug)
      having count(*) > 1
    ) as problems;
  if v_bad is not null then
    raise exception using
      errcode = 'check_violation',
      message = 'pgflow 0.17''s slug rules refuse slugs stored in this database: ' || v_bad,
      detail = 'A slug now starts with a letter, ends with a letter or digit, has no "__", and '
               'is unique ignoring case (flows; steps within their flow). Nothing was changed.',
      hint = 'Delete or rename those flows (pgflow.delete_flow_and_data removes a flow with its '
             'runs) with the previous pgflow-py, then migrate again.';
  end if;
end
$check$;

-- ---- schema/0020_function_is_valid_slug.sql ----

-- Whether a flow or step slug is valid: 1 to 128 letters, digits or underscores, starting with
-- a letter and ending with a letter or digit, with no '__' (pgflow 0.17 keeps it free for the
-- names of per-step queues), and not 'run'.
create or replace function pgflow.is_valid_slug(slug text)
returns boolean
language sql
immutable
set search_path to pg_catalog, pg_temp
as $fn$
  select slug is not null
     and length(slug) between 1 and 128
     and slug ~ '^[a-zA-Z]([a-zA-Z0-9_]*[a-zA-Z0-9])?$'
     and strpos(slug, '__') = 0
     and slug <> 'run'
$fn$;


-- ---- tables: rules checked again, case-insensitive uniqueness, worker tracking ----

alter table pgflow.flows
  drop constraint slug_is_valid,
  add constraint slug_is_valid check (pgflow.is_valid_slug(flow_slug));
create unique index idx_flows_normalized_slug on pgflow.flows (lower(flow_slug));

alter table pgflow.steps
  drop constraint slug_is_valid,
  add constraint slug_is_valid check (pgflow.is_valid_slug(step_slug));
create unique index idx_steps_normalized_slug on pgflow.steps (flow_slug, lower(step_slug));

alter table pgflow.workers add column pgflow_version text;

create table pgflow.worker_functions (
  function_name text primary key,
  enabled boolean not null default true,
  debounce interval not null default '6 seconds',
  last_invoked_at timestamptz,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  start_mode text not null default 'http',
  constraint worker_functions_debounce_check check (debounce >= '1 second'),
  constraint worker_functions_start_mode_check check (start_mode in ('http', 'process'))
);
revoke all on pgflow.worker_functions from public;

-- ---- schema/0200_function__compare_flow_shapes.sql ----

-- How two flow shapes differ, one sentence per difference in pgflow's wording (empty when they
-- match): the step count, then each position's slug, type, dependencies, condition modes and
-- input patterns. Options are not compared. A shape written before conditions existed lacks
-- their keys; those read as the defaults (whenUnmet 'skip', whenExhausted 'fail', no pattern).
create or replace function pgflow._compare_flow_shapes(p_local jsonb, p_db jsonb)
returns text[]
language plpgsql
stable
set search_path to pg_catalog, pg_temp
as $fn$
declare
  v_out text[] := '{}';
  v_a jsonb := coalesce(p_local -> 'steps', '[]'::jsonb);
  v_b jsonb := coalesce(p_db -> 'steps', '[]'::jsonb);
  v_na integer := jsonb_array_length(v_a);
  v_nb integer := jsonb_array_length(v_b);
  v_x jsonb;
  v_y jsonb;
  v_where text;
  v_text_a text;
  v_text_b text;
  v_key text;
  v_json_a jsonb;
  v_json_b jsonb;
begin
  if v_na <> v_nb then
    v_out := v_out || format('Step count differs: %s vs %s', v_na, v_nb);
  end if;

  for i in 0 .. greatest(v_na, v_nb) - 1 loop
    v_x := v_a -> i;
    v_y := v_b -> i;
    v_where := format('Step at index %s', i);
    if v_x is null then
      v_out := v_out || format('%s: missing in first shape (second has ''%s'')',
                               v_where, v_y ->> 'slug');
      continue;
    elsif v_y is null then
      v_out := v_out || format('%s: missing in second shape (first has ''%s'')',
                               v_where, v_x ->> 'slug');
      continue;
    end if;

    if (v_x ->> 'slug') is distinct from (v_y ->> 'slug') then
      v_out := v_out || format('%s: slug differs ''%s'' vs ''%s''',
                               v_where, v_x ->> 'slug', v_y ->> 'slug');
    end if;
    if (v_x ->> 'stepType') is distinct from (v_y ->> 'stepType') then
      v_out := v_out || format('%s: type differs ''%s'' vs ''%s''',
                               v_where, v_x ->> 'stepType', v_y ->> 'stepType');
    end if;

    select coalesce(string_agg(dep, ', ' order by dep), '') into v_text_a
      from jsonb_array_elements_text(coalesce(v_x -> 'dependencies', '[]'::jsonb)) as dep;
    select coalesce(string_agg(dep, ', ' order by dep), '') into v_text_b
      from jsonb_array_elements_text(coalesce(v_y -> 'dependencies', '[]'::jsonb)) as dep;
    if v_text_a <> v_text_b then
      v_out := v_out || format('%s: dependencies differ [%s] vs [%s]', v_where, v_text_a, v_text_b);
    end if;

    v_text_a := coalesce(v_x ->> 'whenUnmet', 'skip');
    v_text_b := coalesce(v_y ->> 'whenUnmet', 'skip');
    if v_text_a <> v_text_b then
      v_out := v_out || format('%s: whenUnmet differs ''%s'' vs ''%s''', v_where, v_text_a, v_text_b);
    end if;
    v_text_a := coalesce(v_x ->> 'whenExhausted', 'fail');
    v_text_b := coalesce(v_y ->> 'whenExhausted', 'fail');
    if v_text_a <> v_text_b then
      v_out := v_out || format('%s: whenExhausted differs ''%s'' vs ''%s''',
                               v_where, v_text_a, v_text_b);
    end if;

    foreach v_key in array array['requiredInputPattern', 'forbiddenInputPattern'] loop
      v_json_a := coalesce(v_x -> v_key, '{"defined": false}'::jsonb);
      v_json_b := coalesce(v_y -> v_key, '{"defined": false}'::jsonb);
      if v_json_a <> v_json_b then
        v_out := v_out || format('%s: %s differs ''%s'' vs ''%s''',
                                 v_where, v_key, v_json_a, v_json_b);
      end if;
    end loop;
  end loop;
  return v_out;
end;
$fn$;

-- ---- schema/0200_function__create_flow_from_shape.sql ----

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

-- ---- schema/0200_function__get_flow_shape.sql ----

-- The stored shape of a flow, the JSON pgflow's extractFlowShape builds from code: its steps in
-- order, each with its type, sorted dependencies, condition modes and input patterns. Options
-- are left out: they can be tuned in SQL without changing the shape. An unknown flow has no
-- steps.
create or replace function pgflow._get_flow_shape(p_flow_slug text)
returns jsonb
language sql
stable
set search_path to pg_catalog, pg_temp
as $fn$
  select jsonb_build_object('steps', coalesce(jsonb_agg(
           jsonb_build_object(
             'slug', s.step_slug,
             'stepType', s.step_type,
             'dependencies', coalesce(
               (select jsonb_agg(d.dep_slug order by d.dep_slug)
                  from pgflow.deps as d
                 where d.flow_slug = s.flow_slug and d.step_slug = s.step_slug),
               '[]'::jsonb),
             'whenUnmet', s.when_unmet,
             'whenExhausted', s.when_exhausted,
             'requiredInputPattern', case
               when s.required_input_pattern is null then jsonb_build_object('defined', false)
               else jsonb_build_object('defined', true, 'value', s.required_input_pattern)
             end,
             'forbiddenInputPattern', case
               when s.forbidden_input_pattern is null then jsonb_build_object('defined', false)
               else jsonb_build_object('defined', true, 'value', s.forbidden_input_pattern)
             end)
           order by s.step_index), '[]'::jsonb))
    from pgflow.steps as s
   where s.flow_slug = p_flow_slug
$fn$;

-- ---- schema/0200_function_add_step.sql ----

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
begin
  perform 1 from pgflow.flows as f where f.flow_slug = add_step.flow_slug for update;
  if not found then
    raise exception using
      errcode = 'foreign_key_violation',
      message = format('add_step: flow %s does not exist; create it with pgflow.create_flow first',
                       coalesce(quote_literal(add_step.flow_slug), 'NULL'));
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
      message = format('Map step "%s" can only have zero or one dependency, but %s were provided: '
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
    required_input_pattern, forbidden_input_pattern, when_unmet, when_exhausted)
  values (
    add_step.flow_slug, add_step.step_slug, add_step.step_type,
    (select coalesce(max(x.step_index) + 1, 0) from pgflow.steps as x
      where x.flow_slug = add_step.flow_slug),
    cardinality(v_deps),
    add_step.max_attempts, add_step.base_delay, add_step.timeout, add_step.start_delay,
    add_step.required_input_pattern, add_step.forbidden_input_pattern,
    add_step.when_unmet, add_step.when_exhausted)
  returning * into v_step;

  insert into pgflow.deps (flow_slug, dep_slug, step_slug)
  select add_step.flow_slug, d, add_step.step_slug from unnest(v_deps) as d;

  return v_step;
end;
$fn$;

-- ---- schema/0200_function_create_flow.sql ----

-- Defines a flow (idempotent: an existing flow is returned unchanged) and creates its pgmq queue.
create or replace function pgflow.create_flow(
  flow_slug text,
  max_attempts integer default null,
  base_delay integer default null,
  timeout integer default null
)
returns pgflow.flows
language plpgsql
set search_path to pg_catalog, pg_temp
as $fn$
declare
  v_flow pgflow.flows;
  v_other text;
begin
  if not pgflow.is_valid_slug(create_flow.flow_slug) then
    raise exception using
      errcode = 'check_violation',
      message = format('create_flow: %s is not a valid flow slug',
                       coalesce(quote_literal(create_flow.flow_slug), 'NULL')),
      hint = 'A slug has 1 to 128 letters, digits or underscores, starts with a letter, ends '
             'with a letter or digit, has no "__", and is not "run".';
  end if;
  if length(create_flow.flow_slug) > 47 then
    raise exception using
      errcode = 'check_violation',
      message = format('create_flow: flow slug %L is %s characters long; its pgmq queue name '
                       'is limited to 47', create_flow.flow_slug, length(create_flow.flow_slug));
  end if;
  if create_flow.max_attempts < 0 or create_flow.base_delay < 0 or create_flow.timeout <= 0 then
    raise exception using
      errcode = 'check_violation',
      message = format('create_flow: flow %L needs max_attempts >= 0, base_delay >= 0 and '
                       'timeout > 0 (got %s, %s, %s)', create_flow.flow_slug,
                       create_flow.max_attempts, create_flow.base_delay, create_flow.timeout);
  end if;

  -- pgflow's lock key for everything that defines a flow (ensure_flow_compiled takes it too).
  perform pg_advisory_xact_lock(1, hashtext(lower(create_flow.flow_slug)));

  select f.flow_slug into v_other
    from pgflow.flows as f
   where lower(f.flow_slug) = lower(create_flow.flow_slug)
     and f.flow_slug <> create_flow.flow_slug;
  if found then
    raise exception using
      errcode = 'unique_violation',
      message = format('create_flow: flow %L differs from the existing flow %L only in case; '
                       'flow slugs are unique ignoring case', create_flow.flow_slug, v_other);
  end if;

  insert into pgflow.flows as f (flow_slug, opt_max_attempts, opt_base_delay, opt_timeout)
  values (create_flow.flow_slug,
          coalesce(create_flow.max_attempts, 3),
          coalesce(create_flow.base_delay, 5),
          coalesce(create_flow.timeout, 60))
  on conflict on constraint flows_pkey do nothing;

  if not exists (select 1 from pgmq.meta as m where m.queue_name = create_flow.flow_slug) then
    perform pgmq.create(create_flow.flow_slug);
  end if;

  select * into v_flow from pgflow.flows as f where f.flow_slug = create_flow.flow_slug;
  return v_flow;
end;
$fn$;

-- ---- schema/0200_function_delete_flow_and_data.sql ----

-- Deletes a flow with everything it holds: its tasks, step states and runs, its definition, and
-- its pgmq queue. Destructive by design: ensure_flow_compiled uses it to recompile a changed
-- flow in development. Serialized with the other definition writers of the flow.
create or replace function pgflow.delete_flow_and_data(p_flow_slug text)
returns void
language plpgsql
set search_path to pg_catalog, pg_temp
as $fn$
begin
  perform pg_advisory_xact_lock(1, hashtext(lower(p_flow_slug)));

  delete from pgflow.step_tasks as t where t.flow_slug = p_flow_slug;
  delete from pgflow.step_states as s where s.flow_slug = p_flow_slug;
  delete from pgflow.runs as r where r.flow_slug = p_flow_slug;
  delete from pgflow.deps as d where d.flow_slug = p_flow_slug;
  delete from pgflow.steps as s where s.flow_slug = p_flow_slug;
  delete from pgflow.flows as f where f.flow_slug = p_flow_slug;

  if exists (select 1 from pgmq.meta as m where m.queue_name = p_flow_slug) then
    perform pgmq.drop_queue(p_flow_slug);
  end if;
end;
$fn$;

-- ---- schema/0200_function_ensure_flow_compiled.sql ----

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

-- ---- schema/0200_function_is_local.sql ----

-- Whether the database is a local Supabase development stack, as pgflow decides it: its JWT
-- secret is the Supabase CLI's published default. ensure_flow_compiled recompiles a changed flow
-- only there; anywhere else it is false, so nothing is deleted by mistake.
create or replace function pgflow.is_local()
returns boolean
language sql
stable
parallel safe
set search_path to pg_catalog, pg_temp
as $fn$
  select coalesce(
    current_setting('app.settings.jwt_secret', true)
      = 'super-secret-jwt-token-with-at-least-32-characters-long',
    false)
$fn$;

-- ---- schema/0200_function_setup_requeue_stalled_tasks_cron.sql ----

-- Schedules requeue_stalled_tasks with pg_cron as job 'pgflow_requeue_stalled_tasks' (replacing
-- an earlier one), every cron_interval ('15 seconds', or any pg_cron schedule); returns what it
-- did. Without pg_cron it raises, naming it. pgflow runs this from its migration; pgflow-py does
-- not, since start_tasks already fails expired leases.
create or replace function pgflow.setup_requeue_stalled_tasks_cron(
  cron_interval text default '15 seconds'
)
returns text
language plpgsql
security definer
set search_path to pg_catalog, pg_temp
as $fn$
declare
  v_job_id bigint;
begin
  if to_regprocedure('cron.schedule(text,text,text)') is null then
    raise exception using
      errcode = 'undefined_function',
      message = 'setup_requeue_stalled_tasks_cron needs the pg_cron extension, which is not '
                'installed in this database',
      hint = 'Install pg_cron (create extension pg_cron; on Supabase, enable it under '
             'Database > Extensions), or call pgflow.requeue_stalled_tasks() from another '
             'scheduler.';
  end if;
  if cron_interval is null then
    raise exception using
      errcode = 'invalid_parameter_value',
      message = 'setup_requeue_stalled_tasks_cron: cron_interval cannot be NULL';
  end if;

  execute 'select cron.unschedule(jobid) from cron.job where jobname = $1'
    using 'pgflow_requeue_stalled_tasks';
  begin
    execute 'select cron.schedule($1, $2, $3)'
      into v_job_id
      using 'pgflow_requeue_stalled_tasks', cron_interval, 'select pgflow.requeue_stalled_tasks()';
  exception when invalid_parameter_value then
    raise exception using
      errcode = 'invalid_parameter_value',
      message = format('setup_requeue_stalled_tasks_cron: pg_cron refused the schedule %L (%s); '
                       'the job scheduled before, if any, is kept', cron_interval, sqlerrm),
      hint = 'pg_cron takes intervals such as ''15 seconds'' from version 1.5 on; before, only '
             'cron expressions such as ''* * * * *''.';
  end;
  return format('Scheduled pgflow_requeue_stalled_tasks (every %s, job_id=%s)',
                cron_interval, v_job_id);
end;
$fn$;

-- ---- schema/0200_function_track_worker_function.sql ----

-- Registers a kind of worker (pgflow's Edge Function name) and how it starts: 'http' (started
-- by requests, pgflow's Edge Functions) or 'process' (starts itself, as pgflow-py's workers do).
-- Called by workers on startup; a second call updates start_mode and updated_at.
create or replace function pgflow.track_worker_function(
  function_name text,
  start_mode text default 'http'
)
returns void
language sql
set search_path to pg_catalog, pg_temp
as $fn$
  insert into pgflow.worker_functions as wf (function_name, start_mode, updated_at)
  values (track_worker_function.function_name, track_worker_function.start_mode, clock_timestamp())
  on conflict (function_name) do update
    set start_mode = excluded.start_mode,
        updated_at = excluded.updated_at
$fn$;

-- ---- privileges: nothing for PUBLIC on the new functions ----

revoke all on function pgflow.is_local() from public;
revoke all on function pgflow._get_flow_shape(text) from public;
revoke all on function pgflow._compare_flow_shapes(jsonb, jsonb) from public;
revoke all on function pgflow._create_flow_from_shape(text, jsonb, text) from public;
revoke all on function pgflow.delete_flow_and_data(text) from public;
revoke all on function pgflow.ensure_flow_compiled(text, jsonb, text, jsonb) from public;
revoke all on function pgflow.track_worker_function(text, text) from public;
revoke all on function pgflow.setup_requeue_stalled_tasks_cron(text) from public;
