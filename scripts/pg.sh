#!/usr/bin/env bash
# Throwaway PostgreSQL clusters for Ferry's tests, demo scripts and benchmarks.
#
#   scripts/pg.sh start NAME PORT [-c setting=value ...]   initdb (if new) and start a cluster
#   scripts/pg.sh stop NAME                                  stop it (fast shutdown)
#   scripts/pg.sh destroy NAME                               stop it and remove its directory
#   scripts/pg.sh url NAME                                   print its superuser URL
#
# Clusters live under $FERRY_CLUSTER_DIR (default: <repo>/.ferry-test/clusters), listen on
# 127.0.0.1 only, and require SCRAM passwords over TCP (so tests exercise real authentication).
# The superuser is "postgres" with password $FERRY_PG_PASSWORD (default "ferry-test-pw").
# Durability: fast by default (fsync, synchronous_commit and full_page_writes off, for tests);
# FERRY_PG_DURABLE=1 leaves all three at PostgreSQL's defaults (on), as production runs them:
# benchmarks and the heavy CDC and cutover tests use that.
# PostgreSQL refuses to run as root, so as root the cluster runs as the "postgres" system user.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PG_BIN=${FERRY_PG_BIN:-/usr/lib/postgresql/15/bin}
CLUSTER_DIR=${FERRY_CLUSTER_DIR:-$here/.ferry-test/clusters}
PASSWORD=${FERRY_PG_PASSWORD:-ferry-test-pw}

as_owner() {
  if [ "$(id -u)" = 0 ]; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

cmd=${1:?usage: pg.sh start|stop|destroy|url NAME [PORT]}
name=${2:?cluster name required}
dir=$CLUSTER_DIR/$name

case "$cmd" in
start)
  port=${3:?port required}
  shift 3
  mkdir -p "$CLUSTER_DIR"
  if [ "$(id -u)" = 0 ]; then chown postgres: "$CLUSTER_DIR"; fi
  if [ ! -f "$dir/PG_VERSION" ]; then
    pwfile=$(mktemp)
    printf '%s\n' "$PASSWORD" >"$pwfile"
    chmod 644 "$pwfile"
    as_owner "$PG_BIN/initdb" -D "$dir" -U postgres --pwfile="$pwfile" -A scram-sha-256 \
      --auth-local=trust -E UTF8 --locale=C.UTF-8 >"$CLUSTER_DIR/$name.initdb.log" 2>&1 \
      || { rm -f "$pwfile"; cat "$CLUSTER_DIR/$name.initdb.log" >&2; exit 1; }
    rm -f "$pwfile"
    # Replication connections over TCP with passwords, like a production server.
    as_owner sh -c "cat >> '$dir/pg_hba.conf'" <<HBA
host replication all 127.0.0.1/32 scram-sha-256
HBA
    if [ -n "${FERRY_PG_TLS_DIR:-}" ]; then
      # TLS only, like a managed service: the server's certificate and key from the directory,
      # TCP logins only over TLS (hostssl), a certificate login for ferry_cert_user, and one
      # plain md5 login (ferry_md5_user) for the tests that must see Ferry refuse it.
      cp "$FERRY_PG_TLS_DIR/server.crt" "$FERRY_PG_TLS_DIR/server.key" "$FERRY_PG_TLS_DIR/ca.crt" "$dir/"
      [ "$(id -u)" = 0 ] && chown postgres: "$dir/server.crt" "$dir/server.key" "$dir/ca.crt"
      chmod 600 "$dir/server.key"
      as_owner sh -c "cat > '$dir/pg_hba.conf'" <<HBA
local all all trust
hostssl all ferry_cert_user 127.0.0.1/32 cert
host all ferry_md5_user 127.0.0.1/32 md5
hostssl all all 127.0.0.1/32 scram-sha-256
hostssl replication all 127.0.0.1/32 scram-sha-256
HBA
    fi
  fi
  opts="-c listen_addresses=127.0.0.1 -c port=$port -c unix_socket_directories=$dir"
  opts="$opts -c max_connections=200 -c max_replication_slots=40 -c max_wal_senders=20"
  opts="$opts -c shared_buffers=256MB"
  if [ "${FERRY_PG_DURABLE:-0}" != 1 ]; then
    opts="$opts -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
  fi
  if [ -f "$dir/server.crt" ]; then
    opts="$opts -c ssl=on -c ssl_cert_file=server.crt -c ssl_key_file=server.key -c ssl_ca_file=ca.crt"
  fi
  for o in "$@"; do opts="$opts $o"; done
  as_owner "$PG_BIN/pg_ctl" -D "$dir" -l "$CLUSTER_DIR/$name.log" -o "$opts" -w -t 60 start >/dev/null \
    || { tail -20 "$CLUSTER_DIR/$name.log" >&2; exit 1; }
  echo "$port" >"$CLUSTER_DIR/$name.port"
  ;;
stop)
  if [ -f "$dir/postmaster.pid" ]; then
    as_owner "$PG_BIN/pg_ctl" -D "$dir" -m fast -w -t 60 stop >/dev/null || true
  fi
  ;;
destroy)
  "$0" stop "$name"
  rm -rf "$dir" "$CLUSTER_DIR/$name".*
  ;;
url)
  port=$(cat "$CLUSTER_DIR/$name.port")
  echo "postgres://postgres:$PASSWORD@127.0.0.1:$port/postgres"
  ;;
*)
  echo "unknown command $cmd" >&2
  exit 2
  ;;
esac
