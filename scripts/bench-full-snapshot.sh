#!/usr/bin/env bash
# Benchmark of full snapshots: fills a fresh etcd 3.4.23 (loopback, temp dir) with SIZE_MIB MiB
# of values (default 600, i.e. a db of > 512 MiB), then in the same run times, best of RUNS:
#   etcdctl snapshot save                 (the baseline)
#   etcdbrctl snapshot save to Local: none, zstd, gzip and zlib (levels 6 and 1, the default,
#   each on 1 thread and on every core)
# and prints wall-time ratios to etcdctl, etcdbrctl's peak RSS and the stored size.
# usage: scripts/bench-full-snapshot.sh [SIZE_MIB] [RUNS]
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE_MIB=${1:-600}
RUNS=${2:-2}
for p in etcd-server etcd-client protobuf-compiler time; do
  dpkg -s "$p" >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq etcd-server etcd-client protobuf-compiler time >/dev/null; break; }
done
cargo build --release --locked --bin etcdbrctl --example etcd_fill 2>&1 | tail -1
BIN=$PWD/target/release/etcdbrctl
W=$(mktemp -d /tmp/etcdbr-bench.XXXXXX)
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
C=$(port); P=$(port); EP=http://127.0.0.1:$C
env -u ETCD_NAME etcd --name b --data-dir "$W/etcd" --listen-client-urls "$EP" --advertise-client-urls "$EP" \
  --listen-peer-urls "http://127.0.0.1:$P" --initial-advertise-peer-urls "http://127.0.0.1:$P" \
  --initial-cluster "b=http://127.0.0.1:$P" --quota-backend-bytes 8589934592 >"$W/etcd.log" 2>&1 &
ETCD_PID=$!
trap 'kill $ETCD_PID 2>/dev/null || true; wait $ETCD_PID 2>/dev/null || true; rm -rf "$W"' EXIT
for _ in $(seq 1 100); do etcdctl --endpoints "$EP" endpoint health >/dev/null 2>&1 && break; sleep 0.2; done
target/release/examples/etcd_fill --endpoint "$EP" --mib "$SIZE_MIB"
DB=$(etcdctl --endpoints "$EP" endpoint status -w json | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["Status"]["dbSize"])')
echo "etcd $(etcd --version | head -1 | awk '{print $3}'), db size $((DB / 1048576)) MiB, best of $RUNS runs"

# prints "seconds maxrss_kib" of the best (fastest) run
best() {
  local b_t="" b_m=""
  for _ in $(seq 1 "$RUNS"); do
    rm -rf "$W/out" && mkdir -p "$W/out"
    /usr/bin/time -f "%e %M" -o "$W/time" "$@" >/dev/null 2>"$W/err" || { cat "$W/err" >&2; exit 1; }
    read -r t m <"$W/time"
    if [ -z "$b_t" ] || python3 -c "import sys; sys.exit(0 if $t < $b_t else 1)"; then b_t=$t; b_m=$m; fi
  done
  echo "$b_t $b_m"
}
read -r T0 M0 < <(best env -u ETCDCTL_API etcdctl --endpoints "$EP" snapshot save "$W/out/snap.db")
printf '%-28s %8s %8s %12s\n' "command" "seconds" "ratio" "peak RSS"
printf '%-28s %8.2f %8s %9d MiB\n' "etcdctl snapshot save" "$T0" "1.00" $((M0 / 1024))
# gzip and zlib at the default level on 1 thread and on every core, then at level 1
for run in none zstd "gzip 1" "gzip 0" "zlib 1" "zlib 0" "gzip 1 1" "gzip 0 1" "zlib 1 1" "zlib 0 1"; do
  read -r pol threads level <<<"$run"
  threads=${threads:-0} level=${level:-6}
  if [ "$pol" = none ]; then flags=(--compress-snapshots=false); else flags=(--compression-policy "$pol" --compression-threads "$threads" --compression-level "$level"); fi
  label="$pol"
  case $pol in gzip|zlib) label="$pol L$level, ${threads/#0/all} thr";; esac
  read -r T M < <(best "$BIN" snapshot save --endpoints "$EP" --storage-provider Local --store-container "$W/out" "${flags[@]}")
  SIZE=$(find "$W/out" -type f -name 'Full-*' -path '*/v2/*' -printf '%s\n' | tail -1)
  printf '%-28s %8.2f %8.2f %9d MiB  %6d MiB stored\n' "etcdbrctl save ($label)" "$T" "$(python3 -c "print($T/$T0)")" $((M / 1024)) $((SIZE / 1048576))
done
