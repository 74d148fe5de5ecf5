//! Confined access to a (mounted) image's root directory: opening directories by their path in
//! the image and removing entries, without ever reaching outside the image.
//!
//! An image is untrusted input: it may hold symlinks such as `/etc/ssh -> /etc` or
//! `/home/alice -> /home/alice` that, resolved on the host, would point at the host's own
//! files. [`ImageRoot`] resolves every path with `openat2(RESOLVE_IN_ROOT)`, which makes the
//! kernel treat the image root as `/` (absolute symlinks and `..` stay inside it), refuses magic
//! links and does not cross mount points — so `/home -> var/home` (ostree systems) works as it
//! does when the image boots, and nothing can escape. On kernels older than 5.6 (no `openat2`)
//! every component is opened with `O_NOFOLLOW` instead and a symlinked directory is reported as
//! not entered. The last component of an operation is never followed: removal is `unlinkat`,
//! opens use `O_NOFOLLOW`.

use std::ffi::{CStr, CString, OsStr};
use std::fs::File;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{AT_FDCWD, AtFlags, OFlag, OpenHow, ResolveFlag, openat, openat2};
use nix::sys::stat::{FileStat, Mode, SFlag, fstat, fstatat};
use nix::unistd::{UnlinkatFlags, unlinkat};

/// How many times a resolution that the kernel refused with `EAGAIN` (a concurrent rename
/// anywhere on the system while `RESOLVE_IN_ROOT` walked `..`) is retried before giving up.
const EAGAIN_RETRIES: usize = 16;

/// How paths inside the image are resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Resolve {
    /// `openat2` with `RESOLVE_IN_ROOT`: symlinks are followed as if the image were `/`.
    InRoot,
    /// Component by component with `O_NOFOLLOW`: symlinks are not followed at all (kernels
    /// without `openat2`).
    NoSymlinks,
}

/// The result of looking up a directory in the image.
#[derive(Debug)]
pub(crate) enum Lookup {
    /// The directory, open.
    Dir(File),
    /// Nothing of that name (or a parent is missing).
    Missing,
    /// Something is there that is not entered, with why (not a directory, a symlink on a kernel
    /// without `openat2`, another filesystem mounted inside the image).
    Blocked(String),
}

/// An open image root directory.
#[derive(Debug)]
pub(crate) struct ImageRoot {
    dir: File,
    path: PathBuf,
    resolve: Resolve,
}

impl ImageRoot {
    /// Opens the image root at `path` (the caller's own path: it may itself be a symlink), and
    /// picks `openat2` when the kernel has it.
    pub(crate) fn open(path: &Path) -> io::Result<Self> {
        let mut root = Self::open_with(path, Resolve::InRoot)?;
        let probe = OpenHow::new()
            .flags(OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC)
            .resolve(ResolveFlag::RESOLVE_IN_ROOT);
        if matches!(openat2(&root.dir, ".", probe), Err(Errno::ENOSYS)) {
            tracing::debug!("openat2 is not available: symlinks in the image are not followed");
            root.resolve = Resolve::NoSymlinks;
        }
        Ok(root)
    }

    /// Opens the image root with a given resolution strategy (tests exercise both).
    pub(crate) fn open_with(path: &Path, resolve: Resolve) -> io::Result<Self> {
        let fd = openat(
            AT_FDCWD,
            path,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )?;
        Ok(Self {
            dir: File::from(fd),
            path: path.to_owned(),
            resolve,
        })
    }

    /// Whether this "image" is in fact the host's own root directory (a caller's mistake
    /// that would make image edits host edits).
    pub(crate) fn is_host_root(&self) -> io::Result<bool> {
        let here = fstat(&self.dir)?;
        let host = nix::sys::stat::stat("/")?;
        Ok((host.st_dev, host.st_ino) == (here.st_dev, here.st_ino))
    }

