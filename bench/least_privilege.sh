#!/usr/bin/env bash
# What running without superuser costs: Ferry's full load and CDC catch-up as the superuser
# against the same as a user holding only the rights docs/privileges.md lists (the block
# between the managed-grants markers, applied verbatim), on the same clusters, in the same
# run, interleaved so that both see the same machine.
#
#   bench/least_privilege.sh
#
# Environment:
#   SCALE=10        pgbench scale of the source (100,000 pgbench_accounts rows per unit)
#   ROUNDS=2        rounds of (superuser, least); the table reports the best of each
#   BACKLOG_S=30    seconds of pgbench (4 clients) that build the CDC backlog
#   FERRY_BIN=target/release/ferry
#
# Both clusters run with production durability (fsync, synchronous_commit, full_page_writes).
# Output: a table on stdout, logs in bench/out/least-privilege-<UTC timestamp>/.
set -euo pipefail
export FERRY_PG_DURABLE=${FERRY_PG_DURABLE:-1}
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PG_BIN=${FERRY_PG_BIN:-/usr/lib/postgresql/15/bin}
export PATH="$PG_BIN:$PATH"
SCALE=${SCALE:-10}
ROUNDS=${ROUNDS:-2}
BACKLOG_S=${BACKLOG_S:-30}
FERRY_BIN=${FERRY_BIN:-target/release/ferry}
case "$FERRY_BIN" in /*) ;; *) FERRY_BIN=$REPO/$FERRY_BIN ;; esac
[ -x "$FERRY_BIN" ] || { echo "build Ferry first: cargo build --release" >&2; exit 1; }
PW=${FERRY_PG_PASSWORD:-ferry-test-pw}
export PGPASSWORD=$PW

STAMP=$(date -u +%Y%m%dT%H%M%SZ)
OUT=$REPO/bench/out/least-privilege-$STAMP
mkdir -p "$OUT"
log() { printf '[lp-bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b - a }'; }

SRC_PORT=${SRC_PORT:-55752} TGT_PORT=${TGT_PORT:-55753}
for c in lp-src lp-tgt; do "$REPO/scripts/pg.sh" destroy "$c" >/dev/null 2>&1 || true; done
"$REPO/scripts/pg.sh" start lp-src $SRC_PORT -c wal_level=logical
"$REPO/scripts/pg.sh" start lp-tgt $TGT_PORT -c wal_level=logical
cleanup() {
  pkill -f "ferry.*migration-id lpb" 2>/dev/null || true
  if [ "${BENCH_KEEP:-0}" != 1 ]; then
    for c in lp-src lp-tgt; do "$REPO/scripts/pg.sh" destroy "$c" >/dev/null 2>&1 || true; done
  fi
}
trap cleanup EXIT
SRC_ADMIN="postgres://postgres@127.0.0.1:$SRC_PORT"
TGT_ADMIN="postgres://postgres@127.0.0.1:$TGT_PORT"

# The documented grants, for one database.
grants() { # db
  sed -n '/<!-- managed-grants:begin -->/,/<!-- managed-grants:end -->/p' "$REPO/docs/privileges.md" |
    grep -v '^<!--' | grep -v '^```' |
    sed -e "s/'secret'/'$PW'/" -e "s/DATABASE appdb/DATABASE $1/" -e 's/^CREATE ROLE ferry .*/DO $$ BEGIN CREATE ROLE ferry LOGIN REPLICATION PASSWORD '"'$PW'"'; EXCEPTION WHEN duplicate_object THEN NULL; END $$;/'
}
roles='DO $$ BEGIN CREATE ROLE app_owner NOLOGIN; CREATE ROLE db_owner NOLOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$;'
psql -X -q -d "$SRC_ADMIN/postgres" -c "CREATE DATABASE bench"
psql -X -q -d "$SRC_ADMIN/bench" -c "$roles" -c "ALTER DATABASE bench OWNER TO db_owner"
grants bench | psql -X -q -v ON_ERROR_STOP=1 -d "$SRC_ADMIN/bench" >/dev/null
log "pgbench -i -s $SCALE"
pgbench -i -q -s "$SCALE" "$SRC_ADMIN/bench" >"$OUT/pgbench-init.log" 2>&1
psql -X -q -d "$SRC_ADMIN/bench" -c "ALTER TABLE pgbench_history ADD COLUMN id bigserial PRIMARY KEY" \
  -c "ALTER TABLE pgbench_accounts OWNER TO app_owner" -c "ALTER TABLE pgbench_branches OWNER TO app_owner" \
  -c "ALTER TABLE pgbench_tellers OWNER TO app_owner" -c "ALTER TABLE pgbench_history OWNER TO app_owner"
psql -X -q -d "$TGT_ADMIN/postgres" -c "$roles"

url() { # side mode
  local port=$([ "$1" = src ] && echo $SRC_PORT || echo $TGT_PORT)
  local db=$([ "$1" = src ] && echo bench || echo "t_$2")
  local user=$([ "$2" = least ] && echo ferry || echo postgres)
  echo "postgres://$user@127.0.0.1:$port/$db"
}
phase() { psql -X -At -d "$TGT_ADMIN/t_$1" -c "SELECT phase FROM ferry.migrations" 2>/dev/null || true; }
declare -A BEST
best() { # key value: keep the smallest
  local k=$1 v=$2 cur=${BEST[$1]:-}
  if [ -z "$cur" ] || awk -v a="$v" -v b="$cur" 'BEGIN{exit !(a<b)}'; then BEST[$k]=$v; fi
}

for round in $(seq 1 "$ROUNDS"); do
  for mode in superuser least; do
    id=lpb_$mode
    psql -X -q -d "$TGT_ADMIN/postgres" -c "DROP DATABASE IF EXISTS t_$mode WITH (FORCE)" -c "CREATE DATABASE t_$mode OWNER db_owner"
    grants "t_$mode" | psql -X -q -v ON_ERROR_STOP=1 -d "$TGT_ADMIN/t_$mode" >/dev/null
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
echo "Least privilege cost, $(date -u +%F), $(nproc) vCPU, scale $SCALE, best of $ROUNDS, durability on"
printf '%-44s %12s %16s %9s\n' "step" "superuser" "least privilege" "change"
printf '%-44s %12s %16s %9s\n' "full load (s, to change capture)" "${BEST[load_superuser]}" "${BEST[load_least]}" "$(pct "${BEST[load_superuser]}" "${BEST[load_least]}")"
printf '%-44s %12s %16s %9s\n' "CDC catch-up of a ${BACKLOG_S}s pgbench backlog (s)" "${BEST[catchup_superuser]}" "${BEST[catchup_least]}" "$(pct "${BEST[catchup_superuser]}" "${BEST[catchup_least]}")"
ra=${BEST[rate_superuser]#-} rb=${BEST[rate_least]#-}
printf '%-44s %12s %16s %9s\n' "CDC catch-up rate (MiB of WAL per s)" "$ra" "$rb" "$(pct "$ra" "$rb")"
ta=${BEST[tps_superuser]#-} tb=${BEST[tps_least]#-}
printf '%-44s %12s %16s %9s\n' "CDC catch-up rate (pgbench transactions per s)" "$ta" "$tb" "$(pct "$ta" "$tb")"
echo "logs: $OUT"
