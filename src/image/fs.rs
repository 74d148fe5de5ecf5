//! The image's filesystem for `bundle-vol`: what filesystem the volume lives on, how to make a
//! matching one in the image, where to put the image and how big to make it.
//!
//! * **Finding the source filesystem**: the mount holding a path comes from
//!   `/proc/thread-self/mountinfo` (fstype, source, mount point, super options; octal escapes
//!   such as `\040` decoded; paths kept as bytes). `thread-self`, because the calling thread's
//!   mount namespace is the one that counts, and after
//!   [`super::mount::enter_private_namespace`] it need not be the main thread's. Its block
//!   device is the mountinfo source when that is the device node with the mount's
//!   `major:minor`, otherwise the node named by `/sys/dev/block/MAJ:MIN/uevent` — `/dev/root`,
//!   which many kernels show for the root filesystem, does not exist, and NVMe roots are found
//!   the same way (docs/reference-behaviour.md §2.6: the classic tool accepted only
//!   `/dev/sd*`/`/dev/xvd*`).
//! * **Label, UUID and on-disk type**: `blkid -p -o udev DEVICE`. Low-level probing (`-p`)
//!   reads the device rather than blkid's cache. The udev format's `ID_FS_LABEL_ENC` encodes
//!   every unsafe byte as `\xNN`, so any label survives exactly; `-o export` writes control
//!   and non-ASCII bytes as `^A`/`M-x`, which cannot be decoded unambiguously.
//! * **ext layout**: `dumpe2fs -h DEVICE` gives the block size, inode size and feature list.
//! * **mkfs**: the same type (ext2/ext3/ext4 with `mke2fs -t`, XFS with `mkfs.xfs` when
//!   installed) with the label and UUID carried over, so `LABEL=`/`UUID=` lines in fstab and
//!   the boot loader keep working ([`plan_mkfs`]; `--new-uuid` draws a random one). For ext the
//!   block and inode sizes are carried over, and the newer features that a recent `mke2fs`
//!   turns on by default but the source lacks are turned off (`-O ^metadata_csum` …), because
//!   what booted the source — an old GRUB, an older kernel or e2fsck — may refuse them (see
//!   [`NEWER_EXT_FEATURES`]). Anything else (btrfs, zfs, overlay, tmpfs …) is an error asking
//!   for an explicit `--fs-type`.
//! * **The image file** ([`create_image_file`]): sparse, mode 0600, created exclusively in a
//!   work directory only its owner can use (0700, [`create_work_dir`]): the unencrypted image
//!   holds the whole system (the classic tool left it world-readable in `/tmp`).
//! * **Size** ([`plan_image`]): see [`HEADROOM_BYTES`] for the rule.
//!
//! mkfs is run on the image *file*, before any loop device exists: on a regular file `mke2fs`
//! discards (punches holes) and then knows the inode tables read as zeros, marks them zeroed,
//! and the kernel's lazy inode-table initialisation never writes them after mounting, which
//! keeps the image sparse. (On a loop device it cannot know this.) It also means no block
//! device carries the image's filesystem, and its copied UUID, before the copy needs it. While
//! the image is attached, though, its loop device has the source's UUID and label too, and udev
//! may point `/dev/disk/by-uuid` at it until it is detached, as with the classic tool;
//! `--new-uuid` avoids that. (Setting the UUID only after unmounting, with `tune2fs -U`, would
//! rewrite every metadata checksum and densify the image, and needs an `e2fsck -f` first.)
//!
//! External programs run without a shell, with `LC_ALL=C` (their output is parsed), stdin
//! closed, and errors that carry the command line and the end of their stderr.

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};
use std::process::{Command, Output};
use std::str::FromStr;

use nix::errno::Errno;

use super::cmd;

/// Images are sized in whole MiB (the classic `--size` unit), which also keeps the loop device
/// a whole number of sectors.
pub const SIZE_ALIGN_BYTES: u64 = 1 << 20;

/// Fixed headroom added to the used space. The size rule: `used + used / 10 + 256 MiB`
/// rounded up to a MiB. The tenth covers per-file rounding to blocks, directories and
/// extended-attribute blocks of the copy; the 256 MiB cover the new filesystem's own metadata
/// (journal up to 64 MiB and inode tables of 1/64 of the size up to 10 GiB) plus room to write
/// a few files after boot. statvfs's used space already excludes the source's own metadata.
pub const HEADROOM_BYTES: u64 = 256 << 20;

/// EC2's limit for the root device of an instance-store AMI: 10 GiB.
pub const ROOT_LIMIT_BYTES: u64 = 10 << 30;

/// Bytes of image per inode that `mke2fs` creates by default (`inode_ratio` of the default
/// usage type in mke2fs.conf). When the source has more files than that gives, the inode
/// count is set explicitly (see [`plan_image`]).
const EXT_BYTES_PER_INODE: u64 = 16384;

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

/// How many bytes of a failed program's stderr an error keeps (its end).
const STDERR_TAIL_BYTES: usize = 2000;

/// A filesystem type amibundle can make in an image (the `--fs-type` choices).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FsType {
    /// ext2.
    Ext2,
    /// ext3.
    Ext3,
    /// ext4.
    Ext4,
    /// XFS (needs `mkfs.xfs`, from xfsprogs).
    Xfs,
}

impl FsType {
    /// Every type, in `--fs-type` order.
    pub const ALL: [FsType; 4] = [FsType::Ext2, FsType::Ext3, FsType::Ext4, FsType::Xfs];

    /// The kernel's and mkfs's name: `ext4`, `xfs` …
    pub fn as_str(self) -> &'static str {
        match self {
            FsType::Ext2 => "ext2",
            FsType::Ext3 => "ext3",
            FsType::Ext4 => "ext4",
            FsType::Xfs => "xfs",
        }
    }

    /// Whether this is one of the ext family (made by `mke2fs`).
    pub fn is_ext(self) -> bool {
        !matches!(self, FsType::Xfs)
    }

    /// The longest label this type stores, in bytes.
    pub fn max_label_bytes(self) -> usize {
        if self.is_ext() { 16 } else { 12 }
    }

    /// Mount data to use for an image of this type while its source is mounted: XFS refuses to
    /// mount a second filesystem with the UUID of a mounted one unless told `nouuid`.
    pub fn mount_data(self) -> Option<&'static str> {
        match self {
            FsType::Xfs => Some("nouuid"),
            _ => None,
        }
    }

    fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == name)
    }
}

