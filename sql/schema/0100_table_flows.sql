-- Flow definitions: one row per flow, with the flow-wide defaults of its steps' options.
-- `queue_mode` says where its tasks' messages go: 'flow', one queue named lower(flow_slug) for
-- every step, or 'step', a private queue per step (steps.queue_name), as pgflow 0.17 has them.
create table pgflow.flows (
  flow_slug text primary key,
  opt_max_attempts integer not null default 3,
  opt_base_delay integer not null default 1,
  opt_timeout integer not null default 60,
  created_at timestamptz not null default now(),
  queue_mode text not null default 'flow',
  constraint slug_is_valid check (pgflow.is_valid_slug(flow_slug)),
  constraint opt_max_attempts_is_nonnegative check (opt_max_attempts >= 0),
  constraint opt_base_delay_is_nonnegative check (opt_base_delay >= 0),
  constraint opt_timeout_is_positive check (opt_timeout > 0),
  constraint queue_mode_is_valid check (queue_mode in ('flow', 'step'))
);

-- Slugs are unique ignoring case, as in pgflow 0.17.
create unique index idx_flows_normalized_slug on pgflow.flows (lower(flow_slug));
