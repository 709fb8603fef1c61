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
  # Debian's packages start their services on install (PostgreSQL's default cluster on 5432,
  # MariaDB on 3306); Ferry starts its own servers on its own ports, so forbid that.
  made_policy=""
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' | $sudo tee /usr/sbin/policy-rc.d >/dev/null
    $sudo chmod +x /usr/sbin/policy-rc.d
    made_policy=1
    trap '$sudo rm -f /usr/sbin/policy-rc.d' EXIT
  fi
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends postgresql-15 postgresql-client-15 >/dev/null
  if [ -n "$made_policy" ]; then
    $sudo rm -f /usr/sbin/policy-rc.d
    trap - EXIT
  fi
fi
echo "== building ferry (release)"
cargo build --release --locked -p ferry
exec target/release/ferry demo "$@"
