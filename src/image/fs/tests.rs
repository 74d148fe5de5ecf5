//! Tests of the shared types and the running of programs, and of the whole on real
//! filesystems (inspecting a mounted volume, making a matching filesystem; these need root).

use super::probe::{parse_dumpe2fs, read_ext_layout};
use super::*;
use crate::image::testing::{require_root, sparse_file};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

pub(super) const MIB: u64 = 1 << 20;

#[test]
fn fs_types_and_uuids_parse_and_print() {
    for t in FsType::ALL {
        assert_eq!(t.as_str().parse::<FsType>().expect("parse"), t);
    }
    let err = "btrfs".parse::<FsType>().expect_err("unsupported");
    assert_eq!(
        err.to_string(),
        "unknown filesystem type btrfs: expected ext2, ext3, ext4 or xfs"
    );
    assert_eq!(FsType::Xfs.mount_data(), Some("nouuid"));
    assert_eq!(FsType::Ext4.mount_data(), None);

    let uuid: FsUuid = "0B6C4F3E-2a57-4c1d-9e8f-123456789abc"
        .parse()
        .expect("uuid");
    assert_eq!(uuid.to_string(), "0b6c4f3e-2a57-4c1d-9e8f-123456789abc");
    for bad in [
        "",
        "0b6c4f3e2a574c1d9e8f123456789abc",
        "0b6c4f3e-2a57-4c1d-9e8f-123456789ab",
        "0b6c4f3e-2a57-4c1d-9e8f-123456789abg",
        "1234-ABCD",
    ] {
        assert!(bad.parse::<FsUuid>().is_err(), "{bad:?}");
    }
    let a = FsUuid::random().expect("random");
    let b = FsUuid::random().expect("random");
    assert_ne!(a, b);
    let text = a.to_string();
    assert_eq!(text.as_bytes()[14], b'4', "version 4: {text}");
    assert!(
        matches!(text.as_bytes()[19], b'8' | b'9' | b'a' | b'b'),
        "{text}"
    );
    assert_eq!(text.parse::<FsUuid>().expect("round trip"), a);
}

#[test]
fn tool_errors_carry_the_command_line_and_stderr() {
    let missing = Tool {
        program: "no-such-program-xyz",
        package: "xyz-utils",
    };
    let err = run_tool(&missing, &[]).expect_err("missing");
    assert_eq!(
        err.to_string(),
        "no-such-program-xyz was not found on PATH, /usr/sbin or /sbin: install xyz-utils"
    );
    let err = probe_device(Path::new("/nonexistent/dev x")).expect_err("no such device");
    assert_eq!(
        err.to_string(),
        "opening /nonexistent/dev x to read its filesystem's label and UUID"
    );
    // A failing program: its command line, status and stderr.
    let err = run_checked(
        &DUMPE2FS,
        &[OsStr::new("-h"), OsStr::new("/nonexistent/it's")],
    )
    .expect_err("dumpe2fs fails");
    let text = err.to_string();
    assert!(
        text.starts_with(r"dumpe2fs -h '/nonexistent/it'\''s' failed (exit status: 2): "),
        "{text}"
    );
    assert!(text.contains("No such file or directory"), "{text}");
    assert_eq!(cmd::quote(OsStr::new("it's")), r"'it'\''s'");
    assert_eq!(cmd::quote(OsStr::new("")), "''");
    assert_eq!(cmd::quote(OsStr::new("uuid=0b6c-x,^a")), "uuid=0b6c-x,^a");
}

/// Makes an ext4 "source volume" the old way: 128-byte inodes, no metadata_csum, no 64bit.
fn old_style_ext4(dir: &Path) -> PathBuf {
    let old = sparse_file(dir, "old.img", 64 * MIB);
    let status = Command::new("mke2fs")
        .args([
            "-q",
            "-F",
            "-t",
            "ext4",
            "-I",
            "128",
            "-O",
            "^metadata_csum,^64bit",
        ])
        .args([
            "-L",
            "old root",
            "-U",
            "0b6c4f3e-2a57-4c1d-9e8f-123456789abc",
        ])
        .arg(&old)
        // Its warning that 128-byte inodes end in 2038 is expected here.
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .expect("mke2fs");
    assert!(status.success());
    old
}

