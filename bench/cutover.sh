#!/usr/bin/env bash
# Cutover benchmark: what Ferry's proxy costs an application, and what the application sees
# while `ferry cutover` and `ferry rollback` move it between source and target under load,
# in the same run.
#
#   bench/cutover.sh            (or BENCH_SUITES=cutover bench/run.sh)
#
# Setup (not timed): source database "bench" from pgbench -i -s SCALE, pgbench_history with
# REPLICA IDENTITY FULL, a table tickets (id bigserial PRIMARY KEY, client int NOT NULL); then
# `ferry migrate --listen 127.0.0.1:API_PORT --proxy-listen 127.0.0.1:PROXY_PORT` in the
# background until its phase is cdc, and a clean `ferry verify --api` (cutover needs one).
#
# Ferry streams changes throughout. Before each pgbench run: change capture caught up (lag
# under 1 MB or 1 s, from GET /api/status) and a checkpoint on both clusters.
#   proxy overhead  pgbench -c 8 -j 2 -M prepared -T SECONDS, TPC-B (builtin) then select-only
#                   (-S), then select-only with one client (-c 1 -j 1: nothing CPU-bound, the
#                   latency the extra hop adds), each straight to the source, then through the proxy
#   cycles          one pgbench through the proxy (-c 8 -j 2 -M prepared, TPC-B plus one
#                   INSERT INTO tickets per transaction, per-second aggregate log) while, CYCLES
#                   times: 2 s, ferry cutover --max-pause 2s, 2 s, ferry rollback --max-pause 2s.
#                   A switch refused (no_go) for lag, or because forward replication has not
#                   resumed since the last rollback, is retried every second (counted).
#   correctness     pgbench's failed transactions and aborted clients; at the end on the source,
#                   and on the target once caught up: sum(abalance) = sum(tbalance) =
#                   sum(bbalance) = sum(delta), tickets count = distinct ids = transactions
#                   pgbench processed; then one more ferry verify --api.
#
# Targets: max pause < 500 ms, 0 failed transactions, proxy TPS >= 0.9x direct.
#
# Environment: SCALE=10, SECONDS=20 (each proxy-overhead run), CYCLES=20, CYCLE_SECONDS=8 (the
# cycles' pgbench runs 5 + CYCLES * CYCLE_SECONDS s; it must outlast the last rollback),
# BENCH_KEEP=1 (leave the cut-src/cut-tgt clusters running), BENCH_TIMEOUT=600 (s before a
# wait is abandoned), FERRY_BIN=target/release/ferry, API_PORT=55834, PROXY_PORT=55835.
# Output: a table on stdout (progress on stderr), JSON in bench/out/cutover-<UTC timestamp>.json,
# logs (ferry, pgbench, each switch's JSON report) in bench/out/cutover-<UTC timestamp>.logs/.
# Exit status 1 when a correctness check fails (the targets on time are only reported).
set -euo pipefail
# Production durability (fsync, synchronous_commit, full_page_writes on) unless asked otherwise:
# a figure measured with them off says nothing about production. FERRY_PG_DURABLE=0 for the fast
# settings the tests use.
export FERRY_PG_DURABLE=${FERRY_PG_DURABLE:-1}

SELF=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/$(basename "${BASH_SOURCE[0]}")
REPO=$(cd "$(dirname "$SELF")/.." && pwd)
PG_BIN=${FERRY_PG_BIN:-/usr/lib/postgresql/15/bin}
export PATH="$PG_BIN:$PATH"
SCALE=${SCALE:-10}
# Bash's own SECONDS counts the seconds since the shell started: read the environment's.
RUN_SECONDS=$(printenv SECONDS || echo 20)
CYCLES=${CYCLES:-20}
CYCLE_SECONDS=${CYCLE_SECONDS:-8}
BENCH_TIMEOUT=${BENCH_TIMEOUT:-600}
API_PORT=${API_PORT:-55834}
PROXY_PORT=${PROXY_PORT:-55835}
FERRY_BIN=${FERRY_BIN:-target/release/ferry}
case "$FERRY_BIN" in /*) ;; *) FERRY_BIN=$REPO/$FERRY_BIN ;; esac
SRC_CLUSTER=cut-src SRC_PORT=55832
TGT_CLUSTER=cut-tgt TGT_PORT=55833
API=http://127.0.0.1:$API_PORT
CLIENTS=8 THREADS=2
MAX_PAUSE=2s
RETRY_LIMIT=30 # no_go answers retried per switch (one a second)

log() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", b - a }'; }
q() {
  local url=$1
  shift
  PGOPTIONS="-c client_min_messages=warning" psql -X -q -At -v ON_ERROR_STOP=1 -d "$url" "$@"
}
db_url() { local u; u=$("$REPO/scripts/pg.sh" url "$1"); echo "${u%/*}/$2"; }
# Every log excerpt we print goes through this, so passwords never reach the terminal.
redact() { sed "s/${PASSWORD:-ferry-test-pw}/****/g"; }
record() { printf '%s=%s\n' "$1" "$2" >>"$KV"; }
die() {
  log "FAILED: $*"
  exit 1
}

