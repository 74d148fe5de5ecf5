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

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io;
use std::io::Read as _;
use std::os::fd::AsRawFd as _;
use std::os::unix::fs::{FileExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};

mod source;

use super::cmd::{self, SearchPath};
use super::root::{ImageRoot, Lookup};
pub use source::{MAX_GPT_NUMBER, MAX_MBR_NUMBER};

/// Logical sector size of the image. Loop devices present 512-byte sectors by default, and EC2
/// (Xen) presents instance-store roots with 512-byte sectors, so the table is laid out in them.
pub const SECTOR_BYTES: u64 = 512;

/// Partition alignment: 1 MiB, what every current partitioning tool uses; keeps filesystem
/// blocks aligned with any underlying block or erase size.
pub const ALIGN_BYTES: u64 = 1 << 20;

const ALIGN_SECTORS: u64 = ALIGN_BYTES / SECTOR_BYTES;

/// Entries in a GPT partition array: 128 is the minimum the UEFI specification allows for the
/// array's size (16 KiB) and what every tool writes.
const GPT_ENTRY_COUNT: u32 = 128;

/// Bytes per GPT partition entry.
const GPT_ENTRY_BYTES: u32 = 128;

/// Bytes of the GPT partition array (16 KiB).
const GPT_ARRAY_BYTES: usize = GPT_ENTRY_COUNT as usize * GPT_ENTRY_BYTES as usize;

/// Sectors taken by the GPT partition array.
const GPT_ARRAY_SECTORS: u64 = GPT_ARRAY_BYTES as u64 / SECTOR_BYTES;

/// The part of an MBR image before its filesystem partition: sector 0 and the gap GRUB embeds
/// its core image into.
const MBR_HEAD_BYTES: usize = 1 << 20;

/// The part of a GPT image before its filesystem partition: the protective MBR, the primary
/// header and array, and the 1 MiB BIOS boot partition.
const HEAD_BYTES: usize = 2 << 20;

/// Size of the GPT header proper (revision 1.0); the rest of its sector is zero.
const GPT_HEADER_BYTES: u32 = 92;

/// GPT partition names are 36 UTF-16 code units.
const GPT_NAME_UNITS: usize = 36;

/// The GPT partition name of the root filesystem when the source filesystem has no label.
pub const DEFAULT_ROOT_NAME: &str = "amibundle-root";

/// The GPT partition name of the BIOS boot partition when the source disk has none.
const BIOS_BOOT_NAME: &str = "BIOS boot partition";

/// MBR partition type of a Linux filesystem.
const MBR_TYPE_LINUX: u8 = 0x83;

/// MBR partition type of the single partition of a protective MBR.
const MBR_TYPE_GPT_PROTECTIVE: u8 = 0xEE;

/// How deep device-mapper/md stacks are followed through `slaves/` before giving up (a loop
/// in sysfs cannot happen, but a bound keeps a corrupt tree from recursing forever).
const MAX_STACK_DEPTH: u32 = 8;

/// Lines of a failed command's standard error kept in the error message.
const STDERR_TAIL_LINES: usize = 10;

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
    /// The style to build. A fixed choice is returned as is; `auto` detects the table of the
    /// disk holding `device` (the source volume's block device, see [`detect`]), and is
    /// [`PartitionStyle::None`] when there is no block device (a volume on tmpfs, overlayfs,
    /// NFS …). Pass `None` as well for a volume that is not the root filesystem: a data
    /// directory needs no table and no bootloader, whatever disk it is on.
    ///
    /// # Errors
    /// Those of [`detect`].
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

// ---------------------------------------------------------------------------------------------
// Detection
// ---------------------------------------------------------------------------------------------

/// What [`detect`] found out about the source volume's block device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Detection {
    /// The table of the disk the device is a partition of; [`PartitionStyle::None`] when the
    /// device is a whole disk (or stacked on whole disks).
    pub style: PartitionStyle,
    /// The device's kernel name, e.g. `nvme0n1p1`, `dm-0`.
    pub device: String,
    /// The disk's device node, e.g. `/dev/nvme0n1`, when the device is (or is stacked on) a
    /// partition.
    pub disk: Option<PathBuf>,
    /// The partition's number on that disk.
    pub partition_number: Option<u32>,
    /// The partition's start on that disk, in bytes (for information: the image is laid out
    /// afresh).
    pub start_bytes: Option<u64>,
    /// The disk's logical sector size in bytes, when there is a disk.
    pub block_size: Option<u64>,
}

/// Where sysfs and the device nodes live: `/sys` and `/dev` on a host, a fake tree in tests.
#[derive(Debug, Clone)]
pub struct Sysfs {
    sys: PathBuf,
    dev: PathBuf,
}

impl Sysfs {
    /// The running system's `/sys` and `/dev`.
    pub fn host() -> Self {
        Self::at("/sys", "/dev")
    }

    /// A sysfs tree at `sys` (laid out like `/sys`: `dev/block/MAJ:MIN` links into `devices/`)
    /// and device nodes under `dev`.
    pub fn at(sys: impl Into<PathBuf>, dev: impl Into<PathBuf>) -> Self {
        Self {
            sys: sys.into(),
            dev: dev.into(),
        }
    }

    /// Detects the table of the disk holding the block device at `device` (any path to the
    /// node: `/dev/nvme0n1p1`, `/dev/mapper/vg-root`, `/dev/root` …).
    ///
    /// # Errors
    /// [`PartitionError::Stat`], [`PartitionError::NotBlockDevice`], and those of
    /// [`Sysfs::detect_devnum`].
    pub fn detect_path(&self, device: &Path) -> Result<Detection, PartitionError> {
        let st = nix::sys::stat::stat(device).map_err(|source| PartitionError::Stat {
            device: device.to_owned(),
            source,
        })?;
        if st.st_mode & libc::S_IFMT != libc::S_IFBLK {
            return Err(PartitionError::NotBlockDevice {
                device: device.to_owned(),
            });
        }
        let (major, minor) = (
            nix::sys::stat::major(st.st_rdev),
            nix::sys::stat::minor(st.st_rdev),
        );
        self.detect_devnum(major, minor)
    }

    /// Detects the table of the disk holding block device `major:minor` (as in
    /// `/proc/self/mountinfo`).
    ///
    /// # Errors
    /// [`PartitionError::Sysfs`] when sysfs has no such device, [`PartitionError::ReadDisk`]
    /// and [`PartitionError::UnknownTable`] for the disk's table, [`PartitionError::MixedTables`]
    /// for a device-mapper or md device on disks with different tables.
    pub fn detect_devnum(&self, major: u64, minor: u64) -> Result<Detection, PartitionError> {
        let link = self.sys.join("dev/block").join(format!("{major}:{minor}"));
        let node = std::fs::canonicalize(&link).map_err(|source| PartitionError::Sysfs {
            path: link.clone(),
            source,
        })?;
        self.detect_node(&node, 0)
    }

