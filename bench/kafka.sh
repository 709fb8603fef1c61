#!/usr/bin/env bash
# Through Kafka versus direct: the same pgbench backlog applied by `ferry migrate` (direct CDC),
# by `ferry capture` + `ferry apply` with a Kafka-protocol broker between them, and by `ferry
# migrate --via kafka://` (both legs in the migration's process), in the same run, on the same
# clusters; then capture alone (source to broker) and apply alone (broker to target) on a second
# backlog.
#
#   bench/kafka.sh
#
# Each round has its own broker (scripts/kafka.sh: tansu, in-memory storage), topic prefix and
# target databases. Both clusters run with production durability (fsync, synchronous_commit,
# full_page_writes on). Events are published without the schema part (schemas=false): tansu's
# in-memory storage stops serving a partition after about 70 MB (docs/kafka.md).
#
# Environment:
#   SCALE=1         pgbench scale (100,000 accounts per unit; keep the topics under tansu's limit)
#   ROUNDS=2        rounds; the table reports the best of each
#   BACKLOG_S=20    seconds of pgbench (4 clients) per backlog
#   FERRY_BIN=target/release/ferry
#   GROUP=1         also apply the topics from scratch with an apply group of one member and of
#                   two (`ferry apply --group`); needs python3 with confluent-kafka
#
# Beside each rate: the machine's CPU-seconds per 1,000 transactions for that step (Ferry's
# processes, the broker, PostgreSQL and pgbench's leftovers), from /proc: on a machine whose
# cores are all busy, the ratio of two ways' CPU bounds the ratio of their rates.
#
# Output: a table on stdout, logs in bench/out/kafka-<UTC timestamp>/.
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
SCALE=${SCALE:-1}
ROUNDS=${ROUNDS:-2}
BACKLOG_S=${BACKLOG_S:-20}
ferry_bin
bench_out kafka kafka-bench
bench_clusters kafka-src "${SRC_PORT:-55752}" kafka-tgt "${TGT_PORT:-55753}"
KAFKA_PORT=${KAFKA_PORT:-55754}
KAFKA_NAME=kafka-bench-broker
"$REPO/scripts/pg.sh" start kafka-src "$SRC_PORT" -c wal_level=logical >/dev/null
"$REPO/scripts/pg.sh" start kafka-tgt "$TGT_PORT" -c wal_level=logical >/dev/null
require_durability
psql -X -q -d "$SRC_ADMIN/postgres" -c "CREATE DATABASE bench"
pgbench_source
psql -X -q -d "$SRC_ADMIN/bench" -c "CREATE TABLE bench_mark (n int PRIMARY KEY)"
KAFKA=127.0.0.1:$KAFKA_PORT
CAP_PID= APPLY_PID=
trap 'stop_all; "$REPO/scripts/kafka.sh" stop $KAFKA_NAME; bench_cleanup' EXIT

wait_mark() { # DB N LOG PID: until the target database has mark N
  until [ "$(psql -X -At -d "$TGT_ADMIN/$1" -c "SELECT count(*) FROM bench_mark WHERE n = $2" 2>/dev/null)" = 1 ]; do
    for p in $4; do kill -0 "$p" 2>/dev/null || { log "a ferry process exited"; tail "$3" >&2; exit 1; }; done
    sleep 0.1
  done
}
backlog() { # ROUND N: pgbench, then mark N; BACKLOG_TXNS, BACKLOG_END
  log "round $1: backlog of $BACKLOG_S s of pgbench"
  pgbench -n -c 4 -j 2 -T "$BACKLOG_S" "$SRC_ADMIN/bench" >"$OUT/backlog-$1-$2.log" 2>&1
  psql -X -q -d "$SRC_ADMIN/bench" -c "INSERT INTO bench_mark VALUES ($2)"
  BACKLOG_END=$(psql -X -At -d "$SRC_ADMIN/bench" -c "SELECT pg_current_wal_lsn()")
  BACKLOG_TXNS=$(awk '/number of transactions actually processed/ { print $NF }' "$OUT/backlog-$1-$2.log")
}
rate() { awk -v n="$1" -v s="$2" 'BEGIN { printf "%.0f", n / s }'; }
capture() { "$FERRY_BIN" capture --source "$SRC_ADMIN/bench" --to "kafka://$KAFKA/p$1?schemas=false" >>"$OUT/capture-$1.log" 2>&1 & CAP_PID=$!; }
apply() { "$FERRY_BIN" apply --from "kafka://$KAFKA/p$1?schemas=false" --target "$TGT_ADMIN/k$1" >>"$OUT/apply-$1.log" 2>&1 & APPLY_PID=$!; }

