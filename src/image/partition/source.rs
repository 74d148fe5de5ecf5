//! The identifiers of the source disk's partition table, read so the image can carry them: the
//! MBR disk signature, the GPT disk GUID, the partition's number, unique GUID, type, name and
//! attributes, and the BIOS boot partition's number and GUID. With them `root=PARTUUID=…` (how
//! Debian's and Ubuntu's cloud images find their root), `PARTUUID=` and `PARTLABEL=` entries in
//! fstab, and GRUB's `(hd0,gptN)` hints resolve in the image exactly as they did on the source.
//!
//! The disk is the running system's own, but its bytes are still checked like any input: the
//! GPT header's and entry array's CRC-32s, the header and entry sizes, the array's bounds; a
//! table that does not check out is an error, and the caller then makes fresh identifiers and
//! rewrites what refers to the old ones ([`super::super::bootrefs`]).

use std::fs::File;
use std::os::unix::fs::FileExt as _;
use std::path::Path;

use super::{
    BIOS_BOOT_TYPE, GPT_NAME_UNITS, Guid, MBR_TYPE_LINUX, PartitionError, PartitionStyle,
    SECTOR_BYTES, TableSpec,
};

/// The largest GPT entry array read (entries × entry size): 1 MiB, 8192 entries of 128 bytes;
/// every tool writes 16 KiB.
const MAX_GPT_ARRAY_BYTES: u64 = 1 << 20;

/// The largest partition number a GPT image may use (the array we write has 128 entries).
pub const MAX_GPT_NUMBER: u32 = 128;

/// Primary partitions of an MBR.
pub const MAX_MBR_NUMBER: u32 = 4;

/// MBR types of extended partitions (their logical partitions are numbered from 5).
const MBR_EXTENDED_TYPES: [u8; 3] = [0x05, 0x0F, 0x85];

impl TableSpec {
    /// The table of an image that keeps the identifiers of partition `number` of the source
    /// `disk` (logical sectors of `block_size` bytes): its style, disk signature or disk GUID,
    /// the partition's number, unique GUID, type, attributes and name, and the BIOS boot
    /// partition's number and GUID when the disk has one.
    ///
    /// # Errors
    /// [`PartitionError::ReadDisk`] when the disk cannot be read, [`PartitionError::UnknownTable`]
    /// without a table, [`PartitionError::SourceTable`] when the table is damaged or the
    /// partition cannot be kept as it is (an MBR logical partition, a number beyond the image's
    /// table).
    pub fn from_disk(disk: &Path, block_size: u64, number: u32) -> Result<Self, PartitionError> {
        let block = block_size.clamp(SECTOR_BYTES, 64 * 1024);
        let read_err = |source| PartitionError::ReadDisk {
            disk: disk.to_owned(),
            source,
        };
        let file = File::open(disk).map_err(read_err)?;
        let read = |offset: u64, len: u64| -> Result<Vec<u8>, PartitionError> {
            let mut buf = vec![0u8; usize::try_from(len).map_err(|_| bad(disk, "a huge read"))?];
            file.read_exact_at(&mut buf, offset).map_err(read_err)?;
            Ok(buf)
        };
        let head = read(0, 2 * block)?;
        match super::detection::table_style(&head, block as usize) {
            Some(PartitionStyle::Gpt) => {
                gpt_spec(disk, &head[block as usize..], block, number, read)
            }
            Some(PartitionStyle::Mbr) => mbr_spec(disk, &head[..512], number),
            _ => Err(PartitionError::UnknownTable {
                disk: disk.to_owned(),
            }),
        }
    }
}

fn bad(disk: &Path, reason: impl Into<String>) -> PartitionError {
    PartitionError::SourceTable {
        disk: disk.to_owned(),
        reason: reason.into(),
    }
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from(u32_at(b, at)) | (u64::from(u32_at(b, at + 4)) << 32)
}

fn mbr_spec(disk: &Path, sector: &[u8], number: u32) -> Result<TableSpec, PartitionError> {
    if !(1..=MAX_MBR_NUMBER).contains(&number) {
        return Err(bad(
            disk,
            format!(
                "the volume is on logical partition {number}; an image keeps only primary \
                 partitions (1 to 4) of an MBR"
            ),
        ));
    }
    let entry = &sector[446 + 16 * (number as usize - 1)..][..16];
    let kind = entry[4];
    if kind == 0 || MBR_EXTENDED_TYPES.contains(&kind) {
        return Err(bad(
            disk,
            format!("MBR entry {number} is not a filesystem partition (type {kind:#04x})"),
        ));
    }
    Ok(TableSpec {
        style: PartitionStyle::Mbr,
        root_number: number,
        mbr_signature: u32_at(sector, 440),
        mbr_type: if kind == 0xEE { MBR_TYPE_LINUX } else { kind },
        ..TableSpec::fixed(PartitionStyle::Mbr)
    })
}

