#!/usr/bin/env bash
# MySQL/MariaDB full-load benchmark: Ferry versus pgloader, same source, same target server,
# same run.
#
#   bench/mysql.sh            (or BENCH_SUITES=mysql bench/run.sh)
#
# Setup (not timed): a MariaDB server (binlog ROW, FULL image) on 127.0.0.1:MY_PORT and a
# PostgreSQL cluster on 127.0.0.1:PG_PORT, both throwaway (scripts/mysql.sh, scripts/pg.sh);
# `sysbench oltp_read_write prepare` with TABLES tables of TABLE_SIZE rows in database sbtest.
# Timed, REPEAT times each, into a fresh target database every time:
#   ferry     ferry migrate --source mysql://... --stop-after full-load -j JOBS (schema, one
#             consistent snapshot, parallel copy, primary keys and indexes after the data)
#   pgloader  pgloader mysql://... postgresql://... (its defaults: schema, data, indexes; prefetch
#             and batch rows 10,000, without which Debian's build runs out of heap)
# Each result is checked: the target's row count must equal the source's.
# Then CDC lag: `ferry migrate` streams into the first Ferry target while `sysbench
# oltp_read_write` runs at its max rate (CDC_THREADS threads, CDC_SECONDS seconds); a probe
# inserts NOW(6) on the source every 100 ms, and a trigger on the target's copy of the probe
# table stamps each row as its transaction commits (bench/lib.sh, probe_target), so each probe
# row's lag is exactly stamp - t (one machine, one clock). After sysbench ends the stream must
# catch up and
# every sysbench table must have the source's row count and sum(k).
#
# Environment: TABLES=4, TABLE_SIZE=1000000, REPEAT=1, JOBS=2, MY_PORT=55836, PG_PORT=55837,
# CDC_THREADS=4, CDC_SECONDS=60 (0: no CDC part),
# FERRY_BIN=target/release/ferry, BENCH_KEEP=1 (leave the servers running).
# Output: a table on stdout, logs in bench/out/mysql-<UTC timestamp>/.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
TABLES=${TABLES:-4}
TABLE_SIZE=${TABLE_SIZE:-1000000}
REPEAT=${REPEAT:-1}
JOBS=${JOBS:-2}
MY_PORT=${MY_PORT:-55836}
PG_PORT=${PG_PORT:-55837}
FERRY_BIN=${FERRY_BIN:-target/release/ferry}
PW=ferry-test-pw
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
OUT=bench/out/mysql-$STAMP
mkdir -p "$OUT"
export FERRY_PG_BIN=${FERRY_PG_BIN:-/usr/lib/postgresql/15/bin}
log() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
# The steady-state lag probe (probe_target, probe_lags, lag_stats), shared with the other benches.
. "$REPO/bench/probe.sh"

for tool in sysbench pgloader mariadb; do
  command -v "$tool" >/dev/null || { echo "$tool is missing: scripts/install.sh sysbench pgloader mariadb-server" >&2; exit 2; }
done
[ -x "$FERRY_BIN" ] || cargo build --release --locked -p ferry

cleanup() {
  if [ "${BENCH_KEEP:-0}" != 1 ]; then
    scripts/mysql.sh destroy bench-my >/dev/null 2>&1 || true
    scripts/pg.sh destroy bench-my-tgt >/dev/null 2>&1 || true
  fi
}
trap cleanup EXIT
scripts/mysql.sh destroy bench-my >/dev/null 2>&1 || true
scripts/pg.sh destroy bench-my-tgt >/dev/null 2>&1 || true
log "starting MariaDB on $MY_PORT and PostgreSQL on $PG_PORT"
scripts/mysql.sh start bench-my "$MY_PORT" --log-bin=binlog --binlog-format=ROW --binlog-row-image=FULL \
  --binlog-row-metadata=FULL --server-id=1 --innodb-buffer-pool-size=1G
scripts/pg.sh start bench-my-tgt "$PG_PORT" -c wal_level=logical
my() { MYSQL_PWD=$PW mariadb --no-defaults -h127.0.0.1 -P"$MY_PORT" -uroot "$@"; }
pg() { PGPASSWORD=$PW psql -qAtX -h 127.0.0.1 -p "$PG_PORT" -U postgres "$@"; }

