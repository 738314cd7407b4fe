#!/usr/bin/env bash
# On the GPU machine: unpacks the bundle made here with
#   bazel build //deploy:bundle && cp bazel-bin/deploy/bundle.tar.gz .bundle.tar.gz
# (carry .bundle.tar.gz), then runs each named binary of it with its arguments,
# one log per binary under $OUT, and prints a summary line per run.
#   deploy/gpu_run.sh "cuda_ops_test" "mla_decode_bench --csv" ...
set -uo pipefail
mkdir -p .bundle "${OUT:?set OUT}"
tar xzf .bundle.tar.gz -C .bundle
export LD_LIBRARY_PATH="$PWD/.bundle/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export NCCL_NVLS_ENABLE=0 NCCL_DEBUG=WARN
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
failed=0
for run in "$@"; do
  read -r binary args <<<"$run"
  start=$(date +%s)
  # shellcheck disable=SC2086  # the arguments are meant to split
  timeout 540 ".bundle/bin/$binary" $args >"$OUT/$binary.log" 2>&1
  rc=$?
  [[ $rc -eq 0 ]] || failed=1
  echo "$binary: exit $rc in $(($(date +%s) - start))s; $(grep -E '^\[  (PASSED|FAILED) ' "$OUT/$binary.log" | paste -sd ' ')"
done
exit $failed
