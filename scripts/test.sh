#!/usr/bin/env bash
# Ferry's whole test suite, from a fresh machine:
#   1. installs what is missing (PostgreSQL 15 server and client, MariaDB for the MySQL issue,
#      Chromium for the dashboard test),
#   2. starts throwaway clusters on Ferry's own loopback ports,
#   3. checks formatting and lints, runs every test with cargo nextest (cargo test if absent),
#   4. stops what it started, whatever happened.
#
# Clusters (under .ferry-test/clusters, recreated on every run):
#   ferry-src      127.0.0.1:55432  wal_level=logical   source of most tests
#   ferry-tgt      127.0.0.1:55433  wal_level=logical   target of most tests
#   ferry-replica  127.0.0.1:55434  wal_level=replica   for the "wal_level is wrong" test
#   ferry-dsrc     127.0.0.1:55438  wal_level=logical, production durability (fsync,
#   ferry-dtgt     127.0.0.1:55439  synchronous_commit, full_page_writes on): the heavy CDC and
#                                   cutover tests that must hold up as users run PostgreSQL
# Kafka-protocol broker (scripts/kafka.sh: tansu, built once from crates.io and kept):
#   ferry-kafka     127.0.0.1:55440  in-memory storage                           Kafka tests
# (FERRY_TEST_PORT_BASE=N uses N .. N+8 instead.)
# MariaDB servers (scripts/mysql.sh, same directory):
#   ferry-my        127.0.0.1:55435  binlog ROW, FULL row image and metadata   MySQL-source tests
#   ferry-my-nobin  127.0.0.1:55436  binary log off                           "log_bin is OFF" test
#   ferry-my-stmt   127.0.0.1:55437  binlog STATEMENT, MINIMAL row image       "binlog_format" test
# Tests find them through FERRY_TEST_SOURCE / FERRY_TEST_TARGET / FERRY_TEST_REPLICA,
# FERRY_TEST_MYSQL / FERRY_TEST_MYSQL_NOBIN / FERRY_TEST_MYSQL_STMT and FERRY_TEST_KAFKA, and create their own uniquely
# named databases; they never use a server someone else started.
set -euo pipefail
cd "$(dirname "$0")/.."
export FERRY_PG_BIN=${FERRY_PG_BIN:-/usr/lib/postgresql/15/bin}

say() { printf '\n== %s\n' "$*"; }

# --- 1. packages -----------------------------------------------------------------------
need=()
[ -x "$FERRY_PG_BIN/initdb" ] || need+=(postgresql-15 postgresql-client-15)
[ -x "$FERRY_PG_BIN/pgbench" ] || need+=(postgresql-15)
command -v mariadbd >/dev/null 2>&1 || [ -x /usr/sbin/mariadbd ] || need+=(mariadb-server)
command -v sysbench >/dev/null 2>&1 || need+=(sysbench)
# A TLS terminator in front of the test broker (tansu cannot listen with TLS itself).
command -v socat >/dev/null 2>&1 || need+=(socat)
# The dashboard test renders the page in a real headless browser.
command -v "${FERRY_CHROMIUM:-chromium}" >/dev/null 2>&1 || need+=(chromium)
scripts/install.sh "${need[@]}"
# librdkafka is built from its bundled source (Ferry's Kafka client): cmake and curl's headers.
need=()
command -v cmake >/dev/null 2>&1 || need+=(cmake)
[ -f /usr/include/x86_64-linux-gnu/curl/curl.h ] || [ -f /usr/include/curl/curl.h ] || need+=(libcurl4-openssl-dev)
[ -f /usr/include/openssl/ssl.h ] || need+=(libssl-dev)
scripts/install.sh "${need[@]}"
scripts/kafka.sh install

