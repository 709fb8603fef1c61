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
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
SCALE=${SCALE:-10}
ROUNDS=${ROUNDS:-2}
BACKLOG_S=${BACKLOG_S:-30}
ferry_bin

bench_out least-privilege lp-bench
bench_clusters lp-src "${SRC_PORT:-55752}" lp-tgt "${TGT_PORT:-55753}"
"$REPO/scripts/pg.sh" start lp-src $SRC_PORT -c wal_level=logical
"$REPO/scripts/pg.sh" start lp-tgt $TGT_PORT -c wal_level=logical

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
pgbench_source
psql -X -q -d "$SRC_ADMIN/bench" -c "ALTER TABLE pgbench_accounts OWNER TO app_owner" -c "ALTER TABLE pgbench_branches OWNER TO app_owner" \
  -c "ALTER TABLE pgbench_tellers OWNER TO app_owner" -c "ALTER TABLE pgbench_history OWNER TO app_owner"
psql -X -q -d "$TGT_ADMIN/postgres" -c "$roles"

url() { # side mode
  local port=$([ "$1" = src ] && echo $SRC_PORT || echo $TGT_PORT)
  local db=$([ "$1" = src ] && echo bench || echo "t_$2")
  local user=$([ "$2" = least ] && echo ferry || echo postgres)
  echo "postgres://$user@127.0.0.1:$port/$db"
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
    bench_full_load "$mode" "$round" "$id" "round $round, $mode"
    bench_backlog "$mode" "$round" "$id" "round $round, $mode"
    bench_catchup "$mode" "$round" "$id"
    "$FERRY_BIN" abandon --source "$(url src "$mode")" --target "$(url tgt "$mode")" --migration-id "$id" --yes >>"$OUT/abandon.log" 2>&1 || true
  done
done

echo
echo "Least privilege cost, $(date -u +%F), $(nproc) vCPU, scale $SCALE, best of $ROUNDS, durability on"
printf '%-44s %12s %16s %9s\n' "step" "superuser" "least privilege" "change"
catchup_table '%-44s %12s %16s %9s\n' superuser least
echo "logs: $OUT"
