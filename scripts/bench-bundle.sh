#!/usr/bin/env bash
# Benchmark of the bundle engine, side by side in one run (issue: bundle engine, "Performance").
#
#   1. A realistic image: a sparse 2 GiB ext4 image holding about 1.5 GB of files from /usr.
#      Bundled by amibundle (default level 6, and --compression-level 9), by the classic
#      ec2-ami-tools pipeline (tar -cS | sha1sum tee | gzip -9 | openssl enc | split -b 10m) and by
#      the same pipeline with pigz -6 on all cores. Times, ratios, bundle sizes, peak RSS.
#   2. Holes are never read: a 10 GiB sparse image holding 200 MB of data vs a 200 MB dense file.
#   3. The machine's limit for the default run: single-threaded libdeflate level 6 (Debian's
#      libdeflate-gzip) on the same tar stream held in memory, plus SHA-1 of that stream and
#      AES-128-CBC of its compressed size at `openssl speed`'s rates, divided by the cores; the
#      efficiency is that limit over amibundle's time. Reading the image and writing the parts
#      are outside the limit (they are amibundle's to hide).
#
# Usage: scripts/bench-bundle.sh [DATA_BYTES]   (default 1500000000)
#   AMIBUNDLE_BIN=PATH runs that binary instead of building target/release/amibundle (to measure
#   an older build side by side with the same script).
# Needs root only to install missing packages (pigz, GNU time, e2fsprogs).
set -euo pipefail
cd "$(dirname "$0")/.."
data_bytes=${1:-1500000000}

