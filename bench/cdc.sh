#!/usr/bin/env bash
# Change-data-capture benchmark: Ferry's change apply against PostgreSQL's native logical
# replication (CREATE SUBSCRIPTION), same source workload, same machine, same run.
#
#   bench/cdc.sh            (or bench/run.sh, or BENCH_SUITES=cdc bench/run.sh)
#
# Setup (not timed): source database "bench" from pgbench -i; target databases ferry_t (Ferry's
# full load, which also creates its slot and publication ferry_bench) and native_t (pg_dump of
# the schema and the data, then publication native_pub, slot native_sub and a disabled
# subscription). No writes happen in between, so both slots start from the same data state.
#
# Phases:
#   B  native steady state: subscription enabled, pgbench at full rate for DURATION s,
#      replication lag sampled every second on the source (pg_stat_replication).
#   C  Ferry catch-up: Ferry starts with phase B's whole backlog in its slot; time until its
#      slot has confirmed the source's WAL position taken before the start.
#   D  Ferry steady state: pgbench again with Ferry streaming, lag sampled; then SIGTERM.
#   E  native catch-up: the subscription is enabled with phase D's backlog in its slot.
#   F  correctness: every pgbench table (count and md5 of all rows) in ferry_t and native_t
#      against the source.
#
# Environment:
#   SCALE=10          pgbench scale of the source (100,000 pgbench_accounts rows per unit)
#   DURATION=60       seconds of each pgbench run (phases B and D)
#   CLIENTS=4 THREADS=2  pgbench -c / -j
#   BENCH_KEEP=1      leave the cdc-src/cdc-tgt clusters running at the end (the slots,
#                     publications and the subscription are dropped either way)
#   BENCH_TIMEOUT=1800  seconds before a catch-up or drain wait is abandoned as FAILED
#   FERRY_BIN=target/release/ferry
#
# Output: a table on stdout (progress goes to stderr), the same as JSON in
# bench/out/cdc-<UTC timestamp>.json, and the logs (pgbench, Ferry, lag samples) in
# bench/out/cdc-<UTC timestamp>.logs/.
set -euo pipefail
# Production durability (fsync, synchronous_commit, full_page_writes on) unless asked otherwise:
# a figure measured with them off says nothing about production. FERRY_PG_DURABLE=0 for the fast
# settings the tests use.
export FERRY_PG_DURABLE=${FERRY_PG_DURABLE:-1}

SELF=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/$(basename "${BASH_SOURCE[0]}")
REPO=$(cd "$(dirname "$SELF")/.." && pwd)
PG_BIN=${FERRY_PG_BIN:-/usr/lib/postgresql/15/bin}
# Use the client tools of the server's major version, whatever /usr/bin's wrappers would pick.
export PATH="$PG_BIN:$PATH"

SCALE=${SCALE:-10}
DURATION=${DURATION:-60}
CLIENTS=${CLIENTS:-4}
THREADS=${THREADS:-2}
BENCH_TIMEOUT=${BENCH_TIMEOUT:-1800}
FERRY_BIN=${FERRY_BIN:-target/release/ferry}
case "$FERRY_BIN" in /*) ;; *) FERRY_BIN=$REPO/$FERRY_BIN ;; esac

SRC_CLUSTER=cdc-src SRC_PORT=55632
TGT_CLUSTER=cdc-tgt TGT_PORT=55633
TABLES=(pgbench_accounts pgbench_branches pgbench_tellers pgbench_history)
MIGRATION_ID=bench
FERRY_SLOT=ferry_bench # Ferry names its slot and publication after the migration id
NATIVE_SLOT=native_sub
NATIVE_PUB=native_pub
WAIT_APP=ferry-bench-wait # application_name of this script's waiting sessions

log() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", b - a }'; }
# Admin queries: no psqlrc, stop at the first error, bare output.
q() {
  local url=$1
  shift
  PGOPTIONS="-c client_min_messages=warning" psql -X -q -At -v ON_ERROR_STOP=1 -d "$url" "$@"
}
# pg.sh's URL points at database "postgres".
db_url() { local u; u=$("$REPO/scripts/pg.sh" url "$1"); echo "${u%/*}/$2"; }
# Every log excerpt we print goes through this, so passwords never reach the terminal.
redact() { sed "s/${FERRY_PG_PASSWORD:-ferry-test-pw}/****/g"; }
strip_ansi() { sed 's/\x1b\[[0-9;]*m//g'; }
record() { printf '%s=%s\n' "$1" "$2" >>"$KV"; }
die() {
  log "FAILED: $*"
  exit 1
}

