//! The faithful tree copy behind `bundle-vol`: copies a live root filesystem or any directory
//! into a (mounted) image, keeping everything `rsync -aHAXS --numeric-ids` keeps and more, and
//! failing loudly where the classic tool silently lost data (docs/reference-behaviour.md §2.8,
//! §12.3 "Inconsistent copies": hard links duplicated, ACLs lost, SELinux labels and
//! capabilities dropped on an `-X` retry, root dot-files skipped).
//!
//! What is kept, for every entry: the type (regular file, directory, symlink, character and
//! block device, fifo; sockets are skipped and counted), the data with its holes (SEEK_DATA /
//! SEEK_HOLE), symlink targets as raw bytes, hard links (one inode, many names), numeric owner
//! and group, the mode including setuid/setgid/sticky, nanosecond atime and mtime (directories'
//! times are set after their contents), and every extended attribute (`user.`, `trusted.`,
//! `security.` including `security.capability` and `security.selinux`, and the POSIX ACLs as
//! raw `system.posix_acl_access` / `system.posix_acl_default` values). The source root itself
//! is copied onto the destination root, dot-entries included.
//!
//! Not kept (cannot be): ctime and inode numbers. Source atimes are not disturbed: files and
//! directories are opened with `O_NOATIME`.
//!
//! Safety: the walk never follows a symlink (every open uses `O_NOFOLLOW` and is checked with
//! `fstat` against the `lstat` seen in the directory listing), every operation is relative to an
//! open directory descriptor (no `PATH_MAX` limit, no re-resolution of paths that could be
//! swapped), the walk uses an explicit stack (no recursion), and nothing outside the destination
//! is ever written: entries are created with `O_EXCL`/`mkdirat`/`mknodat`, which never follow
//! a symlink planted in the destination.
//!
//! Symlinks and special files cannot be opened for xattr calls, so their xattrs are read and
//! written through `/proc/self/fd/<dir>/<name>` (never following `name`): `/proc` must be
//! mounted, and if it is not every such entry is reported as not copied faithfully.
//!
//! Regular-file data is copied by a small pool of worker threads while the main thread walks;
//! a file's metadata is applied by the worker after its data, and a directory's times only
//! after all its entries are created (writing into a file never changes its parent's times).
//!
//! The parts: `walk` (the walk over the source, creating every entry), `worker` (regular-file
//! data, on the worker threads), `attrs` (owner, mode, times and xattrs). This module holds the
//! options, the report, the errors, [`copy_tree`] and what the walk and the workers share.

use std::collections::HashSet;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Mutex, mpsc};

use nix::errno::Errno;
use nix::fcntl::{AT_FDCWD, OFlag};
use nix::sys::stat::fstat;
use xattr::FileExt as _;

use crate::progress::Progress;

mod attrs;
#[cfg(test)]
mod tests;
mod walk;
mod worker;

use walk::Walker;
use worker::{FileJob, worker};

/// The default ACL of a directory; inherited by entries created inside it, so it must not be on
/// the destination root while the copy creates entries there.
const DEFAULT_ACL_XATTR: &str = "system.posix_acl_default";

/// Regular files waiting for a worker. Each holds two open descriptors, so this bounds the
/// descriptors in flight (2 × 64) as well as the walk's lead over the data copies.
const FILE_QUEUE_DEPTH: usize = 64;

/// What to copy and how strict to be.
#[derive(Debug, Clone)]
pub struct CopyOptions {
    /// Stay on the source's filesystem: directories of other filesystems (mount points, also
    /// btrfs subvolumes, which have their own device number) become empty directories with
    /// their visible mode, owner, xattrs and times, and are listed in
    /// [`CopyReport::mount_points`]. Default true.
    pub one_file_system: bool,
    /// Absolute paths inside the source (host paths starting with the source path, already
    /// resolved) skipped entirely; a directory is skipped with its contents.
    pub exclude: Vec<PathBuf>,
    /// Absolute paths inside the source whose directory is copied (with its attributes) but
    /// not its contents, e.g. `/proc`, `/sys`, `/dev`, `/run`. A non-directory there is copied
    /// as usual.
    pub empty_dirs: Vec<PathBuf>,
    /// Accept entries that cannot be copied faithfully (an xattr or ACL refused by the
    /// destination, an owner it cannot store …): warn and list them in [`CopyReport::lossy`]
    /// instead of failing with [`CopyError::NotFaithful`].
    pub allow_lossy: bool,
    /// Worker threads copying regular-file data (the walk runs on the calling thread); 0 or 1
    /// copies everything on the calling thread.
    pub threads: usize,
}

impl Default for CopyOptions {
    fn default() -> Self {
        Self {
            one_file_system: true,
            exclude: Vec::new(),
            empty_dirs: Vec::new(),
            allow_lossy: false,
            threads: std::thread::available_parallelism().map_or(1, usize::from),
        }
    }
}

