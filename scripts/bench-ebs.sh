#!/usr/bin/env bash
# EBS benchmark (issue 15): `amibundle to-ebs` against awslabs' coldsnap, side by side in one run,
# against the same local moto emulator, through the same network model (tools/netproxy,
# docs/benchmarks.md).
#
#   1. image -> snapshot: one sparse image (4 GiB apparent, 1 GiB of random data in 64 islands
#      at unaligned offsets, some of them holding 2 MiB of zeros written as data) by
#      `to-ebs -i IMG --no-register`, by `coldsnap upload IMG` (its default sends every block,
#      holes and zeros included) and by `coldsnap upload --omit-zero-blocks IMG` (its best),
#      under the model and on bare loopback, the order rotating every run. Per run: the
#      PutSnapshotBlock requests each sent (moto's request log) and the blocks the snapshot
#      holds (ListSnapshotBlocks) against the image's non-zero 512 KiB blocks, computed here.
#   2. a bundle in S3 to a snapshot: a 1 GiB ext4 image holding 700 MiB of /usr, bundled and
#      uploaded first (not timed), then `to-ebs --image-location ... --no-register` (streamed:
#      nothing written locally) vs the documented manual path reproduced locally: `download`
#      (the parts to disk, as ec2-download-bundle), `unbundle` (the image to disk, as
#      ec2-unbundle), then `coldsnap upload --omit-zero-blocks` (and plain `coldsnap upload`, the
#      issue's words, which sends every block). Times, bytes written to disk
#      (each process's write accounting) and the peak disk space the path used. For
#      reference, also `download --unbundle` (no parts on disk) + coldsnap.
#   3. peak RSS (GNU time) of every run, and of to-ebs and coldsnap on a 16 GiB sparse image.
#
# moto reports a snapshot's BlockSize as 512 where AWS says 524288; coldsnap cuts the image
# into blocks of the size StartSnapshot reports, so the emulator is started with AWS's value
# (moto_prelude below). to-ebs always sends 512 KiB blocks. coldsnap runs without --wait: its
# wait polls until three answers in a row say completed, 2 s apart, while to-ebs's own wait
# (one DescribeSnapshots here) stays in its time.
#
# Usage: scripts/bench-ebs.sh [--runs N] [--sparse-gib G] [--data-mib M] [--usr-mib M]
#          [--big-gib G] [--latency-ms MS] [--conn-mb-s MB_S] [--total-mb-s MB_S]
#          [--no-net-model]
#   --runs: runs of each contestant on each path (default 3); the sizes default to 4, 1024,
#   700 and 16. The model's defaults are in scripts/lib-emulator.sh; leg 1 runs under it and
#   on loopback, leg 2 under it (on loopback with --no-net-model). AMIBUNDLE_BIN=PATH uses that
#   binary instead of building the release one; COLDSNAP_BIN=PATH that coldsnap instead of the
#   one this script installs (cargo install --locked coldsnap, pinned, into
#   ${XDG_CACHE_HOME:-~/.cache}/amibundle-bench: the first run compiles the AWS SDK, 10+ min).
# Needs root only to install missing packages. Every request stays on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."

. scripts/lib-emulator.sh
parse_net_flags "$@"
set -- "${net_rest[@]+"${net_rest[@]}"}"
runs=3 sparse_gib=4 data_mib=1024 usr_mib=700 big_gib=16
usage="usage: $0 [--runs N] [--sparse-gib G] [--data-mib M] [--usr-mib M] [--big-gib G] [--latency-ms MS] [--conn-mb-s MB_S] [--total-mb-s MB_S] [--no-net-model]"
while [ $# -gt 0 ]; do
  case $1 in
    --runs) runs=$2; shift 2 ;;
    --sparse-gib) sparse_gib=$2; shift 2 ;;
    --data-mib) data_mib=$2; shift 2 ;;
    --usr-mib) usr_mib=$2; shift 2 ;;
    --big-gib) big_gib=$2; shift 2 ;;
    *) echo "$usage" >&2; exit 2 ;;
  esac
done
for n in "$runs" "$sparse_gib" "$data_mib" "$usr_mib" "$big_gib"; do
  [[ $n =~ ^[1-9][0-9]*$ ]] || { echo "$usage" >&2; exit 2; }