    fn detect_node(&self, node: &Path, depth: u32) -> Result<Detection, PartitionError> {
        let device = kernel_name(node)?;
        if depth > MAX_STACK_DEPTH {
            return Err(PartitionError::TooDeep { device });
        }
        let partition_file = node.join("partition");
        if partition_file.exists() {
            let partition_number = read_number(&partition_file)?;
            // sysfs reports `start` in 512-byte units whatever the logical block size.
            let start_bytes = read_number(&node.join("start"))?.saturating_mul(512);
            let disk_node = node.parent().ok_or_else(|| PartitionError::SysfsContent {
                path: node.to_owned(),
                content: "a partition without a parent disk".into(),
            })?;
            let disk = self.dev.join(kernel_name(disk_node)?);
            let block_size =
                match std::fs::read_to_string(disk_node.join("queue/logical_block_size")) {
                    Ok(text) => text.trim().parse().unwrap_or(SECTOR_BYTES),
                    Err(_) => SECTOR_BYTES,
                };
            let style = read_table_style(&disk, block_size)?;
            return Ok(Detection {
                style,
                device,
                disk: Some(disk),
                partition_number: Some(u32::try_from(partition_number).map_err(|_| {
                    PartitionError::SysfsContent {
                        path: partition_file.clone(),
                        content: partition_number.to_string(),
                    }
                })?),
                start_bytes: Some(start_bytes),
                block_size: Some(block_size),
            });
        }

        // device-mapper (LVM, LUKS) and md devices list what they sit on in `slaves/`.
        let slaves_dir = node.join("slaves");
        let mut slaves = Vec::new();
        match std::fs::read_dir(&slaves_dir) {
            Ok(entries) => {
                for entry in entries {
                    let entry = entry.map_err(|source| PartitionError::Sysfs {
                        path: slaves_dir.clone(),
                        source,
                    })?;
                    let path = entry.path();
                    let target =
                        std::fs::canonicalize(&path).map_err(|source| PartitionError::Sysfs {
                            path: path.clone(),
                            source,
                        })?;
                    slaves.push(target);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(PartitionError::Sysfs {
                    path: slaves_dir,
                    source,
                });
            }
        }
        slaves.sort();
        let mut found: Option<Detection> = None;
        for slave in &slaves {
            let below = self.detect_node(slave, depth + 1)?;
            match &found {
                Some(first) if first.style != below.style => {
                    return Err(PartitionError::MixedTables {
                        device,
                        styles: format!("{}, {}", first.style, below.style),
                    });
                }
                Some(_) => {}
                None => found = Some(below),
            }
        }
        Ok(match found {
            Some(below) => Detection { device, ..below },
            // A whole disk: a Xen PV `xvda1`, a virtio `vda`, a loop device with a bare
            // filesystem.
            None => Detection {
                style: PartitionStyle::None,
                device,
                disk: None,
                partition_number: None,
                start_bytes: None,
                block_size: None,
            },
        })
    }
}

/// Detects the partition table of the disk holding the block device `device` on this host
/// ([`Sysfs::host`]).
///
/// # Errors
/// Those of [`Sysfs::detect_path`].
pub fn detect(device: &Path) -> Result<Detection, PartitionError> {
    Sysfs::host().detect_path(device)
}

/// The device node name of a sysfs block-device directory: `DEVNAME` of its `uevent` (which
/// has the `/` that the directory name spells `!`, as in `cciss/c0d0`), else the directory name.
fn kernel_name(node: &Path) -> Result<String, PartitionError> {
    let uevent = node.join("uevent");
    if let Ok(text) = std::fs::read_to_string(&uevent) {
        if let Some(name) = text.lines().find_map(|l| l.strip_prefix("DEVNAME=")) {
            return Ok(name.to_owned());
        }
    }
    node.file_name()
        .and_then(OsStr::to_str)
        .map(|name| name.replace('!', "/"))
        .ok_or_else(|| PartitionError::SysfsContent {
            path: node.to_owned(),
            content: "a block device directory without a name".into(),
        })
}

fn read_number(path: &Path) -> Result<u64, PartitionError> {
    let text = std::fs::read_to_string(path).map_err(|source| PartitionError::Sysfs {
        path: path.to_owned(),
        source,
    })?;
    text.trim()
        .parse()
        .map_err(|_| PartitionError::SysfsContent {
            path: path.to_owned(),
            content: text.trim().to_owned(),
        })
}

fn read_table_style(disk: &Path, block_size: u64) -> Result<PartitionStyle, PartitionError> {
    let read_err = |source| PartitionError::ReadDisk {
        disk: disk.to_owned(),
        source,
    };
    let file = File::open(disk).map_err(read_err)?;
    let len = usize::try_from(2 * block_size.clamp(SECTOR_BYTES, 64 * 1024))
        .map_err(|e| read_err(io::Error::other(e)))?;
    let mut head = vec![0; len];
    file.read_exact_at(&mut head, 0).map_err(read_err)?;
    table_style(&head, len / 2).ok_or_else(|| PartitionError::UnknownTable {
        disk: disk.to_owned(),
    })
}

/// The table in a disk's first two logical sectors (`head`, sectors of `block_size` bytes):
/// GPT when LBA 1 starts with the GPT signature (a hybrid MBR in LBA 0 does not matter), MBR
/// when LBA 0 ends with 0x55AA, else unknown.
fn table_style(head: &[u8], block_size: usize) -> Option<PartitionStyle> {
    if head.get(block_size..block_size + 8) == Some(b"EFI PART") {
        Some(PartitionStyle::Gpt)
    } else if head.get(510..512) == Some(&[0x55, 0xAA]) {
        Some(PartitionStyle::Mbr)
    } else {
        None
    }
}

/// GPT type of an EFI system partition.
const EFI_SYSTEM_TYPE: Guid = Guid([
    0xC1, 0x2A, 0x73, 0x28, 0xF8, 0x1F, 0x11, 0xD2, 0xBA, 0x4B, 0x00, 0xA0, 0xC9, 0x3E, 0xC9, 0x3B,
]);

/// Where the root filesystem of an image file is, and its partition number, for images
/// amibundle made (or any MBR/GPT disk image with 512-byte sectors): the first partition that
/// is neither a BIOS boot nor an EFI system partition (GPT), the first primary partition that is
/// not an extended one (MBR). `None` when the image has no partition table (a bare filesystem)
/// or no such partition. Read from the table itself, so it works where the kernel has no table
/// parsers; the image may come from anywhere, so every offset is checked.
///
/// # Errors
/// [`PartitionError::ReadDisk`] when the image cannot be read.
pub fn root_partition(image: &Path) -> Result<Option<(u32, Extent)>, PartitionError> {
    let read_err = |source| PartitionError::ReadDisk {
        disk: image.to_owned(),
        source,
    };
    let file = File::open(image).map_err(read_err)?;
    let mut head = vec![0u8; 2 * SECTOR_BYTES as usize];
    if file.read_exact_at(&mut head, 0).is_err() {
        return Ok(None);
    }
    let u32_at = |b: &[u8], at: usize| u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
    let u64_at =
        |b: &[u8], at: usize| u64::from(u32_at(b, at)) | (u64::from(u32_at(b, at + 4)) << 32);
    let extent = |first: u64, sectors: u64| {
        Some(Extent {
            offset_bytes: first.checked_mul(SECTOR_BYTES)?,
            size_bytes: sectors.checked_mul(SECTOR_BYTES)?,
        })
    };
    match table_style(&head, SECTOR_BYTES as usize) {
        Some(PartitionStyle::Gpt) => {
            let gpt = &head[SECTOR_BYTES as usize..];
            let entries_lba = u64_at(gpt, 72);
            let count = u32_at(gpt, 80).min(GPT_ENTRY_COUNT);
            let entry_size = u64::from(u32_at(gpt, 84));
            if !(128..=4096).contains(&entry_size) {
                return Ok(None);
            }
            let Some(offset) = entries_lba.checked_mul(SECTOR_BYTES) else {
                return Ok(None);
            };
            let mut array = vec![0u8; count as usize * entry_size as usize];
            file.read_exact_at(&mut array, offset).map_err(read_err)?;
            for (i, entry) in array.chunks_exact(entry_size as usize).enumerate() {
                let kind = Guid::from_gpt_bytes(&entry[..16]);
                let (first, last) = (u64_at(entry, 32), u64_at(entry, 40));
                if kind == Guid([0; 16])
                    || kind == BIOS_BOOT_TYPE
                    || kind == EFI_SYSTEM_TYPE
                    || last < first
                {
                    continue;
                }
                // i < 128: the count was capped.
                return Ok(extent(first, last - first + 1).map(|e| (i as u32 + 1, e)));
            }
            Ok(None)
        }
        Some(PartitionStyle::Mbr) => {
            for number in 1..=MAX_MBR_NUMBER {
                let e = &head[446 + 16 * (number as usize - 1)..][..16];
                let (kind, first, sectors) =
                    (e[4], u64::from(u32_at(e, 8)), u64::from(u32_at(e, 12)));
                // 0x00: unused slot. An ext or XFS boot sector never ends in 0x55AA with a
                // sane first entry, but a FAT one does: require a non-empty entry.
                if kind == 0 || [0x05, 0x0F, 0x85, 0xEE, 0xEF].contains(&kind) {
                    continue;
                }
                if first == 0 || sectors == 0 {
                    return Ok(None);
                }
                return Ok(extent(first, sectors).map(|e| (number, e)));
            }
            Ok(None)
        }
        _ => Ok(None),
    }
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
    pub fn to_gpt_bytes(&self) -> [u8; 16] {
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
// Writing tables
// ---------------------------------------------------------------------------------------------

/// Everything a table needs besides the image size: the style, the partitions' numbers and the
/// identifiers. [`TableSpec::from_disk`] keeps the source disk's, [`TableSpec::random`] makes
/// fresh ones; tests fix them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableSpec {
    /// The table to write; [`PartitionStyle::None`] writes nothing.
    pub style: PartitionStyle,
    /// Number of the filesystem partition: 1 to 4 for MBR, 1 to 128 for GPT. It is part of an
    /// MBR partition's PARTUUID (`<signature>-<number>`) and of GRUB's `(hd0,gptN)` names.
    pub root_number: u32,
    /// GPT name of the filesystem partition (cut at 36 UTF-16 units).
    pub root_name: String,
    /// GPT type of the filesystem partition.
    pub root_type: Guid,
    /// GPT attribute bits of the filesystem partition (bit 2: legacy BIOS bootable).
    pub root_attributes: u64,
    /// GPT disk GUID.
    pub disk_guid: Guid,
    /// GPT unique GUID of the filesystem partition (its PARTUUID).
    pub root_guid: Guid,
    /// GPT number of the BIOS boot partition (not the root's).
    pub bios_boot_number: u32,
    /// GPT unique GUID of the BIOS boot partition.
    pub bios_boot_guid: Guid,
    /// GPT name of the BIOS boot partition.
    pub bios_boot_name: String,
    /// MBR disk signature (the PARTUUID prefix of MBR partitions); random ones are never 0.
    pub mbr_signature: u32,
    /// MBR type byte of the filesystem partition.
    pub mbr_type: u8,
}

impl TableSpec {
    /// A spec with the usual numbers (root 1, BIOS boot 2), types and names, and all-zero
    /// identifiers, for [`TableSpec::random`] and the readers to fill in.
    pub(crate) fn fixed(style: PartitionStyle) -> Self {
        Self {
            style,
            root_number: 1,
            root_name: DEFAULT_ROOT_NAME.to_owned(),
            root_type: LINUX_FS_TYPE,
            root_attributes: 0,
            disk_guid: Guid([0; 16]),
            root_guid: Guid([0; 16]),
            bios_boot_number: 2,
            bios_boot_guid: Guid([0; 16]),
            bios_boot_name: BIOS_BOOT_NAME.to_owned(),
            mbr_signature: 0,
            mbr_type: MBR_TYPE_LINUX,
        }
    }

    /// A spec with random identifiers; the filesystem partition is named after the source
    /// filesystem's `label`, or [`DEFAULT_ROOT_NAME`].
    ///
    /// # Errors
    /// When OpenSSL's generator fails.
    pub fn random(style: PartitionStyle, label: Option<&str>) -> Result<Self, PartitionError> {
        let mut sig = [0u8; 4];
        while u32::from_le_bytes(sig) == 0 {
            openssl::rand::rand_bytes(&mut sig).map_err(PartitionError::Random)?;
        }
        Ok(Self {
            root_name: label
                .filter(|l| !l.is_empty())
                .unwrap_or(DEFAULT_ROOT_NAME)
                .to_owned(),
            disk_guid: Guid::random()?,
            root_guid: Guid::random()?,
            bios_boot_guid: Guid::random()?,
            mbr_signature: u32::from_le_bytes(sig),
            ..Self::fixed(style)
        })
    }

    /// What `root=PARTUUID=` names the filesystem partition with: the GPT partition GUID, or
    /// `<disk signature>-<number>` for MBR (the kernel's `%08x-%02x`).
    pub fn root_partuuid(&self) -> Option<String> {
        match self.style {
            PartitionStyle::None => None,
            PartitionStyle::Mbr => Some(format!(
                "{:08x}-{:02x}",
                self.mbr_signature, self.root_number
            )),
            PartitionStyle::Gpt => Some(self.root_guid.to_string()),
        }
    }

    /// Checks that the numbers fit the table: MBR 1 to 4, GPT 1 to 128, root and BIOS boot
    /// apart.
    fn check_numbers(&self) -> Result<(), PartitionError> {
        let max = match self.style {
            PartitionStyle::None => return Ok(()),
            PartitionStyle::Mbr => source::MAX_MBR_NUMBER,
            PartitionStyle::Gpt => source::MAX_GPT_NUMBER,
        };
        let fits = |n: u32| (1..=max).contains(&n);
        let bad = |number| PartitionError::BadNumber {
            style: self.style,
            number,
            max,
        };
        if !fits(self.root_number) {
            return Err(bad(self.root_number));
        }
        if self.style == PartitionStyle::Gpt
            && (!fits(self.bios_boot_number) || self.bios_boot_number == self.root_number)
        {
            return Err(bad(self.bios_boot_number));
        }
        Ok(())
    }
}

/// A byte range of the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    /// Offset of the first byte.
    pub offset_bytes: u64,
    /// Length.
    pub size_bytes: u64,
}

/// Where [`write_table`] put the partitions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionLayout {
    /// The table written.
    pub style: PartitionStyle,
    /// The filesystem: partition [`PartitionLayout::root_number`], or the whole image for
    /// [`PartitionStyle::None`].
    pub root: Extent,
    /// Number of the filesystem partition, as in `/dev/loopNpK` (0 without a table).
    pub root_number: u32,
    /// GPT only: the BIOS boot partition that receives GRUB's core image.
    pub bios_boot: Option<Extent>,
    /// GPT only: its number.
    pub bios_boot_number: Option<u32>,
    /// What `root=PARTUUID=` would name the filesystem partition with: the GPT partition GUID,
    /// or `<disk signature>-<number>` for MBR.
    pub root_partuuid: Option<String>,
    /// GPT only: the filesystem partition's name (`root=PARTLABEL=`).
    pub root_partlabel: Option<String>,
}

impl PartitionLayout {
    /// Every partition with its number, for adding them to a loop device
    /// (`BLKPG_ADD_PARTITION`) where the kernel has no table parsers.
    pub fn partitions(&self) -> Vec<(u32, Extent)> {
        let mut parts = Vec::new();
        if self.style != PartitionStyle::None {
            parts.push((self.root_number, self.root));
        }
        if let (Some(n), Some(bios_boot)) = (self.bios_boot_number, self.bios_boot) {
            parts.push((n, bios_boot));
        }
        parts
    }
}

/// Sector ranges of a table, inclusive, before any byte is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Plan {
    disk_sectors: u64,
    root_first: u64,
    root_last: u64,
    bios_boot: Option<(u64, u64)>,
}

impl Plan {
    fn new(style: PartitionStyle, disk_sectors: u64) -> Option<Self> {
        // Whole MiB below `end` (exclusive, in sectors).
        let floor_mib = |end: u64| end / ALIGN_SECTORS * ALIGN_SECTORS;
        match style {
            PartitionStyle::None => Some(Self {
                disk_sectors,
                root_first: 0,
                root_last: disk_sectors.checked_sub(1)?,
                bios_boot: None,
            }),
            PartitionStyle::Mbr => {
                let root_first = ALIGN_SECTORS;
                let end = floor_mib(disk_sectors);
                (end > root_first).then_some(Self {
                    disk_sectors,
                    root_first,
                    root_last: end - 1,
                    bios_boot: None,
                })
            }
            PartitionStyle::Gpt => {
                let bios_boot = (ALIGN_SECTORS, 2 * ALIGN_SECTORS - 1);
                let root_first = 2 * ALIGN_SECTORS;
                // The backup array and header take the last 33 sectors.
                let end = floor_mib(disk_sectors.checked_sub(GPT_ARRAY_SECTORS + 1)?);
                (end > root_first).then_some(Self {
                    disk_sectors,
                    root_first,
                    root_last: end - 1,
                    bios_boot: Some(bios_boot),
                })
            }
        }
    }

