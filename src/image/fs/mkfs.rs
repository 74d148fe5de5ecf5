//! The image's filesystem: the plan matching the source's type, label, UUID and ext layout
//! ([`plan_mkfs`]) and the `mke2fs` / `mkfs.xfs` run that makes it ([`mkfs`]), with the newer
//! ext features the source lacks turned off ([`NEWER_EXT_FEATURES`]).

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use super::{ExtLayout, FsError, FsType, FsUuid, MKE2FS, MKFS_XFS, SourceFilesystem, run_checked};

/// Inode size assumed for sizing, and used when there is no ext source to copy it from.
const EXT_INODE_SIZE: u32 = 256;

/// Block size used when there is no ext source to copy it from. `mke2fs` picks 1 KiB blocks
/// (and 128-byte inodes) for images under 512 MiB, where a large extended attribute (a 3 KiB
/// SELinux or ACL value) does not fit.
const EXT_BLOCK_SIZE: u32 = 4096;

/// ext features a recent `mke2fs` may enable by default that older readers refuse, with the
/// first e2fsprogs version that knows them (an older `mke2fs` neither enables them nor accepts
/// `^feature`): 64-bit block numbers (GRUB Legacy, old syslinux), metadata checksums (GRUB
/// before 2.02, e2fsprogs before 1.43), the checksum seed (GRUB before 2.06), the orphan file
/// (e2fsck before 1.47 refuses to check the filesystem). Each is turned off when the source
/// filesystem does not have it.
pub const NEWER_EXT_FEATURES: &[(&str, (u32, u32))] = &[
    ("64bit", (1, 42)),
    ("metadata_csum", (1, 43)),
    ("metadata_csum_seed", (1, 43)),
    ("orphan_file", (1, 47)),
];

/// What [`mkfs`] makes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MkfsSpec {
    /// The type.
    pub fs_type: FsType,
    /// The label (none: no label).
    pub label: Option<OsString>,
    /// The UUID (none: mkfs draws one).
    pub uuid: Option<FsUuid>,
    /// For ext: the source's layout to carry over (block and inode size, newer features the
    /// source lacks turned off). None: 4 KiB blocks and 256-byte inodes, mke2fs's features.
    pub ext_layout: Option<ExtLayout>,
    /// For ext: the inode count, when the default would be too few (see
    /// [`plan_image`](super::plan_image)).
    pub inodes: Option<u64>,
    /// For ext on an image file: make the filesystem in this byte range of the file (a
    /// partition) rather than the whole file (`mke2fs -E offset=`).
    pub region: Option<(u64, u64)>,
}

impl MkfsSpec {
    /// A filesystem of `fs_type` with no label, a fresh UUID and default layout.
    pub fn new(fs_type: FsType) -> Self {
        Self {
            fs_type,
            label: None,
            uuid: None,
            ext_layout: None,
            inodes: None,
            region: None,
        }
    }
}

/// Decides the image's filesystem: the source's type (or `override_type`, `--fs-type`), its
/// label, its UUID (or a random one with `new_uuid`) and, ext to ext, its layout.
///
/// # Errors
///
/// [`FsError::Unsupported`] when the source type cannot be recreated and no override is given,
/// [`FsError::LabelTooLong`] when the label does not fit the chosen type, [`FsError::BadUuid`]
/// when the source's UUID is not one (a foreign filesystem under an override: use `new_uuid`).
pub fn plan_mkfs(
    source: &SourceFilesystem,
    override_type: Option<FsType>,
    new_uuid: bool,
) -> Result<MkfsSpec, FsError> {
    let fs_type = match override_type {
        Some(t) => t,
        None => FsType::from_name(source.fs_type()).ok_or_else(|| FsError::Unsupported {
            fs_type: source.fs_type().to_owned(),
            mount_point: source.mount.mount_point.clone(),
        })?,
    };
    let label = source.probe.label.clone();
    if let Some(label) = &label {
        check_label(label, fs_type)?;
    }
    let uuid = if new_uuid {
        Some(FsUuid::random()?)
    } else {
        source.probe.uuid.as_deref().map(str::parse).transpose()?
    };
    let ext_layout = source.ext.clone().filter(|_| fs_type.is_ext());
    Ok(MkfsSpec {
        fs_type,
        label,
        uuid,
        ext_layout,
        inodes: None,
        region: None,
    })
}

