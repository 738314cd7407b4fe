#!/usr/bin/env bash
# On a GPU machine, after carrying .bundle.tar.gz (see deploy/gpu_run.sh):
# issue 15's scaling sweep at DeepSeek-V2-Lite shapes with random bf16 weights,
# one CUDA worker per GPU, every load level on every cluster size that fits
# the GPUs here, then the cluster model against it (each cluster's steps fitted
# from its own trace, and the H100/H200 roofline beside). Writes scale.csv,
# scale.json, the step traces, the charts and validation.csv into $OUT/scale,
# and all of it as $OUT/scale.tgz: the device tool returns only a few files a
# call, and the GPU machines have no gnuplot to draw the charts (draw them
# here from the .gp scripts).
#   deploy/gpu_scale_bench.sh [WORKERS=1] [PLANS=dp] [LEVELS=1,16,64,256]
set -uo pipefail
workers=${1:-1}
plans=${2:-dp}
levels=${3:-1,16,64,256}
mkdir -p .bundle /tmp/v2lite "$OUT/scale" && tar xzf .bundle.tar.gz -C .bundle
export LD_LIBRARY_PATH="$PWD/.bundle/lib" NCCL_NVLS_ENABLE=0
cp tests/testdata/configs/deepseek-v2-lite.json /tmp/v2lite/config.json
cp tests/testdata/tokenizer/tokenizer.json /tmp/v2lite/
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
# Worker i takes GPU i, round the GPUs again when there are more workers.
devices=$(nvidia-smi --query-gpu=index --format=csv,noheader | sed 's/^/cuda:/' | paste -sd,)
timeout 500 .bundle/bin/scale_bench --serve .bundle/bin/serve --model /tmp/v2lite --workers "$workers" \
  --plans "$plans" --worker_devices "$devices" --concurrency_per_worker "$levels" --waves 3 \
  --input_len 16 --output_len 256 --out "$OUT/scale" \
  --coordinator_flags="--random_weights --kv_blocks 8192 --max_num_seqs 256 --max_batched_tokens 8192" 2>&1 |
  grep -v "^INFO"
.bundle/bin/cluster_sim --validate "$OUT/scale" --max_num_seqs 256 --max_batched_tokens 8192 --out "$OUT/scale"
tar czf "$OUT/scale.tgz" -C "$OUT" scale && find "$OUT/scale" -type f ! -name scale.csv ! -name validation.csv -delete
