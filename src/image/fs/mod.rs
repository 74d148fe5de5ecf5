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
//!
//! The parts: `mountinfo` (the mount holding a path, its block device), `probe` (blkid,
//! dumpe2fs, [`inspect_source`]), `mkfs` (the plan and the command lines), `workdir` (the work
//! directory and the image file), `sizing` (the size rule). This module holds the types shared
//! by them, the errors and the running of the external programs, and re-exports each part's
//! public items.

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::io;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::str::FromStr;

use nix::errno::Errno;

use super::cmd;

mod mkfs;
mod mountinfo;
mod probe;
mod sizing;
#[cfg(test)]
mod tests;
mod workdir;

pub use mkfs::{MkfsSpec, mkfs, plan_mkfs};
#[cfg(test)]
pub(crate) use mountinfo::parse_mountinfo;
pub(crate) use mountinfo::unescape_octal;
pub use mountinfo::{MountEntry, block_device, find_mount, mounts};
pub use probe::{BlkidProbe, ExtLayout, SourceFilesystem, inspect_source, probe_device};
pub use sizing::{ROOT_LIMIT_BYTES, SourceUsage, VolumeRole, plan_image, source_usage};
pub use workdir::{create_image_file, create_work_dir};

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
// Running programs

/// How many bytes of a failed program's stderr an error keeps (its end).
const STDERR_TAIL_BYTES: usize = 2000;

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