fn check_label(label: &OsStr, fs_type: FsType) -> Result<(), FsError> {
    let len = label.as_bytes().len();
    if len > fs_type.max_label_bytes() {
        return Err(FsError::LabelTooLong {
            label: label.to_owned(),
            len,
            fs_type,
            max: fs_type.max_label_bytes(),
        });
    }
    Ok(())
}

/// Makes the filesystem `spec` describes on `target` (the image file, or a device).
///
/// # Errors
///
/// The label does not fit, the mkfs program is missing (e.g. `mkfs.xfs` without xfsprogs) or
/// fails (its command line and stderr are in the error).
pub fn mkfs(target: &Path, spec: &MkfsSpec) -> Result<(), FsError> {
    if let Some(label) = &spec.label {
        check_label(label, spec.fs_type)?;
    }
    let (tool, args) = if spec.fs_type.is_ext() {
        let version = if spec.ext_layout.is_some() {
            Some(mke2fs_version()?)
        } else {
            None
        };
        (&MKE2FS, mke2fs_args(target, spec, version))
    } else {
        (&MKFS_XFS, mkfs_xfs_args(target, spec))
    };
    let args: Vec<&OsStr> = args.iter().map(OsString::as_os_str).collect();
    run_checked(tool, &args)?;
    Ok(())
}

/// The `mke2fs` arguments for `spec`; `version` is mke2fs's (needed only with a layout).
fn mke2fs_args(target: &Path, spec: &MkfsSpec, version: Option<(u32, u32)>) -> Vec<OsString> {
    let mut args: Vec<OsString> = ["-t", spec.fs_type.as_str(), "-F", "-q"]
        .into_iter()
        .map(OsString::from)
        .collect();
    if let Some(label) = &spec.label {
        args.extend([OsString::from("-L"), label.clone()]);
    }
    if let Some(uuid) = &spec.uuid {
        args.extend([OsString::from("-U"), OsString::from(uuid.to_string())]);
    }
    let (block_size, inode_size) = spec
        .ext_layout
        .as_ref()
        .map_or((EXT_BLOCK_SIZE, EXT_INODE_SIZE), |l| {
            (l.block_size, l.inode_size)
        });
    args.extend(["-b", &block_size.to_string(), "-I", &inode_size.to_string()].map(OsString::from));
    if let Some(inodes) = spec.inodes {
        args.extend(["-N", &inodes.to_string()].map(OsString::from));
    }
    if let (Some(layout), Some(version)) = (&spec.ext_layout, version) {
        let off: Vec<String> = NEWER_EXT_FEATURES
            .iter()
            .filter(|(name, since)| version >= *since && !layout.features.iter().any(|f| f == name))
            .map(|(name, _)| format!("^{name}"))
            .collect();
        if !off.is_empty() {
            args.extend([OsString::from("-O"), OsString::from(off.join(","))]);
        }
    }
    if let Some((offset, _)) = spec.region {
        args.extend([
            OsString::from("-E"),
            OsString::from(format!("offset={offset}")),
        ]);
    }
    args.push(target.as_os_str().to_owned());
    if let Some((_, size)) = spec.region {
        // The filesystem size, in KiB: without it mke2fs would fill the file past the region.
        args.push(OsString::from(format!("{}k", size / 1024)));
    }
    args
}

/// The `mkfs.xfs` arguments for `spec`.
fn mkfs_xfs_args(target: &Path, spec: &MkfsSpec) -> Vec<OsString> {
    let mut args: Vec<OsString> = vec!["-f".into(), "-q".into()];
    if let Some(label) = &spec.label {
        args.extend([OsString::from("-L"), label.clone()]);
    }
    if let Some(uuid) = &spec.uuid {
        args.extend([OsString::from("-m"), OsString::from(format!("uuid={uuid}"))]);
    }
    args.push(target.as_os_str().to_owned());
    args
}

