#!/usr/bin/env bash
# The main job: a local cluster (one coordinator, two CPU workers) serving the
# tiny DeepSeek-V3 fixture model with an OpenAI-compatible API on port 8000.
# Extra arguments go to the launcher (e.g. --workers 4 -- --kv_blocks=512).
set -euo pipefail
cd "$(dirname "$0")/.."
deploy/install_deps.sh
exec bazel run //:serve -- --model tests/testdata/tiny-deepseek-v3 \
  --http_port 8000 --grpc_port 50051 --workers 2 "$@"
