#!/usr/bin/env bash
# What TLS costs: Ferry's full load, CDC catch-up and proxy throughput with TLS on both
# database connections (sslmode=require) against the same with sslmode=disable, on the same
# clusters, in the same run, interleaved so that both modes see the same machine.
#
#   bench/tls.sh
#
# Both clusters run with production durability and ssl=on, and accept TCP logins with and
# without TLS, so only the client's sslmode differs between the two columns.
#
# Environment:
#   SCALE=20        pgbench scale of the source (100,000 pgbench_accounts rows per unit)
#   ROUNDS=2        rounds of (disable, require); the table reports the best of each
#   BACKLOG_S=30    seconds of pgbench (4 clients) that build the CDC backlog
#   PROXY_S=15      seconds of each proxy pgbench run (select-only, 8 clients, prepared)
#   FERRY_BIN=target/release/ferry
#
# Output: a table on stdout, logs in bench/out/tls-<UTC timestamp>/.
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
SCALE=${SCALE:-20}
ROUNDS=${ROUNDS:-2}
BACKLOG_S=${BACKLOG_S:-30}
PROXY_S=${PROXY_S:-15}
ferry_bin

bench_out tls tls-bench
CERTS=$OUT/certs
mkdir -p "$CERTS"

# A throwaway CA and a server certificate for 127.0.0.1.
(
  cd "$CERTS"
  openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=bench-ca -keyout ca.key -out ca.crt \
    -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign >/dev/null 2>&1
  openssl req -newkey rsa:2048 -nodes -subj /CN=localhost -keyout server.key -out server.csr >/dev/null 2>&1
  printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n' >server.ext
  openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 -out server.crt -extfile server.ext >/dev/null 2>&1
  chmod 600 server.key ca.key
)

bench_clusters tls-src "${SRC_PORT:-55732}" tls-tgt "${TGT_PORT:-55733}"
FERRY_PG_TLS_DIR=$CERTS "$REPO/scripts/pg.sh" start tls-src $SRC_PORT -c wal_level=logical
FERRY_PG_TLS_DIR=$CERTS "$REPO/scripts/pg.sh" start tls-tgt $TGT_PORT
CLUSTERS=${FERRY_CLUSTER_DIR:-$REPO/.ferry-test/clusters}
# pg.sh's TLS clusters accept TCP logins over TLS only; the benchmark also needs plain ones.
for c in tls-src tls-tgt; do
  sock=$CLUSTERS/$c
  port=$([ $c = tls-src ] && echo $SRC_PORT || echo $TGT_PORT)
  psql -X -q -h "$sock" -p "$port" -U postgres -d postgres -c "SELECT 1" >/dev/null
  su_run() { if [ "$(id -u)" = 0 ]; then su postgres -c "$1"; else sh -c "$1"; fi; }
  su_run "printf 'host all all 127.0.0.1/32 scram-sha-256\nhost replication all 127.0.0.1/32 scram-sha-256\n' >> '$sock/pg_hba.conf'"
  psql -X -q -h "$sock" -p "$port" -U postgres -d postgres -c "SELECT pg_reload_conf()" >/dev/null
done
psql -X -q -d "$SRC_ADMIN/postgres" -c "CREATE DATABASE bench"
pgbench_source

url() { # side mode
  local port=$([ "$1" = src ] && echo $SRC_PORT || echo $TGT_PORT)
  local db=$([ "$1" = src ] && echo bench || echo "t_$2")
  # The password comes from PGPASSWORD, as libpq's tools take it.
  echo "postgres://postgres@127.0.0.1:$port/$db?sslmode=$2"
}

