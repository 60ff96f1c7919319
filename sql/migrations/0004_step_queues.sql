-- pgflow-py SQL core, migration 0004: step_queues.
--
-- pgflow 0.17's queue identity and per-step queues: every step and task records its queue
-- (backfilled with lower(flow_slug), the default queue from now on), a message is known by
-- (queue_name, message_id), flows get a queue mode, and start_tasks takes the queue (and the
-- step, in mode 'step'), its three-argument form kept for older workers. Queues of existing
-- flows are not renamed: pgmq finds a mixed-case queue under its lowercase name.
--
-- Started from the schema files below by
--   python -m pgflow_worker._database.derive next step_queues ...
-- A function added here gets EXECUTE for PUBLIC unless this migration revokes it, as
-- sql/schema/0900_privileges.sql does for the schema; the drift test compares the two.

-- ---- schema/0030_function_is_valid_queue_name.sql ----

-- Whether a name can be stored as a pgflow queue: what pgmq accepts (1 to 47 characters, its
-- limit for the table names it derives) in the one lowercase spelling pgflow stores, as in
-- pgflow 0.17.
create or replace function pgflow.is_valid_queue_name(queue_name text)
returns boolean
language sql
immutable
set search_path to pg_catalog, pg_temp
as $fn$
  select queue_name is not null
     and queue_name <> ''
     and length(queue_name) <= 47
     and queue_name = lower(queue_name)
$fn$;

-- ---- tables ----

set local lock_timeout = '10s';

alter table pgflow.flows
  add column queue_mode text not null default 'flow',
  add constraint queue_mode_is_valid check (queue_mode in ('flow', 'step'));

alter table pgflow.steps add column queue_name text;
update pgflow.steps as s set queue_name = lower(s.flow_slug);
alter table pgflow.steps
  alter column queue_name set not null,
  add constraint queue_name_is_valid check (pgflow.is_valid_queue_name(queue_name));

alter table pgflow.step_tasks add column queue_name text;
update pgflow.step_tasks as t set queue_name = lower(t.flow_slug);
alter table pgflow.step_tasks
  alter column queue_name set not null,
  add constraint queue_name_is_valid check (pgflow.is_valid_queue_name(queue_name));
drop index pgflow.idx_step_tasks_message_id;
create unique index idx_step_tasks_queue_message on pgflow.step_tasks (queue_name, message_id)
  where message_id is not null;

-- ---- functions ----

-- ---- schema/0200_function__archive_task_message.sql ----

-- Archives the queue message of one task (no-op when it is already gone).
create or replace function pgflow._archive_task_message(
  p_run_id uuid,
  p_step_slug text,
  p_task_index integer
)
returns void
language plpgsql
set search_path to pg_catalog, pg_temp
as $fn$
declare
  v_queue_name text;
  v_message_id bigint;
begin
  select t.queue_name, t.message_id
    into v_queue_name, v_message_id
    from pgflow.step_tasks as t
   where t.run_id = p_run_id
     and t.step_slug = p_step_slug
     and t.task_index = p_task_index;
  if v_message_id is not null then
    perform pgmq.archive(v_queue_name, v_message_id);
  end if;
end;
$fn$;

-- ---- schema/0200_function__assert_step_queue_available.sql ----

-- Whether a step-mode flow may use a queue, checked before any queue or row is created: true
-- when the queue must be created, false when this flow already owns it. Refuses a queue another
-- flow uses or owns, one pgmq lists under several spellings, one pgmq lists that no flow owns,
-- and one this flow owns that pgmq has lost.
create or replace function pgflow._assert_step_queue_available(
  p_flow_slug text,
  p_queue_name text
)
returns boolean
language plpgsql
set search_path to pg_catalog, pg_temp
as $fn$
declare
  v_owner text;
  v_listed text[];
begin
  select s.flow_slug into v_owner
    from pgflow.steps as s
   where s.queue_name = p_queue_name
     and lower(s.flow_slug) <> lower(p_flow_slug)
   limit 1;
  if not found then
    select f.flow_slug into v_owner
      from pgflow.flows as f
     where f.queue_mode = 'flow'
       and lower(f.flow_slug) = p_queue_name
       and lower(f.flow_slug) <> lower(p_flow_slug)
     limit 1;
  end if;
  if v_owner is not null then
    raise exception using
      errcode = 'unique_violation',
      message = format('flow %L cannot use the queue %L: flow %L uses it', p_flow_slug,
                       p_queue_name, v_owner),
      hint = 'A queue belongs to one flow: rename the flow, or delete the other one.';
  end if;

  select array_agg(q.queue_name order by q.queue_name) into v_listed
    from pgmq.list_queues() as q
   where lower(q.queue_name) = p_queue_name;
  if cardinality(v_listed) > 1 then
    raise exception using
      errcode = 'ambiguous_alias',
      message = format('flow %L cannot use the queue %L: pgmq lists it as %s', p_flow_slug,
                       p_queue_name, array_to_string(v_listed, ', ')),
      hint = 'Drop the queue spellings no flow uses, then retry.';
  end if;

  if exists (select 1 from pgflow.steps as s
              where s.flow_slug = p_flow_slug and s.queue_name = p_queue_name) then
    if v_listed is null then
      raise exception using
        errcode = 'undefined_table',
        message = format('the queue %L of flow %L is missing from pgmq', p_queue_name,
                         p_flow_slug),
        hint = 'It was dropped outside pgflow: recreate it with pgmq.create, or delete the '
               'flow with pgflow.delete_flow_and_data and compile it again.';
    end if;
    return false;
  end if;
  if v_listed is not null then
    raise exception using
      errcode = 'unique_violation',
      message = format('flow %L cannot use the queue %L: pgmq has it already and no flow owns it',
                       p_flow_slug, p_queue_name),
      hint = 'Drop that queue (pgmq.drop_queue) if nothing needs it, or rename the flow.';
  end if;
  return true;
