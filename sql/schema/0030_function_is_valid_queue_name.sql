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
