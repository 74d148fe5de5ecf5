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

use std::collections::{HashMap, HashSet};
use std::ffi::{CStr, CString, OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, mpsc};

use nix::errno::Errno;
use nix::fcntl::{AT_FDCWD, AtFlags, OFlag, copy_file_range, openat, readlinkat};
use nix::sys::stat::{
    FchmodatFlags, FileStat, Mode, SFlag, UtimensatFlags, fchmod, fchmodat, fstat, fstatat,
    futimens, mkdirat, mknodat, utimensat,
};
use nix::sys::time::TimeSpec;
use nix::unistd::{Gid, Uid, Whence, fchown, fchownat, linkat, lseek, symlinkat};
use xattr::FileExt as _;

use crate::progress::Progress;

/// The xattr holding file capabilities. The kernel clears it on `chown` and on data writes, so
/// it is set last (after chown, chmod and the data).
const CAPABILITY_XATTR: &str = "security.capability";

/// The default ACL of a directory; inherited by entries created inside it, so it must not be on
/// the destination root while the copy creates entries there.
const DEFAULT_ACL_XATTR: &str = "system.posix_acl_default";

/// Bytes handed to one `copy_file_range` call (or one read/write in the fallback). Large enough
/// that syscall overhead is negligible, small enough for smooth progress and prompt reaction to
/// a signal; the fallback buffer of this size exists once per worker.
const COPY_CHUNK_BYTES: usize = 8 << 20;

/// Regular files waiting for a worker. Each holds two open descriptors, so this bounds the
/// descriptors in flight (2 × 64) as well as the walk's lead over the data copies.
const FILE_QUEUE_DEPTH: usize = 64;

/// Hard-link sources whose destination path is at most this long are remembered by path
/// (relative to the destination root); deeper ones by an `O_PATH` descriptor, because
/// `linkat` cannot take a path longer than `PATH_MAX` (4096).
const LINK_BY_PATH_MAX_BYTES: usize = 3072;

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

/// One regular file whose destination has been created; data and metadata still to copy.
struct FileJob {
    src: File,
    dst: File,
    stat: FileStat,
    rel: PathBuf,
}

fn worker(shared: &Shared<'_>, rx: &Mutex<mpsc::Receiver<FileJob>>) {
    let mut buf = Vec::new();
    loop {
        let job = {
            let guard = rx.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            guard.recv()
        };
        let Ok(job) = job else { return };
        if shared.failed.load(Ordering::Relaxed) {
            // Drain the queue without copying once the copy has failed.
            continue;
        }
        if let Err(e) = copy_file(shared, job, &mut buf) {
            let mut outcome = shared.outcome();
            if outcome.fatal.is_none() {
                outcome.fatal = Some(e);
            }
            shared.failed.store(true, Ordering::Relaxed);
        }
    }
}

/// Copies data and metadata of one regular file and records the outcome.
fn copy_file(shared: &Shared<'_>, job: FileJob, buf: &mut Vec<u8>) -> Result<(), CopyError> {
    let src_path = shared.src_root.join(&job.rel);
    let size = u64::try_from(job.stat.st_size).unwrap_or(0);
    let data = copy_data(&job.src, &job.dst, size, buf, shared.progress).map_err(|source| {
        if source
            .get_ref()
            .is_some_and(|e| e.is::<crate::interrupt::Interrupted>())
        {
            CopyError::Interrupted {
                path: src_path.clone(),
                source,
            }
        } else {
            CopyError::CopyData {
                path: src_path.clone(),
                source,
            }
        }
    })?;
    // A live file may change under us (docs/reference-behaviour.md §2.8: no snapshot); keep
    // what was read and say so.
    let changed = data.short
        || fstat(&job.src).is_ok_and(|now| {
            now.st_size != job.stat.st_size
                || now.st_mtime != job.stat.st_mtime
                || now.st_mtime_nsec != job.stat.st_mtime_nsec
        });
    let mut losses = Vec::new();
    let xattrs = apply_metadata(
        Target::Fd(&job.dst),
        XattrSource::Fd(&job.src),
        &job.stat,
        &mut losses,
    );
    let mut outcome = shared.outcome();
    outcome.bytes += data.bytes;
    outcome.sparse_files += u64::from(data.holes);
    outcome.xattrs += xattrs;
    if changed {
        outcome.changed.push(src_path.clone());
    }
    outcome
        .lossy
        .extend(losses.into_iter().map(|what| (src_path.clone(), what)));
    Ok(())
}

struct DataOutcome {
    bytes: u64,
    holes: bool,
    /// The file ended before its recorded size (it shrank while being copied).
    short: bool,
}

