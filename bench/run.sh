#!/usr/bin/env bash
# Entry point for Ferry's benchmarks: the full-load comparison (bench/fullload.sh), then the
# change-data-capture comparison (bench/cdc.sh). Their options are environment variables (see
# bench/fullload.sh --help and bench/cdc.sh --help).
#
#   BENCH_SUITES=fullload,cdc   which suites to run, always in this order (default: both)
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
suites=${BENCH_SUITES:-fullload,cdc}
for s in ${suites//,/ }; do
  case "$s" in fullload | cdc) ;; *) echo "BENCH_SUITES: unknown suite '$s' (known: fullload cdc)" >&2; exit 2 ;; esac
done
if [[ ",$suites," == *,fullload,* ]]; then "$here/fullload.sh" "$@"; fi
if [[ ",$suites," == *,cdc,* ]]; then
  "$(dirname "$0")/cdc.sh" "$@"
fi
