//! Partitioned images for HVM instance-store AMIs: which partition table the source volume's
//! disk has (detected through sysfs, NVMe and device-mapper included), the MBR or GPT table
//! written into the image file in pure Rust, and GRUB 2 for BIOS (i386-pc) installed into the
//! image from the image's own GRUB modules.
//!
//! Why not the classic way (docs/reference-behaviour.md §2.6, §2.7, §2.10): ec2-bundle-vol
//! recognised only `/dev/sd*` and `/dev/xvd*` names by pattern ("Non-standard volume device" on
//! every NVMe build host), euca2ools passed `/dev/xvda1` to parted as if it were a disk, both
//! shelled out to parted/sgdisk/kpartx/dmsetup with fixed device names, and the only bootloader
//! was GRUB Legacy, which current distributions no longer ship (docs/reference-behaviour.md
//! §14, pains 11 and 12).
//!
//! * Detection ([`detect`], [`Sysfs`]) follows `/sys/dev/block/MAJ:MIN` to the device's sysfs
//!   directory: a `partition` file there means a partition, whose parent directory is its disk;
//!   device-mapper and md devices are followed through `slaves/`; a device that is neither (a
//!   Xen PV `/dev/xvda1`, which is a whole disk despite its name) has no table. The disk's
//!   table type is read from its first two logical sectors. No device name is ever taken apart.
//! * Tables ([`write_table`]): one bootable Linux partition at 1 MiB for MBR; for GPT a
//!   protective MBR, the filesystem as partition 1 at 2 MiB and a 1 MiB BIOS boot partition
//!   (partition 2, at 1 MiB) where GRUB embeds its core image, with both headers and entry
//!   arrays and their CRC-32s. Partition sizes are whole MiB.
//! * GRUB ([`install_grub`]): the host's `grub-install` (or `grub2-install`) run with
//!   `--directory` pointing at the image's own `usr/lib/grub/i386-pc`, so the modules, boot.img
//!   and core image are those of the system being bundled. The kernel command line travels with
//!   the copied `grub.cfg`; what would not work on the new instance is reported as a
//!   [`BootWarning`].
//!
//! Putting the filesystem into partition 1: attach the whole image to one loop device and make
//! the kernel create `loopNp1` (and `loopNp2`). Prefer adding the partitions with the
//! `BLKPG_ADD_PARTITION` ioctl from [`PartitionLayout::partitions`] over `LO_FLAGS_PARTSCAN`
//! alone: kernels built without partition-table parsers (`CONFIG_MSDOS_PARTITION`,
//! `CONFIG_EFI_PARTITION`, as on our CI machines) accept the flag and create no partition
//! devices. A second loop device with an offset is not an alternative: `grub-install` must
//! find the filesystem holding `/boot` as a partition of the disk it installs to.
//!
//! The parts: `detection` reads the source disk's table, `source` its identifiers, `table` lays
//! out and writes the image's table, `bootloader` installs GRUB. This module holds the shared
//! types and constants and the errors, and re-exports each part's public items.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;

mod bootloader;
mod detection;
mod source;
mod table;
#[cfg(test)]
mod tests;

pub use bootloader::{GrubReport, has_boot_code, install_grub};
#[cfg(feature = "cli")]
pub use detection::table_style;
pub use detection::{Detection, Sysfs, detect, root_partition};
pub use source::MAX_MBR_NUMBER;
pub use table::{TableSpec, write_table};

/// Logical sector size of the image. Loop devices present 512-byte sectors by default, and EC2
/// (Xen) presents instance-store roots with 512-byte sectors, so the table is laid out in them.
pub const SECTOR_BYTES: u64 = 512;

/// Partition alignment: 1 MiB, what every current partitioning tool uses; keeps filesystem
/// blocks aligned with any underlying block or erase size.
pub const ALIGN_BYTES: u64 = 1 << 20;

/// Entries in a GPT partition array: 128 is the minimum the UEFI specification allows for the
/// array's size (16 KiB) and what every tool writes.
const GPT_ENTRY_COUNT: u32 = 128;

/// GPT partition names are 36 UTF-16 code units.
const GPT_NAME_UNITS: usize = 36;

