//! Each defect is made on purpose in an otherwise bootable tree laid out like Debian's cloud
//! images (the VM boot test, `scripts/boot-test.sh`, runs the check on a real one); the
//! initramfs images are real cpio archives compressed by the real tools.

use super::initramfs::tests::{compress, cpio};
use super::*;
use std::os::unix::fs::symlink;

const VERSION: &str = "6.1.0-28-cloud-amd64";
const UUID: &str = "0f3e4c1a-1b2c-4d5e-8f90-123456789abc";

fn write(root: &Path, rel: &str, text: &[u8]) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, text).unwrap();
}

/// An initramfs of the given module file names, compressed with `compressor`.
fn initrd(modules: &[&str], compressor: &[&str]) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let files: Vec<String> = modules
        .iter()
        .map(|m| format!("usr/lib/modules/{VERSION}/kernel/drivers/{m}"))
        .collect();
    let files: Vec<&str> = files.iter().map(String::as_str).collect();
    compress(compressor, &cpio(dir.path(), &files))
}

fn disk() -> DiskFacts {
    DiskFacts {
        style: PartitionStyle::Mbr,
        boot_code: true,
        root: RootFs {
            uuid: Some(UUID.into()),
            label: Some("cloudimg-rootfs".into()),
            partuuid: Some("1234abcd-01".into()),
            partlabel: None,
            fs_type: "ext4".into(),
        },
    }
}

/// A tree that boots on Xen: GRUB's configuration, the kernel, an initramfs with
/// xen-blkfront, the modules, fstab.
fn good_tree(root: &Path) {
    write(
        root,
        "boot/grub/grub.cfg",
        format!(
            "set default=\"0\"\n\
             search --no-floppy --fs-uuid --set=root {UUID}\n\
             menuentry 'Debian GNU/Linux' --class debian {{\n\
             \tload_video\n\
             \tif [ x$grub_platform = xxen ]; then insmod xzio; fi\n\
             \tlinux\t/boot/vmlinuz-{VERSION} root=PARTUUID=1234abcd-01 ro console=tty0 console=ttyS0,115200\n\
             \tinitrd\t/boot/initrd.img-{VERSION}\n\
             }}\n\
             submenu 'Advanced options' {{\n\
             \tmenuentry 'old' {{\n\t\tlinux /boot/vmlinuz-5.10 root=/dev/nvme0n1p1\n\t}}\n\
             }}\n"
        )
        .as_bytes(),
    );
    write(root, &format!("boot/vmlinuz-{VERSION}"), b"kernel");
    write(
        root,
        &format!("boot/initrd.img-{VERSION}"),
        &initrd(
            &["block/xen-blkfront.ko", "net/xen-netfront.ko"],
            &["zstd", "-q", "-c"],
        ),
    );
    write(
        root,
        &format!("lib/modules/{VERSION}/modules.dep"),
        b"kernel/drivers/block/xen-blkfront.ko:\nkernel/drivers/net/xen-netfront.ko:\nkernel/drivers/net/ethernet/amazon/ena/ena.ko:\n",
    );
    write(
        root,
        &format!("lib/modules/{VERSION}/modules.builtin"),
        b"kernel/fs/ext4/ext4.ko\n",
    );
    std::fs::create_dir_all(root.join("etc/initramfs-tools")).unwrap();
    write(
        root,
        "etc/fstab",
        b"PARTUUID=1234abcd-01 / ext4 rw 0 1\nUUID=AAAA-BBBB /boot/efi vfat nofail 0 2\n",
    );
}

fn codes(report: &BootReport) -> Vec<&'static str> {
    report.errors().map(|p| p.code).collect()
}

fn check(root: &Path, disk: &DiskFacts, opts: &CheckOptions) -> BootReport {
    check_tree(root, disk, opts).unwrap()
}

