#!/usr/bin/env bash
# The VM boot test: proves that a server saved by `amibundle bundle-vol` boots, with nothing but
# its own firmware, MBR, GRUB, kernel, initramfs, fstab and systemd.
#
# For each boot style:
#  1. an "instance" disk is laid out from a cached Debian 12 root filesystem (mmdebstrap, Debian
#     packages only): its partition table, identifiers, fstab and grub.cfg in that style;
#  2. the instance is booted under QEMU (kernel and initramfs given with -kernel/-initrd, the
#     command line that its grub.cfg carries) with a second disk holding the amibundle binary and
#     throwaway keys; a unit in the guest runs `amibundle bundle-vol` of `/` onto that disk (as
#     often as --guest-runs says) and powers off;
#  3. the host unbundles the result and boots the image alone: SeaBIOS, the image's boot sector,
#     its GRUB, its kernel and initramfs, its fstab. Pass = the marker unit (after
#     local-fs.target) prints what survived on the serial console: hostname, machine-id, root
#     device, fstab mounts, SSH host key; with --generalize, machine-id and SSH host key must be
#     new instead.
# Fails fast on an initramfs ALERT, a kernel panic, a GRUB rescue prompt or emergency mode and
# shows the last console lines. Guests get no network (-nic none).
#
# The guest kernel differs from the development machines' on purpose: Debian's cloud kernel has
# partition-table parsers and the guest runs systemd-udevd, which is where the code that
# partitions and formats loop devices meets udev (docs/bootability.md).
#
# Usage: scripts/boot-test.sh [--styles LIST] [--guest-runs N] [--generalize] [--binary PATH]
#                             [--jobs N] [--work DIR] [--keep]
#   --styles      comma-separated, from: mbr-partuuid mbr-uuid gpt-partuuid gpt-label, each
#                 optionally with +generalize and/or +new-uuid (bundle-vol --new-uuid: the
#                 references to the old UUID must be rewritten) and/or +ebs (to-ebs streams the
#                 bundle into an EBS snapshot in a local moto, and the disk read back from the
#                 snapshot boots from an NVMe controller, as on Nitro) (default: the four styles
#                 and mbr-uuid+new-uuid); "ci" is mbr-partuuid+ebs,gpt-partuuid+generalize
#   --guest-runs  bundle-vol runs in a row inside each instance (default 1; every run must
#                 succeed; the runs before the last make the image only (--clone-only: the
#                 partitioning, formatting, mounting and GRUB that meet udev) and the last one
#                 bundles and is booted)
#   --generalize  every style with +generalize: bundle with --generalize and check that the
#                 machine-id and the SSH host key are new
#   --binary      the amibundle binary (default: target/debug/amibundle, built if missing)
#   --jobs        styles run side by side (default 1; each guest takes a core)
#   --work        work directory (default: a new directory under /var/tmp, removed at the end
#                 unless --keep or a failure)
# Environment: AMIBUNDLE_BOOT_CACHE (default /var/cache/amibundle-boot-test) keeps the root
# filesystem tarball between runs; BOOT_TEST_DEBIAN_MIRROR (default http://deb.debian.org/debian).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)

styles=all
guest_runs=1
generalize=0
binary=
work=
keep=0
jobs=1
while [[ $# -gt 0 ]]; do
    case $1 in
    --styles) styles=$2; shift 2 ;;
    --guest-runs) guest_runs=$2; shift 2 ;;
    --generalize) generalize=1; shift ;;
    --binary) binary=$2; shift 2 ;;
    --work) work=$2; shift 2 ;;
    --keep) keep=1; shift ;;
    --jobs) jobs=$2; shift 2 ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "boot-test: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
case $styles in
all) styles="mbr-partuuid mbr-uuid gpt-partuuid gpt-label mbr-uuid+new-uuid" ;;
ci) styles="mbr-partuuid+ebs gpt-partuuid+generalize" ;;
*) styles=${styles//,/ } ;;
esac
for s in $styles; do
    case ${s%%+*} in
    mbr-partuuid | mbr-uuid | gpt-partuuid | gpt-label) ;;
    *) echo "boot-test: unknown style $s" >&2; exit 2 ;;
    esac
