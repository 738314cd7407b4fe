#!/usr/bin/env bash
# Builds everything (CUDA sources included), runs every test that needs no GPU,
# then fuzzes each fuzz target briefly with libFuzzer (MLASERVE_FUZZ_SECONDS
# each, default 15; 0 skips it).
set -euo pipefail
cd "$(dirname "$0")/.."
deploy/install_deps.sh
bazel build //...
bazel test //... "$@"
fuzz_seconds=${MLASERVE_FUZZ_SECONDS:-15}
if [[ "$fuzz_seconds" -gt 0 ]]; then
  tests/fuzz/run_libfuzzer.sh "$fuzz_seconds"
fi