# What each timed step cost the machine: mark0 and mark1 around it read the machine's busy
# CPU-seconds, the broker's, and (at mark1, before they stop) those of the Ferry processes
# started for the step. `cpu WAY` turns them into CPU-seconds per 1,000 backlog transactions
# (the least of the rounds is kept) and says how busy the cores were (1.00: all of them).
declare -A CPUK CPUSPLIT
CORES=$(nproc)
HZ=$(getconf CLK_TCK)
proc_cpu() { # PID...: user + system CPU-seconds of these processes
  local t=0 p
  for p in "$@"; do
    [ -r "/proc/$p/stat" ] || continue
    t=$(awk -v t="$t" -v hz="$HZ" '{ sub(/^.*\) /, ""); print t + ($12 + $13) / hz }' "/proc/$p/stat")
  done
  echo "$t"
}
broker_pid() { cat "${FERRY_CLUSTER_DIR:-$REPO/.ferry-test/clusters}/$KAFKA_NAME/broker.pid"; }
mark0() { t0=$(now); c0=$(busy); b0=$(proc_cpu "$(broker_pid)"); }
mark1() {
  t1=$(now); c1=$(busy); b1=$(proc_cpu "$(broker_pid)")
  # shellcheck disable=SC2086 # several PIDs
  f1=$(proc_cpu $FERRY_PID $CAP_PID $APPLY_PID)
}
cpu() {
  local per use split
  per=$(awk -v a="$c0" -v b="$c1" -v n="$BACKLOG_TXNS" 'BEGIN { printf "%.3f", (b - a) * 1000 / n }')
  use=$(awk -v a="$c0" -v b="$c1" -v s="$s" -v c="$CORES" 'BEGIN { printf "%.2f", (b - a) / s / c }')
  split=$(awk -v a="$c0" -v b="$c1" -v f="$f1" -v k0="$b0" -v k1="$b1" -v n="$BACKLOG_TXNS" \
    'BEGIN { k = k1 - k0; printf "Ferry %.3f, broker %.3f, PostgreSQL and the rest %.3f", f * 1000 / n, k * 1000 / n, (b - a - f - k) * 1000 / n }')
  local cur=${CPUK[$1]:-}
  if [ -z "$cur" ] || awk -v a="$per" -v b="$cur" 'BEGIN{exit !(a<b)}'; then CPUK[$1]=$per; CPUSPLIT[$1]=$split; fi
  CPU_NOTE=" ($per CPU-s per 1,000: $split; cores $use busy)"
}

