#!/usr/bin/env bash
# save benchmark (issue "save, copy, drop-in", Performance; issue 14 §2): `amibundle save` of a
# ~1.5 GB tree, with --concurrency 1 and with the default, vs the classic sequence (rsync into a
# loop-mounted image; tar | sha1 | gzip -9 | openssl | split to parts; the parts uploaded by a
# plain boto3 client one at a time, as ec2-upload-bundle does, and with the default's number of
# threads), end to end, against the same local moto emulator behind the same network model
# (tools/netproxy, docs/benchmarks.md) in one run.
# Usage (root): scripts/bench-save.sh [--latency-ms MS] [--conn-mb-s MB_S] [--total-mb-s MB_S]
#                 [--no-net-model] [--no-classic] [DIR...]
#   default DIRs: /usr/share /usr/lib/x86_64-linux-gnu /usr/bin /usr/include (about 1.5 GB here),
#   gathered read-only into one tree with bind mounts inside a private mount namespace. The
#   model's defaults are in scripts/lib-emulator.sh. AMIBUNDLE_BIN=path uses that amibundle
#   binary instead of building the release one. --no-classic times amibundle save alone.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "bench-save.sh needs root (loop devices, mounts)" >&2; exit 1; }
if [ -z "${AMIBUNDLE_BENCH_NS:-}" ]; then
  exec env AMIBUNDLE_BENCH_NS=1 unshare -m --propagation private "$0" "$@"
fi
. scripts/lib-emulator.sh
parse_net_flags "$@"
set -- "${net_rest[@]+"${net_rest[@]}"}"
classic=1
if [ "${1:-}" = --no-classic ]; then classic=0; shift; fi
if [ $# -gt 0 ]; then srcs=("$@"); else
  srcs=(/usr/share /usr/lib/x86_64-linux-gnu /usr/bin /usr/include)
fi

scripts/install-deps.sh
command -v rsync > /dev/null || apt-get install -y -q rsync > /dev/null
if [ -n "${AMIBUNDLE_BIN:-}" ]; then bin=$(realpath "$AMIBUNDLE_BIN"); else
  cargo build --locked --release --quiet
  bin=$PWD/target/release/amibundle
fi

start_emulator bench-save
start_netmodel
dc=$(default_concurrency save)
echo "== $(net_model_desc); amibundle's default concurrency: $dc"
cloud=(--endpoint-url "$endpoint" --path-style --region us-east-1)
python_bin=$(dirname "$moto_server")/python

binds=()
cleanup_binds() {
  umount "$work/mnt" 2>/dev/null || true
  for d in "${binds[@]}"; do umount "$d" 2>/dev/null || true; done
}
# lib-emulator's trap removes $work: unmount first, and never delete through a mount.
trap 'cleanup_binds; if grep -qF " $work/" /proc/self/mountinfo; then echo "not removing $work" >&2; else stop_emulator; rm -rf "$work"; fi' EXIT
tree=$work/tree
mkdir "$tree" "$work/mnt" "$work/dest"
for s in "${srcs[@]}"; do
  d=$tree/$(echo "${s#/}" | tr / _)
  mkdir "$d"
  mount --bind -o ro "$s" "$d"
  binds+=("$d")
  mount -o remount,bind,ro "$d"
done
echo "== tree: ${srcs[*]}: $(du -sb --apparent-size "$tree" | cut -f1) bytes; warming the page cache"
tar -cf - "$tree" 2>/dev/null | cat > /dev/null
openssl req -x509 -newkey rsa:1024 -nodes -subj "/CN=bench stand-in" -days 1 \
  -keyout "$work/ec2-key.pem" -out "$work/ec2-cert.pem" 2>/dev/null
now() { python3 -c 'import time; print(time.monotonic())'; }

declare -A save
for c in 1 "$dc"; do
  echo "== amibundle save --concurrency $c (image, bundle, upload, register in one pass)"
  t0=$(now)
  json=$("$bin" -q save -v "$tree" --all --no-inherit -d "$work/dest" -p "bench-save-c$c" -u 123456789012 \
    --concurrency "$c" --ec2cert "$work/ec2-cert.pem" --unpinned-ec2cert "${cloud[@]}" --json)
  t1=$(now)
  save[$c]=$(python3 -c "print($t1 - $t0)")
  echo "$json" | python3 -c 'import json,sys; j=json.load(sys.stdin); print("  ami", j["ami_id"], "|", j["part_count"], "parts,", j["bundled_size"], "bytes | snapshot", round(j["snapshot_seconds"],2), "s, bundle+upload", round(j["seconds"],2), "s, register", round(j["register_seconds"] or 0,2), "s")'
done
size=$(echo "$json" | python3 -c 'import json,sys; print(json.load(sys.stdin)["image_size"])')
if [ "$classic" = 0 ]; then
  echo
  echo "== results ($(nproc) cores, moto on 127.0.0.1, page cache warm; $(net_model_desc))"
  python3 -c "print(f'amibundle save --concurrency 1: {${save[1]}:.2f} s; default ($dc): {${save[$dc]}:.2f} s; {${save[1]}/${save[$dc]}:.2f}x')"
  exit 0
fi

echo "== classic: rsync into a loop-mounted image (what ec2-bundle-vol runs)"
t0=$(now)
# A quarter more room than amibundle's image: rsync without -H copies hard links apart, and
# mkfs.ext4's defaults keep more for inodes than amibundle's matched filesystem.
truncate -s $(( size / 4 * 5 )) "$work/classic.img"
mkfs.ext4 -q -F "$work/classic.img"
mount -o loop "$work/classic.img" "$work/mnt"
rsync -rlpgoD -t -S -l -X "$tree/" "$work/mnt/"
umount "$work/mnt"
t1=$(now)
echo "== classic: tar | sha1sum | gzip -9 | openssl enc | split -b 10m"
key=$(openssl rand -hex 16); iv=$(openssl rand -hex 16)
mkdir "$work/parts"
tar -c -S --owner 0 --group 0 -C "$work" -f - classic.img | tee >(sha1sum > "$work/parts.sha1") |
  gzip -9 | openssl enc -e -aes-128-cbc -K "$key" -iv "$iv" | split -b 10m - "$work/parts/classic.part."
rm "$work/classic.img"
t2=$(now)
echo "== classic: the parts uploaded by a plain boto3 client, one at a time (as ec2-upload-bundle does) and $dc at once"
cat > "$work/classic-upload.py" <<'PY'
import sys, time, boto3
from concurrent.futures import ThreadPoolExecutor
endpoint, bucket, conc, files = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4:]
s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                  config=boto3.session.Config(max_pool_connections=conc + 2))
s3.create_bucket(Bucket=bucket)
def put(path):
    with open(path, "rb") as f:
        s3.put_object(Bucket=bucket, Key=path.rsplit("/", 1)[1], Body=f.read(), ACL="aws-exec-read")
