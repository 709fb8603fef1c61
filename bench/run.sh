#!/usr/bin/env bash
# Entry point for Ferry's benchmarks. For now only the full-load comparison exists; its
# options are environment variables (see bench/fullload.sh --help).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
"$here/fullload.sh" "$@"
