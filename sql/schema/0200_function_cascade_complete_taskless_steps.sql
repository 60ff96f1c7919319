-- Completes, level by level, every ready step that has no tasks (empty maps, maps fed by an
-- empty array or by a skipped step), so an empty array cascades through a chain in one
-- transaction. The conditions of the steps each level makes ready are resolved before the
-- next level; the cascade stops when one of them fails the run.
create or replace function pgflow.cascade_complete_taskless_steps(run_id uuid)
returns integer
language plpgsql
set search_path to pg_catalog, pg_temp
as $fn$
declare
  v_total integer := 0;
  v_level text[];
  v_state record;
begin
  if not exists (
    select 1 from pgflow.runs as r
     where r.run_id = cascade_complete_taskless_steps.run_id and r.status = 'started') then
    return 0;
  end if;

  loop
    v_level := '{}';
    for v_state in
      select ss.step_slug, st.step_type
        from pgflow.step_states as ss
        join pgflow.steps as st
          on st.flow_slug = ss.flow_slug and st.step_slug = ss.step_slug
       where ss.run_id = cascade_complete_taskless_steps.run_id
         and ss.status = 'created'
         and ss.remaining_deps = 0
         and ss.initial_tasks = 0
       order by st.step_index
    loop
      update pgflow.step_states as ss
         set status = 'completed',
             started_at = now(),
             completed_at = now(),
             remaining_tasks = 0,
             output = case when v_state.step_type = 'map' then '[]'::jsonb end
       where ss.run_id = cascade_complete_taskless_steps.run_id
         and ss.step_slug = v_state.step_slug;

      perform realtime.send(
        jsonb_build_object(
          'event_type', 'step:completed',
          'run_id', cascade_complete_taskless_steps.run_id,
          'step_slug', v_state.step_slug,
          'status', 'completed',
          'started_at', now(),
          'completed_at', now(),
          'remaining_tasks', 0,
          'remaining_deps', 0,
          'output', case when v_state.step_type = 'map' then '[]'::jsonb else 'null'::jsonb end),
        'step:' || v_state.step_slug || ':completed',
        'pgflow:run:' || cascade_complete_taskless_steps.run_id,
        false);

      v_level := v_level || v_state.step_slug;
    end loop;

    exit when cardinality(v_level) = 0;
    v_total := v_total + cardinality(v_level);

    -- Children lose one pending dependency per completed parent; a map child of an empty
    -- parent learns it has no tasks either.
    update pgflow.step_states as child
       set remaining_deps = child.remaining_deps - parents.n,
           initial_tasks = case
             when cs.step_type = 'map' and child.initial_tasks is null then 0
             else child.initial_tasks
           end
      from (
        select d.step_slug, count(*)::integer as n
          from pgflow.deps as d
          join pgflow.runs as r on r.flow_slug = d.flow_slug
         where r.run_id = cascade_complete_taskless_steps.run_id
           and d.dep_slug = any (v_level)
         group by d.step_slug
      ) as parents,
      pgflow.steps as cs
     where child.run_id = cascade_complete_taskless_steps.run_id
       and child.step_slug = parents.step_slug
       and cs.flow_slug = child.flow_slug
       and cs.step_slug = child.step_slug;

    update pgflow.runs as r
       set remaining_steps = r.remaining_steps - cardinality(v_level)
     where r.run_id = cascade_complete_taskless_steps.run_id;

    exit when not pgflow.cascade_resolve_conditions(cascade_complete_taskless_steps.run_id);
  end loop;

  return v_total;
end;
$fn$;
