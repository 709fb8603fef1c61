#!/usr/bin/env bash
# Verification benchmark: how fast does `ferry verify` prove a pgbench database identical,
# next to the time it takes just to read both sides with binary COPY, in the same run.
#
#   bench/verify.sh            (or BENCH_SUITES=verify bench/run.sh)
#
# Setup (not timed): source database "bench" from pgbench -i -s SCALE, copied to the target by
# `ferry migrate --stop-after full-load`.
#
# Methods (each REPEAT times, best time kept):
#   read-both       every table read with binary COPY on both sides at once, one reader per side
#                   (psql \copy ... TO /dev/null): the floor any row-exact comparison stands on
#   db-range-md5    each server hashes its rows per 100,000-key range (md5 of the ordered row
#                   texts, every hash sent back), both sides at once: the "hash per range"
#                   approach alone, before any row-level look at differing ranges
#   ferry-j1        ferry verify --jobs 1 (one range worker: one connection per side)
#   ferry-j2        ferry verify --jobs 2 (the default: every row streamed and compared)
#   ferry-hash-j2   ferry verify --jobs 2 --range-hash (each server hashes each key range of
#                   100,000 rows; rows are streamed only for ranges whose hashes differ)
#   ferry-diff-j2   ferry verify --jobs 2 after one value was changed in every 10th range of
#                   100,000 keys of pgbench_accounts on the target
#
# Environment: SCALE=50, REPEAT=2, BENCH_KEEP=1 (leave the clusters running),
# FERRY_BIN=target/release/ferry.
# Output: a table on stdout, JSON in bench/out/verify-<UTC timestamp>.json.
set -euo pipefail
# Production durability (fsync, synchronous_commit, full_page_writes on) unless asked otherwise:
# a figure measured with them off says nothing about production. FERRY_PG_DURABLE=0 for the fast
# settings the tests use.
export FERRY_PG_DURABLE=${FERRY_PG_DURABLE:-1}

