#!/usr/bin/env bash
# Installs Debian packages for Ferry's scripts without starting their services: Debian's
# packages start a default PostgreSQL cluster on 5432 and MariaDB on 3306 on install, and Ferry
# only ever uses servers it starts itself, on its own ports.
#   scripts/install.sh PACKAGE...
set -euo pipefail
[ $# -gt 0 ] || exit 0
sudo=""
[ "$(id -u)" = 0 ] || sudo="sudo"
echo "== installing $*"
$sudo apt-get update -qq
made_policy=""
if [ ! -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\nexit 101\n' | $sudo tee /usr/sbin/policy-rc.d >/dev/null
  $sudo chmod +x /usr/sbin/policy-rc.d
  made_policy=1
  trap '$sudo rm -f /usr/sbin/policy-rc.d' EXIT
fi
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "$@" >/dev/null
