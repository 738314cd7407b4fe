#!/usr/bin/env bash
# On a 2-GPU machine, after carrying .bundle.tar.gz: two engine groups (one
# worker per GPU) serving DeepSeek-V3 dimensions with 4 layers and random
# weights; times requests whose long prefix the other group computed,
# migrated versus recomputed (tests/bench/migration_ttft.py). Output in $OUT.
set -uo pipefail
mkdir -p .bundle /tmp/v3_4layers && tar xzf .bundle.tar.gz -C .bundle
export LD_LIBRARY_PATH="$PWD/.bundle/lib" NCCL_NVLS_ENABLE=0
python3 - <<'PY'
import json
config = json.load(open("tests/testdata/configs/deepseek-v3.json"))
config["num_hidden_layers"] = 4
json.dump(config, open("/tmp/v3_4layers/config.json", "w"))
PY
cp tests/testdata/tiny-deepseek-v3/tokenizer*.json /tmp/v3_4layers/
.bundle/bin/serve --model /tmp/v3_4layers --workers 2 --worker_devices cuda:0,cuda:1 -- \
  --random_weights --migration=always --cache_affinity_slack=0 --kv_blocks=4200 --max_batched_tokens=8192 \
  --max_num_seqs=8 >"$OUT/serve.log" 2>&1 &
serve=$!
for _ in $(seq 240); do curl -sf localhost:8000/health >/dev/null && break; sleep 1; done
timeout 420 python3 tests/bench/migration_ttft.py --lengths "${LENGTHS:-4096,16384,65536,131072}" --csv "$OUT/migration_ttft.csv"
kill -INT $serve; wait $serve
grep -E "plan|calibrated|failed|error" "$OUT/serve.log" | head