case "${1:-}" in -h | --help)
  sed -n '2,/^set -euo/p' "$SELF" | sed '$d; s/^# \{0,1\}//'
  exit 0
  ;;
esac

for v in SCALE RUN_SECONDS CYCLES CYCLE_SECONDS BENCH_TIMEOUT API_PORT PROXY_PORT; do
  [[ ${!v} =~ ^[1-9][0-9]*$ ]] || die "${v/RUN_/} must be a positive whole number, not '${!v}'"
done
cd "$REPO"
[ -x "$FERRY_BIN" ] || {
  log "building $FERRY_BIN"
  cargo build --release -q -p ferry
}
[ -x "$FERRY_BIN" ] || die "$FERRY_BIN does not exist (cargo build --release -p ferry)"

stop_pid() { # pid grace-seconds: SIGTERM, then SIGKILL after the grace period
  local pid=$1 i
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < $2 * 10; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}
cleanup() {
  local rc=$?
  trap - EXIT
  set +e
  stop_pid "${BENCH_PID:-}" 5
  stop_pid "${FERRY_PID:-}" 30
  if [ "${BENCH_KEEP:-0}" = 1 ]; then
    log "BENCH_KEEP=1: leaving $SRC_CLUSTER and $TGT_CLUSTER running"
  else
    scripts/pg.sh stop "$SRC_CLUSTER" >/dev/null 2>&1 || true
    scripts/pg.sh stop "$TGT_CLUSTER" >/dev/null 2>&1 || true
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
# A cluster kept with BENCH_KEEP=1 is still running; pg_ctl start would refuse it.
ensure_cluster() { # name port
  if pg_isready -q -h 127.0.0.1 -p "$2"; then return; fi
  scripts/pg.sh start "$1" "$2" -c wal_level=logical >/dev/null
}
ensure_cluster "$SRC_CLUSTER" "$SRC_PORT"
ensure_cluster "$TGT_CLUSTER" "$TGT_PORT"
SRC_ADMIN=$(scripts/pg.sh url "$SRC_CLUSTER")
TGT_ADMIN=$(scripts/pg.sh url "$TGT_CLUSTER")
SRC=$(db_url "$SRC_CLUSTER" bench)
TGT=$(db_url "$TGT_CLUSTER" bench)
# The proxy accepts the source URL's user and password.
PASSWORD=${SRC_ADMIN#postgres://*:}
PASSWORD=${PASSWORD%%@*}

STAMP=$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p bench/out
OUT=bench/out/cutover-$STAMP.logs
mkdir -p "$OUT"
KV=$OUT/results.kv
SWITCHES=$OUT/switches.tsv
: >"$KV"
: >"$SWITCHES"
FERRY_PID="" BENCH_PID=""

ferry_alive() {
  kill -0 "$FERRY_PID" 2>/dev/null || {
    tail -n 20 "$OUT/ferry.log" | redact >&2
    die "ferry migrate exited, see $OUT/ferry.log"
  }
}
# Change capture caught up: lag under 1 MB or under 1 s, twice in a row a second apart (the
# API samples once a second).
caught_up() {
  python3 - "$API" <<'PY'
import json, sys, urllib.request
try:
    s = json.load(urllib.request.urlopen(sys.argv[1] + "/api/status", timeout=5))
except Exception:
    sys.exit(1)
b, l = s.get("lag_bytes"), s.get("lag_seconds")
sys.exit(0 if (b is not None and b < 1 << 20) or (l is not None and l < 1) else 1)
PY
}
wait_caught_up() {
  local i ok=0
  for ((i = 0; i < BENCH_TIMEOUT; i++)); do
    ferry_alive
    if caught_up; then ok=$((ok + 1)); else ok=0; fi
    [ "$ok" -lt 2 ] || return 0
    sleep 1
  done
  die "change capture not caught up after ${BENCH_TIMEOUT}s"
}
# CPU time of ferry migrate (proxy and change capture), in clock ticks.
ferry_cpu() { awk '{ print $14 + $15 }' "/proc/$FERRY_PID/stat"; }
checkpoint_all() {
  q "$SRC_ADMIN" -c checkpoint
  q "$TGT_ADMIN" -c checkpoint
}
# A switch's JSON report as one line: outcome, pause_ms, whether a no_go passes by itself (lag,
# forward replication not resumed since the last rollback, a switch still running), reason.
read_report() { # report-file
  python3 - "$1" <<'PY'
import json, re, sys
try:
    r = json.load(open(sys.argv[1]))
except Exception:
    r = {}
passing = all(re.search(r"lag|rolled_back|another cutover or rollback|not known yet", b) for b in r.get("blockers") or ["?"])
reason = r.get("reason") or r.get("error") or ("" if r else "no JSON report (see switch-stderr.log)")
print(r.get("outcome") or "error", r.get("pause_ms") or "-", int(passing), reason.replace("\n", " ") or "-", sep="\t")
PY
}

LOADAVG_START=$(cut -d' ' -f1-3 /proc/loadavg)
log "setup: pgbench -i -s $SCALE on the source, ferry migrate until its phase is cdc"
q "$SRC_ADMIN" -c "DROP DATABASE IF EXISTS bench WITH (FORCE)" -c "CREATE DATABASE bench"
q "$TGT_ADMIN" -c "DROP DATABASE IF EXISTS bench WITH (FORCE)" -c "CREATE DATABASE bench"
# Slots and replication origins outlive the database; these clusters are the benchmark's own.
for a in "$SRC_ADMIN" "$TGT_ADMIN"; do
  q "$a" -c "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE NOT active" >/dev/null
  q "$a" -c "SELECT pg_replication_origin_drop(roname) FROM pg_replication_origin" >/dev/null
done
pgbench -i -q -s "$SCALE" "$SRC" >"$OUT/pgbench-init.log" 2>&1 || {
  redact <"$OUT/pgbench-init.log" >&2
  die "pgbench -i"
}
q "$SRC" -c "ALTER TABLE pgbench_history REPLICA IDENTITY FULL" \
  -c "CREATE TABLE tickets (id bigserial PRIMARY KEY, client int NOT NULL)" -c "VACUUM ANALYZE"
NO_COLOR=1 "$FERRY_BIN" migrate --source "$SRC" --target "$TGT" \
  --listen "127.0.0.1:$API_PORT" --proxy-listen "127.0.0.1:$PROXY_PORT" >"$OUT/ferry.log" 2>&1 &
FERRY_PID=$!
t0=$(now)
for ((i = 0; ; i++)); do
  ferry_alive
  [ "$(q "$TGT" -c "SELECT phase FROM ferry.migrations" 2>/dev/null || true)" != cdc ] || break
  [ "$i" -lt $((BENCH_TIMEOUT * 2)) ] || die "ferry migrate not in phase cdc after ${BENCH_TIMEOUT}s"
  sleep 0.5
done
record setup_to_cdc_s "$(elapsed "$t0" "$(now)")"
wait_caught_up
"$FERRY_BIN" verify --api "$API" >"$OUT/verify-initial.txt" 2>&1 || {
  redact <"$OUT/verify-initial.txt" >&2
  die "the initial ferry verify --api did not end clean"
}
q "$SRC" -c "VACUUM ANALYZE"

# pgbench to the source directly or through the proxy; the same options and password either way.
# It replaces the shell it runs in: call it in a subshell, ( ) or &, so that $! is pgbench's.
pgbench_at() { # direct|proxy pgbench-args...
  local port=$SRC_PORT
  [ "$1" = direct ] || port=$PROXY_PORT
  shift
  PGPASSWORD=$PASSWORD exec pgbench -n -h 127.0.0.1 -p "$port" -U postgres -c "$CLIENTS" -j "$THREADS" -M prepared "$@" bench
}

for w in tpcb-like select-only select-1client; do
  for side in direct proxy; do
    wait_caught_up
    checkpoint_all
    log "proxy overhead: $w $side, ${RUN_SECONDS}s"
    args=(-T "$RUN_SECONDS")
    case "$w" in
      select-only) args+=(-S) ;;
      # One client, so nothing is CPU-bound: what the extra hop adds to each round trip.
      select-1client) args+=(-S -c 1 -j 1) ;;
    esac
    cpu0=$(ferry_cpu)
    (pgbench_at "$side" "${args[@]}") >"$OUT/pgbench-$w-$side.log" 2>&1 || {
      redact <"$OUT/pgbench-$w-$side.log" >&2
      die "pgbench $w $side"
    }
    record "$w.$side.ferry_cpu_s" "$(awk -v a="$cpu0" -v b="$(ferry_cpu)" -v t="$(getconf CLK_TCK)" 'BEGIN { printf "%.2f", (b - a) / t }')"
  done
