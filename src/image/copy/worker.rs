//! The data of regular files, copied on the worker threads while the walk goes on
//! ([`worker`]): the data regions with their holes (SEEK_DATA / SEEK_HOLE, `copy_file_range`
//! or plain reads and writes), then the file's metadata; what a file that changed while being
//! read loses is recorded, not refused.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt as _;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Mutex, mpsc};

use nix::errno::Errno;
use nix::fcntl::copy_file_range;
use nix::sys::stat::{FileStat, fstat};
use nix::unistd::{Whence, lseek};

use super::attrs::{Target, XattrSource, apply_metadata};
use super::{CopyError, Shared};
use crate::progress::Progress;

/// Bytes handed to one `copy_file_range` call (or one read/write in the fallback). Large enough
/// that syscall overhead is negligible, small enough for smooth progress and prompt reaction to
/// a signal; the fallback buffer of this size exists once per worker.
const COPY_CHUNK_BYTES: usize = 8 << 20;

/// One regular file whose destination has been created; data and metadata still to copy.
pub(super) struct FileJob {
    pub(super) src: File,
    pub(super) dst: File,
    pub(super) stat: FileStat,
    pub(super) rel: PathBuf,
}

pub(super) fn worker(shared: &Shared<'_>, rx: &Mutex<mpsc::Receiver<FileJob>>) {
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
pub(super) fn copy_file(
    shared: &Shared<'_>,
    job: FileJob,
    buf: &mut Vec<u8>,
) -> Result<(), CopyError> {
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

pub(super) struct DataOutcome {
    pub(super) bytes: u64,
    pub(super) holes: bool,
    /// The file ended before its recorded size (it shrank while being copied).
    pub(super) short: bool,
}

/// Copies the data regions of `src` (SEEK_DATA/SEEK_HOLE) into `dst` at the same offsets and
/// sets the final length, so holes stay holes. Zero-filled data regions are copied as data:
/// the layout is kept as it is, not re-sparsified.
pub(super) fn copy_data(
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
