#!/usr/bin/env bash
# Two builds of Ferry side by side: the full load and the CDC catch-up of a pgbench backlog,
# PostgreSQL to PostgreSQL, with build A and build B on the same clusters, in the same run,
# interleaved so that both see the same machine. For "before and after" figures of a change:
#
#   git worktree add /tmp/before <commit> && (cd /tmp/before && cargo build --release --bin ferry)
#   cargo build --release --bin ferry
#   A_BIN=/tmp/before/target/release/ferry B_BIN=target/release/ferry bench/builds.sh
#
# Environment:
#   A_BIN, B_BIN    the two binaries (required); A_NAME, B_NAME label them (default before, after)
#   SCALE=10        pgbench scale of the source (100,000 pgbench_accounts rows per unit)
#   ROUNDS=3        rounds of (A, B); the table reports the best of each
#   BACKLOG_S=30    seconds of pgbench (4 clients) that build the CDC backlog
#
# Both clusters run with production durability (fsync, synchronous_commit, full_page_writes).
# Output: a table on stdout, logs in bench/out/builds-<UTC timestamp>/.
set -euo pipefail
export FERRY_PG_DURABLE=${FERRY_PG_DURABLE:-1}
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PG_BIN=${FERRY_PG_BIN:-/usr/lib/postgresql/15/bin}
export PATH="$PG_BIN:$PATH"
SCALE=${SCALE:-10}
ROUNDS=${ROUNDS:-3}
BACKLOG_S=${BACKLOG_S:-30}
A_NAME=${A_NAME:-before} B_NAME=${B_NAME:-after}
abs() { case "$1" in /*) echo "$1" ;; *) echo "$REPO/$1" ;; esac; }
A_BIN=$(abs "${A_BIN:?set A_BIN and B_BIN to the two ferry binaries}")
B_BIN=$(abs "${B_BIN:?set A_BIN and B_BIN to the two ferry binaries}")
for b in "$A_BIN" "$B_BIN"; do [ -x "$b" ] || { echo "not an executable: $b" >&2; exit 1; }; done
PW=${FERRY_PG_PASSWORD:-ferry-test-pw}
export PGPASSWORD=$PW

STAMP=$(date -u +%Y%m%dT%H%M%SZ)
OUT=$REPO/bench/out/builds-$STAMP
mkdir -p "$OUT"
log() { printf '[builds-bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b - a }'; }

SRC_PORT=${SRC_PORT:-55762} TGT_PORT=${TGT_PORT:-55763}
for c in bb-src bb-tgt; do "$REPO/scripts/pg.sh" destroy "$c" >/dev/null 2>&1 || true; done
"$REPO/scripts/pg.sh" start bb-src $SRC_PORT -c wal_level=logical
"$REPO/scripts/pg.sh" start bb-tgt $TGT_PORT -c wal_level=logical
cleanup() {
  pkill -f "ferry.*migration-id bbb_" 2>/dev/null || true
  if [ "${BENCH_KEEP:-0}" != 1 ]; then
    for c in bb-src bb-tgt; do "$REPO/scripts/pg.sh" destroy "$c" >/dev/null 2>&1 || true; done
  fi
}
trap cleanup EXIT
SRC_ADMIN="postgres://postgres@127.0.0.1:$SRC_PORT"
TGT_ADMIN="postgres://postgres@127.0.0.1:$TGT_PORT"
for c in "$SRC_ADMIN" "$TGT_ADMIN"; do
  for s in fsync synchronous_commit full_page_writes; do
    [ "$(psql -X -At -d "$c/postgres" -c "SHOW $s")" = on ] || { echo "$s is off on $c: this bench measures with durability on" >&2; exit 1; }
  done
done
psql -X -q -d "$SRC_ADMIN/postgres" -c "CREATE DATABASE bench"
log "pgbench -i -s $SCALE"
pgbench -i -q -s "$SCALE" "$SRC_ADMIN/bench" >"$OUT/pgbench-init.log" 2>&1
psql -X -q -d "$SRC_ADMIN/bench" -c "ALTER TABLE pgbench_history ADD COLUMN id bigserial PRIMARY KEY"

bin() { [ "$1" = a ] && echo "$A_BIN" || echo "$B_BIN"; }
url() { # side mode
  if [ "$1" = src ]; then echo "$SRC_ADMIN/bench"; else echo "$TGT_ADMIN/t_$2"; fi
}
phase() { psql -X -At -d "$TGT_ADMIN/t_$1" -c "SELECT phase FROM ferry.migrations" 2>/dev/null || true; }
declare -A BEST
best() { # key value: keep the smallest
  local k=$1 v=$2 cur=${BEST[$1]:-}
  if [ -z "$cur" ] || awk -v a="$v" -v b="$cur" 'BEGIN{exit !(a<b)}'; then BEST[$k]=$v; fi
}

for round in $(seq 1 "$ROUNDS"); do
  for mode in a b; do
    FERRY_BIN=$(bin $mode)
    id=bbb_$mode
    psql -X -q -d "$TGT_ADMIN/postgres" -c "DROP DATABASE IF EXISTS t_$mode WITH (FORCE)" -c "CREATE DATABASE t_$mode"
    "$FERRY_BIN" abandon --source "$(url src "$mode")" --target "$(url tgt "$mode")" --migration-id "$id" --yes >/dev/null 2>&1 || true
    log "round $round, $mode: check"
    "$FERRY_BIN" check --source "$(url src "$mode")" --target "$(url tgt "$mode")" --migration-id "$id" >"$OUT/check-$mode-$round.log" 2>&1 ||
      { log "check found a blocker"; cat "$OUT/check-$mode-$round.log" >&2; exit 1; }
    log "round $round, $mode: full load"
    t0=$(now)
    "$FERRY_BIN" migrate --source "$(url src "$mode")" --target "$(url tgt "$mode")" --jobs 2 --migration-id "$id" \
      --listen off >"$OUT/load-$mode-$round.log" 2>&1 &
    pid=$!
    until [ "$(phase "$mode")" = cdc ]; do
      kill -0 $pid 2>/dev/null || { log "ferry exited during the load"; tail "$OUT/load-$mode-$round.log" >&2; exit 1; }
      sleep 0.2
    done
    t1=$(now)
    best "load_$mode" "$(elapsed "$t0" "$t1")"
    kill -TERM $pid
    wait $pid || true
    log "round $round, $mode: backlog of $BACKLOG_S s of pgbench"
    pgbench -n -c 4 -j 2 -T "$BACKLOG_S" "$SRC_ADMIN/bench" >"$OUT/backlog-$mode-$round.log" 2>&1
    end=$(psql -X -At -d "$SRC_ADMIN/bench" -c "SELECT pg_current_wal_lsn()")
    backlog=$(psql -X -At -d "$SRC_ADMIN/bench" -c "SELECT pg_wal_lsn_diff('$end', confirmed_flush_lsn) FROM pg_replication_slots WHERE slot_name = 'ferry_$id'")
    t0=$(now)
    "$FERRY_BIN" migrate --source "$(url src "$mode")" --target "$(url tgt "$mode")" --jobs 2 --migration-id "$id" \
      --listen off >"$OUT/cdc-$mode-$round.log" 2>&1 &
    pid=$!
    until [ "$(psql -X -At -d "$SRC_ADMIN/bench" -c "SELECT confirmed_flush_lsn >= '$end' FROM pg_replication_slots WHERE slot_name = 'ferry_$id'")" = t ]; do
      kill -0 $pid 2>/dev/null || { log "ferry exited during the catch-up"; tail "$OUT/cdc-$mode-$round.log" >&2; exit 1; }
      sleep 0.1
    done
    t1=$(now)
    best "catchup_$mode" "$(elapsed "$t0" "$t1")"
    # The backlog is 30 s of pgbench, so its size varies from run to run: compare rates too.
    rate=$(awk -v b="$backlog" -v s="$(elapsed "$t0" "$t1")" 'BEGIN { printf "%.1f", b / 1048576 / s }')
    best "rate_$mode" "-$rate"
    # WAL bytes grow with full-page images when a checkpoint falls in the backlog, without more
    # changes to apply: the transactions pgbench committed are the work, whatever the WAL size.
    txns=$(awk '/number of transactions actually processed/ { print $NF }' "$OUT/backlog-$mode-$round.log")
    tps=$(awk -v n="$txns" -v s="$(elapsed "$t0" "$t1")" 'BEGIN { printf "%.0f", n / s }')
    best "tps_$mode" "-$tps"
    log "  backlog $((backlog / 1024 / 1024)) MiB ($txns pgbench transactions) caught up in $(elapsed "$t0" "$t1") s ($rate MiB/s, $tps transactions/s)"
    kill -TERM $pid
    wait $pid || true
    "$FERRY_BIN" abandon --source "$(url src "$mode")" --target "$(url tgt "$mode")" --migration-id "$id" --yes >>"$OUT/abandon.log" 2>&1 || true
  done
done

pct() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%+.1f%%", (b/a-1)*100 }'; }
echo
echo "Two builds side by side, $(date -u +%F), $(nproc) vCPU, scale $SCALE, best of $ROUNDS, durability on"
echo "A ($A_NAME): $A_BIN"
echo "B ($B_NAME): $B_BIN"
printf '%-44s %12s %12s %9s\n' "step" "$A_NAME" "$B_NAME" "change"
printf '%-44s %12s %12s %9s\n' "full load (s, to change capture)" "${BEST[load_a]}" "${BEST[load_b]}" "$(pct "${BEST[load_a]}" "${BEST[load_b]}")"
printf '%-44s %12s %12s %9s\n' "CDC catch-up of a ${BACKLOG_S}s pgbench backlog (s)" "${BEST[catchup_a]}" "${BEST[catchup_b]}" "$(pct "${BEST[catchup_a]}" "${BEST[catchup_b]}")"
ra=${BEST[rate_a]#-} rb=${BEST[rate_b]#-}
printf '%-44s %12s %12s %9s\n' "CDC catch-up rate (MiB of WAL per s)" "$ra" "$rb" "$(pct "$ra" "$rb")"
ta=${BEST[tps_a]#-} tb=${BEST[tps_b]#-}
printf '%-44s %12s %12s %9s\n' "CDC catch-up rate (pgbench transactions per s)" "$ta" "$tb" "$(pct "$ta" "$tb")"
echo "logs: $OUT"
