//! Tests of the shared types (GUIDs, the `--partition`/`--bootloader` choices), of GRUB
//! installed into a table on a real loop device (detection, table and bootloader together), and
//! the helpers the submodules' tests share.
//!
//! Tables are checked against independent readers (util-linux `sfdisk`, gdisk's `sgdisk`)
//! and by parsing the bytes; detection against fake sysfs trees laid out like the kernel's.
//! The GRUB tests at the end need root (loop devices, mkfs, mount), which CI has; they fail
//! loudly rather than skip without it.

use super::bootloader::GRUB_I386_PC_DIR;
use super::*;
use crate::image::cmd;
use crate::image::loopdev::{LoopDevice, LoopOptions};
use std::ffi::OsStr;
use std::process::Command;

pub(super) const MIB: u64 = 1 << 20;

pub(super) fn spec(style: PartitionStyle) -> TableSpec {
    TableSpec {
        disk_guid: Guid([
            0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x47, 0x88, 0x99, 0xAA, 0xBB, 0xCC, 0xDD, 0xEE,
            0xFF, 0x00,
        ]),
        root_guid: Guid([
            0xA1, 0xA2, 0xA3, 0xA4, 0xB1, 0xB2, 0x4C, 0xC2, 0x91, 0xD2, 0xE1, 0xE2, 0xE3, 0xE4,
            0xE5, 0xE6,
        ]),
        bios_boot_guid: Guid([
            0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x47, 0x08, 0x89, 0x0A, 0x0B, 0x0C, 0x0D, 0x0E,
            0x0F, 0x10,
        ]),
        mbr_signature: 0x1234_5678,
        ..TableSpec::fixed(style)
    }
}

pub(super) fn image(dir: &Path, size: u64) -> PathBuf {
    crate::image::testing::sparse_file(dir, "disk.img", size)
}

