#!/usr/bin/env bash
# Change-data-capture lag under production durability: Ferry's change stream and PostgreSQL's
# native logical replication (CREATE SUBSCRIPTION) side by side, at several loads, in one run.
#
#   bench/cdc-durable.sh        (or BENCH_SUITES=cdc-durable bench/run.sh)
#   SCALE=2 DURATION=10 LOADS="1 4" bench/cdc-durable.sh     (a short smoke run)
#
# Clusters: cdcd-src (port 55732) and cdcd-tgt (55733), started with FERRY_PG_DURABLE=1
# scripts/pg.sh start NAME PORT -c wal_level=logical -c shared_buffers=1GB: fsync,
# synchronous_commit and full_page_writes stay on, as in production. The script checks them
# (SHOW) on both clusters at the start, refuses to measure if any is off, and records them.
#
# Setup (not timed): source database "bench" from pgbench -i -s SCALE, pgbench_history with
# REPLICA IDENTITY FULL, and a probe table lag_probe(id bigserial primary key, src_ts timestamptz
# default clock_timestamp()). Target ferry_t: `ferry migrate --stop-after full-load` (creates its
# slot and publication ferry_bench). Target native_t: pg_dump of schema and data, then
# publication native_pub, slot native_sub, subscription native_sub (copy_data = false).
#
# Design: concurrent. Ferry (`ferry migrate --listen 127.0.0.1:55734`, one process for all the
# loads) and the native subscription are both attached to the source all the time, and both
# consume the SAME pgbench run at each load: on one machine that is the fair side-by-side (same
# workload, same moment, same disk), and it halves the run time. They share the 2 cores with
# PostgreSQL and pgbench, so each side's figures include the other's load.
#
# For each load of LOADS (default "1 4 8 16 R500"): N = pgbench -c N -j min(N,2) at full rate,
# RN = pgbench -c 2 -j 2 -R N (rate limited). Before each run: a checkpoint on both clusters,
# then both slots' confirmed_flush_lsn >= the source's pg_current_wal_insert_lsn(). During the
# run and for at least 10 s after it (until both have drained):
#   - every second, for both slots, on the source: pg_stat_replication (write/flush/replay_lag,
#     bytes current WAL - replay_lsn) joined to pg_replication_slots via active_pid (bytes
#     current WAL - confirmed_flush_lsn, and confirmed_flush_lsn itself);
#   - every second, Ferry's own figure: lag_seconds of GET /api/status (empty if absent);
#   - probe lag, independent of both tools' reporting: a session inserts one lag_probe row every
#     200 ms on the source (each its own transaction). On each target a deferred constraint
#     trigger on lag_probe (ENABLE ALWAYS, so it fires under session_replication_role = replica,
#     which both appliers use) records clock_timestamp() into bench_probe.applied(id, applied_ts)
#     when the applying transaction commits. probe lag = applied_ts - src_ts (one machine, one
#     clock). The timestamp goes into a target-only table, not an extra column of lag_probe:
#     Ferry stops on a target column the source does not send ("column ... exists on the target
#     but is no longer sent by the source"); both targets use the same trigger.
# Figures per load and side, over the pgbench run: source tps; replay_lag p50/p95/p99/max
# (the first second is left out: PostgreSQL shows the last measured value until new WAL is
# confirmed; NULL with a walsender connected = caught up = 0); probe lag p50/p95/p99/max (probes
# inserted while pgbench ran); max bytes behind (replay); max slot bytes; slot stall (longest
# time confirmed_flush_lsn did not move across the 1 s samples, so 1 s resolution); drain (from
# pgbench's end until the slot's confirmed_flush_lsn reached pg_current_wal_insert_lsn() taken
# at that end).
#
# Catch-up (once, at the end): subscription disabled and Ferry stopped (SIGTERM), pgbench -c 4
# -j 2 -T DURATION builds a backlog; then Ferry alone (time from process start until its slot
# reached the source's insert position after pgbench, start-up included), stopped again, then
# native alone (ALTER SUBSCRIPTION ENABLE, same); changes/s = transactions * 4 / seconds.
# Correctness: every pgbench table and lag_probe, count and md5 of all rows, in ferry_t and
# native_t against the source: PASS/FAIL.
#
# Environment:
#   SCALE=5           pgbench scale of the source (100,000 pgbench_accounts rows per unit)
#   DURATION=60       seconds of each pgbench run (each load, and the catch-up backlog)
#   LOADS="1 4 8 16 R500"
#   BENCH_KEEP=1      leave the cdcd-src/cdcd-tgt clusters running at the end (the slots,
#                     publications and the subscription are dropped either way)
#   BENCH_TIMEOUT=1800  seconds before a catch-up or drain wait is abandoned as FAILED
#   FERRY_BIN=target/release/ferry
#   FERRY_EXTRA_ARGS="--commit-interval 2ms"   more arguments for ferry's change capture
#
# Output: markdown tables on stdout (progress goes to stderr), JSON in
# bench/out/cdc-durable-<UTC stamp>.json, logs (pgbench, Ferry, samples, probes) in
# bench/out/cdc-durable-<UTC stamp>.logs/. Exit status 1 when a side's data differs or a wait
# fails.
set -euo pipefail

SELF=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/$(basename "${BASH_SOURCE[0]}")
REPO=$(cd "$(dirname "$SELF")/.." && pwd)
PG_BIN=${FERRY_PG_BIN:-/usr/lib/postgresql/15/bin}
# Use the client tools of the server's major version, whatever /usr/bin's wrappers would pick.
export PATH="$PG_BIN:$PATH"