impl fmt::Display for FsType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for FsType {
    type Err = FsError;

    fn from_str(s: &str) -> Result<Self, FsError> {
        Self::from_name(s).ok_or_else(|| FsError::UnknownFsType { name: s.to_owned() })
    }
}

/// A filesystem UUID (the 16 bytes; shown in the usual lowercase 8-4-4-4-12 form).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FsUuid([u8; 16]);

impl FsUuid {
    /// A random (version 4) UUID, for `--new-uuid`.
    ///
    /// # Errors
    ///
    /// The system's random source failed.
    pub fn random() -> Result<Self, FsError> {
        let mut bytes = [0u8; 16];
        openssl::rand::rand_bytes(&mut bytes).map_err(|source| FsError::Random { source })?;
        bytes[6] = (bytes[6] & 0x0f) | 0x40;
        bytes[8] = (bytes[8] & 0x3f) | 0x80;
        Ok(Self(bytes))
    }
}

impl fmt::Display for FsUuid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, b) in self.0.iter().enumerate() {
            if matches!(i, 4 | 6 | 8 | 10) {
                f.write_str("-")?;
            }
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl FromStr for FsUuid {
    type Err = FsError;

    /// Parses the 8-4-4-4-12 form (either case).
    fn from_str(s: &str) -> Result<Self, FsError> {
        let bad = || FsError::BadUuid {
            value: s.to_owned(),
        };
        let groups: Vec<&str> = s.split('-').collect();
        let lengths: Vec<usize> = groups.iter().map(|g| g.len()).collect();
        if lengths != [8, 4, 4, 4, 12] {
            return Err(bad());
        }
        let hex_digits = groups.concat();
        let mut bytes = [0u8; 16];
        hex::decode_to_slice(&hex_digits, &mut bytes).map_err(|_| bad())?;
        Ok(Self(bytes))
    }
}

/// A failure finding the source filesystem, making the image's, or creating the image file.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    /// `/proc/thread-self/mountinfo` could not be read.
    #[error("reading /proc/thread-self/mountinfo (is /proc mounted?)")]
    ReadMountinfo {
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A line of a mountinfo file did not have the documented format.
    #[error("line {line} of mountinfo is malformed: {reason}")]
    ParseMountinfo {
        /// The 1-based line number.
        line: usize,
        /// What was wrong.
        reason: &'static str,
    },
    /// A path could not be resolved.
    #[error("resolving {path}")]
    Resolve {
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// No mount holds the path (cannot happen on a sane system: `/` holds everything).
    #[error("no mount in /proc/thread-self/mountinfo holds {path}")]
    NoMount {
        /// The path.
        path: PathBuf,
    },
    /// A device (or image file) to probe could not be opened.
    #[error("opening {path} to read its filesystem's label and UUID")]
    OpenDevice {
        /// The device.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The block device of a mounted filesystem could not be found.
    #[error(
        "cannot find the block device of the filesystem at {mount_point} (mounted from {source_name}, device {major}:{minor}); pass --fs-type to make the image without copying its label and UUID"
    )]
    NoDevice {
        /// The mount point.
        mount_point: PathBuf,
        /// The mountinfo source.
        source_name: String,
        /// The device's major number.
        major: u32,
        /// The device's minor number.
        minor: u32,
    },
    /// The volume's filesystem is not one amibundle can recreate.
    #[error(
        "the volume at {mount_point} is on {fs_type}, which bundle-vol cannot recreate in an image: choose one with --fs-type ext2|ext3|ext4|xfs"
    )]
    Unsupported {
        /// The source filesystem's type.
        fs_type: String,
        /// Its mount point.
        mount_point: PathBuf,
    },
    /// An unknown `--fs-type`.
    #[error("unknown filesystem type {name}: expected ext2, ext3, ext4 or xfs")]
    UnknownFsType {
        /// What was given.
        name: String,
    },
    /// A malformed UUID.
    #[error("{value} is not a UUID (expected the form 0b6c4f3e-2a57-4c1d-9e8f-123456789abc)")]
    BadUuid {
        /// What was given.
        value: String,
    },
    /// The label does not fit the target filesystem.
    #[error(
        "the label {label:?} is {len} bytes long but {fs_type} labels hold at most {max}: choose another --fs-type or relabel the source"
    )]
    LabelTooLong {
        /// The label.
        label: OsString,
        /// Its length in bytes.
        len: usize,
        /// The target type.
        fs_type: FsType,
        /// That type's limit.
        max: usize,
    },
    /// The random source failed.
    #[error("drawing a random UUID")]
    Random {
        /// The cause.
        #[source]
        source: openssl::error::ErrorStack,
    },
    /// A required program is not installed.
    #[error("{program} was not found on PATH, /usr/sbin or /sbin: install {package}")]
    ToolMissing {
        /// The program.
        program: &'static str,
        /// The package that provides it.
        package: &'static str,
    },
    /// A program could not be started.
    #[error("running {command}")]
    ToolStart {
        /// The command line.
        command: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A program failed.
    #[error("{command} failed ({status}): {stderr}")]
    ToolFailed {
        /// The command line.
        command: String,
        /// Its exit status.
        status: std::process::ExitStatus,
        /// The end of its stderr.
        stderr: String,
    },
    /// A program's output could not be understood.
    #[error("unexpected output from {command}: {reason}")]
    ToolOutput {
        /// The command line.
        command: String,
        /// What was wrong.
        reason: String,
    },
    /// The work directory could not be created or inspected.
    #[error("creating or checking the work directory {path}")]
    WorkDir {
        /// The directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The work directory is usable by others (or is not a directory we own).
    #[error(
        "the work directory {path} must be a directory owned by this user that no one else can use (mode 0700; it is {mode:04o}, owner {uid})"
    )]
    UnsafeWorkDir {
        /// The directory.
        path: PathBuf,
        /// Its mode bits.
        mode: u32,
        /// Its owner.
        uid: u32,
    },
    /// The image file name is not a plain file name.
    #[error("the image name {name:?} must be a plain file name")]
    BadImageName {
        /// The name.
        name: OsString,
    },
    /// The image size is not usable.
    #[error("the image size {size} bytes must be a non-zero multiple of 512")]
    BadImageSize {
        /// The size.
        size: u64,
    },
    /// The image file could not be created.
    #[error("creating the image file {path}")]
    CreateImage {
        /// The image file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// statvfs of the source failed.
    #[error("reading the used space of the filesystem holding {path}")]
    Statvfs {
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: Errno,
    },
    /// The used space cannot fit EC2's limit for instance-store root volumes.
    #[error(
        "the volume needs an image of at least {needed_mib} MiB but EC2 limits instance-store root volumes to {} MiB: leave data out with --exclude",
        ROOT_LIMIT_BYTES >> 20
    )]
    TooBigForRoot {
        /// The smallest image that holds the used space.
        needed_mib: u64,
    },
    /// An explicit size above EC2's root volume limit.
    #[error(
        "--size {requested_mib} MiB is above EC2's {} MiB limit for instance-store root volumes",
        ROOT_LIMIT_BYTES >> 20
    )]
    SizeAboveRootLimit {
        /// The requested size.
        requested_mib: u64,
    },
    /// An explicit size too small for the used space.
    #[error(
        "--size {requested_mib} MiB is too small: the volume's used space needs at least {needed_mib} MiB"
    )]
    SizeTooSmall {
        /// The requested size.
        requested_mib: u64,
        /// The smallest image that holds the used space.
        needed_mib: u64,
    },
}

