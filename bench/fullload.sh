#!/usr/bin/env bash
# Full-load benchmark: how fast can a pgbench database be cloned to another cluster?
#
# Compares plain psql binary COPY pipes (the baseline), pg_dump/pg_restore,
# pgcopydb and Ferry on the same source, in the same run, on the same machine, so the
# numbers are comparable with each other (not with numbers from other machines).
#
#   bench/fullload.sh            (or bench/run.sh)
#
# Environment:
#   SCALE=50          pgbench scale of the source (100,000 pgbench_accounts rows per unit)
#   REPEAT=1          run each method N times, report the best (min) times
#   BENCH_ONLY=a,b    only run these methods (ids: copy-pipe-1 copy-pipe-2 pg_dump
#                     pgcopydb pgcopydb-split ferry ferry-nosplit)
#   BENCH_KEEP=1      leave the bench-src/bench-tgt clusters running at the end
#   BENCH_TIMEOUT=3600  seconds before one method run is abandoned as FAILED
#   BENCH_WORKDIR=... scratch space for dumps (default: a fresh directory under /tmp)
#   FERRY_BIN=target/release/ferry
#
# Output: a table on stdout (progress goes to stderr), the same as JSON in
# bench/out/fullload-<UTC timestamp>.json, and one log per method run in
# bench/out/fullload-<UTC timestamp>.logs/.
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

SCALE=${SCALE:-50}
REPEAT=${REPEAT:-1}
BENCH_TIMEOUT=${BENCH_TIMEOUT:-3600}
FERRY_BIN=${FERRY_BIN:-target/release/ferry}
case "$FERRY_BIN" in /*) ;; *) FERRY_BIN=$REPO/$FERRY_BIN ;; esac

SRC_CLUSTER=bench-src SRC_PORT=55532
TGT_CLUSTER=bench-tgt TGT_PORT=55533
TABLES=(pgbench_accounts pgbench_branches pgbench_tellers pgbench_history)

# Method registry: id -> "jobs|label". Order here is the order of the table.
ALL_METHODS=(copy-pipe-1 copy-pipe-2 pg_dump pgcopydb pgcopydb-split ferry ferry-nosplit)
declare -A METHOD_JOBS=(
  [copy-pipe-1]=1 [copy-pipe-2]=2 [pg_dump]=2 [pgcopydb]=2 [pgcopydb-split]=2 [ferry]=2 [ferry-nosplit]=2
)
declare -A METHOD_LABEL=(
  [copy-pipe-1]="copy-pipe-1"
  [copy-pipe-2]="copy-pipe-2"
  [pg_dump]="pg_dump/pg_restore -j2"
  [pgcopydb]="pgcopydb clone"
  [pgcopydb-split]="pgcopydb clone --split"
  [ferry]="ferry"
  [ferry-nosplit]="ferry --split-size 0"
)

log() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", b - a }'; }
# Admin queries: no psqlrc, stop at the first error, bare output.
q() {
  local url=$1
  shift
  psql -X -q -At -v ON_ERROR_STOP=1 -d "$url" "$@"
}
# pg.sh's URL points at database "postgres"; the benchmark lives in database "bench".
db_url() { local u; u=$("$REPO/scripts/pg.sh" url "$1"); echo "${u%/*}/$2"; }
# Every log excerpt we print goes through this, so passwords never reach the terminal.
redact() { sed "s/${FERRY_PG_PASSWORD:-ferry-test-pw}/****/g"; }

# ---------------------------------------------------------------------------------------
# Methods. Each runs in its own process (see run_method_process) so /usr/bin/time can
# attribute peak RSS and CPU to it; each appends key=value lines to $KV (pre_s, data_s, ...).
# SRC/TGT are the "bench" database URLs; WORK is an empty per-run scratch directory.
# ---------------------------------------------------------------------------------------

record() { printf '%s=%s\n' "$1" "$2" >>"$KV"; }

# One binary COPY stream from the source to a target table. $1 is a table name or a
# parenthesised query, $2 the target table.
copy_pipe() {
  psql -X -v ON_ERROR_STOP=1 -d "$SRC" -c "\\copy $1 to stdout with (format binary)" |
    psql -X -q -v ON_ERROR_STOP=1 -d "$TGT" -c "\\copy $2 from stdin with (format binary)" >/dev/null
}