#[test]
fn a_debian_cloud_tree_passes_and_its_entry_is_read() {
    let tmp = tempfile::tempdir().unwrap();
    good_tree(tmp.path());
    let report = check(tmp.path(), &disk(), &CheckOptions::default());
    assert_eq!(report.problems, [], "{report:#?}");
    assert_eq!(
        report.config.as_deref(),
        Some(Path::new("/boot/grub/grub.cfg"))
    );
    assert_eq!(
        report.kernel.as_deref(),
        Some(&*format!("/boot/vmlinuz-{VERSION}"))
    );
    assert_eq!(report.kernel_version.as_deref(), Some(VERSION));
    assert!(report.bootable());
}

/// Makes one defect in a good tree and returns the error codes the check reports, with the
/// report.
fn defect(
    make: impl FnOnce(&Path),
    disk: &DiskFacts,
    opts: &CheckOptions,
) -> (Vec<&'static str>, BootReport) {
    let tmp = tempfile::tempdir().unwrap();
    good_tree(tmp.path());
    make(tmp.path());
    let report = check(tmp.path(), disk, opts);
    (codes(&report), report)
}

#[test]
fn each_defect_is_caught_with_its_fix() {
    let hvm = CheckOptions::default();
    let cfg = |root: &Path, f: &dyn Fn(String) -> String| {
        let p = root.join("boot/grub/grub.cfg");
        let text = std::fs::read_to_string(&p).unwrap();
        std::fs::write(&p, f(text)).unwrap();
    };

    let bare = DiskFacts {
        style: PartitionStyle::None,
        ..disk()
    };
    assert_eq!(defect(|_| {}, &bare, &hvm).0, ["no-partition-table"]);
    let no_code = DiskFacts {
        boot_code: false,
        ..disk()
    };
    assert_eq!(defect(|_| {}, &no_code, &hvm).0, ["no-boot-code"]);

    let (c, r) = defect(
        |r| std::fs::remove_file(r.join("boot/grub/grub.cfg")).unwrap(),
        &disk(),
        &hvm,
    );
    assert_eq!(c, ["no-grub-config"]);
    assert!(r.problems[0].fix.contains("update-grub"));

    let (c, _) = defect(
        |r| std::fs::remove_file(r.join(format!("boot/vmlinuz-{VERSION}"))).unwrap(),
        &disk(),
        &hvm,
    );
    assert_eq!(c, ["kernel-missing"]);

    // A kernel path relative to a separate /boot filesystem (not in the image).
    let (c, r) = defect(
        |r| cfg(r, &|t| t.replace("linux\t/boot/vmlinuz", "linux\t/vmlinuz")),
        &disk(),
        &hvm,
    );
    assert_eq!(c, ["kernel-missing"]);
    assert!(r.problems[0].fix.contains("separate /boot"), "{r:#?}");

    let (c, _) = defect(
        |r| std::fs::remove_file(r.join(format!("boot/initrd.img-{VERSION}"))).unwrap(),
        &disk(),
        &hvm,
    );
    assert_eq!(c, ["initrd-missing"]);

    // root= by a device name that a Xen host does not have, or by an identifier the image
    // does not carry.
    for (root, expect) in [
        ("/dev/nvme0n1p1", "UUID=0f3e4c1a"),
        ("/dev/vda1", "UUID=0f3e4c1a"),
        ("UUID=11111111-2222-4333-8444-555555555555", "UUID=0f3e4c1a"),
        ("PARTUUID=deadbeef-01", "PARTUUID=1234abcd-01"),
    ] {
        let (c, r) = defect(
            |r| {
                cfg(r, &|t| {
                    t.replacen("root=PARTUUID=1234abcd-01", &format!("root={root}"), 1)
                })
            },
            &disk(),
            &hvm,
        );
        assert_eq!(c, ["root-unresolved"], "{root}");
        assert!(r.problems[0].message.contains(expect), "{r:#?}");
    }
    for fine in [
        "/dev/xvda1",
        "LABEL=cloudimg-rootfs",
        &format!("UUID={UUID}"),
    ] {
        let (c, _) = defect(
            |r| {
                cfg(r, &|t| {
                    t.replacen("root=PARTUUID=1234abcd-01", &format!("root={fine}"), 1)
                })
            },
            &disk(),
            &hvm,
        );
        assert_eq!(c, Vec::<&str>::new(), "{fine}");
    }
    let (c, _) = defect(
        |r| cfg(r, &|t| t.replacen("root=PARTUUID=1234abcd-01 ", "", 1)),
        &disk(),
        &hvm,
    );
    assert_eq!(c, ["no-root-argument"]);

    let (c, r) = defect(
        |r| cfg(r, &|t| t.replace(" console=ttyS0,115200", "")),
        &disk(),
        &hvm,
    );
    assert_eq!(c, ["no-serial-console"]);
    assert!(r.problems[0].fix.contains("console=ttyS0"));

    // An initramfs made on a Nitro instance by a host-only builder: no xen-blkfront.
    let (c, r) = defect(
        |r| {
            write(
                r,
                &format!("boot/initrd.img-{VERSION}"),
                &initrd(&["nvme/host/nvme.ko", "net/ena.ko"], &["gzip", "-c"]),
            );
        },
        &disk(),
        &hvm,
    );
    assert_eq!(c, ["no-xen-blkfront"]);
    assert!(
        r.problems[0].fix.contains(
            "add xen-blkfront to /etc/initramfs-tools/modules and run update-initramfs -u"
        ),
        "{r:#?}"
    );
    // The same on a dracut system: the fix says dracut's.
    let (c, r) = defect(
        |r| {
            write(
                r,
                &format!("boot/initrd.img-{VERSION}"),
                &initrd(&["nvme/host/nvme.ko.xz"], &["xz", "-c", "--check=crc32"]),
            );
            std::fs::remove_dir(r.join("etc/initramfs-tools")).unwrap();
            std::fs::create_dir_all(r.join("etc/dracut.conf.d")).unwrap();
        },
        &disk(),
        &hvm,
    );
    assert_eq!(c, ["no-xen-blkfront"]);
    assert!(
        r.problems[0].fix.contains("/etc/dracut.conf.d/xen.conf"),
        "{r:#?}"
    );

    // Built in: no initramfs needed for it.
    let (c, _) = defect(
        |r| {
            write(
                r,
                &format!("boot/initrd.img-{VERSION}"),
                &initrd(&["x/y.ko"], &["gzip"]),
            );
            write(
                r,
                &format!("lib/modules/{VERSION}/modules.builtin"),
                b"kernel/drivers/block/xen-blkfront.ko\n",
            );
        },
        &disk(),
        &hvm,
    );
    assert_eq!(c, Vec::<&str>::new());

    // A kernel without Xen drivers at all.
    let (c, _) = defect(
        |r| {
            write(
                r,
                &format!("lib/modules/{VERSION}/modules.dep"),
                b"kernel/drivers/nvme/host/nvme.ko:\n",
            )
        },
        &disk(),
        &hvm,
    );
    assert_eq!(c, ["no-xen-blkfront", "no-xen-netfront"]);

    // Enhanced networking asked for: ena is there, ixgbevf is not.
    let (c, _) = defect(
        |_| {},
        &disk(),
        &CheckOptions {
            ena: true,
            sriov: true,
            ..hvm
        },
    );
    assert_eq!(c, ["no-ixgbevf"]);

    // fstab: an entry that resolves nowhere in the image and is not nofail.
    let (c, r) = defect(
        |r| {
            write(
                r,
                "etc/fstab",
                b"PARTUUID=1234abcd-01 / ext4 rw 0 1\nUUID=AAAA-BBBB /boot/efi vfat defaults 0 2\n",
            )
        },
        &disk(),
        &hvm,
    );
    assert_eq!(c, ["fstab"]);
    assert!(r.problems[0].message.contains("/boot/efi"), "{r:#?}");
}