/// What a copy did. Paths are source paths.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CopyReport {
    /// Regular files copied (each inode once; further names count in `hardlinks`).
    pub files: u64,
    /// Directories created, the root, mount points and empty directories included.
    pub dirs: u64,
    /// Symbolic links.
    pub symlinks: u64,
    /// Additional names of an already copied inode, created with link(2).
    pub hardlinks: u64,
    /// Character and block devices.
    pub devices: u64,
    /// Named pipes.
    pub fifos: u64,
    /// Unix sockets, which cannot be copied (they only exist while bound).
    pub sockets_skipped: u64,
    /// File data bytes written (holes not counted).
    pub bytes: u64,
    /// Regular files with at least one hole, copied as sparse files.
    pub sparse_files: u64,
    /// Extended attributes copied (ACLs and capabilities included).
    pub xattrs: u64,
    /// Directories of another filesystem, copied as empty directories.
    pub mount_points: Vec<PathBuf>,
    /// Entries skipped because of [`CopyOptions::exclude`].
    pub excluded: Vec<PathBuf>,
    /// Entries not copied faithfully, with what was lost (only with
    /// [`CopyOptions::allow_lossy`]; otherwise the copy fails with this list).
    pub lossy: Vec<(PathBuf, String)>,
    /// Entries that changed while being copied (live source): regular files whose size or
    /// mtime changed during the copy (what was read has been copied), and names replaced by
    /// another object between listing and opening (skipped).
    pub changed: Vec<PathBuf>,
}