done

cat >"$OUT/tpcb-tickets.sql" <<'SQL'
\set aid random(1, 100000 * :scale)
\set bid random(1, 1 * :scale)
\set tid random(1, 10 * :scale)
\set delta random(-5000, 5000)
BEGIN;
UPDATE pgbench_accounts SET abalance = abalance + :delta WHERE aid = :aid;
SELECT abalance FROM pgbench_accounts WHERE aid = :aid;
UPDATE pgbench_tellers SET tbalance = tbalance + :delta WHERE tid = :tid;
UPDATE pgbench_branches SET bbalance = bbalance + :delta WHERE bid = :bid;
INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (:tid, :bid, :aid, :delta, CURRENT_TIMESTAMP);
INSERT INTO tickets (client) VALUES (:client_id);
END;
SQL

# One cutover or rollback, retried every second while refused for a passing reason. Appends
# n, kind, outcome, retries, start, end, report file to $SWITCHES; sets OUTCOME.
N=0
do_switch() { # cutover|rollback
  local kind=$1 rep t0 t1 retries=0 pause passing reason
  N=$((N + 1))
  rep=$OUT/switch-$(printf %03d "$N")-$kind.json
  while :; do
    ferry_alive
    t0=$(now)
    "$FERRY_BIN" "$kind" --api "$API" --max-pause "$MAX_PAUSE" --json >"$rep" 2>>"$OUT/switch-stderr.log" || true
    t1=$(now)
    IFS=$'\t' read -r OUTCOME pause passing reason < <(read_report "$rep")
    if [ "$OUTCOME" = no_go ] && [ "$passing" = 1 ] && [ "$retries" -lt "$RETRY_LIMIT" ]; then
      retries=$((retries + 1))
      sleep 1
      continue
    fi
    break
  done
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$N" "$kind" "$OUTCOME" "$retries" "$t0" "$t1" "$rep" >>"$SWITCHES"
  log "$kind $N: $OUTCOME, pause $pause ms, $retries retries"
  [ "$OUTCOME" = "done" ] || log "$kind $N: $(redact <<<"$reason")"
}

