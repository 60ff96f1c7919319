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
