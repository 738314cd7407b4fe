#!/usr/bin/env bash
# Checks what a cluster operator deploys, offline: the Kubernetes manifests
# (rendered by kubectl's kustomize, checked against the API's own types and
# against each other and the binaries' flags by deploy/k8s/validate.py, which
# must also refuse a broken copy), the Prometheus scrape configuration
# (promtool), the container image's filesystem (deploy/image/build.sh
# --check: needs root for its chroot) and, where podman is installed, the
# image itself. Expects the Bazel outputs built.
set -euo pipefail
cd "$(dirname "$0")/.."
rendered=$(mktemp /tmp/mlaserve-k8s.XXXXXX)
trap 'rm -f "$rendered" "$rendered.broken"' EXIT
kubectl kustomize deploy/k8s >"$rendered"
/usr/bin/python3 deploy/k8s/validate.py "$rendered" --binaries bazel-bin
# The check can fail: a wrong worker count, a misnamed probe port, a flag the
# worker does not have and a field Kubernetes does not know are each refused.
sed -e 's/--workers=8/--workers=7/' -e 's/port: http$/port: htp/' -e 's/--device=cuda/--devices=cuda/' \
  -e 's/podManagementPolicy: Parallel/podManagementPolicy: Parallel\n  replica: 2/' "$rendered" >"$rendered.broken"
refusals=$(/usr/bin/python3 deploy/k8s/validate.py "$rendered.broken" --binaries bazel-bin 2>&1 | grep -c '^validate: .*' || true)
if ((refusals < 5)); then
  echo "check_deploy: validate.py let a broken copy of the manifests through" >&2
  exit 1
fi
promtool check config deploy/k8s/prometheus.yml >/dev/null
echo "check_deploy: prometheus.yml is valid"
if [[ $(id -u) -eq 0 ]]; then
  deploy/image/build.sh --check
else
  echo "check_deploy: the image check needs root (chroot): not run" >&2
fi
# Where podman is installed, the image itself is built too (then removed).
if command -v podman >/dev/null; then
  deploy/image/build.sh mlaserve:check >/dev/null
  podman rmi -f mlaserve:check >/dev/null
  echo "check_deploy: the image builds with podman"
fi