SCALE=${SCALE:-5}
DURATION=${DURATION:-60}
LOADS=${LOADS:-1 4 8 16 R500}
BENCH_TIMEOUT=${BENCH_TIMEOUT:-1800}
FERRY_BIN=${FERRY_BIN:-target/release/ferry}
case "$FERRY_BIN" in /*) ;; *) FERRY_BIN=$REPO/$FERRY_BIN ;; esac

SRC_CLUSTER=cdcd-src SRC_PORT=55732
TGT_CLUSTER=cdcd-tgt TGT_PORT=55733
FERRY_LISTEN=127.0.0.1:55734
FERRY_API=http://$FERRY_LISTEN/api/status
TAIL_S=10 # seconds sampled after each pgbench run (at least; until both sides have drained)
TABLES=(pgbench_accounts pgbench_branches pgbench_tellers pgbench_history lag_probe)
MIGRATION_ID=bench
FERRY_SLOT=ferry_bench # Ferry names its slot and publication after the migration id
NATIVE_SLOT=native_sub
NATIVE_PUB=native_pub
WAIT_APP=ferry-bench-wait   # application_name prefix of this script's waiting sessions
PROBE_APP=ferry-bench-probe # application_name of the probe session
PASSWORD=${FERRY_PG_PASSWORD:-ferry-test-pw}
# Passwords travel in the environment, never on a command line (ps) or in a URL we might print.
export PGPASSWORD=$PASSWORD FERRY_SOURCE_PASSWORD=$PASSWORD FERRY_TARGET_PASSWORD=$PASSWORD

log() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", b - a }'; }
ge() { awk -v a="$1" -v b="$2" 'BEGIN { exit !(a >= b) }'; }
# Admin queries: no psqlrc, stop at the first error, bare output.
q() {
  local url=$1
  shift
  PGOPTIONS="-c client_min_messages=warning" psql -X -q -At -v ON_ERROR_STOP=1 -d "$url" "$@"
}
# pg.sh's URL points at database "postgres" and carries the password: both replaced.
db_url() {
  local u
  u=$("$REPO/scripts/pg.sh" url "$1")
  u=$(printf '%s' "${u%/*}/$2" | sed 's#://\([^:@/]*\):[^@]*@#://\1@#')
  echo "$u"
}
# Every log excerpt we print goes through this, so passwords never reach the terminal.
redact() { sed "s/$PASSWORD/****/g"; }
strip_ansi() { sed 's/\x1b\[[0-9;]*m//g'; }
record() { printf '%s=%s\n' "$1" "$2" >>"$KV"; }
kv() { awk -F= -v k="$1" '$1 == k { v = substr($0, length(k) + 2) } END { print v }' "$KV"; }
die() {
  log "FAILED: $*"
  exit 1
}