for round in $(seq 1 "$ROUNDS"); do
  for mode in disable require; do
    id=tlsb_$mode
    psql -X -q -d "$TGT_ADMIN/postgres" -c "DROP DATABASE IF EXISTS t_$mode WITH (FORCE)" -c "CREATE DATABASE t_$mode"
    "$FERRY_BIN" abandon --source "$(url src "$mode")" --target "$(url tgt "$mode")" --migration-id "$id" >/dev/null 2>&1 || true
    bench_full_load "$mode" "$round" "$id" "round $round, sslmode=$mode"
    # Baselines without Ferry, same servers, same sslmode: what TLS costs the servers and
    # libpq themselves. Raw binary COPY of pgbench_accounts from source to target through two
    # psql processes, and pgbench -S straight to the source.
    psql -X -q -d "$(url tgt "$mode")" -c "DROP TABLE IF EXISTS raw_copy" -c "CREATE TABLE raw_copy (LIKE pgbench_accounts)"
    t0=$(now)
    psql -X -q -d "$(url src "$mode")" -c "COPY pgbench_accounts TO STDOUT (FORMAT binary)" |
      psql -X -q -d "$(url tgt "$mode")" -c "COPY raw_copy FROM STDIN (FORMAT binary)"
    t1=$(now)
    best "rawcopy_$mode" "$(elapsed "$t0" "$t1")"
    psql -X -q -d "$(url tgt "$mode")" -c "DROP TABLE raw_copy"
    tps=$(pgbench -n -S -M prepared -c 8 -j 2 -T "$PROXY_S" "$(url src "$mode")" 2>&1 |
      tee "$OUT/direct-$mode-$round.log" | awk '/^tps = /{print $3; exit}')
    best_max "tps_direct_$mode" "${tps:-0}"
    log "  baselines: raw COPY $(elapsed "$t0" "$t1") s, pgbench -S direct $tps tps"
    bench_backlog "$mode" "$round" "$id" "round $round, sslmode=$mode"
    # CDC catch-up: time until the slot has confirmed the source's WAL position taken before the
    # restart, with the proxy listening.
    proxy_port=$((55740 + RANDOM % 200))
    t0=$(now)
    "$FERRY_BIN" migrate --source "$(url src "$mode")" --target "$(url tgt "$mode")" --jobs 2 --migration-id "$id" \
      --listen "127.0.0.1:$((proxy_port + 300))" --proxy-listen "127.0.0.1:$proxy_port" --proxy-tls-cert "$CERTS/server.crt" --proxy-tls-key "$CERTS/server.key" \
      >"$OUT/cdc-$mode-$round.log" 2>&1 &
    FERRY_PID=$!
    bench_caught_up "$id" "$OUT/cdc-$mode-$round.log"
    t1=$(now)
    best "catchup_$mode" "$(elapsed "$t0" "$t1")"
    log "  backlog $((BACKLOG_BYTES / 1024 / 1024)) MiB caught up in $(elapsed "$t0" "$t1") s"
    # Proxy throughput: the proxy's server connections use the mode's sslmode; the client side
    # is plain (client-plain) or TLS too (client-tls).
    for client in disable require; do
      tps=$(pgbench -n -S -M prepared -c 8 -j 2 -T "$PROXY_S" "postgres://postgres@127.0.0.1:$proxy_port/bench?sslmode=$client" 2>&1 |
        tee "$OUT/proxy-$mode-$client-$round.log" | awk '/^tps = /{print $3; exit}')
      log "  proxy, upstream $mode, client $client: $tps tps"
      best_max "tps_${mode}_client_$client" "${tps:-0}"
    done
    bench_stop
    "$FERRY_BIN" abandon --source "$(url src "$mode")" --target "$(url tgt "$mode")" --migration-id "$id" >>"$OUT/abandon.log" 2>&1 || true
  done
done

echo
echo "TLS cost, $(date -u +%F), $(nproc) vCPU, scale $SCALE, best of $ROUNDS, durability on"
printf '%-44s %14s %14s %9s\n' "step" "sslmode=disable" "sslmode=require" "change"
printf '%-44s %14s %14s %9s\n' "full load (s, to change capture)" "${BEST[load_disable]}" "${BEST[load_require]}" "$(pct "${BEST[load_disable]}" "${BEST[load_require]}")"
printf '%-44s %14s %14s %9s\n' "CDC catch-up of a ${BACKLOG_S}s pgbench backlog (s)" "${BEST[catchup_disable]}" "${BEST[catchup_require]}" "$(pct "${BEST[catchup_disable]}" "${BEST[catchup_require]}")"
printf '%-44s %14s %14s %9s\n' "proxy TPS, client plain (upstream mode)" "${BEST[tps_disable_client_disable]}" "${BEST[tps_require_client_disable]}" "$(pct "${BEST[tps_disable_client_disable]}" "${BEST[tps_require_client_disable]}")"
printf '%-44s %14s %14s %9s\n' "proxy TPS, client TLS too (upstream mode)" "${BEST[tps_disable_client_disable]}" "${BEST[tps_require_client_require]}" "$(pct "${BEST[tps_disable_client_disable]}" "${BEST[tps_require_client_require]}")"
printf '%-44s %14s %14s %9s\n' "baseline: raw binary COPY of accounts (s)" "${BEST[rawcopy_disable]}" "${BEST[rawcopy_require]}" "$(pct "${BEST[rawcopy_disable]}" "${BEST[rawcopy_require]}")"
printf '%-44s %14s %14s %9s\n' "baseline: pgbench -S straight to the server" "${BEST[tps_direct_disable]}" "${BEST[tps_direct_require]}" "$(pct "${BEST[tps_direct_disable]}" "${BEST[tps_direct_require]}")"
echo "logs: $OUT"