done
(( data_mib >= 64 && data_mib * 2 <= sparse_gib * 1024 )) ||
  { echo "--data-mib must be at least 64 and at most half of --sparse-gib" >&2; exit 2; }

# coldsnap: installed once into a cache outside the repository, started first (it compiles
# for minutes) and waited for before anything is timed.
coldsnap_version=0.12.0
cache=${XDG_CACHE_HOME:-$HOME/.cache}/amibundle-bench
install_pid=
if [ -n "${COLDSNAP_BIN:-}" ]; then
  coldsnap=$(realpath "$COLDSNAP_BIN")
else
  coldsnap=$cache/bin/coldsnap
  if ! { [ -x "$coldsnap" ] && grep -qF "\"coldsnap $coldsnap_version " "$cache/.crates.toml" 2>/dev/null; }; then
    mkdir -p "$cache"
    echo "== installing coldsnap $coldsnap_version into $cache in the background (log: $cache/install.log)"
    cargo install --locked --quiet coldsnap --version "$coldsnap_version" --root "$cache" \
      > "$cache/install.log" 2>&1 &
    install_pid=$!
  fi
fi

scripts/install-deps.sh
if [ ! -x /usr/bin/time ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq time > /dev/null
fi
if [ -n "${AMIBUNDLE_BIN:-}" ]; then bin=$(realpath "$AMIBUNDLE_BIN"); else
  cargo build --locked --release --quiet
  bin=$PWD/target/release/amibundle
fi

# moto as AWS documents the EBS direct APIs' block size (see the header).
moto_prelude='
import moto.ebs.models as _ebs
_init = _ebs.EBSSnapshot.__init__
def _aws_block_size(self, *args, **kwargs):
    _init(self, *args, **kwargs)
    self.block_size = 524288
_ebs.EBSSnapshot.__init__ = _aws_block_size'
start_emulator bench-ebs
# What the contestants print goes to memory (tmpfs), so that the bytes each process writes to
# disk (the kernel's accounting) are its own files only.
shm=$(mktemp -d /dev/shm/amibundle-bench-ebs.XXXXXX)
# An EXIT trap of this script's own: the background install too (lib-emulator's removes $work).
trap 'if [ -n "$install_pid" ]; then kill "$install_pid" 2>/dev/null || true; fi; stop_emulator; rm -rf "$work" "$shm"' EXIT
start_netmodel
python_bin=$(dirname "$moto_server")/python
region=us-east-1
echo "== $(net_model_desc)"

# The paths the clients take: under the model (unless --no-net-model) and loopback.
declare -A path_endpoint
paths=()
if [ "$net_model" = 1 ]; then paths+=(model); path_endpoint[model]=$endpoint; fi
paths+=(loopback); path_endpoint[loopback]=$moto_endpoint
leg2_path=${paths[0]}
for p in "${paths[@]}"; do
  [[ ${path_endpoint[$p]} =~ ^http://127\.0\.0\.1:[0-9]+$ ]] ||
    { echo "refusing endpoint ${path_endpoint[$p]}: not loopback" >&2; exit 1; }
done

# ---------------------------------------------------------------------------------------------
# Helpers

results=$work/results.tsv
: > "$results"
# timed NAME CMD...: CMD under GNU time; NAME's wall seconds, peak RSS (KiB) and bytes written
# to the file system (ru_oublock, 512-byte units on Linux) into t_secs, t_rss, t_written. CMD's
# stderr (coldsnap's INFO summary) is shown only if it fails.
timed() {
  local name=$1; shift
  /usr/bin/time -f '%e %M %O' -o "$work/time.$name" "$@" 2> "$shm/stderr.$name" ||
    { cat "$shm/stderr.$name" >&2; exit 1; }
  read -r t_secs t_rss t_written < "$work/time.$name"
  t_written=$(( t_written * 512 ))
}
# quietly CMD...: CMD with its output shown only if it fails.
quietly() { "$@" > "$work/quiet.log" 2>&1 || { cat "$work/quiet.log" >&2; exit 1; }; }
# record LEG PATH WHO RUN SECONDS RSS_KIB WRITTEN REQUESTS HELD VERDICT DISK_PEAK
record() { (IFS=$'\t'; echo "$*") >> "$results"; }

# cs=(the coldsnap command at ENDPOINT), only ever a loopback one: given both by coldsnap's
# --endpoint flag and by the AWS SDK's standard AWS_ENDPOINT_URL (coldsnap's
# aws_config::from_env reads it); the fake credentials are lib-emulator's.
coldsnap_at() {
  [[ $1 =~ ^http://127\.0\.0\.1:[0-9]+$ ]] || { echo "coldsnap: refusing $1" >&2; exit 1; }
  cs=(env AWS_ENDPOINT_URL="$1" "$coldsnap" --region "$region" --endpoint "$1")
}

# The image's non-zero 512 KiB blocks (indices, one a line, into FILE): holes are skipped with
# SEEK_DATA/SEEK_HOLE, data blocks read and compared with zeros. Prints "blocks data nonzero".
nonzero_blocks() {
  python3 - "$1" "$2" <<'PY'
import os, sys
B = 512 << 10
zero = bytes(B)
fd = os.open(sys.argv[1], os.O_RDONLY)
size = os.fstat(fd).st_size
total = (size + B - 1) // B
nz, data, nxt, off = [], 0, 0, 0
while off < size:
    try:
        start = os.lseek(fd, off, os.SEEK_DATA)
    except OSError:
        break
    end = os.lseek(fd, start, os.SEEK_HOLE)
    for b in range(max(start // B, nxt), (end + B - 1) // B):
        blk = os.pread(fd, B, b * B)
        data += 1
        if blk != zero[:len(blk)]:
            nz.append(b)
    nxt = max(nxt, (end + B - 1) // B)
    off = end
with open(sys.argv[2], "w") as f:
    f.write("".join(f"{b}\n" for b in nz))
print(total, data, len(nz))
PY
}

# check SNAPSHOT EXPECTED_FILE: "REQUESTS HELD VERDICT": the PutSnapshotBlock requests for the
# snapshot in moto's access log (werkzeug's, a line a request, maybe coloured), the blocks it
# holds (ListSnapshotBlocks, straight to moto, which does not paginate), and whether those are
# exactly the image's non-zero blocks (else "+extra/-missing").
check_snapshot() {
  local requests
  requests=$(grep -c "PUT /snapshots/$1/blocks/" "$work/moto.log" || true)
  "$python_bin" - "$moto_endpoint" "$region" "$1" "$2" "$requests" <<'PY'
import sys, boto3
ep, region, snap, expected, requests = sys.argv[1:6]
ebs = boto3.client("ebs", endpoint_url=ep, region_name=region)
held = {b["BlockIndex"] for b in ebs.list_snapshot_blocks(SnapshotId=snap)["Blocks"]}
want = {int(x) for x in open(expected).read().split()}
verdict = "exact" if held == want else f"+{len(held - want)}/-{len(want - held)}"
print(requests, len(held), verdict)
PY
}

# Forget every snapshot (moto keeps each block in memory).
reset_moto() { curl -sf -X POST "$moto_endpoint/moto-api/reset" > /dev/null; }

# make_sparse PATH APPARENT_GIB DATA_MIB: islands of 16 MiB of random data, spread evenly at
# unaligned offsets; every fourth holds 2 MiB of zeros written as data (allocated, not holes).
make_sparse() {
  python3 - "$1" "$2" "$3" <<'PY'
import os, sys
path, gib, mib = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
size, island = gib << 30, 16 << 20
n = (mib << 20) // island
stride = size // n
with open(path, "wb") as f:
    f.truncate(size)
    for i in range(n):
        off = i * stride + (i * 7919 * 4096 + 12345) % (stride - island)
        buf = bytearray(os.urandom(island))
        if i % 4 == 1:
            buf[5 << 20:7 << 20] = bytes(2 << 20)
        f.seek(off)
        f.write(buf)
    os.fsync(f.fileno())
PY
}

snapshot_of() { python3 -c 'import json,sys; print(json.load(sys.stdin)["snapshot_id"])'; }

# ---------------------------------------------------------------------------------------------
# Leg 1: a sparse image, to-ebs vs coldsnap

img=$work/sparse.img
echo "== leg 1: a ${sparse_gib} GiB sparse image with ${data_mib} MiB of random data in islands"
make_sparse "$img" "$sparse_gib" "$data_mib"
read -r l1_total l1_data l1_nonzero < <(nonzero_blocks "$img" "$work/sparse.nonzero")
echo "image: $l1_total blocks of 512 KiB, $l1_data hold data, $l1_nonzero of them non-zero"

if [ -n "$install_pid" ]; then
  echo "== waiting for the coldsnap install"
  if ! wait "$install_pid"; then
    install_pid=
    echo "cargo install coldsnap failed:" >&2; tail -n 20 "$cache/install.log" >&2; exit 1
  fi
  install_pid=
fi
[ -x "$coldsnap" ] || { echo "no coldsnap at $coldsnap" >&2; exit 1; }
sync

# One contestant on one path: run, count, verify, forget.
leg1_run() {
  local who=$1 p=$2 i=$3 ep=${path_endpoint[$2]} snap
  case $who in
    to-ebs)
      timed "l1.$who.$p.$i" "$bin" -q to-ebs -i "$img" --no-register --region "$region" \
        --endpoint-url "$ep" --path-style --json > "$shm/out.json"
      snap=$(snapshot_of < "$shm/out.json") ;;
    coldsnap)
      coldsnap_at "$ep"
      timed "l1.$who.$p.$i" "${cs[@]}" upload --no-progress "$img" > "$shm/out.txt"
      snap=$(tail -n1 "$shm/out.txt") ;;
    coldsnap-omit)
      coldsnap_at "$ep"
      timed "l1.$who.$p.$i" "${cs[@]}" upload --no-progress --omit-zero-blocks "$img" > "$shm/out.txt"
      snap=$(tail -n1 "$shm/out.txt") ;;
  esac
  [[ $snap =~ ^snap-[0-9a-f]+$ ]] || { echo "$who printed no snapshot id: $snap" >&2; exit 1; }
  read -r requests held verdict < <(check_snapshot "$snap" "$work/sparse.nonzero")
  record 1 "$p" "$who" "$i" "$t_secs" "$t_rss" "$t_written" "$requests" "$held" "$verdict" -
  printf '  %-14s %-8s run %s: %7.2f s, %6s KiB peak RSS, %s bytes written, %5s PutSnapshotBlock, %5s blocks held (%s)\n' \
    "$who" "$p" "$i" "$t_secs" "$t_rss" "$t_written" "$requests" "$held" "$verdict"
  reset_moto
}

# A first coldsnap call that must reach moto: proof that it goes where it is told.
before=$(grep -c 'POST /snapshots HTTP/' "$work/moto.log" || true)
head -c 1048576 /dev/urandom > "$work/probe.img"
coldsnap_at "$moto_endpoint"
quietly "${cs[@]}" upload --no-progress "$work/probe.img"
after=$(grep -c 'POST /snapshots HTTP/' "$work/moto.log" || true)
(( after == before + 1 )) || { echo "coldsnap's StartSnapshot did not reach moto" >&2; exit 1; }
reset_moto

contestants=(to-ebs coldsnap coldsnap-omit)
for p in "${paths[@]}"; do
  echo "== leg 1 on the path: $p"
  for i in $(seq "$runs"); do
    # Rotate the order so that no contestant always goes first.
    for k in 0 1 2; do
      leg1_run "${contestants[$(( (i - 1 + k) % 3 ))]}" "$p" "$i"
    done
  done
done

# ---------------------------------------------------------------------------------------------
# Leg 2: a bundle in S3, streamed by to-ebs vs the manual path

echo "== leg 2: a 1 GiB ext4 image holding ${usr_mib} MiB of /usr, bundled and uploaded (not timed)"
mkdir "$work/tree"
find /usr -xdev -type f -size +0 -printf '%s\t%p\n' | sort -t$'\t' -k2 |
  awk -F'\t' -v lim=$(( usr_mib << 20 )) '{ t += $1; if (t <= lim) print $2 }' > "$work/list"
tar -cf - --no-recursion -T "$work/list" 2>/dev/null | tar -xf - -C "$work/tree"
quietly mkfs.ext4 -q -F -b 4096 -d "$work/tree" "$work/usr.img" 1G
rm -rf "$work/tree"
cat "$work/usr.img" > /dev/null
read -r l2_total l2_data l2_nonzero < <(nonzero_blocks "$work/usr.img" "$work/usr.nonzero")
echo "image: $l2_total blocks of 512 KiB, $l2_data hold data, $l2_nonzero of them non-zero"
openssl req -x509 -newkey rsa:1024 -nodes -subj "/CN=bench stand-in" -days 1 \
  -keyout "$work/ec2-key.pem" -out "$work/ec2-cert.pem" 2>/dev/null
mkdir "$work/bundle"
quietly "$bin" -q bundle-image -i "$work/usr.img" -u 123456789012 -d "$work/bundle" \
  --ec2cert "$work/ec2-cert.pem" --unpinned-ec2cert
rm "$work/usr.img"
bundle_bytes=$(du -cb "$work"/bundle/usr.img.part.* | tail -n1 | cut -f1)
bundle_parts=$(find "$work/bundle" -name 'usr.img.part.*' | wc -l)
echo "bundle: $bundle_bytes bytes in $bundle_parts parts, to s3://bench-ebs/leg2/"
# moto holds every snapshot's blocks in memory: it is reset after each run and the bundle put
# back (straight to moto, not timed).
put_bundle() {
  reset_moto
  quietly "$bin" -q upload -m "$work/bundle/usr.img.manifest.xml" -b bench-ebs/leg2 --no-resume \
    --endpoint-url "$moto_endpoint" --path-style --region "$region"
}
put_bundle
sync

ep2=${path_endpoint[$leg2_path]}
cloud2=(--endpoint-url "$ep2" --path-style --region "$region")
allocated() { du -s -B1 "$@" | awk '{ t += $1 } END { print t }'; }
mkdir "$work/ours-tmp"

# to-ebs, with a TMPDIR of its own: the disk it used is that folder's and its configuration
# folder's growth (and, anywhere, the bytes its process wrote, from the kernel's accounting).
l2_ours() {
  local i=$1 before grown snap
  before=$(allocated "$work/ours-tmp" "$XDG_CONFIG_HOME")
  (cd "$work/ours-tmp" && TMPDIR=$work/ours-tmp timed "l2.ours.$i" "$bin" -q to-ebs \
     --image-location bench-ebs/leg2/usr.img.manifest.xml --no-register "${cloud2[@]}" --json \
     > "$shm/out.json" && echo "$t_secs $t_rss $t_written" > "$work/l2.ours")
  read -r t_secs t_rss t_written < "$work/l2.ours"
  grown=$(( $(allocated "$work/ours-tmp" "$XDG_CONFIG_HOME") - before ))
  snap=$(snapshot_of < "$shm/out.json")
  read -r requests held verdict < <(check_snapshot "$snap" "$work/usr.nonzero")
  record 2 "$leg2_path" to-ebs "$i" "$t_secs" "$t_rss" "$t_written" "$requests" "$held" "$verdict" "$grown"
  printf '  %-34s run %s: %7.2f s, %6s KiB peak RSS, %s bytes written, %s bytes of disk, %s blocks held (%s)\n' \
    "to-ebs --image-location" "$i" "$t_secs" "$t_rss" "$t_written" "$grown" "$held" "$verdict"
  put_bundle
}

# After each step of the manual path: add up its time and its writes, keep the peak RSS and
# the peak of the manual folder's allocated size.
m_secs=0 m_written=0 m_rss=0 m_peak=0
m_step() {
  m_secs=$(python3 -c "print($m_secs + $t_secs)")
  m_written=$(( m_written + t_written ))
  (( t_rss > m_rss )) && m_rss=$t_rss
  local used
  used=$(allocated "$work/manual")
  (( used > m_peak )) && m_peak=$used
  return 0
}

# The manual path: STYLE two-step (download: the parts to disk; unbundle: the image to disk) or
# streamed (download --unbundle: the image only), then `coldsnap upload --omit-zero-blocks` of
# the image, or with plain as a third argument the issue's literal `coldsnap upload` (which
# sends every block).
l2_manual() {
  local style=$1 i=$2 plain=${3:-} m=$work/manual snap omit=(--omit-zero-blocks) who=manual-$1
  if [ -n "$plain" ]; then omit=(); who=$who-plain; fi
  mkdir "$m"
  m_secs=0 m_written=0 m_rss=0 m_peak=0
  if [ "$style" = two-step ]; then
    timed "l2.dl.$i" "$bin" -q download -b bench-ebs/leg2 -m usr.img.manifest.xml -d "$m/parts" "${cloud2[@]}" > /dev/null
    m_step
    timed "l2.unb.$i" "$bin" -q unbundle -m "$m/parts/usr.img.manifest.xml" -d "$m/image" > /dev/null
    m_step
  else
    timed "l2.dlu.$i" "$bin" -q download -b bench-ebs/leg2 -m usr.img.manifest.xml --unbundle -d "$m/image" "${cloud2[@]}" > /dev/null
    m_step
  fi
  coldsnap_at "$ep2"
  timed "l2.cold.$i" "${cs[@]}" upload --no-progress "${omit[@]}" "$m/image/usr.img" > "$shm/out.txt"
  m_step
  snap=$(tail -n1 "$shm/out.txt")
  [[ $snap =~ ^snap-[0-9a-f]+$ ]] || { echo "coldsnap printed no snapshot id: $snap" >&2; exit 1; }
  read -r requests held verdict < <(check_snapshot "$snap" "$work/usr.nonzero")
  record 2 "$leg2_path" "$who" "$i" "$m_secs" "$m_rss" "$m_written" "$requests" "$held" "$verdict" "$m_peak"
  printf '  %-34s run %s: %7.2f s, %6s KiB peak RSS, %s bytes written, %s bytes of disk at the peak, %s blocks held (%s)\n' \
    "manual ($style${plain:+, plain}) + coldsnap" "$i" "$m_secs" "$m_rss" "$m_written" "$m_peak" "$held" "$verdict"
  rm -rf "$m"
  put_bundle
}

echo "== leg 2 on the path: $leg2_path"
for i in $(seq "$runs"); do
  if (( i % 2 )); then l2_ours "$i"; l2_manual two-step "$i"; else l2_manual two-step "$i"; l2_ours "$i"; fi
  l2_manual streamed "$i"
  l2_manual two-step "$i" plain
done
rm -rf "$work/bundle"

# ---------------------------------------------------------------------------------------------
# Peak RSS on a large sparse image (loopback: memory, not time, is measured here)

reset_moto
big=$work/big.img
echo "== peak RSS: a ${big_gib} GiB sparse image with ${data_mib} MiB of data"
rm -f "$img"
make_sparse "$big" "$big_gib" "$data_mib"
read -r big_total _ big_nonzero < <(nonzero_blocks "$big" "$work/big.nonzero")
sync
timed big.ours "$bin" -q to-ebs -i "$big" --no-register --region "$region" \
  --endpoint-url "$moto_endpoint" --path-style --json > "$shm/out.json"
read -r requests held verdict < <(check_snapshot "$(snapshot_of < "$shm/out.json")" "$work/big.nonzero")
record 3 loopback to-ebs 1 "$t_secs" "$t_rss" "$t_written" "$requests" "$held" "$verdict" -
reset_moto
coldsnap_at "$moto_endpoint"
timed big.cold "${cs[@]}" upload --no-progress --omit-zero-blocks "$big" > "$shm/out.txt"
read -r requests held verdict < <(check_snapshot "$(tail -n1 "$shm/out.txt")" "$work/big.nonzero")
record 3 loopback coldsnap-omit 1 "$t_secs" "$t_rss" "$t_written" "$requests" "$held" "$verdict" -
reset_moto
rm -f "$big"

# ---------------------------------------------------------------------------------------------
# Summary

echo
echo "== results ($(nproc) cores, moto $("$python_bin" -c 'import moto; print(moto.__version__)') on 127.0.0.1, coldsnap $coldsnap_version, $runs run(s) each)"
echo "== $(net_model_desc)"
python3 - "$results" "$l1_total" "$l1_nonzero" "$l2_nonzero" "$big_total" "$big_nonzero" \
  "$sparse_gib" "$data_mib" "$usr_mib" "$big_gib" "$bundle_bytes" "$bundle_parts" <<'PY'
import statistics, sys
from collections import defaultdict
(path, l1_total, l1_nz, l2_nz, big_total, big_nz, sparse_gib, data_mib, usr_mib, big_gib,
 bundle_bytes, bundle_parts) = sys.argv[1:13]
rows = defaultdict(list)
for line in open(path):
    leg, p, who, run, secs, rss, written, req, held, verdict, disk = line.rstrip("\n").split("\t")
    rows[(leg, p, who)].append(dict(secs=float(secs), rss=int(rss), written=int(written),
                                    req=int(req), held=int(held), verdict=verdict, disk=disk))
def stat(k):
    s = [r["secs"] for r in rows[k]]
    return min(s), statistics.median(s)
def span(k, f):
    v = sorted({r[f] for r in rows[k]})
    return str(v[0]) if len(v) == 1 else f"{v[0]}–{v[-1]}"
def verdicts(k):
    return ", ".join(sorted({r["verdict"] for r in rows[k]}))
mib = lambda kib: f"{kib / 1024:.0f} MiB"

print(f"\nLeg 1: {sparse_gib} GiB sparse image, {data_mib} MiB of random data: {l1_total} blocks of 512 KiB, {l1_nz} non-zero")
print("| path | contestant | min | median | PutSnapshotBlock requests | blocks held vs the non-zero ones | peak RSS |")
print("| --- | --- | --- | --- | --- | --- | --- |")
names = {"to-ebs": "amibundle to-ebs -i", "coldsnap": "coldsnap upload",
         "coldsnap-omit": "coldsnap upload --omit-zero-blocks"}
paths = [p for p in ("model", "loopback") if ("1", p, "to-ebs") in rows]
for p in paths:
    for who in ("to-ebs", "coldsnap", "coldsnap-omit"):
        k = ("1", p, who)
        lo, med = stat(k)
        print(f"| {p} | {names[who]} | {lo:.2f} s | {med:.2f} s | {span(k, 'req')} | "
              f"{span(k, 'held')} ({verdicts(k)}) | {mib(max(r['rss'] for r in rows[k]))} |")
for p in paths:
    o = stat(("1", p, "to-ebs"))
    for who in ("coldsnap", "coldsnap-omit"):
        c = stat(("1", p, who))
        print(f"{p}: {names[who]} / to-ebs: median {c[1] / o[1]:.2f}x, min {c[0] / o[0]:.2f}x (target >= 1.5)")
ours_req = max(r["req"] for p in paths for r in rows[("1", p, "to-ebs")])
print(f"to-ebs blocks sent: at most {ours_req} against {l1_nz} non-zero blocks (target: <=)")

p2 = next(p for (leg, p, who) in rows if leg == "2")
print(f"\nLeg 2: a bundle in S3 ({bundle_bytes} bytes in {bundle_parts} parts) of a 1 GiB ext4 image holding {usr_mib} MiB of /usr ({l2_nz} non-zero blocks), path: {p2}")
print("| contestant | min | median | bytes written locally | local disk at the peak | blocks held | peak RSS |")
print("| --- | --- | --- | --- | --- | --- | --- |")
names2 = {"to-ebs": "amibundle to-ebs --image-location (streamed)",
          "manual-two-step": "download + unbundle + coldsnap upload --omit-zero-blocks",
          "manual-two-step-plain": "download + unbundle + coldsnap upload",
          "manual-streamed": "download --unbundle + coldsnap upload --omit-zero-blocks"}
for who in ("to-ebs", "manual-two-step", "manual-two-step-plain", "manual-streamed"):
    k = ("2", p2, who)
    lo, med = stat(k)
    print(f"| {names2[who]} | {lo:.2f} s | {med:.2f} s | {span(k, 'written')} | {span(k, 'disk')} | "
          f"{span(k, 'held')} ({verdicts(k)}) | {mib(max(r['rss'] for r in rows[k]))} |")
o = stat(("2", p2, "to-ebs"))
for who in ("manual-two-step", "manual-two-step-plain", "manual-streamed"):
    c = stat(("2", p2, who))
    print(f"{names2[who]} / to-ebs: median {c[1] / o[1]:.2f}x, min {c[0] / o[0]:.2f}x (target >= 2 against the two-step path)")
w = max(r["written"] for r in rows[("2", p2, "to-ebs")])
print(f"to-ebs bytes written locally: at most {w} (target 0)")

print(f"\nPeak RSS ({big_gib} GiB sparse image, {data_mib} MiB of data, {big_nz} non-zero of {big_total} blocks; loopback)")
print("| contestant | time | peak RSS | blocks held |")
print("| --- | --- | --- | --- |")
for who in ("to-ebs", "coldsnap-omit"):
    r = rows[("3", "loopback", who)][0]
    print(f"| {names[who]} | {r['secs']:.2f} s | {r['rss']} KiB ({mib(r['rss'])}) | {r['held']} blocks held ({r['verdict']}) |")
ours = max(r["rss"] for k, v in rows.items() if k[2] == "to-ebs" for r in v)
print(f"to-ebs peak RSS over every run: {ours} KiB ({mib(ours)}; target <= 131072 KiB)")
PY
