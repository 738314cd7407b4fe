#!/usr/bin/env bash
# Runs the NCCL communicator tests on the GPU machine from a bundle made by
# deploy/bundle.sh (binaries in BUNDLE/bin, libraries in BUNDLE/lib). Each
# test's output goes to OUT_DIR/<test>.log; this prints the GPUs, the NCCL
# library the tests load, and one summary line per test. Exits nonzero if a
# test failed.
#   deploy/gpu_comm_tests.sh BUNDLE_DIR [OUT_DIR]   (OUT_DIR defaults to $OUT)
set -uo pipefail
bundle=$(cd "$1" && pwd)
out=${2:-${OUT:?give OUT_DIR or set OUT}}
mkdir -p "$out"

export LD_LIBRARY_PATH="$bundle/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
# NVLink multicast (NVLS) stays off on the lent machines.
export NCCL_NVLS_ENABLE=0
export NCCL_DEBUG=WARN
# Where nccl_kill_test keeps its rendezvous files.
TEST_TMPDIR=$(mktemp -d)
export TEST_TMPDIR

nvidia-smi -L
ldd "$bundle/bin/nccl_communicator_test" | grep -i nccl

failed=0
for test in nccl_communicator_test nccl_kill_test; do
  log="$out/$test.log"
  start=$(date +%s)
  # Both fit in the device machine's 10 minutes a command.
  timeout 280 "$bundle/bin/$test" >"$log" 2>&1
  rc=$?
  seconds=$(($(date +%s) - start))
  # gtest's closing counts, e.g. "[  PASSED  ] 15 tests. [  SKIPPED ] 2 tests,".
  counts=$(grep -E '^\[  (PASSED|FAILED|SKIPPED) +\] [0-9]+ tests?' "$log" | sed -E 's/[,.].*//' | paste -sd ' ')
  if [[ $rc -eq 0 ]]; then result=PASS; else result="FAIL (exit $rc$([[ $rc -eq 124 ]] && echo ', timed out'))"; failed=1; fi
  echo "$test: $result in ${seconds}s: ${counts:-no gtest summary} (log: $log)"
  # The kill test's timings: how long each survivor took to fail.
  grep -E '^rank [0-9]+ ended ' "$log"
done
rm -rf "$TEST_TMPDIR"
exit $failed