/// The GPT partition name of the root filesystem when the source filesystem has no label.
pub const DEFAULT_ROOT_NAME: &str = "amibundle-root";

/// MBR partition type of a Linux filesystem.
const MBR_TYPE_LINUX: u8 = 0x83;

// ---------------------------------------------------------------------------------------------
// Choices
// ---------------------------------------------------------------------------------------------

/// The partition table an image has (or a source disk was found to have).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PartitionStyle {
    /// No table: the image is the filesystem (the classic paravirtual layout).
    None,
    /// An MS-DOS partition table with one bootable Linux partition.
    Mbr,
    /// A GUID partition table with the filesystem and a BIOS boot partition.
    Gpt,
}

impl fmt::Display for PartitionStyle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::None => "none",
            Self::Mbr => "mbr",
            Self::Gpt => "gpt",
        })
    }
}

/// The `--partition` flag: a fixed style or `auto`, the style of the source volume's disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
pub enum PartitionChoice {
    /// The table of the disk the source volume is on; none when the volume is not on a
    /// partition.
    #[default]
    Auto,
    /// MBR whatever the source has.
    Mbr,
    /// GPT whatever the source has.
    Gpt,
    /// A plain filesystem image.
    None,
}

impl PartitionChoice {
    /// The flag value (`auto`, `mbr`, `gpt`, `none`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Mbr => "mbr",
            Self::Gpt => "gpt",
            Self::None => "none",
        }
    }

    /// The style to build. A fixed choice is returned as is; `auto` detects the table of the
    /// disk holding `device` (the source volume's block device, see `detect`), and is
    /// [`PartitionStyle::None`] when there is no block device (a volume on tmpfs, overlayfs,
    /// NFS …). Pass `None` as well for a volume that is not the root filesystem: a data
    /// directory needs no table and no bootloader, whatever disk it is on.
    ///
    /// # Errors
    /// Those of `detect`.
    pub fn resolve(self, device: Option<&Path>) -> Result<PartitionStyle, PartitionError> {
        match (self, device) {
            (Self::Mbr, _) => Ok(PartitionStyle::Mbr),
            (Self::Gpt, _) => Ok(PartitionStyle::Gpt),
            (Self::None, _) | (Self::Auto, None) => Ok(PartitionStyle::None),
            (Self::Auto, Some(device)) => detect(device).map(|d| d.style),
        }
    }
}

/// The `--bootloader` flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
pub enum Bootloader {
    /// GRUB 2 for BIOS (i386-pc), from the image's own GRUB modules.
    #[default]
    Grub2,
    /// No bootloader: the image's boot sector stays empty.
    None,
}