/// A mounted ext4 volume (in a child's private namespace) is inspected like a source
/// volume: its loop device found from mountinfo (and through sysfs when the source is a
/// name like `/dev/root`), label, UUID and layout read; the image made from the plan
/// matches it.
#[test]
#[ignore = "needs root: loop devices, mounts, namespaces (scripts/test.sh runs it as root)"]
fn inspects_a_mounted_volume_and_makes_a_matching_filesystem() {
    use crate::image::loopdev::{LoopDevice, LoopOptions};
    use crate::image::mount::{Mount, enter_private_namespace_in_test};
    use crate::image::testing::{TestChild, child_send, is_child, test_name};

    let me = test_name(
        module_path!(),
        "inspects_a_mounted_volume_and_makes_a_matching_filesystem",
    );
    if is_child(&me) {
        let old = PathBuf::from(std::env::var_os("TEST_OLD").expect("TEST_OLD"));
        let new = PathBuf::from(std::env::var_os("TEST_NEW").expect("TEST_NEW"));
        let mnt = PathBuf::from(std::env::var_os("TEST_MNT").expect("TEST_MNT"));
        let ns = enter_private_namespace_in_test().expect("namespace");
        let dev = LoopDevice::attach(&old, LoopOptions::default()).expect("attach");
        let mount = Mount::new(
            &ns,
            dev.path(),
            &mnt,
            "ext4",
            nix::mount::MsFlags::MS_RDONLY,
            None,
        )
        .expect("mount");
        std::fs::create_dir_all(mnt.join("lost+found/sub")).ok();

        let src = inspect_source(&mnt.join("lost+found")).expect("inspect");
        assert_eq!(src.mount.mount_point, mnt);
        assert_eq!(src.device.as_deref(), Some(dev.path()));
        assert_eq!(src.fs_type(), "ext4");
        assert_eq!(src.probe.label.as_deref(), Some(OsStr::new("old root")));
        let layout = src.ext.clone().expect("ext layout");
        assert_eq!(layout.inode_size, 128);
        assert!(!layout.features.iter().any(|f| f == "metadata_csum"));
        assert!(layout.features.iter().any(|f| f == "extent"));
        // A source name that is not the device node: found through sysfs.
        let renamed = MountEntry {
            source: "/dev/root".into(),
            ..src.mount.clone()
        };
        assert_eq!(block_device(&renamed).expect("via sysfs"), dev.path());
        let unknown = MountEntry {
            source: "/dev/root".into(),
            major: 0,
            minor: 4000,
            ..src.mount.clone()
        };
        let err = block_device(&unknown).expect_err("no such device");
        assert!(err.to_string().contains("--fs-type"), "{err}");

        let spec = plan_mkfs(&src, None, false).expect("plan");
        mkfs(&new, &spec).expect("mkfs");
        mount.unmount().expect("unmount");
        dev.detach().expect("detach");
        child_send("done", "");
        return;
    }
    require_root();
    let dir = tempfile::tempdir().expect("temp dir");
    let old = old_style_ext4(dir.path());
    let new = sparse_file(dir.path(), "new.img", 64 * MIB);
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).expect("mount point");
    let mut child = TestChild::spawn(
        &me,
        &[
            ("TEST_OLD", old.as_os_str()),
            ("TEST_NEW", new.as_os_str()),
            ("TEST_MNT", mnt.as_os_str()),
        ],
    );
    child.receive("done");
    child.finish();

    let probe = probe_device(&new).expect("probe");
    assert_eq!(probe.fs_type.as_deref(), Some("ext4"));
    assert_eq!(probe.label.as_deref(), Some(OsStr::new("old root")));
    assert_eq!(
        probe.uuid.as_deref(),
        Some("0b6c4f3e-2a57-4c1d-9e8f-123456789abc")
    );
    let made = read_ext_layout(&new).expect("layout");
    assert_eq!((made.block_size, made.inode_size), (1024, 128), "{made:?}");
    for feature in [
        "metadata_csum",
        "64bit",
        "orphan_file",
        "metadata_csum_seed",
    ] {
        assert!(
            !made.features.iter().any(|f| f == feature),
            "{feature}: {made:?}"
        );
    }
    assert!(made.features.iter().any(|f| f == "extent"));
}

