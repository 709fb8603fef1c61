#!/usr/bin/env bash
# MySQL/MariaDB binlog apply rate, two builds side by side: how fast each build's change
# capture works through the same backlog of sysbench transactions into PostgreSQL, on the same
# servers, in the same run, interleaved so that both see the same machine.
#
#   git worktree add /tmp/before <commit> && (cd /tmp/before && cargo build --release --bin ferry)
#   cargo build --release --bin ferry
#   A_BIN=/tmp/before/target/release/ferry B_BIN=target/release/ferry bench/mysql_apply.sh
#
# Each round, for each build: a fresh target database, `ferry migrate --stop-after full-load`
# (not timed), then BACKLOG_S seconds of `sysbench oltp_read_write` (THREADS threads) with no
# stream running, then `ferry migrate` is started and timed until the target's applied
# position reaches the binlog's end. The rate is the sysbench transactions of the backlog per
# second of catch-up (each sysbench transaction is one source transaction of 4 writes: an
# UPDATE by key, an UPDATE of a non-indexed column, a DELETE and an INSERT), best of ROUNDS.
# Then, with the stream still running, the steady-state lag: `sysbench oltp_read_write` at
# STEADY_RATE transactions per second for STEADY_S seconds while a probe row with the source's
# NOW(6) is written every 100 ms; the target stamps each probe row as its transaction commits
# (lib.sh, probe_target), so its lag is source commit to target commit (STEADY_S=0 skips it).
# After every run each table's row count and sum(k) must equal the source's.
#
# Environment: A_BIN, B_BIN (required), A_NAME/B_NAME (default before/after), TABLES=4,
# TABLE_SIZE=100000, BACKLOG_S=30, THREADS=4, ROUNDS=2, STEADY_RATE=300, STEADY_S=30,
# MY_PORT=55856, PG_PORT=55857.
# The target runs with production durability (fsync, synchronous_commit, full_page_writes on);
# MariaDB with innodb_flush_log_at_trx_commit=1 and sync_binlog=1.
# Output: a table on stdout, logs in bench/out/mysql-apply-<UTC timestamp>/.
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
TABLES=${TABLES:-4}
TABLE_SIZE=${TABLE_SIZE:-100000}
BACKLOG_S=${BACKLOG_S:-30}
THREADS=${THREADS:-4}
ROUNDS=${ROUNDS:-2}
STEADY_RATE=${STEADY_RATE:-300}
STEADY_S=${STEADY_S:-30}
MY_PORT=${MY_PORT:-55856}
PG_PORT=${PG_PORT:-55857}
A_NAME=${A_NAME:-before} B_NAME=${B_NAME:-after}
A_BIN=$(abs "${A_BIN:?set A_BIN and B_BIN to the two ferry binaries}")
B_BIN=$(abs "${B_BIN:?set A_BIN and B_BIN to the two ferry binaries}")
for b in "$A_BIN" "$B_BIN"; do [ -x "$b" ] || { echo "not an executable: $b" >&2; exit 1; }; done
for tool in sysbench mariadb; do
  command -v "$tool" >/dev/null || { echo "$tool is missing: scripts/install.sh sysbench mariadb-server" >&2; exit 2; }
done

bench_out mysql-apply mysql-apply
mariadb_bench bench-ma "$MY_PORT" "$PG_PORT" 512M
pg() { psql -qAtX -d "$TGT_ADMIN/$1" -c "$2"; }
sb() { sysbench_my oltp_read_write "$@"; }

my -e "CREATE DATABASE sbtest"
log "sysbench prepare: $TABLES tables x $TABLE_SIZE rows"
sb --threads=2 prepare >"$OUT/prepare.log"
my -e "CREATE TABLE sbtest.probe (id int AUTO_INCREMENT PRIMARY KEY, t datetime(6) NOT NULL)"
SRC="mysql://root:$PW@127.0.0.1:$MY_PORT/sbtest"
bin() { [ "$1" = a ] && echo "$A_BIN" || echo "$B_BIN"; }

# Waits until the target's applied position reaches the binlog's end (file number, then offset).
caught_up_now() { # db log
  local file pos
  read -r file pos _ < <(my -N -e "SHOW MASTER STATUS")
  caught_up "$1" "$((10#${file##*.}))" "$pos" "$2"
}
# Waits until the target's applied position reaches FILE:POS (file number, then offset).
caught_up() { # db fileno pos log
  until [ "$(pg "$1" "SELECT coalesce((SELECT n > $2 OR (n = $2 AND p >= $3) FROM (
      SELECT substring(split_part(x, ':', 2) from '([0-9]+)\$')::bigint AS n, split_part(x, ':', 3)::bigint AS p
      FROM (SELECT split_part(applied_position, '/', 1) AS x FROM ferry.migrations WHERE source_engine = 'mysql') s) t), false)")" = t ]; do
    kill -0 "$FERRY_PID" 2>/dev/null || { log "ferry exited during the catch-up"; tail "$4" >&2; exit 1; }
    sleep 0.1
  done
}

