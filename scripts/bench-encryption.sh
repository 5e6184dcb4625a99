#!/usr/bin/env bash
# Benchmark of encryption at rest: fills a fresh etcd 3.5.1 (loopback, temp dir) with SIZE_MIB
# MiB of values (default 600: a db > 512 MiB), then in the same run, for compression off and
# gzip (the default), times best of RUNS, plain and encrypted (age, one X25519 recipient)
# alternating:
#   etcdbrctl snapshot save             (etcdctl snapshot save shown as the baseline)
#   etcdbrctl restore of that full      (etcd's restore tool included, as in bench-restore.sh)
# and prints seconds, the encrypted/plain ratio (target <= 1.1), ratios to etcdctl and peak RSS.
# usage: scripts/bench-encryption.sh [SIZE_MIB] [RUNS]
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE_MIB=${1:-600}
RUNS=${2:-2}
TOOLS=${ETCDBR_TOOLS_DIR:-$HOME/.cache/etcdbr-tools}
[ -x "$TOOLS/etcd-3.5.1/etcd" ] && command -v age-keygen >/dev/null && [ -x /usr/bin/time ] || scripts/install-test-deps.sh
ETCD=$TOOLS/etcd-3.5.1/etcd; CTL=$TOOLS/etcd-3.5.1/etcdctl; TOOL=$TOOLS/etcd-3.5.1/etcdutl
cargo build --release --locked --bin etcdbrctl --example etcd_fill 2>&1 | tail -1
BIN=$PWD/target/release/etcdbrctl
W=$(mktemp -d /tmp/etcdbr-bench-enc.XXXXXX)
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
C=$(port); P=$(port); EP=http://127.0.0.1:$C
env -u ETCD_NAME "$ETCD" --name b --data-dir "$W/etcd" --listen-client-urls "$EP" --advertise-client-urls "$EP" \
  --listen-peer-urls "http://127.0.0.1:$P" --initial-advertise-peer-urls "http://127.0.0.1:$P" \
  --initial-cluster "b=http://127.0.0.1:$P" --quota-backend-bytes 8589934592 >"$W/etcd.log" 2>&1 &
ETCD_PID=$!
trap 'kill $ETCD_PID 2>/dev/null || true; wait $ETCD_PID 2>/dev/null || true; rm -rf "$W"' EXIT
export ETCDCTL_API=3
for _ in $(seq 1 100); do "$CTL" --endpoints "$EP" endpoint health >/dev/null 2>&1 && break; sleep 0.2; done
target/release/examples/etcd_fill --endpoint "$EP" --mib "$SIZE_MIB"
age-keygen -o "$W/key.txt" 2>/dev/null
age-keygen -y "$W/key.txt" >"$W/recipients.txt"
DB=$("$CTL" --endpoints "$EP" endpoint status -w json | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["Status"]["dbSize"])')
echo "etcd 3.5.1, db size $((DB / 1048576)) MiB, best of $RUNS runs, plain and encrypted alternating"

# runs "$@" under /usr/bin/time; appends "seconds maxrss_kib" to file $1
timed() {
  local out=$1; shift
  sync
  /usr/bin/time -f "%e %M" -o "$W/time" "$@" >/dev/null 2>"$W/err" || { cat "$W/err" >&2; exit 1; }
  cat "$W/time" >>"$out"
}
# the fastest line of a file of "seconds rss" lines
best() { sort -n "$1" | head -1; }

rm -f "$W"/t.*
for _ in $(seq 1 "$RUNS"); do
  rm -f "$W/snap.db"; timed "$W/t.etcdctl" "$CTL" --endpoints "$EP" snapshot save "$W/snap.db"
done
for comp in none gzip; do
  if [ "$comp" = none ]; then CF=(--compress-snapshots=false); else CF=(--compression-policy gzip); fi
  for run in $(seq 1 "$RUNS"); do
    # alternate which goes first: the second of two large writes runs slower here (writeback)
    if [ $((run % 2)) = 1 ]; then order="plain enc"; else order="enc plain"; fi
    for kind in $order; do
      EF=(); [ "$kind" = enc ] && EF=(--encryption-recipients-file "$W/recipients.txt")
      rm -rf "$W/bk-$comp-$kind"
      timed "$W/t.save-$comp-$kind" "$BIN" snapshot save --endpoints "$EP" --store-container "$W/bk-$comp-$kind" "${CF[@]}" "${EF[@]}"
    done
    for kind in $order; do
      IF=(); [ "$kind" = enc ] && IF=(--encryption-identity-file "$W/key.txt")
      rm -rf "$W/restored" "$W/rtmp"
      timed "$W/t.restore-$comp-$kind" "$BIN" restore --store-container "$W/bk-$comp-$kind" --data-dir "$W/restored" \
        --name r --initial-cluster r=http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
        --restoration-temp-snapshots-dir "$W/rtmp" --etcd-binary "$ETCD" --etcd-restore-tool "$TOOL" "${IF[@]}"
    done
  done
  SIZE_P=$(find "$W/bk-$comp-plain/v2" -type f -name 'Full-*' -printf '%s\n' | head -1)
  SIZE_E=$(find "$W/bk-$comp-enc/v2" -type f -name 'Full-*.age' -printf '%s\n' | head -1)
  echo "$comp: stored full $((SIZE_P / 1048576)) MiB plain, $((SIZE_E / 1048576)) MiB encrypted (+$((SIZE_E - SIZE_P)) bytes)"
done
read -r T0 M0 < <(best "$W/t.etcdctl")
printf '%-40s %8s %9s %10s %10s\n' "command" "seconds" "enc/plain" "vs etcdctl" "peak RSS"
printf '%-40s %8.2f %9s %10s %7d MiB\n' "etcdctl snapshot save" "$T0" "" "1.00" $((M0 / 1024))
for step in save restore; do
  for comp in none gzip; do
    read -r TP MP < <(best "$W/t.$step-$comp-plain")
    read -r TE ME < <(best "$W/t.$step-$comp-enc")
    printf '%-40s %8.2f %9s %10.2f %7d MiB\n' "etcdbrctl $step ($comp, plain)" "$TP" "" "$(python3 -c "print($TP/$T0)")" $((MP / 1024))
    printf '%-40s %8.2f %9.2f %10.2f %7d MiB\n' "etcdbrctl $step ($comp, encrypted)" "$TE" "$(python3 -c "print($TE/$TP)")" "$(python3 -c "print($TE/$T0)")" $((ME / 1024))
  done
done
