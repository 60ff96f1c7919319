-- Whether a flow or step slug is valid: 1 to 128 letters, digits or underscores, starting with
-- a letter and ending with a letter or digit, with no '__' (pgflow 0.17 keeps it free for the
-- names of per-step queues), and not 'run'.
create or replace function pgflow.is_valid_slug(slug text)
returns boolean
language sql
immutable
set search_path to pg_catalog, pg_temp
as $fn$
  select slug is not null
     and length(slug) between 1 and 128
     and slug ~ '^[a-zA-Z]([a-zA-Z0-9_]*[a-zA-Z0-9])?$'
     and strpos(slug, '__') = 0
     and slug <> 'run'
$fn$;
