#!/usr/bin/env bash
# Installs the Debian 12 packages mlaserve builds with, if any is missing.
# Idempotent: does nothing (no apt-get update) when everything is present.
set -euo pipefail

PACKAGES=(
  bazel-bootstrap bazel-platforms bazel-rules-java bazel-rules-proto bazel-skylib
  g++ libabsl-dev libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler
  libre2-dev nlohmann-json3-dev libcpp-httplib-dev libgloo-dev
  libgtest-dev libgmock-dev libbenchmark-dev prometheus-cpp-dev gnuplot-nox
  clang-16 libclang-rt-16-dev libomp-16-dev iproute2 curl python3
  python3-yaml python3-kubernetes prometheus debootstrap
)
# kubectl: Debian's kubernetes-client, unless one is installed already.
command -v kubectl >/dev/null || PACKAGES+=(kubernetes-client)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "installing: ${missing[*]}" >&2
  SUDO=""
  [[ $(id -u) -ne 0 ]] && SUDO="sudo"
  $SUDO apt-get update
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y --no-install-recommends "${missing[@]}"
fi
if [[ ! -x /usr/local/cuda/bin/nvcc ]]; then
  echo "error: CUDA 13 (nvcc, cuBLAS, NCCL) is expected under /usr/local/cuda" >&2
  exit 1
fi
