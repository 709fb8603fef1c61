#!/usr/bin/env bash
# Entry point for Ferry's benchmarks: the full-load comparison (bench/fullload.sh), the
# change-data-capture comparison (bench/cdc.sh), and verification (bench/verify.sh). Their options are environment variables (see
# bench/fullload.sh --help and bench/cdc.sh --help).
#
#   BENCH_SUITES=fullload,cdc,verify   which suites to run, always in this order (default: all)
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
suites=${BENCH_SUITES:-fullload,cdc,verify}
for s in ${suites//,/ }; do
  case "$s" in fullload | cdc | verify) ;; *) echo "BENCH_SUITES: unknown suite '$s' (known: fullload cdc verify)" >&2; exit 2 ;; esac
done
if [[ ",$suites," == *,fullload,* ]]; then "$here/fullload.sh" "$@"; fi
if [[ ",$suites," == *,cdc,* ]]; then
  "$(dirname "$0")/cdc.sh" "$@"
fi
if [[ ",$suites," == *,verify,* ]]; then "$here/verify.sh" "$@"; fi
