-- Cascade's databases and the read-only BI role. Safe to run again.
-- Run with psql as the superuser `cascade`, with the psql variables
-- cascade_password and reader_password set (scripts/stack.py sends them on stdin;
-- docker-init.sh passes them with -v inside the container).
\set ON_ERROR_STOP on

ALTER ROLE cascade PASSWORD :'cascade_password';

SELECT 'CREATE DATABASE nessie OWNER cascade'
WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = 'nessie')\gexec
SELECT 'CREATE DATABASE prefect OWNER cascade'
WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = 'prefect')\gexec
SELECT 'CREATE DATABASE marts OWNER cascade'
WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = 'marts')\gexec

SELECT 'CREATE ROLE marts_reader LOGIN'
WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'marts_reader')\gexec
ALTER ROLE marts_reader LOGIN PASSWORD :'reader_password';
REVOKE ALL ON DATABASE nessie, prefect FROM PUBLIC;
GRANT CONNECT ON DATABASE marts TO marts_reader;

\connect marts
-- Schemas and tables that `cascade` (dbt) creates later are readable by marts_reader.
ALTER DEFAULT PRIVILEGES FOR ROLE cascade GRANT USAGE ON SCHEMAS TO marts_reader;
ALTER DEFAULT PRIVILEGES FOR ROLE cascade GRANT SELECT ON TABLES TO marts_reader;
-- ... and so are those that exist already.
DO $$
DECLARE s text;
BEGIN
  FOR s IN SELECT nspname FROM pg_namespace
           WHERE nspname NOT LIKE 'pg\_%' AND nspname <> 'information_schema' LOOP
    EXECUTE format('GRANT USAGE ON SCHEMA %I TO marts_reader', s);
    EXECUTE format('GRANT SELECT ON ALL TABLES IN SCHEMA %I TO marts_reader', s);
  END LOOP;
END $$;
