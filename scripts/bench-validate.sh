#!/usr/bin/env bash
# Benchmark of start-up validation: fills a fresh etcd 3.5.1 with SIZE_MIB MiB of 4 KiB values
# (default 600: a db > 512 MiB), stops it cleanly, then times in the same run
# `etcdbrctl initialize --validation-mode sanity` and `--validation-mode full` on the data dir
# (validation only: no store), and etcd itself starting on the same data dir until it answers
# (best of RUNS each), and prints the ratios (target: validation faster than starting etcd).
# usage: [RUNS=3] scripts/bench-validate.sh [SIZE_MIB]
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE_MIB=${1:-600}
RUNS=${RUNS:-3}
TOOLS=${ETCDBR_TOOLS_DIR:-$HOME/.cache/etcdbr-tools}
[ -x "$TOOLS/etcd-3.5.1/etcd" ] || scripts/install-test-deps.sh
ETCD=$TOOLS/etcd-3.5.1/etcd; CTL=$TOOLS/etcd-3.5.1/etcdctl
cargo build --release --locked --bin etcdbrctl --example etcd_fill 2>&1 | tail -1
BIN=$PWD/target/release/etcdbrctl
W=$(mktemp -d /tmp/etcdbr-bench-validate.XXXXXX)
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
C=$(port); P=$(port); EP=http://127.0.0.1:$C
ETCD_PID=""
trap 'kill $ETCD_PID 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$W"' EXIT
start_etcd() {
  env -u ETCD_NAME "$ETCD" --name b --data-dir "$W/etcd" --listen-client-urls "$EP" --advertise-client-urls "$EP" \
    --listen-peer-urls "http://127.0.0.1:$P" --initial-advertise-peer-urls "http://127.0.0.1:$P" \
    --initial-cluster "b=http://127.0.0.1:$P" --quota-backend-bytes 8589934592 >>"$W/etcd.log" 2>&1 &
  ETCD_PID=$!
}
wait_up() { for _ in $(seq 1 1200); do "$CTL" --endpoints "$EP" --command-timeout=1s get x >/dev/null 2>&1 && return 0; sleep 0.05; done; return 1; }
stop_etcd() { kill -TERM "$ETCD_PID"; wait "$ETCD_PID" 2>/dev/null || true; ETCD_PID=""; }
start_etcd; wait_up
target/release/examples/etcd_fill --endpoint "$EP" --mib "$SIZE_MIB"
stop_etcd
echo "etcd 3.5.1 data dir: db of $(( $(stat -c %s "$W/etcd/member/snap/db") / 1048576 )) MiB"
cat "$W/etcd/member/snap/db" >/dev/null # warm the page cache for everyone alike

best() { # best wall time of RUNS runs of a shell snippet
  local b=""
  for _ in $(seq 1 "$RUNS"); do
    local t0 t1
    t0=$(date +%s.%N); eval "$1"; t1=$(date +%s.%N)
    local t; t=$(python3 -c "print($t1 - $t0)")
    if [ -z "$b" ] || python3 -c "import sys; sys.exit(0 if $t < $b else 1)"; then b=$t; fi
  done
  echo "$b"
}
validate() { "$BIN" initialize --validation-mode "$1" --data-dir "$W/etcd" --name b \
  --initial-cluster "b=http://127.0.0.1:$P" >"$W/v.out" 2>"$W/v.err" || { cat "$W/v.err"; exit 1; }
  grep -q Kept "$W/v.out" || { cat "$W/v.out" "$W/v.err"; exit 1; }; }
TS=$(best 'validate sanity')
TF=$(best 'validate full')
TE=$(best 'start_etcd; wait_up; stop_etcd')
python3 - "$TS" "$TF" "$TE" <<'PY'
import sys
ts, tf, te = map(float, sys.argv[1:4])
print(f"{'step':<52} {'seconds':>8} {'vs etcd start':>14}")
print(f"{'etcd 3.5.1 starting on the data dir (until it answers)':<52} {te:8.2f} {'1.00':>14}")
print(f"{'etcdbrctl validation, sanity':<52} {ts:8.2f} {ts / te:14.2f}")
print(f"{'etcdbrctl validation, full (bbolt check, WAL, .snap)':<52} {tf:8.2f} {tf / te:14.2f}   (target < 1.0)")
PY
