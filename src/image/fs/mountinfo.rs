//! The mounts of the calling thread's mount namespace, from `/proc/thread-self/mountinfo`
//! (octal escapes such as `\040` decoded, paths kept as bytes): the mount holding a path
//! ([`find_mount`]) and its block device node ([`block_device`]).

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use super::FsError;

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

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::ffi::OsStrExt;
    use std::process::Command;

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
}
