#!/usr/bin/env bash
# save benchmark (issue "save, copy, drop-in", Performance): `amibundle save` of a ~1.5 GB tree vs
# the classic sequence (rsync into a loop-mounted image; tar | sha1 | gzip -9 | openssl | split to
# parts; the parts uploaded one at a time), end to end, against the same local moto emulator in
# one run.
# Usage (root): scripts/bench-save.sh [DIR...]
#   default DIRs: /usr/share /usr/lib/x86_64-linux-gnu /usr/bin /usr/include (about 1.5 GB here),
#   gathered read-only into one tree with bind mounts inside a private mount namespace.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "bench-save.sh needs root (loop devices, mounts)" >&2; exit 1; }
if [ -z "${AMIBUNDLE_BENCH_NS:-}" ]; then
  exec env AMIBUNDLE_BENCH_NS=1 unshare -m --propagation private "$0" "$@"
fi
if [ $# -gt 0 ]; then srcs=("$@"); else
  srcs=(/usr/share /usr/lib/x86_64-linux-gnu /usr/bin /usr/include)
fi

scripts/install-deps.sh
command -v rsync > /dev/null || apt-get install -y -q rsync > /dev/null
cargo build --locked --release --quiet
bin=$PWD/target/release/amibundle

. scripts/lib-emulator.sh
start_emulator bench-save
cloud=(--endpoint-url "$endpoint" --path-style --region us-east-1)
python_bin=$(dirname "$moto_server")/python

binds=()
cleanup_binds() {
  umount "$work/mnt" 2>/dev/null || true
  for d in "${binds[@]}"; do umount "$d" 2>/dev/null || true; done
}
# lib-emulator's trap removes $work: unmount first, and never delete through a mount.
trap 'cleanup_binds; if grep -qF " $work/" /proc/self/mountinfo; then echo "not removing $work" >&2; else [ -n "$moto_pid" ] && kill "$moto_pid" 2>/dev/null; rm -rf "$work"; fi' EXIT
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

echo "== amibundle save (image, bundle, upload, register in one pass)"
t0=$(now)
json=$("$bin" -q save -v "$tree" --all --no-inherit -d "$work/dest" -p bench-save -u 123456789012 \
  --ec2cert "$work/ec2-cert.pem" --unpinned-ec2cert "${cloud[@]}" --json)
t1=$(now)
save=$(python3 -c "print($t1 - $t0)")
echo "$json" | python3 -c 'import json,sys; j=json.load(sys.stdin); print("  ami", j["ami_id"], "|", j["part_count"], "parts,", j["bundled_size"], "bytes | snapshot", round(j["snapshot_seconds"],2), "s, bundle+upload", round(j["seconds"],2), "s, register", round(j["register_seconds"] or 0,2), "s")'
size=$(echo "$json" | python3 -c 'import json,sys; print(json.load(sys.stdin)["image_size"])')

echo "== classic: rsync into a loop-mounted image (what ec2-bundle-vol runs)"
t0=$(now)
truncate -s "$size" "$work/classic.img"
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
echo "== classic: the parts uploaded one at a time (a plain boto3 client, as ec2-upload-bundle does)"
"$python_bin" - "$endpoint" "$work"/parts/classic.part.* <<'PY'
import sys, boto3
endpoint, files = sys.argv[1], sys.argv[2:]
s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
s3.create_bucket(Bucket="bench-classic")
for path in files:
    with open(path, "rb") as f:
        s3.put_object(Bucket="bench-classic", Key=path.rsplit("/", 1)[1], Body=f.read(), ACL="aws-exec-read")
PY
t3=$(now)
read -r rs bd up total < <(python3 -c "print($t1-$t0, $t2-$t1, $t3-$t2, $t3-$t0)")

echo
echo "== results ($(nproc) cores, moto on 127.0.0.1, page cache warm)"
printf 'amibundle save:                     %.2f s\n' "$save"
printf 'classic sequence:                   %.2f s (rsync %.2f + gzip -9 pipeline %.2f + upload %.2f)\n' "$total" "$rs" "$bd" "$up"
python3 -c "print(f'end to end: amibundle save is {$total/$save:.2f}x the classic sequence (target >= 6)')"
