#!/usr/bin/env bash
# What shadow traffic costs the application: pgbench select-only (-M prepared) through the
# proxy of a running `ferry migrate`, with shadow traffic off and at SAMPLE percent, in
# alternating rounds of the same run; and the same with reads shifted to the target through
# the read endpoint, against the source directly.
#
#   bench/shadow.sh
#
# Two PostgreSQL 15 clusters with production durability (fsync, synchronous_commit,
# full_page_writes on) on this machine, pgbench scale SCALE on the source, migrated and
# streaming. Each round runs pgbench for SECONDS_RUN seconds at each client count, shadow off
# then on (the order alternates by round); the table reports TPS and average latency (the
# source-side latency of every statement, sampled or not) and the change.
#
# Environment:
#   SCALE=10  SECONDS_RUN=15  CLIENTS="1 8"  ROUNDS=3  SAMPLE=10
#   FERRY_BIN=target/release/ferry
#
# Output: a table on stdout, logs in bench/out/shadow-<UTC timestamp>/.
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
SCALE=${SCALE:-10}
SECONDS_RUN=${SECONDS_RUN:-15}
CLIENTS=${CLIENTS:-1 8}
ROUNDS=${ROUNDS:-3}
SAMPLE=${SAMPLE:-10}
ferry_bin
bench_out shadow shadow-bench
bench_clusters shadow-src 55772 shadow-tgt 55773
API_PORT=55774 PROXY_PORT=55775 READ_PORT=55776
"$REPO/scripts/pg.sh" start shadow-src "$SRC_PORT" -c wal_level=logical >/dev/null
"$REPO/scripts/pg.sh" start shadow-tgt "$TGT_PORT" >/dev/null
require_durability
psql -X -q -d "$SRC_ADMIN/postgres" -c "CREATE DATABASE bench"
psql -X -q -d "$TGT_ADMIN/postgres" -c "CREATE DATABASE bench"
pgbench_source
psql -X -q -d "$SRC_ADMIN/bench" -c "VACUUM ANALYZE"
API=http://127.0.0.1:$API_PORT
FERRY_SOURCE_PASSWORD=$PW FERRY_TARGET_PASSWORD=$PW NO_COLOR=1 "$FERRY_BIN" migrate \
  --source "$SRC_ADMIN/bench" --target "$TGT_ADMIN/bench" --listen "127.0.0.1:$API_PORT" \
  --proxy-listen "127.0.0.1:$PROXY_PORT" --proxy-read-listen "127.0.0.1:$READ_PORT" >"$OUT/ferry.log" 2>&1 &
FERRY_PID=$!
for ((i = 0; ; i++)); do
  [ "$(psql -X -At -d "$TGT_ADMIN/bench" -c "SELECT phase FROM ferry.migrations" 2>/dev/null || true)" != cdc ] || break
  kill -0 "$FERRY_PID" 2>/dev/null || { tail "$OUT/ferry.log" >&2; exit 1; }
  [ "$i" -lt 600 ] || { echo "ferry migrate not in phase cdc after 300 s" >&2; exit 1; }
  sleep 0.5
done
psql -X -q -d "$TGT_ADMIN/bench" -c "VACUUM ANALYZE"
sleep 3

declare -A TPS LAT
run() { # KEY PORT CLIENTS ROUND
  local key=$1 port=$2 c=$3 r=$4 log
  log=$OUT/$key-c$c-r$r.log
  pgbench -n -S -M prepared -h 127.0.0.1 -p "$port" -U postgres -c "$c" -j "$((c < 2 ? 1 : 2))" -T 2 bench >/dev/null 2>&1 || true
  pgbench -n -S -M prepared -h 127.0.0.1 -p "$port" -U postgres -c "$c" -j "$((c < 2 ? 1 : 2))" -T "$SECONDS_RUN" bench >"$log" 2>&1 \
    || { tail "$log" >&2; exit 1; }
  local tps lat
  tps=$(awk '/^tps = / { printf "%.0f", $3 }' "$log")
  lat=$(awk '/^latency average = / { print $4 }' "$log")
  if [ -z "${TPS[$key $c]:-}" ] || [ "$tps" -gt "${TPS[$key $c]}" ]; then TPS[$key $c]=$tps LAT[$key $c]=$lat; fi
  log "$key, $c clients, round $r: $tps tps, latency $lat ms"
}
shadow() { "$FERRY_BIN" shadow --sample "$1" --api "$API" >>"$OUT/ferry-cli.log" 2>&1; }
shift_reads() { "$FERRY_BIN" shift --reads "$1" --api "$API" >>"$OUT/ferry-cli.log" 2>&1; }
for r in $(seq 1 "$ROUNDS"); do
  for c in $CLIENTS; do
    if [ $((r % 2)) = 1 ]; then order="off on"; else order="on off"; fi
    for s in $order; do
      if [ "$s" = on ]; then shadow "$SAMPLE"; else shadow 0; fi
      run "shadow-$s" "$PROXY_PORT" "$c" "$r"
    done
    shadow 0
    shift_reads 100
    sleep 1
    run reads-target "$READ_PORT" "$c" "$r"
    shift_reads 0
    run direct "$SRC_PORT" "$c" "$r"
  done
done
"$FERRY_BIN" shadow report --api "$API" >"$OUT/shadow-report.txt" 2>&1 || true

printf '\n%s\n' "pgbench -S -M prepared, $SECONDS_RUN s per run, scale $SCALE, best of $ROUNDS; TPS (average latency ms)"
printf '%-8s %18s %18s %18s %10s %18s %18s\n' clients "proxy, shadow off" "proxy, shadow $SAMPLE%" "latency change" "TPS change" "read endpoint 100%" direct
for c in $CLIENTS; do
  printf '%-8s %18s %18s %18s %10s %18s %18s\n' "$c" "${TPS[shadow-off $c]} (${LAT[shadow-off $c]})" \
    "${TPS[shadow-on $c]} (${LAT[shadow-on $c]})" "$(pct "${LAT[shadow-off $c]}" "${LAT[shadow-on $c]}")" \
    "$(pct "${TPS[shadow-off $c]}" "${TPS[shadow-on $c]}")" "${TPS[reads-target $c]} (${LAT[reads-target $c]})" \
    "${TPS[direct $c]} (${LAT[direct $c]})"
done
printf '\nshadow report at the end: %s\n' "$OUT/shadow-report.txt"
