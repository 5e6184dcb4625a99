#!/usr/bin/env bash
# Runs etcdbr's main job, the sidecar (`etcdbrctl server`), on the embedded defaults: full and
# delta snapshots into the Local store ./.etcdbr-local/backups, the HTTP API on 127.0.0.1:8080
# (ETCDBR_SERVER_PORT to change), from the etcd named by ETCDBR_ENDPOINTS or, when none is given,
# from a local etcd that this script starts (data in ./.etcdbr-local/etcd, 127.0.0.1, free port)
# and stops on exit. Installs etcd and protoc from Debian when missing, builds the release binary.
# Extra arguments go to `etcdbrctl server` (e.g. --schedule "*/5 * * * *"); `MODE=snapshot` runs
# the standalone `etcdbrctl snapshot` job instead.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD/.etcdbr-local
mkdir -p "$ROOT"
log() { echo "[run-local] $*" >&2; }
SUDO=""
[ "$(id -u)" = 0 ] || SUDO=sudo
missing=()
for p in etcd-server etcd-client protobuf-compiler; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  log "installing ${missing[*]}"
  $SUDO apt-get update -qq
  echo 'exit 101' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null && $SUDO chmod +x /usr/sbin/policy-rc.d
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
  $SUDO rm -f /usr/sbin/policy-rc.d
fi
cargo build --release --locked --bin etcdbrctl
BIN=$PWD/target/release/etcdbrctl

ETCD_PID=""
cleanup() {
  [ -n "${CHILD:-}" ] && kill -TERM "$CHILD" 2>/dev/null && wait "$CHILD" 2>/dev/null
  [ -n "$ETCD_PID" ] && kill "$ETCD_PID" 2>/dev/null && wait "$ETCD_PID" 2>/dev/null
  return 0
}
trap cleanup EXIT
trap 'exit 0' INT TERM

EP=${ETCDBR_ENDPOINTS:-}
if [ -z "$EP" ]; then
  port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
  C=$(port); P=$(port)
  EP=http://127.0.0.1:$C
  log "no ETCDBR_ENDPOINTS given: starting etcd $(etcd --version | head -1 | awk '{print $3}') on $EP (data $ROOT/etcd, log $ROOT/etcd.log)"
  env $(env | grep -o '^ETCD[A-Z_]*=' | sed 's/=$//; s/^/-u /') etcd --name local --data-dir "$ROOT/etcd" \
    --listen-client-urls "$EP" --advertise-client-urls "$EP" \
    --listen-peer-urls "http://127.0.0.1:$P" --initial-advertise-peer-urls "http://127.0.0.1:$P" \
    --initial-cluster "local=http://127.0.0.1:$P" >"$ROOT/etcd.log" 2>&1 &
  ETCD_PID=$!
  for _ in $(seq 1 100); do
    etcdctl --endpoints "$EP" --command-timeout=1s endpoint health >/dev/null 2>&1 && break
    sleep 0.2
  done
  etcdctl --endpoints "$EP" --command-timeout=1s endpoint health >/dev/null 2>&1 || { log "etcd did not start; see $ROOT/etcd.log"; exit 1; }
fi
if [ "${MODE:-server}" = snapshot ]; then
  log "snapshots go to $ROOT/backups; Ctrl-C stops"
  set -- snapshot "$@"
else
  HTTP_PORT=${ETCDBR_SERVER_PORT:-8080}
  log "snapshots go to $ROOT/backups; API on http://127.0.0.1:$HTTP_PORT (try: curl localhost:$HTTP_PORT/snapshot/latest); Ctrl-C stops"
  set -- server --server-host 127.0.0.1 --server-port "$HTTP_PORT" "$@"
fi
"$BIN" "$@" --endpoints "$EP" --storage-provider Local --store-container "$ROOT/backups" &
CHILD=$!
wait "$CHILD"