# Blocks (server side, one connection, checked every 100 ms) until the SQL condition is true.
# Fails after $3 seconds (statement_timeout). $4: application_name suffix (to end it alone).
wait_until() { # url condition timeout-seconds [name]
  PGAPPNAME=$WAIT_APP${4:+-$4} q "$1" -c "set statement_timeout = '${3}s'" -c "do \$\$ begin
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
# The insert position (what the brief of every wait is: everything the source has written),
# not the write position, so no commit still in the WAL buffers is left out.
current_lsn() { q "$SRC" -c "select pg_current_wal_insert_lsn()"; }

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

# Ends this script's server sessions whose application_name starts with $1 (a background
# psql may outlive its subshell, and a server-side loop outlives its client).
end_sessions() { # application_name prefix
  [ -n "${SRC_ADMIN:-}" ] || return 0
  q "$SRC_ADMIN" -c "select pg_terminate_backend(pid) from pg_stat_activity
                     where application_name like '$1%' and pid <> pg_backend_pid()" >/dev/null 2>&1 || true
}

# ---------------------------------------------------------------------------------------
# Clusters and setup.
# ---------------------------------------------------------------------------------------

ensure_cluster() { # name port
  # A cluster kept with BENCH_KEEP=1 is still running; pg_ctl start would refuse it. Its
  # settings are checked like a fresh one's.
  if pg_isready -q -h 127.0.0.1 -p "$2"; then return; fi
  FERRY_PG_DURABLE=1 "$REPO/scripts/pg.sh" start "$1" "$2" -c wal_level=logical -c shared_buffers=1GB
}

# SHOW fsync, synchronous_commit, full_page_writes on both clusters: all must be on.
check_durability() {
  local side url name val bad=
  for side in source target; do
    url=$SRC_ADMIN
    [ "$side" = target ] && url=$TGT_ADMIN
    for name in fsync synchronous_commit full_page_writes wal_level shared_buffers wal_sync_method max_wal_size checkpoint_timeout; do
      val=$(q "$url" -c "show $name")
      record "settings.$side.$name" "$val"
      case "$name" in fsync | synchronous_commit | full_page_writes)
        [ "$val" = on ] || bad="$bad $side:$name=$val"
        ;;
      esac
    done
    log "$side: fsync=$(kv "settings.$side.fsync") synchronous_commit=$(kv "settings.$side.synchronous_commit") full_page_writes=$(kv "settings.$side.full_page_writes") shared_buffers=$(kv "settings.$side.shared_buffers")"
  done
  [ -z "$bad" ] || die "durability is off:$bad (a cluster kept from a non-durable run? scripts/pg.sh stop $SRC_CLUSTER; scripts/pg.sh stop $TGT_CLUSTER)"
  [ "$(kv settings.source.wal_level)" = logical ] || die "source wal_level is $(kv settings.source.wal_level)"
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

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  set +e
  [ -n "${PGBENCH_PID:-}" ] && log "cleanup: stopping pgbench"
  stop_pid "${PGBENCH_PID:-}" 5
  stop_probe
  stop_samplers
  stop_pollers
  [ -n "${FERRY_PID:-}" ] && log "cleanup: stopping ferry"
  stop_pid "${FERRY_PID:-}" 30
  end_sessions "$WAIT_APP"
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

checkpoint_all() {
  q "$SRC_ADMIN" -c checkpoint
  q "$TGT_ADMIN" -c checkpoint
  sync
}

# On a target: bench_probe.applied(id, applied_ts), filled by a deferred constraint trigger on
# lag_probe, i.e. at the commit of the transaction that applied the row (what a reader of the
# target can see from then on), enabled ALWAYS so it fires under session_replication_role =
# replica. search_path is empty in both appliers: everything is schema-qualified.
install_probe_trigger() { # url
  q "$1" <<'SQL'
create schema bench_probe;
create table bench_probe.applied (id bigint primary key, applied_ts timestamptz not null default clock_timestamp());
create function bench_probe.record() returns trigger language plpgsql as $$
begin
  insert into bench_probe.applied (id) values (new.id) on conflict (id) do nothing;
  return null;
end $$;
create constraint trigger lag_probe_applied after insert on public.lag_probe
  deferrable initially deferred for each row execute function bench_probe.record();
alter table public.lag_probe enable always trigger lag_probe_applied;
SQL
}

setup() {
  local t0 t1
  drop_replication
  q "$SRC_ADMIN" -c "drop database if exists bench with (force)" -c "create database bench"
  log "source: pgbench -i -s $SCALE"
  pgbench -i -s "$SCALE" -q "$SRC" >"$LOG_DIR/pgbench-init.log" 2>&1 ||
    { redact <"$LOG_DIR/pgbench-init.log" >&2; die "pgbench -i"; }
  # pgbench_history has no primary key: Ferry's check blocks until it has a replica identity.
  # pgbench only inserts into it, so FULL costs nothing, and both sides replicate the same table.
  q "$SRC" -c "alter table pgbench_history replica identity full"
  # Created before the full load, so both targets have it (empty).
  q "$SRC" -c "create table lag_probe (id bigserial primary key, src_ts timestamptz not null default clock_timestamp())"

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
    --stop-after full-load --listen off >"$LOG_DIR/ferry-fullload.log" 2>&1 ||
    { tail -n 20 "$LOG_DIR/ferry-fullload.log" | redact >&2; die "ferry full load, see $LOG_DIR/ferry-fullload.log"; }
  t1=$(now)
  record setup.ferry_fullload_s "$(elapsed "$t0" "$t1")"
  [ "$(q "$SRC" -c "select count(*) from pg_replication_slots where slot_name = '$FERRY_SLOT'")" = 1 ] ||
    die "ferry's full load did not leave a slot named $FERRY_SLOT"

  log "native: pg_dump schema and data into native_t"
  t0=$(now)
  pg_dump --schema-only --no-publications --no-subscriptions "$SRC" |
    psql -X -q -v ON_ERROR_STOP=1 -d "$TGT_NATIVE" >/dev/null
  pg_dump --data-only "$SRC" | psql -X -q -v ON_ERROR_STOP=1 -d "$TGT_NATIVE" >/dev/null
  t1=$(now)
  record setup.native_copy_s "$(elapsed "$t0" "$t1")"
  q "$SRC" -c "create publication $NATIVE_PUB for all tables"
  q "$SRC" -c "select pg_create_logical_replication_slot('$NATIVE_SLOT', 'pgoutput')" >/dev/null
  # On stdin, not the command line: the connection string holds the password.
  q "$TGT_NATIVE" 2>&1 <<SQL | grep -v '^$' | redact >&2 || true
create subscription native_sub
  connection 'host=127.0.0.1 port=$SRC_PORT dbname=bench user=postgres password=$PASSWORD'
  publication $NATIVE_PUB
  with (copy_data = false, create_slot = false, slot_name = '$NATIVE_SLOT', enabled = false);
SQL
  [ "$(q "$TGT_NATIVE" -c "select count(*) from pg_subscription where subname = 'native_sub'")" = 1 ] ||
    die "create subscription failed"
  record settings.native.subscription_synchronous_commit \
    "$(q "$TGT_NATIVE" -c "select subsynccommit from pg_subscription where subname = 'native_sub'")"

  install_probe_trigger "$TGT_FERRY"
  install_probe_trigger "$TGT_NATIVE"
  checkpoint_all
}

# ---------------------------------------------------------------------------------------
# The two consumers.
# ---------------------------------------------------------------------------------------

port_busy() { (exec 3<>"/dev/tcp/${1%:*}/${1##*:}") 2>/dev/null; }

# Starts `ferry migrate` (change capture, API on FERRY_LISTEN) in the background.
ferry_start() { # log-file
  port_busy "$FERRY_LISTEN" && die "something already listens on $FERRY_LISTEN"
  NO_COLOR=1 "$FERRY_BIN" migrate --source "$SRC" --target "$TGT_FERRY" --migration-id "$MIGRATION_ID" \
    --listen "$FERRY_LISTEN" ${FERRY_EXTRA_ARGS:-} >>"$1" 2>&1 &
  FERRY_PID=$!
}

# Until Ferry's walsender is connected and its API answers; 0 if so.
ferry_wait_streaming() {
  local i
  for ((i = 0; i < 600; i++)); do
    kill -0 "$FERRY_PID" 2>/dev/null || return 1
    if [ "$(q "$SRC" -c "$(slot_active "$FERRY_SLOT")")" = t ] && curl -sf -o /dev/null --max-time 1 "$FERRY_API"; then
      return 0
    fi
    sleep 0.1
  done
  return 1
}

ferry_failed() {
  [ "$FERRY_OK" = 1 ] || return 0
  FERRY_OK=0
  record ferry.status FAILED
  record ferry.reason "$1"
  log "ferry: FAILED: $1"
  log "ferry: last lines of $FERRY_LOG:"
  strip_ansi <"$FERRY_LOG" | tail -n 20 | redact | sed 's/^/    /' >&2 || true
  stop_pid "${FERRY_PID:-}" 30
  FERRY_PID=
}

# SIGTERM; Ferry stops at a checkpoint and exits 0. Records <key>.stop_s, <key>.exit_status.
ferry_stop() { # key
  local t0 i rc=0
  t0=$(now)
  kill -TERM "$FERRY_PID"
  for ((i = 0; i < 600; i++)); do
    kill -0 "$FERRY_PID" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$FERRY_PID" 2>/dev/null; then
    ferry_failed "still running 60 s after SIGTERM"
    return 1
  fi
  wait "$FERRY_PID" || rc=$?
  FERRY_PID=
  record "$1.stop_s" "$(elapsed "$t0" "$(now)")"
  record "$1.exit_status" "$rc"
  [ "$rc" = 0 ] || { ferry_failed "exited with status $rc after SIGTERM"; return 1; }
}

ferry_alive() { # when
  [ "$FERRY_OK" = 1 ] || return 1
  if ! kill -0 "$FERRY_PID" 2>/dev/null; then
    local rc=0
    wait "$FERRY_PID" || rc=$?
    FERRY_PID=
    ferry_failed "exited with status $rc $1"
    return 1
  fi
}

native_enable() { q "$TGT_NATIVE" -c "alter subscription native_sub enable"; }
native_disable() {
  q "$TGT_NATIVE" -c "alter subscription native_sub disable"
  wait_until "$SRC" "$(slot_inactive "$NATIVE_SLOT")" 60 || die "native walsender still running 60 s after disable"
}

# Both slots (Ferry's while it runs) at the source's insert position of now.
wait_caught_up() { # what
  local lsn
  lsn=$(current_lsn)
  wait_until "$SRC" "$(slot_reached "$NATIVE_SLOT" "$lsn")" "$BENCH_TIMEOUT" native ||
    die "native: slot not at $lsn after ${BENCH_TIMEOUT}s ($1)"
  if ferry_alive "$1"; then
    wait_until "$SRC" "$(slot_reached "$FERRY_SLOT" "$lsn")" "$BENCH_TIMEOUT" ferry ||
      ferry_failed "slot $FERRY_SLOT not at $lsn after ${BENCH_TIMEOUT}s ($1)"
  fi
}

# ---------------------------------------------------------------------------------------
# Measurements.
# ---------------------------------------------------------------------------------------

# One line per slot per second: time|slot|walsender pid|application_name|write_lag s|flush_lag s|
# replay_lag s|bytes current WAL - replay_lsn|bytes current WAL - confirmed_flush_lsn|
# confirmed_flush_lsn as a number. The walsender is found through the slot (active_pid).
# No walsender: empty pid.
start_samplers() { # label
  local out=$LOG_DIR/lag-$1.txt
  cat >"$out.sql" <<SQL
select extract(epoch from clock_timestamp()), s.slot_name, r.pid, r.application_name,
       extract(epoch from r.write_lag), extract(epoch from r.flush_lag), extract(epoch from r.replay_lag),
       pg_wal_lsn_diff(pg_current_wal_lsn(), r.replay_lsn),
       pg_wal_lsn_diff(pg_current_wal_lsn(), s.confirmed_flush_lsn),
       pg_wal_lsn_diff(s.confirmed_flush_lsn, '0/0')
from pg_replication_slots s left join pg_stat_replication r on r.pid = s.active_pid
where s.slot_name in ('$FERRY_SLOT', '$NATIVE_SLOT') order by s.slot_name \watch 1
SQL
  PGAPPNAME=ferry-bench-sampler psql -X -q -At -F'|' -d "$SRC" -f "$out.sql" >"$out" 2>"$out.err" &
  SAMPLER_PID=$!
  # Ferry's own figure: time|lag_seconds|lag_bytes|transactions_applied (empty when absent or
  # when the API does not answer).
  if [ "$FERRY_OK" = 1 ]; then
    api_sampler >"$LOG_DIR/api-$1.txt" 2>/dev/null &
    API_PID=$!
  fi
}
api_sampler() {
  local t next j
  next=$(date +%s)
  while :; do
    t=$(now)
    j=$(curl -s --max-time 0.9 "$FERRY_API" || true)
    printf '%s|%s\n' "$t" "$(printf '%s' "$j" | json_fields)"
    next=$((next + 1))
    sleep "$(awk -v n="$next" -v t="$(now)" 'BEGIN { d = n - t; printf "%.3f", (d > 0 ? d : 0) }')" || sleep 1
  done
}
if command -v jq >/dev/null; then
  json_fields() { jq -r '[.lag_seconds, .lag_bytes, .transactions_applied] | map(if . == null then "" else tostring end) | join("|")' 2>/dev/null || echo '||'; }
else
  json_fields() {
    python3 -c 'import json, sys
try:
    d = json.load(sys.stdin)
except Exception:
    d = {}
print("|".join("" if d.get(k) is None else str(d.get(k)) for k in ("lag_seconds", "lag_bytes", "transactions_applied")))'
  }
fi
stop_samplers() {
  stop_pid "${SAMPLER_PID:-}" 5
  stop_pid "${API_PID:-}" 5
  wait "${SAMPLER_PID:-}" "${API_PID:-}" 2>/dev/null || true
  SAMPLER_PID= API_PID=
}

# One lag_probe row every 200 ms, each its own transaction, from one server-side loop (no
# connection per row). It runs until stop_probe ends its session (or the safety deadline).
start_probe() {
  PGAPPNAME=$PROBE_APP q "$SRC" -c "do \$\$
    declare deadline timestamptz := clock_timestamp() + interval '$((DURATION + BENCH_TIMEOUT + 120)) s';
    begin
      loop
        exit when clock_timestamp() > deadline;
        insert into public.lag_probe default values;
        commit;
        perform pg_sleep(0.2);
      end loop;
    end \$\$" >>"$LOG_DIR/probe.log" 2>&1 &
  PROBE_PID=$!
}
stop_probe() {
  [ -n "${PROBE_PID:-}" ] || return 0
  end_sessions "$PROBE_APP"
  stop_pid "$PROBE_PID" 5
  wait "$PROBE_PID" 2>/dev/null || true
  PROBE_PID=
}

stop_pollers() {
  local side
  for side in "${!POLL[@]}"; do
    end_sessions "$WAIT_APP-$side"
    stop_pid "${POLL[$side]}" 5
    wait "${POLL[$side]}" 2>/dev/null || true
  done
  POLL=()
}

# pgbench in the background (cleanup can stop it); records <key>.tps, .txns, .failed_txns,
# .latency_ms, .start, .end.
run_pgbench() { # key pgbench-args...
  local key=$1 out=$LOG_DIR/pgbench-$1.log tps txns failed lat rc=0
  shift
  record "$key.start" "$(now)"
  pgbench -n "$@" -T "$DURATION" -P 10 "$SRC" >"$out" 2>&1 &
  PGBENCH_PID=$!
  wait "$PGBENCH_PID" || rc=$?
  PGBENCH_PID=
  record "$key.end" "$(now)"
  [ "$rc" = 0 ] || { redact <"$out" >&2; die "pgbench ($key) exited with status $rc"; }
  tps=$(awk '/^tps = / { print $3; exit }' "$out")
  txns=$(awk -F': ' '/^number of transactions actually processed/ { split($2, a, "/"); print a[1]; exit }' "$out")
  failed=$(awk -F': ' '/^number of failed transactions/ { split($2, a, " "); print a[1]; exit }' "$out")
  lat=$(awk '/^latency average = / { print $4; exit }' "$out")
  [ -n "$tps" ] && [ -n "$txns" ] || die "cannot read tps from $out"
  record "$key.tps" "$tps"
  record "$key.txns" "$txns"
  record "$key.failed_txns" "${failed:-0}"
  record "$key.latency_ms" "${lat:-}"
  log "$key: source $tps tps, $txns transactions"
}

# pgbench arguments of a LOADS token: N -> -c N -j min(N,2); RN -> -c 2 -j 2 -R N.
load_args() {
  case "$1" in
  R[0-9]*) echo "-c 2 -j 2 -R ${1#R}" ;;
  *) echo "-c $1 -j $(($1 < 2 ? $1 : 2))" ;;
  esac
}