impl Bootloader {
    /// The flag value (`grub2`, `none`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Grub2 => "grub2",
            Self::None => "none",
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/// Why the partition table could not be detected or written.
#[derive(Debug, thiserror::Error)]
pub enum PartitionError {
    /// The source device could not be inspected.
    #[error("inspecting the source device {device}")]
    Stat {
        /// The device path given.
        device: PathBuf,
        /// The `stat` failure.
        #[source]
        source: nix::Error,
    },
    /// The source disk's table cannot be carried over as it is.
    #[error("the partition table of {disk} cannot be kept: {reason}")]
    SourceTable {
        /// The source disk.
        disk: PathBuf,
        /// What is wrong or unkeepable.
        reason: String,
    },
    /// A partition number the image's table cannot hold.
    #[error(
        "partition number {number} does not fit an image's {style} table (1 to {max}), or is \
         used twice"
    )]
    BadNumber {
        /// The table.
        style: PartitionStyle,
        /// The number asked for.
        number: u32,
        /// The largest number the table holds.
        max: u32,
    },
    /// The source path is not a block device.
    #[error("{device} is not a block device; pass --partition mbr, gpt or none")]
    NotBlockDevice {
        /// The path given.
        device: PathBuf,
    },
    /// Sysfs could not be read where it should describe the device.
    #[error("reading {path} (sysfs) to find the disk of the source device")]
    Sysfs {
        /// The sysfs path.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// A sysfs file held something unexpected.
    #[error("unexpected content {content:?} in {path} (sysfs)")]
    SysfsContent {
        /// The sysfs file.
        path: PathBuf,
        /// What it held.
        content: String,
    },
    /// The first sectors of the source disk could not be read.
    #[error("reading the partition table of {disk}")]
    ReadDisk {
        /// The disk's device node.
        disk: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// The disk has partitions but neither an MBR nor a GPT.
    #[error(
        "the partition table of {disk} is neither MBR nor GPT; pass --partition mbr, gpt or none"
    )]
    UnknownTable {
        /// The disk's device node.
        disk: PathBuf,
    },
    /// A device-mapper or md device sits on disks with different tables.
    #[error(
        "{device} spans disks with different partition tables ({styles}); pass --partition mbr, \
         gpt or none"
    )]
    MixedTables {
        /// The stacked device's kernel name.
        device: String,
        /// The styles found, comma separated.
        styles: String,
    },
    /// The device-mapper or md stack is more than 8 devices deep.
    #[error("{device} is stacked too deep on other devices to find its disk; pass --partition")]
    TooDeep {
        /// The device's kernel name.
        device: String,
    },
    /// The image is too small for the table and a 1 MiB filesystem partition.
    #[error(
        "the image {path} ({size_bytes} bytes) is too small for a {style} partition table; it \
         needs at least {min_bytes} bytes"
    )]
    TooSmall {
        /// The image file.
        path: PathBuf,
        /// Its size.
        size_bytes: u64,
        /// The style asked for.
        style: PartitionStyle,
        /// The smallest workable size.
        min_bytes: u64,
    },
    /// The image does not fit MBR's 32-bit sector numbers.
    #[error(
        "the image {path} ({size_bytes} bytes) is too large for an MBR partition table (2 TiB); \
         use --partition gpt"
    )]
    TooLargeForMbr {
        /// The image file.
        path: PathBuf,
        /// Its size.
        size_bytes: u64,
    },
    /// The image size is not a whole number of sectors.
    #[error("the image {path} is {size_bytes} bytes, not a multiple of {SECTOR_BYTES}")]
    UnalignedSize {
        /// The image file.
        path: PathBuf,
        /// Its size.
        size_bytes: u64,
    },
    /// Reading or writing the image file failed.
    #[error("writing the partition table into {path}")]
    Write {
        /// The image file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// No random identifiers could be generated.
    #[error("generating random identifiers for the partition table")]
    Random(#[source] openssl::error::ErrorStack),
}

/// Why GRUB could not be installed into the image.
#[derive(Debug, thiserror::Error)]
pub enum BootloaderError {
    /// A plain filesystem image has nowhere to put a BIOS bootloader.
    #[error(
        "a bootloader needs a partitioned image: pass --partition mbr or gpt, or --bootloader none"
    )]
    Unpartitioned,
    /// The image has no GRUB 2 for BIOS.
    #[error(
        "the image has no GRUB 2 for BIOS (i386-pc): {path} is missing; install grub-pc-bin / \
         grub2-pc-modules in the source system or pass --bootloader none"
    )]
    NoImageGrub {
        /// The image's `usr/lib/grub/i386-pc/kernel.img` that is missing.
        path: PathBuf,
    },
    /// Neither `grub-install` nor `grub2-install` is on this host's `PATH`.
    #[error(
        "neither grub-install nor grub2-install is on PATH; install grub2-common (Debian, \
         Ubuntu) or grub2-tools (Fedora, RHEL, Amazon Linux) on this host, or pass \
         --bootloader none"
    )]
    NoHostGrub,
    /// The installer could not be started.
    #[error("running {program}")]
    Spawn {
        /// The program.
        program: PathBuf,
        /// Why it could not run.
        #[source]
        source: io::Error,
    },
    /// The installer failed.
    #[error("{command} failed ({status}): {stderr}{hint}")]
    Failed {
        /// The whole command line.
        command: String,
        /// Its exit status.
        status: ExitStatus,
        /// The last lines of its standard error.
        stderr: String,
        /// A hint for a known cause, starting with "; ", or empty.
        hint: String,
    },
    /// The installer said it succeeded but left no core image in the image.
    #[error("{program} reported success but {path} does not exist")]
    NoCoreImage {
        /// The installer.
        program: PathBuf,
        /// The core image expected.
        path: PathBuf,
    },
    /// The installer said it succeeded but the disk's boot sector is still empty.
    #[error("{program} reported success but wrote no boot code to {disk}")]
    NoBootCode {
        /// The installer.
        program: PathBuf,
        /// The disk installed to.
        disk: PathBuf,
    },
    /// A directory the installer would use leads out of the image (a symlink in the copied
    /// tree, absolute or climbing with `..`): the host's installer would write there.
    #[error(
        "the image's /{path} resolves to {resolved}, outside the image (a symlink in the copied \
         system): GRUB is not installed through it; make it a directory, or a relative link \
         inside the image, in the source system"
    )]
    OutsideImage {
        /// The directory, as a path in the image.
        path: String,
        /// Where it leads on this host.
        resolved: PathBuf,
    },
    /// Reading or writing a file in the image (or its disk) failed.
    #[error("accessing {path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
}

