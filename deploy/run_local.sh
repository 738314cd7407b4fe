#!/usr/bin/env bash
# The main job: generate from the tiny DeepSeek-V3 fixture model on the CPU.
# Extra arguments are passed to the CLI (e.g. --prompt "..." --max_tokens 32).
set -euo pipefail
cd "$(dirname "$0")/.."
deploy/install_deps.sh
exec bazel run //:cli -- generate --model tests/testdata/tiny-deepseek-v3 \
  --prompt "Multi-head latent attention caches" --max_tokens 24 "$@"
