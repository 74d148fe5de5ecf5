#!/usr/bin/env bash
# The main job, end to end, on this machine, with nothing but this repository:
#   a real ext4 image made from a directory of the machine (default /usr/share/doc)
#   → amibundle bundle-image → amibundle verify → amibundle unbundle → compare with the original.
# The bundle is encrypted for a throwaway stand-in EC2 certificate made here (the real ones are
# Amazon's and are never shipped with amibundle), so it is accepted with --unpinned-ec2cert.
# Usage: scripts/demo.sh [SOURCE_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
src=${1:-/usr/share/doc}
[ -d "$src" ] || { echo "demo: $src is not a directory" >&2; exit 1; }

scripts/install-deps.sh
cargo build --locked --release --quiet
bin=$PWD/target/release/amibundle

work=$(mktemp -d "${TMPDIR:-/tmp}/amibundle-demo.XXXXXX")
trap 'rm -rf "$work"' EXIT
chmod 700 "$work"
# A private identity for the demo, so it never touches your own amibundle key pair.
export XDG_CONFIG_HOME=$work/config

used_kib=$(du -sk "$src" | cut -f1)
size_mib=$(( used_kib * 13 / 10 / 1024 + 64 ))
echo "== making a ${size_mib} MiB ext4 image from $src"
mkfs.ext4 -q -F -b 4096 -L demo -d "$src" "$work/demo.img" "${size_mib}M"

echo "== making a throwaway stand-in EC2 certificate"
openssl req -x509 -newkey rsa:1024 -nodes -subj "/CN=amibundle demo stand-in EC2 certificate" \
  -days 1 -keyout "$work/ec2-standin-key.pem" -out "$work/ec2-standin-cert.pem" 2>/dev/null

mkdir "$work/bundle" "$work/restored"
echo "== amibundle bundle-image"
"$bin" bundle-image -i "$work/demo.img" -u 123456789012 -d "$work/bundle" \
  --ec2cert "$work/ec2-standin-cert.pem" --unpinned-ec2cert
manifest=$work/bundle/demo.img.manifest.xml
ls -l "$work/bundle"

echo "== amibundle verify"
"$bin" verify -m "$manifest" -c "$XDG_CONFIG_HOME/amibundle/identity/user-cert.pem" \
  -k "$XDG_CONFIG_HOME/amibundle/identity/user-key.pem"

echo "== amibundle unbundle"
"$bin" unbundle -m "$manifest" -d "$work/restored"

echo "== comparing"
cmp "$work/demo.img" "$work/restored/demo.img"
echo "demo: the unbundled image is identical to the original ($(stat -c %s "$work/demo.img") bytes)"