end;
$fn$;

-- ---- schema/0200_function__cancel_run_tasks.sql ----

-- When a run fails, ends every task of it still queued or started as `cancelled` and archives
-- their messages, so nothing is left to cycle through workers. Tasks that already finished
-- (the failed culprit among them) keep their outcome. Returns how many tasks it cancelled.
create or replace function pgflow._cancel_run_tasks(p_run_id uuid)
returns integer
language plpgsql
set search_path to pg_catalog, pg_temp
as $fn$
declare
  v_count integer;
  v_queues text[];
  v_message_ids bigint[];
  v_queue record;
begin
  -- Lock the rows in (queue, message) order first: start_tasks claims one queue's tasks in
  -- message order, so the two never wait for each other in a cycle. (The update alone locks
  -- in whatever order its plan visits the rows.) Task rows are always updated before the
  -- queues' rows are touched; the messages are archived queue by queue.
  perform 1
     from pgflow.step_tasks as t
    where t.run_id = p_run_id
      and t.status in ('queued', 'started')
    order by t.queue_name, t.message_id
      for update;

  with cancelled as (
    update pgflow.step_tasks as t
       set status = 'cancelled'
     where t.run_id = p_run_id
       and t.status in ('queued', 'started')
    returning t.queue_name, t.message_id
  )
  select count(*),
         array_agg(cancelled.queue_name) filter (where cancelled.message_id is not null),
         array_agg(cancelled.message_id) filter (where cancelled.message_id is not null)
    into v_count, v_queues, v_message_ids
    from cancelled;
  for v_queue in
    select m.queue_name, array_agg(m.message_id) as message_ids
      from unnest(v_queues, v_message_ids) as m (queue_name, message_id)
     group by m.queue_name
  loop
    perform pgmq.archive(v_queue.queue_name, v_queue.message_ids);
  end loop;
  return v_count;
end;
$fn$;

-- ---- schema/0200_function__create_flow_from_shape.sql ----

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

-- ---- schema/0200_function__derive_queue_routes.sql ----

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

-- ---- schema/0200_function__listed_queue_name.sql ----

-- The spelling under which pgmq lists a queue, found ignoring case (queues of flows created
-- before pgflow 0.17 may be mixed-case): the name itself when pgmq lists no such queue, and an
-- error when it lists several spellings, which only a hand-made queue can cause.
create or replace function pgflow._listed_queue_name(p_queue_name text)
returns text
language plpgsql
stable
set search_path to pg_catalog, pg_temp
as $fn$
declare
  v_listed text[];
begin
  select array_agg(q.queue_name order by q.queue_name) into v_listed
    from pgmq.list_queues() as q
   where lower(q.queue_name) = lower(p_queue_name);
  if v_listed is null then
    return p_queue_name;
  end if;
  if cardinality(v_listed) > 1 then
    raise exception using
      errcode = 'ambiguous_alias',
      message = format('queue name %L is ambiguous: pgmq lists it as %s', p_queue_name,
                       array_to_string(v_listed, ', ')),
      hint = 'Drop the queue spellings no flow uses, then retry.';
  end if;
  return v_listed[1];
end;
$fn$;

-- ---- schema/0200_function__resolve_step_queue_name.sql ----

-- The private queue of a step in queue mode 'step', as pgflow 0.17 names it: the readable
-- lower(flow_slug || '__' || step_slug) when it fits pgmq's 47 characters, else
-- lower(flow_slug || '__' || step_index). Never truncated nor hashed: a name that cannot fit
-- is an error naming the flow and the step.
create or replace function pgflow._resolve_step_queue_name(
  p_flow_slug text,
  p_step_slug text,
  p_step_index integer
)
returns text
language plpgsql
immutable
set search_path to pg_catalog, pg_temp
as $fn$
declare
  v_readable text := lower(p_flow_slug || '__' || p_step_slug);
  v_by_index text := lower(p_flow_slug || '__' || p_step_index);
  v_shortest text := lower(p_flow_slug || '__0');
begin
  if length(v_readable) <= 47 then
    return v_readable;
  end if;
  if length(v_shortest) > 47 then
    raise exception using
      errcode = 'invalid_parameter_value',
      message = format('flow %L cannot use per-step queues: even its shortest step queue %L '
                       'is %s characters, and pgmq allows 47', p_flow_slug, v_shortest,
                       length(v_shortest)),
      hint = 'Shorten the flow slug (44 characters at most), or keep queue mode ''flow''.';
  end if;
  if length(v_by_index) <= 47 then
    return v_by_index;
  end if;
  raise exception using
    errcode = 'invalid_parameter_value',
    message = format('step %L at index %s of flow %L has no queue name of at most 47 '
                     'characters: %L is %s, %L is %s', p_step_slug, p_step_index, p_flow_slug,
                     v_readable, length(v_readable), v_by_index, length(v_by_index)),
    hint = 'Shorten the flow slug or the step slug, or keep queue mode ''flow''.';