    /// The sector where the partitions may begin (the first usable LBA for GPT).
    fn gpt_first_usable() -> u64 {
        2 + GPT_ARRAY_SECTORS
    }

    fn gpt_last_usable(&self) -> u64 {
        self.disk_sectors - GPT_ARRAY_SECTORS - 2
    }
}

/// The smallest image that holds a `style` table and a 1 MiB filesystem partition.
fn min_bytes(style: PartitionStyle) -> u64 {
    match style {
        PartitionStyle::None => SECTOR_BYTES,
        PartitionStyle::Mbr => 2 * ALIGN_BYTES,
        PartitionStyle::Gpt => 4 * ALIGN_BYTES,
    }
}

/// Writes the partition table `spec` into the image file at `image` (sized already, sparse and
/// empty in the normal case) and returns where the partitions are. Everything before the
/// filesystem partition (the boot sector, the table, the gap GRUB embeds into, the BIOS boot
/// partition) and, for GPT, the backup array and header at the end are overwritten; the
/// filesystem partition's bytes are not touched. [`PartitionStyle::None`] writes nothing and
/// returns the whole image.
///
/// # Errors
/// [`PartitionError::TooSmall`], [`PartitionError::TooLargeForMbr`],
/// [`PartitionError::UnalignedSize`], [`PartitionError::Write`].
pub fn write_table(image: &Path, spec: &TableSpec) -> Result<PartitionLayout, PartitionError> {
    let write_err = |source| PartitionError::Write {
        path: image.to_owned(),
        source,
    };
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(image)
        .map_err(write_err)?;
    let size_bytes = file.metadata().map_err(write_err)?.len();
    if size_bytes % SECTOR_BYTES != 0 {
        return Err(PartitionError::UnalignedSize {
            path: image.to_owned(),
            size_bytes,
        });
    }
    let too_small = || PartitionError::TooSmall {
        path: image.to_owned(),
        size_bytes,
        style: spec.style,
        min_bytes: min_bytes(spec.style),
    };
    if size_bytes < min_bytes(spec.style) {
        return Err(too_small());
    }
    spec.check_numbers()?;
    let plan = Plan::new(spec.style, size_bytes / SECTOR_BYTES).ok_or_else(too_small)?;
    if spec.style == PartitionStyle::Mbr && plan.root_last > u64::from(u32::MAX) {
        return Err(PartitionError::TooLargeForMbr {
            path: image.to_owned(),
            size_bytes,
        });
    }

    // Everything before the filesystem partition is zeroed first: the table, GRUB's embedding
    // gap and the BIOS boot partition must not hold stale bytes.
    let head = vec![0; HEAD_BYTES];
    let mut writes: Vec<(u64, Vec<u8>)> = Vec::new();
    match spec.style {
        PartitionStyle::None => {}
        PartitionStyle::Mbr => {
            writes.push((0, head[..MBR_HEAD_BYTES].to_vec()));
            writes.push((0, mbr_sector(&plan, spec).to_vec()));
        }
        PartitionStyle::Gpt => {
            let gpt = gpt_structures(&plan, spec);
            writes.push((0, head));
            writes.push((0, gpt.protective_mbr.to_vec()));
            writes.push((SECTOR_BYTES, gpt.primary_header.to_vec()));
            writes.push((2 * SECTOR_BYTES, gpt.entries.clone()));
            let backup_array = plan.gpt_last_usable() + 1;
            writes.push((backup_array * SECTOR_BYTES, gpt.entries));
            writes.push((
                (plan.disk_sectors - 1) * SECTOR_BYTES,
                gpt.backup_header.to_vec(),
            ));
        }
    }
    for (offset, bytes) in &writes {
        file.write_all_at(bytes, *offset).map_err(write_err)?;
    }
    file.sync_all().map_err(write_err)?;

    Ok(layout_of(&plan, spec))
}

fn layout_of(plan: &Plan, spec: &TableSpec) -> PartitionLayout {
    let extent = |first: u64, last: u64| Extent {
        offset_bytes: first * SECTOR_BYTES,
        size_bytes: (last + 1 - first) * SECTOR_BYTES,
    };
    let gpt = spec.style == PartitionStyle::Gpt;
    PartitionLayout {
        style: spec.style,
        root: extent(plan.root_first, plan.root_last),
        root_number: if spec.style == PartitionStyle::None {
            0
        } else {
            spec.root_number
        },
        bios_boot: plan.bios_boot.map(|(first, last)| extent(first, last)),
        bios_boot_number: plan.bios_boot.map(|_| spec.bios_boot_number),
        root_partuuid: spec.root_partuuid(),
        root_partlabel: gpt.then(|| spec.root_name.clone()),
    }
}

/// Cylinder-head-sector address of `lba` in the 255-head, 63-sector geometry every tool
/// assumes, or the "beyond CHS" marker (1023/254/63) past the first 8 GiB.
fn chs(lba: u64) -> [u8; 3] {
    const HEADS: u64 = 255;
    const SECTORS: u64 = 63;
    let cylinder = lba / (HEADS * SECTORS);
    if cylinder > 1023 {
        return [0xFE, 0xFF, 0xFF];
    }
    let head = (lba / SECTORS) % HEADS;
    let sector = lba % SECTORS + 1;
    // Fits: head < 255, sector ≤ 63, cylinder ≤ 1023 (its two high bits go into the sector
    // byte).
    [
        head as u8,
        (sector as u8) | (((cylinder >> 2) as u8) & 0xC0),
        (cylinder & 0xFF) as u8,
    ]
}

/// One 16-byte MBR partition entry.
fn mbr_entry(bootable: bool, kind: u8, first: u64, sectors: u64) -> [u8; 16] {
    let mut e = [0u8; 16];
    e[0] = if bootable { 0x80 } else { 0 };
    e[1..4].copy_from_slice(&chs(first));
    e[4] = kind;
    e[5..8].copy_from_slice(&chs(first + sectors - 1));
    // Both fit: the MBR caller checked the size, the protective entry saturates.
    e[8..12].copy_from_slice(&u32::try_from(first).unwrap_or(u32::MAX).to_le_bytes());
    e[12..16].copy_from_slice(&u32::try_from(sectors).unwrap_or(u32::MAX).to_le_bytes());
    e
}

/// An MBR sector: no boot code (GRUB writes its own), the disk signature, one entry in slot
/// `number` (1 to 4), 0x55AA.
fn mbr_with(signature: u32, number: u32, entry: [u8; 16]) -> [u8; 512] {
    let mut s = [0u8; 512];
    s[440..444].copy_from_slice(&signature.to_le_bytes());
    let at = 446 + 16 * (number as usize - 1);
    s[at..at + 16].copy_from_slice(&entry);
    s[510] = 0x55;
    s[511] = 0xAA;
    s
}

fn mbr_sector(plan: &Plan, spec: &TableSpec) -> [u8; 512] {
    let sectors = plan.root_last + 1 - plan.root_first;
    mbr_with(
        spec.mbr_signature,
        spec.root_number,
        mbr_entry(true, spec.mbr_type, plan.root_first, sectors),
    )
}

struct GptStructures {
    protective_mbr: [u8; 512],
    primary_header: [u8; 512],
    backup_header: [u8; 512],
    entries: Vec<u8>,
}

fn gpt_entry(
    kind: Guid,
    unique: Guid,
    (first, last): (u64, u64),
    attributes: u64,
    name: &str,
) -> [u8; 128] {
    let mut e = [0u8; 128];
    e[0..16].copy_from_slice(&kind.to_gpt_bytes());
    e[16..32].copy_from_slice(&unique.to_gpt_bytes());
    e[32..40].copy_from_slice(&first.to_le_bytes());
    e[40..48].copy_from_slice(&last.to_le_bytes());
    e[48..56].copy_from_slice(&attributes.to_le_bytes());
    for (i, unit) in name.encode_utf16().take(GPT_NAME_UNITS).enumerate() {
        e[56 + 2 * i..58 + 2 * i].copy_from_slice(&unit.to_le_bytes());
    }
    e
}

fn gpt_structures(plan: &Plan, spec: &TableSpec) -> GptStructures {
    let mut entries = vec![0u8; GPT_ARRAY_BYTES];
    // Numbers were checked to be 1 to 128 (`TableSpec::check_numbers`).
    let slot = |number: u32| (number as usize - 1) * GPT_ENTRY_BYTES as usize;
    let at = slot(spec.root_number);
    entries[at..at + 128].copy_from_slice(&gpt_entry(
        spec.root_type,
        spec.root_guid,
        (plan.root_first, plan.root_last),
        spec.root_attributes,
        &spec.root_name,
    ));
    if let Some(range) = plan.bios_boot {
        let at = slot(spec.bios_boot_number);
        entries[at..at + 128].copy_from_slice(&gpt_entry(
            BIOS_BOOT_TYPE,
            spec.bios_boot_guid,
            range,
            0,
            &spec.bios_boot_name,
        ));
    }
    let entries_crc = crc32fast::hash(&entries);
    let last_lba = plan.disk_sectors - 1;
    let header = |my_lba: u64, alternate_lba: u64, entries_lba: u64| {
        let mut s = [0u8; 512];
        s[0..8].copy_from_slice(b"EFI PART");
        s[8..12].copy_from_slice(&0x0001_0000u32.to_le_bytes());
        s[12..16].copy_from_slice(&GPT_HEADER_BYTES.to_le_bytes());
        // 16..20: header CRC, computed last over the 92 bytes with this field zero.
        s[24..32].copy_from_slice(&my_lba.to_le_bytes());
        s[32..40].copy_from_slice(&alternate_lba.to_le_bytes());
        s[40..48].copy_from_slice(&Plan::gpt_first_usable().to_le_bytes());
        s[48..56].copy_from_slice(&plan.gpt_last_usable().to_le_bytes());
        s[56..72].copy_from_slice(&spec.disk_guid.to_gpt_bytes());
        s[72..80].copy_from_slice(&entries_lba.to_le_bytes());
        s[80..84].copy_from_slice(&GPT_ENTRY_COUNT.to_le_bytes());
        s[84..88].copy_from_slice(&GPT_ENTRY_BYTES.to_le_bytes());
        s[88..92].copy_from_slice(&entries_crc.to_le_bytes());
        let crc = crc32fast::hash(&s[..GPT_HEADER_BYTES as usize]);
        s[16..20].copy_from_slice(&crc.to_le_bytes());
        s
    };
    // The protective MBR covers the whole disk after LBA 0 (saturating at 2 TiB, as the UEFI
    // specification asks), with signature 0 and no boot flag.
    let protective = mbr_entry(false, MBR_TYPE_GPT_PROTECTIVE, 1, last_lba);
    GptStructures {
        protective_mbr: mbr_with(0, 1, protective),
        primary_header: header(1, last_lba, 2),
        backup_header: header(last_lba, 1, plan.gpt_last_usable() + 1),
        entries,
    }
}

// ---------------------------------------------------------------------------------------------
// GRUB 2
// ---------------------------------------------------------------------------------------------

/// Where an image keeps GRUB 2's BIOS modules, boot.img and kernel.img (Debian's grub-pc-bin,
/// Fedora/RHEL/Amazon Linux's grub2-pc-modules).
pub const GRUB_I386_PC_DIR: &str = "usr/lib/grub/i386-pc";

/// Host programs tried, in order, to install GRUB: the upstream and Debian name, then the
/// Fedora/RHEL/SUSE name.
const GRUB_INSTALL_PROGRAMS: [&str; 2] = ["grub-install", "grub2-install"];

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