for round in $(seq 1 "$ROUNDS"); do
  "$REPO/scripts/kafka.sh" stop $KAFKA_NAME 2>/dev/null || true
  FERRY_CLUSTER_DIR=${FERRY_CLUSTER_DIR:-$REPO/.ferry-test/clusters} "$REPO/scripts/kafka.sh" start $KAFKA_NAME "$KAFKA_PORT"
  # Direct: a migration, loaded and stopped.
  psql -X -q -d "$TGT_ADMIN/postgres" -c "CREATE DATABASE d$round" -c "CREATE DATABASE k$round" -c "CREATE DATABASE v$round"
  log "round $round: direct full load"
  "$FERRY_BIN" migrate --source "$SRC_ADMIN/bench" --target "$TGT_ADMIN/d$round" --jobs 2 --migration-id "d$round" --listen off \
    >>"$OUT/direct-$round.log" 2>&1 &
  FERRY_PID=$!
  until [ "$(psql -X -At -d "$TGT_ADMIN/d$round" -c "SELECT phase FROM ferry.migrations" 2>/dev/null)" = cdc ]; do sleep 0.2; done
  stop_all
  # A migration through Kafka: the same full load (direct), stopped once it streams.
  log "round $round: full load of a migration --via kafka"
  via() { "$FERRY_BIN" migrate --source "$SRC_ADMIN/bench" --target "$TGT_ADMIN/v$round" --jobs 2 --migration-id "v$round" --listen off \
    --via "kafka://$KAFKA/v$round?schemas=false" >>"$OUT/via-$round.log" 2>&1 & FERRY_PID=$!; }
  via
  until [ "$(psql -X -At -d "$TGT_ADMIN/v$round" -c "SELECT phase FROM ferry.migrations" 2>/dev/null)" = cdc ]; do sleep 0.2; done
  sleep 2
  stop_all
  # Through Kafka: the schema, the snapshot published and applied, both stopped.
  log "round $round: snapshot through Kafka"
  pg_dump --schema-only -d "$SRC_ADMIN/bench" | psql -X -q -d "$TGT_ADMIN/k$round" >/dev/null
  capture "$round"
  until grep -q "snapshot published" "$OUT/capture-$round.log"; do kill -0 $CAP_PID || exit 1; sleep 0.2; done
  apply "$round"
  until [ "$(psql -X -At -d "$TGT_ADMIN/k$round" -c "SELECT phase FROM ferry.migrations" 2>/dev/null)" = cdc ]; do kill -0 $APPLY_PID || exit 1; sleep 0.2; done
  stop_all
  # The same backlog, direct and through Kafka (capture and apply running together).
  backlog "$round" $((round * 10 + 1))
  mark=$((round * 10 + 1))
  mark0; "$FERRY_BIN" migrate --source "$SRC_ADMIN/bench" --target "$TGT_ADMIN/d$round" --jobs 2 --migration-id "d$round" --listen off \
    >>"$OUT/direct-$round.log" 2>&1 & FERRY_PID=$!
  wait_mark "d$round" $mark "$OUT/direct-$round.log" "$FERRY_PID"; mark1; stop_all
  s=$(elapsed "$t0" "$t1"); best_max direct "$(rate "$BACKLOG_TXNS" "$s")"; cpu direct; log "  direct: $BACKLOG_TXNS transactions in $s s$CPU_NOTE"
  mark0; capture "$round"; apply "$round"
  wait_mark "k$round" $mark "$OUT/apply-$round.log" "$CAP_PID $APPLY_PID"; mark1; stop_all
  s=$(elapsed "$t0" "$t1"); best_max kafka "$(rate "$BACKLOG_TXNS" "$s")"; cpu kafka; log "  through Kafka: $BACKLOG_TXNS transactions in $s s$CPU_NOTE"
  mark0; via
  wait_mark "v$round" $mark "$OUT/via-$round.log" "$FERRY_PID"; mark1; stop_all
  s=$(elapsed "$t0" "$t1"); best_max via "$(rate "$BACKLOG_TXNS" "$s")"; cpu via; log "  migrate --via kafka: $BACKLOG_TXNS transactions in $s s$CPU_NOTE"
  # A second backlog: capture alone into the broker, then apply alone out of it.
  backlog "$round" $((round * 10 + 2))
  mark=$((round * 10 + 2))
  slot=ferry_capture_p$round
  mark0; capture "$round"
  until [ "$(psql -X -At -d "$SRC_ADMIN/bench" -c "SELECT confirmed_flush_lsn >= '$BACKLOG_END' FROM pg_replication_slots WHERE slot_name = '$slot'")" = t ]; do
    kill -0 $CAP_PID || exit 1; sleep 0.1
  done
  mark1; stop_all
  s=$(elapsed "$t0" "$t1"); best_max capture "$(rate "$BACKLOG_TXNS" "$s")"; cpu capture; log "  capture alone: $BACKLOG_TXNS transactions in $s s$CPU_NOTE"
  mark0; apply "$round"
  wait_mark "k$round" $mark "$OUT/apply-$round.log" "$APPLY_PID"; mark1; stop_all
  s=$(elapsed "$t0" "$t1"); best_max apply "$(rate "$BACKLOG_TXNS" "$s")"; cpu apply; log "  apply alone: $BACKLOG_TXNS transactions in $s s$CPU_NOTE"
  # Scale-out: everything in the topics (snapshot and both backlogs) applied from scratch by an
  # apply group of one member, then of two, each into an empty copy of the schema.
  if [ "${GROUP:-1}" = 1 ] && python3 -c "import confluent_kafka" 2>/dev/null; then
    records=$(python3 "$REPO/bench/kafka_highs.py" "$KAFKA" "p$round")
    for members in 1 2; do
      db=g${members}_$round
      psql -X -q -d "$TGT_ADMIN/postgres" -c "CREATE DATABASE $db"
      pg_dump --schema-only -d "$SRC_ADMIN/bench" | psql -X -q -d "$TGT_ADMIN/$db" >/dev/null
      t0=$(now)
      for m in $(seq 1 "$members"); do
        "$FERRY_BIN" apply --from "kafka://$KAFKA/p$round?schemas=false" --target "$TGT_ADMIN/$db" --group "$db" --member "m$m" \
          >>"$OUT/group-$db-m$m.log" 2>&1 &
        APPLY_PID="$APPLY_PID $!"
      done
      until [ "$(psql -X -At -d "$TGT_ADMIN/$db" -c "SELECT sum(next_offset) >= $records FROM ferry.kafka_offsets" 2>/dev/null)" = t ]; do
        for p in $APPLY_PID; do kill -0 "$p" 2>/dev/null || { log "a group member exited"; tail "$OUT"/group-"$db"-m*.log >&2; exit 1; }; done
        sleep 0.1
      done
      t1=$(now); stop_all
      s=$(elapsed "$t0" "$t1"); best_max "group$members" "$(rate "$records" "$s")"
      log "  apply group of $members: $records records in $s s"
    done
  elif [ "${GROUP:-1}" = 1 ]; then
    log "  (apply groups skipped: python3 with confluent-kafka is needed to read the topics' high watermarks)"
  fi
  "$FERRY_BIN" capture --source "$SRC_ADMIN/bench" --to "kafka://$KAFKA/p$round" --drop >>"$OUT/capture-$round.log" 2>&1
  for s in "ferry_d$round" "ferry_v$round"; do
    psql -X -q -d "$SRC_ADMIN/bench" -c "SELECT pg_drop_replication_slot('$s') FROM pg_replication_slots WHERE slot_name = '$s'" >/dev/null
  done
