#!/usr/bin/env bash
# Installs what skiff's test suite needs on a fresh Debian 12 machine.
# Idempotent: packages already present are skipped by apt.
set -euo pipefail

PACKAGES=(etcd-server etcd-client nftables iproute2 util-linux)

missing=()
for p in "${PACKAGES[@]}"; do
  if ! dpkg -s "$p" >/dev/null 2>&1; then
    missing+=("$p")
  fi
done

if [ "${#missing[@]}" -gt 0 ]; then
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# Debian's etcd-server package starts a system etcd where an init system runs;
# the tests start their own on free ports, so a system one is not needed.
if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
  systemctl stop etcd >/dev/null 2>&1 || true
  systemctl disable etcd >/dev/null 2>&1 || true
fi

command -v etcd >/dev/null || { echo "etcd not found after install" >&2; exit 1; }
echo "dependencies ready: $(etcd --version | head -1)"
