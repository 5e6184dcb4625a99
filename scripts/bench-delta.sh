#!/usr/bin/env bash
# Benchmark of delta snapshots: a fresh etcd 3.4.23 (loopback, temp dir), the sidecar
# (`etcdbrctl server`, or the `snapshot` job with MODE=snapshot) with default delta limits (20s
# period, 10 MiB memory limit) writing to a Local store, and PUTS single puts of 512-byte values
# (default 200000, 64 in flight); in server mode an out-of-schedule full is requested over HTTP
# half-way. Prints the sidecar's peak RSS, the put rate, and the event rate the deltas kept up
# with (all revisions stored / time from the first put until the store covered the last
# revision), and checks the chain is gap-free.
# usage: [MODE=server|snapshot] [MIDWAY_FULL=1|0] scripts/bench-delta.sh [PUTS]
set -euo pipefail
cd "$(dirname "$0")/.."
PUTS=${1:-200000}
MODE=${MODE:-server}
for p in etcd-server etcd-client protobuf-compiler time; do
  dpkg -s "$p" >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq etcd-server etcd-client protobuf-compiler time >/dev/null; break; }
done
cargo build --release --locked --bin etcdbrctl --example etcd_fill 2>&1 | tail -1
BIN=$PWD/target/release/etcdbrctl
W=$(mktemp -d /tmp/etcdbr-bench-delta.XXXXXX)
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
C=$(port); P=$(port); EP=http://127.0.0.1:$C
env -u ETCD_NAME etcd --name b --data-dir "$W/etcd" --listen-client-urls "$EP" --advertise-client-urls "$EP" \
  --listen-peer-urls "http://127.0.0.1:$P" --initial-advertise-peer-urls "http://127.0.0.1:$P" \
  --initial-cluster "b=http://127.0.0.1:$P" --quota-backend-bytes 8589934592 >"$W/etcd.log" 2>&1 &
ETCD_PID=$!
JOB_PID=""
trap 'kill $JOB_PID $ETCD_PID 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$W"' EXIT
for _ in $(seq 1 100); do etcdctl --endpoints "$EP" endpoint health >/dev/null 2>&1 && break; sleep 0.2; done
HTTP_PORT=$(port)
if [ "$MODE" = server ]; then
  # no GC: the bench checks the whole chain, across the full requested half-way
  EXTRA=(server --server-host 127.0.0.1 --server-port "$HTTP_PORT" --garbage-collection-period 0s)
else
  EXTRA=(snapshot)
fi
/usr/bin/time -f "%M %U %S" -o "$W/rss" "$BIN" "${EXTRA[@]}" --endpoints "$EP" --storage-provider Local \
  --store-container "$W/bk" --schedule "0 0 1 1 *" >/dev/null 2>"$W/job.log" &
JOB_PID=$!
for _ in $(seq 1 200); do ls "$W/bk/v2" 2>/dev/null | grep -q '^Full' && break; sleep 0.1; done
# the baseline in the same run: etcdctl watching the whole keyspace, until it sees the sentinel
( grep -m1 -q '^bench-sentinel$' < <(exec etcdctl --endpoints "$EP" watch --prefix ""); date +%s.%N >"$W/etcdctl-caught" ) &
WATCH_PID=$!
sleep 0.5
T0=$(date +%s.%N)
if [ "$MODE" = server ]; then
  target/release/examples/etcd_fill --endpoint "$EP" --count $((PUTS / 2)) --value-size 512 --txn-size 1 --parallel 64
  CURL_PID=""
  if [ "${MIDWAY_FULL:-1}" = 1 ]; then
    curl -sf "http://127.0.0.1:$HTTP_PORT/snapshot/full" >/dev/null &
    CURL_PID=$!
  fi
  target/release/examples/etcd_fill --endpoint "$EP" --count $((PUTS - PUTS / 2)) --value-size 512 --txn-size 1 --parallel 64
  [ -z "$CURL_PID" ] || wait $CURL_PID || echo "out-of-schedule full snapshot request failed"
else
  target/release/examples/etcd_fill --endpoint "$EP" --count "$PUTS" --value-size 512 --txn-size 1 --parallel 64
