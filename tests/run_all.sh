#!/usr/bin/env bash
# Builds everything (CUDA sources included) and runs every test that needs no GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
deploy/install_deps.sh
bazel build //...
bazel test //... "$@"