# Blocks (server side, one connection, checked every 100 ms) until the SQL condition is true.
# Fails after $3 seconds (statement_timeout).
wait_until() { # url condition timeout-seconds
  PGAPPNAME=$WAIT_APP q "$1" -c "set statement_timeout = '${3}s'" -c "do \$\$ begin
      loop
        exit when coalesce(($2), false);
        perform pg_sleep(0.1);
      end loop;
    end \$\$"
}
slot_reached() { # slot lsn
  echo "select confirmed_flush_lsn >= '$2'::pg_lsn from pg_replication_slots where slot_name = '$1'"
}
slot_active() { echo "select active from pg_replication_slots where slot_name = '$1'"; }
slot_inactive() { echo "select not active from pg_replication_slots where slot_name = '$1'"; }
# The insert position, not pg_current_wal_lsn() (the write position): the clusters run with
# synchronous_commit=off, so the last commits of a pgbench run can sit in WAL buffers beyond the
# write position for up to wal_writer_delay. Waiting for the write position let a fast consumer
# be stopped before those commits reached it (seen once: Ferry drained in 0.12 s and the target
# lacked the last 3 transactions, which were still in its slot, not lost).
current_lsn() { q "$SRC" -c "select pg_current_wal_insert_lsn()"; }

# ---------------------------------------------------------------------------------------
# Setup.
# ---------------------------------------------------------------------------------------

ensure_cluster() { # name port
  # A cluster kept with BENCH_KEEP=1 is still running; pg_ctl start would refuse it.
  if pg_isready -q -h 127.0.0.1 -p "$2"; then return; fi
  "$REPO/scripts/pg.sh" start "$1" "$2" -c wal_level=logical
}

have_db() { [ -n "$(q "$TGT_ADMIN" -c "select 1 from pg_database where datname = '$1'")" ]; }

# Removes what a run leaves on the clusters: the subscription (without touching the source's
# slot, which is dropped below), the slots and the publications. Safe to run at any point.
drop_replication() {
  if have_db native_t; then
    q "$TGT_NATIVE" -c "do \$\$ begin
        if exists (select 1 from pg_subscription where subname = 'native_sub') then
          alter subscription native_sub disable;
          alter subscription native_sub set (slot_name = none);
          drop subscription native_sub;
        end if;
      end \$\$" || true
  fi
  if [ -n "$(q "$SRC_ADMIN" -c "select 1 from pg_database where datname = 'bench'")" ]; then
    q "$SRC_ADMIN" -c "select pg_terminate_backend(active_pid) from pg_replication_slots
                       where slot_name in ('$FERRY_SLOT', '$NATIVE_SLOT') and active_pid is not null" >/dev/null || true
    wait_until "$SRC_ADMIN" "select not exists (select 1 from pg_replication_slots
                             where slot_name in ('$FERRY_SLOT', '$NATIVE_SLOT') and active)" 30 || true
    q "$SRC_ADMIN" -c "select pg_drop_replication_slot(slot_name) from pg_replication_slots
                       where slot_name in ('$FERRY_SLOT', '$NATIVE_SLOT')" >/dev/null || true
    q "$SRC" -c "drop publication if exists $NATIVE_PUB" -c "drop publication if exists $FERRY_SLOT" || true
  fi
}

stop_pid() { # pid seconds: SIGTERM, then SIGKILL after the grace period
  local pid=$1 i
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < ${2:-30} * 10; i++)); do
    kill -0 "$pid" 2>/dev/null || return 0
    sleep 0.1
  done
  kill -KILL "$pid" 2>/dev/null || true
}

# A background wait_until: its psql may outlive the subshell, so end its server session too.
stop_poller() {
  [ -n "${POLL_PID:-}" ] || return 0
  if [ -n "${SRC_ADMIN:-}" ]; then
    q "$SRC_ADMIN" -c "select pg_terminate_backend(pid) from pg_stat_activity
                       where application_name = '$WAIT_APP' and pid <> pg_backend_pid()" >/dev/null 2>&1 || true
  fi
  stop_pid "$POLL_PID" 5
  wait "$POLL_PID" 2>/dev/null || true
  POLL_PID=
}

cleanup() {
  local rc=$?
  trap - EXIT
  set +e
  stop_pid "${SAMPLER_PID:-}" 5
  stop_poller
  stop_pid "${FERRY_PID:-}" 30
  if [ -n "${SRC_ADMIN:-}" ]; then
    log "cleanup: dropping the subscription, the slots and the publications"
    drop_replication
  fi
  if [ "${BENCH_KEEP:-0}" = 1 ]; then
    log "BENCH_KEEP=1: leaving $SRC_CLUSTER and $TGT_CLUSTER running"
  else
    "$REPO/scripts/pg.sh" stop "$SRC_CLUSTER" || true
    "$REPO/scripts/pg.sh" stop "$TGT_CLUSTER" || true
  fi
  exit "$rc"
}