// ---------------------------------------------------------------------------------------------
// mountinfo

/// One line of `/proc/<pid>/mountinfo` (see proc(5)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    /// Unique id of the mount.
    pub mount_id: u32,
    /// Id of the parent mount.
    pub parent_id: u32,
    /// Major number of the device (`st_dev` of files on it).
    pub major: u32,
    /// Minor number of the device.
    pub minor: u32,
    /// The directory of the filesystem that forms the mount's root (not `/` for bind mounts
    /// and btrfs subvolumes).
    pub root: PathBuf,
    /// The mount point, relative to the process's root.
    pub mount_point: PathBuf,
    /// Per-mount options (`rw,nosuid,relatime` …).
    pub mount_options: String,
    /// The filesystem type (`ext4`, `fuse.sshfs` …).
    pub fs_type: String,
    /// The mount source (a device path, or anything, e.g. `tmpfs`, `none`).
    pub source: OsString,
    /// Per-superblock options.
    pub super_options: String,
}

/// Parses the text of a `/proc/<pid>/mountinfo`.
///
/// # Errors
///
/// [`FsError::ParseMountinfo`] naming the first malformed line.
pub fn parse_mountinfo(text: &[u8]) -> Result<Vec<MountEntry>, FsError> {
    text.split(|&b| b == b'\n')
        .enumerate()
        .filter(|(_, line)| !line.is_empty())
        .map(|(i, line)| {
            parse_mountinfo_line(line).map_err(|reason| FsError::ParseMountinfo {
                line: i + 1,
                reason,
            })
        })
        .collect()
}

fn parse_mountinfo_line(line: &[u8]) -> Result<MountEntry, &'static str> {
    let fields: Vec<&[u8]> = line.split(|&b| b == b' ').collect();
    // Optional fields (zero or more `tag[:value]`) run up to a lone "-", from field 7 on.
    let sep = fields
        .iter()
        .skip(6)
        .position(|f| *f == b"-")
        .map(|p| p + 6)
        .ok_or("no \" - \" separator")?;
    if fields.len() != sep + 4 {
        return Err("expected three fields after the separator");
    }
    let text = |f: &[u8]| String::from_utf8_lossy(&unescape_octal(f)).into_owned();
    let number = |f: &[u8], what: &'static str| -> Result<u32, &'static str> {
        std::str::from_utf8(f)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or(what)
    };
    let (major, minor) = {
        let mut parts = fields[2].splitn(2, |&b| b == b':');
        let major = parts.next().ok_or("bad major:minor")?;
        let minor = parts.next().ok_or("bad major:minor")?;
        (
            number(major, "bad major number")?,
            number(minor, "bad minor number")?,
        )
    };
    let path = |f: &[u8]| PathBuf::from(OsString::from_vec(unescape_octal(f)));
    Ok(MountEntry {
        mount_id: number(fields[0], "bad mount id")?,
        parent_id: number(fields[1], "bad parent id")?,
        major,
        minor,
        root: path(fields[3]),
        mount_point: path(fields[4]),
        mount_options: text(fields[5]),
        fs_type: text(fields[sep + 1]),
        source: OsString::from_vec(unescape_octal(fields[sep + 2])),
        super_options: text(fields[sep + 3]),
    })
}

/// Decodes the kernel's `\NNN` octal escapes (space, tab, newline, backslash in paths).
pub(crate) fn unescape_octal(field: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        if field[i] == b'\\'
            && i + 3 < field.len()
            && field[i + 1..i + 4]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b))
        {
            let value = field[i + 1..i + 4]
                .iter()
                .fold(0u32, |acc, b| acc * 8 + u32::from(b - b'0'));
            if let Ok(byte) = u8::try_from(value) {
                out.push(byte);
                i += 4;
                continue;
            }
        }
        out.push(field[i]);
        i += 1;
    }
    out
}

/// The mount holding `path`: the entry of `/proc/thread-self/mountinfo` whose mount point is the
/// longest prefix of the resolved path (the last such entry, if a mount was mounted over).
///
/// # Errors
///
/// The path cannot be resolved, or mountinfo cannot be read or parsed.
pub fn find_mount(path: &Path) -> Result<MountEntry, FsError> {
    let resolved = std::fs::canonicalize(path).map_err(|source| FsError::Resolve {
        path: path.to_owned(),
        source,
    })?;
    mount_holding(mounts()?, &resolved).ok_or(FsError::NoMount { path: resolved })
}

/// Every mount of the calling thread's mount namespace (`/proc/thread-self/mountinfo`: after
/// `unshare`, `/proc/self` still shows the main thread's namespace).
///
/// # Errors
///
/// mountinfo cannot be read or parsed.
pub fn mounts() -> Result<Vec<MountEntry>, FsError> {
    let text = std::fs::read("/proc/thread-self/mountinfo")
        .map_err(|source| FsError::ReadMountinfo { source })?;
    parse_mountinfo(&text)
}

