//! The volume as the copy sees it: the mounts below it ([`mounts_below`]), its used space by a
//! walk that leaves out what is not copied ([`volume_usage`]), host paths in the private view
//! of it ([`in_view`]), and the swap files in use ([`swap_files`]).

use std::collections::HashSet;
use std::ffi::OsString;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::fcntl::OFlag;

use super::{VolumeError, io_err};
use crate::image::fs::{self as imgfs, SourceUsage};

/// Mount points and types of this thread's namespace (the private one).
pub(super) fn read_mounts() -> Result<Vec<(PathBuf, String)>, VolumeError> {
    Ok(imgfs::mounts()?
        .into_iter()
        .map(|m| (m.mount_point, m.fs_type))
        .collect())
}

/// Mounts strictly below `volume`.
pub(super) fn mounts_below(mounts: &[(PathBuf, String)], volume: &Path) -> Vec<(PathBuf, String)> {
    let mut below: Vec<(PathBuf, String)> = mounts
        .iter()
        .filter(|(mp, _)| mp != volume && mp.starts_with(volume))
        .cloned()
        .collect();
    below.sort();
    below.dedup();
    below
}

/// The used space to size the image for: the filesystem's own figures when the volume is its
/// mount point and nothing is excluded (cheap and exact), else a walk of the volume's tree
/// without the excluded paths (a directory on a large filesystem must not get an image the
/// size of that filesystem, and `--exclude` must be able to bring a root volume under EC2's
/// 10 GiB limit).
pub(super) fn volume_usage(
    volume: &Path,
    mounts: &[(PathBuf, String)],
    all: bool,
    exclude: &[PathBuf],
    empty_dirs: &[PathBuf],
) -> Result<SourceUsage, VolumeError> {
    let is_mount_point = mounts.iter().any(|(mp, _)| mp == volume);
    if is_mount_point && !all && exclude.is_empty() {
        return Ok(imgfs::source_usage(volume)?);
    }
    tree_usage(
        volume,
        all,
        &exclude.iter().collect(),
        &empty_dirs.iter().collect(),
    )
}

/// Allocated bytes and inodes of the tree at `root` (hard links counted once), staying on its
/// filesystem unless `all`, without the `exclude`d paths (host paths under `root`) and what is
/// below them, and without the contents of `empty_dirs`.
fn tree_usage(
    root: &Path,
    all: bool,
    exclude: &HashSet<&PathBuf>,
    empty_dirs: &HashSet<&PathBuf>,
) -> Result<SourceUsage, VolumeError> {
    let root_dev = fs::metadata(root).map_err(io_err("reading", root))?.dev();
    let mut seen = HashSet::new();
    let mut usage = SourceUsage {
        used_bytes: 0,
        used_inodes: 0,
    };
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let names = match list_dir(&dir) {
            Ok(names) => names,
            // Vanished while walking a live tree; the copy reports what it finds.
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io_err("reading", &dir)(e)),
        };
        for name in names {
            let path = dir.join(name);
            if exclude.contains(&path) {
                continue;
            }
            let Ok(meta) = fs::symlink_metadata(&path) else {
                continue;
            };
            if meta.nlink() > 1 && !meta.is_dir() && !seen.insert((meta.dev(), meta.ino())) {
                continue;
            }
            usage.used_inodes += 1;
            usage.used_bytes += meta.blocks() * 512;
            if meta.is_dir() && (all || meta.dev() == root_dev) && !empty_dirs.contains(&path) {
                stack.push(path);
            }
        }
    }
    Ok(usage)
}

/// The names in the directory `dir`, listed without moving its atime: the volume is live,
/// and its atimes are what the copy puts into the image (under `relatime` a plain listing
/// would update them). `O_NOATIME` is retried without where the kernel refuses it (not the
/// owner and no CAP_FOWNER).
pub(super) fn list_dir(dir: &Path) -> io::Result<Vec<OsString>> {
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
    let fd = crate::image::root::open_noatime(nix::fcntl::AT_FDCWD, dir, flags)?;
    Ok(crate::image::root::read_dir_entries(&fs::File::from(fd))?
        .into_iter()
        .map(|(name, _)| OsString::from_vec(name.into_bytes()))
        .collect())
}

/// `host` (a path under the volume) as seen in the copy's view of the volume; `None` when it
/// is not under the volume.
pub(super) fn in_view(volume: &Path, view: &Path, host: &Path) -> Option<PathBuf> {
    let rel = host.strip_prefix(volume).ok()?;
    Some(if rel.as_os_str().is_empty() {
        view.to_path_buf()
    } else {
        view.join(rel)
    })
}

/// Swap files in use (`/proc/swaps`, type `file`): never copied.
pub(super) fn swap_files() -> Vec<PathBuf> {
    let Ok(text) = fs::read("/proc/swaps") else {
        return Vec::new();
    };
    text.split(|&b| b == b'\n')
        .skip(1)
        .filter_map(|line| {
            let mut fields = line
                .split(|b| b.is_ascii_whitespace())
                .filter(|f| !f.is_empty());
            let path = fields.next()?;
            (fields.next()? == b"file")
                .then(|| PathBuf::from(OsString::from_vec(imgfs::unescape_octal(path))))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_leaves_out_exclusions_and_the_contents_of_emptied_directories() {
        let dir = tempfile::tempdir().unwrap();
        let vol = dir.path();
        for (path, len) in [("keep/a", 40_000), ("big/b", 400_000), ("tmp/c", 400_000)] {
            fs::create_dir_all(vol.join(path).parent().unwrap()).unwrap();
            fs::write(vol.join(path), vec![1u8; len]).unwrap();
        }
        let all = tree_usage(vol, false, &HashSet::new(), &HashSet::new()).unwrap();
        assert_eq!(all.used_inodes, 6);
        let (big, tmp) = (vol.join("big"), vol.join("tmp"));
        let some = tree_usage(vol, false, &HashSet::from([&big]), &HashSet::from([&tmp])).unwrap();
        // keep, keep/a and tmp (its contents not counted); big not at all.
        assert_eq!(some.used_inodes, 3);
        assert!(some.used_bytes < 100_000, "{some:?}");
        assert!(all.used_bytes > 800_000, "{all:?}");
    }

    #[test]
    fn views_and_mounts_below() {
        assert_eq!(
            in_view(
                Path::new("/"),
                Path::new("/w/volume"),
                Path::new("/var/tmp/x")
            ),
            Some(PathBuf::from("/w/volume/var/tmp/x"))
        );
        assert_eq!(
            in_view(Path::new("/data"), Path::new("/w/v"), Path::new("/etc")),
            None
        );
        let mounts = vec![
            (PathBuf::from("/"), "ext4".to_string()),
            (PathBuf::from("/proc"), "proc".to_string()),
            (PathBuf::from("/data"), "xfs".to_string()),
            (PathBuf::from("/database"), "xfs".to_string()),
            (PathBuf::from("/data/x"), "nfs".to_string()),
        ];
        assert_eq!(
            mounts_below(&mounts, Path::new("/data")),
            [(PathBuf::from("/data/x"), "nfs".to_string())]
        );
        assert_eq!(mounts_below(&mounts, Path::new("/")).len(), 4);
    }
}