setup() {
  local t0 t1
  drop_replication
  q "$SRC_ADMIN" -c "drop database if exists bench with (force)" -c "create database bench"
  log "source: pgbench -i -s $SCALE"
  pgbench -i -s "$SCALE" -q "$SRC" >"$LOG_DIR/pgbench-init.log" 2>&1 ||
    { redact <"$LOG_DIR/pgbench-init.log" >&2; die "pgbench -i"; }
  # pgbench_history has no primary key: Ferry's check blocks until it has a replica identity
  # (published without one, an UPDATE or DELETE on it would fail on the source). pgbench only
  # inserts into it, so FULL costs nothing, and both sides replicate the same table.
  q "$SRC" -c "alter table pgbench_history replica identity full"

  q "$TGT_ADMIN" -c "drop database if exists ferry_t with (force)" -c "drop database if exists native_t with (force)"
  # Origins live in a shared catalog, so they survive the database drop.
  q "$TGT_ADMIN" -c "select pg_replication_origin_drop(roname) from pg_replication_origin" >/dev/null
  q "$TGT_ADMIN" -c "create database ferry_t" -c "create database native_t"

  # Nothing but this script may write to the source from here on.
  local others
  others=$(q "$SRC_ADMIN" -c "select count(*) from pg_stat_activity where datname = 'bench'
                              and backend_type = 'client backend' and pid <> pg_backend_pid()")
  [ "$others" = 0 ] || die "$others other sessions are connected to the source database"

  log "ferry: full load into ferry_t (creates slot and publication $FERRY_SLOT)"
  t0=$(now)
  NO_COLOR=1 "$FERRY_BIN" migrate --source "$SRC" --target "$TGT_FERRY" --migration-id "$MIGRATION_ID" \
    --stop-after full-load >"$LOG_DIR/ferry-fullload.log" 2>&1 ||
    { tail -n 20 "$LOG_DIR/ferry-fullload.log" | redact >&2; die "ferry full load, see $LOG_DIR/ferry-fullload.log"; }
  t1=$(now)
  record setup_ferry_fullload_s "$(elapsed "$t0" "$t1")"
  [ "$(q "$SRC" -c "select count(*) from pg_replication_slots where slot_name = '$FERRY_SLOT'")" = 1 ] ||
    die "ferry's full load did not leave a slot named $FERRY_SLOT"

  log "native: pg_dump schema and data into native_t"
  t0=$(now)
  pg_dump --schema-only --no-publications --no-subscriptions "$SRC" |
    psql -X -q -v ON_ERROR_STOP=1 -d "$TGT_NATIVE" >/dev/null
  pg_dump --data-only "$SRC" | psql -X -q -v ON_ERROR_STOP=1 -d "$TGT_NATIVE" >/dev/null
  t1=$(now)
  record setup_native_copy_s "$(elapsed "$t0" "$t1")"
  q "$SRC" -c "create publication $NATIVE_PUB for all tables"
  q "$SRC" -c "select pg_create_logical_replication_slot('$NATIVE_SLOT', 'pgoutput')" >/dev/null
  local password=${FERRY_PG_PASSWORD:-ferry-test-pw}
  q "$TGT_NATIVE" -c "create subscription native_sub
      connection 'host=127.0.0.1 port=$SRC_PORT dbname=bench user=postgres password=$password'
      publication $NATIVE_PUB
      with (copy_data = false, create_slot = false, slot_name = '$NATIVE_SLOT', enabled = false)" 2>&1 |
    grep -v '^$' | redact >&2 || true
  [ "$(q "$TGT_NATIVE" -c "select count(*) from pg_subscription where subname = 'native_sub'")" = 1 ] ||
    die "create subscription failed"
  # Same conditions for every phase: the initial load's dirty buffers out of the way.
  checkpoint_all
}

checkpoint_all() {
  q "$SRC_ADMIN" -c checkpoint
  q "$TGT_ADMIN" -c checkpoint
  sync
}

# ---------------------------------------------------------------------------------------
# Measurements.
# ---------------------------------------------------------------------------------------

# One line per second: time|walsender pid|application_name|replay_lag s|replay bytes|slot bytes.
# The walsender is found through the slot (active_pid), so its application_name is recorded
# rather than assumed. No walsender: empty pid. Walsender but NULL replay_lag: caught up.
start_sampler() { # slot out-file
  cat >"$2.sql" <<SQL
select extract(epoch from clock_timestamp()), r.pid, r.application_name,
       extract(epoch from r.replay_lag),
       pg_wal_lsn_diff(pg_current_wal_lsn(), r.replay_lsn),
       pg_wal_lsn_diff(pg_current_wal_lsn(), s.confirmed_flush_lsn)
from pg_replication_slots s left join pg_stat_replication r on r.pid = s.active_pid
where s.slot_name = '$1' \watch 1
SQL
  psql -X -q -At -F'|' -d "$SRC" -f "$2.sql" >"$2" 2>"$2.err" &
  SAMPLER_PID=$!
}
stop_sampler() {
  stop_pid "$SAMPLER_PID" 5
  wait "$SAMPLER_PID" 2>/dev/null || true
  SAMPLER_PID=
}

# pgbench at full rate; records <side>.tps, <side>.txns. With a slot name, samples the lag of
# its walsender from the second second on: the first sample would otherwise show the lag
# left over from before the run (PostgreSQL keeps the last measured value until new WAL is
# confirmed or the client reports "fully applied" twice in a row).
run_pgbench() { # side [slot]
  local out=$LOG_DIR/pgbench-$1.log tps txns failed pid rc=0
  log "$1: pgbench -c $CLIENTS -j $THREADS -T $DURATION"
  pgbench -n -c "$CLIENTS" -j "$THREADS" -T "$DURATION" -P 10 "$SRC" >"$out" 2>&1 &
  pid=$!
  if [ -n "${2:-}" ]; then
    sleep 1
    start_sampler "$2" "$LOG_DIR/lag-$1.txt"
  fi
  wait "$pid" || rc=$?
  [ -z "${2:-}" ] || stop_sampler
  [ "$rc" = 0 ] || { redact <"$out" >&2; die "pgbench ($1)"; }
  tps=$(awk '/^tps = / { print $3; exit }' "$out")
  txns=$(awk -F': ' '/^number of transactions actually processed/ { print $2; exit }' "$out")
  failed=$(awk -F': ' '/^number of failed transactions/ { split($2, a, " "); print a[1]; exit }' "$out")
  [ -n "$tps" ] && [ -n "$txns" ] || die "cannot read tps from $out"
  record "$1.tps" "$tps"
  record "$1.txns" "$txns"
  record "$1.failed_txns" "${failed:-0}"
  log "$1: source $tps tps, $txns transactions"
}

# After pgbench: how long until the slot confirmed everything the source wrote.
drain() { # side slot
  local end t0 t1
  end=$(current_lsn)
  t0=$(now)
  wait_until "$SRC" "$(slot_reached "$2" "$end")" "$BENCH_TIMEOUT" || die "$1: not caught up after ${BENCH_TIMEOUT}s"
  t1=$(now)
  record "$1.drain_s" "$(elapsed "$t0" "$t1")"
  log "$1: caught up with $end $(elapsed "$t0" "$t1") s after pgbench ended"
}

native_enable() { q "$TGT_NATIVE" -c "alter subscription native_sub enable"; }
native_disable() {
  q "$TGT_NATIVE" -c "alter subscription native_sub disable"
  wait_until "$SRC" "$(slot_inactive "$NATIVE_SLOT")" 60 || die "native walsender still running 60 s after disable"
}

phase_b() {
  log "B: native steady state"
  native_enable
  wait_until "$SRC" "$(slot_active "$NATIVE_SLOT")" 60 || die "native: apply worker did not connect within 60 s"
  checkpoint_all
  run_pgbench native "$NATIVE_SLOT"
  drain native "$NATIVE_SLOT"
  native_disable
}

# Starts Ferry's change capture and times the catch-up. FERRY_OK stays 1 while Ferry runs.
phase_c() {
  local end t0 t1 rc=0 changes
  log "C: ferry catch-up"
  changes=$((4 * $(awk -F= '$1 == "native.txns" { print $2 }' "$KV")))
  end=$(current_lsn)
  record ferry.catchup_changes "$changes"
  record ferry.catchup_end_lsn "$end"
  # The poller connects first so its start-up is not part of the time.
  wait_until "$SRC" "$(slot_reached "$FERRY_SLOT" "$end")" "$BENCH_TIMEOUT" >"$LOG_DIR/poll-ferry.log" 2>&1 &
  POLL_PID=$!
  sleep 0.3
  t0=$(now)
  NO_COLOR=1 "$FERRY_BIN" migrate --source "$SRC" --target "$TGT_FERRY" --migration-id "$MIGRATION_ID" \
    >"$LOG_DIR/ferry-cdc.log" 2>&1 &
  FERRY_PID=$!
  wait -n "$POLL_PID" "$FERRY_PID" || true
  t1=$(now)
  if ! kill -0 "$FERRY_PID" 2>/dev/null; then
    wait "$FERRY_PID" || rc=$?
    FERRY_PID=
    stop_poller
    ferry_failed "exited with status $rc during the catch-up"
    return
  fi
  wait "$POLL_PID" || rc=$?
  POLL_PID=
  if [ "$rc" != 0 ]; then
    ferry_failed "slot $FERRY_SLOT not at $end after ${BENCH_TIMEOUT}s: $(redact <"$LOG_DIR/poll-ferry.log" | tail -n 1)"
    return
  fi
  record ferry.catchup_s "$(elapsed "$t0" "$t1")"
  # Of which start-up (connections, check, state): until Ferry logs that it streams.
  local started
  started=$(strip_ansi <"$LOG_DIR/ferry-cdc.log" | awk '/streaming changes/ { print $1; exit }')
  if [ -n "$started" ]; then
    record ferry.catchup_startup_s "$(elapsed "$t0" "$(date -d "$started" +%s.%N)")"
  fi
  log "C: ferry applied $changes changes in $(elapsed "$t0" "$t1") s"
}

ferry_failed() {
  FERRY_OK=0
  record ferry.status FAILED
  record ferry.reason "$1"
  log "ferry: FAILED: $1"
  log "ferry: last lines of $LOG_DIR/ferry-cdc.log:"
  strip_ansi <"$LOG_DIR/ferry-cdc.log" | tail -n 20 | redact | sed 's/^/    /' >&2 || true
  stop_pid "${FERRY_PID:-}" 30
  FERRY_PID=
}

phase_d() {
  local rc=0
  log "D: ferry steady state"
  if [ "$FERRY_OK" = 1 ]; then
    wait_until "$SRC" "$(slot_active "$FERRY_SLOT")" 60 || { ferry_failed "no walsender on $FERRY_SLOT"; }
  fi
  checkpoint_all
  if [ "$FERRY_OK" = 1 ]; then
    run_pgbench ferry "$FERRY_SLOT"
  else
    # Without Ferry, pgbench still runs: phase E needs the backlog.
    run_pgbench ferry
    return 0
  fi
  if ! kill -0 "$FERRY_PID" 2>/dev/null; then
    wait "$FERRY_PID" || rc=$?
    FERRY_PID=
    ferry_failed "exited with status $rc during the steady-state run"
    return
  fi
  local end t0 t1
  end=$(current_lsn)
  t0=$(now)
  wait_until "$SRC" "$(slot_reached "$FERRY_SLOT" "$end")" "$BENCH_TIMEOUT" >"$LOG_DIR/poll-ferry.log" 2>&1 &
  POLL_PID=$!
  wait -n "$POLL_PID" "$FERRY_PID" || true
  t1=$(now)
  if ! kill -0 "$FERRY_PID" 2>/dev/null; then
    wait "$FERRY_PID" || rc=$?
    FERRY_PID=
    stop_poller
    ferry_failed "exited with status $rc while catching up after the steady-state run"
    return
  fi
  wait "$POLL_PID" || { POLL_PID=; ferry_failed "not caught up ${BENCH_TIMEOUT}s after pgbench ended"; return; }
  POLL_PID=
  record ferry.drain_s "$(elapsed "$t0" "$t1")"
  log "ferry: caught up with $end $(elapsed "$t0" "$t1") s after pgbench ended; SIGTERM"
  t0=$(now)
  kill -TERM "$FERRY_PID"
  local i
  for ((i = 0; i < 600; i++)); do
    kill -0 "$FERRY_PID" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$FERRY_PID" 2>/dev/null; then
    ferry_failed "still running 60 s after SIGTERM"
    return
  fi
  wait "$FERRY_PID" || rc=$?
  FERRY_PID=
  record ferry.stop_s "$(elapsed "$t0" "$(now)")"
  record ferry.exit_status "$rc"
  [ "$rc" = 0 ] || { ferry_failed "exited with status $rc after SIGTERM"; return; }
  local errors
  errors=$(strip_ansi <"$LOG_DIR/ferry-cdc.log" | grep -cE ' (ERROR|WARN) |ferry: error|panicked' || true)
  record ferry.log_error_lines "$errors"
  if [ "$errors" != 0 ]; then
    log "ferry: $errors ERROR/WARN lines in its log:"
    strip_ansi <"$LOG_DIR/ferry-cdc.log" | grep -E ' (ERROR|WARN) |ferry: error|panicked' | tail -n 20 | redact | sed 's/^/    /' >&2
  fi
}

phase_e() {
  local end t0 t1 changes rc=0
  log "E: native catch-up"
  changes=$((4 * $(awk -F= '$1 == "ferry.txns" { print $2 }' "$KV")))
  end=$(current_lsn)
  record native.catchup_changes "$changes"
  record native.catchup_end_lsn "$end"
  wait_until "$SRC" "$(slot_reached "$NATIVE_SLOT" "$end")" "$BENCH_TIMEOUT" >"$LOG_DIR/poll-native.log" 2>&1 &
  POLL_PID=$!
  sleep 0.3
  t0=$(now)
  native_enable
  wait "$POLL_PID" || rc=$?
  t1=$(now)
  POLL_PID=
  [ "$rc" = 0 ] || die "native: slot $NATIVE_SLOT not at $end after ${BENCH_TIMEOUT}s"
  record native.catchup_s "$(elapsed "$t0" "$t1")"
  log "E: native applied $changes changes in $(elapsed "$t0" "$t1") s"
  native_disable
}

table_digest() { # url table
  q "$1" -c "select count(*) || ' ' || coalesce(md5(string_agg(x::text, ',' order by x::text)), '-') from $2 x" 2>&1 |
    redact | head -n 1
}

phase_f() {
  log "F: comparing ferry_t and native_t with the source"
  local t src side url got bad
  declare -A SRC_DIGEST=()
  for t in "${TABLES[@]}"; do
    SRC_DIGEST[$t]=$(table_digest "$SRC" "$t")
    record "source.rows.$t" "${SRC_DIGEST[$t]%% *}"
  done
  for side in native ferry; do
    url=$TGT_NATIVE
    [ "$side" = ferry ] && url=$TGT_FERRY
    bad=
    for t in "${TABLES[@]}"; do
      got=$(table_digest "$url" "$t")
      if [ "$got" != "${SRC_DIGEST[$t]}" ]; then
        bad="$bad $t (rows ${got%% *} vs ${SRC_DIGEST[$t]%% *} on the source)"
      fi
    done
    if [ -z "$bad" ]; then
      record "$side.identical" PASS
      log "F: $side: PASS"
    else
      record "$side.identical" FAIL
      record "$side.identical_diff" "differs:$bad"
      log "F: $side: FAIL: differs:$bad"
    fi
  done
}

report() {
  python3 - "$KV" "$JSON_OUT" "$LOG_DIR" <<'PY'
import json, math, os, sys

kv_path, json_out, log_dir = sys.argv[1:4]
env = os.environ
kv = {}
with open(kv_path) as f:
    for line in f:
        k, _, v = line.rstrip("\n").partition("=")
        kv[k] = v

def num(k):
    v = kv.get(k)
    if v in (None, ""):
        return None
    try:
        return int(v)
    except ValueError:
        return float(v)

def pct(xs, p):
    """Nearest-rank percentile."""
    if not xs:
        return None
    s = sorted(xs)
    return s[max(0, math.ceil(p / 100 * len(s)) - 1)]

def lag(side):
    path = os.path.join(log_dir, f"lag-{side}.txt")
    if not os.path.exists(path):
        return None
    samples, apps = [], set()
    with open(path) as f:
        for line in f:
            parts = line.rstrip("\n").split("|")
            if len(parts) != 6:
                continue
            t, pid, app, lag_s, rbytes, sbytes = parts
            samples.append({
                "t": float(t),
                "connected": pid != "",
                "app": app or None,
                # NULL replay_lag with a walsender: nothing outstanding, counts as 0.
                "lag_s": (float(lag_s) if lag_s else 0.0) if pid else None,
                "lag_bytes": int(float(rbytes)) if rbytes else None,
                "slot_lag_bytes": int(float(sbytes)) if sbytes else None,
            })
            if app:
                apps.add(app)
    lags = [s["lag_s"] for s in samples if s["lag_s"] is not None]
    rb = [s["lag_bytes"] for s in samples if s["lag_bytes"] is not None]
    sb = [s["slot_lag_bytes"] for s in samples if s["slot_lag_bytes"] is not None]
    return {
        "samples": len(samples),
        "samples_without_walsender": sum(1 for s in samples if not s["connected"]),
        "samples_null_replay_lag": sum(1 for s in samples if s["connected"] and s["lag_s"] == 0.0),
        "application_names": sorted(apps),
        "lag_p50_s": pct(lags, 50), "lag_p95_s": pct(lags, 95), "lag_p99_s": pct(lags, 99),
        "lag_max_s": max(lags) if lags else None,
        "lag_max_bytes": max(rb) if rb else None,
        "slot_lag_max_bytes": max(sb) if sb else None,
    }

results = []
for side in ("native", "ferry"):
    r = {"side": side, "status": kv.get(f"{side}.status", "ok")}
    if r["status"] != "ok":
        r["reason"] = kv.get(f"{side}.reason")
    r["source_tps"] = num(f"{side}.tps")
    r["source_txns"] = num(f"{side}.txns")
    r["source_failed_txns"] = num(f"{side}.failed_txns")
    r["steady_state_lag"] = lag(side)
    r["drain_s"] = num(f"{side}.drain_s")
    r["catchup_changes"] = num(f"{side}.catchup_changes")
    r["catchup_end_lsn"] = kv.get(f"{side}.catchup_end_lsn")
    r["catchup_s"] = num(f"{side}.catchup_s")
    r["catchup_changes_per_s"] = (round(r["catchup_changes"] / r["catchup_s"])
                                  if r["catchup_s"] and r["catchup_changes"] else None)
    r["identical"] = kv.get(f"{side}.identical")
    if kv.get(f"{side}.identical_diff"):
        r["identical_diff"] = kv[f"{side}.identical_diff"]
    if side == "ferry":
        for k in ("catchup_startup_s", "exit_status", "stop_s", "log_error_lines"):
            r[k] = num(f"ferry.{k}")
    results.append(r)

meta = {
    "benchmark": "cdc",
    "timestamp_utc": env["B_TIMESTAMP"],
    "date": env["B_DATE"],
    "scale": int(env["B_SCALE"]),
    "duration_s": int(env["B_DURATION"]),
    "pgbench_clients": int(env["B_CLIENTS"]),
    "pgbench_threads": int(env["B_THREADS"]),
    "nproc": int(env["B_NPROC"]),
    "cpu_model": env["B_CPU"],
    "pg_version": env["B_PG_VERSION"],
    "git_commit": env["B_GIT"] or None,
    "ferry_bin": env["B_FERRY_BIN"],
    "ferry_bin_mtime_utc": env["B_FERRY_MTIME"],
    "loadavg_start": env["B_LOADAVG_START"],
    "loadavg_end": env["B_LOADAVG_END"],
    "setup_ferry_fullload_s": num("setup_ferry_fullload_s"),
    "setup_native_copy_s": num("setup_native_copy_s"),
    "source_rows": {k.split(".", 2)[2]: int(v) for k, v in kv.items() if k.startswith("source.rows.")},
}
with open(json_out, "w") as f:
    json.dump({**meta, "results": results}, f, indent=2)
    f.write("\n")

def fmt(v, spec):
    return "-" if v is None else format(v, spec)

print(f"# {meta['date']}  nproc={meta['nproc']}  cpu={meta['cpu_model']}  PostgreSQL {meta['pg_version']}  "
      f"scale={meta['scale']}  duration={meta['duration_s']}s  pgbench -c {meta['pgbench_clients']} "
      f"-j {meta['pgbench_threads']}")
print(f"# ferry {meta['ferry_bin']} (built {meta['ferry_bin_mtime_utc']}), repo at {meta['git_commit']}; "
      f"load average {meta['loadavg_start']} at the start, {meta['loadavg_end']} at the end")
head = ("side", "source tps", "lag p50 s", "lag p95 s", "lag p99 s", "lag max s", "lag max bytes",
        "drain s", "catch-up changes", "catch-up s", "changes/s", "identical")
line = "{:<8} {:>10} {:>9} {:>9} {:>9} {:>9} {:>13} {:>7} {:>16} {:>10} {:>9} {:>9}"
print(line.format(*head))
print(line.format(*("-" * len(h) if i else "-" * 8 for i, h in enumerate(head))))
for r in results:
    l = r["steady_state_lag"] or {}
    # A failed side's pgbench ran without anything replicating: not a comparable figure.
    tps = fmt(r["source_tps"], ".0f") if r["status"] == "ok" else "FAILED"
    print(line.format(r["side"], tps,
                      fmt(l.get("lag_p50_s"), ".2f"), fmt(l.get("lag_p95_s"), ".2f"),
                      fmt(l.get("lag_p99_s"), ".2f"), fmt(l.get("lag_max_s"), ".2f"),
                      fmt(l.get("lag_max_bytes"), ",d"), fmt(r["drain_s"], ".2f"),
                      fmt(r["catchup_changes"], ",d"), fmt(r["catchup_s"], ".2f"),
                      fmt(r["catchup_changes_per_s"], ",d"), r["identical"] or "-"))
print()
print("source tps: pgbench at full rate on the source while this side replicated (steady state).")
print("lag: per-second samples of pg_stat_replication on the source during pgbench; replay_lag")
print("     NULL (nothing outstanding) counts as 0; bytes = current WAL - replay_lsn. replay_lag")
print("     only covers the time since the walsender decoded and sent the data: a consumer that falls")
print("     behind throttles its walsender, so its bytes keep growing while replay_lag stays small.")
print("drain s: from the end of pgbench until the slot confirmed the source's WAL position.")
print("catch-up: the other side's pgbench run (4 changes per transaction) waiting in the slot;")
print("     time from start (ferry process / ALTER SUBSCRIPTION ENABLE) until confirmed.")
for r in results:
    l = r["steady_state_lag"]
    if l:
        print(f"{r['side']}: {l['samples']} lag samples, walsender {'/'.join(l['application_names']) or '-'}, "
              f"{l['samples_null_replay_lag']} with NULL replay_lag, "
              f"{l['samples_without_walsender']} without walsender")
    if r.get("catchup_startup_s") is not None:
        print(f"{r['side']}: catch-up includes {r['catchup_startup_s']:.2f} s of start-up before streaming")
    if r["status"] != "ok":
        print(f"{r['side']}: FAILED: {r['reason']}")
    if r.get("identical_diff"):
        print(f"{r['side']}: {r['identical_diff']}")
print(f"JSON: {json_out}")
PY
}

main() {
  if [ "${1:-}" = -h ] || [ "${1:-}" = --help ]; then
    sed -n '2,/^set -euo/p' "$SELF" | sed '$d; s/^# \{0,1\}//'
    return
  fi
  [ -x "$FERRY_BIN" ] || { echo "$FERRY_BIN not built (cargo build --release -p ferry)" >&2; exit 2; }

  local stamp
  stamp=$(date -u +%Y%m%dT%H%M%SZ)
  mkdir -p "$REPO/bench/out"
  JSON_OUT=$REPO/bench/out/cdc-$stamp.json
  LOG_DIR=$REPO/bench/out/cdc-$stamp.logs
  mkdir -p "$LOG_DIR"
  KV=$LOG_DIR/results.kv
  : >"$KV"
  FERRY_OK=1 FERRY_PID= SAMPLER_PID= POLL_PID=

  # The benchmark needs the machine to itself; the load average shows whether it had it.
  B_LOADAVG_START=$(cut -d' ' -f1-3 /proc/loadavg)
  trap cleanup EXIT
  ensure_cluster "$SRC_CLUSTER" "$SRC_PORT"
  ensure_cluster "$TGT_CLUSTER" "$TGT_PORT"
  SRC_ADMIN=$("$REPO/scripts/pg.sh" url "$SRC_CLUSTER")
  TGT_ADMIN=$("$REPO/scripts/pg.sh" url "$TGT_CLUSTER")
  SRC=$(db_url "$SRC_CLUSTER" bench)
  TGT_FERRY=$(db_url "$TGT_CLUSTER" ferry_t)
  TGT_NATIVE=$(db_url "$TGT_CLUSTER" native_t)

  setup
  phase_b
  phase_c
  phase_d
  phase_e
  phase_f

  export B_DATE B_TIMESTAMP=$stamp B_SCALE=$SCALE B_DURATION=$DURATION B_CLIENTS=$CLIENTS B_THREADS=$THREADS
  export B_LOADAVG_START B_LOADAVG_END
  B_LOADAVG_END=$(cut -d' ' -f1-3 /proc/loadavg)
  export B_NPROC B_CPU B_PG_VERSION B_GIT B_FERRY_BIN=${FERRY_BIN#"$REPO"/} B_FERRY_MTIME
  B_NPROC=$(nproc)
  B_DATE=$(date -u +%Y-%m-%dT%H:%M:%SZ)
  B_CPU=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)
  B_PG_VERSION=$(q "$SRC" -c "show server_version")
  B_GIT=$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || true)
  if [ -n "$B_GIT" ] && [ -n "$(git -C "$REPO" status --porcelain --untracked-files=no -- crates 2>/dev/null)" ]; then
    B_GIT="$B_GIT+dirty"
  fi
  B_FERRY_MTIME=$(date -u -r "$FERRY_BIN" +%Y-%m-%dT%H:%M:%SZ)
  report
}

main "$@"
