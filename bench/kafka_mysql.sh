#!/usr/bin/env bash
# MariaDB through Kafka versus direct: the same sysbench backlog applied by `ferry migrate
# --source mysql://...` (direct binlog CDC into PostgreSQL) and by `ferry capture` + `ferry
# apply` with a Kafka-protocol broker between them, in the same run, on the same servers; then
# capture alone (binlog to broker) and apply alone (broker to PostgreSQL) on a second backlog.
#
#   bench/kafka_mysql.sh
#
# Setup (not timed): MariaDB (binlog ROW, FULL image, innodb_flush_log_at_trx_commit=1,
# sync_binlog=1), PostgreSQL with durability on, a broker (scripts/kafka.sh: tansu, in-memory);
# `sysbench oltp_write_only prepare`; a direct migration loaded and a capture's snapshot applied,
# both stopped. Timed: BACKLOG_S seconds of `sysbench oltp_write_only` (THREADS threads, no
# stream running), then a marker row; each way is timed until the marker is on the target (for
# capture alone: until the capture's recorded position, written at most once a second and only
# once the broker has acknowledged every event before it, reaches the binlog's end). The rate is sysbench transactions (4 writes each) per second.
#
# Environment: TABLES=4, TABLE_SIZE=50000, BACKLOG_S=20, THREADS=4, ROUNDS=2, MY_PORT=55866,
# PG_PORT=55867, KAFKA_PORT=55868, FERRY_BIN=target/release/ferry. Needs python3 with
# confluent-kafka (bench/kafka_wait.py).
# Output: a table on stdout, logs in bench/out/kafka-mysql-<UTC timestamp>/.
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
TABLES=${TABLES:-4}
TABLE_SIZE=${TABLE_SIZE:-50000}
BACKLOG_S=${BACKLOG_S:-20}
THREADS=${THREADS:-4}
ROUNDS=${ROUNDS:-2}
MY_PORT=${MY_PORT:-55866}
PG_PORT=${PG_PORT:-55867}
KAFKA_PORT=${KAFKA_PORT:-55868}
KAFKA=127.0.0.1:$KAFKA_PORT
KAFKA_NAME=kafka-mysql-bench-broker
for tool in sysbench mariadb; do
  command -v "$tool" >/dev/null || { echo "$tool is missing: scripts/install.sh sysbench mariadb-server" >&2; exit 2; }
done
python3 -c "import confluent_kafka" 2>/dev/null || { echo "python3 with confluent-kafka is needed (pip install confluent-kafka)" >&2; exit 2; }
ferry_bin
bench_out kafka-mysql kafka-mysql
mariadb_bench bench-kmy "$MY_PORT" "$PG_PORT" 512M
CAP_PID= APPLY_PID=
trap 'stop_all; "$REPO/scripts/kafka.sh" stop $KAFKA_NAME; mariadb_bench_cleanup' EXIT
pg() { psql -qAtX -d "$TGT_ADMIN/$1" -c "$2"; }
sb() { sysbench_my oltp_write_only "$@"; }
my -e "CREATE DATABASE sbtest"
log "sysbench prepare: $TABLES tables x $TABLE_SIZE rows"
sb --threads=2 prepare >"$OUT/prepare.log"
my -e "CREATE TABLE sbtest.bench_mark (n int PRIMARY KEY)"
SRC="mysql://root:$PW@127.0.0.1:$MY_PORT/sbtest"
rate() { awk -v n="$1" -v s="$2" 'BEGIN { printf "%.0f", n / s }'; }
capture() { "$FERRY_BIN" capture --source "$SRC" --to "kafka://$KAFKA/p$1?schemas=false" >>"$OUT/capture-$1.log" 2>&1 & CAP_PID=$!; }
apply() { "$FERRY_BIN" apply --from "kafka://$KAFKA/p$1?schemas=false" --target "$TGT_ADMIN/k$1" >>"$OUT/apply-$1.log" 2>&1 & APPLY_PID=$!; }
wait_row() { # DB SQL LOG PIDS: until SQL returns t on the target database
  until [ "$(pg "$1" "$2" 2>/dev/null)" = t ]; do
    for p in $4; do kill -0 "$p" 2>/dev/null || { log "a ferry process exited"; tail "$3" >&2; exit 1; }; done
    sleep 0.1
  done
}
backlog() { # ROUND N: sysbench, then mark N; BACKLOG_TXNS
  log "round $1: backlog of $BACKLOG_S s of sysbench oltp_write_only, $THREADS threads"
  sb --threads="$THREADS" --time="$BACKLOG_S" run >"$OUT/backlog-$1-$2.log" 2>&1
  my -e "INSERT INTO sbtest.bench_mark VALUES ($2)"
  BACKLOG_TXNS=$(awk '/transactions:/ { print $2; exit }' "$OUT/backlog-$1-$2.log")
}