done
[[ $guest_runs =~ ^[1-9][0-9]*$ ]] || { echo "boot-test: --guest-runs needs a number ≥ 1" >&2; exit 2; }
[[ $jobs =~ ^[1-9][0-9]*$ ]] || { echo "boot-test: --jobs needs a number ≥ 1" >&2; exit 2; }
[[ $(id -u) -eq 0 ]] || { echo "boot-test: needs root (mkfs, mounts, mmdebstrap)" >&2; exit 2; }

log() { printf 'boot-test: %s\n' "$*" >&2; }
die() { log "FAIL: $*"; exit 1; }

# --- host tools -----------------------------------------------------------------------------
missing=()
for pair in qemu-system-x86_64:qemu-system-x86 mmdebstrap:mmdebstrap sfdisk:fdisk sgdisk:gdisk \
    mkfs.ext4:e2fsprogs openssl:openssl; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair##*:}")
done
if [[ ${#missing[@]} -gt 0 ]]; then
    log "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if [[ -z $binary ]]; then
    binary=$repo/target/debug/amibundle
    [[ -x $binary ]] || cargo build --locked --bin amibundle
fi
[[ -x $binary ]] || die "no amibundle binary at $binary"

# --- the cached Debian 12 root filesystem ---------------------------------------------------
cache=${AMIBUNDLE_BOOT_CACHE:-/var/cache/amibundle-boot-test}
mirror=${BOOT_TEST_DEBIAN_MIRROR:-http://deb.debian.org/debian}
packages=linux-image-cloud-amd64,initramfs-tools,grub-pc-bin,grub2-common,systemd-sysv,udev,e2fsprogs,util-linux,kmod,libssl3,openssh-server,procps
key=$(printf '%s\n' bookworm "$packages" | sha256sum | cut -c1-16)
rootfs_tar=$cache/debian12-$key.tar
mkdir -p "$cache"
if [[ ! -s $rootfs_tar ]]; then
    log "building the Debian 12 root filesystem (mmdebstrap, about a minute)"
    started=$SECONDS
    # mmdebstrap picks the output format from the name's extension.
    partial=$cache/partial-$$.tar
    rm -rf "$cache"/partial-*.tar
    mmdebstrap --quiet --variant=minbase --include="$packages" bookworm "$partial" \
        "$mirror" >&2
    mv "$partial" "$rootfs_tar"
    log "root filesystem built in $((SECONDS - started)) s"
fi

if [[ -z $work ]]; then
    work=$(mktemp -d /var/tmp/amibundle-boot-test.XXXXXX)
fi
mkdir -p "$work"
mounted=()
cleanup() {
    local rc=$?
    pkill -f "qemu-system-x86_64.*$work" 2>/dev/null || true
    # Mounts of this run (those of parallel styles included).
    for m in "${mounted[@]}" $(findmnt -rn -o TARGET | grep -F "$work/" || true); do
        umount "$m" 2>/dev/null || true
    done
    if [[ $rc -eq 0 && $keep -eq 0 ]]; then
        rm -rf "$work"
    else
        log "work directory kept: $work"
    fi
}
trap cleanup EXIT

# --- QEMU -----------------------------------------------------------------------------------
# KVM where a guest really runs under it; nested KVM on these machines hangs before the kernel
# prints anything, so TCG unless BOOT_TEST_ACCEL says otherwise.
accel=(-accel tcg -cpu max)
if [[ ${BOOT_TEST_ACCEL:-tcg} == kvm ]]; then accel=(-accel kvm -cpu host); fi

# run_vm LOG TIMEOUT QEMU-ARGS...: runs a guest with its serial console in LOG until it powers
# off; fails fast on a boot failure seen on the console, or after TIMEOUT seconds.
run_vm() {
    local console=$1 timeout=$2
    shift 2
    : >"$console"
    qemu-system-x86_64 "${accel[@]}" -m 1536 -smp 1 -nic none -no-reboot -display none \
        -monitor none -serial "file:$console" -name "boot-test,process=boot-test-$work" "$@" &
    local pid=$! started=$SECONDS failure=
    while kill -0 "$pid" 2>/dev/null; do
        if failure=$(grep -a -m1 -o -E 'ALERT!.*|Kernel panic.*|grub rescue>|Give root password for maintenance|You are in emergency mode|error: no such device.*|error: file .* not found' "$console"); then
            kill "$pid" 2>/dev/null || true
            wait "$pid" 2>/dev/null || true
            show_console "$console"
            die "boot failure on the console: $failure"
        fi
        if ((SECONDS - started > timeout)); then
            kill "$pid" 2>/dev/null || true
            wait "$pid" 2>/dev/null || true
            show_console "$console"
            die "the guest did not power off within $timeout s"
        fi
        sleep 1
    done
    wait "$pid" || die "qemu exited with status $?"
    log "guest ran $((SECONDS - started)) s"
}

show_console() {
    log "last console lines of $1:"
    tail -n 40 "$1" | tr -d '\r' | sed 's/^/  | /' >&2
}

# fact LOG NAME: a value of the AMIBUNDLE-FACTS line the marker unit printed.
fact() {
    grep -a -m1 '^AMIBUNDLE-FACTS ' "$1" | tr -d '\r' | tr ' ' '\n' | sed -n "s/^$2=//p"
}

# --- the guest's own scripts and units ------------------------------------------------------
install_guest_files() {
    local root=$1
    install -d "$root/usr/local/sbin" "$root/etc/systemd/system/multi-user.target.wants" \
        "$root/mnt/work" "$root/mnt/scratch"
    cat >"$root/usr/local/sbin/boot-test-report" <<'EOF'
#!/bin/sh
# Prints what the boot test checks, then the marker.
mounts=ok
while read -r spec target type opts rest; do
    case $spec in ''|'#'*) continue ;; esac
    [ "$type" = swap ] && continue
    findmnt -n "$target" >/dev/null 2>&1 || mounts="missing:$target"
done < /etc/fstab
ssh=$(ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub 2>/dev/null | awk '{print $2}')
echo "AMIBUNDLE-FACTS hostname=$(hostname) machine-id=$(cat /etc/machine-id)" \
    "root=$(findmnt -n -o SOURCE /) rootmode=$(findmnt -n -o OPTIONS / | cut -d, -f1)" \
    "fsuuid=$(findmnt -n -o UUID /)" \
    "mounts=$mounts ssh=${ssh:-none} failed=$(systemctl --failed --no-legend | awk '{print $2}' | paste -sd, -)"
echo "AMIBUNDLE-BOOT-OK"
EOF
    cat >"$root/usr/local/sbin/boot-test-finish" <<'EOF'
#!/bin/sh
# On the instance (amibundle.bundle=1 on the kernel command line): runs the bundle script of
# the work disk. Then powers off, on the instance and on the booted image alike.
if grep -q 'amibundle.bundle=1' /proc/cmdline; then
    mount /dev/vdb /mnt/work
    sh /mnt/work/run.sh > /mnt/work/bundle.log 2>&1
    rc=$?
    echo "$rc" > /mnt/work/status
    tail -n 5 /mnt/work/bundle.log
    echo "AMIBUNDLE-BUNDLE-EXIT $rc"
    umount /mnt/work
fi
systemctl poweroff --no-block
EOF
    chmod 0755 "$root/usr/local/sbin/boot-test-report" "$root/usr/local/sbin/boot-test-finish"
    cat >"$root/etc/systemd/system/boot-test-marker.service" <<'EOF'
[Unit]
Description=amibundle boot test: report and marker
After=local-fs.target ssh.service systemd-machine-id-commit.service
[Service]
Type=oneshot
ExecStart=/usr/local/sbin/boot-test-report
StandardOutput=tty
TTYPath=/dev/ttyS0
[Install]
WantedBy=multi-user.target
EOF
    cat >"$root/etc/systemd/system/boot-test-finish.service" <<'EOF'
[Unit]
Description=amibundle boot test: bundle on the instance, then power off
After=boot-test-marker.service multi-user.target
[Service]
Type=oneshot
ExecStart=/usr/local/sbin/boot-test-finish
StandardOutput=tty
TTYPath=/dev/ttyS0
TimeoutStartSec=infinity
[Install]
WantedBy=multi-user.target
EOF
    ln -sf ../boot-test-marker.service "$root/etc/systemd/system/multi-user.target.wants/"
    ln -sf ../boot-test-finish.service "$root/etc/systemd/system/multi-user.target.wants/"
    # No getty on the serial console: the marker owns it.
    ln -sf /dev/null "$root/etc/systemd/system/serial-getty@ttyS0.service"
}

# --- one style --------------------------------------------------------------------------------
disk_mib=2048
# The +ebs legs: a private moto emulator (ebs_start / ebs_stop), and `to-ebs` with the given
# arguments registering an AMI there, its snapshot read back through the EBS direct APIs
# (ListSnapshotBlocks, GetSnapshotBlock) into a disk of the volume's size, sparse where the
# snapshot has no block (ebs_to_disk).
ebs_start() {
    local t=$1 port
    ebs_moto_server=$("$repo/scripts/setup-emulator.sh")
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    "$ebs_moto_server" -H 127.0.0.1 -p "$port" >"$t/moto.log" 2>&1 &
    ebs_moto_pid=$!
    ebs_endpoint=http://127.0.0.1:$port
    for _ in $(seq 100); do curl -sf "$ebs_endpoint/moto-api/" >/dev/null 2>&1 && break; sleep 0.2; done
    ebs_env=(AWS_ACCESS_KEY_ID=bt AWS_SECRET_ACCESS_KEY=bt AWS_EC2_METADATA_DISABLED=true
        AWS_CONFIG_FILE=/dev/null AWS_SHARED_CREDENTIALS_FILE=/dev/null "XDG_STATE_HOME=$t/state")
}

ebs_stop() {
    kill "$ebs_moto_pid" 2>/dev/null || true
    wait "$ebs_moto_pid" 2>/dev/null || true
}

# ebs_to_disk STYLE DIR NAME OUT TO-EBS-ARGS...
ebs_to_disk() {
    local style=$1 t=$2 name=$3 out=$4
    shift 4
    if ! env "${ebs_env[@]}" "$binary" to-ebs "$@" -n "bt-$style-$name" --ena-support \
        --endpoint-url "$ebs_endpoint" --region us-east-1 --json \
        >"$t/to-ebs-$name.json" 2>"$t/to-ebs-$name.log"; then
        sed 's/^/  | /' "$t/to-ebs-$name.log" >&2
        ebs_stop
        die "$style: to-ebs ($name) failed"
    fi
    local snapshot
    snapshot=$(python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); assert r["ami_id"].startswith("ami-"); print(r["snapshot_id"])' "$t/to-ebs-$name.json") ||
        { ebs_stop; die "$style: to-ebs ($name) registered no AMI: $(cat "$t/to-ebs-$name.json")"; }
    if ! env "${ebs_env[@]}" "$(dirname "$ebs_moto_server")/python" - "$ebs_endpoint" "$snapshot" "$out" <<'PY'; then
import sys, boto3
endpoint, snapshot, out = sys.argv[1:4]
ebs = boto3.client("ebs", endpoint_url=endpoint, region_name="us-east-1")
listing = ebs.list_snapshot_blocks(SnapshotId=snapshot)
block = 512 * 1024  # moto reports BlockSize 512; EBS's blocks are 512 KiB
with open(out, "wb") as f:
    f.truncate(listing["VolumeSize"] << 30)
    for b in listing["Blocks"]:
        got = ebs.get_snapshot_block(SnapshotId=snapshot, BlockIndex=b["BlockIndex"],
                                     BlockToken=b["BlockToken"])
        data = got["BlockData"].read()
        assert len(data) == block, (b["BlockIndex"], len(data))
        f.seek(b["BlockIndex"] * block)
        f.write(data)
PY
        ebs_stop
        die "$style: reading the snapshot of to-ebs ($name) back failed"
    fi
}

# ebs_boot STYLE DIR DISK WHAT REFERENCE-CONSOLE: boots DISK from an NVMe controller, as an EBS
# root volume is seen on Nitro (SeaBIOS boots NVMe; the kernel sees /dev/nvme0n1), and compares
# what survived with the reference boot.
ebs_boot() {
    local style=$1 t=$2 disk=$3 what=$4 ref=$5 k
    local console=$t/$what.console
    log "$style: booting $what from NVMe ($(du -h --apparent-size "$disk" | cut -f1), $(du -h "$disk" | cut -f1) written)"
    run_vm "$console" 600 -drive "file=$disk,format=raw,if=none,id=ebs" \
        -device "nvme,drive=ebs,serial=amibundle-ebs"
    grep -a -q '^AMIBUNDLE-BOOT-OK' "$console" ||
        { show_console "$console"; ebs_stop; die "$style: $what did not reach its marker"; }
    for k in hostname rootmode mounts failed fsuuid machine-id; do
        [[ $(fact "$ref" $k) == "$(fact "$console" $k)" ]] ||
            { ebs_stop; die "$style: $what: $k differs: image '$(fact "$ref" $k)', $what '$(fact "$console" $k)'"; }
    done
    [[ $(fact "$console" root) == *nvme0n1* ]] ||
        { ebs_stop; die "$style: $what: the root is $(fact "$console" root), not on the NVMe disk"; }
    rm -f "$disk"
}

run_style() {
    local style=${1%%+*} t=$work/$1 generalize=$generalize new_uuid=0 ebs=0
    [[ $1 == *+generalize* ]] && generalize=1
    [[ $1 == *+new-uuid* ]] && new_uuid=1
    [[ $1 == *+ebs* ]] && ebs=1
    mkdir -p "$t"
    log "=== $1 ==="
    local started=$SECONDS

    # Identifiers of the instance, fixed per style so the checks can name them.
    local mbr_sig=1234abcd fs_uuid label=bt-root disk_guid root_guid bios_guid
    fs_uuid=$(cat /proc/sys/kernel/random/uuid)
    disk_guid=$(cat /proc/sys/kernel/random/uuid)
    root_guid=$(cat /proc/sys/kernel/random/uuid)
    bios_guid=$(cat /proc/sys/kernel/random/uuid)
    local machine_id
    machine_id=$(cat /proc/sys/kernel/random/uuid | tr -d -)

    # The root filesystem of the instance.
    local root=$t/rootfs
    mkdir -p "$root"
    tar -xf "$rootfs_tar" -C "$root"
    local kver
    kver=$(basename "$(ls -d "$root"/lib/modules/*/ | head -n1)")
    [[ -f $root/boot/vmlinuz-$kver && -f $root/boot/initrd.img-$kver ]] ||
        die "the root filesystem has no kernel and initramfs for $kver"
    echo "bt-$style" >"$root/etc/hostname"
    echo "$machine_id" >"$root/etc/machine-id"
    install_guest_files "$root"

    # Partition table and where the filesystem goes. The GPT style is laid out like Debian's
    # cloud images: root is partition 1 after a BIOS boot partition numbered 14.
    local disk=$t/instance.raw root_spec search start_mib=1 part_kind
    truncate -s "${disk_mib}M" "$disk"
    case $style in
    mbr-*)
        part_kind=msdos
        printf 'label: dos\nlabel-id: 0x%s\nstart=2048, type=83, bootable\n' "$mbr_sig" |
            sfdisk -q "$disk"
        ;;
    gpt-*)
        part_kind=gpt
        start_mib=2
        sgdisk -U "$disk_guid" \
            -n 14:2048:4095 -t 14:EF02 -u 14:"$bios_guid" -c 14:bios \
            -n 1:4096:0 -t 1:8300 -u 1:"$root_guid" -c 1:root \
            -A 1:set:2 "$disk" >/dev/null
        ;;
    esac
    # The table must really be there (sgdisk, for one, exits 0 having written nothing when
    # given an option it does not know).
    local ptable
    ptable=$(sfdisk --json "$disk")
    grep -q -i "\"id\": \"\(0x$mbr_sig\|$disk_guid\)\"" <<<"$ptable" ||
        die "$style: the instance disk's table is not as laid out: $ptable"
    case $style in
    mbr-partuuid) root_spec=PARTUUID=$mbr_sig-01 ;;
    gpt-partuuid) root_spec=PARTUUID=$root_guid ;;
    *-uuid) root_spec=UUID=$fs_uuid ;;
    *-label) root_spec=LABEL=$label ;;
    esac
    case $style in
    *-label) search="search --no-floppy --label --set=root $label" ;;
    *) search="search --no-floppy --fs-uuid --set=root $fs_uuid" ;;
    esac
    local cmdline="root=$root_spec ro console=ttyS0,115200 net.ifnames=0 systemd.show_status=1"
    cat >"$root/etc/fstab" <<EOF