/// The version of the installed `mke2fs` (from `mke2fs -V`: `mke2fs 1.47.0 (5-Feb-2023)`).
fn mke2fs_version() -> Result<(u32, u32), FsError> {
    let (command, output) = run_checked(&MKE2FS, &[OsStr::new("-V")])?;
    // Printed on stderr.
    let text = String::from_utf8_lossy(&output.stderr);
    parse_mke2fs_version(&text).ok_or_else(|| FsError::ToolOutput {
        command,
        reason: format!("no version in {:?}", text.lines().next().unwrap_or("")),
    })
}

fn parse_mke2fs_version(text: &str) -> Option<(u32, u32)> {
    let version = text.lines().next()?.split_whitespace().nth(1)?;
    let mut parts = version.split('.');
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

#[cfg(test)]
mod tests {
    use super::super::{BlkidProbe, MountEntry};
    use super::*;

    fn args(list: &[OsString]) -> Vec<String> {
        list.iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn mkfs_command_lines() {
        let uuid: FsUuid = "0b6c4f3e-2a57-4c1d-9e8f-123456789abc"
            .parse()
            .expect("uuid");
        let target = Path::new("/w/img");
        // No source layout: explicit 4 KiB blocks and 256-byte inodes.
        let mut spec = MkfsSpec {
            label: Some("root fs".into()),
            uuid: Some(uuid),
            ..MkfsSpec::new(FsType::Ext4)
        };
        assert_eq!(
            args(&mke2fs_args(target, &spec, None)),
            [
                "-t",
                "ext4",
                "-F",
                "-q",
                "-L",
                "root fs",
                "-U",
                "0b6c4f3e-2a57-4c1d-9e8f-123456789abc",
                "-b",
                "4096",
                "-I",
                "256",
                "/w/img"
            ]
        );
        // A source layout: its sizes, and the newer features it lacks turned off as far as
        // this mke2fs knows them.
        spec.ext_layout = Some(ExtLayout {
            block_size: 1024,
            inode_size: 128,
            features: vec!["has_journal".into(), "64bit".into()],
        });
        spec.inodes = Some(123_456);
        assert_eq!(
            args(&mke2fs_args(target, &spec, Some((1, 47)))),
            [
                "-t",
                "ext4",
                "-F",
                "-q",
                "-L",
                "root fs",
                "-U",
                "0b6c4f3e-2a57-4c1d-9e8f-123456789abc",
                "-b",
                "1024",
                "-I",
                "128",
                "-N",
                "123456",
                "-O",
                "^metadata_csum,^metadata_csum_seed,^orphan_file",
                "/w/img"
            ]
        );
        assert_eq!(
            args(&mke2fs_args(target, &spec, Some((1, 46))))[14..],
            ["-O", "^metadata_csum,^metadata_csum_seed", "/w/img"],
            "an older mke2fs neither enables nor knows orphan_file"
        );
        spec.ext_layout = Some(ExtLayout {
            block_size: 4096,
            inode_size: 256,
            features: NEWER_EXT_FEATURES
                .iter()
                .map(|(f, _)| (*f).to_owned())
                .collect(),
        });
        spec.inodes = None;
        assert_eq!(
            args(&mke2fs_args(target, &spec, Some((1, 47)))).len(),
            13,
            "no -O"
        );
        // Inside a partition of the image file: the offset, and the size after the target.
        spec.region = Some((2 << 20, 64 << 20));
        let with_region = args(&mke2fs_args(target, &spec, Some((1, 47))));
        assert_eq!(
            with_region[12..],
            ["-E", "offset=2097152", "/w/img", "65536k"]
        );

        let xfs = MkfsSpec {
            label: Some("data".into()),
            uuid: Some(uuid),
            ..MkfsSpec::new(FsType::Xfs)
        };
        assert_eq!(
            args(&mkfs_xfs_args(target, &xfs)),
            [
                "-f",
                "-q",
                "-L",
                "data",
                "-m",
                "uuid=0b6c4f3e-2a57-4c1d-9e8f-123456789abc",
                "/w/img"
            ]
        );
        assert_eq!(
            args(&mkfs_xfs_args(target, &MkfsSpec::new(FsType::Xfs))),
            ["-f", "-q", "/w/img"]
        );
    }

    #[test]
    fn mke2fs_versions_parse() {
        assert_eq!(
            parse_mke2fs_version(
                "mke2fs 1.47.0 (5-Feb-2023)\n\tUsing EXT2FS Library version 1.47.0\n"
            ),
            Some((1, 47))
        );
        assert_eq!(
            parse_mke2fs_version("mke2fs 1.42.9 (28-Dec-2013)\n"),
            Some((1, 42))
        );
        assert_eq!(parse_mke2fs_version("mke2fs: invalid option\n"), None);
        assert_eq!(parse_mke2fs_version(""), None);
    }

    fn source(fs_type: &str, probe: BlkidProbe, ext: Option<ExtLayout>) -> SourceFilesystem {
        SourceFilesystem {
            mount: MountEntry {
                mount_id: 1,
                parent_id: 0,
                major: 8,
                minor: 1,
                root: "/".into(),
                mount_point: "/srv".into(),
                mount_options: "rw".into(),
                fs_type: fs_type.into(),
                source: "/dev/sda1".into(),
                super_options: "rw".into(),
            },
            device: None,
            probe,
            ext,
        }
    }

    #[test]
    fn plans_a_matching_filesystem_or_says_what_to_do() {
        let layout = ExtLayout {
            block_size: 4096,
            inode_size: 256,
            features: vec!["has_journal".into()],
        };
        let probe = BlkidProbe {
            fs_type: Some("ext3".into()),
            label: Some("cloudimg-rootfs".into()),
            uuid: Some("0b6c4f3e-2a57-4c1d-9e8f-123456789abc".into()),
        };
        // The on-disk type wins over the mount's (an ext3 mounted by the ext4 driver).
        let src = source("ext4", probe.clone(), Some(layout.clone()));
        let spec = plan_mkfs(&src, None, false).expect("plan");
        assert_eq!(
            spec,
            MkfsSpec {
                fs_type: FsType::Ext3,
                label: Some("cloudimg-rootfs".into()),
                uuid: Some(
                    "0b6c4f3e-2a57-4c1d-9e8f-123456789abc"
                        .parse()
                        .expect("uuid")
                ),
                ext_layout: Some(layout.clone()),
                inodes: None,
                region: None,
            }
        );
        // --new-uuid.
        let fresh = plan_mkfs(&src, None, true).expect("plan");
        assert_ne!(fresh.uuid, spec.uuid);
        assert!(fresh.uuid.is_some());
        // An override to XFS keeps label and UUID, drops the ext layout, checks the label.
        let err = plan_mkfs(&src, Some(FsType::Xfs), false).expect_err("label too long");
        assert_eq!(
            err.to_string(),
            "the label \"cloudimg-rootfs\" is 15 bytes long but xfs labels hold at most 12: choose another --fs-type or relabel the source"
        );
        let short = source(
            "ext4",
            BlkidProbe {
                label: Some("root".into()),
                ..probe.clone()
            },
            Some(layout),
        );
        let xfs = plan_mkfs(&short, Some(FsType::Xfs), false).expect("plan");
        assert_eq!((xfs.fs_type, xfs.ext_layout.as_ref()), (FsType::Xfs, None));
        assert_eq!(xfs.uuid, spec.uuid);

        // Unsupported without an override: the message says what to do.
        let btrfs = source("btrfs", BlkidProbe::default(), None);
        let err = plan_mkfs(&btrfs, None, false).expect_err("btrfs");
        assert_eq!(
            err.to_string(),
            "the volume at /srv is on btrfs, which bundle-vol cannot recreate in an image: choose one with --fs-type ext2|ext3|ext4|xfs"
        );
        let spec = plan_mkfs(&btrfs, Some(FsType::Ext4), false).expect("override");
        assert_eq!(spec, MkfsSpec::new(FsType::Ext4));
        // A foreign UUID cannot be carried over.
        let vfat = source(
            "vfat",
            BlkidProbe {
                uuid: Some("1234-ABCD".into()),
                ..BlkidProbe::default()
            },
            None,
        );
        assert!(matches!(
            plan_mkfs(&vfat, Some(FsType::Ext4), false),
            Err(FsError::BadUuid { .. })
        ));
        assert!(plan_mkfs(&vfat, Some(FsType::Ext4), true).is_ok());
    }
}
