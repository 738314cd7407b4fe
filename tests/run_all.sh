#!/usr/bin/env bash
# Builds everything (CUDA sources included), runs every test that needs no GPU,
# checks the deployment (manifests, scrape config, the image's filesystem),
# runs the fault matrix over network-namespace hosts when it can (root), then
# fuzzes each fuzz target briefly with libFuzzer (MLASERVE_FUZZ_SECONDS each,
# default 15; 0 skips it).
set -euo pipefail
cd "$(dirname "$0")/.."
deploy/install_deps.sh
bazel build //...
bazel test //... "$@"
deploy/check_deploy.sh
if [[ $(id -u) -eq 0 ]]; then
  tests/faults/fault_matrix.sh
else
  echo "run_all: the fault matrix needs root (network namespaces): not run" >&2
fi
fuzz_seconds=${MLASERVE_FUZZ_SECONDS:-15}
if [[ "$fuzz_seconds" -gt 0 ]]; then
  tests/fuzz/run_libfuzzer.sh "$fuzz_seconds"
fi
