-- Whether the database is a local Supabase development stack, as pgflow decides it: its JWT
-- secret is the Supabase CLI's published default. ensure_flow_compiled recompiles a changed flow
-- only there; anywhere else it is false, so nothing is deleted by mistake.
create or replace function pgflow.is_local()
returns boolean
language sql
stable
parallel safe
set search_path to pg_catalog, pg_temp
as $fn$
  select coalesce(
    current_setting('app.settings.jwt_secret', true)
      = 'super-secret-jwt-token-with-at-least-32-characters-long',
    false)
$fn$;
