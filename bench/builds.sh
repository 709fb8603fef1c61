#!/usr/bin/env bash
# Two builds of Ferry side by side: the full load, the CDC catch-up of a pgbench backlog and the
# steady-state lag under a fixed pgbench rate, PostgreSQL to PostgreSQL, with build A and build
# B on the same clusters, in the same run, interleaved so that both see the same machine. For "before and after" figures of a change:
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
#   STEADY_RATE=300, STEADY_S=30
#                   after the catch-up, pgbench at STEADY_RATE transactions per second for
#                   STEADY_S seconds with the stream running: the steady-state lag of probe rows
#                   written every 100 ms, source commit to target commit (lib.sh, probe_target);
#                   STEADY_S=0 skips it
#
# Both clusters run with production durability (fsync, synchronous_commit, full_page_writes).
# Output: a table on stdout, logs in bench/out/builds-<UTC timestamp>/.
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
SCALE=${SCALE:-10}
ROUNDS=${ROUNDS:-3}
BACKLOG_S=${BACKLOG_S:-30}
STEADY_RATE=${STEADY_RATE:-300}
STEADY_S=${STEADY_S:-30}
A_NAME=${A_NAME:-before} B_NAME=${B_NAME:-after}
A_BIN=$(abs "${A_BIN:?set A_BIN and B_BIN to the two ferry binaries}")
B_BIN=$(abs "${B_BIN:?set A_BIN and B_BIN to the two ferry binaries}")
for b in "$A_BIN" "$B_BIN"; do [ -x "$b" ] || { echo "not an executable: $b" >&2; exit 1; }; done

bench_out builds builds-bench
bench_clusters bb-src "${SRC_PORT:-55762}" bb-tgt "${TGT_PORT:-55763}"
"$REPO/scripts/pg.sh" start bb-src $SRC_PORT -c wal_level=logical
"$REPO/scripts/pg.sh" start bb-tgt $TGT_PORT -c wal_level=logical
require_durability
psql -X -q -d "$SRC_ADMIN/postgres" -c "CREATE DATABASE bench"
pgbench_source
pgbench_probe

bin() { [ "$1" = a ] && echo "$A_BIN" || echo "$B_BIN"; }
url() { # side mode
  if [ "$1" = src ]; then echo "$SRC_ADMIN/bench"; else echo "$TGT_ADMIN/t_$2"; fi
}

for round in $(seq 1 "$ROUNDS"); do
  # B runs second in odd rounds and first in even ones: the second build of a round meets a
  # source grown by the first's backlog (and its checkpoints), which biased every comparison.
  order="a b"
  [ $((round % 2)) = 0 ] && order="b a"
  for mode in $order; do
    FERRY_BIN=$(bin $mode)
    id=bbb_$mode
    psql -X -q -d "$TGT_ADMIN/postgres" -c "DROP DATABASE IF EXISTS t_$mode WITH (FORCE)" -c "CREATE DATABASE t_$mode"
    "$FERRY_BIN" abandon --source "$(url src "$mode")" --target "$(url tgt "$mode")" --migration-id "$id" --yes >/dev/null 2>&1 || true
    log "round $round, $mode: check"
    "$FERRY_BIN" check --source "$(url src "$mode")" --target "$(url tgt "$mode")" --migration-id "$id" >"$OUT/check-$mode-$round.log" 2>&1 ||
      { log "check found a blocker"; cat "$OUT/check-$mode-$round.log" >&2; exit 1; }
    bench_full_load "$mode" "$round" "$id" "round $round, $mode"
    bench_backlog "$mode" "$round" "$id" "round $round, $mode"
    bench_catchup "$mode" "$round" "$id"
    [ "$STEADY_S" = 0 ] || bench_steady "$mode" "$round" "$id" "round $round, $mode"
    "$FERRY_BIN" abandon --source "$(url src "$mode")" --target "$(url tgt "$mode")" --migration-id "$id" --yes >>"$OUT/abandon.log" 2>&1 || true
  done
done

echo
echo "Two builds side by side, $(date -u +%F), $(nproc) vCPU, scale $SCALE, best of $ROUNDS, durability on"
echo "A ($A_NAME): $A_BIN"
echo "B ($B_NAME): $B_BIN"
printf '%-44s %12s %12s %9s\n' "step" "$A_NAME" "$B_NAME" "change"
catchup_table '%-44s %12s %12s %9s\n' a b
[ "$STEADY_S" = 0 ] || lag_table '%-44s %12s %12s %9s\n' a b
echo "logs: $OUT"
