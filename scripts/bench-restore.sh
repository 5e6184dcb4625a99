#!/usr/bin/env bash
# Benchmark of restore: fills a fresh etcd (3.5.1 by default, VERSION=3.4 for Debian's 3.4.23) with
# SIZE_MIB MiB of 4 KiB values (default 600: a db > 512 MiB), takes a full snapshot with
# `etcdbrctl snapshot` (COMPRESSION: gzip by default, as etcdbrctl and the chart; none, zlib, zstd), then records DELTA_REVS single puts of 512 B (default 100000) as
# deltas. In the same run it times etcd's own tool restoring the full alone (`etcdutl`/`etcdctl
# snapshot restore`), then `etcdbrctl restore` of the full plus every delta, and prints the base
# ratio, the replay rate (revisions/s) and etcdbrctl's peak RSS; finally boots etcd on the result
# and checks its revision. DELTA_LIMIT (bytes, default etcdbrctl's 10485760) is the sidecar's
# --delta-snapshot-memory-limit, i.e. the size of each delta (104857600: the chart's).
# usage: [VERSION=3.5|3.4] [DELTA_LIMIT=N] [COMPRESSION=gzip|none|zlib|zstd] scripts/bench-restore.sh [SIZE_MIB] [DELTA_REVS]
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE_MIB=${1:-600}
DELTA_REVS=${2:-100000}
VERSION=${VERSION:-3.5}
DELTA_LIMIT=${DELTA_LIMIT:-10485760}
COMPRESSION=${COMPRESSION:-gzip}
if [ "$COMPRESSION" = none ]; then CFLAGS=(--compress-snapshots=false); else CFLAGS=(--compression-policy "$COMPRESSION"); fi
TOOLS=${ETCDBR_TOOLS_DIR:-$HOME/.cache/etcdbr-tools}
if [ "$VERSION" = 3.5 ]; then
  [ -x "$TOOLS/etcd-3.5.1/etcd" ] || scripts/install-test-deps.sh
  ETCD=$TOOLS/etcd-3.5.1/etcd; CTL=$TOOLS/etcd-3.5.1/etcdctl; TOOL=$TOOLS/etcd-3.5.1/etcdutl
else
  for p in etcd-server etcd-client protobuf-compiler time; do
    dpkg -s "$p" >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq etcd-server etcd-client protobuf-compiler time >/dev/null; break; }
  done
  ETCD=/usr/bin/etcd; CTL=/usr/bin/etcdctl; TOOL=/usr/bin/etcdctl
fi
cargo build --release --locked --bin etcdbrctl --example etcd_fill 2>&1 | tail -1
BIN=$PWD/target/release/etcdbrctl
W=$(mktemp -d /tmp/etcdbr-bench-restore.XXXXXX)
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
C=$(port); P=$(port); EP=http://127.0.0.1:$C
env -u ETCD_NAME "$ETCD" --name b --data-dir "$W/etcd" --listen-client-urls "$EP" --advertise-client-urls "$EP" \
  --listen-peer-urls "http://127.0.0.1:$P" --initial-advertise-peer-urls "http://127.0.0.1:$P" \
  --initial-cluster "b=http://127.0.0.1:$P" --quota-backend-bytes 8589934592 >"$W/etcd.log" 2>&1 &
ETCD_PID=$!
JOB_PID=""
trap 'kill $JOB_PID $ETCD_PID 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$W"' EXIT
export ETCDCTL_API=3
for _ in $(seq 1 100); do "$CTL" --endpoints "$EP" endpoint health >/dev/null 2>&1 && break; sleep 0.2; done
target/release/examples/etcd_fill --endpoint "$EP" --mib "$SIZE_MIB"
"$BIN" snapshot --endpoints "$EP" --store-container "$W/bk" "${CFLAGS[@]}" \
  --schedule "0 0 1 1 *" --garbage-collection-period 0s \
  --delta-snapshot-memory-limit "$DELTA_LIMIT" --delta-snapshot-period 10m >/dev/null 2>"$W/job.log" &
JOB_PID=$!
for _ in $(seq 1 1200); do ls "$W/bk/v2" 2>/dev/null | grep -q '^Full' && break; sleep 0.2; done
target/release/examples/etcd_fill --endpoint "$EP" --count "$DELTA_REVS" --value-size 512 --txn-size 1 --parallel 64
END=$("$CTL" --endpoints "$EP" get x -w json | python3 -c 'import json,sys; print(json.load(sys.stdin)["header"]["revision"])')
covered() { ls "$W/bk/v2" | python3 -c "
import sys; revs=[int(l.split('-')[2]) for l in sys.stdin if l.startswith('Incr-')]; sys.exit(0 if revs and max(revs) >= $END else 1)"; }
# SIGTERM: the job writes what it buffered, up to the revision current at the signal, as a
# final delta
kill -TERM $JOB_PID; wait $JOB_PID || true; JOB_PID=""
covered || { echo "the deltas do not reach revision $END"; exit 1; }
kill $ETCD_PID; wait $ETCD_PID 2>/dev/null || true
FULL=$(ls "$W/bk/v2" | grep '^Full' | head -1)
# etcd's tool restores the plain db, decompressed here first (timed once and shown apart: by
# hand an operator must do it too); gzip -d reading the object also shows the parallel gzip
# stream is an ordinary one
DEC_START=$(date +%s.%N)
case $COMPRESSION in
  none) DB_FILE=$W/bk/v2/$FULL ;;
  gzip) gzip -dc <"$W/bk/v2/$FULL" >"$W/full.db"; DB_FILE=$W/full.db ;;
  zstd) zstd -qdc <"$W/bk/v2/$FULL" >"$W/full.db"; DB_FILE=$W/full.db ;;
  zlib) python3 -c 'import sys, zlib