pre_data() { pg_dump --schema-only --section=pre-data "$SRC" | psql -X -q -v ON_ERROR_STOP=1 -d "$TGT" >/dev/null; }
post_data() { pg_dump --section=post-data "$SRC" | psql -X -q -v ON_ERROR_STOP=1 -d "$TGT" >/dev/null; }

# Schema and indexes are created the same way for both pipe methods so that only the data
# phase differs; indexes come after the data, as every real tool does.
with_schema() {
  local t0 t1 t2 t3
  t0=$(now)
  pre_data
  t1=$(now)
  "$@"
  t2=$(now)
  post_data
  t3=$(now)
  record pre_s "$(elapsed "$t0" "$t1")"
  record data_s "$(elapsed "$t1" "$t2")"
  record post_s "$(elapsed "$t2" "$t3")"
}

data_one_pipe() {
  local t
  for t in "${TABLES[@]}"; do copy_pipe "$t" "$t"; done
}

# Two pipes: the big table split in half by primary key (a plain range scan, what a tool
# can do without knowing anything about the data), the small tables ride along in pipe 2.
data_two_pipes() {
  local half=$((ACCOUNTS_MAX_AID / 2)) p1 p2 rc=0
  copy_pipe "(select * from pgbench_accounts where aid <= $half)" pgbench_accounts &
  p1=$!
  (
    copy_pipe "(select * from pgbench_accounts where aid > $half)" pgbench_accounts
    for t in pgbench_branches pgbench_tellers pgbench_history; do copy_pipe "$t" "$t"; done
  ) &
  p2=$!
  # Wait for both even if one fails, so nothing is left writing into the next run's target.
  wait "$p1" || rc=1
  wait "$p2" || rc=1
  return "$rc"
}

method_copy-pipe-1() { with_schema data_one_pipe; }
method_copy-pipe-2() { with_schema data_two_pipes; }

method_pg_dump() {
  local t0 t1 t2
  t0=$(now)
  pg_dump -Fd -j2 -f "$WORK/dump" "$SRC"
  t1=$(now)
  pg_restore -j2 -d "$TGT" "$WORK/dump"
  t2=$(now)
  record dump_s "$(elapsed "$t0" "$t1")"
  record restore_s "$(elapsed "$t1" "$t2")"
}

# pgcopydb 0.10 copies in text format as TRUNCATE + COPY ... WITH (FREEZE) in one
# transaction, and runs VACUUM ANALYZE on every table as part of the clone.
# Its summary table has no wall time for the data phase alone ("COPY (cumulative)" sums the
# jobs, the wall-clock line includes indexes and vacuum), so the data column stays "-";
# those figures (raw, e.g. "1s018") go to the JSON only.
pgcopydb_clone() {
  pgcopydb clone --source "$SRC" --target "$TGT" --table-jobs 2 --index-jobs 2 \
    --dir "$WORK/pgcopydb" "$@" 2>&1 | tee "$WORK/pgcopydb.out"
  record pgcopydb_copy_cumulative "$(awk -F'  +' '/COPY \(cumulative\)/ { print $4 }' "$WORK/pgcopydb.out")"
  record pgcopydb_copy_index_wall "$(awk -F'  +' '/COPY, INDEX, CONSTRAINTS, VACUUM \(wall clock\)/ { print $4 }' "$WORK/pgcopydb.out")"
  record pgcopydb_total_wall "$(awk -F'  +' '/Total Wall Clock Duration/ { print $4 }' "$WORK/pgcopydb.out")"
}
method_pgcopydb() { pgcopydb_clone; }
# Same-table concurrency, sized so pgbench_accounts becomes exactly 2 parts: the
# like-for-like counterpart of copy-pipe-2 (plain "pgcopydb clone" copies one table per job,
# so with one big table it is effectively a single pipe plus small fry).
method_pgcopydb-split() { pgcopydb_clone --split-tables-larger-than "${PGCOPYDB_SPLIT_MB}MB"; }

