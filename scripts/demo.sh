#!/usr/bin/env bash
# The main job, end to end, on this machine, with nothing but this repository and no AWS account:
#   a real ext4 image made from a directory of the machine (default /usr/share/doc)
#   → amibundle bundle-image → verify → upload to a local S3+EC2 emulator (moto, started here on
#   127.0.0.1) → register the AMI → download the bundle back → verify it → unbundle → compare.
# The bundle is encrypted for a throwaway stand-in EC2 certificate made here (the real ones are
# Amazon's and are never shipped with amibundle), so it is accepted with --unpinned-ec2cert.
# Nothing is sent anywhere but 127.0.0.1.
# Usage: scripts/demo.sh [SOURCE_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
src=${1:-/usr/share/doc}
[ -d "$src" ] || { echo "demo: $src is not a directory" >&2; exit 1; }

scripts/install-deps.sh
cargo build --locked --quiet
bin=$PWD/target/debug/amibundle

. scripts/lib-emulator.sh
echo "== starting the S3+EC2 emulator (moto) on 127.0.0.1"
start_emulator demo
cloud=(--endpoint-url "$endpoint" --path-style)
region=eu-west-1

used_kib=$(du -sk "$src" | cut -f1)
size_mib=$(( used_kib * 13 / 10 / 1024 + 64 ))
echo "== making a ${size_mib} MiB ext4 image from $src"
mkfs.ext4 -q -F -b 4096 -L demo -d "$src" "$work/demo.img" "${size_mib}M"

echo "== making a throwaway stand-in EC2 certificate"
openssl req -x509 -newkey rsa:1024 -nodes -subj "/CN=amibundle demo stand-in EC2 certificate" \
  -days 1 -keyout "$work/ec2-standin-key.pem" -out "$work/ec2-standin-cert.pem" 2>/dev/null

mkdir "$work/bundle" "$work/downloaded" "$work/restored"
echo "== amibundle bundle-image"
"$bin" bundle-image -i "$work/demo.img" -u 123456789012 -d "$work/bundle" \
  --ec2cert "$work/ec2-standin-cert.pem" --unpinned-ec2cert
manifest=$work/bundle/demo.img.manifest.xml
identity=$XDG_CONFIG_HOME/amibundle/identity

echo "== amibundle upload (bucket amibundle-123456789012-$region, created with ACLs enabled)"
location=$("$bin" upload -m "$manifest" --region "$region" "${cloud[@]}")
echo "$location"

echo "== amibundle register"
ami=$("$bin" register -m "$manifest" --region "$region" --name "amibundle demo" "${cloud[@]}")
echo "$ami"

echo "== amibundle download, then verify (signature, every part, the whole stream)"
"$bin" download -b "${location%/*}" -m demo.img.manifest.xml -d "$work/downloaded" --region "$region" "${cloud[@]}"
"$bin" verify -m "$work/downloaded/demo.img.manifest.xml" -c "$identity/user-cert.pem" -k "$identity/user-key.pem"

echo "== amibundle unbundle and compare"
"$bin" unbundle -m "$work/downloaded/demo.img.manifest.xml" -d "$work/restored"
cmp "$work/demo.img" "$work/restored/demo.img"
echo "demo: registered $ami from $location; the image that came back from S3 is identical ($(stat -c %s "$work/demo.img") bytes)"
echo "$ami"