d = zlib.decompressobj()
for b in iter(lambda: sys.stdin.buffer.read(1 << 20), b""): sys.stdout.buffer.write(d.decompress(b))
sys.stdout.buffer.write(d.flush())' <"$W/bk/v2/$FULL" >"$W/full.db"; DB_FILE=$W/full.db ;;
esac
DEC=$(python3 -c "import time; print(f'{time.time() - $DEC_START:.2f}')")
NDELTAS=$(ls "$W/bk/v2" | grep -c '^Incr' || true)
DB_MIB=$(( $(stat -c %s "$DB_FILE") / 1048576 ))
DELTA_MIB=$(ls -l "$W/bk/v2" | awk '/ Incr-/ {s+=$5; n++} END {if (n) printf "%.1f", s/n/1048576; else print 0}')
echo "etcd $VERSION: full $FULL ($DB_MIB MiB db, $(( $(stat -c %s "$W/bk/v2/$FULL") / 1048576 )) MiB stored, $COMPRESSION), $NDELTAS deltas of $DELTA_MIB MiB on average up to revision $END"

# Two rounds, best of each, etcd's tool first in round 1 and etcdbrctl first in round 2: a step
# that follows another ~1 GB write runs slower here (writeback), whichever program it is; every
# step starts after a sync.
T0=""; OUT=""
tool_step() {
  rm -rf "$W/base"; sync
  /usr/bin/time -f "%e %M" -o "$W/t0" "$TOOL" snapshot restore "$DB_FILE" --data-dir "$W/base" \
    --name r --initial-cluster r=http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 >/dev/null 2>"$W/t0.err" \
    || { cat "$W/t0.err"; exit 1; }
  read -r t0 M0 <"$W/t0"
  T0="$T0 $t0"
}
ours_step() {
  rm -rf "$W/restored"; sync
  /usr/bin/time -f "%e %M" -o "$W/t1" "$BIN" restore --store-container "$W/bk" --data-dir "$W/restored" \
    --name r --initial-cluster r=http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
    --restoration-temp-snapshots-dir "$W/rtmp" --etcd-binary "$ETCD" --etcd-restore-tool "$TOOL" >"$W/r.out" 2>"$W/r.err" \
    || { cat "$W/r.err"; exit 1; }
  read -r _ M1 <"$W/t1"
  cat "$W/r.out"
  OUT="$OUT
$(cat "$W/r.out")"
}
tool_step; ours_step
ours_step; tool_step
python3 - "$OUT" "$T0" "$M0" "$M1" "$DEC" "$COMPRESSION" <<'PY'
import re, sys
out, t0s, m0, m1 = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
dec, comp = float(sys.argv[5]), sys.argv[6]
t0 = min(float(t) for t in t0s.split())
runs = [l for l in out.splitlines() if l.startswith("restored")]
def f(pat, l): return float(re.search(pat, l).group(1))
base = min(f(r"base ([0-9.]+)s", l) for l in runs)
replay = min(f(r"replay ([0-9.]+)s", l) for l in runs)
revs = f(r"([0-9]+) revisions replayed", runs[0])
t1 = min(f(r" in ([0-9.]+)s:", l) for l in runs)
rate = revs / replay if replay else 0
own = max(int(f(r"etcdbrctl peak RSS ([0-9]+) MiB", l)) for l in runs)
print(f"{'step':<44} {'seconds':>8} {'ratio':>7} {'peak RSS':>10}")
print(f"{'etcd tool: snapshot restore (full alone)':<44} {t0:8.2f} {'1.00':>7} {m0 // 1024:7d} MiB")
print(f"{'etcdbrctl restore: base (download+verify+db)':<44} {base:8.2f} {base / t0:7.2f}")
if comp != "none":
    print(f"{'by hand: ' + comp + ' -d (single run), then the tool':<44} {dec + t0:8.2f} {(dec + t0) / t0:7.2f}   (etcdbrctl base: {base / (dec + t0):.2f}x of it)")
print(f"(best of 2 each; etcd's tool {t0s.strip()} s)")
print(f"{'etcdbrctl restore: delta replay':<44} {replay:8.2f} {'':>7}   {rate:.0f} revisions/s (target >= 5000)")
print(f"{'etcdbrctl restore: total':<44} {t1:8.2f} {'':>7} {own:7d} MiB (own; {m1 // 1024} MiB with the tool and the temporary etcd)")
PY
# boot the result and check its revision
C2=$(port); P2=$(port)
env -u ETCD_NAME "$ETCD" --name r --data-dir "$W/restored" --listen-client-urls "http://127.0.0.1:$C2" \
  --advertise-client-urls "http://127.0.0.1:$C2" --listen-peer-urls "http://127.0.0.1:$P2" \
  --initial-advertise-peer-urls http://127.0.0.1:2380 --initial-cluster r=http://127.0.0.1:2380 >"$W/r-etcd.log" 2>&1 &
ETCD_PID=$!
for _ in $(seq 1 150); do "$CTL" --endpoints "http://127.0.0.1:$C2" endpoint health >/dev/null 2>&1 && break; sleep 0.2; done
GOT=$("$CTL" --endpoints "http://127.0.0.1:$C2" get x -w json | python3 -c 'import json,sys; print(json.load(sys.stdin)["header"]["revision"])')
echo "restored etcd boots at revision $GOT (source $END): $([ "$GOT" = "$END" ] && echo OK || echo MISMATCH)"