# <file system> <mount point> <type> <options> <dump> <pass>
$root_spec / ext4 rw,errors=remount-ro 0 1
tmpfs /mnt/scratch tmpfs nodev,nosuid,size=16m 0 0
EOF
    install -d "$root/boot/grub"
    cat >"$root/boot/grub/grub.cfg" <<EOF
set timeout=0
serial --unit=0 --speed=115200
terminal_input serial console
terminal_output serial console
insmod part_$part_kind
insmod ext2
$search
menuentry 'Debian GNU/Linux' {
    $search
    echo 'Loading Linux $kver ...'
    linux /boot/vmlinuz-$kver $cmdline
    initrd /boot/initrd.img-$kver
}
EOF
    # The filesystem, made straight into the partition of the disk file.
    local part_mib=$((disk_mib - start_mib - 1))
    mkfs.ext4 -q -F -b 4096 -I 256 -U "$fs_uuid" -L "$label" -E "offset=$((start_mib << 20))" \
        -d "$root" "$disk" "${part_mib}M"
    cp "$root/boot/vmlinuz-$kver" "$root/boot/initrd.img-$kver" "$t/"
    rm -rf "$root"

    # The work disk: the binary, throwaway keys, the script the guest runs.
    local wdir=$t/workdisk
    mkdir -p "$wdir/keys" "$wdir/out"
    objcopy --strip-debug "$binary" "$wdir/amibundle" 2>/dev/null || cp "$binary" "$wdir/amibundle"
    openssl req -x509 -newkey rsa:2048 -nodes -keyout "$wdir/keys/user-key.pem" \
        -out "$wdir/keys/user-cert.pem" -days 2 -subj /CN=boot-test-user 2>/dev/null
    openssl req -x509 -newkey rsa:2048 -nodes -keyout "$wdir/keys/ec2-key.pem" \
        -out "$wdir/keys/ec2-cert.pem" -days 2 -subj /CN=boot-test-ec2 2>/dev/null
    chmod 0600 "$wdir"/keys/*
    local extra=
    [[ $generalize -eq 1 ]] && extra=--generalize
    [[ $new_uuid -eq 1 ]] && extra="$extra --new-uuid"
    cat >"$wdir/run.sh" <<EOF
#!/bin/sh
# Runs inside the instance: bundle-vol of / onto this disk, $guest_runs time(s) in a row.
set -u
w=/mnt/work
i=1
while [ \$i -le $guest_runs ]; do
    rm -rf \$w/out && mkdir \$w/out
    start=\$(date +%s)
    echo "--- bundle-vol run \$i of $guest_runs"
    if [ \$i -lt $guest_runs ]; then
        \$w/amibundle bundle-vol -v / -d \$w/out -p saved --clone-only --no-inherit $extra || exit \$?
    else
        \$w/amibundle bundle-vol -v / -d \$w/out -p saved -r x86_64 -u 123456789012 \\
            --no-inherit --batch -k \$w/keys/user-key.pem -c \$w/keys/user-cert.pem \\
            --ec2cert \$w/keys/ec2-cert.pem --unpinned-ec2cert $extra || exit \$?
    fi
    echo "--- run \$i took \$((\$(date +%s) - start)) s"
    i=\$((i + 1))
done
EOF
    local work_disk=$t/work.raw
    truncate -s 6G "$work_disk"
    mkfs.ext4 -q -F -L bt-work -d "$wdir" "$work_disk"
    rm -rf "$wdir"

    # 2. The instance bundles itself.
    log "$style: booting the instance; bundle-vol runs inside ($guest_runs run(s))"
    run_vm "$t/instance.console" $((600 + 300 * guest_runs)) \
        -kernel "$t/vmlinuz-$kver" -initrd "$t/initrd.img-$kver" \
        -append "$cmdline amibundle.bundle=1" \
        -drive "file=$disk,format=raw,if=virtio" -drive "file=$work_disk,format=raw,if=virtio"
    grep -a -q '^AMIBUNDLE-BOOT-OK' "$t/instance.console" ||
        { show_console "$t/instance.console"; die "$style: the instance itself did not reach its marker"; }
    local wm=$t/work-mnt
    mkdir -p "$wm"
    mount -o loop,ro "$work_disk" "$wm"
    mounted+=("$wm")
    local status
    status=$(cat "$wm/status" 2>/dev/null || echo none)
    cp "$wm/bundle.log" "$t/bundle.log" 2>/dev/null || true
    if [[ $status != 0 ]]; then
        log "$style: bundle-vol in the guest failed (exit $status); its output:"
        tail -n 30 "$t/bundle.log" | sed 's/^/  | /' >&2
        die "$style: bundle-vol failed in the guest"
    fi
    grep -E '^--- run .* took' "$t/bundle.log" | sed "s/^/boot-test: $style: /" >&2 || true
    # The boot check ran inside the guest, on a real Debian, and found nothing.
    grep -q 'boot check: no problems' "$t/bundle.log" ||
        die "$style: bundle-vol's boot check did not pass in the guest (see $t/bundle.log)"
    grep -E -i 'warn' "$t/bundle.log" | sed "s/^/boot-test: $style: guest said: /" >&2 || true

    # 3. Unbundle on the host and boot the image by its own firmware path.
    if [[ $ebs -eq 1 ]]; then
        # The bundle streamed into a snapshot, nothing written locally.
        ebs_start "$t"
        log "$style: to-ebs: the bundle streamed into an EBS snapshot (moto on $ebs_endpoint)"
        ebs_to_disk "$style" "$t" bundle "$t/ebs.raw" \
            -m "$wm/out/saved.manifest.xml" -k "$wm/keys/user-key.pem"
    fi
    mkdir -p "$t/unbundled"
    "$binary" unbundle -m "$wm/out/saved.manifest.xml" -k "$wm/keys/user-key.pem" \
        -d "$t/unbundled" >&2 || die "$style: unbundling the saved bundle failed"
    umount "$wm"
    mounted=("${mounted[@]/$wm/}")
    rm -f "$work_disk"
    local image=$t/unbundled/saved
    [[ -f $image ]] || die "$style: unbundle wrote no image at $image"
    "$binary" check-image "$image" --work-dir "$t" >"$t/check-image.txt" 2>&1 ||
        { sed 's/^/  | /' "$t/check-image.txt" >&2; die "$style: check-image refuses the saved image"; }
    log "$style: booting the saved image: firmware, its MBR, its GRUB"
    run_vm "$t/image.console" 600 -drive "file=$image,format=raw,if=virtio"
    grep -a -q '^AMIBUNDLE-BOOT-OK' "$t/image.console" ||
        { show_console "$t/image.console"; die "$style: the saved image did not reach its marker"; }

    # 4. What survived, what must not have.
    local c1=$t/instance.console c2=$t/image.console k
    for k in hostname rootmode mounts failed; do
        [[ $(fact "$c1" $k) == "$(fact "$c2" $k)" ]] ||
            die "$style: $k differs: instance '$(fact "$c1" $k)', image '$(fact "$c2" $k)'"
    done
    [[ $(fact "$c2" mounts) == ok ]] || die "$style: fstab mounts: $(fact "$c2" mounts)"
    [[ $(fact "$c2" rootmode) == rw ]] || die "$style: root is mounted $(fact "$c2" rootmode)"
    if [[ $new_uuid -eq 1 ]]; then
        [[ $(fact "$c2" fsuuid) != "$(fact "$c1" fsuuid)" ]] ||
            die "$style: --new-uuid kept the filesystem UUID $(fact "$c1" fsuuid)"
        grep -q 'rewrote a reference' "$t/bundle.log" ||
            die "$style: --new-uuid rewrote no reference (see $t/bundle.log)"
    else
        [[ $(fact "$c2" fsuuid) == "$(fact "$c1" fsuuid)" ]] ||
            die "$style: the filesystem UUID changed: $(fact "$c1" fsuuid) → $(fact "$c2" fsuuid)"
    fi
    if [[ $generalize -eq 1 ]]; then
        [[ $(fact "$c2" machine-id) != "$(fact "$c1" machine-id)" ]] ||
            die "$style: --generalize kept the machine-id"
        [[ $(fact "$c2" ssh) != none && $(fact "$c2" ssh) != "$(fact "$c1" ssh)" ]] ||
            die "$style: --generalize: SSH host key '$(fact "$c2" ssh)' (instance '$(fact "$c1" ssh)')"
    else
        for k in machine-id ssh; do
            [[ $(fact "$c1" $k) == "$(fact "$c2" $k)" ]] ||
                die "$style: $k differs: instance '$(fact "$c1" $k)', image '$(fact "$c2" $k)'"
        done
    fi
    # 5. +ebs: the disk to-ebs put into the snapshot boots from an NVMe controller, as an
    # EBS root volume does on Nitro; so does a partitioned copy of the image's root filesystem
    # alone (the classic paravirtual layout), made by to-ebs --partition.
    if [[ $ebs -eq 1 ]]; then
        "$binary" check-image --platform nitro "$image" --work-dir "$t" >"$t/check-nitro.txt" 2>&1 ||
            { sed 's/^/  | /' "$t/check-nitro.txt" >&2; ebs_stop; die "$style: check-image --platform nitro refuses the saved image"; }
        ebs_boot "$style" "$t" "$t/ebs.raw" ebs-bundle "$c2"
        local part_start part_size
        read -r part_start part_size < <(sfdisk -J "$image" | python3 -c \
            'import json,sys; p=json.load(sys.stdin)["partitiontable"]["partitions"][0]; print(p["start"], p["size"])')
        dd if="$image" of="$t/bare.img" bs=512 skip="$part_start" count="$part_size" \
            conv=sparse status=none
        log "$style: to-ebs --partition: the root filesystem alone, as a partitioned copy"
        ebs_to_disk "$style" "$t" bare "$t/bare-ebs.raw" -i "$t/bare.img" --partition \
            --work-dir "$t"
        rm -f "$t/bare.img"
        ebs_boot "$style" "$t" "$t/bare-ebs.raw" ebs-partitioned "$c2"
        ebs_stop
    fi
    log "$style: PASS in $((SECONDS - started)) s (root $(fact "$c2" root), hostname $(fact "$c2" hostname))"
    rm -rf "$t/unbundled" "$disk"
}

total=$SECONDS
passed=0
if [[ $jobs -le 1 ]]; then
    for s in $styles; do
        run_style "$s"
        passed=$((passed + 1))
    done
else
    # Styles side by side, each guest on a core of its own; each one's log is shown when it
    # ends.
    pids=() names=()
    for s in $styles; do
        while [[ $(jobs -rp | wc -l) -ge $jobs ]]; do sleep 1; done
        mkdir -p "$work/$s"
        (run_style "$s") >"$work/$s.log" 2>&1 &
        pids+=($!) names+=("$s")
    done
    failed=()
    for i in "${!pids[@]}"; do
        if wait "${pids[$i]}"; then
            passed=$((passed + 1))
        else
            failed+=("${names[$i]}")
        fi
        sed "s/^/[${names[$i]}] /" "$work/${names[$i]}.log" >&2
    done
    [[ ${#failed[@]} -eq 0 ]] || die "style(s) failed: ${failed[*]}"
fi
log "all $passed style(s) passed in $((SECONDS - total)) s"
