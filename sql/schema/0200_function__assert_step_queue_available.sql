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