my -e "CREATE DATABASE sbtest"
log "sysbench prepare: $TABLES tables x $TABLE_SIZE rows"
sysbench oltp_read_write --db-driver=mysql --mysql-host=127.0.0.1 --mysql-port="$MY_PORT" --mysql-user=root \
  --mysql-password=$PW --mysql-db=sbtest --tables="$TABLES" --table-size="$TABLE_SIZE" --threads=2 prepare >"$OUT/prepare.log"
my -e "ANALYZE TABLE $(seq -s, -f 'sbtest.sbtest%g' 1 "$TABLES")" >/dev/null
# The CDC lag probe's table (empty during the loads).
my -e "CREATE TABLE sbtest.probe (id int AUTO_INCREMENT PRIMARY KEY, t datetime(6) NOT NULL)"
ROWS=$((TABLES * TABLE_SIZE))
BYTES=$(my -N -e "SELECT SUM(DATA_LENGTH) FROM information_schema.TABLES WHERE TABLE_SCHEMA='sbtest'")

results=()
count_rows() { # db schema
  local sum=0 n
  for i in $(seq 1 "$TABLES"); do
    n=$(pg -d "$1" -c "SELECT count(*) FROM $2.sbtest$i")
    sum=$((sum + n))
  done
  echo "$sum"
}
for r in $(seq 1 "$REPEAT"); do
  for method in ferry pgloader; do
    db=${method}_$r
    pg -d postgres -c "DROP DATABASE IF EXISTS $db" -c "CREATE DATABASE $db"
    pg -d postgres -c "CHECKPOINT"
    log "$method run $r"
    start=$(date +%s.%N)
    if [ "$method" = ferry ]; then
      "$FERRY_BIN" migrate --source "mysql://root:$PW@127.0.0.1:$MY_PORT/sbtest" \
        --target "postgres://postgres:$PW@127.0.0.1:$PG_PORT/$db" --stop-after full-load -j "$JOBS" \
        >"$OUT/$method-$r.log" 2>&1
      schema=public
    else
      # Debian's pgloader (SBCL, 1 GB heap) exhausts its heap on these tables with its default
      # prefetch of 100,000 rows; 10,000 rows per batch and prefetch keeps it alive.
      pgloader --no-ssl-cert-verification --with "prefetch rows = 10000" --with "batch rows = 10000" "mysql://root:$PW@127.0.0.1:$MY_PORT/sbtest" \
        "postgresql://postgres:$PW@127.0.0.1:$PG_PORT/$db" >"$OUT/$method-$r.log" 2>&1
      schema=sbtest
    fi
    end=$(date +%s.%N)
    got=$(count_rows "$db" "$schema")
    [ "$got" = "$ROWS" ] || { echo "$method run $r: $got rows on the target, $ROWS on the source" >&2; exit 1; }
    results+=("$method $r $(echo "$end - $start" | bc)")
  done
done

printf '# %s  nproc=%s  %s  %s  sysbench %s x %s rows (%s MB of InnoDB data)  jobs=%s\n' \
  "$STAMP" "$(nproc)" "$(my -N -e 'SELECT VERSION()')" "$(postgres --version 2>/dev/null || "$FERRY_PG_BIN/postgres" --version)" \
  "$TABLES" "$TABLE_SIZE" "$((BYTES / 1000000))" "$JOBS" | tee "$OUT/result.txt"
printf '%-10s %8s %12s %10s\n' method seconds rows/s vs-pgloader | tee -a "$OUT/result.txt"
best() { printf '%s\n' "${results[@]}" | awk -v m="$1" '$1 == m { if (b == "" || $3 < b) b = $3 } END { print b }'; }
pgl=$(best pgloader)
for method in ferry pgloader; do
  s=$(best "$method")
  printf '%-10s %8.2f %12.0f %9.2fx\n' "$method" "$s" "$(echo "$ROWS / $s" | bc -l)" "$(echo "$pgl / $s" | bc -l)" | tee -a "$OUT/result.txt"
done
echo "target: ferry rows/s at least 2x pgloader's; row counts checked on every run; logs in $OUT" | tee -a "$OUT/result.txt"