/// Something about the installed image that will probably not boot as the source did; the
/// bundle is still made. Paths are relative to the image root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BootWarning {
    /// No `boot/grub/grub.cfg` nor `boot/grub2/grub.cfg`.
    NoConfig,
    /// A `root=` argument names a device node, which will differ on the instance.
    RootByDeviceName {
        /// The file with the kernel command line.
        file: PathBuf,
        /// The `root=` value.
        value: String,
    },
    /// The host's installer and the image's modules come from different GRUB packages.
    VersionMismatch {
        /// The host installer's version.
        host: String,
        /// `grub_package_version` of the image's `modinfo.sh`.
        image: String,
    },
    /// The image's configuration is in the other GRUB directory (`grub2` vs `grub`) than the
    /// host's installer uses; a one-line `grub.cfg` loading it was written.
    ConfigRedirected {
        /// The stub written.
        stub: PathBuf,
        /// The configuration it loads.
        config: PathBuf,
    },
}

impl fmt::Display for BootWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoConfig => write!(
                f,
                "the image has no boot/grub/grub.cfg or boot/grub2/grub.cfg: GRUB will stop at \
                 its prompt and the kernel command line cannot be carried over (run update-grub \
                 or grub2-mkconfig in the source system)"
            ),
            Self::RootByDeviceName { file, value } => write!(
                f,
                "{} boots with root={value}: device names differ on the instance-store instance \
                 (its root disk is /dev/xvda or /dev/sda under Xen); use root=UUID=… or \
                 root=LABEL=… in the source system",
                file.display()
            ),
            Self::VersionMismatch { host, image } => write!(
                f,
                "this host's GRUB installer is version {host} but the image's GRUB modules are \
                 {image}; if the image does not boot, bundle on a host with the image's GRUB"
            ),
            Self::ConfigRedirected { stub, config } => write!(
                f,
                "the installer uses {} but the image's configuration is {}; wrote a {} that \
                 loads it",
                stub.parent().unwrap_or(stub).display(),
                config.display(),
                stub.display()
            ),
        }
    }
}

/// What [`install_grub`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use = "the warnings should be shown to the user"]
pub struct GrubReport {
    /// The installer run.
    pub program: PathBuf,
    /// The GRUB directory in the image, relative to its root (`boot/grub` or `boot/grub2`).
    pub grub_dir: PathBuf,
    /// The GRUB configuration found, relative to the image root.
    pub config: Option<PathBuf>,
    /// Reasons the image may not boot like the source.
    pub warnings: Vec<BootWarning>,
}

/// Installs GRUB 2 for BIOS into the image attached (whole) at `disk_device`, whose filesystem
/// partition is mounted at `mounted_root`: boot.img into the boot sector, the core image into
/// the gap after the MBR ([`PartitionStyle::Mbr`]) or into the BIOS boot partition
/// ([`PartitionStyle::Gpt`]), modules into `boot/grub/i386-pc`. Uses the host's `grub-install`
/// (or `grub2-install`) with the image's own modules (`--directory`), so the bootloader is the
/// image's GRUB. GRUB finds the partitions of a loop device through `udevadm`, which must be on
/// `PATH`.
///
/// The copied `grub.cfg` is kept as it is (it carries the kernel command line); what in it will
/// not work on the new instance is returned as warnings.
///
/// # Errors
/// [`BootloaderError::Unpartitioned`], [`BootloaderError::NoImageGrub`],
/// [`BootloaderError::NoHostGrub`], [`BootloaderError::Failed`] with the installer's error
/// output, [`BootloaderError::NoCoreImage`], [`BootloaderError::NoBootCode`],
/// [`BootloaderError::Io`].
pub fn install_grub(
    disk_device: &Path,
    mounted_root: &Path,
    style: PartitionStyle,
) -> Result<GrubReport, BootloaderError> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    install_grub_with_path(disk_device, mounted_root, style, &path)
}

fn install_grub_with_path(
    disk_device: &Path,
    mounted_root: &Path,
    style: PartitionStyle,
    search_path: &OsStr,
) -> Result<GrubReport, BootloaderError> {
    let partmap = match style {
        PartitionStyle::None => return Err(BootloaderError::Unpartitioned),
        PartitionStyle::Mbr => "part_msdos",
        PartitionStyle::Gpt => "part_gpt",
    };
    // Every directory the host's installer reads or writes is resolved the way the booted
    // system resolves it, inside the image; one that a symlink would take elsewhere on this
    // host is refused.
    let Some(modules_dir) = confined_dir(mounted_root, GRUB_I386_PC_DIR)? else {
        return Err(BootloaderError::NoImageGrub {
            path: mounted_root.join(GRUB_I386_PC_DIR).join("kernel.img"),
        });
    };
    let kernel_img = modules_dir.join("kernel.img");
    if !kernel_img.is_file() {
        return Err(BootloaderError::NoImageGrub { path: kernel_img });
    }
    let search = SearchPath::path(search_path);
    let program = GRUB_INSTALL_PROGRAMS
        .iter()
        .find_map(|name| search.find(name))
        .ok_or(BootloaderError::NoHostGrub)?;
    // Fedora-family builds (grub2-install) keep everything in boot/grub2.
    let grub_dir_name = if program
        .file_name()
        .is_some_and(|n| n.to_string_lossy().starts_with("grub2-"))
    {
        "grub2"
    } else {
        "grub"
    };
    let grub_dir = Path::new("boot").join(grub_dir_name);

    if confined_dir(mounted_root, "boot")?.is_none() {
        let boot = mounted_root.join("boot");
        std::fs::create_dir(&boot).map_err(|source| BootloaderError::Io { path: boot, source })?;
    }
    let boot_dir = confined_dir(mounted_root, "boot")?.ok_or_else(|| BootloaderError::Io {
        path: mounted_root.join("boot"),
        source: io::Error::from(io::ErrorKind::NotFound),
    })?;
    // What the installer writes into: checked when the copied tree already has them.
    for rel in [grub_dir.clone(), grub_dir.join("i386-pc")] {
        confined_dir(mounted_root, &rel.to_string_lossy())?;
    }
    // grub-install adds the modules for /boot's filesystem itself; naming them as well makes
    // the core image independent of that probe.
    let mut modules = vec![partmap];
    modules.extend(filesystem_module(mounted_root));
    let mut cmd = Command::new(&program);
    cmd.arg("--target=i386-pc")
        .arg(concat_os("--directory=", &modules_dir))
        .arg(concat_os("--boot-directory=", &boot_dir))
        .arg(format!("--modules={}", modules.join(" ")))
        .arg("--no-floppy")
        .arg(disk_device);
    let output = cmd::output(&mut cmd).map_err(|source| BootloaderError::Spawn {
        program: program.clone(),
        source,
    })?;
    if !output.status.success() {
        let hint = if search.find("udevadm").is_none() {
            "; GRUB finds the partitions of a loop device through udevadm, which is not on PATH: \
             install udev (systemd-udev) on this host"
                .to_owned()
        } else {
            String::new()
        };
        return Err(BootloaderError::Failed {
            command: cmd::command_line(&cmd),
            status: output.status,
            stderr: cmd::stderr_tail(&output.stderr, cmd::Tail::Lines(STDERR_TAIL_LINES)),
            hint,
        });
    }
    let core_img = mounted_root.join(&grub_dir).join("i386-pc/core.img");
    if !core_img.is_file() {
        return Err(BootloaderError::NoCoreImage {
            program,
            path: core_img,
        });
    }
    // The copied tree may hold the source's old core.img; the boot sector, zeroed by
    // write_table, shows that the installer really wrote to this disk.
    let boot_code = has_boot_code(disk_device).map_err(|source| BootloaderError::Io {
        path: disk_device.to_owned(),
        source,
    })?;
    if !boot_code {
        return Err(BootloaderError::NoBootCode {
            program,
            disk: disk_device.to_owned(),
        });
    }

    let mut warnings = Vec::new();
    let config = settle_config(mounted_root, &grub_dir, &mut warnings)?;
    if config.is_some() {
        warnings.extend(command_line_warnings(mounted_root)?);
    }
    if let (Some(host), Some(image)) = (
        installer_version(&program),
        image_grub_version(&modules_dir),
    ) {
        if host != image {
            warnings.push(BootWarning::VersionMismatch { host, image });
        }
    }
    Ok(GrubReport {
        program,
        grub_dir,
        config,
        warnings,
    })
}

/// Whether the boot sector of `disk` (a disk, or an image file) holds boot code: its first 440
/// bytes, before the disk signature and the partition entries, are not all zero.
///
/// # Errors
/// When the first sector cannot be read.
pub fn has_boot_code(disk: &Path) -> io::Result<bool> {
    let mut boot_code = [0u8; 440];
    File::open(disk)?.read_exact_at(&mut boot_code, 0)?;
    Ok(boot_code.iter().any(|&b| b != 0))
}

/// Finds the image's GRUB configuration. When it is in the other GRUB directory than the one
/// the installer filled (a Fedora-family image bundled on a Debian-family host or the reverse),
/// writes a `grub.cfg` there that loads it, unless one exists.
fn settle_config(
    root: &Path,
    grub_dir: &Path,
    warnings: &mut Vec<BootWarning>,
) -> Result<Option<PathBuf>, BootloaderError> {
    let image = ImageRoot::open(root).map_err(|source| BootloaderError::Io {
        path: root.to_owned(),
        source,
    })?;
    let is_file = |rel: &Path| -> Result<bool, BootloaderError> {
        image
            .open_file(rel)
            .map(|f| f.is_some())
            .map_err(|source| BootloaderError::Io {
                path: root.join(rel),
                source,
            })
    };
    let own = grub_dir.join("grub.cfg");
    if is_file(&own)? {
        return Ok(Some(own));
    }
    let mut other = None;
    for p in ["boot/grub/grub.cfg", "boot/grub2/grub.cfg"].map(PathBuf::from) {
        if p != own && is_file(&p)? {
            other = Some(p);
            break;
        }
    }
    let Some(config) = other else {
        warnings.push(BootWarning::NoConfig);
        return Ok(None);
    };
    // `$root` is the partition the core image's prefix names, the one holding /boot.
    let stub_text = format!("configfile /{}\n", config.display());
    // Created new, never through a symlink (the grub directory itself was checked).
    let stub_path = root.join(&own);
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&stub_path)
        .and_then(|mut f| std::io::Write::write_all(&mut f, stub_text.as_bytes()))
        .map_err(|source| BootloaderError::Io {
            path: stub_path,
            source,
        })?;
    warnings.push(BootWarning::ConfigRedirected {
        stub: own,
        config: config.clone(),
    });
    Ok(Some(config))
}

/// Warnings about the `root=` arguments of every kernel command line in the image: the
/// `linux`/`linux16`/`linuxefi`/`kernel` lines of both GRUB configurations and the `options`
/// lines of Boot Loader Specification entries (`boot/loader/entries/*.conf`, Fedora family).
fn command_line_warnings(root: &Path) -> Result<Vec<BootWarning>, BootloaderError> {
    let mut files: Vec<(PathBuf, &[&str])> = Vec::new();
    const GRUB_KERNEL_COMMANDS: &[&str] = &["linux", "linux16", "linuxefi", "kernel"];
    const BLS_KERNEL_COMMANDS: &[&str] = &["options"];
    for cfg in ["boot/grub/grub.cfg", "boot/grub2/grub.cfg"] {
        files.push((PathBuf::from(cfg), GRUB_KERNEL_COMMANDS));
    }
    let entries = root.join("boot/loader/entries");
    if let Ok(dir) = std::fs::read_dir(&entries) {
        let mut names: Vec<_> = dir
            .filter_map(Result::ok)
            .map(|e| e.file_name())
            .filter(|n| n.to_string_lossy().ends_with(".conf"))
            .collect();
        names.sort();
        for name in names {
            files.push((
                Path::new("boot/loader/entries").join(name),
                BLS_KERNEL_COMMANDS,
            ));
        }
    }
    let image = ImageRoot::open(root).map_err(|source| BootloaderError::Io {
        path: root.to_owned(),
        source,
    })?;
    let mut warnings = Vec::new();
    for (file, commands) in files {
        let full = root.join(&file);
        let io = |source| BootloaderError::Io {
            path: full.clone(),
            source,
        };
        // Read inside the image only; what is not a regular file there (missing, a directory,
        // a link out of the image) has nothing to check, and GRUB would not read it either.
        let Some(f) = image.open_file(&file).map_err(io)? else {
            continue;
        };
        let mut bytes = Vec::new();
        f.take(CONFIG_READ_LIMIT)
            .read_to_end(&mut bytes)
            .map_err(io)?;
        let text = String::from_utf8_lossy(&bytes).into_owned();
        for value in root_arguments(&text, commands) {
            let warning = match classify_root(&value) {
                RootKind::Stable => continue,
                RootKind::DeviceName => BootWarning::RootByDeviceName {
                    file: file.clone(),
                    value,
                },
            };
            if !warnings.contains(&warning) {
                warnings.push(warning);
            }
        }
    }
    Ok(warnings)
}

