#!/usr/bin/env bash
# Time to first token of long prompts with and without context parallelism,
# as a client sees it (HTTP through //:bench, one request at a time, random
# prompts so that no prefix is cached): one worker; then one group of WORKERS
# workers (attention replicas, experts split over them) with context
# parallelism off; then on. Writes ttft.csv (and ttft.png where gnuplot is)
# into OUT_DIR.
#   [SERVE_FLAGS=...] deploy/context_parallel_bench.sh MODEL_DIR WORKERS PROMPT_LEN OUT_DIR [coordinator flags...]
# Binaries come from $BIN (default bazel-bin after `bazel build //deploy:serve
# //tests/bench:bench`; on a GPU machine the unpacked bundle's .bundle/bin,
# with e.g. SERVE_FLAGS="--worker_devices cuda:0,cuda:1" and --random_weights).
set -euo pipefail
model=$1 workers=$2 len=$3 out=$4
shift 4
serve=${BIN:+$BIN/serve}
serve=${serve:-bazel-bin/deploy/serve}
bench=${BIN:+$BIN/bench}
bench=${bench:-bazel-bin/tests/bench/bench}
mkdir -p "$out"
port=$((20000 + RANDOM % 20000))
echo "config,workers,prompt_tokens,ttft_mean_s,ttft_p50_s,chunks_split" > "$out/ttft.csv"

run() {  # NAME WORKERS CLUSTER_FLAGS -- COORDINATOR_FLAGS
  local name=$1 n=$2
  shift 2
  "$serve" --model "$model" --http_port "$port" --grpc_port $((port + 1)) --internal_port $((port + 2)) \
    --workers "$n" ${SERVE_FLAGS:-} "$@" > "$out/serve_$name.log" 2>&1 &
  local pid=$!
  for _ in $(seq 1 300); do
    curl -sf "localhost:$port/health" > /dev/null && break
    kill -0 "$pid" 2> /dev/null || { echo "serve ($name) exited: see $out/serve_$name.log"; return 1; }
    sleep 1
  done
  echo "$name: $n worker(s), 3 prompts of $len tokens ..."
  "$bench" --url "http://127.0.0.1:$port" --input_len "$len" --output_len 1 --num_requests 3 --concurrency 1 \
    --warmup 0 --timeout_s 3600 --json_out "$out/bench_$name.json" > "$out/bench_$name.log" 2>&1
  local split
  split=$(curl -s "localhost:$port/metrics" | awk '/^mlaserve_context_parallel_chunks_total/ {print $2}')
  kill -TERM "$pid"
  wait "$pid" || true
  python3 - "$out/bench_$name.json" "$name" "$n" "$len" "${split:-0}" >> "$out/ttft.csv" << 'EOF'
import json, sys
path, name, n, length, split = sys.argv[1:]
level = json.load(open(path))
level = level[0] if isinstance(level, list) else level
t = level["ttft_ms"]
print(f"{name},{n},{length},{t['mean'] / 1e3:.3f},{t['p50'] / 1e3:.3f},{float(split):.0f}")
EOF
  tail -1 "$out/ttft.csv"
}

run one_worker 1 -- "$@"
run replicas_cp_off "$workers" --tp 1 --dp_attention "$workers" --ep "$workers" -- \
  --context_parallel_min_tokens 0 "$@"
run replicas_cp_on "$workers" --tp 1 --dp_attention "$workers" --ep "$workers" -- \
  --context_parallel_min_tokens 1024 "$@"
if command -v gnuplot > /dev/null; then
  gnuplot -e "set terminal png size 640,400 noenhanced; set output '$out/ttft.png'; set datafile separator ',';
    set style data histograms; set style fill solid 0.6; set boxwidth 0.6; set yrange [0:*];
    set ylabel 'TTFT (s)'; set title 'TTFT of $len-token prompts, $workers workers';
    plot '$out/ttft.csv' using 4:xtic(1) skip 1 title 'mean'"
fi
cat "$out/ttft.csv"