#[test]
fn without_depmods_list_the_drivers_are_a_warning_not_a_false_refusal() {
    let (c, r) = defect(
        |r| std::fs::remove_file(r.join(format!("lib/modules/{VERSION}/modules.dep"))).unwrap(),
        &disk(),
        &CheckOptions::default(),
    );
    assert_eq!(c, Vec::<&str>::new());
    assert_eq!(r.problems.len(), 1, "{r:#?}");
    assert_eq!(r.problems[0].code, "drivers-unchecked");
    assert!(r.problems[0].fix.contains("depmod"), "{r:#?}");
}

#[test]
fn an_unreadable_initramfs_is_a_warning_not_a_pass() {
    let (c, r) = defect(
        |r| {
            write(
                r,
                &format!("boot/initrd.img-{VERSION}"),
                &[0x02, 0x21, 0x4C, 0x18, 0, 0, 0, 0],
            )
        },
        &disk(),
        &CheckOptions::default(),
    );
    assert_eq!(c, Vec::<&str>::new());
    assert_eq!(r.problems.len(), 1, "{r:#?}");
    assert_eq!(r.problems[0].code, "initrd-unreadable");
    assert_eq!(r.problems[0].severity, Severity::Warning);
    assert!(r.problems[0].message.contains("lz4"), "{r:#?}");
}

