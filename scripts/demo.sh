#!/usr/bin/env bash
# The demo on a fresh machine: installs the PostgreSQL server binaries if they are missing,
# builds Ferry (release), and runs `ferry demo`, which starts two throwaway clusters, fills the
# source with a sample shop (1M order lines, every common type), checks, migrates, compares,
# and cleans up. Extra arguments go to `ferry demo` (for example --rows 5000000 or --keep).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  echo "== installing the PostgreSQL server (Debian packages)"
  sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends postgresql-15 postgresql-client-15 >/dev/null
  $sudo pg_ctlcluster 15 main stop 2>/dev/null || true
fi
echo "== building ferry (release)"
cargo build --release --locked -p ferry
exec target/release/ferry demo "$@"
