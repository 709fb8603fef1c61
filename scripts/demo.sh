#!/usr/bin/env bash
# The demo on a fresh machine: installs the PostgreSQL server binaries if they are missing,
# builds Ferry (release), and runs `ferry demo`, which starts two throwaway clusters, fills the
# source with a sample shop (1M order lines, every common type), checks, migrates, compares,
# and cleans up. Extra arguments go to `ferry demo` (for example --rows 5000000 or --keep).
set -euo pipefail
cd "$(dirname "$0")/.."
need=()
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql-15 postgresql-client-15)
# Ferry's Kafka client (librdkafka) is built from its bundled source: cmake, curl's and
# OpenSSL's headers.
command -v cmake >/dev/null 2>&1 || need+=(cmake)
[ -f /usr/include/x86_64-linux-gnu/curl/curl.h ] || [ -f /usr/include/curl/curl.h ] || need+=(libcurl4-openssl-dev)
[ -f /usr/include/openssl/ssl.h ] || need+=(libssl-dev)
scripts/install.sh "${need[@]}"
echo "== building ferry (release)"
cargo build --release --locked -p ferry
exec target/release/ferry demo "$@"
