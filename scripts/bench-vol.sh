#!/usr/bin/env bash
# bundle-vol benchmark (issue "bundle-vol", Performance): the copy phase of `amibundle bundle-vol`
# vs `rsync -aHAXS --numeric-ids` of the same tree into the same kind of loop-mounted ext4 image,
# side by side in one run (two rounds each, page cache warm, best of two reported).
# Usage (root): scripts/bench-vol.sh [DIR...]
#   default DIRs: /usr/share /usr/lib/x86_64-linux-gnu /usr/bin /usr/include (about 1.5 GB here),
#   gathered read-only into one tree with bind mounts inside a private mount namespace.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "bench-vol.sh needs root (loop devices, mounts)" >&2; exit 1; }
if [ -z "${AMIBUNDLE_BENCH_NS:-}" ]; then
  # Every mount of this benchmark stays private and vanishes with it.
  exec env AMIBUNDLE_BENCH_NS=1 unshare -m --propagation private "$0" "$@"
fi
if [ $# -gt 0 ]; then srcs=("$@"); else
  srcs=(/usr/share /usr/lib/x86_64-linux-gnu /usr/bin /usr/include)
fi

scripts/install-deps.sh
command -v rsync > /dev/null || apt-get install -y -q rsync > /dev/null
cargo build --locked --release --quiet
bin=$PWD/target/release/amibundle

work=$(mktemp -d /var/tmp/amibundle-bench-vol.XXXXXX)
chmod 700 "$work"
binds=()
cleanup() {
  umount "$work/mnt" 2>/dev/null || true
  for d in "${binds[@]}"; do umount "$d" 2>/dev/null || true; done
  # Never delete through a mount that is still there (a bind of the source is read-only too).
  if grep -qF " $work/" /proc/self/mountinfo; then
    echo "not removing $work: something is still mounted below it" >&2
  else
    rm -rf "$work"
  fi
}
trap cleanup EXIT
tree=$work/tree
mkdir "$tree" "$work/mnt"
for s in "${srcs[@]}"; do
  d=$tree/$(echo "${s#/}" | tr / _)
  mkdir "$d"
  mount --bind -o ro "$s" "$d"
  binds+=("$d")
  mount -o remount,bind,ro "$d"
done
bytes=$(du -sb --apparent-size "$tree" | cut -f1)
files=$(find "$tree" | wc -l)
echo "== tree: ${srcs[*]}: $bytes bytes, $files entries; warming the page cache"
tar -cf - "$tree" 2>/dev/null | cat > /dev/null

export AWS_EC2_METADATA_DISABLED=true XDG_CONFIG_HOME=$work/config
now() { python3 -c 'import time; print(time.monotonic())'; }
amibundle_run() {
  rm -f "$work/amb.img" "$work/amb.img.filtered.txt"
  "$bin" -q bundle-vol -v "$tree" --all --clone-only --no-inherit -d "$work" -p amb.img --json
}
rsync_run() {
  local size=$1
  rm -f "$work/rs.img"
  truncate -s "$size" "$work/rs.img"
  mkfs.ext4 -q -F "$work/rs.img"
  mount -o loop "$work/rs.img" "$work/mnt"
  local t0 t1
  t0=$(now)
  rsync -aHAXS --numeric-ids "$tree/" "$work/mnt/"
  t1=$(now)
  umount "$work/mnt"
  python3 -c "print($t1 - $t0)"
}

declare -a amb_copy amb_total rs
for round in 1 2; do
  echo "== round $round: amibundle bundle-vol --clone-only"
  t0=$(now)
  json=$(amibundle_run)
  t1=$(now)
  amb_copy+=("$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["phase_seconds"]["copy"])' "$json")")
  amb_total+=("$(python3 -c "print($t1 - $t0)")")
  size=$(stat -c %s "$work/amb.img")
  echo "== round $round: rsync -aHAXS into a $size-byte ext4 image"
  rs+=("$(rsync_run "$size")")
done
echo "$json" | python3 -c 'import json,sys; j=json.load(sys.stdin); print("amibundle image:", j["files"], "files,", j["bytes_copied"], "bytes copied; phases:", j["phase_seconds"])'

best() { python3 -c "print(min(float(x) for x in '$*'.split()))"; }
c=$(best "${amb_copy[@]}"); t=$(best "${amb_total[@]}"); r=$(best "${rs[@]}")
echo
echo "== results ($(nproc) cores; best of 2; page cache warm)"
echo "amibundle copy phase:       ${amb_copy[*]} s -> $c s"
echo "amibundle whole clone-only: ${amb_total[*]} s -> $t s (sizing walk, filter scan, mkfs, copy, unmount)"
echo "rsync -aHAXS copy:          ${rs[*]} s -> $r s"
python3 -c "print(f'copy phase: amibundle is {$r/$c:.2f}x rsync (target >= 1.0, stretch 1.5); whole clone-only vs rsync copy alone: {$r/$t:.2f}x')"