run_load() { # token
  local label=load.$1 args side t_end tail_end end_lsn lo t0 waited
  # shellcheck disable=SC2207
  args=($(load_args "$1"))
  log "$1: pgbench ${args[*]} -T $DURATION, ferry and native streaming"
  record "$label.args" "${args[*]}"
  checkpoint_all
  wait_caught_up "before load $1"
  lo=$(q "$SRC" -c "select coalesce(max(id), 0) from lag_probe")
  record "$label.probe_id_from" "$lo"
  start_samplers "$1"
  start_probe
  sleep 1
  run_pgbench "$label" "${args[@]}"
  t_end=$(kv "$label.end")
  end_lsn=$(current_lsn)
  record "$label.end_lsn" "$end_lsn"
  t0=$(now)
  # Drain: one server-side waiter per slot; each writes the time it saw its slot arrive.
  for side in native ferry; do
    [ "$side" = ferry ] && ! ferry_alive "during load $1" && continue
    local slot=$NATIVE_SLOT
    [ "$side" = ferry ] && slot=$FERRY_SLOT
    (wait_until "$SRC" "$(slot_reached "$slot" "$end_lsn")" "$BENCH_TIMEOUT" "$side" >"$LOG_DIR/drain-$1-$side.log" 2>&1 &&
      now >"$LOG_DIR/drain-$1-$side.t") &
    POLL[$side]=$!
  done
  # Sample for TAIL_S seconds after pgbench, and on until both have drained.
  tail_end=$(awk -v a="$t_end" -v b="$TAIL_S" 'BEGIN { printf "%.3f", a + b }')
  while :; do
    waited=1
    for side in "${!POLL[@]}"; do
      kill -0 "${POLL[$side]}" 2>/dev/null && waited=0
    done
    if [ -n "${POLL[ferry]:-}" ] && kill -0 "${POLL[ferry]}" 2>/dev/null && ! ferry_alive "while draining after load $1"; then
      end_sessions "$WAIT_APP-ferry"
    fi
    [ "$waited" = 1 ] && ge "$(now)" "$tail_end" && break
    sleep 0.2
  done
  stop_probe
  stop_samplers
  for side in "${!POLL[@]}"; do
    wait "${POLL[$side]}" 2>/dev/null || true
    if [ -s "$LOG_DIR/drain-$1-$side.t" ]; then
      record "$label.$side.drain_s" "$(elapsed "$t0" "$(cat "$LOG_DIR/drain-$1-$side.t")")"
      log "$1: $side drained $(kv "$label.$side.drain_s") s after pgbench ended"
    elif [ "$side" = native ]; then
      die "native: slot not at $end_lsn ${BENCH_TIMEOUT}s after load $1: $(redact <"$LOG_DIR/drain-$1-native.log" | tail -n 1)"
    else
      ferry_failed "slot $FERRY_SLOT not at $end_lsn after load $1: $(redact <"$LOG_DIR/drain-$1-ferry.log" | tail -n 1)"
    fi
  done
  POLL=()
  ferry_alive "after load $1" || record "$label.ferry.status" FAILED
  # The probes of the tail applied too, then read: the source's rows and each target's
  # commit times.
  wait_caught_up "after load $1"
  q "$SRC" -F'|' -c "select id, extract(epoch from src_ts) from lag_probe where id > $lo order by id" >"$LOG_DIR/probe-$1-source.txt"
  q "$TGT_NATIVE" -F'|' -c "select id, extract(epoch from applied_ts) from bench_probe.applied where id > $lo order by id" >"$LOG_DIR/probe-$1-native.txt"
  q "$TGT_FERRY" -F'|' -c "select id, extract(epoch from applied_ts) from bench_probe.applied where id > $lo order by id" >"$LOG_DIR/probe-$1-ferry.txt"
}

