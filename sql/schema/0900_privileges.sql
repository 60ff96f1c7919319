-- Nothing for PUBLIC: grant to your roles explicitly (see the docs). Comes last, so that it
-- covers every table and function above.
revoke all on all tables in schema pgflow from public;
revoke all on all functions in schema pgflow from public;
