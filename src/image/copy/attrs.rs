//! An entry's metadata, applied in the order the kernel requires: owner, extended attributes
//! (ACLs included), mode, the file capability last, times ([`apply_metadata`]). Symlinks and
//! special files are reached by name in their directory and, for xattrs, through
//! `/proc/self/fd/<dir>/<name>`.

use std::ffi::{CStr, OsStr, OsString};
use std::fs::File;
use std::io;
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::AtFlags;
use nix::sys::stat::{
    FchmodatFlags, FileStat, Mode, UtimensatFlags, fchmod, fchmodat, futimens, utimensat,
};
use nix::sys::time::TimeSpec;
use nix::unistd::{Gid, Uid, fchown, fchownat};
use xattr::FileExt as _;

use super::errno;

/// The xattr holding file capabilities. The kernel clears it on `chown` and on data writes, so
/// it is set last (after chown, chmod and the data).
pub(super) const CAPABILITY_XATTR: &str = "security.capability";

/// Where metadata goes: an open file or directory, or a name in an open directory (symlinks
/// and special files, which cannot be opened for this).
pub(super) enum Target<'a> {
    Fd(&'a File),
    At {
        dir: &'a File,
        name: &'a CStr,
        /// `/proc/self/fd/<dir>/<name>`, for the path-only xattr calls (never follows `name`).
        proc_path: &'a Path,
        symlink: bool,
    },
}

pub(super) enum XattrSource<'a> {
    Fd(&'a File),
    Path(&'a Path),
}

/// Applies owner, xattrs, mode, capability and times, in the order the kernel requires
/// (chown clears setuid/setgid and `security.capability`; see the module docs). Returns the
/// number of xattrs copied; everything that could not be kept goes to `losses`.
pub(super) fn apply_metadata(
    target: Target<'_>,
    source: XattrSource<'_>,
    st: &FileStat,
    losses: &mut Vec<String>,
) -> u64 {
    let uid = Some(Uid::from_raw(st.st_uid));
    let gid = Some(Gid::from_raw(st.st_gid));
    let chown = match &target {
        Target::Fd(f) => fchown(f, uid, gid),
        Target::At { dir, name, .. } => {
            fchownat(dir, *name, uid, gid, AtFlags::AT_SYMLINK_NOFOLLOW)
        }
    };
    if let Err(e) = chown {
        losses.push(format!("setting owner {}:{}: {e}", st.st_uid, st.st_gid));
    }

    let (xattrs, capability) = copy_xattrs(&target, &source, losses);

    let mode = Mode::from_bits_truncate(st.st_mode & 0o7777);
    let chmod = match &target {
        Target::Fd(f) => fchmod(f, mode),
        // Symlinks have no mode of their own on Linux.
        Target::At { symlink: true, .. } => Ok(()),
        Target::At { dir, name, .. } => fchmodat(dir, *name, mode, FchmodatFlags::FollowSymlink),
    };
    if let Err(e) = chmod {
        losses.push(format!("setting mode {:o}: {e}", st.st_mode & 0o7777));
    }

    let mut copied = xattrs;
    if let Some(value) = capability {
        match set_xattr(&target, OsStr::new(CAPABILITY_XATTR), &value) {
            Ok(()) => copied += 1,
            Err(e) => losses.push(format!("setting xattr {CAPABILITY_XATTR}: {e}")),
        }
    }

    let atime = TimeSpec::new(st.st_atime, st.st_atime_nsec);
    let mtime = TimeSpec::new(st.st_mtime, st.st_mtime_nsec);
    let times = match &target {
        Target::Fd(f) => futimens(f, &atime, &mtime),
        Target::At { dir, name, .. } => {
            utimensat(dir, *name, &atime, &mtime, UtimensatFlags::NoFollowSymlink)
        }
    };
    if let Err(e) = times {
        losses.push(format!("setting times: {e}"));
    }
    copied
}

/// Copies every xattr but the capability (returned for later) and removes xattrs the
/// destination has that the source has not (e.g. an ACL inherited from a default ACL).
fn copy_xattrs(
    target: &Target<'_>,
    source: &XattrSource<'_>,
    losses: &mut Vec<String>,
) -> (u64, Option<Vec<u8>>) {
    let names = match list_xattrs(source) {
        Ok(names) => names,
        Err(e) => {
            losses.push(format!("listing xattrs of the source: {e}"));
            return (0, None);
        }
    };
    let mut copied = 0;
    let mut capability = None;
    for name in &names {
        let value = match source {
            XattrSource::Fd(f) => f.get_xattr(name),
            XattrSource::Path(p) => xattr::get(p, name),
        };
        let value = match value {
            Ok(Some(value)) => value,
            // Removed since it was listed.
            Ok(None) => continue,
            Err(e) => {
                losses.push(format!(
                    "reading xattr {} of the source: {e}",
                    name.to_string_lossy()
                ));
                continue;
            }
        };
        if name == CAPABILITY_XATTR {
            capability = Some(value);
            continue;
        }
        match set_xattr(target, name, &value) {
            Ok(()) => copied += 1,
            Err(e) => losses.push(format!("setting xattr {}: {e}", name.to_string_lossy())),
        }
    }
    let existing = match target {
        Target::Fd(f) => f.list_xattr().map(Iterator::collect::<Vec<_>>),
        Target::At { proc_path, .. } => xattr::list(proc_path).map(Iterator::collect),
    };
    // A destination that cannot even list xattrs has none to remove; refusals to set were
    // recorded above.
    for name in existing.unwrap_or_default() {
        if names.contains(&name) {
            continue;
        }
        let removed = match target {
            Target::Fd(f) => f.remove_xattr(&name),
            Target::At { proc_path, .. } => xattr::remove(proc_path, &name),
        };
        if let Err(e) = removed {
            losses.push(format!(
                "removing xattr {} the source does not have: {e}",
                name.to_string_lossy()
            ));
        }
    }
    (copied, capability)
}

fn list_xattrs(source: &XattrSource<'_>) -> io::Result<Vec<OsString>> {
    let names = match source {
        XattrSource::Fd(f) => f.list_xattr(),
        XattrSource::Path(p) => xattr::list(p),
    };
    match names {
        Ok(names) => Ok(names.collect()),
        // A source filesystem without xattrs has nothing to lose.
        Err(e) if errno(&e) == Errno::EOPNOTSUPP => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

fn set_xattr(target: &Target<'_>, name: &OsStr, value: &[u8]) -> io::Result<()> {
    match target {
        Target::Fd(f) => f.set_xattr(name, value),
        Target::At { proc_path, .. } => xattr::set(proc_path, name, value),
    }
}
