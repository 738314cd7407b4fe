#!/usr/bin/env bash
# Packs built binaries and the non-system shared libraries they load into one
# directory, to carry to the GPU machine (run there with LD_LIBRARY_PATH=DIR/lib),
# or, with --with_cuda, into a container image (CUDA's cuBLAS and NCCL too;
# only the driver's libcuda comes from the host).
#   deploy/bundle.sh [--with_cuda] OUT_DIR BINARY...
set -euo pipefail
# Present on the device machine (Ubuntu 24.04, CUDA 13, NCCL 2.28) or part of the driver.
system='^(linux-vdso|ld-linux|libc|libm|libdl|librt|libpthread|libstdc\+\+|libgcc_s|libcuda|libnccl|libcublas|libcublasLt)\.'
if [[ $1 == --with_cuda ]]; then
  system='^(linux-vdso|ld-linux|libc|libm|libdl|librt|libpthread|libstdc\+\+|libgcc_s|libcuda)\.'
  shift
fi
out=$1; shift
mkdir -p "$out/bin" "$out/lib"
for binary in "$@"; do
  cp -L "$binary" "$out/bin/"
  ldd "$binary" | awk '/=>/ {print $1, $3}' | while read -r name path; do
    [[ "$name" =~ $system ]] && continue
    [[ -f "$path" ]] && cp -Ln "$path" "$out/lib/"
  done
done
du -sh "$out"
