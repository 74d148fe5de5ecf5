//! Which partition table the source volume's disk has, found through sysfs:
//! `/sys/dev/block/MAJ:MIN` followed to the device's directory, a partition's parent directory
//! taken as its disk, device-mapper and md devices followed through `slaves/`, and the disk's
//! table type read from its first two logical sectors ([`detect`], [`Sysfs`]). Also where an
//! image file's root filesystem is, read from the image's own table ([`root_partition`]).

use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};

use super::{
    BIOS_BOOT_TYPE, Extent, GPT_ENTRY_COUNT, Guid, MAX_MBR_NUMBER, PartitionError, PartitionStyle,
    SECTOR_BYTES,
};

/// How deep device-mapper/md stacks are followed through `slaves/` before giving up (a loop
/// in sysfs cannot happen, but a bound keeps a corrupt tree from recursing forever).
const MAX_STACK_DEPTH: u32 = 8;

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
pub fn table_style(head: &[u8], block_size: usize) -> Option<PartitionStyle> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::partition::tests::{MIB, image, spec};
    use crate::image::partition::write_table;
    use std::os::unix::fs::symlink;

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
}
