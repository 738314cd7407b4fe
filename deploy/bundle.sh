#!/usr/bin/env bash
# Packs built binaries and the non-system shared libraries they load into one
# directory, to carry to the GPU machine (run there with LD_LIBRARY_PATH=DIR/lib).
#   deploy/bundle.sh OUT_DIR BINARY...
set -euo pipefail
out=$1; shift
mkdir -p "$out/bin" "$out/lib"
# Present on the device machine (Ubuntu 24.04, CUDA 13, NCCL 2.28) or part of the driver.
system='^(linux-vdso|ld-linux|libc|libm|libdl|librt|libpthread|libstdc\+\+|libgcc_s|libcuda|libnccl|libcublas|libcublasLt)\.'
for binary in "$@"; do
  cp -L "$binary" "$out/bin/"
  ldd "$binary" | awk '/=>/ {print $1, $3}' | while read -r name path; do
    [[ "$name" =~ $system ]] && continue
    [[ -f "$path" ]] && cp -Ln "$path" "$out/lib/"
  done
done
du -sh "$out"
