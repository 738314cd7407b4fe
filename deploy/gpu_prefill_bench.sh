#!/usr/bin/env bash
# On one GPU, after carrying .bundle.tar.gz (see deploy/gpu_run.sh): issue 14's
# prefill figures in one call, the CSVs and prefill.tgz (all logs) under $OUT --
#   the expanded kernel's tests (mla_attention_test) and the backend's
#   (cuda_ops_test: the model in each attention form against the CPU);
#   mla_prefill_bench: both forms of one layer's attention of a prompt chunk,
#   beside cuBLAS's bf16 GEMM rate;
#   time to first token through //:serve at DeepSeek-V2-Lite shapes (random
#   bf16 weights, 8,192-token steps), one prompt of each of LENGTHS at a time,
#   with each sequence's cheapest form and with the absorbed form for all
#   (what serving ran before) -> ttft.csv.
#   [LENGTHS=8192,32768,131072] [FORMS="cheapest absorbed"] deploy/gpu_prefill_bench.sh
set -uo pipefail
LENGTHS=${LENGTHS:-8192,32768,131072}
FORMS=${FORMS:-cheapest absorbed}
# The device returns only a few files: the logs are written apart and come back packed in
# prefill.tgz, beside the CSVs.
work=$(mktemp -d /tmp/prefill.XXXX)
mkdir -p .bundle /tmp/v2lite "${OUT:?set OUT}" && tar xzf .bundle.tar.gz -C .bundle
trap 'tar czf "$OUT/prefill.tgz" -C "$work" . && cp "$work"/*.csv "$OUT/"' EXIT
export LD_LIBRARY_PATH="$PWD/.bundle/lib" NCCL_NVLS_ENABLE=0
cp tests/testdata/configs/deepseek-v2-lite.json /tmp/v2lite/config.json
cp tests/testdata/tokenizer/tokenizer.json /tmp/v2lite/
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
status=0
bin=.bundle/bin
for run in "mla_attention_test --gtest_filter=*Expanded*" "cuda_ops_test"; do
  read -r binary args <<<"$run"
  # shellcheck disable=SC2086  # the arguments are meant to split
  timeout 180 ".bundle/bin/$binary" $args >"$work/$binary.log" 2>&1
  rc=$?
  [[ $rc -eq 0 ]] || status=1
  echo "$binary: exit $rc; $(grep -E '^\[  (PASSED|FAILED) ' "$work/$binary.log" | paste -sd ' ')"
done
timeout 200 .bundle/bin/mla_prefill_bench --csv="$work/mla_prefill.csv" >"$work/mla_prefill.log" 2>&1
echo "mla_prefill_bench: exit $?"
cat "$work/mla_prefill.log"
# Short chunks over a long context, where the two forms' costs cross.
timeout 60 .bundle/bin/mla_prefill_bench --chunks=32,64,128,256,512 --contexts=32768 \
  --csv="$work/mla_prefill_short.csv" >"$work/mla_prefill_short.log" 2>&1
echo "mla_prefill_bench, short chunks: exit $?"
cat "$work/mla_prefill_short.log"
# Another build's kernels side by side, when one is carried as .bundle_b.tar.gz.
if [[ -f .bundle_b.tar.gz ]]; then
  mkdir -p .bundle_b && tar xzf .bundle_b.tar.gz -C .bundle_b
  LD_LIBRARY_PATH="$PWD/.bundle_b/lib" timeout 120 .bundle_b/bin/mla_prefill_bench --chunks=8192 \
    --contexts=8192,32768,131072 --csv="$work/mla_prefill_b.csv" >"$work/mla_prefill_b.log" 2>&1
  echo "mla_prefill_bench of .bundle_b: exit $?"
  cat "$work/mla_prefill_b.log"
fi
[[ $status -eq 0 ]] || exit 1
echo "form,prompt_tokens,ttft_s" >"$work/ttft.csv"
port=8000
for form in $FORMS; do
  "$bin/serve" --model /tmp/v2lite --workers 1 --http_port $port --grpc_port $((port + 1)) \
    --internal_port $((port + 2)) --worker_flags="--device=cuda --attention_form=$form" -- --random_weights \
    --max_batched_tokens 8192 >"$work/serve_$form.log" 2>&1 &
  serve=$!
  for _ in $(seq 180); do curl -sf "localhost:$port/health" >/dev/null && break; sleep 1; done
  for len in 512 ${LENGTHS//,/ }; do
    timeout 120 "$bin/bench" --url "http://127.0.0.1:$port" --input_len "$len" --output_len 1 \
      --num_requests 1 --concurrency 1 --warmup 0 --timeout_s 110 --json_out "$work/ttft_${form}_$len.json" \
      >"$work/bench_${form}_$len.log" 2>&1
    python3 - "$work/ttft_${form}_$len.json" "$form" "$len" >>"$work/ttft.csv" <<'PY'
import json, sys
path, form, length = sys.argv[1:]
level = json.load(open(path))
level = level[0] if isinstance(level, list) else level
print(f"{form},{length},{level['ttft_ms']['mean'] / 1e3:.3f}")
PY
    tail -1 "$work/ttft.csv"
  done
  kill -INT $serve
  wait $serve
  port=$((port + 10))
done
exit $status