# "whole s" is measured around the process like every other method; Ferry's own
# total_seconds only goes to the JSON.
method_ferry() {
  "$FERRY_BIN" migrate --source "$SRC" --target "$TGT" --jobs 2 --stop-after full-load \
    --summary-json "$WORK/ferry-summary.json" "$@"
  local data total
  data=$(jq -er '.data_seconds | numbers' "$WORK/ferry-summary.json")
  total=$(jq -er '.total_seconds | numbers' "$WORK/ferry-summary.json")
  record data_s "$data"
  record ferry_total_s "$total"
}
# Ferry without page-range splitting: every table in one transaction with COPY FREEZE. On this
# 2-core box, where one pipe already keeps both servers busy, that is the faster choice.
method_ferry-nosplit() { method_ferry --split-size 0; }

# ---------------------------------------------------------------------------------------
# Harness.
# ---------------------------------------------------------------------------------------

ensure_cluster() { # name port
  # A cluster kept with BENCH_KEEP=1 is still running; pg_ctl start would refuse it.
  if pg_isready -q -h 127.0.0.1 -p "$2"; then return; fi
  "$REPO/scripts/pg.sh" start "$1" "$2" -c wal_level=logical
}

cleanup() {
  local rc=$?
  if [ -n "${WORK_ROOT:-}" ] && [ -z "${BENCH_WORKDIR:-}" ]; then rm -rf "$WORK_ROOT"; fi
  if [ "${BENCH_KEEP:-0}" = 1 ]; then
    log "BENCH_KEEP=1: leaving $SRC_CLUSTER and $TGT_CLUSTER running"
  else
    "$REPO/scripts/pg.sh" stop "$SRC_CLUSTER" || true
    "$REPO/scripts/pg.sh" stop "$TGT_CLUSTER" || true
  fi
  exit "$rc"
}