fn mount_holding(entries: Vec<MountEntry>, path: &Path) -> Option<MountEntry> {
    let mut best: Option<MountEntry> = None;
    for entry in entries {
        if !path.starts_with(&entry.mount_point) {
            continue;
        }
        let longer = best
            .as_ref()
            .is_none_or(|b| entry.mount_point.as_os_str().len() >= b.mount_point.as_os_str().len());
        if longer {
            best = Some(entry);
        }
    }
    best
}

/// The block device node of a mounted filesystem (see the module docs).
///
/// # Errors
///
/// [`FsError::NoDevice`] when neither the mountinfo source nor sysfs names a device node with
/// the mount's `major:minor` (e.g. a filesystem without a block device).
pub fn block_device(entry: &MountEntry) -> Result<PathBuf, FsError> {
    let want = nix::sys::stat::makedev(u64::from(entry.major), u64::from(entry.minor));
    let is_it = |path: &Path| {
        std::fs::metadata(path)
            .is_ok_and(|md| md.file_type().is_block_device() && md.rdev() == want)
    };
    let source = Path::new(&entry.source);
    if source.is_absolute() && is_it(source) {
        return Ok(source.to_owned());
    }
    let uevent = format!("/sys/dev/block/{}:{}/uevent", entry.major, entry.minor);
    if let Ok(text) = std::fs::read_to_string(uevent) {
        let name = text.lines().find_map(|l| l.strip_prefix("DEVNAME="));
        if let Some(name) = name {
            let node = Path::new("/dev").join(name);
            if is_it(&node) {
                return Ok(node);
            }
        }
    }
    Err(FsError::NoDevice {
        mount_point: entry.mount_point.clone(),
        source_name: entry.source.to_string_lossy().into_owned(),
        major: entry.major,
        minor: entry.minor,
    })
}

// ---------------------------------------------------------------------------------------------
// blkid, dumpe2fs

/// What `blkid` found on a device or image file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BlkidProbe {
    /// The on-disk type (`ext4`, `xfs` …); `None` when nothing was recognised.
    pub fs_type: Option<String>,
    /// The label, exact bytes.
    pub label: Option<OsString>,
    /// The UUID as blkid prints it (any form the filesystem uses; not necessarily a UUID for
    /// non-Linux filesystems).
    pub uuid: Option<String>,
}

/// Parses `blkid -o udev` output: `ID_FS_TYPE`, and the `\xNN`-encoded `ID_FS_LABEL_ENC` and
/// `ID_FS_UUID_ENC` (falling back to the plain `ID_FS_LABEL`/`ID_FS_UUID` if the encoded ones
/// are missing). Unknown keys and malformed lines are ignored.
pub fn parse_blkid_udev(text: &str) -> BlkidProbe {
    let mut probe = BlkidProbe::default();
    let (mut label_plain, mut uuid_plain) = (None, None);
    for line in text.lines() {
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        match key {
            "ID_FS_TYPE" if !value.is_empty() => probe.fs_type = Some(value.to_owned()),
            "ID_FS_LABEL_ENC" => probe.label = Some(OsString::from_vec(unescape_hex(value))),
            "ID_FS_UUID_ENC" => {
                probe.uuid = Some(String::from_utf8_lossy(&unescape_hex(value)).into_owned());
            }
            "ID_FS_LABEL" => label_plain = Some(OsString::from(value)),
            "ID_FS_UUID" => uuid_plain = Some(value.to_owned()),
            _ => {}
        }
    }
    probe.label = probe.label.or(label_plain).filter(|l| !l.is_empty());
    probe.uuid = probe.uuid.or(uuid_plain).filter(|u| !u.is_empty());
    probe
}

/// Decodes blkid's `\xNN` escapes; any other backslash is kept as is.
fn unescape_hex(value: &str) -> Vec<u8> {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && bytes.get(i + 1) == Some(&b'x') {
            let mut byte = [0u8; 1];
            if let Some(hex_pair) = bytes.get(i + 2..i + 4) {
                if hex::decode_to_slice(hex_pair, &mut byte).is_ok() {
                    out.push(byte[0]);
                    i += 4;
                    continue;
                }
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    out
}

/// Probes a device or image file with `blkid -p -o udev`.
///
/// # Errors
///
/// [`FsError::OpenDevice`] if the device cannot be opened for reading, blkid is missing
/// ([`FsError::ToolMissing`]) or fails ([`FsError::ToolFailed`] with its message). A device
/// with nothing recognisable on it is not an error: the probe is empty.
pub fn probe_device(device: &Path) -> Result<BlkidProbe, FsError> {
    // blkid reports a missing device exactly like an empty one (status 2, no message), and
    // says little about permissions: open it first for a precise error.
    File::open(device).map_err(|source| FsError::OpenDevice {
        path: device.to_owned(),
        source,
    })?;
    let args = [
        OsStr::new("-p"),
        OsStr::new("-o"),
        OsStr::new("udev"),
        device.as_os_str(),
    ];
    let (command, output) = run_tool(&BLKID, &args)?;
    // Exit status 2 with nothing on stderr is blkid's "nothing found"; with a message it is an
    // error such as an unreadable device.
    let nothing_found = output.status.code() == Some(2) && output.stderr.is_empty();
    if nothing_found {
        return Ok(BlkidProbe::default());
    }
    if !output.status.success() {
        return Err(failed(command, &output));
    }
    Ok(parse_blkid_udev(&String::from_utf8_lossy(&output.stdout)))
}

/// The parts of an ext filesystem's layout that a copy should keep.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtLayout {
    /// Block size in bytes.
    pub block_size: u32,
    /// Inode size in bytes (128 for filesystems GRUB Legacy must read).
    pub inode_size: u32,
    /// The feature names (`has_journal`, `extent`, `metadata_csum` …).
    pub features: Vec<String>,
}

/// Parses `dumpe2fs -h` output.
///
/// # Errors
///
/// The reason, if a needed line is missing or malformed.
pub fn parse_dumpe2fs(text: &str) -> Result<ExtLayout, String> {
    let field = |name: &str| {
        text.lines().find_map(|line| {
            let (key, value) = line.split_once(':')?;
            (key.trim() == name).then(|| value.trim())
        })
    };
    let number = |name: &str| -> Result<u32, String> {
        field(name)
            .ok_or_else(|| format!("no \"{name}\" line"))?
            .parse()
            .map_err(|_| format!("bad \"{name}\" value"))
    };
    let features = field("Filesystem features").ok_or("no \"Filesystem features\" line")?;
    Ok(ExtLayout {
        block_size: number("Block size")?,
        // ext2 filesystems from before revision 1 print no inode size: they have 128.
        inode_size: match field("Inode size") {
            Some(_) => number("Inode size")?,
            None => 128,
        },
        features: features
            .split_whitespace()
            .filter(|f| *f != "(none)")
            .map(str::to_owned)
            .collect(),
    })
}

/// Reads the layout of the ext filesystem on `device` with `dumpe2fs -h`.
///
/// # Errors
///
/// dumpe2fs is missing or fails, or its output is not understood.
pub fn read_ext_layout(device: &Path) -> Result<ExtLayout, FsError> {
    let args = [OsStr::new("-h"), device.as_os_str()];
    let (command, output) = run_checked(&DUMPE2FS, &args)?;
    parse_dumpe2fs(&String::from_utf8_lossy(&output.stdout))
        .map_err(|reason| FsError::ToolOutput { command, reason })
}

// ---------------------------------------------------------------------------------------------
// The source filesystem and the plan for the image's

/// The filesystem a volume lives on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceFilesystem {
    /// Its mount.
    pub mount: MountEntry,
    /// Its block device; `None` for types amibundle cannot recreate (nothing was probed).
    pub device: Option<PathBuf>,
    /// What blkid found on the device.
    pub probe: BlkidProbe,
    /// The ext layout, for ext filesystems.
    pub ext: Option<ExtLayout>,
}

