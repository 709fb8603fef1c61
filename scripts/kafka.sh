#!/usr/bin/env bash
# A Kafka-protocol broker for Ferry's tests, demo scripts and benchmarks: tansu
# (https://crates.io/crates/tansu), an Apache-licensed broker written in Rust. Apache Kafka
# itself needs a JVM distribution no package registry here carries; tansu comes from
# crates.io and speaks the Kafka protocol (produce, fetch, idempotent producers, consumer
# groups, topic administration). docs/kafka.md says what it lacks.
#
#   scripts/kafka.sh install              build tansu once (about 12 minutes on 2 cores) and
#                                         keep it; later calls return at once
#   scripts/kafka.sh start NAME PORT [OPTION...]
#                                         start a broker with in-memory storage on 127.0.0.1:PORT;
#                                         options go to `tansu broker` as given (--cert F --key F:
#                                         TLS; --authentication: SASL required)
#   scripts/kafka.sh stop NAME            stop it
#   scripts/kafka.sh url NAME             print its address (host:port)
#
# The binary is kept under $FERRY_TOOLS_DIR (default ~/.cache/ferry/tools), by version, so a
# fresh clone reuses it; set FERRY_TANSU to use another binary. Brokers keep their pid and log
# under $FERRY_CLUSTER_DIR (default <repo>/.ferry-test/clusters) like the database servers.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CLUSTER_DIR=${FERRY_CLUSTER_DIR:-$here/.ferry-test/clusters}
TANSU_VERSION=0.6.0
TOOLS=${FERRY_TOOLS_DIR:-$HOME/.cache/ferry/tools}
TANSU=${FERRY_TANSU:-$TOOLS/tansu-$TANSU_VERSION/bin/tansu}

install() {
  [ -x "$TANSU" ] && return 0
  echo "building tansu $TANSU_VERSION (once; about 12 minutes on 2 cores) into $TOOLS" >&2
  mkdir -p "$TOOLS"
  # Its own target directory: the build must not touch the workspace's.
  CARGO_TARGET_DIR="$TOOLS/tansu-build" cargo install tansu --version "$TANSU_VERSION" --locked \
    --features dynostore --root "$TOOLS/tansu-$TANSU_VERSION" >"$TOOLS/tansu-build.log" 2>&1 \
    || { tail -30 "$TOOLS/tansu-build.log" >&2; echo "building tansu failed (log: $TOOLS/tansu-build.log)" >&2; exit 1; }
  rm -rf "$TOOLS/tansu-build"
}

cmd=${1:?usage: kafka.sh install | start NAME PORT | stop NAME | url NAME}
case "$cmd" in
install) install ;;
start)
  name=${2:?broker name required}
  port=${3:?port required}
  shift 3
  install
  dir=$CLUSTER_DIR/$name
  mkdir -p "$dir"
  if [ -f "$dir/broker.pid" ] && kill -0 "$(cat "$dir/broker.pid")" 2>/dev/null; then
    echo "broker $name is already running" >&2
    exit 1
  fi
  echo "127.0.0.1:$port" >"$dir/address"
  # memory:// storage: every start is empty, as every test cluster is.
  # FERRY_KAFKA_ADVERTISE=host:port: the address clients are told to use (a TLS terminator in
  # front of the broker, say); the listener's own by default.
  setsid "$TANSU" broker --listener-url "tcp://127.0.0.1:$port" --advertised-listener-url "tcp://${FERRY_KAFKA_ADVERTISE:-127.0.0.1:$port}" \
    --storage-engine memory://tansu/ --cluster-id "ferry-$name" "$@" >"$dir/broker.log" 2>&1 </dev/null &
  echo $! >"$dir/broker.pid"
  for _ in $(seq 1 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      exit 0
    fi
    kill -0 "$(cat "$dir/broker.pid")" 2>/dev/null || { cat "$dir/broker.log" >&2; echo "broker $name exited at start" >&2; exit 1; }
    sleep 0.1
  done
  echo "broker $name does not accept connections on 127.0.0.1:$port after 10 s (log: $dir/broker.log)" >&2
  exit 1
  ;;
stop)
  name=${2:?broker name required}
  dir=$CLUSTER_DIR/$name
  if [ -f "$dir/broker.pid" ]; then
    pid=$(cat "$dir/broker.pid")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
    rm -f "$dir/broker.pid"
  fi
  ;;
url)
  name=${2:?broker name required}
  cat "$CLUSTER_DIR/$name/address"
  ;;
*)
  echo "unknown command $cmd" >&2
  exit 2
  ;;
esac
