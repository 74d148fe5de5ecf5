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

/// A 64 MiB MBR disk with boot code and one ext4 partition (UUID [`UUID`]) at 1 MiB holding a
/// tree whose kernel has `builtin` built in and `modules` as modules (the initramfs carries
/// the modules), booting `root=ROOT`.
fn disk(path: &Path, builtin: &[&str], modules: &[&str], root: &str) {
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
    let img = path.display();
    sh(&format!(
        "truncate -s 64M {img} && echo 'start=2048, type=83, bootable' | sfdisk -q {img} && \
         mkfs.ext4 -q -F -U {UUID} -E offset=1048576 -d {} {img} 63M && \
         printf '\\353\\143\\220' | dd of={img} conv=notrunc status=none",
        t.display()
    ));
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
    let out_dir = dir.path().join("bundle");
    fs::create_dir(&out_dir).unwrap();
    run_ok(
        amibundle(cloud.home.path())
            .args(["bundle-image", "-i"])
            .arg(&xen)
            .args(["-u", "123456789012", "-r", "x86_64", "-d"])
            .arg(&out_dir)
            .args(keys.bundle_args()),
    );
    let work = dir.path().join("work");
    fs::create_dir(&work).unwrap();
    let starts = start_snapshots(&cloud);
    let err = run_err(&mut cloud.cmd(&[
        "to-ebs",
        "-m",
        out_dir.join("xen.img.manifest.xml").to_str().unwrap(),
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