impl SourceFilesystem {
    /// The type: blkid's on-disk type if known (an ext3 mounted by the ext4 driver is ext3),
    /// else the mount's.
    pub fn fs_type(&self) -> &str {
        self.probe.fs_type.as_deref().unwrap_or(&self.mount.fs_type)
    }
}

/// Finds the filesystem holding `volume` and, when it is one amibundle can recreate, its
/// device, label, UUID and (ext) layout.
///
/// # Errors
///
/// mountinfo, the device, blkid or dumpe2fs failed.
pub fn inspect_source(volume: &Path) -> Result<SourceFilesystem, FsError> {
    let mount = find_mount(volume)?;
    if FsType::from_name(&mount.fs_type).is_none() {
        return Ok(SourceFilesystem {
            mount,
            device: None,
            probe: BlkidProbe::default(),
            ext: None,
        });
    }
    let device = block_device(&mount)?;
    let probe = probe_device(&device)?;
    let is_ext = probe
        .fs_type
        .as_deref()
        .and_then(FsType::from_name)
        .is_some_and(FsType::is_ext);
    let ext = if is_ext {
        Some(read_ext_layout(&device)?)
    } else {
        None
    };
    Ok(SourceFilesystem {
        mount,
        device: Some(device),
        probe,
        ext,
    })
}

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
    /// For ext: the inode count, when the default would be too few (see [`plan_image`]).
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

// ---------------------------------------------------------------------------------------------
// mkfs

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

// ---------------------------------------------------------------------------------------------
// The work directory and the image file

/// Creates a fresh work directory in `parent`, mode 0700 (removed with its contents when the
/// returned guard drops: unmount everything below it first, and call `keep()` on it if an
/// unmount failed).
///
/// # Errors
///
/// [`FsError::WorkDir`].
pub fn create_work_dir(parent: &Path) -> Result<tempfile::TempDir, FsError> {
    tempfile::Builder::new()
        .prefix("amibundle-")
        .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o700))
        .tempdir_in(parent)
        .map_err(|source| FsError::WorkDir {
            path: parent.to_owned(),
            source,
        })
}

/// Creates the sparse image file `dir/name` of `size` bytes, mode 0600, failing if it exists.
/// `dir` must be a directory of this user that others cannot use (mode 0700, e.g. from
/// [`create_work_dir`]), so nobody else can open, swap or watch the unencrypted image.
///
/// # Errors
///
/// [`FsError::UnsafeWorkDir`], [`FsError::BadImageName`], [`FsError::BadImageSize`] (zero
/// or not whole sectors), [`FsError::CreateImage`] (e.g. it exists).
pub fn create_image_file(dir: &Path, name: &str, size: u64) -> Result<PathBuf, FsError> {
    let md = std::fs::metadata(dir).map_err(|source| FsError::WorkDir {
        path: dir.to_owned(),
        source,
    })?;
    let mode = md.mode() & 0o7777;
    if !md.is_dir() || md.uid() != nix::unistd::geteuid().as_raw() || mode & 0o077 != 0 {
        return Err(FsError::UnsafeWorkDir {
            path: dir.to_owned(),
            mode,
            uid: md.uid(),
        });
    }
    let mut components = Path::new(name).components();
    if !matches!(
        (components.next(), components.next()),
        (Some(Component::Normal(_)), None)
    ) {
        return Err(FsError::BadImageName { name: name.into() });
    }
    if size == 0 || size % 512 != 0 {
        return Err(FsError::BadImageSize { size });
    }
    let path = dir.join(name);
    let file: File = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&path)
        .map_err(|source| FsError::CreateImage {
            path: path.clone(),
            source,
        })?;
    if let Err(source) = file.set_len(size) {
        drop(file);
        let _ = std::fs::remove_file(&path);
        return Err(FsError::CreateImage { path, source });
    }
    Ok(path)
}

// ---------------------------------------------------------------------------------------------
// Sizing

/// What the source uses, from statvfs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SourceUsage {
    /// Bytes in use (blocks in use × fragment size; the filesystem's own metadata excluded).
    pub used_bytes: u64,
    /// Inodes in use (0 where the filesystem does not count them, e.g. btrfs).
    pub used_inodes: u64,
}

/// The used space and inodes of the filesystem holding `path`. For a volume that is only part
/// of its filesystem this is an over-estimate, which only makes the image larger.
///
/// # Errors
///
/// [`FsError::Statvfs`].
pub fn source_usage(path: &Path) -> Result<SourceUsage, FsError> {
    let st = nix::sys::statvfs::statvfs(path).map_err(|source| FsError::Statvfs {
        path: path.to_owned(),
        source,
    })?;
    // The counts are `u32` on some 32-bit targets.
    #[allow(clippy::useless_conversion)]
    let used_blocks = u64::from(st.blocks()).saturating_sub(u64::from(st.blocks_free()));
    #[allow(clippy::useless_conversion)]
    Ok(SourceUsage {
        used_bytes: used_blocks.saturating_mul(u64::from(st.fragment_size())),
        used_inodes: u64::from(st.files()).saturating_sub(u64::from(st.files_free())),
    })
}