end;
$fn$;

-- ---- schema/0200_function__skip_step.sql ----

-- Marks one created or started step skipped: its unfinished tasks end as `skipped` (messages
-- archived) and the run has one step less to wait for. With p_release_dependents, each
-- dependent has one dependency less to wait for (a dependent map gets no tasks). Returns the
-- skipped row, or NULL when the step was already terminal. Sends no event: callers do, since
-- pgflow's payloads differ by cause.
create or replace function pgflow._skip_step(
  p_run_id uuid,
  p_step_slug text,
  p_skip_reason text,
  p_error_message text,
  p_release_dependents boolean
)
returns pgflow.step_states
language plpgsql
set search_path to pg_catalog, pg_temp
as $fn$
declare
  v_state pgflow.step_states;
  v_queues text[];
  v_message_ids bigint[];
  v_queue record;
begin
  update pgflow.step_states as ss
     set status = 'skipped',
         skip_reason = p_skip_reason,
         skipped_at = now(),
         remaining_tasks = null,
         error_message = coalesce(p_error_message, ss.error_message)
   where ss.run_id = p_run_id
     and ss.step_slug = p_step_slug
     and ss.status in ('created', 'started')
  returning * into v_state;
  if not found then
    return null;
  end if;

  -- Lock the step's rows in message order first, as _cancel_run_tasks does.
  perform 1
     from pgflow.step_tasks as t
    where t.run_id = p_run_id
      and t.step_slug = p_step_slug
      and t.status in ('queued', 'started')
    order by t.queue_name, t.message_id
      for update;

  with ended as (
    update pgflow.step_tasks as t
       set status = 'skipped'
     where t.run_id = p_run_id
       and t.step_slug = p_step_slug
       and t.status in ('queued', 'started')
    returning t.queue_name, t.message_id
  )
  select array_agg(ended.queue_name) filter (where ended.message_id is not null),
         array_agg(ended.message_id) filter (where ended.message_id is not null)
    into v_queues, v_message_ids
    from ended;
  for v_queue in
    select m.queue_name, array_agg(m.message_id) as message_ids
      from unnest(v_queues, v_message_ids) as m (queue_name, message_id)
     group by m.queue_name
  loop
    perform pgmq.archive(v_queue.queue_name, v_queue.message_ids);
  end loop;

  if p_release_dependents then
    -- A map step has exactly one dependency: when it is skipped, there is nothing to map.
    update pgflow.step_states as child
       set remaining_deps = child.remaining_deps - 1,
           initial_tasks = case when cs.step_type = 'map' then 0 else child.initial_tasks end
      from pgflow.deps as d, pgflow.steps as cs
     where d.flow_slug = v_state.flow_slug
       and d.dep_slug = p_step_slug
       and cs.flow_slug = d.flow_slug
       and cs.step_slug = d.step_slug
       and child.run_id = p_run_id
       and child.step_slug = d.step_slug;
  end if;

  update pgflow.runs as r
     set remaining_steps = r.remaining_steps - 1
   where r.run_id = p_run_id;

  return v_state;
end;
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

-- ---- schema/0200_function_create_flow.sql ----

-- Defines a flow (idempotent: an existing flow is returned unchanged) and creates its pgmq queue,
-- named lower(flow_slug) (none for a flow in queue mode 'step'). A queue of that name that no
-- flow owns is refused rather than adopted, as in pgflow 0.17.
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

  if not exists (select 1 from pgflow.flows as f where f.flow_slug = create_flow.flow_slug)
     and exists (select 1 from pgmq.list_queues() as q
                  where lower(q.queue_name) = lower(create_flow.flow_slug)) then
    raise exception using
      errcode = 'unique_violation',
      message = format('create_flow: cannot create flow %L: the queue %L exists already and no '
                       'flow owns it', create_flow.flow_slug, lower(create_flow.flow_slug)),
      hint = 'Drop that queue (pgmq.drop_queue) if nothing needs it, or choose another slug.';
  end if;

  insert into pgflow.flows as f (flow_slug, opt_max_attempts, opt_base_delay, opt_timeout)
  values (create_flow.flow_slug,
          coalesce(create_flow.max_attempts, 3),
          coalesce(create_flow.base_delay, 5),
          coalesce(create_flow.timeout, 60))
  on conflict on constraint flows_pkey do nothing;

  select * into v_flow from pgflow.flows as f where f.flow_slug = create_flow.flow_slug;
  if v_flow.queue_mode = 'flow'
     and not exists (select 1 from pgmq.list_queues() as q
                      where lower(q.queue_name) = lower(create_flow.flow_slug)) then
    perform pgmq.create(lower(create_flow.flow_slug));
  end if;
  return v_flow;
end;
$fn$;

-- ---- schema/0200_function_delete_flow_and_data.sql ----

