//! The walk over the source tree on the calling thread ([`Walker`]): an explicit stack of open
//! directories, every entry checked against what its directory listing said and created in the
//! destination without following a symlink; directories, symlinks, devices and fifos are made
//! here, regular files handed to the workers, hard links linked to their first copy.

use std::collections::{HashMap, HashSet};
use std::ffi::{CStr, CString, OsStr, OsString};
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::mpsc;

use nix::errno::Errno;
use nix::fcntl::{AT_FDCWD, AtFlags, OFlag, openat, readlinkat};
use nix::sys::stat::{FileStat, Mode, SFlag, fstat, fstatat, mkdirat, mknodat};
use nix::unistd::{linkat, symlinkat};

use super::attrs::{Target, XattrSource, apply_metadata};
use super::worker::{FileJob, copy_file};
use super::{CopyError, CopyOptions, CopyReport, Shared, errno, open_dir, open_noatime};

/// Hard-link sources whose destination path is at most this long are remembered by path
/// (relative to the destination root); deeper ones by an `O_PATH` descriptor, because
/// `linkat` cannot take a path longer than `PATH_MAX` (4096).
const LINK_BY_PATH_MAX_BYTES: usize = 3072;

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

pub(super) struct Walker<'s, 'a> {
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
    pub(super) fn new(
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

    pub(super) fn run(
        &mut self,
        src: File,
        src_stat: FileStat,
        dst: File,
    ) -> Result<CopyReport, CopyError> {
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
        let mut names: Vec<CString> = crate::image::root::read_dir_entries(dir)
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