    /// The image root's host path (for messages).
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Opens the directory at `rel` in the image (`"etc/ssh"`; a leading `/` is ignored, the
    /// path is always taken inside the image).
    pub(crate) fn open_dir(&self, rel: &Path) -> io::Result<Lookup> {
        let rel = in_image(rel);
        if rel.as_os_str().is_empty() {
            return Ok(Lookup::Dir(self.dir.try_clone()?));
        }
        let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
        match self.resolve {
            Resolve::InRoot => match self.open_in_root(&rel, flags) {
                Ok(dir) => Ok(Lookup::Dir(dir)),
                Err(e) => lookup_error(e, "not a directory"),
            },
            Resolve::NoSymlinks => {
                let mut dir = self.dir.try_clone()?;
                let root_dev = fstat(&self.dir)?.st_dev;
                for component in rel.components() {
                    let Component::Normal(name) = component else {
                        // `..` is refused rather than resolved: without openat2 it could
                        // climb out of the image.
                        return Ok(Lookup::Blocked(format!("{} contains '..'", rel.display())));
                    };
                    let fd = match openat(&dir, name, flags | OFlag::O_NOFOLLOW, Mode::empty()) {
                        Ok(fd) => fd,
                        Err(e) => {
                            return lookup_error(
                                e,
                                "not a directory, or a symlink (not followed: this kernel has \
                                 no openat2)",
                            );
                        }
                    };
                    dir = File::from(fd);
                    if fstat(&dir)?.st_dev != root_dev {
                        return Ok(Lookup::Blocked(
                            "another filesystem is mounted there".into(),
                        ));
                    }
                }
                Ok(Lookup::Dir(dir))
            }
        }
    }
}

impl ImageRoot {
    /// `openat2` of `rel` (already taken inside the image) with `RESOLVE_IN_ROOT`, no magic
    /// links and no crossing of mount points; retried when a concurrent rename made the kernel
    /// give up (`EAGAIN`).
    fn open_in_root(&self, rel: &Path, flags: OFlag) -> Result<File, Errno> {
        let how = OpenHow::new().flags(flags).resolve(
            ResolveFlag::RESOLVE_IN_ROOT
                | ResolveFlag::RESOLVE_NO_MAGICLINKS
                | ResolveFlag::RESOLVE_NO_XDEV,
        );
        let mut tries = 0;
        loop {
            match openat2(&self.dir, rel, how) {
                Err(Errno::EAGAIN) if tries < EAGAIN_RETRIES => tries += 1,
                other => return other.map(File::from),
            }
        }
    }