for round in $(seq 1 "$ROUNDS"); do
  "$REPO/scripts/kafka.sh" stop $KAFKA_NAME 2>/dev/null || true
  FERRY_CLUSTER_DIR=${FERRY_CLUSTER_DIR:-$REPO/.ferry-test/clusters} "$REPO/scripts/kafka.sh" start $KAFKA_NAME "$KAFKA_PORT"
  pg postgres "CREATE DATABASE d$round" >/dev/null; pg postgres "CREATE DATABASE k$round" >/dev/null
  log "round $round: direct full load"
  "$FERRY_BIN" migrate --source "$SRC" --target "$TGT_ADMIN/d$round" -j 2 --stop-after full-load --listen off >"$OUT/direct-$round.log" 2>&1
  log "round $round: snapshot through Kafka"
  capture "$round"
  until grep -q "snapshot published" "$OUT/capture-$round.log"; do kill -0 $CAP_PID || exit 1; sleep 0.2; done
  apply "$round"
  wait_row "k$round" "SELECT phase = 'cdc' FROM ferry.migrations" "$OUT/apply-$round.log" "$CAP_PID $APPLY_PID"
  stop_all
  # The same backlog, direct and through Kafka (capture and apply running together).
  mark=$((round * 10 + 1)); backlog "$round" $mark
  t0=$(now); "$FERRY_BIN" migrate --source "$SRC" --target "$TGT_ADMIN/d$round" --listen off >>"$OUT/direct-$round.log" 2>&1 & FERRY_PID=$!
  wait_row "d$round" "SELECT EXISTS (SELECT 1 FROM public.bench_mark WHERE n = $mark)" "$OUT/direct-$round.log" "$FERRY_PID"
  t1=$(now); stop_all
  s=$(elapsed "$t0" "$t1"); best_max direct "$(rate "$BACKLOG_TXNS" "$s")"; log "  direct: $BACKLOG_TXNS transactions in $s s"
  t0=$(now); capture "$round"; apply "$round"
  wait_row "k$round" "SELECT EXISTS (SELECT 1 FROM sbtest.bench_mark WHERE n = $mark)" "$OUT/apply-$round.log" "$CAP_PID $APPLY_PID"
  t1=$(now); stop_all
  s=$(elapsed "$t0" "$t1"); best_max kafka "$(rate "$BACKLOG_TXNS" "$s")"; log "  through Kafka: $BACKLOG_TXNS transactions in $s s"
  # A second backlog: capture alone into the broker, then apply alone out of it.
  mark=$((round * 10 + 2)); backlog "$round" $mark
  read -r end_file end_pos _ < <(my -N -e "SHOW MASTER STATUS")
  t0=$(now); capture "$round"
  # Until the capture records a position past the backlog (and its marker): every event before
  # it acknowledged by the broker, as the slot's confirmed position for PostgreSQL (written at
  # most once a second).
  python3 "$REPO/bench/kafka_wait.py" "$KAFKA" "p$round.ferry.capture" "$end_file" "$end_pos" --position
  t1=$(now); stop_all
  s=$(elapsed "$t0" "$t1"); best_max capture "$(rate "$BACKLOG_TXNS" "$s")"; log "  capture alone: $BACKLOG_TXNS transactions in $s s"
  t0=$(now); apply "$round"
  wait_row "k$round" "SELECT EXISTS (SELECT 1 FROM sbtest.bench_mark WHERE n = $mark)" "$OUT/apply-$round.log" "$APPLY_PID"
  t1=$(now); stop_all
  s=$(elapsed "$t0" "$t1"); best_max apply "$(rate "$BACKLOG_TXNS" "$s")"; log "  apply alone: $BACKLOG_TXNS transactions in $s s"
  # Both targets equal the source, table by table (row count and sum(k)).
  for i in $(seq 1 "$TABLES"); do
    a=$(my -N -e "SELECT COUNT(*), SUM(k) FROM sbtest.sbtest$i" | tr '\t' ' ')
    b=$(pg "k$round" "SELECT count(*) || ' ' || sum(k) FROM sbtest.sbtest$i")
    [ "$a" = "$b" ] || { log "sbtest$i differs through Kafka: source $a, target $b"; exit 1; }
  done
done

printf '\n%-52s %14s\n' "sysbench write-only backlog, $BACKLOG_S s x $THREADS threads (best of $ROUNDS)" "transactions/s"
printf '%-52s %14s\n' "direct CDC (ferry migrate)" "${BEST[direct]}"
printf '%-52s %14s  (%sx direct)\n' "through Kafka (capture + apply together)" "${BEST[kafka]}" "$(awk -v a="${BEST[kafka]}" -v b="${BEST[direct]}" 'BEGIN { printf "%.2f", a / b }')"
printf '%-52s %14s\n' "capture alone (binlog to broker)" "${BEST[capture]}"
printf '%-52s %14s\n' "apply alone (broker to target)" "${BEST[apply]}"