fn gpt_spec(
    disk: &Path,
    header: &[u8],
    block: u64,
    number: u32,
    read: impl Fn(u64, u64) -> Result<Vec<u8>, PartitionError>,
) -> Result<TableSpec, PartitionError> {
    let header_size = u64::from(u32_at(header, 12));
    if !(92..=block).contains(&header_size) {
        return Err(bad(disk, format!("GPT header size {header_size}")));
    }
    let mut zeroed = header[..header_size as usize].to_vec();
    zeroed[16..20].fill(0);
    if crc32fast::hash(&zeroed) != u32_at(header, 16) {
        return Err(bad(disk, "the primary GPT header's CRC-32 does not match"));
    }
    let entries_lba = u64_at(header, 72);
    let count = u64::from(u32_at(header, 80));
    let entry_size = u64::from(u32_at(header, 84));
    if entry_size < 128 || !entry_size.is_power_of_two() || count == 0 {
        return Err(bad(
            disk,
            format!("GPT entry size {entry_size} with {count} entries"),
        ));
    }
    let array_bytes = count
        .checked_mul(entry_size)
        .filter(|&b| b <= MAX_GPT_ARRAY_BYTES)
        .ok_or_else(|| {
            bad(
                disk,
                format!("a GPT entry array of {count} × {entry_size} bytes"),
            )
        })?;
    if entries_lba < 2 {
        return Err(bad(disk, format!("GPT entry array at LBA {entries_lba}")));
    }
    let offset = entries_lba
        .checked_mul(block)
        .ok_or_else(|| bad(disk, "GPT entry array beyond any disk"))?;
    let array = read(offset, array_bytes)?;
    if crc32fast::hash(&array) != u32_at(header, 88) {
        return Err(bad(disk, "the GPT entry array's CRC-32 does not match"));
    }
    if number == 0 || u64::from(number) > count || number > MAX_GPT_NUMBER {
        return Err(bad(
            disk,
            format!(
                "partition {number} is beyond the entries an image's GPT holds (1 to {MAX_GPT_NUMBER})"
            ),
        ));
    }
    let entry = |n: u32| &array[(u64::from(n - 1) * entry_size) as usize..][..128];
    let used = |e: &[u8]| e[..16].iter().any(|&b| b != 0);
    let root = entry(number);
    if !used(root) {
        return Err(bad(disk, format!("GPT entry {number} is empty")));
    }
    let mut spec = TableSpec {
        style: PartitionStyle::Gpt,
        root_number: number,
        disk_guid: Guid::from_gpt_bytes(&header[56..72]),
        root_type: Guid::from_gpt_bytes(&root[0..16]),
        root_guid: Guid::from_gpt_bytes(&root[16..32]),
        root_attributes: u64_at(root, 48),
        root_name: utf16_name(&root[56..128]),
        ..TableSpec::fixed(PartitionStyle::Gpt)
    };
    let entries = u32::try_from(count.min(u64::from(MAX_GPT_NUMBER))).unwrap_or(MAX_GPT_NUMBER);
    let bios_boot = (1..=entries).find(|&n| {
        let e = entry(n);
        n != number && Guid::from_gpt_bytes(&e[0..16]) == BIOS_BOOT_TYPE
    });
    match bios_boot {
        Some(n) => {
            let e = entry(n);
            spec.bios_boot_number = n;
            spec.bios_boot_guid = Guid::from_gpt_bytes(&e[16..32]);
            let name = utf16_name(&e[56..128]);
            if !name.is_empty() {
                spec.bios_boot_name = name;
            }
        }
        // No BIOS boot partition on the source (a UEFI-only disk): the image's gets the lowest
        // number the source does not use, so no number on the source means something else.
        None => {
            spec.bios_boot_number = (1..=MAX_GPT_NUMBER)
                .find(|&n| n != number && (n > entries || !used(entry(n))))
                .ok_or_else(|| bad(disk, "no free GPT entry for a BIOS boot partition"))?;
        }
    }
    Ok(spec)
}

