#!/usr/bin/env bash
# The single-GPU suite, run on the device machine from the repository root
# after carrying .bundle.tar.gz (see deploy/gpu_run.sh): kernel tests, the
# serving acceptance tests on a CUDA worker (serving_gpu_test; it finds serve
# beside itself and the fixture under tests/testdata), end-to-end decode
# throughput at V2-Lite and V3 shapes, and the serving stack on the GPU driven
# by the bench client. Logs and CSVs go to $OUT.
set -uo pipefail
# mla_attention_test and mla_decode_bench run on their own (see docs/perf.md): they take minutes.
deploy/gpu_run.sh rms_norm_test cuda_ops_test sampling_test serving_gpu_test \
  "decode_bench --device cuda --config tests/testdata/configs/deepseek-v2-lite.json --batch 1,16,64,256 --context 1024,4096 --csv $OUT/decode_v2_lite.csv" \
  "decode_bench --device cuda --config tests/testdata/configs/deepseek-v3.json --layers 4 --batch 1,16,64 --context 1024,4096 --csv $OUT/decode_v3_4layers.csv"
status=$?
export LD_LIBRARY_PATH="$PWD/.bundle/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
# The serving stack on the GPU: tiny model, one CUDA worker.
.bundle/bin/serve --model tests/testdata/tiny-deepseek-v3 --http_port 8000 --grpc_port 50051 --workers 1 \
  --worker_flags="--device=cuda" >"$OUT/serve.log" 2>&1 &
serve=$!
for _ in $(seq 60); do curl -sf localhost:8000/health >/dev/null && break; sleep 1; done
curl -s localhost:8000/v1/completions -H 'Content-Type: application/json' \
  -d '{"model": "tiny-deepseek-v3", "prompt": "Latent attention", "max_tokens": 12, "temperature": 0}'
echo
.bundle/bin/bench --url http://127.0.0.1:8000 --workload random --input_len 128 --output_len 64 --num_requests 64 \
  --concurrency 16 --json_out "$OUT/serve_bench.json" 2>&1 | tail -15
kill -INT $serve; wait $serve
exit $status