BENCH_T=$((5 + CYCLES * CYCLE_SECONDS))
wait_caught_up
checkpoint_all
log "cycles: $CYCLES cutover/rollback cycles under pgbench through the proxy (-T $BENCH_T)"
pgbench_at proxy -s "$SCALE" -T "$BENCH_T" -f "$OUT/tpcb-tickets.sql" \
  -l --aggregate-interval=1 --log-prefix="$OUT/agg" >"$OUT/pgbench-cycles.log" 2>&1 &
BENCH_PID=$!
BENCH_START=$(now)
BENCH_END=$(awk -v s="$BENCH_START" -v t="$BENCH_T" 'BEGIN { printf "%.3f", s + t }')
# Every switch of the cycles runs under load: pgbench must have 3 s left.
under_load() { # what
  kill -0 "$BENCH_PID" 2>/dev/null && awk -v e="$BENCH_END" -v n="$(now)" 'BEGIN { exit !(e - n >= 3) }' && return 0
  record cycles_cut_short "pgbench (-T $BENCH_T) ended before $1: raise CYCLE_SECONDS (now $CYCLE_SECONDS)"
  log "pgbench (-T $BENCH_T) ended before $1: raise CYCLE_SECONDS (now $CYCLE_SECONDS)"
  return 1
}
ON=source
for ((c = 1; c <= CYCLES; c++)); do
  sleep 2
  if [ "$ON" = source ]; then
    under_load "the cutover of cycle $c" || break
    do_switch cutover
    [ "$OUTCOME" != "done" ] || ON=target
  fi
  sleep 2
  if [ "$ON" = target ]; then
    under_load "the rollback of cycle $c" || break
    do_switch rollback
    [ "$OUTCOME" != "done" ] || ON=source
  fi