done

printf '\n%-52s %14s\n' "pgbench backlog, $BACKLOG_S s x 4 clients, scale $SCALE (best of $ROUNDS)" "transactions/s"
printf '%-52s %14s\n' "direct CDC (ferry migrate)" "${BEST[direct]}"
printf '%-52s %14s  (%sx direct)\n' "through Kafka (capture + apply together)" "${BEST[kafka]}" "$(awk -v a="${BEST[kafka]}" -v b="${BEST[direct]}" 'BEGIN { printf "%.2f", a / b }')"
printf '%-52s %14s  (%sx direct)\n' "ferry migrate --via kafka (both legs, one process)" "${BEST[via]}" "$(awk -v a="${BEST[via]}" -v b="${BEST[direct]}" 'BEGIN { printf "%.2f", a / b }')"
printf '%-52s %14s\n' "capture alone (source to broker)" "${BEST[capture]}"
printf '%-52s %14s\n' "apply alone (broker to target)" "${BEST[apply]}"
printf '\n%-52s %14s\n' "machine CPU per 1,000 transactions (least of $ROUNDS)" "CPU-seconds"
for w in direct kafka via capture apply; do printf '%-52s %14s  (%s)\n' "$w" "${CPUK[$w]}" "${CPUSPLIT[$w]}"; done
printf '%-52s %14s\n' "through Kafka's bound on $CORES saturated cores" \
  "$(awk -v a="${CPUK[direct]}" -v b="${CPUK[kafka]}" 'BEGIN { printf "%.2fx direct", a / b }')"
if [ -n "${BEST[group1]:-}" ]; then
  printf '%-52s %14s\n' "apply group, 1 member (all records from scratch)" "${BEST[group1]} records/s"
  printf '%-52s %14s  (%sx one member)\n' "apply group, 2 members (same records)" "${BEST[group2]} records/s" \
    "$(awk -v a="${BEST[group2]}" -v b="${BEST[group1]}" 'BEGIN { printf "%.2f", a / b }')"
fi
