#!/usr/bin/env bash
# The demo on a fresh machine: installs the PostgreSQL server binaries if they are missing,
# builds Ferry (release), and runs `ferry demo`, which starts two throwaway clusters, fills the
# source with a sample shop (1M order lines, every common type), checks, migrates, compares,
# and cleans up. Extra arguments go to `ferry demo` (for example --rows 5000000 or --keep).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  scripts/install.sh postgresql-15 postgresql-client-15
fi
echo "== building ferry (release)"
cargo build --release --locked -p ferry
exec target/release/ferry demo "$@"
