#!/usr/bin/env bash
# Builds everything (CUDA sources included), runs every test that needs no GPU,
# checks the deployment (manifests, scrape config, the image's filesystem),
# runs the scaling benchmark on small CPU clusters and the cluster model against it,
# runs the fault matrix over network-namespace hosts when it can (root), then
# fuzzes each fuzz target briefly with libFuzzer (MLASERVE_FUZZ_SECONDS each,
# default 15; 0 skips it).
set -euo pipefail
cd "$(dirname "$0")/.."
deploy/install_deps.sh
bazel build //...
bazel test //... "$@"
deploy/check_deploy.sh
# The scaling benchmark's smoke run: CPU workers, 1, 2 and 4 of them, a DP and an EP plan.
scale_out=$(mktemp -d /tmp/mlaserve-scale.XXXXXX)
bazel run //:scale_bench -- --model tests/testdata/tiny-deepseek-v3 --workers 1,2,4 --plans dp,ep \
  --out "$scale_out" --requests_per_worker 4 --input_len 32 --output_len 8
[[ $(grep -c ',ok,' "$scale_out/scale.csv") == 6 && -s "$scale_out/throughput.png" && -s "$scale_out/efficiency.png" ]]
# The cluster model: predict those six runs from their step traces, the recorded GPU runs from the
# GPUs' rates, and project two small clusters of nodes.
bazel run //:cluster_sim -- --validate "$scale_out" --out "$scale_out/sim"
bazel run //:cluster_sim -- --validate docs/data/gpu_serving_points.json --project --nodes 2,4 --group_gpus 8 \
  --requests_per_gpu 8 --out "$scale_out/sim_gpu"
[[ $(wc -l <"$scale_out/sim/validation.csv") == 7 && -s "$scale_out/sim/validation.png" ]]
[[ $(wc -l <"$scale_out/sim_gpu/projection.csv") == 3 && -s "$scale_out/sim_gpu/projection_per_node.png" ]]
rm -rf "$scale_out"
if [[ $(id -u) -eq 0 ]]; then
  tests/faults/fault_matrix.sh
else
  echo "run_all: the fault matrix needs root (network namespaces): not run" >&2
fi
fuzz_seconds=${MLASERVE_FUZZ_SECONDS:-15}
if [[ "$fuzz_seconds" -gt 0 ]]; then
  tests/fuzz/run_libfuzzer.sh "$fuzz_seconds"
fi