# Catch-up: a backlog with both consumers stopped, then each alone.
catch_up() {
  local end t0 t1 changes rc=0 started
  log "catch-up: stopping both, building a backlog with pgbench -c 4 -j 2 -T $DURATION"
  wait_caught_up "before the catch-up"
  native_disable
  if ferry_alive "before the catch-up"; then ferry_stop ferry.stream || true; fi
  checkpoint_all
  run_pgbench catchup -c 4 -j 2
  changes=$((4 * $(kv catchup.txns)))
  end=$(current_lsn)
  record catchup.changes "$changes"
  record catchup.end_lsn "$end"

  if [ "$FERRY_OK" = 1 ]; then
    log "catch-up: ferry alone"
    FERRY_LOG=$LOG_DIR/ferry-catchup.log
    # The poller connects first so its start-up is not part of the time.
    wait_until "$SRC" "$(slot_reached "$FERRY_SLOT" "$end")" "$BENCH_TIMEOUT" ferry >"$LOG_DIR/poll-ferry.log" 2>&1 &
    POLL[ferry]=$!
    sleep 0.3
    t0=$(now)
    ferry_start "$FERRY_LOG"
    wait -n "${POLL[ferry]}" "$FERRY_PID" || true
    t1=$(now)
    if ! ferry_alive "during the catch-up"; then
      stop_pollers
    else
      wait "${POLL[ferry]}" || rc=$?
      POLL=()
      if [ "$rc" != 0 ]; then
        ferry_failed "slot $FERRY_SLOT not at $end after ${BENCH_TIMEOUT}s: $(redact <"$LOG_DIR/poll-ferry.log" | tail -n 1)"
      else
        record catchup.ferry.s "$(elapsed "$t0" "$t1")"
        started=$(strip_ansi <"$FERRY_LOG" | awk '/streaming changes/ { print $1; exit }')
        [ -z "$started" ] || record catchup.ferry.startup_s "$(elapsed "$t0" "$(date -d "$started" +%s.%N)")"
        log "catch-up: ferry applied $changes changes in $(elapsed "$t0" "$t1") s"
        ferry_stop ferry.catchup || true
      fi
    fi
  fi

  log "catch-up: native alone"
  rc=0
  wait_until "$SRC" "$(slot_reached "$NATIVE_SLOT" "$end")" "$BENCH_TIMEOUT" native >"$LOG_DIR/poll-native.log" 2>&1 &
  POLL[native]=$!
  sleep 0.3
  t0=$(now)
  native_enable
  wait "${POLL[native]}" || rc=$?
  t1=$(now)
  POLL=()
  [ "$rc" = 0 ] || die "native: slot $NATIVE_SLOT not at $end after ${BENCH_TIMEOUT}s"
  record catchup.native.s "$(elapsed "$t0" "$t1")"
  log "catch-up: native applied $changes changes in $(elapsed "$t0" "$t1") s"
  native_disable
}