# --- 2. servers ------------------------------------------------------------------------
clusters=(ferry-src ferry-tgt ferry-replica ferry-dsrc ferry-dtgt)
my_servers=(ferry-my ferry-my-nobin ferry-my-stmt)
cleanup() {
  for c in "${clusters[@]}"; do scripts/pg.sh stop "$c" || true; done
  for m in "${my_servers[@]}"; do scripts/mysql.sh stop "$m" || true; done
  scripts/kafka.sh stop ferry-kafka || true
}
trap cleanup EXIT
say "starting PostgreSQL clusters"
for c in "${clusters[@]}"; do scripts/pg.sh destroy "$c" >/dev/null 2>&1 || true; done
for m in "${my_servers[@]}"; do scripts/mysql.sh destroy "$m" >/dev/null 2>&1 || true; done
# Another checkout's test run (or anything else) on these ports would make every test fail in
# confusing ways: say so up front. FERRY_TEST_PORT_BASE moves them all.
base=${FERRY_TEST_PORT_BASE:-55432}
for port in $(seq "$base" $((base + 8))); do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    echo "port $port on 127.0.0.1 is already in use (another Ferry test run?): stop it, or set FERRY_TEST_PORT_BASE to another free range of 9 ports" >&2
    exit 1
  fi
done
scripts/pg.sh start ferry-src "$base" -c wal_level=logical
scripts/pg.sh start ferry-tgt $((base + 1)) -c wal_level=logical
scripts/pg.sh start ferry-replica $((base + 2)) -c wal_level=replica
# wal_sender_timeout 20 s: Ferry's stream deadline is never under half of it plus 5 s, so the
# black-hole test sees a dead stream detected within 15 s (60 s, the default, would give 35 s).
FERRY_PG_DURABLE=1 scripts/pg.sh start ferry-dsrc $((base + 6)) -c wal_level=logical -c wal_sender_timeout=20s
FERRY_PG_DURABLE=1 scripts/pg.sh start ferry-dtgt $((base + 7)) -c wal_level=logical
export FERRY_TEST_SOURCE=$(scripts/pg.sh url ferry-src)
export FERRY_TEST_TARGET=$(scripts/pg.sh url ferry-tgt)
export FERRY_TEST_REPLICA=$(scripts/pg.sh url ferry-replica)
export FERRY_TEST_DURABLE_SOURCE=$(scripts/pg.sh url ferry-dsrc)
export FERRY_TEST_DURABLE_TARGET=$(scripts/pg.sh url ferry-dtgt)
say "starting MariaDB servers"
scripts/mysql.sh start ferry-my $((base + 3)) --log-bin=binlog --binlog-format=ROW --binlog-row-image=FULL \
  --binlog-row-metadata=FULL --server-id=1
scripts/mysql.sh start ferry-my-nobin $((base + 4))
scripts/mysql.sh start ferry-my-stmt $((base + 5)) --log-bin=binlog --binlog-format=STATEMENT \
  --binlog-row-image=MINIMAL --server-id=2
export FERRY_TEST_MYSQL=$(scripts/mysql.sh url ferry-my)
export FERRY_TEST_MYSQL_NOBIN=$(scripts/mysql.sh url ferry-my-nobin)
export FERRY_TEST_MYSQL_STMT=$(scripts/mysql.sh url ferry-my-stmt)
say "starting the Kafka-protocol broker"
scripts/kafka.sh start ferry-kafka $((base + 8))
export FERRY_TEST_KAFKA=$(scripts/kafka.sh url ferry-kafka)
export PATH="$FERRY_PG_BIN:$PATH"

# --- 3. checks and tests ---------------------------------------------------------------
# FERRY_TEST_SKIP_LINT=1 skips formatting and lint checks while iterating on a few tests;
# CI (.ci/run) never sets it.
if [ "${FERRY_TEST_SKIP_LINT:-0}" != 1 ]; then
  say "cargo fmt --check"
  cargo fmt --all -- --check
  say "cargo clippy -D warnings"
  cargo clippy --workspace --all-targets --locked -- -D warnings
fi
say "tests"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --profile ci "$@"
else
  cargo test --workspace --locked "$@"
fi
