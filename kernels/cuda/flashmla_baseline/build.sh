#!/usr/bin/env bash
# Builds the FlashMLA baseline (flashmla_bench.cu + FlashMLA's SM90 dense decode,
# scheduler and combine kernels) into .bundle/bin/flashmla_bench, without PyTorch.
#
# FlashMLA and CUTLASS are NOT part of this repository: their sources are taken
# at pinned commits into a temporary directory (outside the repo) and compiled
# from there. Sources, in order of preference:
#   FLASHMLA_GIT / CUTLASS_GIT: git directories holding the pinned commits
#     (default: the mirrors under /work/.mirror), else a shallow clone from GitHub.
#
#   kernels/cuda/flashmla_baseline/build.sh            # from the repository root
# Environment: SRC_DIR (default /tmp/flashmla_src), BUILD_DIR (default
# /tmp/flashmla_build), NVCC (default /usr/local/cuda/bin/nvcc), NVCC_THREADS (2).
set -euo pipefail

FLASHMLA_COMMIT=9241ae3ef9bac614dd25e45e507e089f888280e0  # deepseek-ai/FlashMLA main, 2026-11
CUTLASS_COMMIT=147f5673d0c1c3dcf66f78d677fd647e4a020219   # FlashMLA's csrc/cutlass submodule pin

here=$(cd "$(dirname "$0")" && pwd)
repo=$(git -C "$here" rev-parse --show-toplevel)
FLASHMLA_GIT=${FLASHMLA_GIT:-/work/.mirror/deepseek-ai+FlashMLA/repo}
CUTLASS_GIT=${CUTLASS_GIT:-/work/.mirror/NVIDIA+cutlass/repo}
SRC_DIR=${SRC_DIR:-/tmp/flashmla_src}
BUILD_DIR=${BUILD_DIR:-/tmp/flashmla_build}
NVCC=${NVCC:-/usr/local/cuda/bin/nvcc}
NVCC_THREADS=${NVCC_THREADS:-2}

case "$SRC_DIR" in "$repo"|"$repo"/*) echo "SRC_DIR must be outside the repository" >&2; exit 1;; esac

have_commit() { [[ -d "$1" ]] && git -C "$1" cat-file -e "$2^{commit}" 2>/dev/null; }

# A git directory that has the commit: the given one, else a fresh clone.
source_git() {  # name url commit dir
  local name=$1 url=$2 commit=$3 dir=$4
  if have_commit "$dir" "$commit"; then echo "$dir"; return; fi
  local clone=$SRC_DIR/.git-$name
  if ! have_commit "$clone" "$commit"; then
    echo "fetching $url at $commit" >&2
    rm -rf "$clone"
    git init -q --bare "$clone"
    git -C "$clone" fetch -q --depth 1 "$url" "$commit"
  fi
  echo "$clone"
}

src=$SRC_DIR/FlashMLA
stamp=$src/.stamp-$FLASHMLA_COMMIT-$CUTLASS_COMMIT
if [[ ! -f $stamp ]]; then
  mkdir -p "$SRC_DIR"
  fgit=$(source_git flashmla https://github.com/deepseek-ai/FlashMLA.git $FLASHMLA_COMMIT "$FLASHMLA_GIT")
  cgit=$(source_git cutlass https://github.com/NVIDIA/cutlass.git $CUTLASS_COMMIT "$CUTLASS_GIT")
  pinned=$(git -C "$fgit" ls-tree $FLASHMLA_COMMIT csrc/cutlass | awk '{print $3}')
  if [[ "$pinned" != "$CUTLASS_COMMIT" ]]; then
    echo "FlashMLA $FLASHMLA_COMMIT pins cutlass $pinned, not $CUTLASS_COMMIT" >&2; exit 1
  fi
  rm -rf "$src"
  mkdir -p "$src/csrc/cutlass"
  git -C "$fgit" archive $FLASHMLA_COMMIT csrc setup.py LICENSE | tar -x -C "$src"
  # (a partial mirror may complain about blobs outside these paths; the check below is what counts)
  git -C "$cgit" archive $CUTLASS_COMMIT include tools/util/include LICENSE.txt 2>/dev/null | tar -x -C "$src/csrc/cutlass"
  for f in csrc/sm90/decode/dense/splitkv_mla.cuh csrc/cutlass/include/cute/tensor.hpp \
           csrc/cutlass/include/cutlass/arch/barrier.h; do
    [[ -f $src/$f ]] || { echo "missing $src/$f after extraction" >&2; exit 1; }
  done
  touch "$stamp"
fi

# Flags from FlashMLA's setup.py (nvcc part), sm90 only; no torch.
flags=(
  -O3 -std=c++20 -DNDEBUG -D_USE_MATH_DEFINES -Wno-deprecated-declarations
  -U__CUDA_NO_HALF_OPERATORS__ -U__CUDA_NO_HALF_CONVERSIONS__ -U__CUDA_NO_HALF2_OPERATORS__
  -U__CUDA_NO_BFLOAT16_CONVERSIONS__
  --expt-relaxed-constexpr --expt-extended-lambda --use_fast_math
  --ptxas-options=-v,--register-usage-level=10,--warn-on-spills,--warn-on-local-memory-usage
  -lineinfo
  -gencode arch=compute_90a,code=sm_90a
  -DFLASH_MLA_DISABLE_FP16
  -I"$src/csrc" -I"$src/csrc/kerutils/include" -I"$src/csrc/sm90"
  -I"$src/csrc/cutlass/include" -I"$src/csrc/cutlass/tools/util/include"
)
sources=(
  "$src/csrc/sm90/decode/dense/instantiations/bf16.cu"
  "$src/csrc/smxx/decode/get_decoding_sched_meta/get_decoding_sched_meta.cu"
  "$src/csrc/smxx/decode/combine/combine.cu"
  "$here/flashmla_bench.cu"
)
mkdir -p "$BUILD_DIR"
objs=()
pids=()
for s in "${sources[@]}"; do
  o=$BUILD_DIR/$(basename "${s%.cu}").o
  objs+=("$o")
  # Rebuild when the source or this script is newer than the object.
  if [[ ! -f $o || $s -nt $o || $0 -nt $o ]]; then
    echo "nvcc $(basename "$s")"
    "$NVCC" "${flags[@]}" --threads "$NVCC_THREADS" -c "$s" -o "$o" >"$o.log" 2>&1 &
    pids+=("$!:$o")
  fi
done
status=0
for p in "${pids[@]}"; do
  if ! wait "${p%%:*}"; then
    o=${p#*:}; echo "FAILED: $o" >&2; cat "$o.log" >&2; rm -f "$o"; status=1
  fi
done
[[ $status == 0 ]] || exit 1
grep -h -E "spill|Used [0-9]+ registers" "$BUILD_DIR"/*.o.log | grep -i -E "flash_fwd_splitkv|spill" | sort -u | head -5 || true

mkdir -p "$repo/.bundle/bin"
"$NVCC" -gencode arch=compute_90a,code=sm_90a -o "$repo/.bundle/bin/flashmla_bench" "${objs[@]}" -ldl
exclude=$(git -C "$repo" rev-parse --path-format=absolute --git-common-dir)/info/exclude
grep -qx '/.bundle/' "$exclude" 2>/dev/null || echo '/.bundle/' >>"$exclude"
echo "built $repo/.bundle/bin/flashmla_bench (FlashMLA $FLASHMLA_COMMIT, CUTLASS $CUTLASS_COMMIT)"
