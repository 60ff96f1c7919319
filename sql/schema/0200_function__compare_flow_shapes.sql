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
