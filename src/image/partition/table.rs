//! The image's partition table, written in pure Rust: one bootable Linux partition at 1 MiB for
//! MBR; for GPT a protective MBR, the filesystem at 2 MiB and a 1 MiB BIOS boot partition (at
//! 1 MiB) where GRUB embeds its core image, with both headers and entry arrays and their
//! CRC-32s ([`write_table`], [`TableSpec`], [`PartitionLayout`]). Partition sizes are whole MiB.

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt as _;
use std::path::Path;

use super::{
    ALIGN_BYTES, BIOS_BOOT_TYPE, DEFAULT_ROOT_NAME, Extent, GPT_ENTRY_COUNT, GPT_NAME_UNITS, Guid,
    LINUX_FS_TYPE, MBR_TYPE_LINUX, PartitionError, PartitionStyle, SECTOR_BYTES, source,
};

const ALIGN_SECTORS: u64 = ALIGN_BYTES / SECTOR_BYTES;

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

/// The GPT partition name of the BIOS boot partition when the source disk has none.
const BIOS_BOOT_NAME: &str = "BIOS boot partition";

/// MBR partition type of the single partition of a protective MBR.
const MBR_TYPE_GPT_PROTECTIVE: u8 = 0xEE;

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::partition::tests::{
        MIB, image, run_tool, sfdisk_json, sgdisk_verify, spec, u64_at,
    };
    use std::ffi::OsStr;
    use std::fs::File;

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
}
