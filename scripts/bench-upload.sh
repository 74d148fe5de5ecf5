#!/usr/bin/env bash
# Upload benchmark (cloud issue, "Performance"): a ~500 MB bundle uploaded to a local moto
# emulator on 127.0.0.1 with --concurrency 1 and with the default, side by side in one run; then
# the same image bundled and uploaded in two steps vs streamed by `bundle-image --upload`.
# Usage: scripts/bench-upload.sh [IMAGE_MIB]   (default 500)
set -euo pipefail
cd "$(dirname "$0")/.."
mib=${1:-500}

scripts/install-deps.sh
cargo build --locked --release --quiet
bin=$PWD/target/release/amibundle

. scripts/lib-emulator.sh
start_emulator bench-upload
cloud=(--endpoint-url "$endpoint" --path-style --region us-east-1)

echo "== making a ${mib} MiB bundle of incompressible data"
head -c $(( mib * 1024 * 1024 )) /dev/urandom > "$work/random.img"
openssl req -x509 -newkey rsa:1024 -nodes -subj "/CN=bench stand-in" -days 1 \
  -keyout "$work/ec2-key.pem" -out "$work/ec2-cert.pem" 2>/dev/null
mkdir "$work/bundle"
"$bin" -q bundle-image -i "$work/random.img" -u 123456789012 -d "$work/bundle" --compression-level 1 \
  --ec2cert "$work/ec2-cert.pem" --unpinned-ec2cert > /dev/null
manifest=$work/bundle/random.img.manifest.xml
bytes=$(du -cb "$work"/bundle/random.img.part.* | tail -n1 | cut -f1)
echo "bundle: $bytes bytes in $(ls "$work"/bundle/random.img.part.* | wc -l) parts"

declare -A secs
for c in 1 8; do
  echo "== upload with --concurrency $c"
  secs[$c]=$("$bin" -q upload -m "$manifest" -b "bench-upload/c$c" --concurrency "$c" --no-resume "${cloud[@]}" --json |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["seconds"])')
done

# A second reference: a plain concurrent client (boto3, which moto depends on) putting the same
# part files with 1 and 8 threads. If it scales no better, the emulator on this machine is the
# ceiling, not amibundle.
python_bin=$(dirname "$moto_server")/python
declare -A ref
for c in 1 8; do
  ref[$c]=$("$python_bin" - "$endpoint" "$c" "$work"/bundle/random.img.part.* <<'PY'
import sys, time, boto3
from concurrent.futures import ThreadPoolExecutor
endpoint, conc, files = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                  config=boto3.session.Config(max_pool_connections=conc + 2))
bucket = f"bench-ref-{conc}"
s3.create_bucket(Bucket=bucket)
def put(path):
    with open(path, "rb") as f:
        s3.put_object(Bucket=bucket, Key=path.rsplit("/", 1)[1], Body=f.read(), ACL="aws-exec-read")
start = time.monotonic()
with ThreadPoolExecutor(conc) as pool:
    list(pool.map(put, files))
print(time.monotonic() - start)
PY
)
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
echo "== results ($(nproc) cores, moto $("$moto_server" --version 2>/dev/null || echo 5.2.5) on 127.0.0.1)"
for c in 1 8; do
  python3 -c "print(f'--concurrency $c: {${secs[$c]}:.2f} s, {$bytes/${secs[$c]}/1e6:.1f} MB/s')"
done
python3 -c "print(f'speed-up, default (8) vs 1: {${secs[1]}/${secs[8]}:.2f}x (target >= 4)')"
for c in 1 8; do
  python3 -c "print(f'reference boto3 client, {$c} thread(s): {${ref[$c]}:.2f} s, {$bytes/${ref[$c]}/1e6:.1f} MB/s')"
done
python3 -c "print(f'reference speed-up, 8 vs 1 threads: {${ref[1]}/${ref[8]}:.2f}x')"
python3 -c "print(f'bundle-image -d + upload: {$two_step:.2f} s; bundle-image --upload (streaming): {$streamed:.2f} s; {$two_step/$streamed:.2f}x')"