/// Whether the image is of a root volume (EC2 limits instance-store roots to 10 GiB) or of a
/// data directory (no limit).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VolumeRole {
    /// The root filesystem of the AMI.
    Root,
    /// Any other directory.
    Data,
}

/// The image's size and, for ext, inode count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImagePlan {
    /// The image file's size in bytes (whole MiB).
    pub size_bytes: u64,
    /// The inode count to give `mke2fs` (`MkfsSpec::inodes`) when its default would be too
    /// few for the source's files.
    pub inodes: Option<u64>,
}

/// Sizes the image: `requested_mib` (`--size`) if given, else the rule of [`HEADROOM_BYTES`]
/// (`used + used / 10 + 256 MiB`, in whole MiB). Inodes: the source's count plus a tenth and
/// 4096 more; when `mke2fs`'s default (one per 16 KiB) is fewer, the count is set explicitly
/// and the automatic size grows by the inode tables' size (256 bytes each).
///
/// Root volumes: an automatic size above 10 GiB is capped at 10 GiB as long as the used space
/// plus the filesystem's metadata still fits (`used + used / 50 + 256 MiB`), and an explicit
/// size must be at most 10 GiB.
///
/// # Errors
///
/// [`FsError::TooBigForRoot`], [`FsError::SizeAboveRootLimit`], [`FsError::SizeTooSmall`]
/// (an explicit size below `used + used / 50 + 256 MiB`).
pub fn plan_image(
    requested_mib: Option<u64>,
    usage: SourceUsage,
    role: VolumeRole,
) -> Result<ImagePlan, FsError> {
    let used = usage.used_bytes;
    let wanted_inodes = usage
        .used_inodes
        .saturating_add(usage.used_inodes / 10)
        .saturating_add(4096);
    let inode_table = |inodes: Option<u64>| inodes.map_or(0, |n| n.saturating_mul(256));
    // The least that holds the data: its metadata at up to 10 GiB fits in the 256 MiB.
    let minimum = |inodes| {
        round_up_mib(
            used.saturating_add(used / 50)
                .saturating_add(HEADROOM_BYTES)
                .saturating_add(inode_table(inodes)),
        )
    };
    let inodes_for =
        |size: u64| (wanted_inodes > size / EXT_BYTES_PER_INODE).then_some(wanted_inodes);

    if let Some(mib) = requested_mib {
        let size = mib.saturating_mul(SIZE_ALIGN_BYTES);
        if role == VolumeRole::Root && size > ROOT_LIMIT_BYTES {
            return Err(FsError::SizeAboveRootLimit { requested_mib: mib });
        }
        let inodes = inodes_for(size);
        let needed = minimum(inodes);
        if size < needed {
            return Err(FsError::SizeTooSmall {
                requested_mib: mib,
                needed_mib: needed >> 20,
            });
        }
        return Ok(ImagePlan {
            size_bytes: size,
            inodes,
        });
    }

    let base = used
        .saturating_add(used / 10)
        .saturating_add(HEADROOM_BYTES);
    let inodes = inodes_for(base);
    let size = round_up_mib(base.saturating_add(inode_table(inodes)));
    if role == VolumeRole::Root && size > ROOT_LIMIT_BYTES {
        let inodes = inodes_for(ROOT_LIMIT_BYTES);
        let needed = minimum(inodes);
        if needed > ROOT_LIMIT_BYTES {
            return Err(FsError::TooBigForRoot {
                needed_mib: needed >> 20,
            });
        }
        return Ok(ImagePlan {
            size_bytes: ROOT_LIMIT_BYTES,
            inodes,
        });
    }
    Ok(ImagePlan {
        size_bytes: size,
        inodes,
    })
}

fn round_up_mib(bytes: u64) -> u64 {
    bytes
        .div_ceil(SIZE_ALIGN_BYTES)
        .saturating_mul(SIZE_ALIGN_BYTES)
}

// ---------------------------------------------------------------------------------------------
// Running programs

/// An external program and the package that provides it (for the "not installed" error).
struct Tool {
    program: &'static str,
    package: &'static str,
}

const BLKID: Tool = Tool {
    program: "blkid",
    package: "util-linux",
};
const DUMPE2FS: Tool = Tool {
    program: "dumpe2fs",
    package: "e2fsprogs",
};
const MKE2FS: Tool = Tool {
    program: "mke2fs",
    package: "e2fsprogs",
};
const MKFS_XFS: Tool = Tool {
    program: "mkfs.xfs",
    package: "xfsprogs (or choose --fs-type ext4)",
};

/// Runs `tool` with `args`; returns its command line (for errors) and output, whatever the
/// exit status. The program is looked for on `PATH`, then in `/usr/sbin` and `/sbin`
/// ([`cmd::SearchPath::path_then_sbin`]).
fn run_tool(tool: &Tool, args: &[&OsStr]) -> Result<(String, Output), FsError> {
    let program = cmd::SearchPath::path_then_sbin(std::env::var_os("PATH").as_deref())
        .find(tool.program)
        .ok_or(FsError::ToolMissing {
            program: tool.program,
            package: tool.package,
        })?;
    let command = cmd::shell_line(tool.program, args);
    let output =
        cmd::output(Command::new(&program).args(args).env("LC_ALL", "C")).map_err(|source| {
            FsError::ToolStart {
                command: command.clone(),
                source,
            }
        })?;
    Ok((command, output))
}

/// Runs `tool` with `args` like [`run_tool`]; a non-zero exit status is an error.
fn run_checked(tool: &Tool, args: &[&OsStr]) -> Result<(String, Output), FsError> {
    let (command, output) = run_tool(tool, args)?;
    if !output.status.success() {
        return Err(failed(command, &output));
    }
    Ok((command, output))
}

