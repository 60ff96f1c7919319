-- Step definitions: one row per step of a flow, numbered in the order they were added.
--
-- Conditions: `required_input_pattern` (DSL `if`) and `forbidden_input_pattern` (`if_not`) are
-- jsonb objects checked with `@>` when the step becomes ready, against the run input for a root
-- step and against `{dep_slug: output}` of its completed dependencies otherwise. `when_unmet`
-- says what an unmet condition does ('fail' the step and the run, 'skip' the step,
-- 'skip-cascade' it and everything downstream); `when_exhausted` says the same for a task that
-- ran out of attempts. `queue_name` is the pgmq queue of the step's messages: lower(flow_slug)
-- in queue mode 'flow', the step's private queue in mode 'step'. The columns after `created_at` keep the order they were added in, which
-- is the order of the pgflow.steps row type.
create table pgflow.steps (
  flow_slug text not null references pgflow.flows (flow_slug),
  step_slug text not null,
  step_type text not null default 'single',
  step_index integer not null default 0,
  deps_count integer not null default 0,
  opt_max_attempts integer,
  opt_base_delay integer,
  opt_timeout integer,
  opt_start_delay integer,
  created_at timestamptz not null default now(),
  required_input_pattern jsonb,
  forbidden_input_pattern jsonb,
  when_unmet text not null default 'skip',
  when_exhausted text not null default 'fail',
  queue_name text not null,
  primary key (flow_slug, step_slug),
  unique (flow_slug, step_index),
  constraint steps_step_slug_check check (pgflow.is_valid_slug(step_slug)),
  constraint steps_step_type_check check (step_type in ('single', 'map')),
  constraint steps_deps_count_check check (deps_count >= 0),
  constraint opt_max_attempts_is_nonnegative check (opt_max_attempts is null or opt_max_attempts >= 0),
  constraint opt_base_delay_is_nonnegative check (opt_base_delay is null or opt_base_delay >= 0),
  constraint opt_timeout_is_positive check (opt_timeout is null or opt_timeout > 0),
  constraint opt_start_delay_is_nonnegative check (opt_start_delay is null or opt_start_delay >= 0),
  constraint required_input_pattern_is_object check (
    required_input_pattern is null or jsonb_typeof(required_input_pattern) = 'object'),
  constraint forbidden_input_pattern_is_object check (
    forbidden_input_pattern is null or jsonb_typeof(forbidden_input_pattern) = 'object'),
  constraint when_unmet_is_valid check (when_unmet in ('fail', 'skip', 'skip-cascade')),
  constraint when_exhausted_is_valid check (when_exhausted in ('fail', 'skip', 'skip-cascade')),
  constraint queue_name_is_valid check (pgflow.is_valid_queue_name(queue_name))
);

-- Step slugs are unique in their flow ignoring case, as in pgflow 0.17.
create unique index idx_steps_normalized_slug on pgflow.steps (flow_slug, lower(step_slug));
