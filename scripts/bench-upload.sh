#!/usr/bin/env bash
# Transfer benchmark (issue 14 §2): a ~500 MB bundle moved between amibundle and a local moto
# emulator through a network model that behaves like S3 (time to first byte, a bandwidth cap per
# connection and one over all connections: tools/netproxy, docs/benchmarks.md), with
# --concurrency 1 and with the default, and a plain boto3 client doing the same under the same
# model in the same run: upload, download, and download --unbundle. Then the same image bundled
# and uploaded in two steps vs streamed by `bundle-image --upload`.
# Usage: scripts/bench-upload.sh [IMAGE_MIB] [--latency-ms MS] [--conn-mb-s MB_S]
#          [--total-mb-s MB_S] [--no-net-model] [--sweep "1 4 8 12 16"]
#   IMAGE_MIB defaults to 500; the model's defaults are in scripts/lib-emulator.sh (also set by
#   NET_LATENCY_MS, NET_CONN_MB_S, NET_TOTAL_MB_S). --sweep also times amibundle's upload and
#   download at each of those concurrencies (how the default was chosen).
#   AMIBUNDLE_BIN=path uses that amibundle binary instead of building the release one.
set -euo pipefail
cd "$(dirname "$0")/.."

. scripts/lib-emulator.sh
parse_net_flags "$@"
set -- "${net_rest[@]+"${net_rest[@]}"}"
sweep=
mib=500
while [ $# -gt 0 ]; do
  case $1 in
    --sweep) sweep=$2; shift 2 ;;
    [0-9]*) mib=$1; shift ;;
    *) echo "usage: $0 [IMAGE_MIB] [--latency-ms MS] [--conn-mb-s MB_S] [--total-mb-s MB_S] [--no-net-model] [--sweep LIST]" >&2; exit 2 ;;
  esac
done

scripts/install-deps.sh
if [ -n "${AMIBUNDLE_BIN:-}" ]; then bin=$(realpath "$AMIBUNDLE_BIN"); else
  cargo build --locked --release --quiet
  bin=$PWD/target/release/amibundle
fi

start_emulator bench-upload
start_netmodel
cloud=(--endpoint-url "$endpoint" --path-style --region us-east-1)
python_bin=$(dirname "$moto_server")/python
dc=$(default_concurrency upload)
[ "$(default_concurrency download)" = "$dc" ] || { echo "upload and download concurrency defaults differ" >&2; exit 1; }
echo "== $(net_model_desc); amibundle's default concurrency: $dc"

echo "== making a ${mib} MiB bundle of incompressible data"
head -c $(( mib * 1024 * 1024 )) /dev/urandom > "$work/random.img"
openssl req -x509 -newkey rsa:1024 -nodes -subj "/CN=bench stand-in" -days 1 \
  -keyout "$work/ec2-key.pem" -out "$work/ec2-cert.pem" 2>/dev/null
mkdir "$work/bundle"
"$bin" -q bundle-image -i "$work/random.img" -u 123456789012 -d "$work/bundle" --compression-level 1 \
  --ec2cert "$work/ec2-cert.pem" --unpinned-ec2cert > /dev/null
manifest=$work/bundle/random.img.manifest.xml
parts=("$work"/bundle/random.img.part.*)
bytes=$(du -cb "${parts[@]}" | tail -n1 | cut -f1)
echo "bundle: $bytes bytes in ${#parts[@]} parts"

seconds() { python3 -c 'import json,sys; print(json.load(sys.stdin)["seconds"])'; }
# amibundle: upload to bench-upload/c$1 with --concurrency $2 (default $1)
up() { "$bin" -q upload -m "$manifest" -b "bench-upload/c$1" --concurrency "${2:-$1}" --no-resume "${cloud[@]}" --json | seconds; }
# amibundle: download bench-upload/c$dc with --concurrency $1 (parts to disk, or --unbundle)
down() {
  local out=$work/down-$1-$2
  mkdir "$out"
  if [ "$2" = unbundle ]; then
    "$bin" -q download -b "bench-upload/c$dc" -m random.img.manifest.xml --unbundle -d "$out" \
      --concurrency "$1" "${cloud[@]}" --json | seconds
  else
    "$bin" -q download -b "bench-upload/c$dc" -m random.img.manifest.xml -d "$out" \
      --concurrency "$1" "${cloud[@]}" --json | seconds
  fi
  rm -rf "$out"
}

# The reference: a plain concurrent client (boto3, which moto depends on) putting the same part
# files, or getting them back into files, with N threads (one connection each), as
# ec2-upload-bundle and the AWS CLI do. Timed around the transfers only, like amibundle's
# `seconds`.
cat > "$work/ref.py" <<'PY'
import os, sys, time, boto3
from concurrent.futures import ThreadPoolExecutor
endpoint, mode, conc, bucket, prefix, out = sys.argv[1:7]
files, conc = sys.argv[7:], int(conc)
s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                  config=boto3.session.Config(max_pool_connections=conc + 2))
if mode == "put":
    try:
        s3.create_bucket(Bucket=bucket)
    except s3.exceptions.BucketAlreadyOwnedByYou:
        pass
