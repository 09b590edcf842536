-- Superset's metadata database and the role that owns it. Safe to run again.
-- Run with psql as the superuser `cascade`, with the psql variable superset_password
-- set (scripts/stack.py sends it on stdin; docker-compose's superset-db job passes -v).
\set ON_ERROR_STOP on

SELECT 'CREATE ROLE superset LOGIN'
WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'superset')\gexec
ALTER ROLE superset LOGIN PASSWORD :'superset_password';

SELECT 'CREATE DATABASE superset OWNER superset'
WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = 'superset')\gexec
-- Only its owner connects: neither marts_reader nor any other role reads Superset's
-- users, saved queries or keys.
REVOKE ALL ON DATABASE superset FROM PUBLIC;
