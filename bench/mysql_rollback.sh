#!/usr/bin/env bash
# Rollback to MySQL/MariaDB: the reverse stream's lag under a sysbench-like write load on
# PostgreSQL, and the pause of ten cutover/rollback cycles.
#
#   bench/mysql_rollback.sh        (FERRY_BIN=target/release/ferry by default)
#
# Setup (not timed): MariaDB (binlog ROW, FULL image, innodb_flush_log_at_trx_commit=1,
# sync_binlog=1) and PostgreSQL (fsync, synchronous_commit, full_page_writes on) on loopback;
# `sysbench oltp_read_write prepare` (TABLES x TABLE_SIZE) and a probe table on MariaDB, whose
# trigger stamps SYSDATE(6) into probe_applied (not migrated) when a row arrives; `ferry
# migrate` loads and streams, `ferry cutover` switches to PostgreSQL.
# Lag: for LAG_S seconds `pgbench` runs sysbench's write transaction (an index update, a
# non-index update, a delete and an insert) on the target at RATE transactions per second
# (4 clients) while a probe row with PostgreSQL's clock_timestamp() is inserted there every
# 100 ms; each probe row's lag is its arrival on MariaDB minus its insert on PostgreSQL (one
# machine, one clock), source commit to sink apply.
# Cycles: CYCLES times `ferry rollback` then `ferry cutover` again, each after 3 s of the same
# load on the side that takes writes, both with --grace GRACE; the pause of each switch is the
# report's (writes refused on the old side until the new one takes them: read-only, writers
# ended after GRACE, final position applied, counters moved, phase recorded).
# After all: the stream caught up, every sbtest table's count and sum(k) equal on both sides.
#
# Environment: FERRY_BIN, TABLES=2, TABLE_SIZE=10000, RATE=500, LAG_S=30, CYCLES=10,
# GRACE=200ms, MY_PORT=55876, PG_PORT=55877, BENCH_KEEP=1 (leave the servers running).
# Output: a table on stdout, logs in bench/out/mysql-rollback-<UTC timestamp>/.
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
TABLES=${TABLES:-2}
TABLE_SIZE=${TABLE_SIZE:-10000}
RATE=${RATE:-500}
LAG_S=${LAG_S:-30}
CYCLES=${CYCLES:-10}
GRACE=${GRACE:-200ms}
MY_PORT=${MY_PORT:-55876}
PG_PORT=${PG_PORT:-55877}
ferry_bin
for tool in sysbench mariadb pgbench; do
  command -v "$tool" >/dev/null || { echo "$tool is missing: scripts/install.sh sysbench mariadb-server" >&2; exit 2; }
done

bench_out mysql-rollback mysql-rollback
mariadb_bench bench-mr "$MY_PORT" "$PG_PORT" 256M
TGT="$TGT_ADMIN/sbtest"
SRC="mysql://root:$PW@127.0.0.1:$MY_PORT/sbtest"
sb() { sysbench_my oltp_write_only "$@"; }

my -e "CREATE DATABASE sbtest"
log "sysbench prepare: $TABLES tables x $TABLE_SIZE rows"
sb --threads=2 prepare >"$OUT/prepare.log"
my sbtest -e "CREATE TABLE probe (id bigint AUTO_INCREMENT PRIMARY KEY, t datetime(6) NOT NULL);
  CREATE TABLE probe_applied (id bigint PRIMARY KEY, at datetime(6) NOT NULL);
  CREATE TRIGGER probe_stamp AFTER INSERT ON probe FOR EACH ROW INSERT INTO probe_applied VALUES (NEW.id, SYSDATE(6))"
psql -X -q -d "$TGT_ADMIN/postgres" -c "CREATE DATABASE sbtest"

# sysbench's write transaction, on PostgreSQL.
cat >"$OUT/write.sql" <<SQL
\\set id random(1, $TABLE_SIZE)
BEGIN;
UPDATE sbtest1 SET k = k + 1 WHERE id = :id;
UPDATE sbtest1 SET c = md5(random()::text) WHERE id = :id;
DELETE FROM sbtest2 WHERE id = :id;
INSERT INTO sbtest2 (id, k, c, pad) VALUES (:id, :id, 'on postgres', 'pad') ON CONFLICT DO NOTHING;
END;
SQL
pg_load() { # seconds rate log
  pgbench -n -c 4 -j 2 -R "$2" -T "$1" -f "$OUT/write.sql" "$TGT" >"$3" 2>&1
}