#[test]
#[ignore = "needs root: loop devices, mounts, namespaces (scripts/test.sh runs it as root)"]
fn mkfs_makes_defaults_and_reports_failures() {
    require_root();
    let dir = tempfile::tempdir().expect("temp dir");
    let new = sparse_file(dir.path(), "new.img", 64 * MIB);
    // Default layout, explicit inode count, a fresh UUID.
    let spec = MkfsSpec {
        uuid: Some(FsUuid::random().expect("uuid")),
        inodes: Some(50_000),
        ..MkfsSpec::new(FsType::Ext3)
    };
    mkfs(&new, &spec).expect("mkfs");
    let probe = probe_device(&new).expect("probe");
    assert_eq!(probe.fs_type.as_deref(), Some("ext3"));
    assert_eq!(probe.label, None);
    assert_eq!(probe.uuid, spec.uuid.map(|u| u.to_string()));
    let out = Command::new("dumpe2fs")
        .arg("-h")
        .arg(&new)
        .output()
        .expect("dumpe2fs");
    let text = String::from_utf8_lossy(&out.stdout);
    let count: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("Inode count:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("inode count");
    assert!(count >= 50_000, "{count}");
    let made = parse_dumpe2fs(&text).expect("layout");
    assert_eq!((made.block_size, made.inode_size), (4096, 256));

    // A label too long for the type is refused before running anything.
    let err = mkfs(
        &new,
        &MkfsSpec {
            label: Some("seventeen-bytes-x".into()),
            ..MkfsSpec::new(FsType::Ext4)
        },
    )
    .expect_err("label");
    assert!(
        matches!(
            err,
            FsError::LabelTooLong {
                len: 17,
                max: 16,
                ..
            }
        ),
        "{err:?}"
    );
    // mke2fs's own failure comes with its command line and message.
    let err =
        mkfs(Path::new("/nonexistent/img"), &MkfsSpec::new(FsType::Ext4)).expect_err("no target");
    assert!(
        err.to_string()
            .starts_with("mke2fs -t ext4 -F -q -b 4096 -I 256 /nonexistent/img failed"),
        "{err}"
    );
}

#[test]
#[ignore = "needs root: loop devices, mounts, namespaces (scripts/test.sh runs it as root)"]
fn an_empty_device_probes_empty_and_keeps_images_sparse() {
    require_root();
    let dir = tempfile::tempdir().expect("temp dir");
    let image = sparse_file(dir.path(), "empty.img", 64 * MIB);
    assert_eq!(probe_device(&image).expect("probe"), BlkidProbe::default());
    mkfs(&image, &MkfsSpec::new(FsType::Ext4)).expect("mkfs");
    // mkfs on the file: the inode tables are marked zeroed, not written.
    let out = Command::new("dumpe2fs")
        .arg(&image)
        .output()
        .expect("dumpe2fs");
    let text = String::from_utf8_lossy(&out.stdout);
    let groups = text.lines().filter(|l| l.starts_with("Group ")).count();
    let zeroed = text.matches("ITABLE_ZEROED").count();
    assert!(groups > 1 && zeroed + 1 >= groups, "{zeroed} of {groups}");
    let allocated = std::fs::metadata(&image).expect("stat").blocks() * 512;
    assert!(allocated < 16 * MIB, "{allocated} bytes allocated");
}

#[test]
fn refuses_to_recreate_a_filesystem_it_does_not_support() {
    // /proc: nothing is probed, and the plan says what to do.
    let proc = inspect_source(Path::new("/proc/self")).expect("inspect /proc");
    assert_eq!(proc.mount.fs_type, "proc");
    assert_eq!(proc.mount.mount_point, PathBuf::from("/proc"));
    assert_eq!(proc.device, None);
    let err = plan_mkfs(&proc, None, false).expect_err("proc");
    assert!(matches!(err, FsError::Unsupported { .. }), "{err:?}");
    assert!(err.to_string().contains("--fs-type"), "{err}");
    let spec = plan_mkfs(&proc, Some(FsType::Ext2), false).expect("override");
    assert_eq!(spec, MkfsSpec::new(FsType::Ext2));
}
