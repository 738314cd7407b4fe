#!/usr/bin/env bash
# On the GPU machine (bundle carried, see deploy/gpu_run.sh): issue 12's FP8
# checks and figures in one call, logs under $OUT --
#   the FP8 ops and the FP8 tiny model against the CPU (cuda_ops_test);
#   the FP8 GEMMs at V3 shapes beside cuBLASLt's FP8 rate and HBM (fp8_gemm_bench);
#   V3-dimension decode, bf16 against FP8 weights (decode_bench, LAYERS layers);
#   one rank's load of a V3-shaped FP8 checkpoint against the disk (load_bench).
#   deploy/gpu_fp8_suite.sh [LAYERS=5] [LOAD_LAYERS=5]
set -uo pipefail
layers=${1:-5}
load_layers=${2:-5}
deploy/gpu_run.sh "cuda_ops_test" "fp8_gemm_bench"
status=$?
export LD_LIBRARY_PATH="$PWD/.bundle/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" NCCL_NVLS_ENABLE=0
for dtype in bf16 fp8; do
  timeout 150 .bundle/bin/decode_bench --config tests/testdata/configs/deepseek-v3.json --device cuda \
    --layers "$layers" --batch 1,16,64,256 --context 1024 --weights_dtype "$dtype" >"$OUT/decode_v3_$dtype.log" 2>&1
  echo "decode_bench $dtype: exit $?"
  grep -v '^#' "$OUT/decode_v3_$dtype.log" | tail -5
done
dir=$(mktemp -d /tmp/v3_fp8.XXXX)
timeout 240 .bundle/bin/load_bench --config tests/testdata/configs/deepseek-v3-fp8.json --layers "$load_layers" \
  --dir "$dir" --device cuda --dp_attention 8 --ep 8 --rank 0 >"$OUT/load_bench.log" 2>&1
echo "load_bench: exit $?"
grep -E '^(disk|load):' "$OUT/load_bench.log"
rm -rf "$dir"
exit $status