pub(super) fn run_tool(cmd: &str, args: &[&OsStr]) -> String {
    let out = cmd::output(Command::new(cmd).args(args))
        .unwrap_or_else(|e| panic!("running {cmd} (scripts/install-deps.sh installs it): {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub(super) fn sfdisk_json(path: &Path) -> serde_json::Value {
    let text = run_tool("sfdisk", &[OsStr::new("--json"), path.as_os_str()]);
    let v: serde_json::Value = serde_json::from_str(&text).expect("sfdisk JSON");
    v["partitiontable"].clone()
}

pub(super) fn sgdisk_verify(path: &Path) -> String {
    // sgdisk -v exits 0 whatever it finds; the verdict is in its output.
    run_tool("sgdisk", &[OsStr::new("-v"), path.as_os_str()])
}

pub(super) fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

#[test]
fn guid_constants_match_their_registered_text_and_disk_bytes() {
    assert_eq!(
        BIOS_BOOT_TYPE.to_string(),
        "21686148-6449-6e6f-744e-656564454649"
    );
    assert_eq!(&BIOS_BOOT_TYPE.to_gpt_bytes(), b"Hah!IdontNeedEFI");
    assert_eq!(
        LINUX_FS_TYPE.to_string(),
        "0fc63daf-8483-4772-8e79-3d69d8477de4"
    );
    assert_eq!(
        LINUX_FS_TYPE.to_gpt_bytes(),
        [
            0xAF, 0x3D, 0xC6, 0x0F, 0x83, 0x84, 0x72, 0x47, 0x8E, 0x79, 0x3D, 0x69, 0xD8, 0x47,
            0x7D, 0xE4
        ]
    );
}

#[test]
fn fixed_choices_win_and_auto_without_a_block_device_is_none() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("not-a-device");
    std::fs::write(&file, b"").unwrap();
    for (choice, style) in [
        (PartitionChoice::Mbr, PartitionStyle::Mbr),
        (PartitionChoice::Gpt, PartitionStyle::Gpt),
        (PartitionChoice::None, PartitionStyle::None),
    ] {
        assert_eq!(choice.resolve(Some(&file)).unwrap(), style);
    }
    assert_eq!(
        PartitionChoice::Auto.resolve(None).unwrap(),
        PartitionStyle::None
    );
    let err = PartitionChoice::Auto.resolve(Some(&file)).unwrap_err();
    assert!(
        matches!(err, PartitionError::NotBlockDevice { .. }),
        "{err}"
    );
}

#[test]
#[cfg(feature = "cli")]
fn flag_values_are_clap_values() {
    use clap::ValueEnum as _;
    assert_eq!(
        PartitionChoice::from_str("gpt", false),
        Ok(PartitionChoice::Gpt)
    );
    assert!(PartitionChoice::from_str("msdos", false).is_err());
    assert_eq!(Bootloader::from_str("grub2", false), Ok(Bootloader::Grub2));
    assert!(Bootloader::from_str("grub", false).is_err());
    // `name()` (the save fingerprint's form) is the flag value.
    for v in [
        PartitionChoice::Auto,
        PartitionChoice::Mbr,
        PartitionChoice::Gpt,
        PartitionChoice::None,
    ] {
        assert_eq!(PartitionChoice::from_str(v.name(), false), Ok(v));
    }
    for v in [Bootloader::Grub2, Bootloader::None] {
        assert_eq!(Bootloader::from_str(v.name(), false), Ok(v));
    }
}

// --- GRUB on a real loop device (root) ---------------------------------------------------

/// The test image on a loop device (`image::loopdev`), and the partition mounted from it;
/// released on drop or, checked, by [`Attached::close`].
struct Attached {
    loopdev: Option<LoopDevice>,
    mount: Option<PathBuf>,
}

impl Attached {
    fn close(mut self) {
        if let Some(mnt) = self.mount.take() {
            run_tool("umount", &[mnt.as_os_str()]);
        }
        if let Some(dev) = self.loopdev.take() {
            dev.detach().unwrap();
        }
    }
}

impl Drop for Attached {
    fn drop(&mut self) {
        // Unmount first; the loop device detaches itself (autoclear) when dropped after.
        if let Some(mnt) = self.mount.take() {
            let _ = Command::new("umount").arg("-l").arg(mnt).status();
        }
    }
}

/// Builds a 64 MiB `style` image with an ext4 partition 1 holding the host's GRUB modules,
/// installs GRUB into it, and checks the boot sector, the embedded core image and the
/// table against what GRUB's own files say they should be.
fn grub_installs_into(style: PartitionStyle) {
    crate::image::testing::require_root();
    let dir = tempfile::tempdir().unwrap();
    let path = image(dir.path(), 64 * MIB);
    let layout = write_table(&path, &spec(style)).unwrap();

    let loopdev = LoopDevice::attach(
        &path,
        LoopOptions {
            read_only: false,
            partscan: true,
        },
    )
    .unwrap();
    let disk = loopdev.path().to_owned();
    let part1 = loopdev.partition_path(1);
    let mut attached = Attached {
        loopdev: Some(loopdev),
        mount: None,
    };
    // Kernels built without table parsers (CI's) create no partition devices for
    // partscan; partx reads the table in user space and adds them (BLKPG).
    run_tool("partx", &[OsStr::new("-u"), disk.as_os_str()]);

    // Detection through the real sysfs and the real disk.
    let d = detect(&part1).unwrap();
    assert_eq!(d.style, style);
    assert_eq!(d.disk.as_deref(), Some(disk.as_path()));
    assert_eq!(d.partition_number, Some(1));
    assert_eq!(d.start_bytes, Some(layout.root.offset_bytes));
    assert_eq!(detect(&disk).unwrap().style, PartitionStyle::None);

    run_tool(
        "mkfs.ext4",
        &[
            OsStr::new("-q"),
            OsStr::new("-F"),
            OsStr::new("-E"),
            OsStr::new("nodiscard"),
            part1.as_os_str(),
        ],
    );
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    run_tool("mount", &[part1.as_os_str(), mnt.as_os_str()]);
    attached.mount = Some(mnt.clone());
    std::fs::create_dir_all(mnt.join("boot/grub")).unwrap();
    std::fs::create_dir_all(mnt.join("usr/lib/grub")).unwrap();
    run_tool(
        "cp",
        &[
            OsStr::new("-a"),
            Path::new("/").join(GRUB_I386_PC_DIR).as_os_str(),
            mnt.join("usr/lib/grub").as_os_str(),
        ],
    );
    std::fs::write(
        mnt.join("boot/grub/grub.cfg"),
        "menuentry 'test' {\n\tlinux /boot/vmlinuz root=LABEL=test ro console=ttyS0\n}\n",
    )
    .unwrap();

    let report = install_grub(&disk, &mnt, style).unwrap();
    assert_eq!(
        report.warnings,
        vec![],
        "the host's own modules, a UUID-free cfg"
    );
    assert_eq!(report.config, Some(PathBuf::from("boot/grub/grub.cfg")));
    let core = std::fs::read(mnt.join(&report.grub_dir).join("i386-pc/core.img")).unwrap();
    let boot_img = std::fs::read(mnt.join(GRUB_I386_PC_DIR).join("boot.img")).unwrap();
    attached.close();

    let bytes = std::fs::read(&path).unwrap();
    // boot.img in the boot sector, except what grub-bios-setup patches: the BIOS parameter
    // block copied from the old sector (0x03..0x5a), the core image's sector (0x5c, 8
    // bytes), the boot drive (0x64) and the drive check turned into NOPs (0x66, 2 bytes).
    // The partition table area (from 0x1b8) is the table's, not boot.img's.
    assert_eq!(boot_img.len(), 512);
    let patched = |i: usize| (0x03..0x5A).contains(&i) || (0x5C..0x68).contains(&i);
    for i in (0..0x1B8).filter(|&i| !patched(i)) {
        assert_eq!(bytes[i], boot_img[i], "boot sector byte {i:#x}");
    }
    assert_eq!(&bytes[510..512], &[0x55, 0xAA]);

    // The core image sits where the boot sector says: right after the MBR, or at the start
    // of the BIOS boot partition; equal to core.img except the first sector's block list
    // (0x1f4..0x200) and the Reed-Solomon fields of the second (0x210..0x218).
    let core_sector = u64_at(&bytes, 0x5C);
    let expected_sector = match style {
        PartitionStyle::Mbr => 1,
        _ => layout.bios_boot.unwrap().offset_bytes / 512,
    };
    assert_eq!(core_sector, expected_sector);
    assert!(core.len() > 1024, "core.img is {} bytes", core.len());
    let start = usize::try_from(core_sector * 512).unwrap();
    let embedded = &bytes[start..start + core.len()];
    let core_patched = |i: usize| (0x1F4..0x200).contains(&i) || (0x210..0x218).contains(&i);
    for (i, (a, b)) in embedded.iter().zip(&core).enumerate() {
        if !core_patched(i) {
            assert_eq!(a, b, "embedded core.img byte {i:#x}");
        }
    }
    // It stays out of the filesystem.
    assert!(start + core.len() <= usize::try_from(layout.root.offset_bytes).unwrap());

    // The table is intact.
    let t = sfdisk_json(&path);
    assert_eq!(
        t["partitions"][0]["start"],
        layout.root.offset_bytes / 512,
        "{t}"
    );
    if style == PartitionStyle::Gpt {
        let verdict = sgdisk_verify(&path);
        assert!(verdict.contains("No problems found"), "{verdict}");
    }
}

#[test]
#[ignore = "needs root: loop devices, mounts, namespaces (scripts/test.sh runs it as root)"]
fn grub_installs_into_an_mbr_image() {
    grub_installs_into(PartitionStyle::Mbr);
}

#[test]
#[ignore = "needs root: loop devices, mounts, namespaces (scripts/test.sh runs it as root)"]
fn grub_installs_into_a_gpt_image() {
    grub_installs_into(PartitionStyle::Gpt);
}
