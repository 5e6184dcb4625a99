#!/usr/bin/env bash
# Benchmark of `snapshot status` and `verify`: fills a fresh etcd (3.5.1 by default, VERSION=3.4
# for Debian's 3.4.23) with SIZE_MIB MiB of 4 KiB values (default 600: a snapshot > 512 MiB),
# saves a snapshot with etcdctl, then times in the same run etcd's own `snapshot status`
# (etcdutl 3.5 / etcdctl 3.4) and `etcdbrctl snapshot status` on the same file (best of RUNS),
# checks that both print the same JSON, and prints the ratios (target <= 1.0x for the same work,
# i.e. with --skip-hash-check; by default ours also hashes the file against its trailer); also times
# `etcdbrctl snapshot verify` (sha256 + structure) and `etcdbrctl snapshot ls` for scale.
# usage: [VERSION=3.5|3.4] [RUNS=3] scripts/bench-status.sh [SIZE_MIB]
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE_MIB=${1:-600}
VERSION=${VERSION:-3.5}
RUNS=${RUNS:-3}
TOOLS=${ETCDBR_TOOLS_DIR:-$HOME/.cache/etcdbr-tools}
if [ "$VERSION" = 3.5 ]; then
  [ -x "$TOOLS/etcd-3.5.1/etcd" ] || scripts/install-test-deps.sh
  ETCD=$TOOLS/etcd-3.5.1/etcd; CTL=$TOOLS/etcd-3.5.1/etcdctl; TOOL=$TOOLS/etcd-3.5.1/etcdutl
else
  [ -x /usr/bin/etcd ] || scripts/install-test-deps.sh
  ETCD=/usr/bin/etcd; CTL=/usr/bin/etcdctl; TOOL=/usr/bin/etcdctl
fi
cargo build --release --locked --bin etcdbrctl --example etcd_fill 2>&1 | tail -1
BIN=$PWD/target/release/etcdbrctl
W=$(mktemp -d /tmp/etcdbr-bench-status.XXXXXX)
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
C=$(port); P=$(port); EP=http://127.0.0.1:$C
env -u ETCD_NAME "$ETCD" --name b --data-dir "$W/etcd" --listen-client-urls "$EP" --advertise-client-urls "$EP" \
  --listen-peer-urls "http://127.0.0.1:$P" --initial-advertise-peer-urls "http://127.0.0.1:$P" \
  --initial-cluster "b=http://127.0.0.1:$P" --quota-backend-bytes 8589934592 >"$W/etcd.log" 2>&1 &
ETCD_PID=$!
trap 'kill $ETCD_PID 2>/dev/null || true; wait 2>/dev/null || true; if [ -n "${KEEP:-}" ]; then cp "$W/snap.db" "$KEEP" || true; fi; rm -rf "$W"' EXIT
export ETCDCTL_API=3
for _ in $(seq 1 100); do "$CTL" --endpoints "$EP" endpoint health >/dev/null 2>&1 && break; sleep 0.2; done
target/release/examples/etcd_fill --endpoint "$EP" --mib "$SIZE_MIB"
"$CTL" --endpoints "$EP" snapshot save "$W/snap.db" >/dev/null
kill $ETCD_PID; wait $ETCD_PID 2>/dev/null || true
echo "etcd $VERSION: snapshot of $(( $(stat -c %s "$W/snap.db") / 1048576 )) MiB"

best() { # best wall time of RUNS runs of "$@" (stdout to $W/out), and its peak RSS
  local b="" m=0
  for _ in $(seq 1 "$RUNS"); do
    /usr/bin/time -f "%e %M" -o "$W/t" "$@" >"$W/out" 2>"$W/err" || { cat "$W/err"; exit 1; }
    read -r t mem <"$W/t"
    if [ -z "$b" ] || python3 -c "import sys; sys.exit(0 if $t < $b else 1)"; then b=$t; m=$mem; fi
  done
  echo "$b $m"
}
read -r T0 M0 < <(best "$TOOL" snapshot status -w json "$W/snap.db"); cp "$W/out" "$W/theirs.json"
read -r T1 M1 < <(best "$BIN" snapshot status -w json "$W/snap.db"); cp "$W/out" "$W/ours.json"
read -r T4 M4 < <(best "$BIN" snapshot status -w json --skip-hash-check "$W/snap.db")
read -r T2 M2 < <(best "$BIN" snapshot verify "$W/snap.db")
read -r T3 M3 < <(best "$BIN" snapshot ls "$W/snap.db" -w json)
cmp -s "$W/theirs.json" "$W/ours.json" && SAME=identical || SAME="DIFFERENT: $(cat "$W/theirs.json") vs $(cat "$W/ours.json")"
python3 - "$T0" "$T1" "$T2" "$T3" "$M0" "$M1" "$M2" "$M3" "$(basename "$TOOL")" "$SAME" "$T4" "$M4" <<'PY'
import sys
t0, t1, t2, t3 = map(float, sys.argv[1:5]); m0, m1, m2, m3 = map(int, sys.argv[5:9]); tool, same = sys.argv[9], sys.argv[10]
t4, m4 = float(sys.argv[11]), int(sys.argv[12])
print(f"{'command':<46} {'seconds':>8} {'ratio':>7} {'peak RSS':>10}")
print(f"{tool + ' snapshot status -w json':<46} {t0:8.2f} {'1.00':>7} {m0 // 1024:7d} MiB")
print(f"{'etcdbrctl snapshot status -w json':<46} {t1:8.2f} {t1 / t0:7.2f} {m1 // 1024:7d} MiB   (+ sha256 of the whole file, which etcd's tool skips; output {same})")
print(f"{'etcdbrctl snapshot status --skip-hash-check':<46} {t4:8.2f} {t4 / t0:7.2f} {m4 // 1024:7d} MiB   (the same work as etcd's tool; target <= 1.0)")
print(f"{'etcdbrctl snapshot verify (sha256 + check)':<46} {t2:8.2f} {t2 / t0:7.2f} {m2 // 1024:7d} MiB")
print(f"{'etcdbrctl snapshot ls -w json':<46} {t3:8.2f} {t3 / t0:7.2f} {m3 // 1024:7d} MiB")
PY