fi
etcdctl --endpoints "$EP" put bench-sentinel x >/dev/null
T_LOAD=$(date +%s.%N)
T_CAUGHT=$T_LOAD
END=$(etcdctl --endpoints "$EP" get x -w json | python3 -c 'import json,sys; print(json.load(sys.stdin)["header"]["revision"])')
if [ "$MODE" = server ]; then
  # when the sidecar's watch has received the last revision (etcdbr_delta_watch_revision)
  for _ in $(seq 1 1200); do
    n=$(curl -sf "http://127.0.0.1:$HTTP_PORT/metrics" | awk '$1=="etcdbr_delta_watch_revision"{print $2}')
    [ "${n:-0}" -ge "$END" ] && break
    sleep 0.1
  done
  T_CAUGHT=$(date +%s.%N)
fi
for _ in $(seq 1 1200); do [ -s "$W/etcdctl-caught" ] && break; sleep 0.1; done
kill $WATCH_PID 2>/dev/null || true
pkill -f "etcdctl --endpoints $EP watch" 2>/dev/null || true
# wait until the store covers END (deltas every 20 s), at most 120 s
covered() { ls "$W/bk/v2" | python3 -c "
import sys; revs=[int(l.split('-')[2]) for l in sys.stdin if l.startswith('Incr-')]; sys.exit(0 if revs and max(revs) >= $END else 1)"; }
for _ in $(seq 1 1200); do covered && break; sleep 0.1; done
T1=$(date +%s.%N)
pkill -TERM -P $JOB_PID; wait $JOB_PID || true; JOB_PID=""
[ "$MODE" = server ] && echo "mode: server (HTTP full requested half-way)" || echo "mode: snapshot job"
python3 - "$W/bk/v2" "$END" "$T0" "$T1" "$(cut -d' ' -f1 "$W/rss")" "$T_LOAD" "$T_CAUGHT" "$MODE" "$(cut -d' ' -f2,3 "$W/rss")" "$(cat "$W/etcdctl-caught" 2>/dev/null || echo 0)" <<'PY'
import os, sys
d, end, t0, t1, rss, tl = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5]), float(sys.argv[6])
tc, mode = float(sys.argv[7]), sys.argv[8]
usr, sys_ = (float(x) for x in sys.argv[9].split())
te = float(sys.argv[10])
names = sorted((n for n in os.listdir(d) if not n.startswith('.')), key=lambda n: (int(n.split('-')[2]), n.startswith('Full-')))
full = [n for n in names if n.startswith('Full-')][0]
deltas = [n for n in names if n.startswith('Incr-')]
nxt = int(full.split('-')[2]) + 1
for n in names[names.index(full) + 1:]:
    s, l = int(n.split('-')[1]), int(n.split('-')[2])
    if n.startswith('Full-'):  # a full starts a new set at its revision
        assert l >= nxt - 1, f"{n} is older than the chain"
        nxt = l + 1
        continue
    assert s == nxt, f"gap before {n}"
    nxt = l + 1
events = nxt - 1 - int(full.split('-')[2])
print(f"deltas: {len(deltas)}, revisions {int(full.split('-')[2]) + 1}..{nxt - 1} gap-free, last {nxt - 1} >= etcd's {end}: {nxt - 1 >= end}")
print(f"events: {events} written by etcd at {events / (tl - t0):.0f} events/s; all stored {t1 - tl:.1f}s after the last put (deltas every 20 s)")
if mode == "server":
    kept = events / (tc - t0)
    print(f"the sidecar's watch received the last event {tc - tl:.1f}s after the last put: kept up with {kept:.0f} events/s = {kept / (events / (tl - t0)):.2f}x etcd's write rate")
    if te > 0:
        base = events / (te - t0)
        print(f"etcdctl watch (same run) received it {te - tl:.1f}s after the last put: {base:.0f} events/s; etcdbrctl/etcdctl = {kept / base:.2f}x")
print(f"etcdbrctl CPU time: {usr + sys_:.1f}s ({usr:.1f}s user, {sys_:.1f}s system) for {events} events")
print(f"etcdbrctl peak RSS: {rss // 1024} MiB (target <= 100 MiB)")
PY
