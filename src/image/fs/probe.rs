//! What is on the source volume's device: the filesystem type, label and UUID from
//! `blkid -p -o udev` ([`probe_device`]), the ext layout from `dumpe2fs -h`
//! ([`read_ext_layout`]), and both for the filesystem holding a path ([`inspect_source`]).

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};

use super::{
    BLKID, DUMPE2FS, FsError, FsType, MountEntry, block_device, failed, find_mount, run_checked,
    run_tool,
};

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

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::ffi::OsStrExt;

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
}
