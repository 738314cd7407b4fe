#!/usr/bin/env bash
# On one GPU, after carrying .bundle.tar.gz (see deploy/gpu_run.sh): the
# serving stack against the model alone at DeepSeek-V2-Lite shapes with random
# bf16 weights. decode_bench times the model's decode steps at each batch and
# its prefill steps; then serve (one CUDA worker) is driven over HTTP by the
# bench, closed loop at each concurrency, with the server's own host and wait
# time per engine step, and 256 clients with 512-token prompts; last, the same
# sweep against a worker that answers without computing (--mock_compute) after
# MOCK_STEP_MS (default 17, the model's step at batch 256), so that batches fill
# as on the GPU: the serving path's own cost per step. Logs, CSV, JSON and .gp
# go to $OUT.
set -uo pipefail
mkdir -p .bundle /tmp/v2lite && tar xzf .bundle.tar.gz -C .bundle
export LD_LIBRARY_PATH="$PWD/.bundle/lib" NCCL_NVLS_ENABLE=0
cp tests/testdata/configs/deepseek-v2-lite.json /tmp/v2lite/config.json
cp tests/testdata/tokenizer/tokenizer.json /tmp/v2lite/
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
timeout 240 .bundle/bin/decode_bench --device cuda --config tests/testdata/configs/deepseek-v2-lite.json \
  --batch "${BATCHES:-1,16,64,256}" --context 256,576,1024 --prefill 512:8192 --csv "$OUT/decode.csv" 2>&1 |
  grep -v "^decode_bench: making"
.bundle/bin/serve --model /tmp/v2lite --workers 1 --worker_flags="--device=cuda" -- --random_weights \
  --kv_blocks 8192 --max_num_seqs 256 --max_batched_tokens 8192 >"$OUT/serve.log" 2>&1 &
serve=$!
for _ in $(seq 300); do curl -sf localhost:8000/health >/dev/null && break; sleep 1; done
timeout 240 .bundle/bin/bench --input_len 16 --output_len 256 --sweep "${BATCHES:-1,16,64,256}" --sweep_waves 3 \
  --json_out "$OUT/sweep.json" --plot_out "$OUT/sweep.png" 2>&1 | grep -v "requests done"
timeout 120 .bundle/bin/bench --input_len 512 --output_len 128 --num_requests 256 --concurrency 256 \
  --json_out "$OUT/prompt512.json" 2>&1 | grep -v "requests done" | tail -32
curl -s localhost:8000/metrics | grep -E "^mlaserve_engine" >"$OUT/engine_metrics.txt"
kill -INT $serve; wait $serve
.bundle/bin/serve --model /tmp/v2lite --workers 1 --http_port 8001 --grpc_port 50061 --internal_port 50062 \
  --worker_flags="--mock_compute --mock_step_ms=${MOCK_STEP_MS:-17} --memory_gb=1000" -- --random_weights \
  --kv_blocks 20000 --max_num_seqs 512 \
  --max_batched_tokens 16384 >"$OUT/serve_mock.log" 2>&1 &
serve=$!
for _ in $(seq 120); do curl -sf localhost:8001/health >/dev/null && break; sleep 1; done
timeout 240 .bundle/bin/bench --url http://127.0.0.1:8001 --input_len 16 --output_len 256 --sweep 1,16,64,256,512 \
  --sweep_waves 3 --json_out "$OUT/sweep_mock.json" --plot_out "$OUT/sweep_mock.png" 2>&1 | grep -v "requests done"
kill -INT $serve; wait $serve
