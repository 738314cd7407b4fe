#!/usr/bin/env bash
# Runs both MLA decode baselines over the full shape grid on the GPU machine,
# from the repository root, with .bundle/bin/flashmla_bench built by build.sh:
#   kernels/cuda/flashmla_baseline/run_baselines.sh [flashmla_bench flags...]
# Writes flashmla.csv, torch.csv and the logs to $OUT (else /tmp/mla_baselines).
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${OUT:-/tmp/mla_baselines}
mkdir -p "$out"
export OUT=$out PYTHONUNBUFFERED=1

# cuBLAS (the GEMM figure; flashmla_bench dlopens it): the system's, else PyTorch's wheels'.
if ! ldconfig -p 2>/dev/null | grep -q 'libcublas\.so\.13 '; then
  for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib \
           $(python3 -c "import glob, site
for sp in site.getsitepackages():
    for p in glob.glob(sp + '/nvidia/**/libcublas.so.13', recursive=True): print(p.rsplit('/', 1)[0])" 2>/dev/null); do
    if [[ -e $d/libcublas.so.13 ]]; then
      export LD_LIBRARY_PATH=$d${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
      break
    fi
  done
fi

nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem --format=csv 2>&1 |
  tee "$out/nvidia-smi.txt"

echo "== FlashMLA: .bundle/bin/flashmla_bench $*"
.bundle/bin/flashmla_bench "$@" 2>&1 | tee "$out/flashmla.log"
rc_flash=${PIPESTATUS[0]}
if [[ $rc_flash != 0 ]]; then
  echo "== flashmla_bench exited $rc_flash; again without CUDA graphs"
  .bundle/bin/flashmla_bench --no_graph "$@" 2>&1 | tee "$out/flashmla_nograph.log"
  rc_flash=${PIPESTATUS[0]}
fi

echo "== PyTorch: python3 $here/torch_mla_decode.py"
python3 "$here/torch_mla_decode.py" 2>&1 | tee "$out/torch.log"
rc_torch=${PIPESTATUS[0]}

echo "== exit codes: flashmla_bench $rc_flash, torch_mla_decode.py $rc_torch"
[[ $rc_flash == 0 && $rc_torch == 0 ]]
