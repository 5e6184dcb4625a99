#!/usr/bin/env bash
# Benchmark of the keyspace hash behind the proofs and the restore drill: fills a fresh etcd
# 3.5 (loopback, temp dir) with SIZE_MIB MiB of values (default 600), compacts half-way, and
# times, best of RUNS, in the same run:
#   etcdctl endpoint hashkv --rev R        (etcd computing its own HashKV: the baseline)
#   etcdbrctl snapshot hashkv snap.db ...  (the same number computed natively from the file)
# checks that both give the same hash, and prints the ratio and etcdbrctl's peak RSS.
# usage: scripts/bench-hashkv.sh [SIZE_MIB] [RUNS]
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE_MIB=${1:-600}
RUNS=${2:-2}
TOOLS=${ETCDBR_TOOLS_DIR:-$HOME/.cache/etcdbr-tools}
[ -x "$TOOLS/etcd-3.5.1/etcd" ] || scripts/install-test-deps.sh
dpkg -s time >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq time >/dev/null; }
ETCD=$TOOLS/etcd-3.5.1/etcd
CTL=$TOOLS/etcd-3.5.1/etcdctl
cargo build --release --locked --bin etcdbrctl --example etcd_fill 2>&1 | tail -1
BIN=$PWD/target/release/etcdbrctl
W=$(mktemp -d /tmp/etcdbr-bench.XXXXXX)
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
C=$(port); P=$(port); EP=http://127.0.0.1:$C
env -u ETCD_NAME "$ETCD" --name b --data-dir "$W/etcd" --listen-client-urls "$EP" --advertise-client-urls "$EP" \
  --listen-peer-urls "http://127.0.0.1:$P" --initial-advertise-peer-urls "http://127.0.0.1:$P" \
  --initial-cluster "b=http://127.0.0.1:$P" --quota-backend-bytes 8589934592 >"$W/etcd.log" 2>&1 &
ETCD_PID=$!
trap 'kill $ETCD_PID 2>/dev/null || true; wait $ETCD_PID 2>/dev/null || true; rm -rf "$W"' EXIT
ctl() { ETCDCTL_API=3 "$CTL" --endpoints "$EP" "$@"; }
for _ in $(seq 1 100); do ctl endpoint health >/dev/null 2>&1 && break; sleep 0.2; done
rev() { ctl get x -w json | python3 -c 'import json,sys; print(json.load(sys.stdin)["header"]["revision"])'; }
target/release/examples/etcd_fill --endpoint "$EP" --mib $((SIZE_MIB / 2))
ctl compaction --physical "$(rev)" >/dev/null
target/release/examples/etcd_fill --endpoint "$EP" --mib $((SIZE_MIB / 2))
R=$(rev)
ctl snapshot save "$W/snap.db" >/dev/null
DB=$(stat -c %s "$W/snap.db")
echo "etcd $("$ETCD" --version | head -1 | awk '{print $3}'), db $((DB / 1048576)) MiB, revision $R, best of $RUNS runs"

# prints "seconds maxrss_kib" of the best (fastest) run; the command's stdout goes to $W/out
best() {
  local b_t="" b_m=""
  for _ in $(seq 1 "$RUNS"); do
    /usr/bin/time -f "%e %M" -o "$W/time" "$@" >"$W/out" 2>"$W/err" || { cat "$W/err" >&2; exit 1; }
    read -r t m <"$W/time"
    if [ -z "$b_t" ] || python3 -c "import sys; sys.exit(0 if $t < $b_t else 1)"; then b_t=$t; b_m=$m; fi
  done
  echo "$b_t $b_m"
}
read -r T0 _ < <(best env ETCDCTL_API=3 "$CTL" --endpoints "$EP" endpoint hashkv --rev "$R" -w json)
read -r THEIRS COMPACT < <(python3 -c 'import json,sys; h=json.load(open(sys.argv[1]))[0]["HashKV"]; print(h["hash"], h.get("compact_revision", 0))' "$W/out")
read -r T M < <(best "$BIN" snapshot hashkv "$W/snap.db" --revision "$R" --compact-revision "$COMPACT")
OURS=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["hash"])' "$W/out")
[ "$OURS" = "$THEIRS" ] || { echo "hashes differ: etcd $THEIRS, etcdbrctl $OURS"; exit 1; }
printf '%-40s %8s %8s %12s\n' "command" "seconds" "ratio" "peak RSS"
printf '%-40s %8.2f %8s %12s\n' "etcdctl endpoint hashkv (in etcd)" "$T0" "1.00" "-"
printf '%-40s %8.2f %8.2f %9d MiB\n' "etcdbrctl snapshot hashkv (from the file)" "$T" "$(python3 -c "print($T/$T0)")" $((M / 1024))
echo "equal hashes: $OURS (compacted at $COMPACT)"