def put(path):
    with open(path, "rb") as f:
        s3.put_object(Bucket=bucket, Key=prefix + os.path.basename(path), Body=f.read(),
                      ACL="aws-exec-read")
def get(path):
    body = s3.get_object(Bucket=bucket, Key=prefix + os.path.basename(path))["Body"]
    with open(os.path.join(out, os.path.basename(path)), "wb") as f:
        for chunk in body.iter_chunks(1 << 20):
            f.write(chunk)
start = time.monotonic()
with ThreadPoolExecutor(conc) as pool:
    list(pool.map(put if mode == "put" else get, files))
print(time.monotonic() - start)
PY
ref() {
  local out=$work/ref-out
  mkdir -p "$out"
  "$python_bin" "$work/ref.py" "$endpoint" "$1" "$2" bench-ref "c$2/" "$out" "${parts[@]}"
  rm -rf "$out"
}

declare -A t
for c in 1 "$dc"; do
  echo "== concurrency $c: amibundle upload, boto3 put"
  t[up,$c]=$(up "$c")
  t[refup,$c]=$(ref put "$c")
done
for c in 1 "$dc"; do
  echo "== concurrency $c: amibundle download, download --unbundle, boto3 get"
  t[down,$c]=$(down "$c" parts)
  t[unb,$c]=$(down "$c" unbundle)
  t[refdown,$c]=$(ref get "$c")
done
for c in $sweep; do
  echo "== sweep: concurrency $c"
  t[sup,$c]=$(up "sweep$c" "$c")
  t[sdown,$c]=$(down "$c" parts)
done

echo "== bundle to disk then upload (two steps) vs bundle-image --upload (one streaming pass)"
now() { python3 -c 'import time; print(time.monotonic())'; }
mkdir "$work/two-step"
t0=$(now)
"$bin" -q bundle-image -i "$work/random.img" -u 123456789012 -d "$work/two-step" --compression-level 1 \
  --ec2cert "$work/ec2-cert.pem" --unpinned-ec2cert > /dev/null
"$bin" -q upload -m "$work/two-step/random.img.manifest.xml" -b bench-upload/two-step --no-resume "${cloud[@]}" > /dev/null
t1=$(now)
"$bin" -q bundle-image -i "$work/random.img" -u 123456789012 --compression-level 1 \
  --ec2cert "$work/ec2-cert.pem" --unpinned-ec2cert --upload s3://bench-upload/streamed "${cloud[@]}" > /dev/null
t2=$(now)
two_step=$(python3 -c "print($t1 - $t0)")
streamed=$(python3 -c "print($t2 - $t1)")
rm -rf "$work/two-step" "$work/random.img"

echo
echo "== results ($(nproc) cores, moto $("$moto_server" --version 2>/dev/null || echo 5.2.5) on 127.0.0.1, $bytes bytes in ${#parts[@]} parts)"
echo "== $(net_model_desc)"
row() { # label, seconds at 1, seconds at default
  python3 -c "
a, b = $2, $3
print(f'| $1 | {a:.2f} s ({$bytes/a/1e6:.1f} MB/s) | {b:.2f} s ({$bytes/b/1e6:.1f} MB/s) | {a/b:.2f}x |')"
}
echo "| run | concurrency 1 | concurrency $dc (default) | speed-up |"
echo "| --- | --- | --- | --- |"
row "amibundle upload" "${t[up,1]}" "${t[up,$dc]}"
row "boto3 put_object, 1 vs $dc threads" "${t[refup,1]}" "${t[refup,$dc]}"
row "amibundle download" "${t[down,1]}" "${t[down,$dc]}"
row "amibundle download --unbundle" "${t[unb,1]}" "${t[unb,$dc]}"
row "boto3 get_object, 1 vs $dc threads" "${t[refdown,1]}" "${t[refdown,$dc]}"
python3 -c "print(f'amibundle vs boto3 at the default: upload {${t[refup,$dc]}/${t[up,$dc]}:.2f}x, download {${t[refdown,$dc]}/${t[down,$dc]}:.2f}x, download --unbundle {${t[refdown,$dc]}/${t[unb,$dc]}:.2f}x (boto3 time / amibundle time; target for amibundle: >= 4x over concurrency 1)')"
if [ -n "$sweep" ]; then
  echo
  echo "| concurrency | upload | download |"
  echo "| --- | --- | --- |"
  for c in $sweep; do
    python3 -c "print(f'| $c | {${t[sup,$c]}:.2f} s ({$bytes/${t[sup,$c]}/1e6:.1f} MB/s) | {${t[sdown,$c]}:.2f} s ({$bytes/${t[sdown,$c]}/1e6:.1f} MB/s) |')"
  done
fi
echo
python3 -c "print(f'bundle-image -d + upload: {$two_step:.2f} s; bundle-image --upload (streaming): {$streamed:.2f} s; {$two_step/$streamed:.2f}x')"