// ---------------------------------------------------------------------------------------------
// GUIDs
// ---------------------------------------------------------------------------------------------

/// A GUID, stored in the byte order of its text form (`00112233-4455-6677-8899-aabbccddeeff`
/// → `00 11 … ff`); GPT stores the first three fields little-endian ([`Guid::to_gpt_bytes`]).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Guid(pub [u8; 16]);

/// GPT partition type of a BIOS boot partition (GRUB's core image); "Hah!IdontNeedEFI".
pub const BIOS_BOOT_TYPE: Guid = Guid([
    0x21, 0x68, 0x61, 0x48, 0x64, 0x49, 0x6E, 0x6F, 0x74, 0x4E, 0x65, 0x65, 0x64, 0x45, 0x46, 0x49,
]);

/// GPT partition type of a Linux filesystem.
pub const LINUX_FS_TYPE: Guid = Guid([
    0x0F, 0xC6, 0x3D, 0xAF, 0x84, 0x83, 0x47, 0x72, 0x8E, 0x79, 0x3D, 0x69, 0xD8, 0x47, 0x7D, 0xE4,
]);

impl Guid {
    /// A random (version 4) GUID.
    ///
    /// # Errors
    /// When OpenSSL's generator fails.
    pub fn random() -> Result<Self, PartitionError> {
        let mut b = [0u8; 16];
        openssl::rand::rand_bytes(&mut b).map_err(PartitionError::Random)?;
        b[6] = (b[6] & 0x0F) | 0x40;
        b[8] = (b[8] & 0x3F) | 0x80;
        Ok(Self(b))
    }

    /// A GUID from the 16 bytes stored in a GPT ([`Guid::to_gpt_bytes`] reversed).
    ///
    /// # Panics
    /// When `b` is shorter than 16 bytes.
    pub fn from_gpt_bytes(b: &[u8]) -> Self {
        Self([
            b[3], b[2], b[1], b[0], b[5], b[4], b[7], b[6], b[8], b[9], b[10], b[11], b[12], b[13],
            b[14], b[15],
        ])
    }

    /// The 16 bytes as stored in a GPT: time-low, time-mid and time-high little-endian, the
    /// rest as written.
    pub fn to_gpt_bytes(self) -> [u8; 16] {
        let b = self.0;
        [
            b[3], b[2], b[1], b[0], b[5], b[4], b[7], b[6], b[8], b[9], b[10], b[11], b[12], b[13],
            b[14], b[15],
        ]
    }
}

impl fmt::Display for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let h = hex::encode(self.0);
        write!(
            f,
            "{}-{}-{}-{}-{}",
            &h[0..8],
            &h[8..12],
            &h[12..16],
            &h[16..20],
            &h[20..32]
        )
    }
}

impl fmt::Debug for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Guid({self})")
    }
}

// ---------------------------------------------------------------------------------------------
// Byte ranges
// ---------------------------------------------------------------------------------------------

/// A byte range of the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    /// Offset of the first byte.
    pub offset_bytes: u64,
    /// Length.
    pub size_bytes: u64,
}
