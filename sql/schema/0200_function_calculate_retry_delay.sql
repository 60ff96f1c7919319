-- Seconds to keep a failed task's message invisible before its next attempt.
create or replace function pgflow.calculate_retry_delay(base_delay numeric, attempts_count integer)
returns integer
language sql
immutable
set search_path to pg_catalog, pg_temp
as $fn$
  select least(floor(base_delay * power(2::numeric, attempts_count)), 2147483647)::integer
$fn$;