-- Deletes a flow with everything it holds: its tasks, step states and runs, its definition, and
-- its pgmq queues (every step's queue, and in queue mode 'flow' the flow's). Destructive by design: ensure_flow_compiled uses it to recompile a changed
-- flow in development. Serialized with the other definition writers of the flow.
create or replace function pgflow.delete_flow_and_data(p_flow_slug text)
returns void
language plpgsql
set search_path to pg_catalog, pg_temp
as $fn$
declare
  v_mode text;
begin
  perform pg_advisory_xact_lock(1, hashtext(lower(p_flow_slug)));

  -- Only a flow of exactly this slug has queues to drop.
  select f.queue_mode into v_mode from pgflow.flows as f where f.flow_slug = p_flow_slug;
  if v_mode is not null then
    perform pgmq.drop_queue(pgflow._listed_queue_name(q.queue_name))
       from (select s.queue_name from pgflow.steps as s where s.flow_slug = p_flow_slug
             union
             select lower(p_flow_slug) where v_mode = 'flow') as q
      where exists (select 1 from pgmq.list_queues() as l
                     where lower(l.queue_name) = q.queue_name);
  end if;

  delete from pgflow.step_tasks as t where t.flow_slug = p_flow_slug;
  delete from pgflow.step_states as s where s.flow_slug = p_flow_slug;
  delete from pgflow.runs as r where r.flow_slug = p_flow_slug;
  delete from pgflow.deps as d where d.flow_slug = p_flow_slug;
  delete from pgflow.steps as s where s.flow_slug = p_flow_slug;
  delete from pgflow.flows as f where f.flow_slug = p_flow_slug;
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

-- ---- schema/0200_function_fail_task.sql ----

-- Records a task's failure: a retry while attempts are left, else what the step's
-- when_exhausted says (fail the step and the run, or skip the step). A late or duplicate
-- report (the run or the step already ended, or the task is not `started`) changes nothing and
-- returns the task row as it is.
create or replace function pgflow.fail_task(
  run_id uuid,
  step_slug text,
  task_index integer,
  error_message text
)
returns setof pgflow.step_tasks
language plpgsql
set search_path to pg_catalog, pg_temp
as $fn$
declare
  v_run pgflow.runs;
  v_state pgflow.step_states;
  v_task pgflow.step_tasks;
  v_max_attempts integer;
  v_base_delay integer;
  v_when_exhausted text;
