#!/bin/sh
# Run by the postgres image on first start (/docker-entrypoint-initdb.d).
set -eu
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \
  -v cascade_password="$POSTGRES_PASSWORD" -v reader_password="$MARTS_READER_PASSWORD" \
  -f /cascade/bootstrap.sql