# --- CDC lag under sysbench at its max rate ---------------------------------------------
CDC_SECONDS=${CDC_SECONDS:-60}
CDC_THREADS=${CDC_THREADS:-4}
[ "$CDC_SECONDS" -gt 0 ] || exit 0
SRC="mysql://root:$PW@127.0.0.1:$MY_PORT/sbtest"
TGT="postgres://postgres:$PW@127.0.0.1:$PG_PORT/ferry_1"
"$FERRY_BIN" migrate --source "$SRC" --target "$TGT" --listen off >"$OUT/cdc-ferry.out" 2>"$OUT/cdc-ferry.log" &
FPID=$!
alive() { kill -0 "$FPID" 2>/dev/null || { echo "ferry migrate exited; its log:" >&2; tail "$OUT/cdc-ferry.log" >&2; exit 1; }; }
until [ "$(pg -d ferry_1 -c "SELECT phase FROM ferry.migrations WHERE source_engine = 'mysql'" 2>/dev/null)" = cdc ]; do alive; sleep 0.2; done
PGPASSWORD=$PW probe_target "postgres://postgres@127.0.0.1:$PG_PORT/ferry_1" public.probe
log "CDC: sysbench oltp_read_write --threads=$CDC_THREADS for ${CDC_SECONDS}s at max rate, probe every 100 ms"
sysbench oltp_read_write --db-driver=mysql --mysql-host=127.0.0.1 --mysql-port="$MY_PORT" --mysql-user=root \
  --mysql-password=$PW --mysql-db=sbtest --tables="$TABLES" --table-size="$TABLE_SIZE" --threads="$CDC_THREADS" \
  --time="$CDC_SECONDS" --mysql-ignore-errors=1213,1205 run >"$OUT/cdc-sysbench.log" 2>&1 &
SPID=$!
end=$((SECONDS + CDC_SECONDS))
while [ "$SECONDS" -lt "$end" ]; do
  my -e "SET time_zone = '+00:00'; INSERT INTO sbtest.probe (t) VALUES (NOW(6))"
  sleep 0.1
done
wait "$SPID"
read -r file pos _ < <(my -N -e "SHOW MASTER STATUS")
caught=$(date +%s.%N)
# applied_position is mysql:FILE:POS[/GTID]: compare by file number, then offset (never as text).
fileno=$((10#${file##*.}))
until pg -d ferry_1 -c "SELECT n > $fileno OR (n = $fileno AND p >= $pos) FROM (
    SELECT substring(split_part(x, ':', 2) from '([0-9]+)\$')::bigint AS n, split_part(x, ':', 3)::bigint AS p
    FROM (SELECT split_part(applied_position, '/', 1) AS x FROM ferry.migrations WHERE source_engine = 'mysql') s) t" | grep -q t; do
  alive
  sleep 0.1
done
drain=$(echo "$(date +%s.%N) - $caught" | bc)
kill -TERM "$FPID"; wait "$FPID" || true
for i in $(seq 1 "$TABLES"); do
  a=$(my -N -e "SELECT COUNT(*), SUM(k) FROM sbtest.sbtest$i" | tr '\t' ' ')
  b=$(pg -d ferry_1 -F' ' -c "SELECT count(*), sum(k) FROM public.sbtest$i")
  [ "$a" = "$b" ] || { echo "CDC: sbtest$i differs after the stream: source $a, target $b" >&2; exit 1; }
done
tps=$(awk '/transactions:/ { gsub(/[()]/, "", $3); print $3 }' "$OUT/cdc-sysbench.log")
applied=$(grep -o '[0-9]* source transactions' "$OUT/cdc-ferry.out" | awk '{print $1}')
PGPASSWORD=$PW probe_lags "postgres://postgres@127.0.0.1:$PG_PORT/ferry_1" public.probe "(p.t AT TIME ZONE 'UTC')" >"$OUT/lag.txt"
read -r n p50 p99 mx < <(lag_stats "$OUT/lag.txt")
{
  printf '\nCDC under sysbench oltp_read_write --threads=%s for %ss (max rate): sysbench %s tps; ferry applied %s source transactions\n' \
    "$CDC_THREADS" "$CDC_SECONDS" "$tps" "$applied"
  printf 'lag of %s probes (source commit to target commit): p50 %ss  p99 %ss  max %ss; after sysbench stopped the stream caught up in %.1fs\n' \
    "$n" "$p50" "$p99" "$mx" "$drain"
  echo "target: CDC lag p99 under 1 s; row counts and sum(k) of every table checked after the stream"
} | tee -a "$OUT/result.txt"
