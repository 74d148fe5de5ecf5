#!/usr/bin/env bash
# Installs the Debian packages the build and the tests need, if any is missing:
# pkg-config + libssl-dev (openssl crate), and the standard tools the tests use as an
# independent decoder and image maker (openssl, gzip, GNU tar, e2fsprogs, diffutils), and the
# bundle-vol tests' tools for a source tree (setcap, setfacl, losetup).
# Partitioned images: sfdisk (fdisk) and sgdisk (gdisk) read the tables back in the tests,
# partx adds a loop device's partitions, grub-install (grub2-common) with GRUB 2 for BIOS
# (grub-pc-bin) installs the bootloader, and GRUB finds loop partitions through udevadm (udev).
# groff (groff-base) checks the generated man pages. The boot check's tests make initramfs
# images with cpio, zstd and xz (xz-utils) as initramfs-tools and dracut do.
set -euo pipefail
missing=()
for pair in pkg-config:pkg-config openssl:openssl gzip:gzip tar:tar mkfs.ext4:e2fsprogs \
            debugfs:e2fsprogs dumpe2fs:e2fsprogs blkid:util-linux findmnt:util-linux \
            cmp:diffutils sha1sum:coreutils curl:curl losetup:mount setcap:libcap2-bin \
            setfacl:acl; do
  command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair##*:}")
done
command -v groff >/dev/null 2>&1 || missing+=(groff-base)
dpkg -s libssl-dev >/dev/null 2>&1 || missing+=(libssl-dev)
# The AWS SDK's HTTPS client trusts the system's CA certificates (amibundle refuses to start a
# cloud command without any).
dpkg -s ca-certificates >/dev/null 2>&1 || missing+=(ca-certificates)
for pair in sfdisk:fdisk sgdisk:gdisk partx:util-linux grub-install:grub2-common udevadm:udev \
            cpio:cpio zstd:zstd xz:xz-utils; do
  command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair##*:}")
done
[ -f /usr/lib/grub/i386-pc/kernel.img ] || missing+=(grub-pc-bin)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "missing packages: ${missing[*]} (run as root or install them)" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${missing[@]}" >/dev/null
fi
