#!/usr/bin/env bash
# The Debian packages the real node needs (`corral cluster up --real-node`, tests/e2e):
# containerd and runc, the CNI plugins, iptables/ipset/conntrack for kube-proxy and
# kube-router, and what the node's images are built from (umoci, debootstrap, the static
# catatonit and busybox binaries). Idempotent: apt runs only when something is missing.
set -euo pipefail
PACKAGES=(
  containerd runc containernetworking-plugins
  iptables ipset conntrack iproute2 util-linux
  umoci debootstrap catatonit busybox-static
)
missing=()
for package in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$package")
  fi
done
if [ "${#missing[@]}" -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "error: the real node needs these Debian packages: ${missing[*]}; run this as root" >&2
  exit 1
fi
echo "[node-deps] installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