/// The values of `root=` on the lines of `text` that start with one of `commands`.
fn root_arguments(text: &str, commands: &[&str]) -> Vec<String> {
    let mut values = Vec::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        let Some(first) = words.next() else { continue };
        if !commands.contains(&first) {
            continue;
        }
        for word in words {
            let word = word.trim_matches(|c| c == '"' || c == '\'');
            if let Some(value) = word.strip_prefix("root=") {
                if !values.iter().any(|v| v == value) {
                    values.push(value.to_owned());
                }
            }
        }
    }
    values
}

#[derive(Debug, PartialEq, Eq)]
enum RootKind {
    /// Resolves in the image: a filesystem UUID or label, a partition's PARTUUID or PARTLABEL
    /// (kept from the source or rewritten, see `image::bootrefs`), or a GRUB variable.
    Stable,
    /// A device node path (`/dev/xvda1`, `/dev/mapper/…`, `/dev/vg/lv`).
    DeviceName,
}

fn classify_root(value: &str) -> RootKind {
    if value.starts_with("/dev/") && !value.starts_with("/dev/disk/") {
        RootKind::DeviceName
    } else {
        // UUID=, LABEL=, PARTUUID=, PARTLABEL=, /dev/disk/by-*, and `${…}` expansions that
        // grub-mkconfig fills in at boot.
        RootKind::Stable
    }
}

/// The largest GRUB configuration or BLS entry read for warnings.
const CONFIG_READ_LIMIT: u64 = 4 << 20;

/// The directory `rel` of the image mounted at `root` as a host path that leads where the
/// booted system's `/rel` does, or `None` when there is none. Resolved twice: inside the image
/// (`openat2(RESOLVE_IN_ROOT)`, absolute links taken from the image's root) and on the host
/// (what a host program given the path would reach); they must agree, else a symlink in the
/// image would lead the host's program out of it, and that is an error.
fn confined_dir(root: &Path, rel: &str) -> Result<Option<PathBuf>, BootloaderError> {
    let io = |path: PathBuf| move |source| BootloaderError::Io { path, source };
    let image = ImageRoot::open(root).map_err(io(root.to_owned()))?;
    let inside = match image.open_dir(Path::new(rel)).map_err(io(root.join(rel)))? {
        Lookup::Dir(dir) => std::fs::read_link(format!("/proc/self/fd/{}", dir.as_raw_fd()))
            .map_err(io(root.join(rel)))?,
        Lookup::Missing => {
            // Nothing there in the image; but a dangling link on the host side must not be
            // created through either.
            return match std::fs::symlink_metadata(root.join(rel)) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
                _ => Err(BootloaderError::OutsideImage {
                    path: rel.to_owned(),
                    resolved: std::fs::read_link(root.join(rel)).unwrap_or_default(),
                }),
            };
        }
        Lookup::Blocked(_) => {
            return Err(BootloaderError::OutsideImage {
                path: rel.to_owned(),
                resolved: std::fs::canonicalize(root.join(rel)).unwrap_or_default(),
            });
        }
    };
    let on_host = match std::fs::canonicalize(root.join(rel)) {
        Ok(p) => p,
        Err(_) => {
            return Err(BootloaderError::OutsideImage {
                path: rel.to_owned(),
                resolved: std::fs::read_link(root.join(rel)).unwrap_or_default(),
            });
        }
    };
    if on_host != inside {
        return Err(BootloaderError::OutsideImage {
            path: rel.to_owned(),
            resolved: on_host,
        });
    }
    Ok(Some(inside))
}

/// The GRUB module for the filesystem at `root`, when it is one GRUB knows by that name.
fn filesystem_module(root: &Path) -> Option<&'static str> {
    use nix::sys::statfs::{BTRFS_SUPER_MAGIC, EXT4_SUPER_MAGIC, XFS_SUPER_MAGIC, statfs};
    let kind = statfs(root).ok()?.filesystem_type();
    // EXT2/3/4 share one magic; GRUB's ext2 module reads all three.
    if kind == EXT4_SUPER_MAGIC {
        Some("ext2")
    } else if kind == XFS_SUPER_MAGIC {
        Some("xfs")
    } else if kind == BTRFS_SUPER_MAGIC {
        Some("btrfs")
    } else {
        None
    }
}

/// The version `program --version` reports (`grub-install (GRUB) 2.06-13+deb12u2` →
/// `2.06-13+deb12u2`).
fn installer_version(program: &Path) -> Option<String> {
    let out = cmd::output(Command::new(program).arg("--version")).ok()?;
    parse_installer_version(&String::from_utf8_lossy(&out.stdout))
}

fn parse_installer_version(text: &str) -> Option<String> {
    let line = text.lines().next()?;
    line.contains("(GRUB)")
        .then(|| line.split_whitespace().last().map(str::to_owned))
        .flatten()
}

/// `grub_package_version` from the image's `modinfo.sh`, the same string the installer
/// reports for a build of the same package.
fn image_grub_version(modules_dir: &Path) -> Option<String> {
    let text = std::fs::read_to_string(modules_dir.join("modinfo.sh")).ok()?;
    parse_modinfo_version(&text)
}

fn parse_modinfo_version(text: &str) -> Option<String> {
    text.lines().find_map(|l| {
        l.strip_prefix("grub_package_version=")
            .map(|v| v.trim().trim_matches(|c| c == '"' || c == '\'').to_owned())
    })
}

fn concat_os(prefix: &str, path: &Path) -> OsString {
    let mut s = OsString::from(prefix);
    s.push(path);
    s
}

#[cfg(test)]
mod tests {
    //! Tables are checked against independent readers (util-linux `sfdisk`, gdisk's `sgdisk`)
    //! and by parsing the bytes; detection against fake sysfs trees laid out like the kernel's.
    //! The GRUB tests at the end need root (loop devices, mkfs, mount), which CI has; they fail
    //! loudly rather than skip without it.

    use super::*;
    use crate::image::loopdev::{LoopDevice, LoopOptions};
    use std::os::unix::fs::symlink;

    const MIB: u64 = 1 << 20;