/// A GPT partition name: UTF-16LE, up to 36 units, NUL-terminated when shorter.
fn utf16_name(bytes: &[u8]) -> String {
    let units: Vec<u16> = bytes
        .chunks_exact(2)
        .take(GPT_NAME_UNITS)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .take_while(|&u| u != 0)
        .collect();
    String::from_utf16_lossy(&units)
}

#[cfg(test)]
mod tests {
    //! Source tables are made by independent tools (util-linux `sfdisk`, gdisk's `sgdisk`), read
    //! back here, and written into an image whose identifiers the same tools then report.

    use super::*;
    use crate::image::partition::write_table;
    use std::process::Command;

    const MIB: u64 = 1 << 20;

    fn run(cmd: &mut Command) -> String {
        let out = cmd.output().expect("tool runs");
        assert!(
            out.status.success(),
            "{cmd:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn disk(dir: &Path, name: &str, mib: u64) -> std::path::PathBuf {
        crate::image::testing::sparse_file(dir, name, mib * MIB)
    }

    fn sfdisk_json(path: &Path) -> serde_json::Value {
        serde_json::from_str(&run(Command::new("sfdisk").arg("--json").arg(path))).unwrap()
    }

    #[test]
    fn a_debian_cloud_style_gpt_is_kept_number_guids_type_name_and_attributes() {
        // Debian's cloud images: root is partition 1 after a BIOS boot partition numbered 14,
        // and an EFI system partition 15.
        let dir = tempfile::tempdir().unwrap();
        let src = disk(dir.path(), "src.img", 64);
        run(Command::new("sgdisk")
            .args(["-U", "5b1a9e8c-6f4e-4d7a-9a51-0c2f3e4d5a6b"])
            .args(["-n", "14:2048:8191", "-t", "14:EF02", "-c", "14:bios-grub"])
            .args(["-u", "14:0a0b0c0d-0e0f-4011-8213-141516171819"])
            .args(["-n", "15:8192:16383", "-t", "15:EF00"])
            .args([
                "-n",
                "1:16384:0",
                "-t",
                "1:4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709",
            ])
            .args([
                "-u",
                "1:c0ffee00-1234-4abc-8def-0123456789ab",
                "-c",
                "1:root",
            ])
            .args(["-A", "1:set:2", "-A", "1:set:60"])
            .arg(&src));
        let spec = TableSpec::from_disk(&src, 512, 1).unwrap();
        assert_eq!(spec.style, PartitionStyle::Gpt);
        assert_eq!(spec.root_number, 1);
        assert_eq!(
            spec.disk_guid.to_string(),
            "5b1a9e8c-6f4e-4d7a-9a51-0c2f3e4d5a6b"
        );
        assert_eq!(
            spec.root_guid.to_string(),
            "c0ffee00-1234-4abc-8def-0123456789ab"
        );
        assert_eq!(
            spec.root_type.to_string(),
            "4f68bce3-e8cd-4db1-96e7-fbcaf984b709"
        );
        assert_eq!(spec.root_attributes, (1 << 2) | (1 << 60));
        assert_eq!(spec.root_name, "root");
        assert_eq!(spec.bios_boot_number, 14);
        assert_eq!(
            spec.bios_boot_guid.to_string(),
            "0a0b0c0d-0e0f-4011-8213-141516171819"
        );
        assert_eq!(spec.bios_boot_name, "bios-grub");

        // The image's table, read back by sfdisk, carries all of it.
        let img = disk(dir.path(), "img.img", 64);
        let layout = write_table(&img, &spec).unwrap();
        assert_eq!(layout.root_number, 1);
        assert_eq!(layout.bios_boot_number, Some(14));
        assert_eq!(
            layout.root_partuuid.as_deref(),
            Some("c0ffee00-1234-4abc-8def-0123456789ab")
        );
        let t = &sfdisk_json(&img)["partitiontable"];
        assert_eq!(t["id"], "5B1A9E8C-6F4E-4D7A-9A51-0C2F3E4D5A6B");
        let parts = t["partitions"].as_array().unwrap();
        let by_node = |suffix: &str| {
            parts
                .iter()
                .find(|p| p["node"].as_str().unwrap().ends_with(suffix))
                .unwrap_or_else(|| panic!("no partition {suffix} in {parts:?}"))
        };
        let root = by_node("img.img1");
        assert_eq!(root["uuid"], "C0FFEE00-1234-4ABC-8DEF-0123456789AB");
        assert_eq!(root["type"], "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709");
        assert_eq!(root["name"], "root");
        let attrs = root["attrs"].as_str().unwrap();
        assert!(
            attrs.contains("LegacyBIOSBootable") && attrs.contains("GUID:60"),
            "{attrs}"
        );
        let bios = by_node("img.img14");
        assert_eq!(bios["type"], "21686148-6449-6E6F-744E-656564454649");
        assert_eq!(bios["uuid"], "0A0B0C0D-0E0F-4011-8213-141516171819");
        let verify = run(Command::new("sgdisk").arg("-v").arg(&img));
        assert!(verify.contains("No problems found"), "{verify}");
    }

    #[test]
    fn an_mbr_keeps_its_signature_and_the_partition_number() {
        let dir = tempfile::tempdir().unwrap();
        let src = disk(dir.path(), "src.img", 64);
        // /boot on 1, root on 2: the kernel names root PARTUUID=1234abcd-02.
        let mut sfdisk = Command::new("sfdisk");
        sfdisk
            .arg("-q")
            .arg(&src)
            .stdin(std::process::Stdio::piped());
        let mut child = sfdisk.spawn().unwrap();
        std::io::Write::write_all(
            child.stdin.as_mut().unwrap(),
            b"label: dos\nlabel-id: 0x1234abcd\nstart=2048, size=8192, type=83\nstart=10240, type=83, bootable\n",
        )
        .unwrap();
        drop(child.stdin.take());
        assert!(child.wait().unwrap().success());
        let spec = TableSpec::from_disk(&src, 512, 2).unwrap();
        assert_eq!((spec.style, spec.root_number), (PartitionStyle::Mbr, 2));
        assert_eq!(spec.mbr_signature, 0x1234_abcd);

        let img = disk(dir.path(), "img.img", 64);
        let layout = write_table(&img, &spec).unwrap();
        assert_eq!(layout.root_partuuid.as_deref(), Some("1234abcd-02"));
        assert_eq!(layout.partitions(), vec![(2, layout.root)]);
        let t = &sfdisk_json(&img)["partitiontable"];
        assert_eq!(t["id"], "0x1234abcd");
        let parts = t["partitions"].as_array().unwrap();
        assert_eq!(parts.len(), 1, "{parts:?}");
        assert!(parts[0]["node"].as_str().unwrap().ends_with("img.img2"));
        assert_eq!(parts[0]["start"], 2048);
        assert_eq!(parts[0]["bootable"], true);
    }

    #[test]
    fn damaged_or_unkeepable_source_tables_are_errors_naming_the_disk() {
        let dir = tempfile::tempdir().unwrap();
        let src = disk(dir.path(), "src.img", 16);
        run(Command::new("sgdisk").args(["-n", "1:2048:0"]).arg(&src));
        // Beyond the array, and an empty entry.
        for n in [0, 2, 129] {
            let e = TableSpec::from_disk(&src, 512, n).unwrap_err().to_string();
            assert!(e.contains("src.img"), "{e}");
        }
        // A flipped byte in the entry array: its CRC no longer matches.
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&src)
            .unwrap();
        f.write_all_at(&[0x5A], 2 * 512 + 100).unwrap();
        let e = TableSpec::from_disk(&src, 512, 1).unwrap_err().to_string();
        assert!(e.contains("CRC-32"), "{e}");
        // A header claiming a gigantic array is refused before anything is read.
        let mut header = vec![0u8; 512];
        f.read_exact_at(&mut header, 512).unwrap();
        header[80..84].copy_from_slice(&u32::MAX.to_le_bytes());
        header[16..20].fill(0);
        let crc = crc32fast::hash(&header[..92]);
        header[16..20].copy_from_slice(&crc.to_le_bytes());
        f.write_all_at(&header, 512).unwrap();
        let e = TableSpec::from_disk(&src, 512, 1).unwrap_err().to_string();
        assert!(e.contains("entry array of"), "{e}");

        // MBR: a logical partition cannot be kept; nor can an empty slot.
        let mbr = disk(dir.path(), "mbr.img", 16);
        let mut sector = [0u8; 512];
        sector[510] = 0x55;
        sector[511] = 0xAA;
        sector[446 + 4] = 0x83;
        sector[446 + 8] = 0x08;
        sector[446 + 12] = 0x10;
        std::fs::OpenOptions::new()
            .write(true)
            .open(&mbr)
            .unwrap()
            .write_all_at(&sector, 0)
            .unwrap();
        assert!(TableSpec::from_disk(&mbr, 512, 1).is_ok());
        for n in [2, 5] {
            let e = TableSpec::from_disk(&mbr, 512, n).unwrap_err().to_string();
            assert!(e.contains("mbr.img"), "{e}");
        }
    }
}