"$FERRY_BIN" migrate --source "$SRC" --target "$TGT" --exclude probe_applied --listen off >"$OUT/migrate.log" 2>&1 &
FERRY_PID=$!
phase() { psql -X -At -d "$TGT" -c "SELECT phase FROM ferry.migrations" 2>/dev/null || true; }
wait_phase() { # phase
  until [ "$(phase)" = "$1" ]; do
    kill -0 "$FERRY_PID" 2>/dev/null || { log "ferry migrate exited"; tail "$OUT/migrate.log" >&2; exit 1; }
    sleep 0.2
  done
}
wait_phase cdc
log "3 s of sysbench on MariaDB while the binlog stream runs"
sb --threads=2 --rate="$RATE" --time=3 --mysql-ignore-errors=1213,1205 run >"$OUT/first-sysbench.log" 2>&1
switch() { # cutover|rollback round: runs it, appends its pause (ms) to $OUT/pause-<kind>.txt
  local out="$OUT/$1-$2.json"
  "$FERRY_BIN" "$1" --source "$SRC" --target "$TGT" --grace "$GRACE" --skip-verify-check --json >"$out" 2>"$OUT/$1-$2.err" ||
    { log "$1 $2 failed"; cat "$OUT/$1-$2.err" "$out" >&2; exit 1; }
  python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print(r.get("write_pause_ms", r.get("pause_ms")))' "$out" >>"$OUT/pause-$1.txt"
}
# The reverse stream runs once the slot is in use.
wait_reverse() {
  until [ "$(psql -X -At -d "$TGT" -c "SELECT count(*) FROM pg_replication_slots WHERE slot_name LIKE '%_rev' AND active")" = 1 ]; do
    kill -0 "$FERRY_PID" 2>/dev/null || { log "ferry migrate exited"; tail "$OUT/migrate.log" >&2; exit 1; }
    sleep 0.2
  done
}
log "cutover"
switch cutover 0
wait_reverse

log "reverse lag: pgbench sysbench-write at $RATE tps for ${LAG_S}s on PostgreSQL, a probe row every 100 ms"
pg_load "$LAG_S" "$RATE" "$OUT/lag-pgbench.log" &
LOAD=$!
PROBE_SQL="INSERT INTO probe (t) VALUES (clock_timestamp() AT TIME ZONE 'UTC');" probe_writes "$LAG_S" | psql -X -q -d "$TGT" >/dev/null
wait "$LOAD"
tps=$(awk '/^tps = / { print $3; exit }' "$OUT/lag-pgbench.log")
sleep 2
my -N sbtest -e "SELECT TIMESTAMPDIFF(MICROSECOND, p.t, a.at) / 1e6 FROM probe p JOIN probe_applied a USING (id)" >"$OUT/lag.txt"
read -r n p50 p99 mx < <(lag_stats "$OUT/lag.txt")
log "  $n probes: p50 ${p50}s p99 ${p99}s max ${mx}s"

for c in $(seq 1 "$CYCLES"); do
  log "cycle $c: rollback, 3 s of sysbench on MariaDB, cutover, 3 s of writes on PostgreSQL"
  pg_load 3 "$RATE" "$OUT/cycle-pg-$c.log"
  switch rollback "$c"
  wait_phase cdc
  sb --threads=2 --rate="$RATE" --time=3 --mysql-ignore-errors=1213,1205 run >"$OUT/cycle-my-$c.log" 2>&1
  switch cutover "$c"
  wait_reverse
done
log "final rollback; the binlog stream catches up"
pg_load 3 "$RATE" "$OUT/final-pg.log"
switch rollback final
wait_phase cdc
sleep 3
read -r file pos _ < <(my -N -e "SHOW MASTER STATUS")
fileno=$((10#${file##*.}))
until [ "$(psql -X -At -d "$TGT" -c "SELECT coalesce((SELECT n > $fileno OR (n = $fileno AND p >= $pos) FROM (
    SELECT substring(split_part(x, ':', 2) from '([0-9]+)\$')::bigint AS n, split_part(x, ':', 3)::bigint AS p
    FROM (SELECT split_part(applied_position, '/', 1) AS x FROM ferry.migrations) s) t), false)")" = t ]; do
  kill -0 "$FERRY_PID" 2>/dev/null || { log "ferry migrate exited"; tail "$OUT/migrate.log" >&2; exit 1; }
  sleep 0.2
done
for i in $(seq 1 "$TABLES"); do
  a=$(my -N -e "SELECT COUNT(*), SUM(k) FROM sbtest.sbtest$i" | tr '\t' ' ')
  b=$(psql -X -At -F' ' -d "$TGT" -c "SELECT count(*), sum(k) FROM public.sbtest$i")
  [ "$a" = "$b" ] || { echo "sbtest$i differs after $CYCLES cycles: MariaDB $a, PostgreSQL $b" >&2; exit 1; }
done

echo
echo "Rollback to MySQL/MariaDB, $(date -u +%F), $(nproc) vCPU, $TABLES x $TABLE_SIZE rows, durability on, grace $GRACE"
echo "reverse lag under pgbench (sysbench write transaction) at $tps tps for ${LAG_S}s: $n probes, p50 ${p50}s, p99 ${p99}s, max ${mx}s"
for kind in cutover rollback; do
  sed -i '/^None$/d' "$OUT/pause-$kind.txt"
  read -r pn pp50 pp99 pmax < <(awk '{ print $1 / 1000 }' "$OUT/pause-$kind.txt" >"$OUT/pause-$kind-s.txt"; lag_stats "$OUT/pause-$kind-s.txt")
  echo "$kind pause over $pn switches: p50 ${pp50}s, p99 ${pp99}s, max ${pmax}s"
done
echo "after the last rollback every sbtest table has the same count and sum(k) on both sides; logs: $OUT"
