-- The pgflow schema; PUBLIC gets no privilege on it, nor on anything in it (0900_privileges.sql
-- revokes EXECUTE, which PostgreSQL gives PUBLIC on every new function, once everything exists).
create schema if not exists pgflow;
revoke all on schema pgflow from public;
