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
