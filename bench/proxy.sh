#!/usr/bin/env bash
# Ferry's proxy against PgBouncer and against no proxy at all, in the same run: pgbench
# select-only and TPC-B (builtin, -M prepared) at 1, 8 and 32 clients, each straight to
# PostgreSQL, through PgBouncer in session mode (Debian's package) and through `ferry proxy`.
#
#   bench/proxy.sh
#
# One PostgreSQL 15 cluster with production durability (fsync, synchronous_commit,
# full_page_writes on), pgbench scale SCALE. Both proxies log clients in with SCRAM-SHA-256 and
# connect to the server with SCRAM-SHA-256, on loopback, without TLS; PgBouncer's pool is as
# large as the largest client count, so that session mode never queues a client. Before each
# run the pool is warm: a short pgbench at the same client count goes first and is not counted.
#
# Environment:
#   SCALE=10        pgbench scale
#   SECONDS_RUN=15  seconds of each measured run
#   CLIENTS="1 8 32"
#   ROUNDS=1        rounds (the table reports the best TPS of each)
#   FERRY_BIN=target/release/ferry
#
# Output: a table on stdout (TPS, average latency, the proxy's CPU in cores), logs in
# bench/out/proxy-<UTC timestamp>/.
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
SCALE=${SCALE:-10}
SECONDS_RUN=${SECONDS_RUN:-15}
CLIENTS=${CLIENTS:-1 8 32}
ROUNDS=${ROUNDS:-1}
ferry_bin
command -v pgbouncer >/dev/null 2>&1 || [ -x /usr/sbin/pgbouncer ] || "$REPO/scripts/install.sh" pgbouncer
PGBOUNCER=$(command -v pgbouncer || echo /usr/sbin/pgbouncer)
bench_out proxy proxy-bench
PG_PORT=${PG_PORT:-55762}
BOUNCER_PORT=${BOUNCER_PORT:-55763}
FERRY_PORT=${FERRY_PORT:-55764}
BENCH_CLUSTERS=(proxy-pg)
"$REPO/scripts/pg.sh" destroy proxy-pg >/dev/null 2>&1 || true
SRC_ADMIN="postgres://postgres@127.0.0.1:$PG_PORT"
TGT_ADMIN=$SRC_ADMIN
BOUNCER_PID=
cleanup() {
  [ -z "$FERRY_PID" ] || kill -TERM "$FERRY_PID" 2>/dev/null || true
  [ -z "$BOUNCER_PID" ] || kill -TERM "$BOUNCER_PID" 2>/dev/null || true
  bench_cleanup
}
trap cleanup EXIT
"$REPO/scripts/pg.sh" start proxy-pg "$PG_PORT" -c max_connections=120 >/dev/null
require_durability
psql -X -q -d "$SRC_ADMIN/postgres" -c "CREATE DATABASE bench"
log "pgbench -i -s $SCALE"
pgbench -i -q -s "$SCALE" "$SRC_ADMIN/bench" >"$OUT/pgbench-init.log" 2>&1
psql -X -q -d "$SRC_ADMIN/bench" -c "VACUUM ANALYZE"
max_clients=$(printf '%s\n' $CLIENTS | sort -n | tail -1)

# PgBouncer, session mode, as an unprivileged user when run as root (it refuses root).
BDIR=$OUT/pgbouncer
mkdir -p "$BDIR"
cat >"$BDIR/pgbouncer.ini" <<INI
[databases]
bench = host=127.0.0.1 port=$PG_PORT dbname=bench
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $BOUNCER_PORT
unix_socket_dir =
auth_type = scram-sha-256
auth_file = $BDIR/userlist.txt
pool_mode = session
default_pool_size = $max_clients
max_client_conn = $((max_clients + 20))
server_tls_sslmode = disable
logfile = $BDIR/pgbouncer.log
pidfile = $BDIR/pgbouncer.pid
INI
printf '"postgres" "%s"\n' "$PW" >"$BDIR/userlist.txt"
chmod 600 "$BDIR/userlist.txt"
if [ "$(id -u)" = 0 ]; then
  chown -R postgres "$BDIR"
  runuser -u postgres -- "$PGBOUNCER" "$BDIR/pgbouncer.ini" >>"$BDIR/stdout.log" 2>&1 &
else
  "$PGBOUNCER" "$BDIR/pgbouncer.ini" >>"$BDIR/stdout.log" 2>&1 &
fi
# The pid of pgbouncer itself (runuser forks it).
for _ in $(seq 1 50); do [ -s "$BDIR/pgbouncer.pid" ] && break; sleep 0.1; done
BOUNCER_PID=$(cat "$BDIR/pgbouncer.pid")