#[test]
fn bls_entries_with_kernelopts_from_grubenv() {
    let tmp = tempfile::tempdir().unwrap();
    let r = tmp.path();
    good_tree(r);
    std::fs::remove_file(r.join("boot/grub/grub.cfg")).unwrap();
    write(
        r,
        "boot/grub2/grub.cfg",
        b"set default=\"${saved_entry}\"\ninsmod blscfg\nblscfg\n",
    );
    write(
        r,
        "boot/grub2/grubenv",
        format!("# GRUB Environment Block\nkernelopts=root=UUID={UUID} ro console=ttyS0\n")
            .as_bytes(),
    );
    write(
        r,
        "boot/loader/entries/abc-5.14.0-1.el9.conf",
        b"linux /vmlinuz-5.14.0-1.el9\ninitrd /initramfs-5.14.0-1.el9.img\noptions $kernelopts\n",
    );
    write(
        r,
        &format!("boot/loader/entries/abc-{VERSION}.conf"),
        format!("title new\nlinux /boot/vmlinuz-{VERSION}\ninitrd /boot/initrd.img-{VERSION}\noptions $kernelopts\n").as_bytes(),
    );
    let report = check(r, &disk(), &CheckOptions::default());
    assert_eq!(report.problems, [], "{report:#?}");
    assert_eq!(
        report.config.as_deref(),
        Some(Path::new("/boot/grub2/grub.cfg"))
    );
    assert_eq!(
        report.command_line.as_deref(),
        Some(&*format!("root=UUID={UUID} ro console=ttyS0"))
    );
}

#[test]
fn paravirtual_images_need_menu_lst_and_hvc0_not_a_boot_sector() {
    let tmp = tempfile::tempdir().unwrap();
    let r = tmp.path();
    good_tree(r);
    write(
        r,
        "boot/grub/menu.lst",
        format!("default 0\ntitle Linux\nroot (hd0)\nkernel /boot/vmlinuz-{VERSION} root=LABEL=cloudimg-rootfs console=hvc0\ninitrd /boot/initrd.img-{VERSION}\n").as_bytes(),
    );
    let pv = CheckOptions {
        virtualization: Virtualization::Paravirtual,
        ..CheckOptions::default()
    };
    let mut bare = DiskFacts {
        style: PartitionStyle::None,
        boot_code: false,
        ..disk()
    };
    bare.root.partuuid = None;
    let report = check(r, &bare, &pv);
    // The fstab names a partition, which a bare filesystem does not have.
    assert_eq!(codes(&report), ["fstab"], "{report:#?}");
    write(r, "etc/fstab", b"LABEL=cloudimg-rootfs / ext4 rw 0 1\n");
    assert!(check(r, &bare, &pv).bootable());
}