done
# Traffic must end on the source, where the invariants are checked.
for ((i = 0; i < 5; i++)); do
  [ "$ON" = target ] || break
  sleep 2
  do_switch rollback
  [ "$OUTCOME" != "done" ] || ON=source
done
record ended_on "$ON"
log "switches finished; pgbench runs until its -T ($(awk -v e="$BENCH_END" -v n="$(now)" 'BEGIN { printf "%.0f", e - n }') s left)"
rc=0
wait "$BENCH_PID" || rc=$?
BENCH_PID=
record cycles_pgbench_exit "$rc"

log "checks: invariants on the source, then on the target once caught up; a last verification"
invariant_sql="SELECT (SELECT sum(abalance) FROM pgbench_accounts), (SELECT sum(tbalance) FROM pgbench_tellers),
  (SELECT sum(bbalance) FROM pgbench_branches), (SELECT sum(delta) FROM pgbench_history),
  (SELECT count(*) FROM tickets), (SELECT count(DISTINCT id) FROM tickets)"
record source_sums "$(q "$SRC" -c "$invariant_sql")"
wait_caught_up
record target_sums "$(q "$TGT" -c "$invariant_sql")"
rc=0
"$FERRY_BIN" verify --api "$API" >"$OUT/verify-final.txt" 2>&1 || rc=$?
record final_verify_exit "$rc"
t0=$(now)
kill -TERM "$FERRY_PID"
rc=0
wait "$FERRY_PID" || rc=$?
FERRY_PID=
record ferry_exit "$rc"
record ferry_stop_s "$(elapsed "$t0" "$(now)")"