fn failed(command: String, output: &Output) -> FsError {
    FsError::ToolFailed {
        command,
        status: output.status,
        stderr: cmd::stderr_tail(&output.stderr, cmd::Tail::Bytes(STDERR_TAIL_BYTES)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::testing::{require_root, sparse_file};

    #[test]
    fn parses_mountinfo_with_escapes_and_optional_fields() {
        let text = b"22 1 259:2 / / rw,relatime shared:1 - ext4 /dev/nvme0n1p1 rw,discard,errors=remount-ro\n\
            36 22 0:31 / /proc rw,nosuid,nodev,noexec,relatime - proc proc rw\n\
            41 22 8:17 /sub\\040dir /mnt/with\\040space\\011tab\\134back rw shared:5 master:2 - xfs /dev/sdb1 rw,attr2\n\
            42 22 0:45 / /mnt/x rw - fuse.sshfs user@host:/a\\040b rw,user_id=0\n";
        let entries = parse_mountinfo(text).expect("parse");
        assert_eq!(entries.len(), 4);
        assert_eq!(
            entries[0],
            MountEntry {
                mount_id: 22,
                parent_id: 1,
                major: 259,
                minor: 2,
                root: "/".into(),
                mount_point: "/".into(),
                mount_options: "rw,relatime".into(),
                fs_type: "ext4".into(),
                source: "/dev/nvme0n1p1".into(),
                super_options: "rw,discard,errors=remount-ro".into(),
            }
        );
        assert_eq!(entries[1].fs_type, "proc");
        assert_eq!(entries[2].root, PathBuf::from("/sub dir"));
        assert_eq!(
            entries[2].mount_point,
            PathBuf::from("/mnt/with space\ttab\\back")
        );
        assert_eq!((entries[2].major, entries[2].minor), (8, 17));
        assert_eq!(entries[2].fs_type, "xfs");
        assert_eq!(entries[3].source, OsString::from("user@host:/a b"));

        // Non-UTF-8 bytes in a path are kept.
        let raw = b"50 22 7:0 / /mnt/\xff\\040x rw - ext4 /dev/loop0 rw\n";
        let entries = parse_mountinfo(raw).expect("parse");
        assert_eq!(
            entries[0].mount_point.as_os_str().as_bytes(),
            b"/mnt/\xff x"
        );
    }

    #[test]
    fn rejects_malformed_mountinfo_naming_the_line() {
        let text = b"22 1 259:2 / / rw - ext4 /dev/a rw\n23 22 8:1 / /x rw ext4 /dev/b rw\n";
        let err = parse_mountinfo(text).expect_err("no separator");
        assert!(
            matches!(err, FsError::ParseMountinfo { line: 2, .. }),
            "{err:?}"
        );
        assert!(parse_mountinfo(b"x 1 1:1 / / rw - ext4 a b\n").is_err());
        assert!(parse_mountinfo(b"1 1 11 / / rw - ext4 a b\n").is_err());
        assert!(parse_mountinfo(b"1 1 1:1 / / rw - ext4 a\n").is_err());
    }

    #[test]
    fn the_longest_and_latest_mount_holds_a_path() {
        let text = b"1 0 8:1 / / rw - ext4 /dev/sda1 rw\n\
            2 1 8:2 / /home rw - ext4 /dev/sda2 rw\n\
            3 1 8:3 / /homer rw - ext4 /dev/sda3 rw\n\
            4 2 8:4 / /home rw - xfs /dev/sda4 rw\n";
        let entries = parse_mountinfo(text).expect("parse");
        let holder = |p: &str| {
            mount_holding(entries.clone(), Path::new(p))
                .expect("holder")
                .mount_id
        };
        assert_eq!(holder("/etc/fstab"), 1);
        assert_eq!(holder("/home"), 4, "the later mount over /home");
        assert_eq!(holder("/home/u"), 4);
        assert_eq!(holder("/homer/x"), 3, "components, not string prefixes");
    }

    #[test]
    fn finds_the_mounts_of_real_paths_like_findmnt() {
        for path in ["/", "/proc", "/proc/self", "/sys", "/tmp"] {
            let ours = find_mount(Path::new(path)).expect("find_mount");
            let out = Command::new("findmnt")
                .args(["-n", "-o", "TARGET,FSTYPE", "-T", path])
                .output()
                .expect("findmnt");
            let theirs = String::from_utf8_lossy(&out.stdout);
            let mut fields = theirs.split_whitespace();
            assert_eq!(
                (fields.next(), fields.next()),
                (ours.mount_point.to_str(), Some(ours.fs_type.as_str())),
                "{path}"
            );
        }
    }

    #[test]
    fn parses_blkid_udev_output_exactly() {
        // Captured from `blkid -p -o udev` on an ext4 labelled "x\x01yé a\b$".
        let text = "ID_FS_LABEL=xyé_a\\b$\n\
            ID_FS_LABEL_ENC=x\\x01yé\\x20a\\x5cb\\x24\n\
            ID_FS_UUID=f8cbf211-e75f-4f9c-b654-d1003755bdff\n\
            ID_FS_UUID_ENC=f8cbf211-e75f-4f9c-b654-d1003755bdff\n\
            ID_FS_VERSION=1.0\n\
            ID_FS_BLOCK_SIZE=4096\n\
            ID_FS_TYPE=ext4\n\
            ID_FS_USAGE=filesystem\n";
        let probe = parse_blkid_udev(text);
        assert_eq!(probe.fs_type.as_deref(), Some("ext4"));
        assert_eq!(
            probe.label.as_deref().map(OsStrExt::as_bytes),
            Some("x\x01yé a\\b$".as_bytes())
        );
        assert_eq!(
            probe.uuid.as_deref(),
            Some("f8cbf211-e75f-4f9c-b654-d1003755bdff")
        );

        // No label, an XFS, a broken escape kept literally, junk lines ignored.
        let probe = parse_blkid_udev(
            "junk\nID_FS_UUID_ENC=0b6c4f3e-2a57-4c1d-9e8f-123456789abc\nID_FS_TYPE=xfs\n",
        );
        assert_eq!(
            probe,
            BlkidProbe {
                fs_type: Some("xfs".into()),
                label: None,
                uuid: Some("0b6c4f3e-2a57-4c1d-9e8f-123456789abc".into()),
            }
        );
        assert_eq!(unescape_hex(r"a\xzz\x4"), br"a\xzz\x4");
        // Only the plain forms (old blkid).
        let probe = parse_blkid_udev("ID_FS_LABEL=root\nID_FS_UUID=1234-ABCD\nID_FS_TYPE=vfat\n");
        assert_eq!(probe.label, Some("root".into()));
        assert_eq!(probe.uuid.as_deref(), Some("1234-ABCD"));
        assert_eq!(parse_blkid_udev(""), BlkidProbe::default());
    }

    #[test]
    fn parses_dumpe2fs_headers() {
        let text = "dumpe2fs 1.47.0 (5-Feb-2023)\n\
            Filesystem volume name:   root\n\
            Filesystem UUID:          0b6c4f3e-2a57-4c1d-9e8f-123456789abc\n\
            Filesystem features:      has_journal ext_attr resize_inode dir_index filetype extent flex_bg sparse_super large_file huge_file dir_nlink extra_isize\n\
            Block size:               4096\n\
            Inode size:\t          128\n";
        let layout = parse_dumpe2fs(text).expect("parse");
        assert_eq!(layout.block_size, 4096);
        assert_eq!(layout.inode_size, 128);
        assert_eq!(layout.features.len(), 12);
        assert!(layout.features.iter().any(|f| f == "extent"));
        assert!(parse_dumpe2fs("Block size: 4096\n").is_err());
        assert!(parse_dumpe2fs("Filesystem features: (none)\nBlock size: x\n").is_err());
        let old = parse_dumpe2fs("Filesystem features:      (none)\nBlock size:  1024\n")
            .expect("revision 0");
        assert_eq!((old.inode_size, old.features.len()), (128, 0));
    }

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

    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;

    fn usage(used_bytes: u64, used_inodes: u64) -> SourceUsage {
        SourceUsage {
            used_bytes,
            used_inodes,
        }
    }

    #[test]
    fn sizes_images_by_the_documented_rule() {
        // 1000 MiB used: 1000 + 100 + 256 MiB.
        let plan = plan_image(None, usage(1000 * MIB, 30_000), VolumeRole::Root).expect("plan");
        assert_eq!(
            plan,
            ImagePlan {
                size_bytes: 1356 * MIB,
                inodes: None
            }
        );
        // Rounded up to whole MiB.
        let plan = plan_image(None, usage(1, 0), VolumeRole::Data).expect("plan");
        assert_eq!(plan.size_bytes, 257 * MIB);
        // Many small files: more inodes than one per 16 KiB, and room for their tables.
        let plan = plan_image(None, usage(1000 * MIB, 200_000), VolumeRole::Data).expect("plan");
        let inodes = 200_000 + 20_000 + 4096;
        assert_eq!(plan.inodes, Some(inodes));
        assert_eq!(
            plan.size_bytes,
            (1356 * MIB + inodes * 256).div_ceil(MIB) * MIB
        );
        // Root volumes are capped at 10 GiB while the data still fits...
        let plan = plan_image(None, usage(9 * GIB, 100_000), VolumeRole::Root).expect("plan");
        assert_eq!(
            plan,
            ImagePlan {
                size_bytes: 10 * GIB,
                inodes: None
            }
        );
        // ... and refused when it does not, saying what to do.
        let err = plan_image(None, usage(10 * GIB - 200 * MIB, 100_000), VolumeRole::Root)
            .expect_err("too big");
        assert!(matches!(err, FsError::TooBigForRoot { .. }), "{err:?}");
        assert!(err.to_string().contains("--exclude"), "{err}");
        // Data volumes are not capped.
        let plan = plan_image(None, usage(20 * GIB, 100_000), VolumeRole::Data).expect("plan");
        assert_eq!(
            plan,
            ImagePlan {
                size_bytes: 22 * GIB + 256 * MIB,
                inodes: None
            }
        );
    }

    #[test]
    fn checks_an_explicit_size() {
        let used = usage(1000 * MIB, 1000);
        assert_eq!(
            plan_image(Some(2048), used, VolumeRole::Root).expect("plan"),
            ImagePlan {
                size_bytes: 2048 * MIB,
                inodes: None
            }
        );
        let err = plan_image(Some(10241), used, VolumeRole::Root).expect_err("over the limit");
        assert_eq!(
            err.to_string(),
            "--size 10241 MiB is above EC2's 10240 MiB limit for instance-store root volumes"
        );
        assert!(plan_image(Some(20480), used, VolumeRole::Data).is_ok());
        // 1000 + 20 + 256 MiB is the least.
        assert!(plan_image(Some(1276), used, VolumeRole::Data).is_ok());
        let err = plan_image(Some(1275), used, VolumeRole::Data).expect_err("too small");
        assert_eq!(
            err.to_string(),
            "--size 1275 MiB is too small: the volume's used space needs at least 1276 MiB"
        );
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

    #[test]
    fn creates_private_sparse_images_in_private_dirs() {
        let parent = tempfile::tempdir().expect("temp dir");
        let work = create_work_dir(parent.path()).expect("work dir");
        let md = std::fs::metadata(work.path()).expect("stat");
        assert_eq!(md.mode() & 0o7777, 0o700);

        let image = create_image_file(work.path(), "vol.img", 64 * MIB).expect("image");
        let md = std::fs::metadata(&image).expect("stat");
        assert_eq!(md.mode() & 0o7777, 0o600);
        assert_eq!(md.len(), 64 * MIB);
        assert_eq!(md.blocks(), 0, "sparse");

        let err = create_image_file(work.path(), "vol.img", 64 * MIB).expect_err("exists");
        assert!(matches!(err, FsError::CreateImage { .. }), "{err:?}");
        for name in ["", "a/b", "..", "/abs"] {
            let err = create_image_file(work.path(), name, MIB).expect_err("bad name");
            assert!(
                matches!(err, FsError::BadImageName { .. }),
                "{name:?}: {err:?}"
            );
        }
        for size in [0, 1000] {
            let err = create_image_file(work.path(), "s.img", size).expect_err("bad size");
            assert!(
                matches!(err, FsError::BadImageSize { .. }),
                "{size}: {err:?}"
            );
        }
        // A directory others can use is refused, and nothing is created in it.
        let open = parent.path().join("open");
        std::fs::create_dir(&open).expect("dir");
        std::fs::set_permissions(&open, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .expect("chmod");
        let err = create_image_file(&open, "x.img", MIB).expect_err("unsafe dir");
        assert_eq!(
            err.to_string(),
            format!(
                "the work directory {} must be a directory owned by this user that no one else can use (mode 0700; it is 0755, owner {})",
                open.display(),
                nix::unistd::geteuid()
            )
        );
        assert!(!open.join("x.img").exists());
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
        let err = mkfs(Path::new("/nonexistent/img"), &MkfsSpec::new(FsType::Ext4))
            .expect_err("no target");
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
}