#[test]
fn paths_are_resolved_inside_the_image_only() {
    let tmp = tempfile::tempdir().unwrap();
    let host = tmp.path().join("host");
    let r = tmp.path().join("image");
    good_tree(&r);
    // A host file that would pass for the kernel and an initramfs with xen-blkfront.
    write(&host, "vmlinuz", b"kernel");
    write(
        &host,
        "initrd",
        &initrd(&["block/xen-blkfront.ko"], &["gzip"]),
    );
    std::fs::remove_file(r.join(format!("boot/vmlinuz-{VERSION}"))).unwrap();
    std::fs::remove_file(r.join(format!("boot/initrd.img-{VERSION}"))).unwrap();
    symlink(
        host.join("vmlinuz"),
        r.join(format!("boot/vmlinuz-{VERSION}")),
    )
    .unwrap();
    symlink(
        host.join("initrd"),
        r.join(format!("boot/initrd.img-{VERSION}")),
    )
    .unwrap();
    let report = check(&r, &disk(), &CheckOptions::default());
    assert_eq!(
        codes(&report),
        ["kernel-missing", "initrd-missing"],
        "{report:#?}"
    );
    // A relative link inside the image is what the system itself follows.
    std::fs::remove_file(r.join(format!("boot/vmlinuz-{VERSION}"))).unwrap();
    write(&r, "boot/kernels/real", b"kernel");
    symlink("kernels/real", r.join(format!("boot/vmlinuz-{VERSION}"))).unwrap();
    let report = check(&r, &disk(), &CheckOptions::default());
    assert_eq!(codes(&report), ["initrd-missing"], "{report:#?}");
}

#[test]
fn grub_paths_and_entries_are_read_like_grub() {
    assert_eq!(
        grub_path("($root)/boot/vmlinuz"),
        Some("boot/vmlinuz".into())
    );
    assert_eq!(grub_path("/vmlinuz-6.1"), Some("vmlinuz-6.1".into()));
    assert_eq!(grub_path("${prefix}/vmlinuz"), None);
    assert_eq!(
        configfile_target("# stub\nconfigfile /boot/grub2/grub.cfg\n"),
        Some("/boot/grub2/grub.cfg".into())
    );
    assert_eq!(configfile_target("configfile /a\nlinux /b\n"), None);
    let e = default_menuentry(
        "set default=1\nmenuentry 'a' {\n linux /a root=UUID=1\n}\nmenuentry 'b' {\n linux /b root=UUID=2\n initrd /bi\n}\n",
    )
    .unwrap();
    assert_eq!(
        (e.kernel.as_deref(), e.initrd.as_deref()),
        (Some("/b"), Some("/bi"))
    );
    assert_eq!(
        default_menuentry("linux /vmlinuz root=/dev/xvda1\n")
            .unwrap()
            .args,
        ["root=/dev/xvda1"]
    );
    assert!(default_menuentry("set timeout=5\n").is_none());
    assert!(ends_with_module(
        "kernel/drivers/block/xen-blkfront.ko.zst",
        "xen-blkfront"
    ));
    assert!(ends_with_module("xen_blkfront.ko", "xen-blkfront"));
    assert!(!ends_with_module("xen-blkfront-extra.ko", "xen-blkfront"));
    assert_eq!(
        version_cmp("a-5.10.conf", "a-5.9.conf"),
        std::cmp::Ordering::Greater
    );
}

/// A tree made for Nitro: nvme as a module in modules.dep and in the initramfs, ena a module.
fn nitro_tree(root: &Path) {
    good_tree(root);
    write(
        root,
        &format!("boot/initrd.img-{VERSION}"),
        &initrd(
            &["nvme/host/nvme.ko", "nvme/host/nvme-core.ko"],
            &["gzip", "-c"],
        ),
    );
    write(
        root,
        &format!("lib/modules/{VERSION}/modules.dep"),
        b"kernel/drivers/nvme/host/nvme.ko: kernel/drivers/nvme/host/nvme-core.ko\n\
          kernel/drivers/nvme/host/nvme-core.ko:\n\
          kernel/drivers/net/ethernet/amazon/ena/ena.ko:\n",
    );
}

