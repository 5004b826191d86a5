-- Roles the test suite (and .ci/run) needs; idempotent, safe to run concurrently under the
-- harness's advisory lock. Roles are cluster-wide, so they are never dropped.
--   igsales_test_owner: owns the test databases and runs migrations (not a superuser).
--   igsales_test_app:   the app's login role, a member of igsales_app (RLS applies to it).
--   igsales_test_bypass: like the app role but with BYPASSRLS, which the binaries must refuse.
DO $$
BEGIN
  IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'igsales_app') THEN
    CREATE ROLE igsales_app NOLOGIN;
  END IF;
  IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'igsales_resolver') THEN
    CREATE ROLE igsales_resolver NOLOGIN;
  END IF;
  IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'igsales_catalog') THEN
    CREATE ROLE igsales_catalog NOLOGIN;
  END IF;
  IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'igsales_test_owner') THEN
    CREATE ROLE igsales_test_owner LOGIN CREATEROLE CREATEDB;
  END IF;
  IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'igsales_test_app') THEN
    CREATE ROLE igsales_test_app LOGIN IN ROLE igsales_app;
  END IF;
  IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'igsales_test_bypass') THEN
    CREATE ROLE igsales_test_bypass LOGIN BYPASSRLS IN ROLE igsales_app;
  END IF;
END
$$;
