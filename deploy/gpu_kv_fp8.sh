#!/usr/bin/env bash
# On one GPU, after carrying .bundle.tar.gz (see deploy/gpu_run.sh): the FP8
# latent cache's checks and figures in one call (issue 12, part 4), the CSVs and
# kv_fp8.tgz (all logs) under $OUT --
#   the attention kernels over an FP8 cache against the CPU, bitwise batch
#   invariance, and the rest of mla_attention_test and cuda_ops_test (the tiny
#   model over an FP8 cache against the CPU, with its accuracy printed);
#   mla_decode_bench over a bf16 and an FP8 cache in the same run (128 and 16
#   heads; the copy rate and cuBLAS's beside);
#   whole-model decode at DeepSeek-V3 dims (LAYERS layers, FP8 weights) over a
#   bf16 and an FP8 cache at CONTEXT tokens, against each one's roofline.
#   [LAYERS=5] [CONTEXT=8192] deploy/gpu_kv_fp8.sh
set -uo pipefail
LAYERS=${LAYERS:-5}
CONTEXT=${CONTEXT:-8192}
work=$(mktemp -d /tmp/kvfp8.XXXX)
mkdir -p .bundle "${OUT:?set OUT}" && tar xzf .bundle.tar.gz -C .bundle
trap 'tar czf "$OUT/kv_fp8.tgz" -C "$work" . && cp "$work"/*.csv "$OUT/" 2>/dev/null' EXIT
export LD_LIBRARY_PATH="$PWD/.bundle/lib" NCCL_NVLS_ENABLE=0
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
status=0
for run in "mla_attention_test" "cuda_ops_test"; do
  timeout 240 ".bundle/bin/$run" >"$work/$run.log" 2>&1
  rc=$?
  [[ $rc -eq 0 ]] || status=1
  echo "$run: exit $rc; $(grep -E '^\[  (PASSED|FAILED) ' "$work/$run.log" | paste -sd ' ')"
  grep -E "FAILED|FP8 cache" "$work/$run.log" | head -40
done
for kv in bf16 fp8; do
  timeout 150 .bundle/bin/mla_decode_bench --kv=$kv --batches=1,8,32,64,128,256 --contexts=1024,4096,16384,65536 \
    --csv="$work/mla_decode_$kv.csv" >"$work/mla_decode_$kv.log" 2>&1
  echo "mla_decode_bench --kv=$kv: exit $?"
  grep -vE "^skip" "$work/mla_decode_$kv.log" | tail -52
done
for kv in auto fp8; do
  timeout 150 .bundle/bin/decode_bench --config tests/testdata/configs/deepseek-v3.json --device cuda \
    --layers "$LAYERS" --batch 1,16,64,256 --context "$CONTEXT" --weights_dtype fp8 --kv_cache_dtype $kv \
    --csv="$work/decode_v3_kv_$kv.csv" >"$work/decode_v3_kv_$kv.log" 2>&1
  echo "decode_bench --kv_cache_dtype $kv: exit $?"
  tail -6 "$work/decode_v3_kv_$kv.log"
done
exit $status