begin
  select * into v_run from pgflow.runs as r where r.run_id = fail_task.run_id for update;
  if not found then
    raise exception using
      errcode = 'no_data_found',
      message = format('fail_task: run %s does not exist', fail_task.run_id);
  end if;

  select * into v_task
    from pgflow.step_tasks as t
   where t.run_id = fail_task.run_id
     and t.step_slug = fail_task.step_slug
     and t.task_index = fail_task.task_index;
  if not found then
    raise exception using
      errcode = 'no_data_found',
      message = format('fail_task: run %s of flow %L has no task %s[%s]',
                       fail_task.run_id, v_run.flow_slug, fail_task.step_slug,
                       fail_task.task_index);
  end if;

  -- Late failure on a run that already ended: the task keeps the status the run's end gave
  -- it (`cancelled` when the run failed); its message is archived if still there.
  if v_run.status <> 'started' then
    perform pgflow._archive_task_message(fail_task.run_id, fail_task.step_slug,
                                         fail_task.task_index);
    return next v_task;
    return;
  end if;

  -- Late failure on a step that ended meanwhile (e.g. skipped): nothing changes but the
  -- message is archived.
  select * into v_state
    from pgflow.step_states as ss
   where ss.run_id = fail_task.run_id and ss.step_slug = fail_task.step_slug
     for update;
  if v_state.status <> 'started' then
    perform pgflow._archive_task_message(fail_task.run_id, fail_task.step_slug,
                                         fail_task.task_index);
    return next v_task;
    return;
  end if;

  select * into v_task
    from pgflow.step_tasks as t
   where t.run_id = fail_task.run_id
     and t.step_slug = fail_task.step_slug
     and t.task_index = fail_task.task_index
     for update;
  -- Not claimed (still queued, e.g. waiting for a retry) or already finished: a duplicate or
  -- stale report, ignored. The message stays: a queued task still needs it.
  if v_task.status <> 'started' then
    return next v_task;
    return;
  end if;

  select coalesce(s.opt_max_attempts, f.opt_max_attempts),
         coalesce(s.opt_base_delay, f.opt_base_delay),
         s.when_exhausted
    into v_max_attempts, v_base_delay, v_when_exhausted
    from pgflow.steps as s
    join pgflow.flows as f on f.flow_slug = s.flow_slug
   where s.flow_slug = v_run.flow_slug and s.step_slug = fail_task.step_slug;

  if v_task.attempts_count < v_max_attempts then
    -- Retry: back to the queue, invisible for an exponentially growing delay. No event.
    update pgflow.step_tasks as t
       set status = 'queued', started_at = null, error_message = fail_task.error_message
     where t.run_id = fail_task.run_id
       and t.step_slug = fail_task.step_slug
       and t.task_index = fail_task.task_index
    returning * into v_task;
    if v_task.message_id is not null then
      perform pgmq.set_vt(v_task.queue_name, v_task.message_id,
                          pgflow.calculate_retry_delay(v_base_delay, v_task.attempts_count));
    end if;
    return next v_task;
    return;
  end if;

  -- Out of attempts: the task fails; what happens to its step depends on when_exhausted.
  update pgflow.step_tasks as t
     set status = 'failed', failed_at = now(), error_message = fail_task.error_message
   where t.run_id = fail_task.run_id
     and t.step_slug = fail_task.step_slug
     and t.task_index = fail_task.task_index
  returning * into v_task;
  perform pgflow._archive_task_message(fail_task.run_id, fail_task.step_slug,
                                       fail_task.task_index);

  if v_when_exhausted in ('skip', 'skip-cascade') then
    -- The step is skipped (its other tasks with it) and the run goes on without it.
    v_state := pgflow._skip_step(fail_task.run_id, fail_task.step_slug, 'handler_failed',
                                 fail_task.error_message, v_when_exhausted = 'skip');
    perform realtime.send(
      jsonb_build_object(
        'event_type', 'step:skipped',
        'run_id', fail_task.run_id,
        'step_slug', fail_task.step_slug,
        'status', 'skipped',
        'skip_reason', 'handler_failed',
        'error_message', fail_task.error_message,
        'skipped_at', v_state.skipped_at),
      'step:' || fail_task.step_slug || ':skipped',
      'pgflow:run:' || fail_task.run_id,
      false);
    if v_when_exhausted = 'skip-cascade' then
      perform pgflow._cascade_force_skip_steps(fail_task.run_id, fail_task.step_slug,
                                               'handler_failed');
      perform pgflow.maybe_complete_run(fail_task.run_id);
    elsif pgflow.cascade_resolve_conditions(fail_task.run_id) then
      perform pgflow.cascade_complete_taskless_steps(fail_task.run_id);
      perform pgflow.start_ready_steps(fail_task.run_id);
      perform pgflow.maybe_complete_run(fail_task.run_id);
    end if;
    return next v_task;
    return;
  end if;

  update pgflow.step_states as ss
     set status = 'failed', failed_at = now(), error_message = fail_task.error_message
   where ss.run_id = fail_task.run_id and ss.step_slug = fail_task.step_slug;
  perform realtime.send(
    jsonb_build_object(
      'event_type', 'step:failed',
      'run_id', fail_task.run_id,
      'step_slug', fail_task.step_slug,
      'status', 'failed',
      'error_message', fail_task.error_message,
      'failed_at', now()),
    'step:' || fail_task.step_slug || ':failed',
    'pgflow:run:' || fail_task.run_id,
    false);

  update pgflow.runs as r
     set status = 'failed', failed_at = now()
   where r.run_id = fail_task.run_id;
  perform realtime.send(
    jsonb_build_object(
      'event_type', 'run:failed',
      'run_id', fail_task.run_id,
      'flow_slug', v_run.flow_slug,
      'status', 'failed',
      'error_message', fail_task.error_message,
      'failed_at', now()),
    'run:failed',
    'pgflow:run:' || fail_task.run_id,
    false);

  perform pgflow._cancel_run_tasks(fail_task.run_id);

  return next v_task;
end;
$fn$;

-- ---- schema/0200_function_prune_data_older_than.sql ----