    fn spec(style: PartitionStyle) -> TableSpec {
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

    fn image(dir: &Path, size: u64) -> PathBuf {
        crate::image::testing::sparse_file(dir, "disk.img", size)
    }

    fn run_tool(cmd: &str, args: &[&OsStr]) -> String {
        let out = cmd::output(Command::new(cmd).args(args))
            .unwrap_or_else(|e| panic!("running {cmd} (scripts/install-deps.sh installs it): {e}"));
        assert!(
            out.status.success(),
            "{cmd} {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn sfdisk_json(path: &Path) -> serde_json::Value {
        let text = run_tool("sfdisk", &[OsStr::new("--json"), path.as_os_str()]);
        let v: serde_json::Value = serde_json::from_str(&text).expect("sfdisk JSON");
        v["partitiontable"].clone()
    }

    fn sgdisk_verify(path: &Path) -> String {
        // sgdisk -v exits 0 whatever it finds; the verdict is in its output.
        run_tool("sgdisk", &[OsStr::new("-v"), path.as_os_str()])
    }

    fn read_sector(path: &Path, lba: u64) -> Vec<u8> {
        let mut buf = vec![0; 512];
        File::open(path)
            .unwrap()
            .read_exact_at(&mut buf, lba * 512)
            .unwrap();
        buf
    }

    fn u32_at(b: &[u8], at: usize) -> u32 {
        u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
    }

    fn u64_at(b: &[u8], at: usize) -> u64 {
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
    fn random_identifiers_are_version_4_guids_and_differ() {
        let a = TableSpec::random(PartitionStyle::Gpt, None).unwrap();
        let b = TableSpec::random(PartitionStyle::Gpt, Some("cloudimg-rootfs")).unwrap();
        for g in [a.disk_guid, a.root_guid, a.bios_boot_guid] {
            assert_eq!(g.0[6] >> 4, 4, "{g}");
            assert_eq!(g.0[8] >> 6, 0b10, "{g}");
        }
        assert_ne!(a.disk_guid, b.disk_guid);
        assert_ne!(a.root_guid, a.bios_boot_guid);
        assert_ne!(a.mbr_signature, 0);
        assert_eq!(a.root_name, DEFAULT_ROOT_NAME);
        assert_eq!(b.root_name, "cloudimg-rootfs");
    }

    #[test]
    fn chs_addresses_use_the_255_head_63_sector_geometry() {
        assert_eq!(chs(0), [0, 1, 0]);
        assert_eq!(chs(1), [0, 2, 0]);
        // LBA 2048 = cylinder 0, head 32, sector 33.
        assert_eq!(chs(2048), [0x20, 0x21, 0x00]);
        // Cylinder 513 = 0b10_0000_0001: high bits into the sector byte.
        assert_eq!(chs(513 * 255 * 63), [0, 0x81, 0x01]);
        assert_eq!(chs(1024 * 255 * 63), [0xFE, 0xFF, 0xFF]);
    }

    #[test]
    fn mbr_table_is_read_back_by_sfdisk() {
        let dir = tempfile::tempdir().unwrap();
        let path = image(dir.path(), 64 * MIB);
        let layout = write_table(&path, &spec(PartitionStyle::Mbr)).unwrap();
        assert_eq!(
            layout,
            PartitionLayout {
                style: PartitionStyle::Mbr,
                root: Extent {
                    offset_bytes: MIB,
                    size_bytes: 63 * MIB
                },
                root_number: 1,
                bios_boot: None,
                bios_boot_number: None,
                root_partuuid: Some("12345678-01".into()),
                root_partlabel: None,
            }
        );
        assert_eq!(layout.partitions(), vec![(1, layout.root)]);

        let t = sfdisk_json(&path);
        assert_eq!(t["label"], "dos");
        assert_eq!(t["id"], "0x12345678");
        assert_eq!(t["sectorsize"], 512);
        let parts = t["partitions"].as_array().unwrap();
        assert_eq!(parts.len(), 1, "{t}");
        assert_eq!(parts[0]["start"], 2048);
        assert_eq!(parts[0]["size"], 63 * 2048);
        assert_eq!(parts[0]["type"], "83");
        assert_eq!(parts[0]["bootable"], true);
        let verify = run_tool("sfdisk", &[OsStr::new("--verify"), path.as_os_str()]);
        assert!(verify.contains("No errors detected"), "{verify}");

        let mbr = read_sector(&path, 0);
        assert!(
            mbr[..440].iter().all(|&b| b == 0),
            "no boot code before GRUB"
        );
        assert_eq!(&mbr[510..], &[0x55, 0xAA]);
        // Start and end CHS as a 255/63 geometry gives them.
        assert_eq!(&mbr[447..450], &chs(2048));
        assert_eq!(&mbr[451..454], &chs(64 * 2048 - 1));
    }

    #[test]
    fn gpt_table_is_read_back_by_sfdisk_and_verified_by_sgdisk() {
        let dir = tempfile::tempdir().unwrap();
        let path = image(dir.path(), 64 * MIB);
        let s = spec(PartitionStyle::Gpt);
        let layout = write_table(&path, &s).unwrap();
        let total = 64 * 2048u64;
        // The root ends at the last whole MiB before the backup array (total - 33).
        assert_eq!(
            layout,
            PartitionLayout {
                style: PartitionStyle::Gpt,
                root: Extent {
                    offset_bytes: 2 * MIB,
                    size_bytes: 61 * MIB
                },
                bios_boot: Some(Extent {
                    offset_bytes: MIB,
                    size_bytes: MIB
                }),
                root_number: 1,
                bios_boot_number: Some(2),
                root_partuuid: Some("a1a2a3a4-b1b2-4cc2-91d2-e1e2e3e4e5e6".into()),
                root_partlabel: Some(DEFAULT_ROOT_NAME.into()),
            }
        );
        assert_eq!(
            layout.partitions(),
            vec![(1, layout.root), (2, layout.bios_boot.unwrap())]
        );

        let t = sfdisk_json(&path);
        assert_eq!(t["label"], "gpt");
        assert_eq!(t["id"], "11223344-5566-4788-99AA-BBCCDDEEFF00");
        assert_eq!(t["firstlba"], 34);
        assert_eq!(t["lastlba"], total - 34);
        let parts = t["partitions"].as_array().unwrap();
        assert_eq!(parts.len(), 2, "{t}");
        assert_eq!(parts[0]["start"], 4096);
        assert_eq!(parts[0]["size"], 61 * 2048);
        assert_eq!(parts[0]["type"], "0FC63DAF-8483-4772-8E79-3D69D8477DE4");
        assert_eq!(parts[0]["uuid"], "A1A2A3A4-B1B2-4CC2-91D2-E1E2E3E4E5E6");
        assert_eq!(parts[0]["name"], DEFAULT_ROOT_NAME);
        assert_eq!(parts[1]["start"], 2048);
        assert_eq!(parts[1]["size"], 2048);
        assert_eq!(parts[1]["type"], "21686148-6449-6E6F-744E-656564454649");
        assert_eq!(parts[1]["uuid"], "01020304-0506-4708-890A-0B0C0D0E0F10");

        // sgdisk checks both headers, both arrays, their CRCs and the protective MBR.
        let verdict = sgdisk_verify(&path);
        assert!(verdict.contains("No problems found"), "{verdict}");

        // The protective MBR: one 0xEE entry from LBA 1 over the whole disk, not bootable.
        let pmbr = read_sector(&path, 0);
        assert_eq!(pmbr[446], 0);
        assert_eq!(pmbr[450], 0xEE);
        assert_eq!(u32_at(&pmbr, 454), 1);
        assert_eq!(u64::from(u32_at(&pmbr, 458)), total - 1);
        assert!(pmbr[462..510].iter().all(|&b| b == 0));
        assert_eq!(&pmbr[510..], &[0x55, 0xAA]);

        // Primary header at LBA 1, backup at the last LBA, each pointing at the other and at
        // its own array; the arrays are identical.
        let primary = read_sector(&path, 1);
        let backup = read_sector(&path, total - 1);
        for (h, me, other, array) in [
            (&primary, 1, total - 1, 2),
            (&backup, total - 1, 1, total - 33),
        ] {
            assert_eq!(&h[0..8], b"EFI PART");
            assert_eq!(u32_at(h, 8), 0x0001_0000);
            assert_eq!(u32_at(h, 12), 92);
            assert_eq!(u64_at(h, 24), me);
            assert_eq!(u64_at(h, 32), other);
            assert_eq!(u64_at(h, 40), 34);
            assert_eq!(u64_at(h, 48), total - 34);
            assert_eq!(u64_at(h, 72), array);
            assert_eq!(u32_at(h, 80), 128);
            assert_eq!(u32_at(h, 84), 128);
            assert!(h[92..].iter().all(|&b| b == 0));
        }
        let array =
            |lba: u64| -> Vec<u8> { (0..32).flat_map(|i| read_sector(&path, lba + i)).collect() };
        assert_eq!(array(2), array(total - 33));
        assert_eq!(u32_at(&primary, 88), crc32fast::hash(&array(2)));
    }

    #[test]
    fn sgdisk_notices_a_corrupted_entry_array() {
        // The verification above can fail: one flipped byte in the primary array (inside the
        // root partition's name) is reported.
        let dir = tempfile::tempdir().unwrap();
        let path = image(dir.path(), 16 * MIB);
        write_table(&path, &spec(PartitionStyle::Gpt)).unwrap();
        let file = OpenOptions::new().write(true).open(&path).unwrap();
        file.write_all_at(&[0xFF], 2 * 512 + 60).unwrap();
        drop(file);
        let verdict = sgdisk_verify(&path);
        assert!(!verdict.contains("No problems found"), "{verdict}");
        assert!(verdict.contains("CRC"), "{verdict}");
    }

    #[test]
    fn partitions_are_mib_aligned_inside_the_usable_area_for_any_size() {
        for size in [
            2 * MIB,
            4 * MIB,
            4 * MIB + 512,
            5 * MIB - 512,
            64 * MIB,
            10 * 1024 * MIB,
            10 * 1024 * MIB - 17 * 512,
        ] {
            let sectors = size / 512;
            for style in [PartitionStyle::Mbr, PartitionStyle::Gpt] {
                if size < min_bytes(style) {
                    continue;
                }
                let plan = Plan::new(style, sectors).unwrap();
                let layout = layout_of(&plan, &spec(style));
                let root = layout.root;
                assert_eq!(root.offset_bytes % MIB, 0, "{style} {size}");
                assert_eq!(root.size_bytes % MIB, 0, "{style} {size}");
                assert!(root.size_bytes >= MIB, "{style} {size}");
                let end_sector = (root.offset_bytes + root.size_bytes) / 512;
                match style {
                    PartitionStyle::Mbr => assert!(end_sector <= sectors),
                    PartitionStyle::Gpt => {
                        assert!(end_sector <= plan.gpt_last_usable() + 1, "{size}");
                        assert!(end_sector + 33 + 2048 > sectors, "wastes a MiB: {size}");
                        let bb = layout.bios_boot.unwrap();
                        assert_eq!(
                            bb,
                            Extent {
                                offset_bytes: MIB,
                                size_bytes: MIB
                            }
                        );
                        assert!(bb.offset_bytes + bb.size_bytes <= root.offset_bytes);
                        assert!(bb.offset_bytes / 512 >= Plan::gpt_first_usable());
                    }
                    PartitionStyle::None => unreachable!(),
                }
            }
        }
    }

    #[test]
    fn images_too_small_too_large_or_unaligned_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = image(dir.path(), 3 * MIB);
        let err = write_table(&path, &spec(PartitionStyle::Gpt)).unwrap_err();
        assert!(matches!(err, PartitionError::TooSmall { min_bytes, .. } if min_bytes == 4 * MIB));
        assert!(
            err.to_string()
                .contains("too small for a gpt partition table"),
            "{err}"
        );
        // Nothing was written.
        assert!(read_sector(&path, 0).iter().all(|&b| b == 0));

        let path = image(dir.path(), MIB);
        let err = write_table(&path, &spec(PartitionStyle::Mbr)).unwrap_err();
        assert!(matches!(err, PartitionError::TooSmall { .. }), "{err}");

        let path = image(dir.path(), 4 * MIB + 100);
        let err = write_table(&path, &spec(PartitionStyle::Mbr)).unwrap_err();
        assert!(matches!(err, PartitionError::UnalignedSize { .. }), "{err}");

        // Sparse: 2 TiB + 1 MiB, one MiB past what MBR's 32-bit sector counts reach.
        let path = image(dir.path(), (1u64 << 41) + MIB);
        let err = write_table(&path, &spec(PartitionStyle::Mbr)).unwrap_err();
        assert!(
            matches!(err, PartitionError::TooLargeForMbr { .. }),
            "{err}"
        );
        assert!(err.to_string().contains("use --partition gpt"), "{err}");
    }

    #[test]
    fn style_none_writes_nothing_and_the_filesystem_is_the_whole_image() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fs.img");
        std::fs::write(&path, vec![0xA5; 2 * 1024 * 1024]).unwrap();
        let layout = write_table(&path, &spec(PartitionStyle::None)).unwrap();
        assert_eq!(
            layout.root,
            Extent {
                offset_bytes: 0,
                size_bytes: 2 * MIB
            }
        );
        assert_eq!(layout.root_number, 0);
        assert!(layout.partitions().is_empty());
        assert!(std::fs::read(&path).unwrap().iter().all(|&b| b == 0xA5));
    }

    #[test]
    fn gpt_names_are_utf16_and_cut_at_36_units() {
        let e = gpt_entry(LINUX_FS_TYPE, LINUX_FS_TYPE, (1, 2), 0, &"é".repeat(40));
        let units: Vec<u16> = e[56..128]
            .chunks(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .collect();
        assert_eq!(units, vec![0xE9; 36]);
    }

    // --- detection --------------------------------------------------------------------------

    /// A fake `/sys` and `/dev`: block devices are directories under `sys/devices/…` with
    /// `dev`, `uevent` and, for partitions, `partition` and `start`; `sys/dev/block/MAJ:MIN`
    /// are relative symlinks to them, as in the kernel's sysfs.
    struct FakeSys {
        dir: tempfile::TempDir,
    }

    impl FakeSys {
        fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            std::fs::create_dir_all(dir.path().join("sys/dev/block")).unwrap();
            std::fs::create_dir_all(dir.path().join("dev")).unwrap();
            Self { dir }
        }

        fn sysfs(&self) -> Sysfs {
            Sysfs::at(self.dir.path().join("sys"), self.dir.path().join("dev"))
        }

        /// Adds a block device directory at `sys/devices/<rel>` with number `devnum`.
        fn device(&self, rel: &str, devnum: &str, devname: &str) -> PathBuf {
            let node = self.dir.path().join("sys/devices").join(rel);
            std::fs::create_dir_all(&node).unwrap();
            std::fs::write(node.join("dev"), format!("{devnum}\n")).unwrap();
            std::fs::write(
                node.join("uevent"),
                format!("MAJOR=x\nMINOR=y\nDEVNAME={devname}\nDEVTYPE=disk\n"),
            )
            .unwrap();
            let target = format!("../../devices/{rel}");
            symlink(target, self.dir.path().join("sys/dev/block").join(devnum)).unwrap();
            node
        }

        fn disk(&self, rel: &str, devnum: &str, devname: &str, head: &[u8]) -> PathBuf {
            let node = self.device(rel, devnum, devname);
            let dev = self.dir.path().join("dev").join(devname);
            std::fs::create_dir_all(dev.parent().unwrap()).unwrap();
            std::fs::write(&dev, head).unwrap();
            node
        }

        fn partition(&self, rel: &str, devnum: &str, devname: &str, number: u32, start: u64) {
            let node = self.device(rel, devnum, devname);
            std::fs::write(node.join("partition"), format!("{number}\n")).unwrap();
            std::fs::write(node.join("start"), format!("{start}\n")).unwrap();
        }

        fn slave(&self, holder_rel: &str, slave_rel: &str) {
            let holder = self.dir.path().join("sys/devices").join(holder_rel);
            std::fs::create_dir_all(holder.join("slaves")).unwrap();
            let name = Path::new(slave_rel).file_name().unwrap();
            // slaves/<name> -> ../../../<…>/<slave>, relative like the kernel's links.
            let up = "../".repeat(holder_rel.split('/').count() + 1);
            symlink(format!("{up}{slave_rel}"), holder.join("slaves").join(name)).unwrap();
        }

        fn dev_path(&self, name: &str) -> PathBuf {
            self.dir.path().join("dev").join(name)
        }
    }

    /// The first 8 KiB of a disk with a table written by [`write_table`].
    fn disk_head(style: PartitionStyle) -> Vec<u8> {
        let dir = tempfile::tempdir().unwrap();
        let path = image(dir.path(), 8 * MIB);
        write_table(&path, &spec(style)).unwrap();
        std::fs::read(&path).unwrap()[..8192].to_vec()
    }

    const NVME_DISK: &str = "pci0000:00/0000:00:04.0/nvme/nvme0/nvme0n1";

    #[test]
    fn nvme_partition_on_a_gpt_disk() {
        let fake = FakeSys::new();
        fake.disk(
            NVME_DISK,
            "259:0",
            "nvme0n1",
            &disk_head(PartitionStyle::Gpt),
        );
        fake.partition(
            &format!("{NVME_DISK}/nvme0n1p1"),
            "259:1",
            "nvme0n1p1",
            1,
            4096,
        );
        let d = fake.sysfs().detect_devnum(259, 1).unwrap();
        assert_eq!(
            d,
            Detection {
                style: PartitionStyle::Gpt,
                device: "nvme0n1p1".into(),
                disk: Some(fake.dev_path("nvme0n1")),
                partition_number: Some(1),
                start_bytes: Some(2 * MIB),
                block_size: Some(512),
            }
        );
    }

    #[test]
    fn the_disk_is_the_parent_directory_not_a_shortened_name() {
        // A partition whose name does not extend its disk's: only sysfs can tell.
        let fake = FakeSys::new();
        fake.disk(
            "platform/disk7",
            "8:112",
            "disk7",
            &disk_head(PartitionStyle::Mbr),
        );
        fake.partition("platform/disk7/weird3", "8:115", "weird3", 3, 2048);
        let d = fake.sysfs().detect_devnum(8, 115).unwrap();
        assert_eq!(d.style, PartitionStyle::Mbr);
        assert_eq!(d.disk, Some(fake.dev_path("disk7")));
        assert_eq!(d.partition_number, Some(3));
        assert_eq!(d.start_bytes, Some(MIB));
    }

    #[test]
    fn device_names_come_from_uevent() {
        // The directory `cciss!c0d0` is the node /dev/cciss/c0d0.
        let fake = FakeSys::new();
        fake.disk(
            "pci/cciss!c0d0",
            "104:0",
            "cciss/c0d0",
            &disk_head(PartitionStyle::Mbr),
        );
        fake.partition(
            "pci/cciss!c0d0/cciss!c0d0p1",
            "104:1",
            "cciss/c0d0p1",
            1,
            2048,
        );
        let d = fake.sysfs().detect_devnum(104, 1).unwrap();
        assert_eq!(d.disk, Some(fake.dev_path("cciss/c0d0")));
        assert_eq!(d.device, "cciss/c0d0p1");
    }

    #[test]
    fn xen_pv_xvda1_is_a_whole_disk_without_a_table() {
        // Xen PV exposes `xvda1` as a disk of its own: no `partition` file, no table.
        let fake = FakeSys::new();
        fake.disk("vbd-51713/block/xvda1", "202:1", "xvda1", &[0; 1024]);
        let d = fake.sysfs().detect_devnum(202, 1).unwrap();
        assert_eq!(
            d,
            Detection {
                style: PartitionStyle::None,
                device: "xvda1".into(),
                disk: None,
                partition_number: None,
                start_bytes: None,
                block_size: None,
            }
        );
    }

    #[test]
    fn four_k_sector_disk_has_its_gpt_header_at_4096() {
        let fake = FakeSys::new();
        let mut head = vec![0u8; 8192];
        head[510] = 0x55;
        head[511] = 0xAA;
        head[4096..4104].copy_from_slice(b"EFI PART");
        let node = fake.disk("nvme/nvme1n1", "259:8", "nvme1n1", &head);
        std::fs::create_dir_all(node.join("queue")).unwrap();
        std::fs::write(node.join("queue/logical_block_size"), "4096\n").unwrap();
        fake.partition("nvme/nvme1n1/nvme1n1p1", "259:9", "nvme1n1p1", 1, 2048);
        assert_eq!(
            fake.sysfs().detect_devnum(259, 9).unwrap().style,
            PartitionStyle::Gpt
        );
        // Read with 512-byte sectors the same disk looks like a plain MBR.
        std::fs::write(node.join("queue/logical_block_size"), "512\n").unwrap();
        assert_eq!(
            fake.sysfs().detect_devnum(259, 9).unwrap().style,
            PartitionStyle::Mbr
        );
    }

    #[test]
    fn device_mapper_is_followed_to_the_partition_below() {
        let fake = FakeSys::new();
        fake.disk(
            NVME_DISK,
            "259:0",
            "nvme0n1",
            &disk_head(PartitionStyle::Gpt),
        );
        fake.partition(
            &format!("{NVME_DISK}/nvme0n1p3"),
            "259:3",
            "nvme0n1p3",
            3,
            4096,
        );
        fake.device("virtual/block/dm-0", "253:0", "dm-0");
        fake.slave("virtual/block/dm-0", &format!("{NVME_DISK}/nvme0n1p3"));
        let d = fake.sysfs().detect_devnum(253, 0).unwrap();
        assert_eq!(d.style, PartitionStyle::Gpt);
        assert_eq!(d.device, "dm-0");
        assert_eq!(d.disk, Some(fake.dev_path("nvme0n1")));
        assert_eq!(d.partition_number, Some(3));
    }

    #[test]
    fn md_on_disks_with_different_tables_is_refused() {
        let fake = FakeSys::new();
        fake.disk("ata1/sda", "8:0", "sda", &disk_head(PartitionStyle::Mbr));
        fake.partition("ata1/sda/sda1", "8:1", "sda1", 1, 2048);
        fake.disk("ata2/sdb", "8:16", "sdb", &disk_head(PartitionStyle::Gpt));
        fake.partition("ata2/sdb/sdb1", "8:17", "sdb1", 1, 4096);
        fake.device("virtual/block/md0", "9:0", "md0");
        fake.slave("virtual/block/md0", "ata1/sda/sda1");
        fake.slave("virtual/block/md0", "ata2/sdb/sdb1");
        let err = fake.sysfs().detect_devnum(9, 0).unwrap_err();
        assert!(matches!(err, PartitionError::MixedTables { .. }), "{err}");
        assert!(err.to_string().contains("pass --partition"), "{err}");
    }

    #[test]
    fn a_partition_on_an_unknown_table_and_an_unknown_device_are_errors() {
        let fake = FakeSys::new();
        fake.disk("ata1/sda", "8:0", "sda", &[0; 1024]);
        fake.partition("ata1/sda/sda1", "8:1", "sda1", 1, 63);
        let err = fake.sysfs().detect_devnum(8, 1).unwrap_err();
        assert!(matches!(err, PartitionError::UnknownTable { .. }), "{err}");
        assert!(err.to_string().contains("neither MBR nor GPT"), "{err}");

        let err = fake.sysfs().detect_devnum(8, 99).unwrap_err();
        assert!(matches!(err, PartitionError::Sysfs { .. }), "{err}");
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
    }

    // --- GRUB, without root ---------------------------------------------------------------

    /// An image root with GRUB's BIOS directory (only what the checks look at).
    fn grub_root(dir: &Path, version: &str) -> PathBuf {
        let root = dir.join("root");
        let mods = root.join(GRUB_I386_PC_DIR);
        std::fs::create_dir_all(&mods).unwrap();
        std::fs::write(mods.join("kernel.img"), b"not really").unwrap();
        std::fs::write(
            mods.join("modinfo.sh"),
            format!("#!/bin/sh\ngrub_version=\"2.06\"\ngrub_package_version=\"{version}\"\n"),
        )
        .unwrap();
        root
    }

    /// A directory holding an executable `name` with `script` as its body, for use as `PATH`.
    fn fake_program(dir: &Path, name: &str, script: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt as _;
        let bin = dir.join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        let path = bin.join(name);
        std::fs::write(&path, format!("#!/bin/sh\n{script}")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        bin
    }

    /// [`install_grub_with_path`] for tests whose fake installer was just written: another
    /// test thread forking at that moment can hold the script open for writing until its exec,
    /// and exec then fails with ETXTBSY (rust-lang/rust#114554). Retried; nothing else is.
    fn install_with_fake_path(
        disk: &Path,
        root: &Path,
        style: PartitionStyle,
        path: &OsStr,
    ) -> Result<GrubReport, BootloaderError> {
        for _ in 0..50 {
            match install_grub_with_path(disk, root, style, path) {
                Err(BootloaderError::Spawn { source, .. })
                    if source.raw_os_error() == Some(libc::ETXTBSY) =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                other => return other,
            }
        }
        panic!("the fake installer stayed busy (ETXTBSY)")
    }

    #[test]
    fn grub_needs_a_partitioned_image() {
        let dir = tempfile::tempdir().unwrap();
        let root = grub_root(dir.path(), "2.06");
        let err = install_grub(Path::new("/dev/null"), &root, PartitionStyle::None).unwrap_err();
        assert!(matches!(err, BootloaderError::Unpartitioned), "{err}");
        assert!(err.to_string().contains("--bootloader none"), "{err}");
    }

    #[test]
    fn an_image_without_grub_2_for_bios_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("boot/grub")).unwrap();
        let err =
            install_grub(Path::new("/dev/null"), dir.path(), PartitionStyle::Gpt).unwrap_err();
        let BootloaderError::NoImageGrub { path } = &err else {
            panic!("{err}")
        };
        assert_eq!(path, &dir.path().join("usr/lib/grub/i386-pc/kernel.img"));
        let msg = err.to_string();
        assert!(
            msg.starts_with("the image has no GRUB 2 for BIOS (i386-pc)"),
            "{msg}"
        );
        assert!(
            msg.ends_with(
                "install grub-pc-bin / grub2-pc-modules in the source system or pass \
                 --bootloader none"
            ),
            "{msg}"
        );
        // Nothing was written into the image.
        assert!(!dir.path().join("boot/grub/i386-pc").exists());
    }

