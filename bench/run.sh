#!/usr/bin/env bash
# Entry point for Ferry's benchmarks: the full-load comparison (bench/fullload.sh), the
# change-data-capture comparison (bench/cdc.sh), CDC lag under production durability at several
# loads (bench/cdc-durable.sh), verification (bench/verify.sh), and cutover
# cycles plus proxy overhead (bench/cutover.sh), and the MySQL full load against pgloader
# (bench/mysql.sh). Their options are environment variables (see
# each script's header or --help).
#
#   BENCH_SUITES=fullload,cdc,cdc-durable,verify,cutover,mysql   which suites to run, in this order (default: all)
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
suites=${BENCH_SUITES:-fullload,cdc,cdc-durable,verify,cutover,mysql}
for s in ${suites//,/ }; do
  case "$s" in fullload | cdc | cdc-durable | verify | cutover | mysql) ;; *) echo "BENCH_SUITES: unknown suite '$s' (known: fullload cdc cdc-durable verify cutover mysql)" >&2; exit 2 ;; esac
done
if [[ ",$suites," == *,fullload,* ]]; then "$here/fullload.sh" "$@"; fi
if [[ ",$suites," == *,cdc,* ]]; then
  "$(dirname "$0")/cdc.sh" "$@"
fi
if [[ ",$suites," == *,cdc-durable,* ]]; then "$here/cdc-durable.sh" "$@"; fi
if [[ ",$suites," == *,verify,* ]]; then "$here/verify.sh" "$@"; fi
if [[ ",$suites," == *,cutover,* ]]; then "$here/cutover.sh" "$@"; fi
if [[ ",$suites," == *,mysql,* ]]; then "$here/mysql.sh" "$@"; fi