-- Deletes what is older than the retention interval: runs that completed or failed before
-- it (with their step states, tasks, leftover queue messages and, where the realtime schema
-- is pgflow-py's stand-in, their broadcast rows), archived messages of the flows' queues,
-- and worker rows that stopped heartbeating before it. Runs still going are never touched.
-- Schedule it (pg_cron, or any scheduler), e.g. select pgflow.prune_data_older_than('28 days').
create or replace function pgflow.prune_data_older_than(retention_interval interval)
returns void
language plpgsql
set search_path to pg_catalog, pg_temp
as $fn$
declare
  v_cutoff timestamptz;
  v_runs uuid[];
  v_queue record;
begin
  if retention_interval is null or retention_interval < interval '0' then
    raise exception using
      errcode = 'invalid_parameter_value',
      message = format('prune_data_older_than: the retention interval must be zero or more '
                       '(got %s)', coalesce(retention_interval::text, 'NULL'));
  end if;
  v_cutoff := now() - retention_interval;

  -- The runs are chosen once: a run finishing while this runs is kept whole.
  select coalesce(array_agg(r.run_id), '{}') into v_runs
    from pgflow.runs as r
   where (r.status = 'completed' and r.completed_at < v_cutoff)
      or (r.status = 'failed' and r.failed_at < v_cutoff);

  if cardinality(v_runs) > 0 then
    -- Normally every message of a finished run is archived already; delete any left over,
    -- so that no message outlives its task.
    for v_queue in
      select t.queue_name, array_agg(t.message_id) as message_ids
        from pgflow.step_tasks as t
       where t.run_id = any (v_runs)
         and t.message_id is not null
         and exists (select 1 from pgmq.meta as m where lower(m.queue_name) = t.queue_name)
       group by t.queue_name
    loop
      perform pgmq.delete(v_queue.queue_name, v_queue.message_ids);
    end loop;

    -- Supabase's Realtime server owns and expires its own messages table: leave it alone.
    if to_regclass('realtime.messages') is not null
       and coalesce(obj_description(to_regprocedure('realtime.send(jsonb,text,text,boolean)'),
                                    'pg_proc'), '') like '%pgflow-py realtime stand-in%' then
      execute 'delete from realtime.messages where topic = any ($1)'
        using array(select 'pgflow:run:' || x from unnest(v_runs) as x);
    end if;

    delete from pgflow.step_tasks as t where t.run_id = any (v_runs);
    delete from pgflow.step_states as ss where ss.run_id = any (v_runs);
    delete from pgflow.runs as r where r.run_id = any (v_runs);
  end if;

  for v_queue in
    select distinct s.queue_name
      from pgflow.steps as s
     where exists (select 1 from pgmq.meta as m where lower(m.queue_name) = s.queue_name)
    union
    select lower(f.flow_slug)
      from pgflow.flows as f
     where f.queue_mode = 'flow'
       and exists (select 1 from pgmq.meta as m where lower(m.queue_name) = lower(f.flow_slug))
  loop
    execute format('delete from pgmq.%I where archived_at < $1',
                   pgmq.format_table_name(v_queue.queue_name, 'a'))
      using v_cutoff;
  end loop;

  delete from pgflow.workers as w where w.last_heartbeat_at < v_cutoff;
end;
$fn$;

-- ---- schema/0200_function_requeue_stalled_tasks.sql ----

-- Gives back tasks whose worker stopped answering: a task `started` longer than its step's
-- effective timeout + 30 s, in a run and a step both still `started`, goes back to the queue
-- (no worker), at most 3 times; after that it is marked permanently stalled and its message
-- archived. Returns how many tasks were requeued.
create or replace function pgflow.requeue_stalled_tasks()
returns integer
language plpgsql
set search_path to pg_catalog, pg_temp
as $fn$
declare
  v_task record;
  v_requeued integer := 0;
begin
  for v_task in
    select t.run_id, t.step_slug, t.task_index, t.queue_name, t.message_id, t.requeued_count
      from pgflow.step_tasks as t
      join pgflow.runs as r on r.run_id = t.run_id
      join pgflow.step_states as ss on ss.run_id = t.run_id and ss.step_slug = t.step_slug
      join pgflow.steps as s on s.flow_slug = t.flow_slug and s.step_slug = t.step_slug
      join pgflow.flows as f on f.flow_slug = t.flow_slug
     where t.status = 'started'
       and t.permanently_stalled_at is null
       and r.status = 'started'
       and ss.status = 'started'
       and t.started_at
           < now() - make_interval(secs => coalesce(s.opt_timeout, f.opt_timeout) + 30)
     order by t.started_at
       for update of t skip locked
  loop
    if v_task.requeued_count < 3 then
      update pgflow.step_tasks as t
         set status = 'queued',
             started_at = null,
             last_worker_id = null,
             requeued_count = t.requeued_count + 1,
             last_requeued_at = now()
       where t.run_id = v_task.run_id
         and t.step_slug = v_task.step_slug
         and t.task_index = v_task.task_index;
      if v_task.message_id is not null then
        perform pgmq.set_vt(v_task.queue_name, v_task.message_id, 0);
      end if;
      v_requeued := v_requeued + 1;
    else
      update pgflow.step_tasks as t
         set permanently_stalled_at = now()
       where t.run_id = v_task.run_id
         and t.step_slug = v_task.step_slug
         and t.task_index = v_task.task_index;
      if v_task.message_id is not null then
        perform pgmq.archive(v_task.queue_name, v_task.message_id);
      end if;
    end if;
  end loop;
  return v_requeued;
end;
$fn$;

-- ---- schema/0200_function_start_ready_steps.sql ----

-- Starts every created step whose dependencies are done and whose task count is known and
-- positive: one queue message per task, sent to the step's queue with the step's start delay.
create or replace function pgflow.start_ready_steps(run_id uuid)
returns void
language plpgsql
set search_path to pg_catalog, pg_temp
as $fn$
declare
  v_flow_slug text;
  v_step record;
begin
  select r.flow_slug into v_flow_slug
    from pgflow.runs as r
   where r.run_id = start_ready_steps.run_id and r.status = 'started';
  if not found then
    return;
  end if;

  for v_step in
    select ss.step_slug, ss.initial_tasks, st.opt_start_delay, st.queue_name
      from pgflow.step_states as ss
      join pgflow.steps as st
        on st.flow_slug = ss.flow_slug and st.step_slug = ss.step_slug
     where ss.run_id = start_ready_steps.run_id
       and ss.status = 'created'
       and ss.remaining_deps = 0
       and ss.initial_tasks > 0
     order by st.step_index
  loop
    update pgflow.step_states as ss
       set status = 'started',
           started_at = now(),
           remaining_tasks = ss.initial_tasks
     where ss.run_id = start_ready_steps.run_id
       and ss.step_slug = v_step.step_slug;

    perform realtime.send(
      jsonb_build_object(
        'event_type', 'step:started',
        'run_id', start_ready_steps.run_id,
        'step_slug', v_step.step_slug,
        'status', 'started',
        'started_at', now(),
        'remaining_tasks', v_step.initial_tasks,
        'remaining_deps', 0),
      'step:' || v_step.step_slug || ':started',
      'pgflow:run:' || start_ready_steps.run_id,
      false);

    -- Message ids come from one sequence in insertion order, so the k-th smallest id
    -- belongs to task k.
    insert into pgflow.step_tasks (flow_slug, run_id, step_slug, task_index, message_id,
                                   queue_name)
    select v_flow_slug, start_ready_steps.run_id, v_step.step_slug,
           (row_number() over (order by sent.msg_id) - 1)::integer, sent.msg_id,
           v_step.queue_name
      from pgmq.send_batch(
             v_step.queue_name,
             array(
               select jsonb_build_object(
                        'flow_slug', v_flow_slug,
                        'run_id', start_ready_steps.run_id,
                        'step_slug', v_step.step_slug,
                        'task_index', i)
                 from generate_series(0, v_step.initial_tasks - 1) as i
                order by i),
             coalesce(v_step.opt_start_delay, 0)) as sent (msg_id);
  end loop;
end;
$fn$;

-- ---- schema/0200_function_start_tasks.sql ----

-- Phase two of polling: claims the queued tasks behind the messages a worker has read and
-- returns what their handlers need: only the tasks it moved from `queued` to `started`, each
-- message hidden for its step's timeout + 2 s. A message whose task is still `started` after
-- that time means the lease expired (the worker vanished or the handler hung): that attempt is
-- failed through fail_task, which retries it with backoff or fails the step. Any other message
-- (its task finished, skipped, cancelled, or not found) claims nothing.
-- The messages are those of one queue: queue_name, the flow's (lower(flow_slug)) in queue mode
-- 'flow', or in mode 'step' the queue of step_slug, which must then be given (pgflow 0.17).
create or replace function pgflow.start_tasks(
  flow_slug text,
  msg_ids bigint[],
  worker_id uuid,
  queue_name text,
  step_slug text default null
)
returns setof pgflow.step_task_record
language plpgsql
set search_path to pg_catalog, pg_temp
as $fn$
declare
  v_msg_id bigint;
  v_task pgflow.step_tasks;
  v_tasks pgflow.step_tasks[] := '{}';
  v_step pgflow.steps;
  v_timeout integer;
  v_source_of text;
  v_source jsonb;
  v_flow_input jsonb;
  v_record pgflow.step_task_record;
  v_claimed_ids bigint[] := '{}';
  v_offsets integer[] := '{}';
  v_extended integer;
  v_mode text;
begin
  select f.queue_mode into v_mode from pgflow.flows as f where f.flow_slug = start_tasks.flow_slug;
  if not found then
    return;  -- an unknown flow has nothing to claim
  end if;
  if v_mode = 'step' then
    if start_tasks.step_slug is null then
      raise exception using
        errcode = 'invalid_parameter_value',
        message = format('start_tasks: flow %L has a queue per step: name the step whose queue '
                         '%L was read (step_slug)', start_tasks.flow_slug, start_tasks.queue_name);
    end if;
    if not exists (select 1 from pgflow.steps as s
                    where s.flow_slug = start_tasks.flow_slug
                      and s.step_slug = start_tasks.step_slug
                      and s.queue_name = start_tasks.queue_name) then
      raise exception using
        errcode = 'invalid_parameter_value',
        message = format('start_tasks: step %L of flow %L does not use the queue %L',
                         start_tasks.step_slug, start_tasks.flow_slug, start_tasks.queue_name),
        hint = 'Read the queue stored for the step in pgflow.steps.queue_name.';
    end if;
  elsif start_tasks.step_slug is not null then
    raise exception using
      errcode = 'invalid_parameter_value',
      message = format('start_tasks: flow %L has one queue for all its steps: step_slug %L '
                       'cannot be given', start_tasks.flow_slug, start_tasks.step_slug);
  end if;

  -- One index probe per message id. (A set-based lookup is at the planner's mercy: on tables
  -- without fresh statistics it can scan every task of a big map on each call.)
  foreach v_msg_id in array array(
    select distinct m.id from unnest(start_tasks.msg_ids) as m (id) where m.id is not null
     order by m.id)
  loop
    select * into v_task
      from pgflow.step_tasks as t
     where t.queue_name = start_tasks.queue_name and t.message_id = v_msg_id;
    -- A message of another flow or step claims nothing.
    if found and v_task.flow_slug = start_tasks.flow_slug
       and (start_tasks.step_slug is null or v_task.step_slug = start_tasks.step_slug) then
      v_tasks := v_tasks || v_task;
    end if;
  end loop;

  -- Expired leases first, so a run failed by one of them has no task handed out below.
  foreach v_task in array v_tasks loop
    continue when v_task.status <> 'started';
    select coalesce(s.opt_timeout, f.opt_timeout) into v_timeout
      from pgflow.steps as s
      join pgflow.flows as f on f.flow_slug = s.flow_slug
     where s.flow_slug = v_task.flow_slug and s.step_slug = v_task.step_slug;
    continue when v_task.started_at > clock_timestamp() - make_interval(secs => v_timeout + 2)
      or not exists (select 1 from pgflow.runs as r
                      where r.run_id = v_task.run_id and r.status = 'started');
    -- A task its worker finished meanwhile is left as it is by fail_task.
    perform pgflow.fail_task(
      v_task.run_id, v_task.step_slug, v_task.task_index,
      format('Task lease expired: no result within %s s of its start (the worker stopped '
             'or the handler hung)', v_timeout + 2));
  end loop;

  -- Claim the queued ones (a failed attempt above is queued again but waits for its backoff).
  foreach v_task in array v_tasks loop
    continue when v_task.status <> 'queued';
    update pgflow.step_tasks as t
       set status = 'started',
           started_at = now(),
           attempts_count = t.attempts_count + 1,
           last_worker_id = start_tasks.worker_id
     where t.run_id = v_task.run_id
       and t.step_slug = v_task.step_slug
       and t.task_index = v_task.task_index
       and t.status = 'queued'
       and exists (select 1 from pgflow.runs as r
                    where r.run_id = t.run_id and r.status = 'started')
       and exists (select 1 from pgflow.step_states as ss
                    where ss.run_id = t.run_id and ss.step_slug = t.step_slug
                      and ss.status = 'started')
    returning * into v_task;
    continue when not found;

    -- What the step's tasks read, loaded once per run and step of this batch.
    if v_source_of is distinct from v_task.run_id::text || '/' || v_task.step_slug then
      v_source_of := v_task.run_id::text || '/' || v_task.step_slug;
      v_flow_input := null;
      select * into v_step
        from pgflow.steps as s
       where s.flow_slug = v_task.flow_slug and s.step_slug = v_task.step_slug;
      select coalesce(v_step.opt_timeout, f.opt_timeout) into v_timeout
        from pgflow.flows as f where f.flow_slug = v_task.flow_slug;
      if v_step.step_type = 'single' then
        select coalesce(jsonb_object_agg(d.dep_slug, ps.output), '{}'::jsonb) into v_source
          from pgflow.deps as d
          join pgflow.step_states as ps on ps.run_id = v_task.run_id and ps.step_slug = d.dep_slug
         where d.flow_slug = v_task.flow_slug
           and d.step_slug = v_task.step_slug
           and ps.status = 'completed';
        if v_step.deps_count = 0 then
          select r.input into v_flow_input from pgflow.runs as r where r.run_id = v_task.run_id;
        end if;
      else
        if v_step.deps_count = 0 then
          select r.input into v_source from pgflow.runs as r where r.run_id = v_task.run_id;
        else
          select ps.output into v_source
            from pgflow.deps as d
            join pgflow.step_states as ps
              on ps.run_id = v_task.run_id and ps.step_slug = d.dep_slug
           where d.flow_slug = v_task.flow_slug and d.step_slug = v_task.step_slug;
        end if;
        -- A big array is stored compressed and each `->` below would decompress all of it
        -- again; appending nothing gives the same array, decompressed once for this call.
        v_source := v_source || '[]'::jsonb;
      end if;
    end if;

    v_claimed_ids := v_claimed_ids || v_task.message_id;
    v_offsets := v_offsets || (v_timeout + 2);
    v_record := row(
      v_task.flow_slug,
      v_task.run_id,
      v_task.step_slug,
      case when v_step.step_type = 'map' then v_source -> v_task.task_index else v_source end,
      v_task.message_id,
      v_task.task_index,
      v_flow_input)::pgflow.step_task_record;
    return next v_record;
  end loop;

  -- Every claimed message must be hidden for its task's run time, or another worker would
  -- read it again meanwhile: a message gone from the queue undoes the whole claim (SQLSTATE
  -- 22P02, as pgflow's).
  select count(*) into v_extended
    from pgflow.set_vt_batch(start_tasks.queue_name, v_claimed_ids, v_offsets);
  if v_extended <> cardinality(v_claimed_ids) then
    raise exception using
      errcode = 'invalid_text_representation',
      message = format('start_tasks(): visibility updated %s of %s claimed messages',
                       v_extended, cardinality(v_claimed_ids)),
      detail = format('Claimed messages of queue %L: %s. A message of a queued task was deleted '
                      'or archived outside pgflow; nothing was claimed.',
                      start_tasks.queue_name, v_claimed_ids);
  end if;
end;
$fn$;

-- The three-argument form of pgflow up to 0.16 (and of @pgflow/core 0.8.1's workers): claims from
-- the flow's queue, lower(flow_slug), of a flow in queue mode 'flow'.
create or replace function pgflow.start_tasks(flow_slug text, msg_ids bigint[], worker_id uuid)
returns setof pgflow.step_task_record
language sql
set search_path to pg_catalog, pg_temp
as $fn$
  select * from pgflow.start_tasks(start_tasks.flow_slug, start_tasks.msg_ids,
                                   start_tasks.worker_id, lower(start_tasks.flow_slug))
$fn$;

-- ---- privileges of the new functions ----

revoke all on function pgflow.is_valid_queue_name(text) from public;
revoke all on function pgflow._listed_queue_name(text) from public;
revoke all on function pgflow._resolve_step_queue_name(text, text, integer) from public;
revoke all on function pgflow._derive_queue_routes(text, jsonb, text) from public;
revoke all on function pgflow._assert_step_queue_available(text, text) from public;
revoke all on function pgflow.start_tasks(text, bigint[], uuid, text, text) from public;
