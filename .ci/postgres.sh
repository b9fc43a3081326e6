# Sourced by .ci/run: a throwaway PostgreSQL server on 127.0.0.1 for the multi-worker tests.
# Installs Debian's postgresql when missing, runs initdb in a temp folder as the postgres user, starts the server
# on 127.0.0.1:54329, creates database facenas and exports FACENAS_TEST_POSTGRES. `pg_stop` stops it.

pg_start() {
  if ! ls -d /usr/lib/postgresql/*/bin >/dev/null 2>&1; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
  fi
  PG_BIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
  PG_DATA=$(mktemp -d /tmp/facenas-pg.XXXXXX)
  chown postgres "$PG_DATA"
  su postgres -s /bin/sh -c "$PG_BIN/initdb -D $PG_DATA -U postgres --auth=trust -E UTF8" >/dev/null
  su postgres -s /bin/sh -c "$PG_BIN/pg_ctl -D $PG_DATA -o '-h 127.0.0.1 -p 54329 -k /tmp' -l $PG_DATA/log start -w" >/dev/null
  "$PG_BIN/createdb" -h 127.0.0.1 -p 54329 -U postgres facenas
  export FACENAS_TEST_POSTGRES="postgresql+psycopg://postgres@127.0.0.1:54329/facenas"
  echo "PostgreSQL $("$PG_BIN/postgres" --version | awk '{print $3}') running on 127.0.0.1:54329 ($PG_DATA)"
}

pg_stop() {
  if [ -n "${PG_DATA:-}" ]; then
    su postgres -s /bin/sh -c "$PG_BIN/pg_ctl -D $PG_DATA stop -m fast" >/dev/null 2>&1 || true
    rm -rf "$PG_DATA"
  fi
}