/// A failed copy.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    /// The source root could not be opened as a directory.
    #[error("opening the copy source {path}")]
    OpenSource {
        /// The source root.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The destination root could not be opened as a directory.
    #[error("opening the copy destination {path}")]
    OpenDestination {
        /// The destination root.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// An exclusion or empty-directory path does not lie inside the source, so it could never
    /// match (the mis-anchoring bug of docs/reference-behaviour.md §2.4).
    #[error("{option} path {path} is not inside the copy source {source_root}")]
    OutsideSource {
        /// `exclude` or `empty_dirs`.
        option: &'static str,
        /// The offending path.
        path: PathBuf,
        /// The source root.
        source_root: PathBuf,
    },
    /// Reading an entry of the source (stat, open, directory listing, symlink) failed.
    #[error("reading {path} in the copy source")]
    ReadSource {
        /// The source path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Creating an entry in the destination failed.
    #[error("creating {path} in the copy destination")]
    Create {
        /// The destination path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Copying the data of a regular file failed.
    #[error("copying the data of {path}")]
    CopyData {
        /// The source path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A signal arrived.
    #[error("copying {path}")]
    Interrupted {
        /// The source path being copied.
        path: PathBuf,
        /// The [`crate::interrupt::Interrupted`] error.
        #[source]
        source: io::Error,
    },
    /// A data-copy worker thread panicked.
    #[error("a file copy worker thread panicked")]
    WorkerPanicked,
    /// Some entries could not be copied faithfully and [`CopyOptions::allow_lossy`] is off.
    /// The copy went on to the end so that every such entry is listed.
    #[error(
        "cannot copy {} entries faithfully (allow lossy copies to accept this): {}",
        .entries.len(),
        list_lossy(.entries)
    )]
    NotFaithful {
        /// Each source path and what could not be kept.
        entries: Vec<(PathBuf, String)>,
    },
}

fn list_lossy(entries: &[(PathBuf, String)]) -> String {
    entries
        .iter()
        .map(|(path, what)| format!("{}: {what}", path.display()))
        .collect::<Vec<_>>()
        .join("; ")
}

/// Copies the tree at `src` (the directory itself: its attributes go onto `dst`) into the
/// existing directory `dst`, faithfully (see the module docs).
///
/// `dst` should be empty; an existing subdirectory (such as `lost+found` of a fresh ext4) is
/// merged into, any other existing name is an error. Progress is reported as one phase
/// `"copying files"` counting data bytes.
///
/// # Errors
///
/// [`CopyError::NotFaithful`] listing every entry whose data or attributes the destination
/// could not keep (after copying everything else) unless `opts.allow_lossy`; the other
/// variants on the first I/O failure, a signal, or a bad option.
pub fn copy_tree(
    src: &Path,
    dst: &Path,
    opts: &CopyOptions,
    progress: &dyn Progress,
) -> Result<CopyReport, CopyError> {
    let excludes = relative_set(src, &opts.exclude, "exclude")?;
    let empty_dirs = relative_set(src, &opts.empty_dirs, "empty_dirs")?;
    let src_root = open_dir(AT_FDCWD, src).map_err(|source| CopyError::OpenSource {
        path: src.to_owned(),
        source,
    })?;
    let src_stat = fstat(&src_root).map_err(|e| CopyError::OpenSource {
        path: src.to_owned(),
        source: e.into(),
    })?;
    let dst_root = open_dir(AT_FDCWD, dst).map_err(|source| CopyError::OpenDestination {
        path: dst.to_owned(),
        source,
    })?;
    // A default ACL on the destination root would be inherited by every entry created in it
    // and change their ACLs and modes; the source root's own xattrs are applied at the end.
    match dst_root.remove_xattr(DEFAULT_ACL_XATTR) {
        Ok(()) => {}
        Err(e) if matches!(errno(&e), Errno::ENODATA | Errno::EOPNOTSUPP) => {}
        Err(source) => {
            return Err(CopyError::OpenDestination {
                path: dst.to_owned(),
                source,
            });
        }
    }

    progress.start("copying files", None);
    let shared = Shared {
        src_root: src,
        dst_root: dst,
        progress,
        outcome: Mutex::new(Outcome::default()),
        failed: AtomicBool::new(false),
    };
    let workers = opts.threads.max(1);
    let walk_result = if workers == 1 {
        let mut walker = Walker::new(&shared, opts, excludes, empty_dirs, None);
        walker.run(src_root, src_stat, dst_root)
    } else {
        let (tx, rx) = mpsc::sync_channel::<FileJob>(FILE_QUEUE_DEPTH);
        let rx = Mutex::new(rx);
        std::thread::scope(|scope| {
            let handles: Vec<_> = (0..workers)
                .map(|_| scope.spawn(|| worker(&shared, &rx)))
                .collect();
            let mut walker = Walker::new(&shared, opts, excludes, empty_dirs, Some(tx));
            let result = walker.run(src_root, src_stat, dst_root);
            // Dropping the walker closes the queue so the workers finish and exit.
            drop(walker);
            let mut panicked = false;
            for handle in handles {
                panicked |= handle.join().is_err();
            }
            if panicked && result.is_ok() {
                return Err(CopyError::WorkerPanicked);
            }
            result
        })
    };
    progress.finish();
    let report = walk_result?;

    let outcome = shared
        .outcome
        .into_inner()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(error) = outcome.fatal {
        return Err(error);
    }
    let mut report = report;
    report.bytes += outcome.bytes;
    report.sparse_files += outcome.sparse_files;
    report.xattrs += outcome.xattrs;
    report.lossy.extend(outcome.lossy);
    report.changed.extend(outcome.changed);
    report.lossy.sort();
    report.changed.sort();
    for path in &report.changed {
        tracing::warn!(path = %path.display(), "file changed while it was copied");
    }
    if report.lossy.is_empty() || opts.allow_lossy {
        for (path, what) in &report.lossy {
            tracing::warn!(path = %path.display(), "not copied faithfully: {what}");
        }
        Ok(report)
    } else {
        Err(CopyError::NotFaithful {
            entries: report.lossy,
        })
    }
}

/// Turns absolute source paths into paths relative to the source root.
fn relative_set(
    src: &Path,
    paths: &[PathBuf],
    option: &'static str,
) -> Result<HashSet<PathBuf>, CopyError> {
    paths
        .iter()
        .map(|path| match path.strip_prefix(src) {
            Ok(rel) if !rel.as_os_str().is_empty() => Ok(rel.to_owned()),
            _ => Err(CopyError::OutsideSource {
                option,
                path: path.clone(),
                source_root: src.to_owned(),
            }),
        })
        .collect()
}

/// State shared by the walker and the workers.
struct Shared<'a> {
    src_root: &'a Path,
    dst_root: &'a Path,
    progress: &'a dyn Progress,
    outcome: Mutex<Outcome>,
    /// Set when a worker hit a fatal error, so the walk stops early.
    failed: AtomicBool,
}

impl Shared<'_> {
    fn outcome(&self) -> std::sync::MutexGuard<'_, Outcome> {
        // A poisoned lock only means a worker panicked; the counters are still meaningful and
        // the panic itself is reported by the join.
        self.outcome
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// What the workers found.
#[derive(Default)]
struct Outcome {
    bytes: u64,
    sparse_files: u64,
    xattrs: u64,
    lossy: Vec<(PathBuf, String)>,
    changed: Vec<PathBuf>,
    fatal: Option<CopyError>,
}

fn errno(e: &io::Error) -> Errno {
    Errno::from_raw(e.raw_os_error().unwrap_or(0))
}

/// Opens a directory without following a final symlink (except for the roots, opened with
/// `AT_FDCWD` and an absolute path given by the caller, which may be symlinks).
fn open_dir<Fd: AsFd, P: ?Sized + nix::NixPath>(dir: Fd, path: &P) -> io::Result<File> {
    let mut flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
    if dir.as_fd().as_raw_fd() != AT_FDCWD.as_raw_fd() {
        flags |= OFlag::O_NOFOLLOW;
    }
    open_noatime(dir, path, flags).map(File::from)
}

/// `openat` with `O_NOATIME` (so reading the source does not change its atimes), retried
/// without it where the kernel refuses (not the owner and no CAP_FOWNER).
fn open_noatime<Fd: AsFd, P: ?Sized + nix::NixPath>(
    dir: Fd,
    path: &P,
    flags: OFlag,
) -> io::Result<OwnedFd> {
    Ok(crate::image::root::open_noatime(dir, path, flags)?)
}