for round in $(seq 1 "$ROUNDS"); do
  # B runs second in odd rounds and first in even ones: the second build of a round meets a
  # source grown by the first's backlog (and its checkpoints), which biased every comparison.
  order="a b"
  [ $((round % 2)) = 0 ] && order="b a"
  for mode in $order; do
    FERRY_BIN=$(bin $mode)
    db=t_$mode
    tgt="$TGT_ADMIN/$db"
    psql -X -q -d "$TGT_ADMIN/postgres" -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" -c "CREATE DATABASE $db"
    log "round $round, $mode: full load (not timed)"
    "$FERRY_BIN" migrate --source "$SRC" --target "$tgt" --stop-after full-load --listen off >"$OUT/load-$mode-$round.log" 2>&1 ||
      { tail "$OUT/load-$mode-$round.log" >&2; exit 1; }
    log "round $round, $mode: backlog of ${BACKLOG_S}s of sysbench oltp_read_write, $THREADS threads"
    sb --threads="$THREADS" --time="$BACKLOG_S" --mysql-ignore-errors=1213,1205 run >"$OUT/backlog-$mode-$round.log" 2>&1
    txns=$(awk '/transactions:/ { print $2 }' "$OUT/backlog-$mode-$round.log")
    read -r file pos _ < <(my -N -e "SHOW MASTER STATUS")
    t0=$(now)
    "$FERRY_BIN" migrate --source "$SRC" --target "$tgt" --listen off >"$OUT/cdc-$mode-$round.log" 2>&1 &
    FERRY_PID=$!
    caught_up "$db" "$((10#${file##*.}))" "$pos" "$OUT/cdc-$mode-$round.log"
    t1=$(now)
    if [ "$STEADY_S" != 0 ]; then
      probe_target "$tgt" public.probe
      log "round $round, $mode: steady state, sysbench --rate=$STEADY_RATE for $STEADY_S s, a probe row every 100 ms"
      sb --threads="$THREADS" --rate="$STEADY_RATE" --time="$STEADY_S" --mysql-ignore-errors=1213,1205 run \
        >"$OUT/steady-$mode-$round.log" 2>&1 &
      sbp=$!
      # The source's clock in UTC, as the target reads a DATETIME (t AT TIME ZONE 'UTC').
      { echo "SET time_zone = '+00:00';"; PROBE_SQL="INSERT INTO sbtest.probe (t) VALUES (NOW(6));" probe_writes "$STEADY_S"; } | my
      wait "$sbp"
      caught_up_now "$db" "$OUT/cdc-$mode-$round.log"
      probe_lags "$tgt" public.probe "(p.t AT TIME ZONE 'UTC')" >>"$OUT/lag-$mode.txt"
      log "  lag so far (probes p50 p99 max s): $(lag_stats "$OUT/lag-$mode.txt")"
    fi
    kill -TERM "$FERRY_PID"; wait "$FERRY_PID" || true; FERRY_PID=
    for i in $(seq 1 "$TABLES"); do
      a=$(my -N -e "SELECT COUNT(*), SUM(k) FROM sbtest.sbtest$i" | tr '\t' ' ')
      b=$(psql -qAtX -F' ' -d "$tgt" -c "SELECT count(*), sum(k) FROM public.sbtest$i")
      [ "$a" = "$b" ] || { echo "round $round, $mode: sbtest$i differs after the stream: source $a, target $b" >&2; exit 1; }
    done
    s=$(elapsed "$t0" "$t1")
    tps=$(awk -v n="$txns" -v s="$s" 'BEGIN { printf "%.0f", n / s }')
    best "catchup_$mode" "$s"
    best "tps_$mode" "-$tps"
    log "  $txns sysbench transactions caught up in $s s ($tps transactions/s); tables checked"
  done
done

echo
echo "MySQL binlog apply, two builds side by side, $(date -u +%F), $(nproc) vCPU, $TABLES x $TABLE_SIZE rows, best of $ROUNDS, durability on"
echo "A ($A_NAME): $A_BIN"
echo "B ($B_NAME): $B_BIN"
f='%-52s %12s %12s %9s\n'
printf "$f" "step" "$A_NAME" "$B_NAME" "change"
printf "$f" "catch-up of ${BACKLOG_S}s of sysbench, $THREADS threads (s)" "${BEST[catchup_a]}" "${BEST[catchup_b]}" "$(pct "${BEST[catchup_a]}" "${BEST[catchup_b]}")"
ta=${BEST[tps_a]#-} tb=${BEST[tps_b]#-}
printf "$f" "apply rate (sysbench transactions per s)" "$ta" "$tb" "$(pct "$ta" "$tb")"
[ "$STEADY_S" = 0 ] || lag_table "$f" a b
echo "logs: $OUT"