    /// Opens the regular file at `rel` in the image for reading, following symlinks inside the
    /// image as the booted system would (never out of it: see [`ImageRoot::open_dir`]); `None`
    /// when there is no regular file there (missing, a directory, a device, a symlink leaving
    /// the image, another filesystem).
    pub(crate) fn open_file(&self, rel: &Path) -> io::Result<Option<File>> {
        let rel = in_image(rel);
        let flags = OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC;
        let opened = match self.resolve {
            Resolve::InRoot => self.open_in_root(&rel, flags),
            Resolve::NoSymlinks => {
                let (Some(parent), Some(name)) = (rel.parent(), rel.file_name()) else {
                    return Ok(None);
                };
                let Lookup::Dir(dir) = self.open_dir(parent)? else {
                    return Ok(None);
                };
                openat(&dir, name, flags | OFlag::O_NOFOLLOW, Mode::empty()).map(File::from)
            }
        };
        let file = match opened {
            Ok(file) => file,
            Err(Errno::ENOENT | Errno::ENOTDIR | Errno::ELOOP | Errno::EXDEV) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        Ok((kind(&fstat(&file)?) == SFlag::S_IFREG).then_some(file))
    }
}

fn lookup_error(e: Errno, blocked: &str) -> io::Result<Lookup> {
    match e {
        Errno::ENOENT => Ok(Lookup::Missing),
        Errno::ENOTDIR | Errno::ELOOP => Ok(Lookup::Blocked(blocked.into())),
        Errno::EXDEV => Ok(Lookup::Blocked(
            "another filesystem is mounted there".into(),
        )),
        e => Err(e.into()),
    }
}

/// `rel` with any root or `.` components dropped: image paths are written `/etc/fstab` in
/// docs and passwd files, and must never be taken as host paths.
fn in_image(rel: &Path) -> PathBuf {
    rel.components()
        .filter(|c| {
            !matches!(
                c,
                Component::RootDir | Component::CurDir | Component::Prefix(_)
            )
        })
        .collect()
}

/// `/`-rooted display form of a path in the image (`etc/fstab` → `/etc/fstab`).
pub(crate) fn image_path(rel: &Path) -> PathBuf {
    Path::new("/").join(in_image(rel))
}

/// The type of an entry, not following a symlink; `None` when it does not exist.
pub(crate) fn lstat_at(dir: &File, name: &OsStr) -> io::Result<Option<FileStat>> {
    match fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some(st)),
        Err(Errno::ENOENT) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// The file type bits of a stat.
pub(crate) fn kind(st: &FileStat) -> SFlag {
    SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits())
}

/// `openat` with `O_NOATIME`, so that reading the live volume does not change the atimes the
/// copy puts into the image, retried without it where the kernel refuses (EPERM: not the
/// owner and no CAP_FOWNER). `dir` may be `AT_FDCWD`.
pub(crate) fn open_noatime<Fd: std::os::fd::AsFd, P: ?Sized + nix::NixPath>(
    dir: Fd,
    path: &P,
    flags: OFlag,
) -> nix::Result<std::os::fd::OwnedFd> {
    match openat(&dir, path, flags | OFlag::O_NOATIME, Mode::empty()) {
        Err(Errno::EPERM) => openat(&dir, path, flags, Mode::empty()),
        r => r,
    }
}

/// Every entry of the open directory `dir` but `.` and `..`, with the type the filesystem
/// reports (`Unknown` where it reports none), in directory order. The directory is read
/// through a new descriptor with `dir`'s flags (so `O_NOATIME` stays). A failing read is an
/// error, never a shorter listing: nix 0.30's `Dir` iterator takes a `readdir_r` failure for
/// the end of the directory, and a directory whose block cannot be read (EIO, a corrupt entry)
/// then looked empty or cut short to every walk.
pub(crate) fn read_dir_entries(dir: &File) -> io::Result<Vec<(CString, rustix::fs::FileType)>> {
    let mut stream = rustix::fs::Dir::read_from(dir)?;
    let mut entries = Vec::new();
    while let Some(entry) = stream.read() {
        let entry = entry?;
        let name = entry.file_name();
        if name != c"." && name != c".." {
            entries.push((name.to_owned(), entry.file_type()));
        }
    }
    Ok(entries)
}

/// The names in a directory, sorted bytewise, without `.` and `..` ([`read_dir_entries`]).
pub(crate) fn list_names(dir: &File) -> io::Result<Vec<CString>> {
    let mut names: Vec<CString> = read_dir_entries(dir)?
        .into_iter()
        .map(|(name, _)| name)
        .collect();
    names.sort_unstable();
    Ok(names)
}

/// Removes `name` in `dir` and, for a directory, everything below it, never following a
/// symlink (a symlink is removed as itself) and never descending into another filesystem
/// (a mount inside the image is an error, not something to empty). Returns how many entries
/// were removed; a missing `name` removes nothing.
pub(crate) fn remove_tree_at(dir: &File, name: &OsStr) -> io::Result<u64> {
    let Some(st) = lstat_at(dir, name)? else {
        return Ok(0);
    };
    if kind(&st) != SFlag::S_IFDIR {
        return match unlinkat(dir, name, UnlinkatFlags::NoRemoveDir) {
            Ok(()) => Ok(1),
            Err(Errno::ENOENT) => Ok(0),
            Err(e) => Err(e.into()),
        };
    }
    let dev = st.st_dev;
    // An explicit stack of (parent, name, open dir, remaining names): deep trees cannot
    // overflow the thread's stack.
    struct Level {
        dir: File,
        names: Vec<CString>,
    }
    let open = |parent: &File, name: &CStr| -> io::Result<File> {
        let fd = openat(
            parent,
            name,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )?;
        let dir = File::from(fd);
        if fstat(&dir)?.st_dev != dev {
            return Err(io::Error::other(format!(
                "{} is a mount point inside the image; not removing across it",
                Path::new(OsStr::from_bytes(name.to_bytes())).display()
            )));
        }
        Ok(dir)
    };
    let top_name = CString::new(name.as_bytes()).map_err(io::Error::other)?;
    let top = open(dir, &top_name)?;
    let mut removed = 0;
    let mut stack = vec![Level {
        names: list_names(&top)?,
        dir: top,
    }];
    while let Some(level) = stack.last_mut() {
        crate::interrupt::check()?;
        let Some(child) = level.names.pop() else {
            stack.pop();
            continue;
        };
        let child_os = OsStr::from_bytes(child.to_bytes());
        let Some(st) = lstat_at(&level.dir, child_os)? else {
            continue;
        };
        if kind(&st) == SFlag::S_IFDIR {
            let sub = open(&level.dir, &child)?;
            let names = list_names(&sub)?;
            if names.is_empty() {
                unlinkat(&level.dir, child.as_c_str(), UnlinkatFlags::RemoveDir)?;
                removed += 1;
            } else {
                // Put the directory back to be removed once it is empty.
                level.names.push(child);
                stack.push(Level { dir: sub, names });
            }
        } else {
            unlinkat(&level.dir, child.as_c_str(), UnlinkatFlags::NoRemoveDir)?;
            removed += 1;
        }
    }
    unlinkat(dir, name, UnlinkatFlags::RemoveDir)?;
    Ok(removed + 1)
}

/// Writes `text` to a new file beside `name` in the image directory `dir`, with the owner, mode
/// and SELinux label of the regular file `name` when there is one (a file created from outside
/// would get the label of nothing, and a confined service would be denied reading it), else
/// root's and 0644; synced. Returns the new file's name: the caller renames it over `name`
/// (or removes it). Nothing is followed: the old file is opened with `O_NOFOLLOW`, the new one
/// created with `O_EXCL`.
pub(crate) fn write_replacement(dir: &File, name: &str, text: &[u8]) -> io::Result<String> {
    use nix::sys::stat::fchmod;
    use nix::unistd::{Gid, Uid, fchown};
    use std::io::Write as _;
    use xattr::FileExt as _;

    let mut attrs = None;
    let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC;
    match openat(dir, name, flags, Mode::empty()) {
        Ok(fd) => {
            let file = File::from(fd);
            let st = fstat(&file)?;
            if kind(&st) == SFlag::S_IFREG {
                let label = file.get_xattr("security.selinux").ok().flatten();
                attrs = Some((st, label));
            }
        }
        Err(Errno::ENOENT | Errno::ELOOP) => {}
        Err(e) => return Err(e.into()),
    }
    let tmp_name = format!(".{name}.amibundle-{}", std::process::id());
    let tmp = openat(
        dir,
        tmp_name.as_str(),
        OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::from_bits_truncate(0o644),
    )
    .map(File::from)?;
    let written = (|| -> io::Result<()> {
        (&tmp).write_all(text)?;
        match &attrs {
            Some((st, label)) => {
                fchown(
                    &tmp,
                    Some(Uid::from_raw(st.st_uid)),
                    Some(Gid::from_raw(st.st_gid)),
                )?;
                fchmod(&tmp, Mode::from_bits_truncate(st.st_mode & 0o7777))?;
                if let Some(label) = label {
                    tmp.set_xattr("security.selinux", label)?;
                }
            }
            // The usual owner; creating as root gives it anyway, and the umask may have
            // narrowed the mode.
            None => fchmod(&tmp, Mode::from_bits_truncate(0o644))?,
        }
        tmp.sync_all()
    })();
    if let Err(e) = written {
        let _ = unlinkat(dir, tmp_name.as_str(), UnlinkatFlags::NoRemoveDir);
        return Err(e);
    }
    Ok(tmp_name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn in_image_drops_root_and_dots() {
        assert_eq!(in_image(Path::new("/etc/./fstab")), Path::new("etc/fstab"));
        assert_eq!(image_path(Path::new("etc/fstab")), Path::new("/etc/fstab"));
        assert_eq!(image_path(Path::new("")), Path::new("/"));
    }

    #[test]
    fn absolute_symlinks_resolve_inside_the_image() {
        let tmp = tempfile::tempdir().unwrap();
        let (image, host) = (tmp.path().join("image"), tmp.path().join("host"));
        std::fs::create_dir_all(image.join("var/home/alice")).unwrap();
        std::fs::create_dir_all(&host).unwrap();
        // `/home -> /var/home` as on ostree systems: followed, inside the image.
        symlink("/var/home", image.join("home")).unwrap();
        // A symlink naming the host directory by its host path: resolved in the image, where
        // it does not exist.
        symlink(&host, image.join("escape")).unwrap();
        symlink("../../..", image.join("up")).unwrap();

        let root = ImageRoot::open_with(&image, Resolve::InRoot).unwrap();
        let Lookup::Dir(alice) = root.open_dir(Path::new("/home/alice")).unwrap() else {
            panic!("home/alice not found through the in-image symlink");
        };
        let expected = std::fs::metadata(image.join("var/home/alice")).unwrap();
        let got = fstat(&alice).unwrap();
        assert_eq!(
            (got.st_dev, got.st_ino),
            (
                std::os::unix::fs::MetadataExt::dev(&expected),
                std::os::unix::fs::MetadataExt::ino(&expected)
            )
        );
        assert!(matches!(
            root.open_dir(Path::new("escape")).unwrap(),
            Lookup::Missing
        ));
        // `..` above the image root stays at the image root.
        let Lookup::Dir(up) = root.open_dir(Path::new("up")).unwrap() else {
            panic!("up not resolved");
        };
        let root_st = fstat(&root.dir).unwrap();
        let up_st = fstat(&up).unwrap();
        assert_eq!(
            (up_st.st_dev, up_st.st_ino),
            (root_st.st_dev, root_st.st_ino)
        );
    }

    #[test]
    fn without_openat2_symlinks_are_not_entered() {
        let tmp = tempfile::tempdir().unwrap();
        let image = tmp.path().join("image");
        std::fs::create_dir_all(image.join("var/home/alice")).unwrap();
        std::fs::create_dir_all(image.join("etc")).unwrap();
        std::fs::write(image.join("etc/passwd"), "").unwrap();
        symlink("/var/home", image.join("home")).unwrap();
        let root = ImageRoot::open_with(&image, Resolve::NoSymlinks).unwrap();
        assert!(matches!(
            root.open_dir(Path::new("home/alice")).unwrap(),
            Lookup::Blocked(_)
        ));
        assert!(matches!(
            root.open_dir(Path::new("etc/passwd")).unwrap(),
            Lookup::Blocked(_)
        ));
        assert!(matches!(
            root.open_dir(Path::new("var/../..")).unwrap(),
            Lookup::Blocked(_)
        ));
        assert!(matches!(
            root.open_dir(Path::new("nope/x")).unwrap(),
            Lookup::Missing
        ));
        assert!(matches!(
            root.open_dir(Path::new("var/home/alice")).unwrap(),
            Lookup::Dir(_)
        ));
    }

    #[test]
    fn remove_tree_never_follows_symlinks() {
        let tmp = tempfile::tempdir().unwrap();
        let (image, host) = (tmp.path().join("image"), tmp.path().join("host"));
        std::fs::create_dir_all(image.join("d/sub/deeper")).unwrap();
        std::fs::create_dir_all(&host).unwrap();
        std::fs::write(host.join("precious"), "host data").unwrap();
        std::fs::write(image.join("d/sub/deeper/f"), "x").unwrap();
        std::fs::write(image.join("d/g"), "y").unwrap();
        symlink(&host, image.join("d/link-to-host")).unwrap();
        symlink(host.join("precious"), image.join("d/sub/file-link")).unwrap();

        let dir = File::open(&image).unwrap();
        let removed = remove_tree_at(&dir, OsStr::new("d")).unwrap();
        // d, sub, deeper, f, g, link-to-host, file-link
        assert_eq!(removed, 7);
        assert!(!image.join("d").exists());
        assert_eq!(
            std::fs::read_to_string(host.join("precious")).unwrap(),
            "host data"
        );
        assert_eq!(remove_tree_at(&dir, OsStr::new("d")).unwrap(), 0);
    }
}
