//! `to-ebs`'s Nitro boot check on real images: a partitioned disk whose ext4 filesystem holds a
//! Debian-like tree (GRUB's configuration, a kernel, an initramfs that is a real compressed cpio
//! archive, depmod's lists, fstab). Built for Xen only (xen-blkfront, no nvme, root=/dev/xvda1),
//! it is refused before anything is sent, each problem named with its fix; with nvme built in,
//! ena a module and root=UUID it passes and is registered. (The VM boot test boots such an
//! image from an NVMe disk: scripts/boot-test.sh, +ebs.)

use std::fs;
use std::path::Path;
use std::process::Command;

use crate::cloud::Cloud;
use crate::ebs::start_snapshots;
use crate::support::*;

const VERSION: &str = "6.1.0-28-cloud-amd64";
const UUID: &str = "5d0c8f0e-7b7a-4c61-9a52-2f1e3c4b5a69";

fn write(root: &Path, rel: &str, text: &[u8]) {
    let p = root.join(rel);
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(p, text).unwrap();
}

fn sh(script: &str) {
    let out = Command::new("sh").arg("-c").arg(script).output().unwrap();
    assert!(
        out.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A 64 MiB MBR disk with boot code and one ext4 partition (UUID [`UUID`]) at 1 MiB holding
/// [`tree`].
fn disk(path: &Path, builtin: &[&str], modules: &[&str], root: &str) {
    let tree = tree(builtin, modules, root);
    let img = path.display();
    sh(&format!(
        "truncate -s 64M {img} && echo 'start=2048, type=83, bootable' | sfdisk -q {img} && \
         mkfs.ext4 -q -F -U {UUID} -E offset=1048576 -d {} {img} 63M && \
         printf '\\353\\143\\220' | dd of={img} conv=notrunc status=none",
        tree.path().display()
    ));
}

/// A tree whose kernel has `builtin` built in and `modules` as modules (the initramfs carries
/// the modules), booting `root=ROOT`.
fn tree(builtin: &[&str], modules: &[&str], root: &str) -> tempfile::TempDir {
    let tree = tempfile::tempdir().unwrap();
    let t = tree.path();
    write(
        t,
        "boot/grub/grub.cfg",
        format!(
            "set default=0\nmenuentry 'Debian' {{\n\tlinux /boot/vmlinuz-{VERSION} root={root} ro console=ttyS0\n\tinitrd /boot/initrd.img-{VERSION}\n}}\n"
        )
        .as_bytes(),
    );
    write(t, &format!("boot/vmlinuz-{VERSION}"), b"kernel");
    let ko = |m: &&str| format!("kernel/drivers/{m}.ko");
    let initrd = tempfile::tempdir().unwrap();
    for m in modules {
        write(
            initrd.path(),
            &format!("usr/lib/modules/{VERSION}/{}", ko(m)),
            b"module",
        );
    }
    sh(&format!(
        "cd {} && find . | cpio -o -H newc --quiet | gzip -c > {}/boot/initrd.img-{VERSION}",
        initrd.path().display(),
        t.display()
    ));
    let dep: String = modules.iter().map(|m| format!("{}:\n", ko(m))).collect();
    write(
        t,
        &format!("lib/modules/{VERSION}/modules.dep"),
        dep.as_bytes(),
    );
    let builtin: String = builtin.iter().map(|m| format!("{}\n", ko(m))).collect();
    write(
        t,
        &format!("lib/modules/{VERSION}/modules.builtin"),
        builtin.as_bytes(),
    );
    write(
        t,
        "etc/fstab",
        format!("{} / ext4 rw 0 1\n", root.replace("root=", "")).as_bytes(),
    );
    tree
}

fn to_ebs(cloud: &Cloud, image: &Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec![
        "to-ebs",
        "-i",
        image.to_str().unwrap(),
        "--arch",
        "x86_64",
        "--region",
        "us-east-1",
    ];
    args.extend(extra);
    cloud.cmd(&args).output().unwrap()
}

#[test]
#[ignore = "needs root: loop devices, mounts, namespaces (scripts/test.sh runs it as root)"]
fn a_xen_only_image_is_refused_for_nitro_before_anything_is_sent_and_a_nitro_ready_one_registers() {
    assert!(nix::unistd::geteuid().is_root(), "needs root");
    let cloud = Cloud::start();
    let dir = tempfile::tempdir().unwrap();

    let xen = dir.path().join("xen.img");
    disk(
        &xen,
        &[],
        &["block/xen-blkfront", "net/xen-netfront"],
        "/dev/xvda1",
    );
    let out = to_ebs(&cloud, &xen, &["-n", "xen-only", "--ena-support"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    for needle in [
        "no-nvme",
        "no-ena",
        "root-device-name",
        "fstab-device-name",
        "root=UUID=",
        "Nitro",
        "--allow-unbootable",
        "nothing was sent",
    ] {
        assert!(err.contains(needle), "{needle} missing: {err}");
    }
    assert_eq!(start_snapshots(&cloud), 0, "a snapshot was started");
    assert!(cloud.proxy.exchanges().is_empty(), "a request was sent");

    let nitro = dir.path().join("nitro.img");
    disk(
        &nitro,
        &["nvme/host/nvme"],
        &["net/ethernet/amazon/ena/ena"],
        &format!("UUID={UUID}"),
    );
    let out = to_ebs(
        &cloud,
        &nitro,
        &["-n", "nitro-ready", "--ena-support", "--json"],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("Nitro boot check passed"), "{err}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        report["ami_id"].as_str().unwrap().starts_with("ami-"),
        "{report}"
    );

    // A Xen-only image registers with --allow-unbootable, its problems shown as warnings.
    let out = to_ebs(
        &cloud,
        &xen,
        &["-n", "xen-anyway", "--allow-unbootable", "--no-wait"],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("no-nvme"), "{err}");

    // A bundle of the Xen-only image: without --check-boot it cannot be checked (said so);
    // with it, the image is decrypted into --work-dir, checked and refused, nothing sent.
    let keys = Keys::new();
    let manifest = crate::ebs::bundle_into(
        &cloud,
        &keys,
        &xen,
        &dir.path().join("bundle"),
        &["-r", "x86_64"],
    );
    let work = dir.path().join("work");
    fs::create_dir(&work).unwrap();
    let starts = start_snapshots(&cloud);
    let err = run_err(&mut cloud.cmd(&[
        "to-ebs",
        "-m",
        manifest.to_str().unwrap(),
        "-k",
        keys.user_key().to_str().unwrap(),
        "-n",
        "xen-bundle",
        "--check-boot",
        "--work-dir",
        work.to_str().unwrap(),
        "--region",
        "us-east-1",
    ]));
    assert!(
        err.contains("no-nvme") && err.contains("nothing was sent"),
        "{err}"
    );
    assert_eq!(start_snapshots(&cloud), starts, "a snapshot was started");
    assert_eq!(
        fs::read_dir(&work).unwrap().count(),
        0,
        "the work dir was not cleaned"
    );
}

#[test]
#[ignore = "needs root: loop devices, mounts, namespaces (scripts/test.sh runs it as root)"]
fn a_bare_filesystem_is_refused_naming_partition_which_sends_a_partitioned_copy_with_grub() {
    assert!(nix::unistd::geteuid().is_root(), "needs root");
    let grub = Path::new("/usr/lib/grub/i386-pc");
    assert!(
        grub.join("boot.img").is_file(),
        "GRUB 2 for BIOS is needed (grub-pc-bin; scripts/install-deps.sh installs it)"
    );
    let cloud = Cloud::start();
    let dir = tempfile::tempdir().unwrap();
    // The classic paravirtual layout: one filesystem, no table, with GRUB 2's modules inside.
    let tree = tree(
        &["nvme/host/nvme"],
        &["net/ethernet/amazon/ena/ena"],
        &format!("UUID={UUID}"),
    );
    fs::create_dir_all(tree.path().join("usr/lib/grub")).unwrap();
    sh(&format!(
        "cp -a {} {}/usr/lib/grub/",
        grub.display(),
        tree.path().display()
    ));
    let bare = dir.path().join("rootfs.img");
    sh(&format!(
        "mkfs.ext4 -q -F -U {UUID} -L bare-root -d {} {} 96M",
        tree.path().display(),
        bare.display()
    ));

    let out = to_ebs(&cloud, &bare, &["-n", "bare", "--ena-support"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("bare filesystem") && err.contains("--partition"),
        "{err}"
    );
    assert!(cloud.proxy.exchanges().is_empty(), "a request was sent");

    let work = dir.path().join("work");
    fs::create_dir(&work).unwrap();
    let out = to_ebs(
        &cloud,
        &bare,
        &[
            "-n",
            "bare-partitioned",
            "--ena-support",
            "--partition",
            "--work-dir",
            work.to_str().unwrap(),
            "--json",
        ],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        report["ami_id"].as_str().unwrap().starts_with("ami-"),
        "{report}"
    );
    assert_eq!(
        fs::read_dir(&work).unwrap().count(),
        0,
        "the copy was not removed"
    );

    // The snapshot is a disk: an MBR with GRUB's boot code and one bootable Linux partition
    // holding the same filesystem (its UUID and files), GRUB's core image in place.
    let snapshot = report["snapshot_id"].as_str().unwrap();
    let size = report["volume_size_gib"].as_u64().unwrap() as usize;
    let disk = dir.path().join("snapshot.img");
    let mut f = fs::File::create(&disk).unwrap();
    f.set_len((size << 30) as u64).unwrap();
    for (index, bytes) in crate::ebs::snapshot_blocks(&cloud, snapshot) {
        use std::io::{Seek, SeekFrom, Write};
        f.seek(SeekFrom::Start(index * crate::ebs::BLOCK as u64))
            .unwrap();
        f.write_all(&bytes).unwrap();
    }
    drop(f);
    let head = fs::read(&disk).unwrap()[..512].to_vec();
    let boot_img = fs::read(grub.join("boot.img")).unwrap();
    assert_eq!(
        head[..2],
        boot_img[..2],
        "GRUB's boot code is not in the boot sector"
    );
    assert_eq!(head[510..], [0x55, 0xaa]);
    assert_eq!(head[446], 0x80, "partition 1 is not active");
    assert_eq!(head[446 + 4], 0x83);
    let start = u32::from_le_bytes(head[454..458].try_into().unwrap()) as u64 * 512;
    let mnt = dir.path().join("mnt");
    fs::create_dir(&mnt).unwrap();
    sh(&format!(
        "mount -o ro,loop,offset={start} {} {}",
        disk.display(),
        mnt.display()
    ));
    let uuid = Command::new("findmnt")
        .args(["-no", "UUID"])
        .arg(&mnt)
        .output()
        .unwrap();
    let checked = (
        String::from_utf8_lossy(&uuid.stdout).trim().to_string(),
        mnt.join(format!("boot/vmlinuz-{VERSION}")).is_file(),
        mnt.join("boot/grub/i386-pc/core.img").is_file(),
    );
    sh(&format!("umount {}", mnt.display()));
    assert_eq!(checked, (UUID.to_string(), true, true));
}