# Ferry's proxy alone in front of the same server; it accepts the URL's user and password.
FERRY_SOURCE_PASSWORD=$PW FERRY_TARGET_PASSWORD=$PW "$FERRY_BIN" proxy --source "postgres://postgres@127.0.0.1:$PG_PORT/bench" \
  --target "postgres://postgres@127.0.0.1:$PG_PORT/bench" --proxy-listen "127.0.0.1:$FERRY_PORT" \
  --proxy-max-connections $((max_clients + 20)) >"$OUT/ferry-proxy.log" 2>&1 &
FERRY_PID=$!
for port in "$BOUNCER_PORT" "$FERRY_PORT"; do
  for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
done

HZ=$(getconf CLK_TCK)
proc_cpu() { # PID: user + system CPU-seconds
  awk -v hz="$HZ" '{ sub(/^.*\) /, ""); printf "%.2f", ($12 + $13) / hz }' "/proc/$1/stat" 2>/dev/null || echo 0
}
declare -A TPS LAT CPU
run() { # WAY PORT WORKLOAD CLIENTS ROUND
  local way=$1 port=$2 w=$3 c=$4 r=$5 args=(-n -M prepared -h 127.0.0.1 -p "$port" -U postgres -c "$c" -j "$((c < 2 ? 1 : 2))")
  [ "$w" = select-only ] && args+=(-S)
  # Warm-up (not counted): connections made, plans cached, pages in the buffers.
  pgbench "${args[@]}" -T 2 bench >/dev/null 2>&1 || true
  local pid=${PIDS[$way]:-} c0=0 c1=0 log=$OUT/$way-$w-c$c-r$r.log
  [ -z "$pid" ] || c0=$(proc_cpu "$pid")
  pgbench "${args[@]}" -T "$SECONDS_RUN" bench >"$log" 2>&1 || { tail "$log" >&2; exit 1; }
  [ -z "$pid" ] || c1=$(proc_cpu "$pid")
  local tps lat failed key="$w $c $way"
  tps=$(awk '/^tps = / { printf "%.0f", $3 }' "$log")
  lat=$(awk '/^latency average = / { print $4 }' "$log")
  failed=$(awk '/number of failed transactions/ { print $5 }' "$log")
  [ "${failed:-0}" = 0 ] || { log "$key: $failed failed transactions"; exit 1; }
  if [ -z "${TPS[$key]:-}" ] || [ "$tps" -gt "${TPS[$key]}" ]; then
    TPS[$key]=$tps LAT[$key]=$lat
    CPU[$key]=$(awk -v a="$c0" -v b="$c1" -v s="$SECONDS_RUN" 'BEGIN { printf "%.2f", (b - a) / s }')
  fi
  log "$key: $tps tps, latency $lat ms"
}
declare -A PIDS=([direct]="" [pgbouncer]="$BOUNCER_PID" [ferry]="$FERRY_PID")
for r in $(seq 1 "$ROUNDS"); do
  for w in select-only tpcb; do
    for c in $CLIENTS; do
      # The order rotates, so that no way always runs first after a change of workload.
      for way in direct pgbouncer ferry; do
        case $way in direct) port=$PG_PORT ;; pgbouncer) port=$BOUNCER_PORT ;; ferry) port=$FERRY_PORT ;; esac
        run "$way" "$port" "$w" "$c" "$r"
      done
      psql -X -q -d "$SRC_ADMIN/bench" -c "CHECKPOINT"
    done
  done
done

printf '\n%s\n' "pgbench -M prepared, $SECONDS_RUN s per run, scale $SCALE, best of $ROUNDS; TPS (average latency ms, proxy CPU in cores)"
printf '%-22s %24s %24s %24s %10s %10s\n' "workload, clients" "direct" "PgBouncer (session)" "ferry proxy" "ferry/pgb" "ferry/dir"
for w in select-only tpcb; do
  for c in $CLIENTS; do
    cell() { printf '%s (%s, %s)' "${TPS[$w $c $1]}" "${LAT[$w $c $1]}" "${CPU[$w $c $1]}"; }
    printf '%-22s %24s %24s %24s %10s %10s\n' "$w, $c" "$(cell direct)" "$(cell pgbouncer)" "$(cell ferry)" \
      "$(awk -v a="${TPS[$w $c ferry]}" -v b="${TPS[$w $c pgbouncer]}" 'BEGIN { printf "%.2fx", a / b }')" \
      "$(awk -v a="${TPS[$w $c ferry]}" -v b="${TPS[$w $c direct]}" 'BEGIN { printf "%.2fx", a / b }')"
  done
done
