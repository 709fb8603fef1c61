# Shared setup of the benchmarks that compare two variants of one PostgreSQL-to-PostgreSQL
# migration on the same pair of clusters, in the same run (bench/builds.sh,
# bench/least_privilege.sh, bench/tls.sh), and of the MariaDB-to-PostgreSQL ones
# (bench/mysql_apply.sh, bench/mysql_rollback.sh: mariadb_bench). Sourced, not run:
#
#   . "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
#
# It sets REPO, PG_BIN (on PATH), PW and PGPASSWORD, and production durability for the clusters
# pg.sh starts (FERRY_PG_DURABLE=1: fsync, synchronous_commit, full_page_writes on). A script
# then defines `url SIDE MODE` (the source's or target's URL for one variant) and uses the
# helpers below; they read FERRY_BIN, OUT, SRC_ADMIN, TGT_ADMIN and BACKLOG_S.
set -euo pipefail
export FERRY_PG_DURABLE=${FERRY_PG_DURABLE:-1}
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PG_BIN=${FERRY_PG_BIN:-/usr/lib/postgresql/15/bin}
export PATH="$PG_BIN:$PATH"
PW=${FERRY_PG_PASSWORD:-ferry-test-pw}
export PGPASSWORD=$PW

now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b - a }'; }
# A path as given when absolute, else relative to the repository.
abs() { case "$1" in /*) echo "$1" ;; *) echo "$REPO/$1" ;; esac; }

# bench_out NAME TAG: the log directory bench/out/NAME-<UTC timestamp> (OUT), and TAG in front
# of every `log` line.
bench_out() {
  STAMP=$(date -u +%Y%m%dT%H%M%SZ)
  OUT=$REPO/bench/out/$1-$STAMP
  mkdir -p "$OUT"
  LOG_TAG=$2
}
log() { printf '[%s %s] %s\n' "$LOG_TAG" "$(date +%H:%M:%S)" "$*" >&2; }

# FERRY_BIN (default target/release/ferry, relative to the repository), which must exist.
ferry_bin() {
  FERRY_BIN=$(abs "${FERRY_BIN:-target/release/ferry}")
  [ -x "$FERRY_BIN" ] || { echo "build Ferry first: cargo build --release" >&2; exit 1; }
}

# bench_clusters SRC_NAME SRC_PORT TGT_NAME TGT_PORT: removes clusters of these names left by an
# earlier run, sets SRC_PORT, TGT_PORT, SRC_ADMIN and TGT_ADMIN (superuser URLs without a
# database), and on exit stops the `ferry migrate` the bench runs (FERRY_PID) and destroys the
# clusters (kept with BENCH_KEEP=1). The script starts them with scripts/pg.sh.
bench_clusters() {
  BENCH_CLUSTERS=("$1" "$3")
  SRC_PORT=$2 TGT_PORT=$4
  for c in "${BENCH_CLUSTERS[@]}"; do "$REPO/scripts/pg.sh" destroy "$c" >/dev/null 2>&1 || true; done
  trap bench_cleanup EXIT
  SRC_ADMIN="postgres://postgres@127.0.0.1:$SRC_PORT"
  TGT_ADMIN="postgres://postgres@127.0.0.1:$TGT_PORT"
}
FERRY_PID=
bench_cleanup() {
  if [ -n "$FERRY_PID" ]; then kill -TERM "$FERRY_PID" 2>/dev/null || true; fi
  if [ "${BENCH_KEEP:-0}" != 1 ]; then
    for c in "${BENCH_CLUSTERS[@]}"; do "$REPO/scripts/pg.sh" destroy "$c" >/dev/null 2>&1 || true; done
  fi
}

# mariadb_bench NAME MY_PORT PG_PORT POOL: the servers of a MariaDB-to-PostgreSQL bench, fresh
# (clusters of these names left by an earlier run removed): MariaDB NAME on MY_PORT (binlog ROW
# with the FULL image and metadata, innodb_flush_log_at_trx_commit=1, sync_binlog=1, buffer pool
# POOL) and PostgreSQL NAME-tgt on PG_PORT with durability on (require_durability). Sets
# TGT_ADMIN (and SRC_ADMIN, the same cluster, for require_durability); `my` is the mariadb
# client as root on MY_PORT. On exit it stops the `ferry migrate` the bench runs (FERRY_PID) and
# destroys both servers (kept with BENCH_KEEP=1).
mariadb_bench() {
  MARIADB_BENCH=$1
  trap mariadb_bench_cleanup EXIT
  "$REPO/scripts/mysql.sh" destroy "$1" >/dev/null 2>&1 || true
  "$REPO/scripts/pg.sh" destroy "$1-tgt" >/dev/null 2>&1 || true
  log "starting MariaDB on $2 and PostgreSQL on $3"
  "$REPO/scripts/mysql.sh" start "$1" "$2" --log-bin=binlog --binlog-format=ROW --binlog-row-image=FULL \
    --binlog-row-metadata=FULL --server-id=1 --innodb-buffer-pool-size="$4" \
    --innodb-flush-log-at-trx-commit=1 --sync-binlog=1
  "$REPO/scripts/pg.sh" start "$1-tgt" "$3" -c wal_level=logical
  TGT_ADMIN="postgres://postgres@127.0.0.1:$3"
  SRC_ADMIN=$TGT_ADMIN
  require_durability
}
mariadb_bench_cleanup() {
  if [ -n "$FERRY_PID" ]; then kill -TERM "$FERRY_PID" 2>/dev/null || true; wait "$FERRY_PID" 2>/dev/null || true; fi
  if [ "${BENCH_KEEP:-0}" != 1 ]; then
    "$REPO/scripts/mysql.sh" destroy "$MARIADB_BENCH" >/dev/null 2>&1 || true
    "$REPO/scripts/pg.sh" destroy "$MARIADB_BENCH-tgt" >/dev/null 2>&1 || true
  fi
}
my() { MYSQL_PWD=$PW mariadb --no-defaults -h127.0.0.1 -P"$MY_PORT" -uroot "$@"; }
# sysbench_my WORKLOAD ARGS...: a sysbench workload on the bench's MariaDB (MY_PORT, database
# sbtest, TABLES tables of TABLE_SIZE rows).
sysbench_my() {
  local workload=$1; shift
  sysbench "$workload" --db-driver=mysql --mysql-host=127.0.0.1 --mysql-port="$MY_PORT" --mysql-user=root \
    --mysql-password="$PW" --mysql-db=sbtest --tables="$TABLES" --table-size="$TABLE_SIZE" "$@"
}
# Stops every ferry process a bench started (FERRY_PID, CAP_PID, APPLY_PID: lists of pids).
stop_all() {
  for p in $FERRY_PID $CAP_PID $APPLY_PID; do kill -TERM "$p" 2>/dev/null || true; done
  for p in $FERRY_PID $CAP_PID $APPLY_PID; do wait "$p" 2>/dev/null || true; done
  FERRY_PID= CAP_PID= APPLY_PID=
}

# Refuses to measure unless both clusters run with fsync, synchronous_commit and
# full_page_writes on.
require_durability() {
  local c s
  for c in "$SRC_ADMIN" "$TGT_ADMIN"; do
    for s in fsync synchronous_commit full_page_writes; do
      [ "$(psql -X -At -d "$c/postgres" -c "SHOW $s")" = on ] || { echo "$s is off on $c: this bench measures with durability on" >&2; exit 1; }
    done
  done
}

# Database `bench` on the source (created by the script) filled by pgbench -i at SCALE, with a
# primary key on pgbench_history so that every table replicates updates and deletes.
pgbench_source() {
  log "pgbench -i -s $SCALE"
  pgbench -i -q -s "$SCALE" "$SRC_ADMIN/bench" >"$OUT/pgbench-init.log" 2>&1
  psql -X -q -d "$SRC_ADMIN/bench" -c "ALTER TABLE pgbench_history ADD COLUMN id bigserial PRIMARY KEY"
}

# The phase of the migration on target database t_MODE.
phase() { psql -X -At -d "$TGT_ADMIN/t_$1" -c "SELECT phase FROM ferry.migrations" 2>/dev/null || true; }

declare -A BEST
best() { # key value: keep the smallest
  local k=$1 v=$2 cur=${BEST[$1]:-}
  if [ -z "$cur" ] || awk -v a="$v" -v b="$cur" 'BEGIN{exit !(a<b)}'; then BEST[$k]=$v; fi
}
best_max() { # key value: keep the largest
  local k=$1 v=$2 cur=${BEST[$1]:-}
  if [ -z "$cur" ] || awk -v a="$v" -v b="$cur" 'BEGIN{exit !(a>b)}'; then BEST[$k]=$v; fi
}
# busy: CPU-seconds the whole machine has spent busy since boot (every core; idle and iowait
# left out), from /proc/stat. Two readings around a step give what the step cost the machine,
# whichever processes (servers, broker, Ferry) spent it.
busy() { awk -v hz="$(getconf CLK_TCK)" '/^cpu / { printf "%.2f", ($2 + $3 + $4 + $7 + $8 + $9) / hz; exit }' /proc/stat; }
pct() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%+.1f%%", (b/a-1)*100 }'; }

# bench_full_load MODE ROUND ID LABEL: times the full load of migration ID (FERRY_BIN, `url`
# MODE), from its start until the migration reaches change capture (best of load_MODE), then
# stops it.
bench_full_load() {
  local mode=$1 round=$2 id=$3 t0 t1
  log "$4: full load"
  t0=$(now)
  "$FERRY_BIN" migrate --source "$(url src "$mode")" --target "$(url tgt "$mode")" --jobs 2 --migration-id "$id" \
    --listen off >"$OUT/load-$mode-$round.log" 2>&1 &
  FERRY_PID=$!
  until [ "$(phase "$mode")" = cdc ]; do
    kill -0 $FERRY_PID 2>/dev/null || { log "ferry exited during the load"; tail "$OUT/load-$mode-$round.log" >&2; exit 1; }
    sleep 0.2
  done
  t1=$(now)
  best "load_$mode" "$(elapsed "$t0" "$t1")"
  bench_stop
  # The source grows with every backlog, so later loads copy more rows: compare rates too
  # (the copy's own rows per second, from its summary), kept negated so `best` keeps the largest.
  local rate
  rate=$(awk '/total \(this run\)/ { gsub(",", "", $NF); print $NF }' "$OUT/load-$mode-$round.log")
  [ -z "$rate" ] || best "loadrate_$mode" "-$rate"
}

# bench_backlog MODE ROUND ID LABEL: a CDC backlog written while Ferry is stopped (BACKLOG_S
# seconds of pgbench, 4 clients), then BACKLOG_END, the source's WAL position after it, and
# BACKLOG_BYTES, the WAL the slot of migration ID has not confirmed up to there.
bench_backlog() {
  local mode=$1 round=$2 id=$3
  log "$4: backlog of $BACKLOG_S s of pgbench"
  pgbench -n -c 4 -j 2 -T "$BACKLOG_S" "$SRC_ADMIN/bench" >"$OUT/backlog-$mode-$round.log" 2>&1
  BACKLOG_END=$(psql -X -At -d "$SRC_ADMIN/bench" -c "SELECT pg_current_wal_lsn()")
  BACKLOG_BYTES=$(psql -X -At -d "$SRC_ADMIN/bench" -c "SELECT pg_wal_lsn_diff('$BACKLOG_END', confirmed_flush_lsn) FROM pg_replication_slots WHERE slot_name = 'ferry_$id'")
}

# bench_caught_up ID LOGFILE: waits until the slot of migration ID has confirmed BACKLOG_END,
# while the `ferry migrate` FERRY_PID runs (its log in LOGFILE).
bench_caught_up() {
  until [ "$(psql -X -At -d "$SRC_ADMIN/bench" -c "SELECT confirmed_flush_lsn >= '$BACKLOG_END' FROM pg_replication_slots WHERE slot_name = 'ferry_$1'")" = t ]; do
    kill -0 $FERRY_PID 2>/dev/null || { log "ferry exited during the catch-up"; tail "$2" >&2; exit 1; }
    sleep 0.1
  done
}

# Stops the running `ferry migrate` (FERRY_PID) and waits for it.
bench_stop() {
  kill -TERM $FERRY_PID
  wait $FERRY_PID || true
  FERRY_PID=
}

# bench_catchup MODE ROUND ID: restarts migration ID after bench_backlog and times its catch-up
# (best of catchup_MODE, and of its rates rate_MODE in MiB of WAL per second and tps_MODE in
# pgbench transactions per second, kept negated so that `best` keeps the largest), then stops it.
bench_catchup() {
  local mode=$1 round=$2 id=$3 t0 t1 rate txns tps
  t0=$(now)
  "$FERRY_BIN" migrate --source "$(url src "$mode")" --target "$(url tgt "$mode")" --jobs 2 --migration-id "$id" \
    --listen off >"$OUT/cdc-$mode-$round.log" 2>&1 &
  FERRY_PID=$!
  bench_caught_up "$id" "$OUT/cdc-$mode-$round.log"
  t1=$(now)
  best "catchup_$mode" "$(elapsed "$t0" "$t1")"
  # The backlog is 30 s of pgbench, so its size varies from run to run: compare rates too.
  rate=$(awk -v b="$BACKLOG_BYTES" -v s="$(elapsed "$t0" "$t1")" 'BEGIN { printf "%.1f", b / 1048576 / s }')
  best "rate_$mode" "-$rate"
  # WAL bytes grow with full-page images when a checkpoint falls in the backlog, without more
  # changes to apply: the transactions pgbench committed are the work, whatever the WAL size.
  txns=$(awk '/number of transactions actually processed/ { print $NF }' "$OUT/backlog-$mode-$round.log")
  tps=$(awk -v n="$txns" -v s="$(elapsed "$t0" "$t1")" 'BEGIN { printf "%.0f", n / s }')
  best "tps_$mode" "-$tps"
  log "  backlog $((BACKLOG_BYTES / 1024 / 1024)) MiB ($txns pgbench transactions) caught up in $(elapsed "$t0" "$t1") s ($rate MiB/s, $tps transactions/s)"
  bench_stop
}

# bench_steady MODE ROUND ID: migration ID again once caught up after bench_catchup, with the
# probe's trigger on the target (table bench_probe: see pgbench_probe), under pgbench at
# STEADY_RATE transactions per second (4 clients) for STEADY_S seconds and a probe row every
# 100 ms; once the stream has caught up, every probe row's lag is added to $OUT/lag-MODE.txt.
bench_steady() {
  local mode=$1 round=$2 id=$3 pb
  "$FERRY_BIN" migrate --source "$(url src "$mode")" --target "$(url tgt "$mode")" --jobs 2 --migration-id "$id" \
    --listen off >"$OUT/steady-$mode-$round.log" 2>&1 &
  FERRY_PID=$!
  BACKLOG_END=$(psql -X -At -d "$SRC_ADMIN/bench" -c "SELECT pg_current_wal_insert_lsn()")
  bench_caught_up "$id" "$OUT/steady-$mode-$round.log"
  probe_target "$(url tgt "$mode")" public.bench_probe
  log "$4: steady state, pgbench -R $STEADY_RATE for $STEADY_S s, a probe row every 100 ms"
  pgbench -n -c 4 -j 2 -R "$STEADY_RATE" -T "$STEADY_S" "$SRC_ADMIN/bench" >"$OUT/steady-pgbench-$mode-$round.log" 2>&1 &
  pb=$!
  PROBE_SQL="INSERT INTO bench_probe DEFAULT VALUES;" probe_writes "$STEADY_S" | psql -X -q -d "$SRC_ADMIN/bench" >/dev/null
  wait $pb
  BACKLOG_END=$(psql -X -At -d "$SRC_ADMIN/bench" -c "SELECT pg_current_wal_insert_lsn()")
  bench_caught_up "$id" "$OUT/steady-$mode-$round.log"
  probe_lags "$(url tgt "$mode")" public.bench_probe p.t >>"$OUT/lag-$mode.txt"
  log "  lag so far (probes p50 p99 max s): $(lag_stats "$OUT/lag-$mode.txt")"
  bench_stop
}

# pgbench_probe: the probe table bench_steady writes, on the source database bench.
pgbench_probe() {
  psql -X -q -d "$SRC_ADMIN/bench" -c "CREATE TABLE bench_probe (id bigserial PRIMARY KEY, t timestamptz NOT NULL DEFAULT clock_timestamp())"
}

# lag_table FORMAT A B: steady-state lag of variants A and B (every probe of every round),
# printed with FORMAT (step, A, B, change).
lag_table() {
  local f=$1 na a50 a99 amax nb b50 b99 bmax
  read -r na a50 a99 amax < <(lag_stats "$OUT/lag-$2.txt")
  read -r nb b50 b99 bmax < <(lag_stats "$OUT/lag-$3.txt")
  printf "$f" "probes applied (steady state)" "$na" "$nb" ""
  printf "$f" "steady-state lag p50 (s)" "$a50" "$b50" "$(pct "$a50" "$b50")"
  printf "$f" "steady-state lag p99 (s)" "$a99" "$b99" "$(pct "$a99" "$b99")"
  printf "$f" "steady-state lag max (s)" "$amax" "$bmax" "$(pct "$amax" "$bmax")"
}

# catchup_table FORMAT A B: the rows of bench_full_load and bench_catchup, variant A against B,
# printed with FORMAT (step, A, B, change).
catchup_table() {
  local f=$1 a=$2 b=$3
  printf "$f" "full load (s, to change capture)" "${BEST[load_$a]}" "${BEST[load_$b]}" "$(pct "${BEST[load_$a]}" "${BEST[load_$b]}")"
  local la=${BEST[loadrate_$a]#-} lb=${BEST[loadrate_$b]#-}
  printf "$f" "full load copy rate (rows per s)" "$la" "$lb" "$(pct "$la" "$lb")"
  printf "$f" "CDC catch-up of a ${BACKLOG_S}s pgbench backlog (s)" "${BEST[catchup_$a]}" "${BEST[catchup_$b]}" "$(pct "${BEST[catchup_$a]}" "${BEST[catchup_$b]}")"
  local ra=${BEST[rate_$a]#-} rb=${BEST[rate_$b]#-}
  printf "$f" "CDC catch-up rate (MiB of WAL per s)" "$ra" "$rb" "$(pct "$ra" "$rb")"
  local ta=${BEST[tps_$a]#-} tb=${BEST[tps_$b]#-}
  printf "$f" "CDC catch-up rate (pgbench transactions per s)" "$ta" "$tb" "$(pct "$ta" "$tb")"
}

# Steady-state lag probes: probe_target, probe_writes, probe_lags, lag_stats.
. "$REPO/bench/probe.sh"
