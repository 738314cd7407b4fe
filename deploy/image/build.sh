#!/usr/bin/env bash
# The mlaserve container image (deploy/image/Dockerfile) from the Bazel
# outputs: the coordinator, the worker and the libraries they load.
#   deploy/image/build.sh [TAG]   builds it with podman or docker (default tag mlaserve:latest)
#   deploy/image/build.sh --check runs the image's filesystem instead, where no
#                                 container engine runs (CI): the binaries and a
#                                 tiny cluster in a chroot of the same base
# With no Debian 12 base image at hand (no registry), the base is made from
# Debian's packages with debootstrap (cached in $MLASERVE_BASE_DIR).
set -euo pipefail
cd "$(dirname "$0")/../.."
mode=build
[[ ${1:-} == --check ]] && { mode=check; shift; }
tag=${1:-mlaserve:latest}
base_dir=${MLASERVE_BASE_DIR:-/var/tmp/mlaserve-bookworm-base}

bazel build //coordinator //worker >/dev/null 2>&1
context=$(mktemp -d /tmp/mlaserve-image.XXXXXX)
trap 'rm -rf "$context"' EXIT
deploy/bundle.sh --with_cuda "$context/opt/mlaserve" bazel-bin/coordinator/coordinator bazel-bin/worker/worker >/dev/null
cp deploy/image/Dockerfile "$context/"
echo "image: context $(du -sh "$context" | cut -f1) (binaries and libraries)"

# A minimal Debian 12 from the configured mirror, made once.
make_base() {
  [[ -x $base_dir/bin/sh ]] && return
  echo "image: making a Debian 12 base with debootstrap in $base_dir"
  rm -rf "$base_dir"
  # Either apt source file may be missing (deb822-only systems have no sources.list): no match is no mirror.
  mirror=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/* 2>/dev/null | grep -E '^(URIs:|deb) ' |
    grep -oE 'https?://[^ ]+/debian/?( |$)' | head -1 | tr -d ' ' || true)
  debootstrap --variant=minbase bookworm "$base_dir" "${mirror:-http://deb.debian.org/debian}" >/dev/null
}

if [[ $mode == build ]]; then
  engine=$(command -v podman || command -v docker || true)
  [[ -n $engine ]] || { echo "image: neither podman nor docker is installed" >&2; exit 1; }
  base=debian:bookworm-slim
  if ! "$engine" image exists "$base" 2>/dev/null && ! "$engine" image inspect "$base" >/dev/null 2>&1; then
    make_base
    tar -C "$base_dir" -c . | "$engine" import - mlaserve-base:bookworm >/dev/null
    base=mlaserve-base:bookworm
  fi
  # podman's chroot isolation runs RUN steps without an OCI runtime, so that
  # it also builds inside a container without cgroup delegation.
  isolation=()
  [[ $engine == */podman ]] && isolation=(--isolation=chroot)
  "$engine" build "${isolation[@]}" --build-arg BASE="$base" -t "$tag" "$context"
  echo "image: built $tag"
  exit 0
fi

# --check: the Dockerfile's steps by hand in a chroot of the base.
make_base
root=$(mktemp -d /tmp/mlaserve-root.XXXXXX)
cleanup_root() {
  umount "$root/proc" 2>/dev/null || true
  rm -rf "$root" "$context"
}
trap cleanup_root EXIT
cp -a "$base_dir/." "$root/"
grep -q '^COPY opt/mlaserve /opt/mlaserve$' deploy/image/Dockerfile  # what is done here by hand
cp -a "$context/opt" "$root/"
mkdir -p "$root/models" && cp -r tests/testdata/tiny-deepseek-v3 "$root/models/tiny"
mount -t proc proc "$root/proc"
in_image() { chroot "$root" env -i PATH=/opt/mlaserve/bin:/usr/bin:/bin LD_LIBRARY_PATH=/opt/mlaserve/lib OMP_NUM_THREADS=1 "$@"; }
in_image coordinator --version >/dev/null
in_image worker --version >/dev/null
echo "image: every library of the coordinator and the worker resolves inside the base"
port=$((20000 + RANDOM % 20000))
in_image coordinator --model=/models/tiny --http_port=$port --grpc_port=$((port + 1)) --internal_port=$((port + 2)) \
  --workers=1 >"$context/coordinator.log" 2>&1 & coordinator=$!
in_image worker --coordinator=127.0.0.1:$((port + 2)) --device=cpu >"$context/worker.log" 2>&1 & worker=$!
ok=0
for _ in $(seq 200); do  # a minute at most
  if curl -sf -m 2 "http://127.0.0.1:$port/v1/completions" -H 'Content-Type: application/json' \
       -d '{"prompt": "image", "max_tokens": 4}' >/dev/null; then ok=1; break; fi
  sleep 0.3
done
kill "$coordinator" "$worker" 2>/dev/null || true
wait "$coordinator" "$worker" 2>/dev/null || true
if ((ok)); then
  echo "image: a coordinator and a CPU worker run from the image's filesystem and answer a completion"
else
  tail -n 5 "$context"/*.log >&2
  echo "image: the cluster in the image did not answer" >&2
  exit 1
fi