    #[test]
    fn no_installer_on_the_host_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let root = grub_root(dir.path(), "2.06");
        let empty = dir.path().join("empty");
        std::fs::create_dir(&empty).unwrap();
        let err = install_with_fake_path(
            Path::new("/dev/null"),
            &root,
            PartitionStyle::Mbr,
            empty.as_os_str(),
        )
        .unwrap_err();
        assert!(matches!(err, BootloaderError::NoHostGrub), "{err}");
        assert!(err.to_string().contains("grub2-common"), "{err}");
    }

    #[test]
    fn a_failing_installer_is_reported_with_its_command_line_and_error_output() {
        let dir = tempfile::tempdir().unwrap();
        let root = grub_root(dir.path(), "2.06");
        let bin = fake_program(
            dir.path(),
            "grub-install",
            "echo 'Installing for i386-pc platform.' >&2\n\
             echo 'grub-install: error: cannot find a GRUB drive for /dev/loop9p1.' >&2\n\
             exit 1\n",
        );
        let err = install_with_fake_path(
            Path::new("/dev/loop9"),
            &root,
            PartitionStyle::Mbr,
            bin.as_os_str(),
        )
        .unwrap_err();
        assert!(matches!(err, BootloaderError::Failed { .. }), "{err}");
        let msg = err.to_string();
        let mods = root.join(GRUB_I386_PC_DIR);
        for part in [
            "--target=i386-pc",
            &format!("--directory={}", mods.display()),
            &format!("--boot-directory={}", root.join("boot").display()),
            "--no-floppy /dev/loop9 failed",
            "Installing for i386-pc platform.; grub-install: error: cannot find a GRUB drive",
            // Only the fake installer is on this PATH: the likely cause is named.
            "through udevadm, which is not on PATH",
        ] {
            assert!(msg.contains(part), "{part:?} not in {msg}");
        }
    }

    #[test]
    fn an_installer_that_leaves_no_core_image_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let root = grub_root(dir.path(), "2.06");
        let bin = fake_program(dir.path(), "grub-install", "exit 0\n");
        let err = install_with_fake_path(
            Path::new("/dev/loop9"),
            &root,
            PartitionStyle::Gpt,
            bin.as_os_str(),
        )
        .unwrap_err();
        assert!(matches!(err, BootloaderError::NoCoreImage { .. }), "{err}");
    }

    /// A stand-in for grub-install that records its arguments, creates the core image where
    /// the real one would, writes a few bytes of "boot code" to the disk (its last argument)
    /// and reports `version`.
    fn recording_installer(dir: &Path, name: &str, version: &str, grub_dir: &str) -> PathBuf {
        let args = dir.join("args");
        fake_program(
            dir,
            name,
            &format!(
                "if [ \"$1\" = --version ]; then echo '{name} (GRUB) {version}'; exit 0; fi\n\
                 printf '%s\\n' \"$@\" > '{args}'\n\
                 for a in \"$@\"; do case \"$a\" in --boot-directory=*) b=\"${{a#*=}}\";; esac; \
                 disk=\"$a\"; done\n\
                 mkdir -p \"$b/{grub_dir}/i386-pc\" && : > \"$b/{grub_dir}/i386-pc/core.img\"\n\
                 printf 'boot' | dd of=\"$disk\" conv=notrunc status=none\n",
                args = args.display()
            ),
        )
    }

    /// A zeroed 1 MiB file standing in for the loop device.
    fn fake_disk(dir: &Path) -> PathBuf {
        let disk = dir.join("fake-disk");
        std::fs::write(&disk, vec![0; 1 << 20]).unwrap();
        disk
    }

    #[test]
    fn an_installer_that_writes_no_boot_code_is_an_error() {
        // The core image may be a stale copy from the source system; the disk tells.
        let dir = tempfile::tempdir().unwrap();
        let root = grub_root(dir.path(), "2.06");
        std::fs::create_dir_all(root.join("boot/grub/i386-pc")).unwrap();
        std::fs::write(root.join("boot/grub/i386-pc/core.img"), b"old").unwrap();
        let bin = fake_program(dir.path(), "grub-install", "exit 0\n");
        let err = install_with_fake_path(
            &fake_disk(dir.path()),
            &root,
            PartitionStyle::Mbr,
            bin.as_os_str(),
        )
        .unwrap_err();
        assert!(matches!(err, BootloaderError::NoBootCode { .. }), "{err}");
    }

    /// Issue 12, finding 6: `--boot-directory=<mnt>/boot` and `--directory=<mnt>/usr/lib/grub/i386-pc`
    /// followed a `boot` symlink in the copied tree to the host. Each directory the installer
    /// uses must lead where the image's own does.
    #[test]
    fn symlinks_in_the_image_never_lead_the_installer_to_the_host() {
        let all_files = |dir: &Path| -> Vec<PathBuf> {
            let mut v: Vec<PathBuf> = walk_files(dir);
            v.sort();
            v
        };
        for (what, plant) in [
            ("boot", "boot"),
            ("boot/grub", "boot/grub"),
            ("boot/grub/i386-pc", "boot/grub/i386-pc"),
        ] {
            let dir = tempfile::tempdir().unwrap();
            let root = grub_root(dir.path(), "2.06-13+deb12u2");
            let host = dir.path().join("host");
            std::fs::create_dir_all(host.join("grub/i386-pc")).unwrap();
            std::fs::write(host.join("precious"), b"host file").unwrap();
            let link = root.join(plant);
            std::fs::create_dir_all(link.parent().unwrap()).unwrap();
            symlink(&host, &link).unwrap();
            let before = all_files(&host);
            let bin = recording_installer(dir.path(), "grub-install", "2.06-13+deb12u2", "grub");
            let disk = fake_disk(dir.path());
            let err = install_with_fake_path(&disk, &root, PartitionStyle::Mbr, bin.as_os_str())
                .unwrap_err();
            assert!(
                matches!(&err, BootloaderError::OutsideImage { path, .. } if path == what),
                "{what}: {err}"
            );
            assert_eq!(
                all_files(&host),
                before,
                "{what}: nothing written on the host"
            );
            assert!(
                !dir.path().join("args").exists(),
                "{what}: the installer never ran"
            );
        }
        // The modules too: a host directory posing as the image's GRUB.
        let dir = tempfile::tempdir().unwrap();
        let root = grub_root(dir.path(), "2.06-13+deb12u2");
        let host_mods =
            grub_root(&dir.path().join("host"), "2.06-13+deb12u2").join(GRUB_I386_PC_DIR);
        std::fs::remove_dir_all(root.join(GRUB_I386_PC_DIR)).unwrap();
        symlink(&host_mods, root.join(GRUB_I386_PC_DIR)).unwrap();
        let bin = recording_installer(dir.path(), "grub-install", "2.06-13+deb12u2", "grub");
        let err = install_with_fake_path(
            &fake_disk(dir.path()),
            &root,
            PartitionStyle::Mbr,
            bin.as_os_str(),
        )
        .unwrap_err();
        assert!(matches!(err, BootloaderError::OutsideImage { .. }), "{err}");

        // A relative link inside the image is followed as the system follows it.
        let dir = tempfile::tempdir().unwrap();
        let root = grub_root(dir.path(), "2.06-13+deb12u2");
        std::fs::create_dir_all(root.join("sysroot/boot")).unwrap();
        symlink("sysroot/boot", root.join("boot")).unwrap();
        let bin = recording_installer(dir.path(), "grub-install", "2.06-13+deb12u2", "grub");
        let _report = install_with_fake_path(
            &fake_disk(dir.path()),
            &root,
            PartitionStyle::Mbr,
            bin.as_os_str(),
        )
        .unwrap();
        assert!(root.join("sysroot/boot/grub/i386-pc/core.img").is_file());
    }

    fn walk_files(dir: &Path) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if std::fs::symlink_metadata(&p).unwrap().is_dir() {
                out.push(p.clone());
                out.extend(walk_files(&p));
            } else {
                out.push(p);
            }
        }
        out
    }

    #[test]
    fn installer_arguments_and_warnings_about_the_copied_configuration() {
        let dir = tempfile::tempdir().unwrap();
        let root = grub_root(dir.path(), "2.12-1");
        std::fs::create_dir_all(root.join("boot/grub")).unwrap();
        std::fs::write(
            root.join("boot/grub/grub.cfg"),
            "menuentry 'Debian' {\n\tlinux\t/boot/vmlinuz root=/dev/nvme0n1p1 ro quiet\n}\n",
        )
        .unwrap();
        let bin = recording_installer(dir.path(), "grub-install", "2.06-13+deb12u2", "grub");
        let disk = fake_disk(dir.path());
        let report =
            install_with_fake_path(&disk, &root, PartitionStyle::Gpt, bin.as_os_str()).unwrap();
        let args = std::fs::read_to_string(dir.path().join("args")).unwrap();
        let args: Vec<&str> = args.lines().collect();
        assert_eq!(args[0], "--target=i386-pc");
        assert!(
            args.iter().any(|a| a.starts_with("--modules=part_gpt")),
            "{args:?}"
        );
        assert_eq!(args.last().copied(), disk.to_str());
        assert_eq!(report.program, bin.join("grub-install"));
        assert_eq!(report.grub_dir, Path::new("boot/grub"));
        assert_eq!(report.config, Some(PathBuf::from("boot/grub/grub.cfg")));
        assert_eq!(
            report.warnings,
            vec![
                BootWarning::RootByDeviceName {
                    file: "boot/grub/grub.cfg".into(),
                    value: "/dev/nvme0n1p1".into()
                },
                BootWarning::VersionMismatch {
                    host: "2.06-13+deb12u2".into(),
                    image: "2.12-1".into()
                },
            ]
        );
        assert!(report.warnings[0].to_string().contains("use root=UUID="));
    }

    #[test]
    fn a_fedora_family_installer_fills_boot_grub2_and_a_debian_config_gets_a_stub() {
        let dir = tempfile::tempdir().unwrap();
        let root = grub_root(dir.path(), "2.06-13+deb12u2");
        std::fs::create_dir_all(root.join("boot/grub")).unwrap();
        std::fs::write(
            root.join("boot/grub/grub.cfg"),
            "linux /boot/vmlinuz root=UUID=0b6c4f3e-2a57-4c1d-9e8f-123456789abc ro\n",
        )
        .unwrap();
        let bin = recording_installer(dir.path(), "grub2-install", "2.06-13+deb12u2", "grub2");
        let report = install_with_fake_path(
            &fake_disk(dir.path()),
            &root,
            PartitionStyle::Mbr,
            bin.as_os_str(),
        )
        .unwrap();
        assert_eq!(report.grub_dir, Path::new("boot/grub2"));
        assert_eq!(report.config, Some(PathBuf::from("boot/grub/grub.cfg")));
        assert_eq!(
            report.warnings,
            vec![BootWarning::ConfigRedirected {
                stub: "boot/grub2/grub.cfg".into(),
                config: "boot/grub/grub.cfg".into()
            }]
        );
        assert_eq!(
            std::fs::read_to_string(root.join("boot/grub2/grub.cfg")).unwrap(),
            "configfile /boot/grub/grub.cfg\n"
        );
    }

    #[test]
    fn a_missing_configuration_is_a_warning() {
        let dir = tempfile::tempdir().unwrap();
        let mut warnings = Vec::new();
        let config = settle_config(dir.path(), Path::new("boot/grub"), &mut warnings).unwrap();
        assert_eq!(config, None);
        assert_eq!(warnings, vec![BootWarning::NoConfig]);
        assert!(
            warnings[0]
                .to_string()
                .contains("kernel command line cannot be carried over"),
            "{}",
            warnings[0]
        );
    }

    #[test]
    fn root_arguments_by_device_name_or_partition_id_are_flagged() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("boot/grub2")).unwrap();
        std::fs::create_dir_all(root.join("boot/loader/entries")).unwrap();
        std::fs::write(
            root.join("boot/grub2/grub.cfg"),
            "set root='hd0,msdos1'\n\
             echo 'root=/dev/sdz9 is not a kernel line'\n\
             menuentry 'a' {\n\
             \tlinux /boot/vmlinuz-6.1 root=UUID=0b6c4f3e ro console=ttyS0\n\
             \tlinux16 /vmlinuz root=/dev/xvda1 ro\n\
             \tlinuxefi /vmlinuz root=LABEL=cloudimg-rootfs\n\
             \tlinux /vmlinuz root=PARTUUID=885cbc11-01\n\
             \tkernel /vmlinuz \"root=/dev/disk/by-uuid/0b6c\"\n\
             \tlinux /vmlinuz root=${GRUB_DEVICE} root=/dev/xvda1\n\
             }\n",
        )
        .unwrap();
        std::fs::write(
            root.join("boot/loader/entries/abc-6.1.conf"),
            "title Fedora\nlinux /vmlinuz-6.1\noptions root=/dev/mapper/fedora-root ro\n",
        )
        .unwrap();
        std::fs::write(
            root.join("boot/loader/entries/README"),
            "options root=/dev/sda1\n",
        )
        .unwrap();
        let cfg = PathBuf::from("boot/grub2/grub.cfg");
        assert_eq!(
            command_line_warnings(root).unwrap(),
            vec![
                BootWarning::RootByDeviceName {
                    file: cfg,
                    value: "/dev/xvda1".into()
                },
                BootWarning::RootByDeviceName {
                    file: "boot/loader/entries/abc-6.1.conf".into(),
                    value: "/dev/mapper/fedora-root".into()
                },
            ]
        );
    }

    #[test]
    fn grub_versions_are_read_from_the_installer_and_modinfo() {
        assert_eq!(
            parse_installer_version("grub-install (GRUB) 2.06-13+deb12u2\n").as_deref(),
            Some("2.06-13+deb12u2")
        );
        assert_eq!(parse_installer_version("something else 1.0\n"), None);
        assert_eq!(
            parse_modinfo_version(
                "grub_version=\"2.06\"\ngrub_package_version=\"2.06-13+deb12u2\"\n"
            )
            .as_deref(),
            Some("2.06-13+deb12u2")
        );
        assert_eq!(parse_modinfo_version("grub_version=\"2.06\"\n"), None);
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
}
