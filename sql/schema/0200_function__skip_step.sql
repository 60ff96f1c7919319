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
