# Sourced by .ci/run and scripts/dev: makes sure the local PostgreSQL and Redis answer,
# starting them the way this machine's image installs them when they do not.

pg_host=${PGHOST_FOR_IGSALES:-127.0.0.1}

ensure_postgres() {
  if pg_isready -q -h "$pg_host" -p 5432; then return 0; fi
  echo "starting PostgreSQL" >&2
  if command -v pg_ctlcluster >/dev/null && [ -d /etc/postgresql ]; then
    for version in $(ls /etc/postgresql); do
      pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
    done
  else
    echo "PostgreSQL is not running on $pg_host:5432 and cannot be started here: start it yourself" >&2
    return 1
  fi
  for _ in $(seq 1 60); do
    pg_isready -q -h "$pg_host" -p 5432 && return 0
    sleep 0.5
  done
  echo "PostgreSQL did not come up on $pg_host:5432" >&2
  return 1
}

ensure_redis() {
  if redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then return 0; fi
  echo "starting Redis" >&2
  mkdir -p /var/lib/redis /var/log/redis
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/ci.log
  for _ in $(seq 1 60); do
    redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 && return 0
    sleep 0.5
  done
  echo "Redis did not come up on 127.0.0.1:6379" >&2
  return 1
}

# The roles the tests use (cluster-wide, idempotent). The test harness runs the same file.
ensure_test_roles() {
  psql -h "$pg_host" -U postgres -d postgres -v ON_ERROR_STOP=1 -q -f tests/sql/roles.sql
}

# A new, migrated database `$1` owned by role `$2`, with `$3` as the app's login role.
# Roles are cluster-wide and kept; the database is dropped and created again.
fresh_database() {
  local db=$1 owner=$2 app=$3 worker_bin=$4
  psql -h "$pg_host" -U postgres -d postgres -v ON_ERROR_STOP=1 -q <<SQL
DO \$\$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$owner') THEN
    CREATE ROLE $owner LOGIN CREATEROLE;
  END IF;
END \$\$;
DROP DATABASE IF EXISTS $db WITH (FORCE);
CREATE DATABASE $db OWNER $owner;
SQL
  MIGRATION_DATABASE_URL=postgres://$owner@$pg_host:5432/$db "$worker_bin" migrate >/dev/null
  psql -h "$pg_host" -U postgres -d postgres -v ON_ERROR_STOP=1 -q <<SQL
DO \$\$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$app') THEN
    CREATE ROLE $app LOGIN IN ROLE igsales_app;
  END IF;
END \$\$;
SQL
}