scripts/install-deps.sh
need=()
command -v pigz >/dev/null || need+=(pigz)
command -v libdeflate-gzip >/dev/null || need+=(libdeflate-tools)
[ -x /usr/bin/time ] || need+=(time)
if [ ${#need[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq "${need[@]}" >/dev/null
fi
if [ -n "${AMIBUNDLE_BIN:-}" ]; then
  bin=$AMIBUNDLE_BIN
else
  cargo build --locked --release --quiet
  bin=$PWD/target/release/amibundle
fi
threads=$(nproc)

work=$(mktemp -d "${TMPDIR:-/var/tmp}/amibundle-bench.XXXXXX")
trap 'rm -rf "$work"' EXIT
chmod 700 "$work"
export XDG_CONFIG_HOME=$work/config
openssl req -x509 -newkey rsa:1024 -nodes -subj "/CN=bench stand-in EC2 certificate" -days 1 \
  -keyout "$work/ec2-key.pem" -out "$work/ec2-cert.pem" 2>/dev/null
ec2=(--ec2cert "$work/ec2-cert.pem" --unpinned-ec2cert)

echo "== building the source tree: ${data_bytes} bytes of files from /usr"
mkdir "$work/tree"
find /usr -xdev -type f -size +0 -printf '%s\t%p\n' | sort -t$'\t' -k2 |
  awk -F'\t' -v lim="$data_bytes" '{ t += $1; if (t <= lim) print $2 }' > "$work/list"
tar -cf - --no-recursion -T "$work/list" 2>/dev/null | tar -xf - -C "$work/tree"
echo "== making a sparse 2 GiB ext4 image"
mkfs.ext4 -q -F -b 4096 -d "$work/tree" "$work/usr.img" 2G
rm -rf "$work/tree"
img=$work/usr.img
# Write back everything made so far (the tree, the image: 1.5 GB of dirty pages) before any
# timing: otherwise the kernel's write-back threads take CPU from whichever run comes first.
sync
# Read the image once so every run sees the same page cache and the same hole map (on ext4,
# unwritten extents report as holes until read).
cat "$img" > /dev/null
printf 'image: %s bytes apparent, %s bytes allocated\n' "$(stat -c %s "$img")" "$(( $(stat -c %b "$img") * 512 ))"

# timed NAME CMD...: runs CMD under GNU time, records seconds and peak RSS (KiB).
declare -A secs rss size
timed() {
  local name=$1; shift
  /usr/bin/time -f '%e %M' -o "$work/time.$name" "$@"
  read -r secs[$name] rss[$name] < "$work/time.$name"
}
bundle_size() { du -cb "$@" | tail -n1 | cut -f1; }

run_amibundle() {
  local name=$1 image=$2; shift 2
  mkdir -p "$work/out.$name"
  timed "$name" "$bin" -q bundle-image -i "$image" -u 123456789012 -r x86_64 -d "$work/out.$name" -p img "${ec2[@]}" "$@" >/dev/null
  size[$name]=$(bundle_size "$work/out.$name"/img.part.*)
  rm -rf "$work/out.$name"
}

run_classic() {
  local name=$1 compressor=$2
  mkdir -p "$work/out.$name"
  key=$(openssl rand -hex 16); iv=$(openssl rand -hex 16)
  cat > "$work/classic.sh" <<SH
set -euo pipefail
tar -c -S --owner 0 --group 0 -C "$work" -f - usr.img | tee >(sha1sum > "$work/out.$name/sha1") |
  $compressor | openssl enc -e -aes-128-cbc -K $key -iv $iv | split -b 10m - "$work/out.$name/img.part."
SH
  timed "$name" bash "$work/classic.sh"
  size[$name]=$(bundle_size "$work/out.$name"/img.part.*)
  rm -rf "$work/out.$name"
}

echo "== amibundle, default settings (level 6, $threads threads)"
run_amibundle ami6 "$img"
echo "== amibundle --compression-level 9"
run_amibundle ami9 "$img" --compression-level 9
echo "== classic pipeline with pigz -p$threads -6"
run_classic pigz6 "pigz -p$threads -6"
echo "== classic pipeline with gzip -9 (the ec2-ami-tools pipeline; slow)"
run_classic gzip9 "gzip -9"

echo "== holes are never read: 10 GiB sparse image with 200 MB of data vs a 200 MB dense file"
python3 - "$work/sparse.img" "$work/dense.img" <<'PY'
import os, sys
sparse, dense = sys.argv[1], sys.argv[2]
chunk = 1_000_000
with open(sparse, "wb") as s, open(dense, "wb") as d:
    s.truncate(10 * 1024**3)
    for i in range(200):
        data = os.urandom(chunk)
        s.seek(i * 50 * 1024**2 + 4096); s.write(data)
        d.write(data)
PY
cat "$work/sparse.img" "$work/dense.img" > /dev/null
sync
run_amibundle sparse "$work/sparse.img"
run_amibundle dense "$work/dense.img"

echo "== the machine's limit: libdeflate -6 on the tar stream in memory, openssl speed for SHA-1 and AES"
shm=$(mktemp -d /dev/shm/amibundle-bench.XXXXXX)
trap 'rm -rf "$work" "$shm"' EXIT
tar -c -S --owner 0 --group 0 -C "$work" -f "$shm/usr.tar" usr.img
tar_bytes=$(stat -c %s "$shm/usr.tar")
sync
timed deflate libdeflate-gzip -6 -c "$shm/usr.tar" > "$shm/usr.tar.gz"
gz_bytes=$(stat -c %s "$shm/usr.tar.gz")
rm -rf "$shm"
# `openssl speed` prints thousands of bytes per second per block size; 16 KiB blocks.
rate() { openssl speed -evp "$1" -bytes 16384 -seconds 3 2>/dev/null | tail -n1 | awk '{ sub(/k$/, "", $NF); print $NF * 1000 }'; }
sha1_rate=$(rate sha1)
aes_rate=$(rate aes-128-cbc)
limit=$(python3 -c "print((${secs[deflate]} + $tar_bytes / $sha1_rate + $gz_bytes / $aes_rate) / $threads)")

ratio() { python3 -c "print(f'{$1/$2:.2f}')"; }
echo
echo "== results (machine: $(nproc) cores)"
printf '%-34s %9s %14s %12s\n' run seconds "bundle bytes" "peak RSS KiB"
for n in ami6 ami9 pigz6 gzip9 sparse dense; do
  printf '%-34s %9s %14s %12s\n' "$n" "${secs[$n]}" "${size[$n]}" "${rss[$n]}"
done
echo
echo "speed-up, default vs gzip -9 pipeline:   $(ratio "${secs[gzip9]}" "${secs[ami6]}")x (target >= 12)"
echo "size, default / gzip -9 pipeline:        $(ratio "${size[ami6]}" "${size[gzip9]}") (target <= 1.01)"
echo "speed-up, default vs pigz -6 pipeline:   $(ratio "${secs[pigz6]}" "${secs[ami6]}")x (target >= 2)"
echo "size, default / pigz -6 pipeline:        $(ratio "${size[ami6]}" "${size[pigz6]}") (target within 0.5%)"
echo "speed-up, level 9 vs gzip -9 pipeline:   $(ratio "${secs[gzip9]}" "${secs[ami9]}")x (target >= 5)"
echo "10 GiB sparse / 200 MB dense time:       $(ratio "${secs[sparse]}" "${secs[dense]}") (target < 2)"
echo "machine limit for the default run:       $(python3 -c "print(f'{$limit:.2f}')") s = (libdeflate -6 ${secs[deflate]} s + SHA-1 of $tar_bytes B at $(python3 -c "print(f'{$sha1_rate/1e6:.0f}')") MB/s + AES of $gz_bytes B at $(python3 -c "print(f'{$aes_rate/1e6:.0f}')") MB/s) / $threads cores"
echo "efficiency, limit / default run:         $(python3 -c "print(f'{100*$limit/${secs[ami6]}:.0f}')")% (target >= 85)"
echo "peak RSS of amibundle runs (KiB):        max $(printf '%s\n' "${rss[ami6]}" "${rss[ami9]}" "${rss[sparse]}" "${rss[dense]}" | sort -n | tail -n1) (target <= 65536)"