SELF=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/$(basename "${BASH_SOURCE[0]}")
REPO=$(cd "$(dirname "$SELF")/.." && pwd)
PG_BIN=${FERRY_PG_BIN:-/usr/lib/postgresql/15/bin}
export PATH="$PG_BIN:$PATH"
SCALE=${SCALE:-50}
REPEAT=${REPEAT:-2}
FERRY_BIN=${FERRY_BIN:-target/release/ferry}
case "$FERRY_BIN" in /*) ;; *) FERRY_BIN=$REPO/$FERRY_BIN ;; esac
SRC_CLUSTER=ver-src SRC_PORT=55732
TGT_CLUSTER=ver-tgt TGT_PORT=55733
TABLES=(pgbench_accounts pgbench_branches pgbench_tellers pgbench_history)

log() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", b - a }'; }
q() {
  local url=$1
  shift
  PGOPTIONS="-c client_min_messages=warning" psql -X -q -At -v ON_ERROR_STOP=1 -d "$url" "$@"
}
db_url() { local u; u=$("$REPO/scripts/pg.sh" url "$1"); echo "${u%/*}/$2"; }

case "${1:-}" in -h | --help)
  sed -n '2,22p' "$SELF" | sed 's/^# \{0,1\}//'
  exit 0
  ;;
esac

cd "$REPO"
[ -x "$FERRY_BIN" ] || {
  log "building $FERRY_BIN"
  cargo build --release -q
}
cleanup() {
  if [ -z "${BENCH_KEEP:-}" ]; then
    scripts/pg.sh stop "$SRC_CLUSTER" >/dev/null 2>&1 || true
    scripts/pg.sh stop "$TGT_CLUSTER" >/dev/null 2>&1 || true
  fi
}
trap cleanup EXIT
scripts/pg.sh start "$SRC_CLUSTER" "$SRC_PORT" -c wal_level=logical >/dev/null
scripts/pg.sh start "$TGT_CLUSTER" "$TGT_PORT" >/dev/null
SRC_ADMIN=$(scripts/pg.sh url "$SRC_CLUSTER")
TGT_ADMIN=$(scripts/pg.sh url "$TGT_CLUSTER")
SRC=$(db_url "$SRC_CLUSTER" bench)
TGT=$(db_url "$TGT_CLUSTER" bench)
export FERRY_LISTEN=off

log "setup: pgbench -i -s $SCALE, copied to the target by ferry"
q "$SRC_ADMIN" -c "DROP DATABASE IF EXISTS bench WITH (FORCE)" -c "CREATE DATABASE bench"
q "$TGT_ADMIN" -c "DROP DATABASE IF EXISTS bench WITH (FORCE)" -c "CREATE DATABASE bench"
for s in $(q "$SRC_ADMIN" -c "SELECT slot_name FROM pg_replication_slots"); do
  q "$SRC_ADMIN" -c "SELECT pg_drop_replication_slot('$s')" >/dev/null
done
pgbench -i -q -s "$SCALE" "$SRC" >/dev/null 2>&1
q "$SRC" -c "ALTER TABLE pgbench_history REPLICA IDENTITY FULL" -c "VACUUM ANALYZE"
"$FERRY_BIN" migrate --source "$SRC" --target "$TGT" --stop-after full-load --migration-id vbench >/dev/null 2>&1
"$FERRY_BIN" abandon --source "$SRC" --target "$TGT" --migration-id vbench --yes >/dev/null 2>&1 || true
q "$TGT" -c "VACUUM ANALYZE"
ROWS=$(q "$SRC" -c "SELECT (SELECT count(*) FROM pgbench_accounts) + (SELECT count(*) FROM pgbench_branches) + (SELECT count(*) FROM pgbench_tellers) + (SELECT count(*) FROM pgbench_history)")
# Warm both caches alike before the first timed method.
for t in "${TABLES[@]}"; do
  q "$SRC" -c "\\copy (SELECT * FROM $t) TO '/dev/null' (FORMAT binary)"
  q "$TGT" -c "\\copy (SELECT * FROM $t) TO '/dev/null' (FORMAT binary)"
done

read_both() {
  (for t in "${TABLES[@]}"; do q "$SRC" -c "\\copy (SELECT * FROM $t) TO '/dev/null' (FORMAT binary)"; done) &
  local a=$!
  (for t in "${TABLES[@]}"; do q "$TGT" -c "\\copy (SELECT * FROM $t) TO '/dev/null' (FORMAT binary)"; done) &
  local b=$!
  wait "$a" "$b"
}
range_md5_sql() {
  cat <<'SQL'
SELECT aid / 100000, md5(string_agg(t::text, E'\n' ORDER BY aid)) FROM pgbench_accounts t GROUP BY 1;
SELECT md5(string_agg(t::text, E'\n' ORDER BY tid)) FROM pgbench_tellers t;
SELECT md5(string_agg(t::text, E'\n' ORDER BY bid)) FROM pgbench_branches t;
SELECT md5(string_agg(t::text, E'\n' ORDER BY t::text COLLATE "C")) FROM pgbench_history t;
SQL
}
db_range_md5() {
  range_md5_sql | q "$SRC" >/dev/null &
  local a=$!
  range_md5_sql | q "$TGT" >/dev/null &
  local b=$!
  wait "$a" "$b"
}
ferry_verify() { # jobs name [extra args]
  local j=$1 name=$2
  shift 2
  "$FERRY_BIN" verify --source "$SRC" --target "$TGT" --jobs "$j" --json "$@" >"$OUT/$name.json" || [ "$name" = ferry-diff-j2 ]
}

STAMP=$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p bench/out
OUT=bench/out/verify-$STAMP.logs
mkdir -p "$OUT"
declare -A BEST
METHODS=(read-both db-range-md5 ferry-j1 ferry-j2 ferry-hash-j2 ferry-diff-j2)
for m in "${METHODS[@]}"; do
  if [ "$m" = ferry-diff-j2 ]; then
    # One changed value in every 10th range of 100,000 keys (1 in 1,000,000 rows).
    q "$TGT" -c "UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid % 1000000 = 500000"
  fi
  for r in $(seq 1 "$REPEAT"); do
    log "$m (run $r of $REPEAT)"
    t0=$(now)
    case $m in
      read-both) read_both ;;
      db-range-md5) db_range_md5 ;;
      ferry-j1) ferry_verify 1 ferry-j1 ;;
      ferry-j2) ferry_verify 2 ferry-j2 ;;
      ferry-hash-j2) ferry_verify 2 ferry-hash-j2 --range-hash ;;
      ferry-diff-j2) ferry_verify 2 ferry-diff-j2 ;;
    esac
    t1=$(now)
    s=$(elapsed "$t0" "$t1")
    if [ -z "${BEST[$m]:-}" ] || awk -v a="$s" -v b="${BEST[$m]}" 'BEGIN { exit !(a < b) }'; then BEST[$m]=$s; fi
  done
done
for name in ferry-j1 ferry-j2 ferry-hash-j2; do
  d=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['differences'])" "$OUT/$name.json")
  [ "$d" = 0 ] || {
    log "FAILED: $name reported $d differences on identical databases"
    exit 1
  }
done
want=$(q "$SRC" -c "SELECT count(*) FROM pgbench_accounts WHERE aid % 1000000 = 500000")
d=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['differences'])" "$OUT/ferry-diff-j2.json")
[ "$d" = "$want" ] || {
  log "FAILED: ferry-diff-j2 reported $d differences, $want were planted"
  exit 1
}

base=${BEST[read-both]}
{
  printf '# %s  nproc=%s  %s  scale=%s  rows=%s  best of %s\n' "$STAMP" "$(nproc)" "$(postgres --version)" "$SCALE" "$ROWS" "$REPEAT"
  printf '%-14s %9s %12s %16s\n' method seconds "rows/s" "vs read-both"
  printf '%-14s %9s %12s %16s\n' -------------- --------- ------------ ----------------
  for m in "${METHODS[@]}"; do
    awk -v m="$m" -v s="${BEST[$m]}" -v n="$ROWS" -v b="$base" 'BEGIN { printf "%-14s %9.2f %12d %15.2fx\n", m, s, n / s, b / s }'
  done
  echo
  echo "rows/s: rows of the source (every table) per second; each method reads them on both sides."
  echo "vs read-both: speed relative to just reading both sides (1.00x = as fast as reading)."
} | tee "bench/out/verify-$STAMP.txt"
python3 - "$STAMP" "$ROWS" "${BEST[read-both]}" "${BEST[db-range-md5]}" "${BEST[ferry-j1]}" "${BEST[ferry-j2]}" "${BEST[ferry-hash-j2]}" "${BEST[ferry-diff-j2]}" >"bench/out/verify-$STAMP.json" <<'PY'
import json, sys
stamp, rows, *secs = sys.argv[1:]
names = ["read-both", "db-range-md5", "ferry-j1", "ferry-j2", "ferry-hash-j2", "ferry-diff-j2"]
print(json.dumps({"stamp": stamp, "rows": int(rows), "seconds": dict(zip(names, map(float, secs)))}, indent=2))
PY
