-- Whether a flow or step slug is valid: 1 to 128 letters, digits or underscores, not starting
-- with a digit, and not 'run'.
create or replace function pgflow.is_valid_slug(slug text)
returns boolean
language sql
immutable
set search_path to pg_catalog, pg_temp
as $fn$
  select slug is not null
     and slug <> ''
     and length(slug) <= 128
     and slug ~ '^[a-zA-Z_][a-zA-Z0-9_]*$'
     and slug <> 'run'
$fn$;