table_digest() { # url table
  q "$1" -c "select count(*) || ' ' || coalesce(md5(string_agg(x::text, ',' order by x::text)), '-') from public.$2 x" 2>&1 |
    redact | head -n 1
}

compare() {
  log "comparing ferry_t and native_t with the source"
  local t side url got bad
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
      log "$side: PASS"
    else
      record "$side.identical" FAIL
      record "$side.identical_diff" "differs:$bad"
      log "$side: FAIL: differs:$bad"
    fi
  done
}

ferry_log_errors() {
  local f n total=0
  for f in "$LOG_DIR"/ferry-stream.log "$LOG_DIR"/ferry-catchup.log; do
    [ -f "$f" ] || continue
    n=$(strip_ansi <"$f" | grep -cE ' (ERROR|WARN) |ferry: error|panicked' || true)
    total=$((total + n))
    if [ "$n" != 0 ]; then
      log "ferry: $n ERROR/WARN lines in $(basename "$f"):"
      strip_ansi <"$f" | grep -E ' (ERROR|WARN) |ferry: error|panicked' | tail -n 20 | redact | sed 's/^/    /' >&2
    fi
  done
  record ferry.log_error_lines "$total"
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

def dist(xs, digits=4):
    xs = [x for x in xs if x is not None]
    r = lambda v: None if v is None else round(v, digits)
    return {"n": len(xs), "p50": r(pct(xs, 50)), "p95": r(pct(xs, 95)), "p99": r(pct(xs, 99)),
            "max": r(max(xs)) if xs else None}

def fl(v):
    return float(v) if v not in (None, "") else None

SLOTS = {"ferry": env["B_FERRY_SLOT"], "native": env["B_NATIVE_SLOT"]}

def read_lag(token):
    path = os.path.join(log_dir, f"lag-{token}.txt")
    out = {"ferry": [], "native": []}
    if not os.path.exists(path):
        return out
    by_slot = {v: k for k, v in SLOTS.items()}
    with open(path) as f:
        for line in f:
            p = line.rstrip("\n").split("|")
            if len(p) != 10 or p[1] not in by_slot:
                continue
            t, slot, pid, app, wl, fl_, rl, rbytes, sbytes, confirmed = p
            connected = pid != ""
            out[by_slot[slot]].append({
                "t": float(t), "connected": connected, "app": app or None,
                # NULL lag with a walsender connected: nothing outstanding, counts as 0.
                "write_lag": (fl(wl) or 0.0) if connected else None,
                "flush_lag": (fl(fl_) or 0.0) if connected else None,
                "replay_lag": (fl(rl) or 0.0) if connected else None,
                "replay_null": connected and rl == "",
                "replay_bytes": fl(rbytes),
                "slot_bytes": fl(sbytes),
                "confirmed": fl(confirmed),
            })
    return out

def read_api(token):
    path = os.path.join(log_dir, f"api-{token}.txt")
    rows = []
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                p = line.rstrip("\n").split("|")
                if len(p) >= 2:
                    rows.append((float(p[0]), fl(p[1]), fl(p[2]) if len(p) > 2 else None))
    return rows

def read_probes(token, side):
    path = os.path.join(log_dir, f"probe-{token}-{side}.txt")
    d = {}
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                p = line.rstrip("\n").split("|")
                if len(p) == 2 and p[0]:
                    d[int(p[0])] = float(p[1])
    return d

def stall(samples, start, end):
    """Longest time confirmed_flush_lsn was seen unchanged across consecutive samples."""
    best, run_t0, prev = 0.0, None, None
    for s in samples:
        if not (start <= s["t"] <= end) or s["confirmed"] is None:
            continue
        if prev is None or s["confirmed"] != prev:
            run_t0, prev = s["t"], s["confirmed"]
        best = max(best, s["t"] - run_t0)
    return round(best, 3) if prev is not None else None

def mx(xs):
    xs = [x for x in xs if x is not None]
    return int(max(xs)) if xs else None

loads = []
for token in env["B_LOADS"].split():
    key = f"load.{token}"
    start, end = num(f"{key}.start"), num(f"{key}.end")
    if start is None or end is None:
        continue
    lag = read_lag(token)
    src_probes = read_probes(token, "source")
    window_probes = {i: t for i, t in src_probes.items() if start <= t <= end}
    L = {"load": token, "pgbench_args": kv.get(f"{key}.args"), "start_epoch": start, "end_epoch": end,
         "source_tps": num(f"{key}.tps"), "source_txns": num(f"{key}.txns"),
         "source_failed_txns": num(f"{key}.failed_txns"), "source_latency_ms": num(f"{key}.latency_ms"),
         "end_lsn": kv.get(f"{key}.end_lsn"), "probes_in_window": len(window_probes), "sides": {}}
    for side in ("native", "ferry"):
        ss = lag[side]
        run = [s for s in ss if start <= s["t"] <= end]
        # The first second shows the lag left from before the run.
        run_lag = [s for s in run if s["t"] >= start + 1]
        tail = [s for s in ss if s["t"] > end]
        applied = read_probes(token, side)
        plag = [applied[i] - t for i, t in window_probes.items() if i in applied]
        tail_plag = [applied[i] - t for i, t in src_probes.items() if t > end and i in applied]
        status = "ok"
        if side == "ferry" and (kv.get(f"{key}.ferry.status") == "FAILED" or f"{key}.ferry.drain_s" not in kv):
            status = "FAILED"
        S = {
            "status": status,
            "samples": len(run), "samples_without_walsender": sum(1 for s in run if not s["connected"]),
            "samples_null_replay_lag": sum(1 for s in run_lag if s["replay_null"]),
            "application_names": sorted({s["app"] for s in ss if s["app"]}),
            "replay_lag_s": dist([s["replay_lag"] for s in run_lag]),
            "write_lag_s": dist([s["write_lag"] for s in run_lag]),
            "flush_lag_s": dist([s["flush_lag"] for s in run_lag]),
            "probe_lag_s": dist(plag),
            "probes_not_applied": sum(1 for i in window_probes if i not in applied),
            "max_replay_bytes": mx([s["replay_bytes"] for s in run]),
            "max_slot_bytes": mx([s["slot_bytes"] for s in run]),
            "slot_stall_max_s": stall(ss, start, end),
            "drain_s": num(f"{key}.{side}.drain_s"),
            "tail": {"samples": len(tail), "replay_lag_max_s": (max([s["replay_lag"] for s in tail if s["replay_lag"] is not None], default=None)),
                     "max_slot_bytes": mx([s["slot_bytes"] for s in tail]), "probe_lag_s": dist(tail_plag)},
        }
        if side == "ferry":
            api = read_api(token)
            S["api_lag_seconds"] = dist([a[1] for a in api if start + 1 <= a[0] <= end])
            S["api_samples"] = sum(1 for a in api if start <= a[0] <= end)
            S["api_samples_empty"] = sum(1 for a in api if start <= a[0] <= end and a[1] is None)
            S["api_lag_bytes_max"] = mx([a[2] for a in api if start <= a[0] <= end])
        L["sides"][side] = S
    loads.append(L)

changes = num("catchup.changes")
catchup = {"pgbench_args": "-c 4 -j 2", "source_tps": num("catchup.tps"), "source_txns": num("catchup.txns"),
           "changes": changes, "end_lsn": kv.get("catchup.end_lsn"), "sides": {}}
for side in ("ferry", "native"):
    s = num(f"catchup.{side}.s")
    catchup["sides"][side] = {"s": s, "changes_per_s": round(changes / s) if s and changes else None,
                              "startup_s": num(f"catchup.{side}.startup_s")}
cf, cn = catchup["sides"]["ferry"]["changes_per_s"], catchup["sides"]["native"]["changes_per_s"]
catchup["ratio_ferry_native"] = round(cf / cn, 2) if cf and cn else None

settings = {side: {k.split(".", 2)[2]: v for k, v in kv.items() if k.startswith(f"settings.{side}.")}
            for side in ("source", "target", "native")}
meta = {
    "benchmark": "cdc-durable",
    "design": "concurrent: ferry and the native subscription consume the same pgbench run",
    "timestamp_utc": env["B_TIMESTAMP"], "date": env["B_DATE"],
    "scale": int(env["B_SCALE"]), "duration_s": int(env["B_DURATION"]), "loads": env["B_LOADS"].split(),
    "nproc": int(env["B_NPROC"]), "cpu_model": env["B_CPU"], "pg_version": env["B_PG_VERSION"],
    "durability": {"source": settings["source"], "target": settings["target"],
                   "native_subscription_synchronous_commit": settings["native"].get("subscription_synchronous_commit")},
    "git_commit": env["B_GIT"] or None, "ferry_bin": env["B_FERRY_BIN"], "ferry_bin_mtime_utc": env["B_FERRY_MTIME"],
    "loadavg_start": env["B_LOADAVG_START"], "loadavg_end": env["B_LOADAVG_END"],
    "setup_ferry_fullload_s": num("setup.ferry_fullload_s"), "setup_native_copy_s": num("setup.native_copy_s"),
    "ferry_status": kv.get("ferry.status", "ok"), "ferry_reason": kv.get("ferry.reason"),
    "ferry_exit_status": {k: num(f"ferry.{k}.exit_status") for k in ("stream", "catchup")},
    "ferry_log_error_lines": num("ferry.log_error_lines"),
    "source_rows": {k.split(".", 2)[2]: int(v) for k, v in kv.items() if k.startswith("source.rows.")},
    "identical": {s: kv.get(f"{s}.identical") for s in ("ferry", "native")},
    "identical_diff": {s: kv.get(f"{s}.identical_diff") for s in ("ferry", "native") if kv.get(f"{s}.identical_diff")},
}
with open(json_out, "w") as f:
    json.dump({**meta, "loads": loads, "catchup": catchup}, f, indent=2)
    f.write("\n")

def fmt(v, spec):
    return "-" if v is None else format(v, spec)

def four(d, spec=".3f"):
    return " / ".join(fmt(d.get(k), spec) for k in ("p50", "p95", "p99", "max"))

def table(head, rows, right=None):
    """A markdown table; columns in `right` (default: all but the first) right-aligned."""
    right = set(range(1, len(head))) if right is None else set(right)
    w = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
    line = lambda r: "| " + " | ".join(str(x).rjust(n) if i in right else str(x).ljust(n) for i, (x, n) in enumerate(zip(r, w))) + " |"
    print(line(head))
    print("|" + "|".join("-" * (n + 1) + ":" if i in right else "-" * (n + 2) for i, n in enumerate(w)) + "|")
    for r in rows:
        print(line(r))

d = meta["durability"]
dur = lambda s: f"fsync={s.get('fsync')} synchronous_commit={s.get('synchronous_commit')} full_page_writes={s.get('full_page_writes')} shared_buffers={s.get('shared_buffers')}"
print(f"## CDC lag under production durability, ferry vs native logical replication")
print()
print(f"- {meta['date']}, nproc={meta['nproc']}, CPU {meta['cpu_model']}, PostgreSQL {meta['pg_version']}")
print(f"- durability: source {dur(d['source'])}; target {dur(d['target'])}; "
      f"native subscription synchronous_commit={d['native_subscription_synchronous_commit']}")
print(f"- pgbench scale {meta['scale']}, {meta['duration_s']} s per load; loads {' '.join(meta['loads'])}; "
      f"ferry and native attached at the same time, consuming the same pgbench run")
print(f"- ferry {meta['ferry_bin']} (built {meta['ferry_bin_mtime_utc']}), repo at {meta['git_commit']}; "
      f"load average {meta['loadavg_start']} at the start, {meta['loadavg_end']} at the end")
head = ("side", "source tps", "replay_lag p50/p95/p99/max s", "probe lag p50/p95/p99/max s",
        "max bytes behind (replay)", "max slot bytes", "slot stall max s", "drain s")
for L in loads:
    print()
    print(f"### load {L['load']}: pgbench {L['pgbench_args']} -T {meta['duration_s']}  "
          f"({fmt(L['source_tps'], '.0f')} tps, {fmt(L['source_txns'], ',d')} transactions, "
          f"{fmt(L['source_failed_txns'], 'd')} failed, {L['probes_in_window']} probes)")
    print()
    rows = []
    for side in ("native", "ferry"):
        S = L["sides"][side]
        rows.append((side, fmt(L["source_tps"], ".0f") if S["status"] == "ok" else "FAILED",
                     four(S["replay_lag_s"]), four(S["probe_lag_s"]),
                     fmt(S["max_replay_bytes"], ",d"), fmt(S["max_slot_bytes"], ",d"),
                     fmt(S["slot_stall_max_s"], ".1f"), fmt(S["drain_s"], ".2f")))
    table(head, rows)
    f = L["sides"]["ferry"]
    print()
    print(f"ferry API lag_seconds p50/p95/p99/max: {four(f['api_lag_seconds'])} s "
          f"({f['api_samples']} samples, {f['api_samples_empty']} without a figure)")
    for side in ("native", "ferry"):
        S = L["sides"][side]
        extra = []
        if S["probes_not_applied"]:
            extra.append(f"{S['probes_not_applied']} probes NOT applied")
        if S["samples_without_walsender"]:
            extra.append(f"{S['samples_without_walsender']} samples without walsender")
        print(f"{side}: write_lag {four(S['write_lag_s'])} s, flush_lag {four(S['flush_lag_s'])} s; "
              f"{S['samples']} samples ({S['samples_null_replay_lag']} NULL replay_lag), "
              f"walsender {'/'.join(S['application_names']) or '-'}" + ("; " + ", ".join(extra) if extra else ""))

print()
print(f"### catch-up: backlog of pgbench {catchup['pgbench_args']} -T {meta['duration_s']} "
      f"({fmt(catchup['source_txns'], ',d')} transactions, {fmt(changes, ',d')} changes), each side alone")
print()
rows = []
for side in ("ferry", "native"):
    c = catchup["sides"][side]
    rows.append((side, fmt(changes, ",d"), fmt(c["s"], ".2f"), fmt(c["changes_per_s"], ",d"),
                 fmt(c["startup_s"], ".2f") if side == "ferry" else "-"))
table(("side", "changes", "seconds", "changes/s", "of which start-up s"), rows)
print()
print(f"ratio ferry/native (changes/s): {fmt(catchup['ratio_ferry_native'], '.2f')}")
print()
print("### correctness (count and md5 of every row of " + ", ".join(sorted(meta["source_rows"])) + ")")
print()
table(("side", "result", "detail"),
      [(s, meta["identical"].get(s) or "-", meta["identical_diff"].get(s, "")) for s in ("ferry", "native")], right=())
print()
if meta["ferry_status"] != "ok":
    print(f"ferry FAILED: {meta['ferry_reason']}")
print("source tps: the one pgbench run both sides consumed. replay_lag: per-second samples of")
print("  pg_stat_replication on the source while pgbench ran, first second left out, NULL with a")
print("  walsender = 0; it only covers data the walsender has decoded and sent: a consumer that falls")
print("  behind throttles its walsender, so its bytes grow while replay_lag can stay small.")
print("probe lag: commit time on the target (deferred trigger, clock_timestamp()) - insert time on the")
print("  source, for the probes (one row every 200 ms) inserted while pgbench ran.")
print("bytes: current WAL (pg_current_wal_lsn) - replay_lsn / - the slot's confirmed_flush_lsn, max while")
print("  pgbench ran. slot stall: longest time confirmed_flush_lsn stayed the same in the 1 s samples.")
print("drain: from the end of pgbench until the slot confirmed pg_current_wal_insert_lsn() taken then")
print("  (polled every 0.1 s). catch-up: time from start (ferry process / ALTER SUBSCRIPTION ENABLE)")
print("  until the slot confirmed the source's insert position after the backlog's pgbench.")
print(f"JSON: {json_out}")
PY
}

