#!/usr/bin/env bash
# Benchmark of a full snapshot uploaded to S3: fills a fresh etcd 3.4.23 (loopback, temp dir)
# with SIZE_MIB MiB (default 900), then in the same run, best of RUNS, times
#   etcdctl snapshot save                  (the baseline)
#   etcdbrctl snapshot save to Local       (gzip, level 1, every core: the compression alone)
#   etcdbrctl snapshot save to S3          (the same, uploaded as it is compressed)
# against s3s-fs 0.14.1 (it checks request signatures and stores on disk; installed by
# scripts/install-test-deps.sh; not moto, whose ~11 MB/s would measure moto). Prints the ratios
# (S3 to Local: the upload adds nothing when parts go up while the next are compressed) and
# peak RSS. usage: [COMPRESSION=gzip|zlib|zstd|none] scripts/bench-s3-upload.sh [SIZE_MIB] [RUNS]
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE_MIB=${1:-900}
RUNS=${2:-2}
COMPRESSION=${COMPRESSION:-gzip}
TOOLS=${ETCDBR_TOOLS_DIR:-$HOME/.cache/etcdbr-tools}
[ -x "$TOOLS/s3s/bin/s3s-fs" ] || scripts/install-test-deps.sh
for p in etcd-server etcd-client protobuf-compiler time; do
  dpkg -s "$p" >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq etcd-server etcd-client protobuf-compiler time >/dev/null; break; }
done
cargo build --release --locked --bin etcdbrctl --example etcd_fill 2>&1 | tail -1
BIN=$PWD/target/release/etcdbrctl
W=$(mktemp -d /tmp/etcdbr-bench-s3.XXXXXX)
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
C=$(port); P=$(port); S=$(port); EP=http://127.0.0.1:$C
env -u ETCD_NAME etcd --name b --data-dir "$W/etcd" --listen-client-urls "$EP" --advertise-client-urls "$EP" \
  --listen-peer-urls "http://127.0.0.1:$P" --initial-advertise-peer-urls "http://127.0.0.1:$P" \
  --initial-cluster "b=http://127.0.0.1:$P" --quota-backend-bytes 8589934592 >"$W/etcd.log" 2>&1 &
ETCD_PID=$!
mkdir -p "$W/s3/bench"
"$TOOLS/s3s/bin/s3s-fs" --host 127.0.0.1 --port "$S" --access-key bench --secret-key bench-secret "$W/s3" >"$W/s3s.log" 2>&1 &
S3_PID=$!
trap 'kill $ETCD_PID $S3_PID 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$W"' EXIT
printf '{"region":"us-east-1","accessKeyID":"bench","secretAccessKey":"bench-secret"}' >"$W/aws.json"
for _ in $(seq 1 100); do etcdctl --endpoints "$EP" endpoint health >/dev/null 2>&1 && break; sleep 0.2; done
target/release/examples/etcd_fill --endpoint "$EP" --mib "$SIZE_MIB"
DB=$(etcdctl --endpoints "$EP" endpoint status -w json | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["Status"]["dbSize"])')
echo "etcd $(etcd --version | head -1 | awk '{print $3}'), db size $((DB / 1048576)) MiB, $COMPRESSION, best of $RUNS runs, s3s-fs on loopback"
if [ "$COMPRESSION" = none ]; then CFLAGS=(--compress-snapshots=false); else CFLAGS=(--compression-policy "$COMPRESSION" --compression-level 1); fi

# prints "seconds maxrss_kib" of the fastest run; `clean` runs before each
best() {
  local clean=$1 b_t="" b_m=""; shift
  for _ in $(seq 1 "$RUNS"); do
    $clean; sync
    /usr/bin/time -f "%e %M" -o "$W/time" "$@" >/dev/null 2>"$W/err" || { cat "$W/err" >&2; exit 1; }
    read -r t m <"$W/time"
    if [ -z "$b_t" ] || python3 -c "import sys; sys.exit(0 if $t < $b_t else 1)"; then b_t=$t; b_m=$m; fi
  done
  echo "$b_t $b_m"
}
clean_local() { rm -rf "$W/out"; mkdir -p "$W/out"; }
clean_s3() { rm -rf "$W/s3/bench/v2" "$W/s3/bench/.upload"* 2>/dev/null || true; }
read -r T0 M0 < <(best clean_local env -u ETCDCTL_API etcdctl --endpoints "$EP" snapshot save "$W/out/snap.db")
read -r T1 M1 < <(best clean_local "$BIN" snapshot save --endpoints "$EP" --storage-provider Local --store-container "$W/out" "${CFLAGS[@]}")
read -r T2 M2 < <(best clean_s3 env AWS_APPLICATION_CREDENTIALS_JSON="$W/aws.json" "$BIN" snapshot save --endpoints "$EP" \
  --storage-provider S3 --store-container bench --store-endpoint-override "http://127.0.0.1:$S" "${CFLAGS[@]}")
# the upload alone: the Local store's compressed full copied to the bucket (nothing compressed)
clean_local; "$BIN" snapshot save --endpoints "$EP" --storage-provider Local --store-container "$W/out" "${CFLAGS[@]}" >/dev/null 2>&1
read -r T3 _ < <(best clean_s3 env AWS_APPLICATION_CREDENTIALS_JSON="$W/aws.json" "$BIN" copy --source-storage-provider Local \
  --source-store-container "$W/out" --storage-provider S3 --store-container bench --store-endpoint-override "http://127.0.0.1:$S")
cpu() { awk '{print $14 + $15}' "/proc/$S3_PID/stat"; }
clean_s3; sync; C0=$(cpu)
env AWS_APPLICATION_CREDENTIALS_JSON="$W/aws.json" "$BIN" snapshot save --endpoints "$EP" --storage-provider S3 \
  --store-container bench --store-endpoint-override "http://127.0.0.1:$S" "${CFLAGS[@]}" >/dev/null 2>&1
SERVER_CPU=$(python3 -c "print(f'{($(cpu) - $C0) / $(getconf CLK_TCK):.1f}')")
STORED=$(find "$W/s3/bench" -type f -name 'Full-*' -path '*/v2/*' -printf '%s\n' | tail -1)
[ -n "$STORED" ] || { echo "no full snapshot in the S3 bucket"; ls -R "$W/s3"; exit 1; }
printf '%-34s %8s %8s %12s\n' "command" "seconds" "ratio" "peak RSS"
printf '%-34s %8.2f %8s %9d MiB\n' "etcdctl snapshot save" "$T0" "1.00" $((M0 / 1024))
printf '%-34s %8.2f %8.2f %9d MiB\n' "etcdbrctl save to Local ($COMPRESSION)" "$T1" "$(python3 -c "print($T1/$T0)")" $((M1 / 1024))
printf '%-34s %8.2f %8.2f %9d MiB  %d MiB uploaded\n' "etcdbrctl save to S3 ($COMPRESSION)" "$T2" "$(python3 -c "print($T2/$T0)")" $((M2 / 1024)) $((STORED / 1048576))
printf '%-34s %8.2f\n' "the upload alone (copy Local -> S3)" "$T3"
python3 -c "print(f'S3 / Local: {$T2/$T1:.2f}x (target 1.0x); compressing then uploading one after the other: {($T1+$T3)/$T1:.2f}x')"
echo "s3s-fs used $SERVER_CPU s of CPU for one save, on the same $(nproc) cores as etcd and etcdbrctl"