/// Copies the data regions of `src` (SEEK_DATA/SEEK_HOLE) into `dst` at the same offsets and
/// sets the final length, so holes stay holes. Zero-filled data regions are copied as data:
/// the layout is kept as it is, not re-sparsified.
fn copy_data(
    src: &File,
    dst: &File,
    size: u64,
    buf: &mut Vec<u8>,
    progress: &dyn Progress,
) -> io::Result<DataOutcome> {
    let mut out = DataOutcome {
        bytes: 0,
        holes: false,
        short: false,
    };
    let end = i64::try_from(size).map_err(io::Error::other)?;
    let mut pos: i64 = 0;
    let mut use_copy_file_range = true;
    while pos < end {
        let data = match lseek(src, pos, Whence::SeekData) {
            Ok(data) => data,
            // No data after `pos`: the rest is a hole.
            Err(Errno::ENXIO) => end,
            // Filesystems without hole reporting: everything is data.
            Err(Errno::EINVAL | Errno::EOPNOTSUPP) => pos,
            Err(e) => return Err(e.into()),
        };
        if data >= end {
            break;
        }
        out.holes |= data > pos;
        let hole = match lseek(src, data, Whence::SeekHole) {
            Ok(hole) => hole.min(end),
            Err(Errno::ENXIO | Errno::EINVAL | Errno::EOPNOTSUPP) => end,
            Err(e) => return Err(e.into()),
        };
        let mut off = data;
        while off < hole {
            crate::interrupt::check()?;
            let len = usize::try_from(hole - off)
                .unwrap_or(usize::MAX)
                .min(COPY_CHUNK_BYTES);
            let mut n = 0;
            if use_copy_file_range {
                let (mut off_in, mut off_out) = (off, off);
                match copy_file_range(src, Some(&mut off_in), dst, Some(&mut off_out), len) {
                    Ok(copied) => n = copied,
                    // Not possible between these files (other filesystem type, old kernel):
                    // plain reads and writes from here on.
                    Err(Errno::EXDEV | Errno::ENOSYS | Errno::EINVAL | Errno::EOPNOTSUPP) => {
                        use_copy_file_range = false;
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            if !use_copy_file_range {
                buf.resize(COPY_CHUNK_BYTES, 0);
                let offset = u64::try_from(off).map_err(io::Error::other)?;
                n = loop {
                    match src.read_at(&mut buf[..len], offset) {
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        r => break r?,
                    }
                };
                dst.write_all_at(&buf[..n], offset)?;
            }
            if n == 0 {
                out.short = true;
                break;
            }
            let n64 = u64::try_from(n).map_err(io::Error::other)?;
            off += i64::try_from(n).map_err(io::Error::other)?;
            out.bytes += n64;
            progress.inc(n64);
        }
        pos = off;
        if out.short {
            break;
        }
    }
    // A file that shrank while being read ends early without an error (SEEK_HOLE reports the
    // new end as a hole); padding the copy back to the recorded size would invent a hole that
    // was never there, so the copy ends where the data ended.
    let now = u64::try_from(fstat(src)?.st_size).unwrap_or(0);
    let copied_end = u64::try_from(pos).map_err(io::Error::other)?;
    out.short |= now < size;
    let len = if out.short {
        copied_end.max(now).min(size)
    } else {
        out.holes |= pos < end;
        size
    };
    dst.set_len(len)?;
    Ok(out)
}

/// Where metadata goes: an open file or directory, or a name in an open directory (symlinks
/// and special files, which cannot be opened for this).
enum Target<'a> {
    Fd(&'a File),
    At {
        dir: &'a File,
        name: &'a CStr,
        /// `/proc/self/fd/<dir>/<name>`, for the path-only xattr calls (never follows `name`).
        proc_path: &'a Path,
        symlink: bool,
    },
}

enum XattrSource<'a> {
    Fd(&'a File),
    Path(&'a Path),
}

/// Applies owner, xattrs, mode, capability and times, in the order the kernel requires
/// (chown clears setuid/setgid and `security.capability`; see the module docs). Returns the
/// number of xattrs copied; everything that could not be kept goes to `losses`.
fn apply_metadata(
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
    match openat(&dir, path, flags | OFlag::O_NOATIME, Mode::empty()) {
        Err(Errno::EPERM) => Ok(openat(&dir, path, flags, Mode::empty())?),
        r => Ok(r?),
    }
}

fn file_type(st: &FileStat) -> SFlag {
    SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits())
}

fn same_inode(a: &FileStat, b: &FileStat) -> bool {
    a.st_dev == b.st_dev && a.st_ino == b.st_ino
}

/// `/proc/self/fd/<dir>/<name>`: a path for the xattr calls that only exist path-based for
/// symlinks and special files; resolving it never follows `name` and has no `PATH_MAX` issue.
fn proc_path(dir: &File, name: &CStr) -> PathBuf {
    let mut path = OsString::from(format!("/proc/self/fd/{}/", dir.as_raw_fd()));
    path.push(OsStr::from_bytes(name.to_bytes()));
    PathBuf::from(path)
}

/// One directory being copied.
struct Frame {
    src: File,
    dst: File,
    /// The directory's stat, applied to `dst` once its entries exist.
    stat: FileStat,
    rel: PathBuf,
    /// Entries still to copy, in reverse order (popped from the end).
    names: Vec<CString>,
}

/// Where to link further names of an inode from.
enum LinkSource {
    /// Path relative to the destination root.
    Path(PathBuf),
    /// `O_PATH` descriptor of the first name (for deep paths).
    Fd(File),
}

struct Walker<'s, 'a> {
    shared: &'s Shared<'a>,
    opts: &'s CopyOptions,
    excludes: HashSet<PathBuf>,
    empty_dirs: HashSet<PathBuf>,
    queue: Option<mpsc::SyncSender<FileJob>>,
    root_dev: u64,
    dst_root: Option<File>,
    /// Inodes with more than one name: where the first copy is and how many names are left.
    links: HashMap<(u64, u64), (LinkSource, libc::nlink_t)>,
    report: CopyReport,
    buf: Vec<u8>,
}

impl<'s, 'a> Walker<'s, 'a> {
    fn new(
        shared: &'s Shared<'a>,
        opts: &'s CopyOptions,
        excludes: HashSet<PathBuf>,
        empty_dirs: HashSet<PathBuf>,
        queue: Option<mpsc::SyncSender<FileJob>>,
    ) -> Self {
        Self {
            shared,
            opts,
            excludes,
            empty_dirs,
            queue,
            root_dev: 0,
            dst_root: None,
            links: HashMap::new(),
            report: CopyReport::default(),
            buf: Vec::new(),
        }
    }

    fn src_path(&self, rel: &Path) -> PathBuf {
        self.shared.src_root.join(rel)
    }

    fn dst_path(&self, rel: &Path) -> PathBuf {
        self.shared.dst_root.join(rel)
    }

    fn read_err(&self, rel: &Path) -> impl FnOnce(Errno) -> CopyError {
        let path = self.src_path(rel);
        move |e| CopyError::ReadSource {
            path,
            source: e.into(),
        }
    }

    fn create_err(&self, rel: &Path) -> impl FnOnce(Errno) -> CopyError {
        let path = self.dst_path(rel);
        move |e| CopyError::Create {
            path,
            source: e.into(),
        }
    }

    fn lossy(&mut self, rel: &Path, losses: Vec<String>) {
        let path = self.src_path(rel);
        self.report
            .lossy
            .extend(losses.into_iter().map(|what| (path.clone(), what)));
    }

    fn run(&mut self, src: File, src_stat: FileStat, dst: File) -> Result<CopyReport, CopyError> {
        self.root_dev = src_stat.st_dev;
        self.dst_root = Some(File::from(
            nix::unistd::dup(&dst).map_err(self.create_err(Path::new("")))?,
        ));
        let names = self.list_dir(&src, Path::new(""))?;
        let mut stack = vec![Frame {
            src,
            dst,
            stat: src_stat,
            rel: PathBuf::new(),
            names,
        }];
        self.report.dirs += 1;
        while let Some(frame) = stack.last_mut() {
            let Some(name) = frame.names.pop() else {
                if let Some(frame) = stack.pop() {
                    self.finish_dir(&frame);
                }
                continue;
            };
            if self.shared.failed.load(Ordering::Relaxed) {
                break;
            }
            let rel = frame.rel.join(OsStr::from_bytes(name.to_bytes()));
            crate::interrupt::check().map_err(|source| CopyError::Interrupted {
                path: self.src_path(&rel),
                source,
            })?;
            if self.excludes.contains(&rel) {
                self.report.excluded.push(self.src_path(&rel));
                continue;
            }
            let st = fstatat(&frame.src, name.as_c_str(), AtFlags::AT_SYMLINK_NOFOLLOW);
            let st = match st {
                Ok(st) => st,
                // Deleted since the listing (live source): nothing to copy.
                Err(Errno::ENOENT) => continue,
                Err(e) => return Err(self.read_err(&rel)(e)),
            };
            let (src_dir, dst_dir) = (&frame.src, &frame.dst);
            if let Some(child) = self.copy_entry(src_dir, dst_dir, &name, &rel, &st)? {
                stack.push(child);
            }
        }
        self.queue = None;
        Ok(std::mem::take(&mut self.report))
    }

    fn list_dir(&self, dir: &File, rel: &Path) -> Result<Vec<CString>, CopyError> {
        let mut names: Vec<CString> = super::root::read_dir_entries(dir)
            .map_err(|source| CopyError::ReadSource {
                path: self.src_path(rel),
                source,
            })?
            .into_iter()
            .map(|(name, _)| name)
            .collect();
        // Reverse order, as entries are popped from the end: the walk goes in byte order of
        // names, which makes the choice of the first name of a hard-linked inode stable.
        names.sort_unstable_by(|a, b| b.cmp(a));
        Ok(names)
    }

    /// Copies one entry; a directory to descend into is returned as a new frame.
    fn copy_entry(
        &mut self,
        src_dir: &File,
        dst_dir: &File,
        name: &CStr,
        rel: &Path,
        st: &FileStat,
    ) -> Result<Option<Frame>, CopyError> {
        let kind = file_type(st);
        match kind {
            SFlag::S_IFDIR => self.copy_dir(src_dir, dst_dir, name, rel, st),
            SFlag::S_IFREG => {
                self.copy_regular(src_dir, dst_dir, name, rel, st)?;
                Ok(None)
            }
            SFlag::S_IFLNK => {
                let target = match readlinkat(src_dir, name) {
                    Ok(target) => target,
                    Err(Errno::ENOENT) => return Ok(None),
                    Err(e) => return Err(self.read_err(rel)(e)),
                };
                symlinkat(target.as_os_str(), dst_dir, name).map_err(self.create_err(rel))?;
                self.report.symlinks += 1;
                self.finish_special(src_dir, dst_dir, name, rel, st, true);
                Ok(None)
            }
            SFlag::S_IFCHR | SFlag::S_IFBLK | SFlag::S_IFIFO => {
                let created = mknodat(
                    dst_dir,
                    name,
                    kind,
                    Mode::from_bits_truncate(0o600),
                    st.st_rdev,
                );
                match created {
                    Ok(()) => {}
                    // Device nodes cannot be created here (e.g. no CAP_MKNOD in a container).
                    Err(e @ (Errno::EPERM | Errno::EOPNOTSUPP)) => {
                        self.lossy(rel, vec![format!("creating the special file: {e}")]);
                        return Ok(None);
                    }
                    Err(e) => return Err(self.create_err(rel)(e)),
                }
                if kind == SFlag::S_IFIFO {
                    self.report.fifos += 1;
                } else {
                    self.report.devices += 1;
                }
                self.finish_special(src_dir, dst_dir, name, rel, st, false);
                Ok(None)
            }
            _ => {
                // Sockets exist only while a process has them bound; a copy would be dead.
                tracing::debug!(path = %self.src_path(rel).display(), "skipping socket");
                self.report.sockets_skipped += 1;
                Ok(None)
            }
        }
    }

    fn finish_special(
        &mut self,
        src_dir: &File,
        dst_dir: &File,
        name: &CStr,
        rel: &Path,
        st: &FileStat,
        symlink: bool,
    ) {
        let src_proc = proc_path(src_dir, name);
        let dst_proc = proc_path(dst_dir, name);
        let mut losses = Vec::new();
        self.report.xattrs += apply_metadata(
            Target::At {
                dir: dst_dir,
                name,
                proc_path: &dst_proc,
                symlink,
            },
            XattrSource::Path(&src_proc),
            st,
            &mut losses,
        );
        self.lossy(rel, losses);
    }

    fn copy_dir(
        &mut self,
        src_dir: &File,
        dst_dir: &File,
        name: &CStr,
        rel: &Path,
        st: &FileStat,
    ) -> Result<Option<Frame>, CopyError> {
        let src = match open_dir(src_dir, name) {
            Ok(src) => src,
            Err(e) if errno(&e) == Errno::ENOENT => return Ok(None),
            Err(source) => {
                return Err(CopyError::ReadSource {
                    path: self.src_path(rel),
                    source,
                });
            }
        };
        let lstat = st;
        let st = fstat(&src).map_err(self.read_err(rel))?;
        if file_type(&st) != SFlag::S_IFDIR || !same_inode(&st, lstat) {
            // Replaced since the listing (live source); copying a different object under
            // this name would be wrong, and the new one may be outside the tree.
            self.report.changed.push(self.src_path(rel));
            return Ok(None);
        }
        match mkdirat(dst_dir, name, Mode::from_bits_truncate(0o700)) {
            Ok(()) => {}
            // An existing directory (`lost+found` of a fresh filesystem) is merged into; the
            // open below refuses anything else, symlinks included.
            Err(Errno::EEXIST) => {}
            Err(e) => return Err(self.create_err(rel)(e)),
        }
        let dst = open_dir(dst_dir, name).map_err(|source| CopyError::Create {
            path: self.dst_path(rel),
            source,
        })?;
        self.report.dirs += 1;
        let mount_point = self.opts.one_file_system && st.st_dev != self.root_dev;
        if mount_point {
            self.report.mount_points.push(self.src_path(rel));
        }
        let names = if mount_point || self.empty_dirs.contains(rel) {
            Vec::new()
        } else {
            self.list_dir(&src, rel)?
        };
        Ok(Some(Frame {
            src,
            dst,
            stat: st,
            rel: rel.to_owned(),
            names,
        }))
    }

    /// Applies a directory's metadata once all its entries exist.
    fn finish_dir(&mut self, frame: &Frame) {
        let mut losses = Vec::new();
        self.report.xattrs += apply_metadata(
            Target::Fd(&frame.dst),
            XattrSource::Fd(&frame.src),
            &frame.stat,
            &mut losses,
        );
        self.lossy(&frame.rel, losses);
    }

    fn copy_regular(
        &mut self,
        src_dir: &File,
        dst_dir: &File,
        name: &CStr,
        rel: &Path,
        st: &FileStat,
    ) -> Result<(), CopyError> {
        let key = (st.st_dev, st.st_ino);
        if st.st_nlink > 1 {
            if let Some((source, _)) = self.links.get(&key) {
                let linked = match source {
                    LinkSource::Path(path) => match &self.dst_root {
                        Some(root) => linkat(root, path, dst_dir, name, AtFlags::empty()),
                        None => Err(Errno::EBADF),
                    },
                    LinkSource::Fd(fd) => linkat(
                        AT_FDCWD,
                        &proc_path_fd(fd),
                        dst_dir,
                        name,
                        AtFlags::AT_SYMLINK_FOLLOW,
                    ),
                };
                match linked {
                    Ok(()) => {
                        self.report.hardlinks += 1;
                        if let Some((_, left)) = self.links.get_mut(&key) {
                            *left -= 1;
                            if *left == 0 {
                                self.links.remove(&key);
                            }
                        }
                        return Ok(());
                    }
                    Err(e @ (Errno::EPERM | Errno::EMLINK | Errno::EOPNOTSUPP)) => {
                        // Copy as a separate file below, which keeps the data but not the link.
                        self.lossy(
                            rel,
                            vec![format!(
                                "creating the hard link: {e} (copied as a separate file)"
                            )],
                        );
                    }
                    Err(e) => return Err(self.create_err(rel)(e)),
                }
            }
        }
        let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK;
        // O_NONBLOCK: should the name have become a fifo since the lstat, opening must not
        // hang; the fstat check below then skips it.
        let src = match open_noatime(src_dir, name, flags) {
            Ok(fd) => File::from(fd),
            Err(e) if errno(&e) == Errno::ENOENT => return Ok(()),
            Err(source) => {
                return Err(CopyError::ReadSource {
                    path: self.src_path(rel),
                    source,
                });
            }
        };
        let stat = fstat(&src).map_err(self.read_err(rel))?;
        if file_type(&stat) != SFlag::S_IFREG || !same_inode(&stat, st) {
            self.report.changed.push(self.src_path(rel));
            return Ok(());
        }
        let dst = openat(
            dst_dir,
            name,
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o600),
        )
        .map(File::from)
        .map_err(self.create_err(rel))?;
        self.report.files += 1;
        if stat.st_nlink > 1 && !self.links.contains_key(&key) {
            let source = if rel.as_os_str().len() <= LINK_BY_PATH_MAX_BYTES {
                LinkSource::Path(rel.to_owned())
            } else {
                let fd = openat(
                    dst_dir,
                    name,
                    OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                    Mode::empty(),
                )
                .map_err(self.create_err(rel))?;
                LinkSource::Fd(File::from(fd))
            };
            self.links.insert(key, (source, stat.st_nlink - 1));
        }
        let job = FileJob {
            src,
            dst,
            stat,
            rel: rel.to_owned(),
        };
        match &self.queue {
            Some(queue) => {
                // A send fails only when every worker is gone, i.e. they panicked; the join
                // reports that.
                if queue.send(job).is_err() {
                    self.shared.failed.store(true, Ordering::Relaxed);
                }
            }
            None => {
                let mut buf = std::mem::take(&mut self.buf);
                let result = copy_file(self.shared, job, &mut buf);
                self.buf = buf;
                result?;
            }
        }
        Ok(())
    }
}

fn proc_path_fd(fd: &File) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

#[cfg(test)]
mod tests {
    //! These tests need root (mount, mknod, chown, trusted.* xattrs), which CI has; they fail
    //! loudly rather than skip without it. Source and destination live on a fresh ext4 loop
    //! mount, since /tmp may be tmpfs or overlay without full xattr/ACL support.
    //!
    //! Documented differences between source and copy: ctime and inode numbers; directory
    //! sizes and block counts (they depend on the directory's history). Atimes, directories'
    //! included, are compared; the ext4 is mounted `noatime` so that the checking walker's own
    //! reads cannot move them (the copy itself reads with `O_NOATIME`).

    use super::*;
    use std::collections::BTreeMap;
    use std::os::unix::fs::MetadataExt;
    use std::process::Command;

    fn require_root() {
        assert!(
            nix::unistd::geteuid().is_root(),
            "the image::copy tests need root (mount, mknod, chown, trusted xattrs); CI runs as root"
        );
    }

    fn run(cmd: &str, args: &[&str]) {
        let status = Command::new(cmd)
            .args(args)
            .status()
            .unwrap_or_else(|e| panic!("running {cmd}: {e}"));
        assert!(status.success(), "{cmd} {args:?} failed: {status}");
    }

    /// A mounted filesystem, unmounted on drop.
    struct MountGuard {
        path: PathBuf,
    }

    impl Drop for MountGuard {
        fn drop(&mut self) {
            let ok = Command::new("umount")
                .arg(&self.path)
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                let _ = Command::new("umount").arg("-l").arg(&self.path).status();
            }
        }
    }

    /// A small ext4 filesystem on a loop device (user xattrs and ACLs are ext4 defaults).
    fn ext4(dir: &Path) -> MountGuard {
        let image = dir.join("fs.img");
        File::create(&image)
            .and_then(|f| f.set_len(256 << 20))
            .expect("image file");
        run(
            "mkfs.ext4",
            &[
                "-q",
                "-F",
                "-E",
                "nodiscard",
                image.to_str().expect("utf-8"),
            ],
        );
        let mnt = dir.join("mnt");
        std::fs::create_dir(&mnt).expect("mount point");
        run(
            "mount",
            &[
                "-o",
                // noatime: the checking walker's own reads must not move atimes (relatime
                // would); explicit utimensat still sets them, which is what is compared.
                "loop,noatime",
                image.to_str().expect("utf-8"),
                mnt.to_str().expect("utf-8"),
            ],
        );
        MountGuard { path: mnt }
    }

    fn mount_fs(fstype: &str, options: &str, at: &Path) -> MountGuard {
        run(
            "mount",
            &[
                "-t",
                fstype,
                "-o",
                options,
                fstype,
                at.to_str().expect("utf-8"),
            ],
        );
        MountGuard {
            path: at.to_owned(),
        }
    }

    fn b(bytes: &[u8]) -> &Path {
        Path::new(OsStr::from_bytes(bytes))
    }

    fn set_times(path: &Path, atime: (i64, i64), mtime: (i64, i64)) {
        utimensat(
            AT_FDCWD,
            path,
            &TimeSpec::new(atime.0, atime.1),
            &TimeSpec::new(mtime.0, mtime.1),
            UtimensatFlags::NoFollowSymlink,
        )
        .expect("utimensat");
    }

    fn lchown(path: &Path, uid: u32, gid: u32) {
        std::os::unix::fs::lchown(path, Some(uid), Some(gid)).expect("lchown");
    }

    fn chmod(path: &Path, mode: u32) {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
    }

    /// Raw POSIX ACL xattr value (the kernel's `posix_acl_xattr` layout: version 2, then
    /// sorted (tag u16, perm u16, id u32) entries).
    fn acl(entries: &[(u16, u16, u32)]) -> Vec<u8> {
        let mut v = 2u32.to_le_bytes().to_vec();
        for &(tag, perm, id) in entries {
            v.extend(tag.to_le_bytes());
            v.extend(perm.to_le_bytes());
            v.extend(id.to_le_bytes());
        }
        v
    }

    const NO_ID: u32 = u32::MAX;

    fn sample_acl() -> Vec<u8> {
        // user::rwx user:12345:r-x group::r-x mask::rwx other::r-x
        acl(&[
            (0x01, 7, NO_ID),
            (0x02, 5, 12345),
            (0x04, 5, NO_ID),
            (0x10, 7, NO_ID),
            (0x20, 5, NO_ID),
        ])
    }

    /// VFS_CAP_REVISION_2 value granting cap_net_raw (bit 13), permitted + effective.
    fn cap_net_raw() -> Vec<u8> {
        let mut v = 0x0200_0001u32.to_le_bytes().to_vec();
        for word in [1u32 << 13, 0, 0, 0] {
            v.extend(word.to_le_bytes());
        }
        v
    }

    const DEEP_LEVELS: usize = 300;
    const DEEP_NAME: &str = "a-rather-long-directory-name-for-depth";
    const GIB: u64 = 1 << 30;
    const ISLANDS: [u64; 3] = [0, 512 << 20, (1 << 30) - 4096];

    /// Builds the source tree with every kind of entry and attribute.
    fn build_source(src: &Path) -> MountGuard {
        std::fs::create_dir(src).expect("src");
        xattr::set(src, "user.root", b"root of the tree").expect("xattr");
        chmod(src, 0o751);

        let plain = src.join(".dotfile");
        std::fs::write(&plain, b"hello dot file").expect("write");
        xattr::set(&plain, "user.comment", b"u").expect("xattr");
        xattr::set(&plain, "trusted.overlay", b"\x00\xfft").expect("xattr");
        xattr::set(&plain, "security.selinux", b"system_u:object_r:etc_t:s0\0").expect("xattr");
        set_times(
            &plain,
            (1_111_111_111, 111_111_111),
            (1_234_567_890, 123_456_789),
        );

        std::fs::create_dir(src.join("bin")).expect("mkdir");
        let ping = src.join("bin/ping");
        std::fs::write(&ping, vec![0x7f; 5000]).expect("write");
        lchown(&ping, 0, 12);
        chmod(&ping, 0o710);
        xattr::set(&ping, CAPABILITY_XATTR, &cap_net_raw()).expect("capability");
        let suid = src.join("bin/su");
        std::fs::write(&suid, b"#!suid").expect("write");
        chmod(&suid, 0o4755);
        let sgid = src.join("bin/wall");
        std::fs::write(&sgid, b"#!sgid").expect("write");
        lchown(&sgid, 0, 5);
        chmod(&sgid, 0o2755);

        let acl_dir = src.join("shared");
        std::fs::create_dir(&acl_dir).expect("mkdir");
        xattr::set(&acl_dir, "system.posix_acl_access", &sample_acl()).expect("acl");
        xattr::set(&acl_dir, "system.posix_acl_default", &sample_acl()).expect("acl");
        // Created after the default ACL: inherits it, as on a real system.
        std::fs::write(acl_dir.join("inherited"), b"acl").expect("write");
        let sticky = src.join("tmp");
        std::fs::create_dir(&sticky).expect("mkdir");
        chmod(&sticky, 0o1777);
        let setgid_dir = src.join("srv");
        std::fs::create_dir(&setgid_dir).expect("mkdir");
        lchown(&setgid_dir, 12345, 54321);
        chmod(&setgid_dir, 0o2770);

        // Hard links across directories, one of them with a non-UTF-8 name.
        for d in ["links1", "links2"] {
            std::fs::create_dir(src.join(d)).expect("mkdir");
        }
        let first = src.join("links1/first");
        std::fs::write(&first, b"one inode, three names").expect("write");
        lchown(&first, 12345, 54321);
        xattr::set(&first, "user.linked", b"yes").expect("xattr");
        std::fs::hard_link(&first, src.join("links2/second")).expect("link");
        std::fs::hard_link(&first, src.join(b(b"links2/th\xefrd"))).expect("link");

        // 1 GiB sparse file with three 4 KiB islands.
        let sparse = File::create(src.join("sparse.img")).expect("create");
        sparse.set_len(GIB).expect("set_len");
        for (i, &off) in ISLANDS.iter().enumerate() {
            let fill = u8::try_from(i + 1).expect("small");
            sparse.write_all_at(&[fill; 4096], off).expect("island");
        }
        drop(sparse);

        std::fs::create_dir(src.join("dev")).expect("mkdir");
        let dev = |name: &str, kind: SFlag, major: u64, minor: u64| {
            let path = src.join("dev").join(name);
            nix::sys::stat::mknod(
                &path,
                kind,
                Mode::from_bits_truncate(0o620),
                nix::sys::stat::makedev(major, minor),
            )
            .expect("mknod");
            path
        };
        let null = dev("null", SFlag::S_IFCHR, 1, 3);
        lchown(&null, 0, 5);
        xattr::set(&null, "trusted.node", b"dev").expect("xattr on device");
        dev("loop0", SFlag::S_IFBLK, 7, 0);
        let fifo = dev("initctl", SFlag::S_IFIFO, 0, 0);
        chmod(&fifo, 0o600);
        let socket = src.join("dev/log");
        drop(std::os::unix::net::UnixListener::bind(&socket).expect("socket"));

        // Non-UTF-8 names and symlink targets, owners that exist nowhere.
        let latin1 = src.join(b(b"caf\xe9"));
        std::fs::create_dir(&latin1).expect("mkdir");
        std::fs::write(latin1.join(b(b"men\xfc")), b"latin-1").expect("write");
        let link = src.join("link");
        std::os::unix::fs::symlink(b(b"tar\xffget/../../etc"), &link).expect("symlink");
        lchown(&link, 12345, 54321);
        xattr::set(&link, "trusted.on_symlink", b"l").expect("xattr on symlink");
        set_times(&link, (1_000_000_000, 1), (1_000_000_001, 999_999_999));
        std::os::unix::fs::symlink("/etc/passwd", src.join("abs-link")).expect("symlink");

        // 300 levels, about 12 KB of path: beyond PATH_MAX, so built with *at calls.
        let mut dir = open_dir(AT_FDCWD, src).expect("open src");
        for level in 0..DEEP_LEVELS {
            let name = format!("{DEEP_NAME}-{level:03}");
            mkdirat(&dir, name.as_str(), Mode::from_bits_truncate(0o755)).expect("mkdirat");
            dir = open_dir(&dir, name.as_str()).expect("open deep");
        }
        let bottom = openat(
            &dir,
            "bottom",
            OFlag::O_WRONLY | OFlag::O_CREAT,
            Mode::from_bits_truncate(0o640),
        )
        .map(File::from)
        .expect("bottom");
        bottom.write_all_at(b"deep", 0).expect("write");
        bottom.set_xattr("user.deep", b"d").expect("xattr");
        let bottom_link_dir = dir;
        symlinkat("bottom", &bottom_link_dir, "bottom-link").expect("symlinkat");

        // A nested mount point: becomes an empty directory with the mount root's attributes.
        let mnt = src.join("run");
        std::fs::create_dir(&mnt).expect("mkdir");
        let guard = mount_fs("tmpfs", "mode=0750,uid=12345,gid=54321,size=1m", &mnt);
        std::fs::write(mnt.join("pid"), b"42").expect("write into tmpfs");
        guard
    }

    #[derive(Debug, PartialEq, Eq)]
    struct Entry {
        mode: u32,
        uid: u32,
        gid: u32,
        rdev: u64,
        size: Option<u64>,
        mtime: (i64, i64),
        atime: (i64, i64),
        nlink: Option<u64>,
        xattrs: BTreeMap<OsString, Vec<u8>>,
        link: Option<OsString>,
        crc: Option<u32>,
        /// Only for the sparse file: allocated bytes must stay small.
        blocks: Option<u64>,
    }

    struct Tree {
        entries: BTreeMap<PathBuf, Entry>,
        /// Names of each multiply-linked inode, as sorted groups.
        link_groups: Vec<Vec<PathBuf>>,
    }

    /// An independent walker: std metadata through `/proc/self/fd/<dir>/<name>` (no PATH_MAX
    /// limit), path-based xattr calls, recursion, and no knowledge of the copy code.
    fn walk(root: &Path) -> Tree {
        let mut entries = BTreeMap::new();
        let mut inodes: BTreeMap<u64, Vec<PathBuf>> = BTreeMap::new();
        let root_md = std::fs::symlink_metadata(root).expect("lstat root");
        let root_dev = root_md.dev();
        entries.insert(PathBuf::new(), entry(root, &root_md));
        let root_dir = File::open(root).expect("open root");
        walk_dir(
            &root_dir,
            Path::new(""),
            root_dev,
            &mut entries,
            &mut inodes,
        );
        let mut link_groups: Vec<Vec<PathBuf>> =
            inodes.into_values().filter(|v| v.len() > 1).collect();
        for group in &mut link_groups {
            group.sort();
        }
        link_groups.sort();
        Tree {
            entries,
            link_groups,
        }
    }

    fn walk_dir(
        dir: &File,
        rel: &Path,
        root_dev: u64,
        entries: &mut BTreeMap<PathBuf, Entry>,
        inodes: &mut BTreeMap<u64, Vec<PathBuf>>,
    ) {
        let base = PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd()));
        let mut names: Vec<OsString> = std::fs::read_dir(&base)
            .expect("read_dir")
            .map(|e| e.expect("dirent").file_name())
            .collect();
        names.sort();
        let mut subdirs = Vec::new();
        for name in names {
            let path = base.join(&name);
            let md = std::fs::symlink_metadata(&path).expect("lstat");
            let child = rel.join(&name);
            if md.is_file() && md.nlink() > 1 {
                inodes.entry(md.ino()).or_default().push(child.clone());
            }
            entries.insert(child.clone(), entry(&path, &md));
            // Do not descend into other filesystems: the copy must leave them empty.
            if md.is_dir() && md.dev() == root_dev {
                subdirs.push((name, child));
            }
        }
        for (name, child) in subdirs {
            let sub = File::open(base.join(&name)).expect("open dir");
            walk_dir(&sub, &child, root_dev, entries, inodes);
        }
    }

    fn entry(path: &Path, md: &std::fs::Metadata) -> Entry {
        let xattrs = xattr::list(path)
            .expect("listxattr")
            .map(|n| {
                let v = xattr::get(path, &n).expect("getxattr").expect("present");
                (n, v)
            })
            .collect();
        let is_file = md.is_file();
        let crc = is_file.then(|| {
            let f = File::open(path).expect("open file");
            let mut hasher = crc32fast::Hasher::new();
            let mut buf = vec![0; 4 << 20];
            let mut off = 0;
            loop {
                let n = f.read_at(&mut buf, off).expect("read");
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
                off += n as u64;
            }
            hasher.finalize()
        });
        Entry {
            mode: md.mode(),
            uid: md.uid(),
            gid: md.gid(),
            rdev: md.rdev(),
            size: (!md.is_dir()).then(|| md.size()),
            mtime: (md.mtime(), md.mtime_nsec()),
            atime: (md.atime(), md.atime_nsec()),
            nlink: (!md.is_dir()).then(|| md.nlink()),
            xattrs,
            link: md
                .file_type()
                .is_symlink()
                .then(|| std::fs::read_link(path).expect("readlink").into_os_string()),
            crc,
            blocks: (is_file && md.size() >= GIB).then(|| md.blocks()),
        }
    }

    /// Compares two walks, printing only the differing entries.
    fn assert_same(want: &BTreeMap<PathBuf, Entry>, got: &BTreeMap<PathBuf, Entry>, what: &str) {
        let mut diffs = Vec::new();
        for (path, w) in want {
            match got.get(path) {
                Some(g) if g == w => {}
                g => diffs.push(format!("{}:\n  want {w:?}\n  got  {g:?}", path.display())),
            }
        }
        for path in got.keys().filter(|p| !want.contains_key(*p)) {
            diffs.push(format!("{}: unexpected", path.display()));
        }
        assert!(diffs.is_empty(), "{what} differs:\n{}", diffs.join("\n"));
    }

    #[test]
    #[ignore = "needs root: loop devices, mounts, namespaces (scripts/test.sh runs it as root)"]
    fn copies_every_entry_and_attribute_faithfully() {
        require_root();
        let tmp = tempfile::tempdir().expect("tempdir");
        let fs = ext4(tmp.path());
        let src = fs.path.join("src");
        let dst = fs.path.join("dst");
        let run_mount = build_source(&src);
        std::fs::create_dir(&dst).expect("dst");
        // A default ACL on the destination root must not leak into the copy.
        xattr::set(&dst, "system.posix_acl_default", &sample_acl()).expect("acl");

        let before = walk(&src);
        let opts = CopyOptions {
            threads: 2,
            ..CopyOptions::default()
        };
        let report = copy_tree(&src, &dst, &opts, &crate::progress::NoProgress).expect("copy");
        let after_src = walk(&src);
        let copy = walk(&dst);
        drop(run_mount);

        assert_same(&before.entries, &after_src.entries, "source after the copy");
        let mut expected = before.entries;
        // The mount point is copied as an empty directory with the mount root's attributes
        // (the walker does not descend into it either).
        assert!(expected.contains_key(Path::new("run")));
        assert!(!copy.entries.contains_key(Path::new("run/pid")));
        // Sockets are not copied; everything else is, identically.
        assert!(expected.remove(Path::new("dev/log")).is_some());
        assert_same(&expected, &copy.entries, "copy");
        assert_eq!(copy.link_groups, before.link_groups);
        assert_eq!(copy.link_groups.len(), 1);
        assert_eq!(copy.link_groups[0].len(), 3);

        let sparse = &copy.entries[Path::new("sparse.img")];
        assert!(
            sparse.blocks.is_some_and(|blocks| blocks * 512 < (1 << 20)),
            "sparse file allocated {:?} blocks",
            sparse.blocks
        );
        let deep: PathBuf = (0..DEEP_LEVELS)
            .map(|l| format!("{DEEP_NAME}-{l:03}"))
            .chain(["bottom".to_owned()])
            .collect();
        assert!(deep.as_os_str().len() > 4096);
        assert_eq!(copy.entries[&deep].crc, Some(crc32fast::hash(b"deep")));

        assert_eq!(report.files, 9, "{report:#?}");
        assert_eq!(report.hardlinks, 2);
        assert_eq!(report.symlinks, 3);
        assert_eq!(report.devices, 2);
        assert_eq!(report.fifos, 1);
        assert_eq!(report.sockets_skipped, 1);
        assert_eq!(report.dirs, 10 + DEEP_LEVELS as u64);
        assert_eq!(report.sparse_files, 1);
        assert_eq!(report.bytes, 3 * 4096 + 5000 + 2 * 6 + 14 + 3 + 22 + 7 + 4);
        assert_eq!(report.mount_points, vec![src.join("run")]);
        assert!(report.lossy.is_empty() && report.changed.is_empty());
        assert_eq!(report.xattrs, 12, "{report:#?}");
    }

    #[test]
    fn copies_what_is_there_when_a_file_changed_size() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let path = tmp.path().join("live");
        let data: Vec<u8> = (0..10_000u32).map(|i| i.to_le_bytes()[0] ^ 0x5a).collect();
        std::fs::write(&path, &data).expect("write");
        let src = File::open(&path).expect("open");
        let mut buf = Vec::new();
        let progress = crate::progress::NoProgress;

        // Recorded as 20000 bytes, now only 10000: the copy is the 10000 that are there.
        let shrunk = tmp.path().join("shrunk");
        let dst = File::create(&shrunk).expect("create");
        let out = copy_data(&src, &dst, 20_000, &mut buf, &progress).expect("copy");
        assert!(out.short && !out.holes);
        assert_eq!(out.bytes, 10_000);
        assert_eq!(std::fs::read(&shrunk).expect("read"), data);

        // Recorded as 4000 bytes, now 10000: the recorded length is copied.
        let grown = tmp.path().join("grown");
        let dst = File::create(&grown).expect("create");
        let out = copy_data(&src, &dst, 4_000, &mut buf, &progress).expect("copy");
        assert!(!out.short && !out.holes);
        assert_eq!(out.bytes, 4_000);
        assert_eq!(std::fs::read(&grown).expect("read"), &data[..4_000]);
    }

    #[test]
    #[ignore = "needs root: loop devices, mounts, namespaces (scripts/test.sh runs it as root)"]
    fn refuses_a_destination_that_drops_attributes_unless_lossy() {
        require_root();
        let tmp = tempfile::tempdir().expect("tempdir");
        let fs = ext4(tmp.path());
        let src = fs.path.join("src");
        std::fs::create_dir(&src).expect("src");
        let plain = src.join("plain");
        std::fs::write(&plain, b"no attributes").expect("write");
        let user = src.join("user");
        std::fs::write(&user, b"u").expect("write");
        xattr::set(&user, "user.x", b"1").expect("xattr");
        let ping = src.join("ping");
        std::fs::write(&ping, b"p").expect("write");
        xattr::set(&ping, CAPABILITY_XATTR, &cap_net_raw()).expect("capability");
        let acl_dir = src.join("acl");
        std::fs::create_dir(&acl_dir).expect("mkdir");
        xattr::set(&acl_dir, "system.posix_acl_access", &sample_acl()).expect("acl");
        let link = src.join("link");
        std::os::unix::fs::symlink("plain", &link).expect("symlink");
        xattr::set(&link, "trusted.t", b"t").expect("xattr");
        let lossy_paths = vec![acl_dir.clone(), link.clone(), ping.clone(), user.clone()];

        // ramfs keeps no xattrs at all (EOPNOTSUPP for every namespace).
        let dst_mnt = tmp.path().join("ramfs");
        std::fs::create_dir(&dst_mnt).expect("mkdir");
        let _ramfs = mount_fs("ramfs", "mode=0755", &dst_mnt);
        let strict = dst_mnt.join("strict");
        std::fs::create_dir(&strict).expect("mkdir");
        let opts = CopyOptions::default();
        let err = copy_tree(&src, &strict, &opts, &crate::progress::NoProgress)
            .expect_err("a lossy copy must fail");
        let CopyError::NotFaithful { entries } = &err else {
            panic!("wrong error: {err}");
        };
        let mut paths: Vec<_> = entries.iter().map(|(p, _)| p.clone()).collect();
        paths.dedup();
        assert_eq!(paths, lossy_paths);
        let message = err.to_string();
        for path in &lossy_paths {
            assert!(message.contains(&path.display().to_string()), "{message}");
        }
        assert!(message.contains("security.capability"), "{message}");

        let lossy = dst_mnt.join("lossy");
        std::fs::create_dir(&lossy).expect("mkdir");
        let opts = CopyOptions {
            allow_lossy: true,
            threads: 1,
            ..CopyOptions::default()
        };
        let report =
            copy_tree(&src, &lossy, &opts, &crate::progress::NoProgress).expect("lossy copy");
        let mut paths: Vec<_> = report.lossy.iter().map(|(p, _)| p.clone()).collect();
        paths.dedup();
        assert_eq!(paths, lossy_paths);
        assert_eq!(std::fs::read(lossy.join("user")).expect("read"), b"u");
        assert_eq!(report.files, 3);
        assert_eq!(report.xattrs, 0);
    }

    #[test]
    #[ignore = "needs root: loop devices, mounts, namespaces (scripts/test.sh runs it as root)"]
    fn excludes_and_empties_directories_and_checks_their_anchoring() {
        require_root();
        let tmp = tempfile::tempdir().expect("tempdir");
        let src = tmp.path().join("src");
        for dir in ["proc/1", "var/cache/apt", "var/lib"] {
            std::fs::create_dir_all(src.join(dir)).expect("mkdir");
        }
        chmod(&src.join("proc"), 0o555);
        std::fs::write(src.join("proc/1/status"), b"x").expect("write");
        std::fs::write(src.join("var/cache/apt/pkgcache.bin"), b"x").expect("write");
        std::fs::write(src.join("var/lib/keep"), b"keep").expect("write");
        std::fs::write(src.join("secret.pem"), b"key").expect("write");
        let dst = tmp.path().join("dst");
        std::fs::create_dir(&dst).expect("mkdir");
        let opts = CopyOptions {
            exclude: vec![src.join("var/cache"), src.join("secret.pem")],
            empty_dirs: vec![src.join("proc")],
            threads: 1,
            ..CopyOptions::default()
        };
        let report = copy_tree(&src, &dst, &opts, &crate::progress::NoProgress).expect("copy");
        assert_eq!(
            report.excluded,
            vec![src.join("secret.pem"), src.join("var/cache")]
        );
        let proc = std::fs::symlink_metadata(dst.join("proc")).expect("proc kept");
        assert_eq!(proc.mode() & 0o7777, 0o555);
        assert_eq!(std::fs::read_dir(dst.join("proc")).expect("ls").count(), 0);
        assert!(!dst.join("var/cache").exists());
        assert!(!dst.join("secret.pem").exists());
        assert_eq!(
            std::fs::read(dst.join("var/lib/keep")).expect("read"),
            b"keep"
        );
        assert_eq!(report.files, 1);

        // An exclusion anchored elsewhere (the classic tool's --volume bug) is an error.
        let opts = CopyOptions {
            exclude: vec![PathBuf::from("/proc")],
            ..CopyOptions::default()
        };
        let err = copy_tree(&src, &dst, &opts, &crate::progress::NoProgress)
            .expect_err("exclusion outside the source");
        assert!(matches!(err, CopyError::OutsideSource { .. }), "{err}");
    }
}