start = time.monotonic()
with ThreadPoolExecutor(conc) as pool:
    list(pool.map(put, files))
print(time.monotonic() - start)
PY
up1=$("$python_bin" "$work/classic-upload.py" "$endpoint" bench-classic-c1 1 "$work"/parts/classic.part.*)
updc=$("$python_bin" "$work/classic-upload.py" "$endpoint" "bench-classic-c$dc" "$dc" "$work"/parts/classic.part.*)
read -r rs bd total < <(python3 -c "print($t1-$t0, $t2-$t1, $t2-$t0+$up1)")

echo
echo "== results ($(nproc) cores, moto on 127.0.0.1, page cache warm)"
echo "== $(net_model_desc)"
printf 'amibundle save --concurrency 1:     %.2f s\n' "${save[1]}"
printf 'amibundle save (default, %s):        %.2f s\n' "$dc" "${save[$dc]}"
python3 -c "print(f'amibundle save, default vs concurrency 1: {${save[1]}/${save[$dc]}:.2f}x')"
printf 'classic sequence:                   %.2f s (rsync %.2f + gzip -9 pipeline %.2f + boto3 upload one at a time %.2f)\n' "$total" "$rs" "$bd" "$up1"
python3 -c "print(f'classic upload by boto3, {$dc} threads vs 1: {$updc:.2f} s vs {$up1:.2f} s, {$up1/$updc:.2f}x')"
python3 -c "print(f'end to end: amibundle save (default) is {$total/${save[$dc]}:.2f}x the classic sequence (target >= 6)')"