#[test]
fn nitro_needs_nvme_in_the_initramfs_ena_and_no_xen_device_names() {
    let nitro = CheckOptions {
        platform: Platform::Nitro,
        ..CheckOptions::default()
    };
    // Made for Nitro: passes for Nitro, and fails for Xen (no xen-blkfront, no xen-netfront).
    let tmp = tempfile::tempdir().unwrap();
    nitro_tree(tmp.path());
    let report = check(tmp.path(), &disk(), &nitro);
    assert_eq!(report.problems, [], "{report:#?}");
    let xen = codes(&check(tmp.path(), &disk(), &CheckOptions::default()));
    assert!(
        xen.contains(&"no-xen-blkfront") && xen.contains(&"no-xen-netfront"),
        "{xen:?}"
    );

    // A Xen tree (no nvme at all) on Nitro.
    let (errors, report) = defect(|_| {}, &disk(), &nitro);
    assert_eq!(errors, ["no-nvme"], "{report:#?}");
    assert!(report.problems[0].message.contains("Nitro"), "{report:#?}");

    let nitro_defect = |make: &dyn Fn(&Path)| {
        let tmp = tempfile::tempdir().unwrap();
        nitro_tree(tmp.path());
        make(tmp.path());
        let report = check(tmp.path(), &disk(), &nitro);
        (codes(&report), report)
    };
    // nvme a module the initramfs lacks (an initramfs made on a Xen host, host-only).
    let (errors, report) = nitro_defect(&|r| {
        write(
            r,
            &format!("boot/initrd.img-{VERSION}"),
            &initrd(&["block/xen-blkfront.ko"], &["gzip", "-c"]),
        );
    });
    assert_eq!(errors, ["no-nvme"], "{report:#?}");
    assert!(report.problems[0].fix.contains("nvme"), "{report:#?}");
    // No ena: no network.
    let (errors, _) = nitro_defect(&|r| {
        write(
            r,
            &format!("lib/modules/{VERSION}/modules.dep"),
            b"kernel/drivers/nvme/host/nvme.ko:\n",
        );
    });
    assert_eq!(errors, ["no-ena"]);
    // nvme built in: no initramfs needed for it.
    let (errors, _) = nitro_defect(&|r| {
        write(
            r,
            &format!("lib/modules/{VERSION}/modules.dep"),
            b"kernel/drivers/net/ethernet/amazon/ena/ena.ko:\n",
        );
        write(
            r,
            &format!("lib/modules/{VERSION}/modules.builtin"),
            b"kernel/drivers/nvme/host/nvme.ko\n",
        );
    });
    assert_eq!(errors, Vec::<&str>::new());
    // root=/dev/xvda1 and an fstab naming /dev/xvda1 and /dev/sdb (a nofail one is fine).
    let (errors, report) = nitro_defect(&|r| {
        let p = r.join("boot/grub/grub.cfg");
        let text = std::fs::read_to_string(&p).unwrap();
        std::fs::write(
            &p,
            text.replace("root=PARTUUID=1234abcd-01", "root=/dev/xvda1"),
        )
        .unwrap();
        write(
            r,
            "etc/fstab",
            b"/dev/xvda1 / ext4 rw 0 1\n/dev/sdb /data ext4 defaults 0 2\n/dev/xvdc /mnt auto nofail 0 0\n",
        );
    });
    assert!(errors.contains(&"root-device-name"), "{report:#?}");
    assert_eq!(
        errors.iter().filter(|c| **c == "fstab-device-name").count(),
        2,
        "{report:#?}"
    );
    let root = report
        .problems
        .iter()
        .find(|p| p.code == "root-device-name")
        .unwrap();
    assert!(root.fix.contains(&format!("root=UUID={UUID}")), "{root}");
}