# Rebuilding the source costs time and perturbs the first method (see reset_target), so
# keep it between runs when it matches.
build_source() {
  if [ -z "$(q "$SRC_ADMIN" -c "select 1 from pg_database where datname = 'bench'")" ]; then
    q "$SRC_ADMIN" -c "create database bench"
  fi
  local have
  have=$(q "$SRC" -c "select (select count(*) from pgbench_branches) || ':' ||
                             (select count(*) from pgbench_accounts) || ':' ||
                             (select count(*) from pgbench_history)" 2>/dev/null || echo none)
  if [ "$have" = "$SCALE:$((SCALE * 100000)):0" ]; then
    log "source: reusing pgbench scale $SCALE"
  else
    log "source: pgbench -i -s $SCALE (found: $have)"
    pgbench -i -s "$SCALE" -q "$SRC" >"$LOG_DIR/pgbench-init.log" 2>&1 ||
      { redact <"$LOG_DIR/pgbench-init.log" >&2; exit 1; }
  fi
  # pgbench_history has no primary key. Publishing it as is would make UPDATE/DELETE on it
  # fail on the source, so Ferry's check blocks until it has a replica identity; pgbench only
  # ever inserts into it, so FULL costs nothing. Catalog-only: no other method is affected.
  q "$SRC" -c "alter table pgbench_history replica identity full" >/dev/null
  # Start every method from the same (warm) OS page cache.
  q "$SRC" -c "select count(*) from pgbench_accounts" >/dev/null
}

# Ferry leaves its slot and publication behind on purpose, and a slot would pin WAL and
# keep decoding costs around for the following methods.
clean_source() {
  q "$SRC_ADMIN" -c "select pg_terminate_backend(pid) from pg_stat_activity
                     where datname = 'bench' and pid <> pg_backend_pid()" >/dev/null
  q "$SRC_ADMIN" -c "select pg_drop_replication_slot(slot_name) from pg_replication_slots" >/dev/null
  q "$SRC" -c "do \$\$ declare p record; begin
                 for p in select pubname from pg_publication loop
                   execute format('drop publication %I', p.pubname);
                 end loop; end \$\$"
  q "$SRC_ADMIN" -c checkpoint
}

reset_target() {
  q "$TGT_ADMIN" -c "drop database if exists bench with (force)"
  # Origins live in a shared catalog, so they survive the database drop.
  q "$TGT_ADMIN" -c "select pg_replication_origin_drop(roname) from pg_replication_origin" >/dev/null
  q "$TGT_ADMIN" -c "create database bench"
  # Flush the previous run's dirty buffers now rather than during the next run.
  q "$TGT_ADMIN" -c checkpoint
  # The clusters run with fsync=off, so the kernel writes the previous run's (or the source
  # build's) data back in the background; without this, that writeback and the dirty-page
  # throttling it causes land in the next method's timings (seen: 2x on copy-pipe-1).
  sync
}

# Prints nothing if the clone is complete, else what is wrong.
verify_target() {
  local t want got
  for t in "${TABLES[@]}"; do
    want=${SRC_COUNT[$t]}
    got=$(q "$TGT" -c "select count(*) from $t" 2>&1) || got="error: ${got%%$'\n'*}"
    [ "$got" = "$want" ] || { echo "$t has $got rows, expected $want"; return; }
  done
  got=$(q "$TGT" -c "select count(*) from pg_index
                     where indrelid = 'pgbench_accounts'::regclass and indisprimary and indisvalid" 2>&1) ||
    got="error: $got"
  [ "$got" = 1 ] || echo "pgbench_accounts has no valid primary key ($got)"
}

# Runs one method in a child process under GNU time, then verifies the target.
run_once() { # method run-number
  local m=$1 n=$2 kv=$RUNS_DIR/$m.$n.kv log=$LOG_DIR/$m.$n.log time_out=$RUNS_DIR/$m.$n.time
  local t0 t1 rc=0 problem
  {
    echo "method=$m"
    echo "run=$n"
  } >"$kv"
  clean_source
  reset_target
  rm -rf "$WORK_ROOT/$m"
  mkdir -p "$WORK_ROOT/$m"
  log "$m: run $n/$REPEAT"
  t0=$(now)
  # --foreground keeps Ctrl-C working; a timed-out method's leftover clients are killed by
  # the next clean_source/reset_target (backend termination, drop ... with (force)).
  KV=$kv WORK=$WORK_ROOT/$m /usr/bin/time -v -o "$time_out" \
    timeout --foreground -k 10 "$BENCH_TIMEOUT" "$SELF" --run-method "$m" >"$log" 2>&1 || rc=$?
  t1=$(now)
  echo "whole_s=$(elapsed "$t0" "$t1")" >>"$kv"
  awk -F': ' '/Maximum resident set size/ { print "rss_kb=" $2 }
              /User time \(seconds\)/ { print "user_s=" $2 }
              /System time \(seconds\)/ { print "sys_s=" $2 }' "$time_out" >>"$kv"
  if [ "$rc" != 0 ]; then
    problem="exit status $rc, see $log"
    [ "$rc" = 124 ] && problem="timed out after ${BENCH_TIMEOUT}s, see $log"
  else
    problem=$(verify_target)
  fi
  if [ -n "$problem" ]; then
    echo "status=FAILED" >>"$kv"
    echo "reason=$problem" >>"$kv"
    log "$m: FAILED: $problem"
    tail -n 5 "$log" | redact | sed 's/^/    /' >&2
  else
    echo "status=ok" >>"$kv"
    log "$m: ok in $(elapsed "$t0" "$t1") s"
  fi
}

# Aggregates the per-run key=value files into the table and the JSON file.
report() {
  python3 - "$RUNS_DIR" "$JSON_OUT" "${SELECTED[@]}" <<'PY'
import json, os, re, sys

runs_dir, json_out, methods = sys.argv[1], sys.argv[2], sys.argv[3:]
env = os.environ
rows_total = int(env["B_ROWS_TOTAL"])

def pgcopydb_duration(s):
    """pgcopydb prints durations like 891ms, 1s341, 2m03s, 1h02m."""
    if not s:
        return None
    total = 0.0
    units = {"h": 3600, "m": 60, "s": 1}
    m = re.fullmatch(r"(\d+)ms", s)
    if m:
        return int(m[1]) / 1000
    parts = re.findall(r"(\d+)(h|m|s)?", s)
    prev = None
    for num, unit in parts:
        if unit:
            total += int(num) * units[unit]
            prev = unit
        elif prev == "s":  # "1s341": the digits after "s" are milliseconds
            total += int(num) / 1000
    return round(total, 3)

def load(method):
    out = []
    for name in sorted(os.listdir(runs_dir)):
        if name.startswith(method + ".") and name.endswith(".kv") and name.count(".") == 2:
            kv = {}
            with open(os.path.join(runs_dir, name)) as f:
                for line in f:
                    k, _, v = line.rstrip("\n").partition("=")
                    kv[k] = v
            for k in ("pre_s", "data_s", "post_s", "whole_s", "dump_s", "restore_s",
                      "ferry_total_s", "user_s", "sys_s"):
                if kv.get(k):
                    kv[k] = float(kv[k])
            if kv.get("rss_kb"):
                kv["rss_kb"] = int(kv["rss_kb"])
            for k in ("pgcopydb_copy_cumulative", "pgcopydb_copy_index_wall", "pgcopydb_total_wall"):
                if k in kv:
                    kv[k + "_s"] = pgcopydb_duration(kv.pop(k))
            kv["run"] = int(kv["run"])
            out.append(kv)
    return sorted(out, key=lambda r: r["run"])

results = []
for m in methods:
    runs = load(m)
    res = {"method": m, "label": env["B_LABEL_" + m.replace("-", "_")],
           "jobs": int(env["B_JOBS_" + m.replace("-", "_")]), "runs": runs}
    if not runs:
        res["status"] = env.get("B_STATUS_" + m.replace("-", "_"), "not run")
    elif any(r.get("status") != "ok" for r in runs):
        res["status"] = "FAILED"
        res["reason"] = next(r.get("reason", "") for r in runs if r.get("status") != "ok")
    else:
        res["status"] = "ok"
        # Best of REPEAT runs, per metric: the noise we want to drop is one-sided (slower).
        best = lambda k: min((r[k] for r in runs if isinstance(r.get(k), float)), default=None)
        res["data_s"] = best("data_s")
        res["whole_s"] = best("whole_s")
        res["data_rows_per_s"] = round(rows_total / res["data_s"]) if res["data_s"] else None
        res["whole_rows_per_s"] = round(rows_total / res["whole_s"]) if res["whole_s"] else None
        rss = [r["rss_kb"] for r in runs if r.get("rss_kb")]
        res["peak_rss_mb"] = round(max(rss) / 1024, 1) if rss else None
    results.append(res)

meta = {
    "benchmark": "fullload",
    "timestamp_utc": env["B_TIMESTAMP"],
    "scale": int(env["B_SCALE"]),
    "repeat": int(env["B_REPEAT"]),
    "rows_total": rows_total,
    "nproc": int(env["B_NPROC"]),
    "cpu_model": env["B_CPU"],
    "pg_version": env["B_PG_VERSION"],
    "pgcopydb_version": env["B_PGCOPYDB_VERSION"],
    "git_commit": env["B_GIT"] or None,
}
with open(json_out, "w") as f:
    json.dump({**meta, "results": results}, f, indent=2)
    f.write("\n")

def fmt(v, spec):
    return "-" if v is None else format(v, spec)

print(f"# {env['B_DATE']}  nproc={meta['nproc']}  cpu={meta['cpu_model']}  "
      f"PostgreSQL {meta['pg_version']}")
print(f"# pgbench scale {meta['scale']}: {rows_total:,} rows in 4 tables; "
      f"best of {meta['repeat']} run(s) per method")
head = ("method", "jobs", "data s", "data rows/s", "whole s", "whole rows/s", "peak RSS MB")
line = "{:<24} {:>4} {:>9} {:>12} {:>9} {:>13} {:>12}"
print(line.format(*head))
print(line.format(*("-" * len(h) if i else "-" * 24 for i, h in enumerate(head))))
for r in results:
    if r["status"] == "ok":
        print(line.format(r["label"], r["jobs"], fmt(r["data_s"], ".2f"),
                          fmt(r["data_rows_per_s"], ",d"), fmt(r["whole_s"], ".2f"),
                          fmt(r["whole_rows_per_s"], ",d"), fmt(r["peak_rss_mb"], ".1f")))
    else:
        print(line.format(r["label"], r["jobs"], r["status"], "-", "-", "-", "-"))
print()
print("data s:  wall time of the table data copy alone (no schema, no indexes); '-' when the")
print("         tool does not report it separately. whole s: wall time of the whole clone.")
print("peak RSS: largest single client process (GNU time), servers not included.")
for r in results:
    if r["status"] == "FAILED":
        print(f"{r['label']}: FAILED: {r['reason']}")
print(f"JSON: {json_out}")
PY
}

main() {
  local m
  if [ "${1:-}" = --run-method ]; then
    # Child process started by run_once: just run the method.
    "method_$2"
    return
  fi
  if [ "${1:-}" = -h ] || [ "${1:-}" = --help ]; then
    sed -n '2,/^set -euo/p' "$SELF" | sed '$d; s/^# \{0,1\}//'
    return
  fi

  SELECTED=()
  if [ -n "${BENCH_ONLY:-}" ]; then
    local -a wanted
    IFS=, read -r -a wanted <<<"$BENCH_ONLY"
    for m in "${wanted[@]}"; do
      [ -n "${METHOD_JOBS[$m]:-}" ] || { echo "BENCH_ONLY: unknown method '$m' (known: ${ALL_METHODS[*]})" >&2; exit 2; }
    done
    for m in "${ALL_METHODS[@]}"; do
      [[ ",$BENCH_ONLY," == *",$m,"* ]] && SELECTED+=("$m")
    done
  else
    SELECTED=("${ALL_METHODS[@]}")
  fi

  local stamp
  stamp=$(date -u +%Y%m%dT%H%M%SZ)
  mkdir -p "$REPO/bench/out"
  JSON_OUT=$REPO/bench/out/fullload-$stamp.json
  LOG_DIR=$REPO/bench/out/fullload-$stamp.logs
  RUNS_DIR=$LOG_DIR/runs
  mkdir -p "$RUNS_DIR"
  if [ -n "${BENCH_WORKDIR:-}" ]; then WORK_ROOT=$BENCH_WORKDIR; else WORK_ROOT=$(mktemp -d /tmp/ferry-bench.XXXXXX); fi
  mkdir -p "$WORK_ROOT"

  trap cleanup EXIT
  ensure_cluster "$SRC_CLUSTER" "$SRC_PORT"
  ensure_cluster "$TGT_CLUSTER" "$TGT_PORT"
  SRC_ADMIN=$("$REPO/scripts/pg.sh" url "$SRC_CLUSTER")
  TGT_ADMIN=$("$REPO/scripts/pg.sh" url "$TGT_CLUSTER")
  export SRC TGT
  SRC=$(db_url "$SRC_CLUSTER" bench)
  TGT=$(db_url "$TGT_CLUSTER" bench)

  build_source
  declare -gA SRC_COUNT=()
  local rows_total=0 t
  for t in "${TABLES[@]}"; do
    SRC_COUNT[$t]=$(q "$SRC" -c "select count(*) from $t")
    rows_total=$((rows_total + SRC_COUNT[$t]))
  done
  export ACCOUNTS_MAX_AID PGCOPYDB_SPLIT_MB FERRY_BIN
  ACCOUNTS_MAX_AID=$(q "$SRC" -c "select max(aid) from pgbench_accounts")
  # Half the table plus a margin for its free space and visibility maps -> exactly 2 parts.
  PGCOPYDB_SPLIT_MB=$(q "$SRC" -c "select ceil(pg_table_size('pgbench_accounts') / 2 / 1048576.0)::int + 2")

  local n
  for m in "${SELECTED[@]}"; do
    if [[ "$m" == ferry* ]] && [ ! -x "$FERRY_BIN" ]; then
      log "$m: $FERRY_BIN not built, skipping"
      export "B_STATUS_${m//-/_}=not built"
      continue
    fi
    for ((n = 1; n <= REPEAT; n++)); do run_once "$m" "$n"; done
  done
  clean_source

  for m in "${ALL_METHODS[@]}"; do
    export "B_LABEL_${m//-/_}=${METHOD_LABEL[$m]}" "B_JOBS_${m//-/_}=${METHOD_JOBS[$m]}"
  done
  export B_DATE B_TIMESTAMP=$stamp B_SCALE=$SCALE B_REPEAT=$REPEAT B_ROWS_TOTAL=$rows_total
  export B_NPROC B_CPU B_PG_VERSION B_PGCOPYDB_VERSION B_GIT
  B_NPROC=$(nproc)
  B_DATE=$(date -u +%Y-%m-%dT%H:%M:%SZ)
  B_CPU=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)
  B_PG_VERSION=$(q "$SRC" -c "show server_version")
  B_PGCOPYDB_VERSION=$(pgcopydb --version 2>/dev/null | awk '/^pgcopydb version/ { print $3 }' || true)
  B_GIT=$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || true)
  report
}

main "$@"