main() {
  if [ "${1:-}" = -h ] || [ "${1:-}" = --help ]; then
    sed -n '2,/^set -euo/p' "$SELF" | sed '$d; s/^# \{0,1\}//'
    return
  fi
  [ -x "$FERRY_BIN" ] || { echo "$FERRY_BIN not built (cargo build --release -p ferry)" >&2; exit 2; }
  local tok
  for tok in $LOADS; do
    [[ "$tok" =~ ^(R?[1-9][0-9]*)$ ]] || { echo "LOADS: '$tok' is neither N (clients) nor RN (rate)" >&2; exit 2; }
  done
  command -v curl >/dev/null || { echo "curl is required" >&2; exit 2; }

  local stamp
  stamp=$(date -u +%Y%m%dT%H%M%SZ)
  mkdir -p "$REPO/bench/out"
  JSON_OUT=$REPO/bench/out/cdc-durable-$stamp.json
  LOG_DIR=$REPO/bench/out/cdc-durable-$stamp.logs
  mkdir -p "$LOG_DIR"
  KV=$LOG_DIR/results.kv
  : >"$KV"
  FERRY_OK=1 FERRY_PID= SAMPLER_PID= API_PID= PROBE_PID= PGBENCH_PID=
  FERRY_LOG=$LOG_DIR/ferry-stream.log
  declare -gA POLL=()

  # The benchmark needs the machine to itself; the load average shows whether it had it.
  B_LOADAVG_START=$(cut -d' ' -f1-3 /proc/loadavg)
  trap cleanup EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
  ensure_cluster "$SRC_CLUSTER" "$SRC_PORT"
  ensure_cluster "$TGT_CLUSTER" "$TGT_PORT"
  SRC_ADMIN=$(db_url "$SRC_CLUSTER" postgres)
  TGT_ADMIN=$(db_url "$TGT_CLUSTER" postgres)
  SRC=$(db_url "$SRC_CLUSTER" bench)
  TGT_FERRY=$(db_url "$TGT_CLUSTER" ferry_t)
  TGT_NATIVE=$(db_url "$TGT_CLUSTER" native_t)
  check_durability

  setup
  log "ferry: change capture (API on $FERRY_LISTEN); native: subscription enabled"
  ferry_start "$FERRY_LOG"
  ferry_wait_streaming || ferry_failed "not streaming 60 s after its start"
  native_enable
  wait_until "$SRC" "$(slot_active "$NATIVE_SLOT")" 60 || die "native: apply worker did not connect within 60 s"

  for tok in $LOADS; do
    run_load "$tok"
  done
  catch_up
  compare
  ferry_log_errors

  export B_DATE B_TIMESTAMP=$stamp B_SCALE=$SCALE B_DURATION=$DURATION B_LOADS=$LOADS
  export B_FERRY_SLOT=$FERRY_SLOT B_NATIVE_SLOT=$NATIVE_SLOT B_LOADAVG_START B_LOADAVG_END
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
  [ "$(kv ferry.identical)" = PASS ] && [ "$(kv native.identical)" = PASS ]
}

main "$@"