export B_STAMP=$STAMP B_OUT=$OUT B_SCALE=$SCALE B_SECONDS=$RUN_SECONDS B_CYCLES=$CYCLES B_CLIENTS=$CLIENTS
export B_THREADS=$THREADS B_MAX_PAUSE=$MAX_PAUSE B_BENCH_T=$BENCH_T B_FERRY_BIN=${FERRY_BIN#"$REPO"/}
export B_NPROC B_PG_VERSION B_FERRY_MTIME B_LOADAVG_START=$LOADAVG_START B_LOADAVG_END
B_LOADAVG_END=$(cut -d' ' -f1-3 /proc/loadavg)
B_NPROC=$(nproc)
B_PG_VERSION=$(postgres --version)
B_FERRY_MTIME=$(date -u -r "$FERRY_BIN" +%Y-%m-%dT%H:%M:%SZ)
python3 - <<'PY' | tee "bench/out/cutover-$STAMP.txt"
import glob, json, math, os, re, statistics

env = os.environ
out = env["B_OUT"]
kv = dict(l.rstrip("\n").split("=", 1) for l in open(f"{out}/results.kv") if "=" in l)


def pgbench(path):
    text = open(path).read()
    m = lambda rx: re.search(rx, text, re.M)
    tps = m(r"^tps = ([0-9.]+)")
    lat = m(r"^latency average = ([0-9.]+) ms")
    txns = m(r"^number of transactions actually processed: (\d+)")
    failed = m(r"^number of failed transactions: (\d+)")
    return {
        "tps": float(tps.group(1)) if tps else None,
        "latency_avg_ms": float(lat.group(1)) if lat else None,
        "transactions": int(txns.group(1)) if txns else None,
        "failed_transactions": int(failed.group(1)) if failed else None,
        "aborted_clients": len(re.findall(r"client \d+ .*aborted", text)),
        "run_aborted": "Run was aborted" in text,
    }


def pct(xs, p):  # nearest rank
    xs = sorted(xs)
    return xs[max(0, math.ceil(p / 100 * len(xs)) - 1)] if xs else None


def ratio(a, b):
    return round(a / b, 3) if a is not None and b else None


overhead = {}
for w in ("tpcb-like", "select-only", "select-1client"):
    d, p = pgbench(f"{out}/pgbench-{w}-direct.log"), pgbench(f"{out}/pgbench-{w}-proxy.log")
    for side, r in (("direct", d), ("proxy", p)):
        cpu = kv.get(f"{w}.{side}.ferry_cpu_s")
        r["ferry_cpu_cores"] = round(float(cpu) / int(env["B_SECONDS"]), 2) if cpu else None
    overhead[w] = {"direct": d, "proxy": p, "tps_ratio": ratio(p["tps"], d["tps"]),
                   "latency_ratio": ratio(p["latency_avg_ms"], d["latency_avg_ms"])}

# Per-second aggregates of every pgbench thread: start, transactions, latency sum, sum of squares,
# min, max (microseconds), failures, ...
per_sec = {}
for path in glob.glob(f"{out}/agg.*"):
    for line in open(path):
        f = line.split()
        if len(f) >= 6:
            s = per_sec.setdefault(int(f[0]), {"txns": 0, "max_ms": 0.0})
            s["txns"] += int(f[1])
            s["max_ms"] = max(s["max_ms"], float(f[5]) / 1000)

switches, windows = [], set()
for line in open(f"{out}/switches.tsv"):
    n, kind, outcome, retries, t0, t1, rep = line.rstrip("\n").split("\t")
    try:
        r = json.load(open(rep))
    except Exception:
        r = {}
    secs = range(int(float(t0)), int(float(t1)) + 2)  # from the command's start to 1 s after its end
    windows.update(secs)
    lat = [per_sec[s]["max_ms"] for s in secs if s in per_sec]
    switches.append({
        "n": int(n), "kind": kind, "outcome": outcome, "no_go_retries": int(retries),
        "command_s": round(float(t1) - float(t0), 3), "pause_ms": r.get("pause_ms"),
        "held_requests": r.get("held_requests"), "max_wait_ms": r.get("max_wait_ms"),
        "steps": r.get("steps"), "reason": r.get("reason"),
        "max_txn_latency_ms": round(max(lat), 1) if lat else None,
    })
outside = [s["max_ms"] for t, s in per_sec.items() if t not in windows]


def summary(sel):
    pauses = [s["pause_ms"] for s in sel if s["pause_ms"] is not None]
    lats = [s["max_txn_latency_ms"] for s in sel if s["max_txn_latency_ms"] is not None]
    return {
        "switches": len(sel), "done": sum(s["outcome"] == "done" for s in sel),
        "aborted": sum(s["outcome"] == "aborted" for s in sel),
        "other": sum(s["outcome"] not in ("done", "aborted") for s in sel),
        "no_go_retries": sum(s["no_go_retries"] for s in sel),
        "pause_ms_p50": pct(pauses, 50), "pause_ms_p99": pct(pauses, 99),
        "pause_ms_max": max(pauses) if pauses else None,
        "max_txn_latency_ms": max(lats) if lats else None,
    }


summaries = {k: summary([s for s in switches if k == "all" or s["kind"] == k])
             for k in ("cutover", "rollback", "all")}
steps = {}
for s in switches:
    if s["outcome"] == "done":
        for name, ms in s["steps"] or []:
            steps.setdefault(name, []).append(ms)
cyc = pgbench(f"{out}/pgbench-cycles.log")
cyc["exit_status"] = int(kv.get("cycles_pgbench_exit", -1))


def sums(key):
    v = kv.get(key, "").split("|")
    if len(v) != 6 or "" in v:
        return {"raw": kv.get(key)}
    a, t, b, h, n, d = map(int, v)
    return {"sum_abalance": a, "sum_tbalance": t, "sum_bbalance": b, "sum_delta": h,
            "tickets": n, "tickets_distinct": d, "invariant": a == t == b == h,
            "tickets_match": n == d == cyc["transactions"]}


source, target = sums("source_sums"), sums("target_sums")
final_verify = "identical" if kv.get("final_verify_exit") == "0" else f"NOT clean (exit {kv.get('final_verify_exit')})"
max_pause = summaries["all"]["pause_ms_max"]
targets = {
    "max_pause_under_500ms": max_pause is not None and max_pause < 500,
    "zero_failed_transactions": cyc["failed_transactions"] == 0 and cyc["aborted_clients"] == 0
                                and not cyc["run_aborted"] and cyc["exit_status"] == 0,
    "proxy_tps_at_least_0.9x": all((o["tps_ratio"] or 0) >= 0.9 for o in overhead.values()),
}
correct = (targets["zero_failed_transactions"] and source.get("invariant") and source.get("tickets_match")
           and target.get("invariant") and target.get("tickets_match") and kv.get("final_verify_exit") == "0"
           and kv.get("ended_on") == "source" and all(s["outcome"] == "done" for s in switches)
           and "cycles_cut_short" not in kv)
result = {
    "benchmark": "cutover", "stamp": env["B_STAMP"], "nproc": int(env["B_NPROC"]),
    "pg_version": env["B_PG_VERSION"], "loadavg_start": env["B_LOADAVG_START"], "loadavg_end": env["B_LOADAVG_END"], "ferry_bin": env["B_FERRY_BIN"], "ferry_bin_mtime_utc": env["B_FERRY_MTIME"],
    "scale": int(env["B_SCALE"]), "seconds": int(env["B_SECONDS"]), "cycles": int(env["B_CYCLES"]),
    "pgbench_clients": int(env["B_CLIENTS"]), "pgbench_threads": int(env["B_THREADS"]),
    "max_pause": env["B_MAX_PAUSE"], "cycles_pgbench_T": int(env["B_BENCH_T"]),
    "setup_to_cdc_s": float(kv["setup_to_cdc_s"]),
    "proxy_overhead": overhead,
    "switch_summary": summaries, "switches": switches,
    "steps_ms": {k: {"p50": pct(v, 50), "max": max(v), "n": len(v)} for k, v in steps.items()},
    "per_second_max_latency_outside_switches_ms": {"p50": pct(outside, 50), "max": max(outside) if outside else None},
    "cycles_pgbench": cyc, "source_at_end": source, "target_after_catch_up": target,
    "final_verification": final_verify, "ended_on": kv.get("ended_on"), "cycles_cut_short": kv.get("cycles_cut_short"),
    "ferry_exit_status": int(kv["ferry_exit"]), "ferry_stop_s": float(kv["ferry_stop_s"]),
    "targets": targets, "correct": bool(correct),
}
with open(f"bench/out/cutover-{env['B_STAMP']}.json", "w") as f:
    json.dump(result, f, indent=2)
    f.write("\n")

fmt = lambda v, spec: "-" if v is None else format(v, spec)
ok = lambda b: "PASS" if b else "FAIL"
C, J = env["B_CLIENTS"], env["B_THREADS"]
print(f"# {env['B_STAMP']}  nproc={env['B_NPROC']}  {env['B_PG_VERSION']}  scale={env['B_SCALE']}  "
      f"pgbench -c {C} -j {J} -M prepared  ferry {env['B_FERRY_BIN']} (built {env['B_FERRY_MTIME']})")
print(f"# load average {env['B_LOADAVG_START']} at the start, {env['B_LOADAVG_END']} at the end")
print()
print(f"proxy overhead: -T {env['B_SECONDS']} per run, ferry streaming changes in both cases")
line = "{:<14} {:>10} {:>10} {:>7} {:>14} {:>13} {:>7} {:>13}  {}"
print(line.format("workload", "direct tps", "proxy tps", "ratio", "direct lat ms", "proxy lat ms", "ratio", "ferry cores",
                  "target proxy tps >= 0.90x direct"))
print(line.format(*("-" * n for n in (14, 10, 10, 7, 14, 13, 7, 13, 32))))
for w, o in overhead.items():
    print(line.format(w, fmt(o["direct"]["tps"], ".0f"), fmt(o["proxy"]["tps"], ".0f"), fmt(o["tps_ratio"], ".2f") + "x",
                      fmt(o["direct"]["latency_avg_ms"], ".2f"), fmt(o["proxy"]["latency_avg_ms"], ".2f"),
                      fmt(o["latency_ratio"], ".2f") + "x",
                      f"{fmt(o['direct']['ferry_cpu_cores'], '.2f')} / {fmt(o['proxy']['ferry_cpu_cores'], '.2f')}",
                      ok((o["tps_ratio"] or 0) >= 0.9)))
print()
print(f"cutover/rollback: {env['B_CYCLES']} cycles, --max-pause {env['B_MAX_PAUSE']}, pgbench (TPC-B + tickets) "
      f"through the proxy: {fmt(cyc['transactions'], 'd')} transactions, {fmt(cyc['tps'], '.0f')} tps")
line = "{:<9} {:>8} {:>5} {:>8} {:>6} {:>8} {:>13} {:>9} {:>9} {:>15}"
print(line.format("switch", "switches", "done", "aborted", "other", "retries", "pause p50 ms", "p99 ms", "max ms", "max txn lat ms"))
print(line.format(*("-" * n for n in (9, 8, 5, 8, 6, 8, 13, 9, 9, 15))))
for k, s in summaries.items():
    print(line.format(k, s["switches"], s["done"], s["aborted"], s["other"], s["no_go_retries"], fmt(s["pause_ms_p50"], ".1f"),
                      fmt(s["pause_ms_p99"], ".1f"), fmt(s["pause_ms_max"], ".1f"), fmt(s["max_txn_latency_ms"], ".1f")))
print()
line = "{:>4} {:<9} {:<8} {:>7} {:>9} {:>5} {:>12} {:>15} {:>10}"
print(line.format("#", "kind", "outcome", "retries", "pause ms", "held", "max wait ms", "max txn lat ms", "command s"))
print(line.format(*("-" * n for n in (4, 9, 8, 7, 9, 5, 12, 15, 10))))
for s in switches:
    print(line.format(s["n"], s["kind"], s["outcome"], s["no_go_retries"], fmt(s["pause_ms"], ".1f"), fmt(s["held_requests"], "d"),
                      fmt(s["max_wait_ms"], ".1f"), fmt(s["max_txn_latency_ms"], ".1f"), fmt(s["command_s"], ".2f")))
    if s["outcome"] != "done":
        print(f"     {s['reason']}")
if steps:
    print("steps of the switches done (prepare runs before the pause; the others make it up):")
    for name, v in steps.items():
        print(f"  {name:<66} p50 {pct(v, 50):7.1f} ms  max {max(v):7.1f} ms  ({len(v)})")
o = result["per_second_max_latency_outside_switches_ms"]
print(f"per-second max transaction latency outside the switches' seconds: p50 {fmt(o['p50'], '.1f')} ms, max {fmt(o['max'], '.1f')} ms")
print()
print(f"pgbench: {fmt(cyc['failed_transactions'], 'd')} failed transactions, {cyc['aborted_clients']} aborted clients, "
      f"exit status {cyc['exit_status']}{', RUN ABORTED' if cyc['run_aborted'] else ''}")
for name, s in (("source at the end", source), ("target caught up", target)):
    if "invariant" in s:
        print(f"{name}: sum(abalance) {s['sum_abalance']} sum(tbalance) {s['sum_tbalance']} sum(bbalance) {s['sum_bbalance']} "
              f"sum(delta) {s['sum_delta']}: {ok(s['invariant'])}; tickets {s['tickets']}, distinct {s['tickets_distinct']}, "
              f"pgbench processed {cyc['transactions']}: {ok(s['tickets_match'])}")
    else:
        print(f"{name}: cannot read the sums ({s['raw']}): FAIL")
print(f"final verification (ferry verify --api): {final_verify}; traffic ended on the {kv.get('ended_on')}; "
      f"ferry exited with status {kv['ferry_exit']} {float(kv['ferry_stop_s']):.1f} s after SIGTERM")
if kv.get("cycles_cut_short"):
    print(f"FAILED: {kv['cycles_cut_short']}")
print()
print("targets:")
print(f"  max pause < 500 ms            {fmt(max_pause, '.1f')} ms  {ok(targets['max_pause_under_500ms'])}")
print(f"  0 failed transactions         {fmt(cyc['failed_transactions'], 'd')} failed, {cyc['aborted_clients']} aborted clients  "
      f"{ok(targets['zero_failed_transactions'])}")
print(f"  proxy TPS >= 0.9x direct      " + ", ".join(f"{w} {fmt(o['tps_ratio'], '.2f')}x" for w, o in overhead.items())
      + f"  {ok(targets['proxy_tps_at_least_0.9x'])}")
print()
print("ferry cores: ferry migrate's CPU time (proxy and change capture) per second of pgbench, direct / proxy.")
print("pause: from holding the first transaction at the proxy to releasing them all, as ferry reports it")
print("  (percentiles by nearest rank over the switches that were done).")
print("max txn lat: the longest transaction latency in pgbench's per-second aggregates from the")
print("  switch command's start to one second after its end; retries: no_go answers retried a second later.")
print(f"correctness: {'PASS' if correct else 'FAIL'}")
print(f"JSON: bench/out/cutover-{env['B_STAMP']}.json, logs: {out}/")
PY
[ "$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['correct'])" "bench/out/cutover-$STAMP.json")" = True ] || {
  log "FAILED: a correctness check failed (see above and $OUT/)"
  exit 1
}
