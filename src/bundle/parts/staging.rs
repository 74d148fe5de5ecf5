//! The staging directory of a local bundle (§8.3 staged mode): parts written under temporary
//! names, made durable on a background thread as each is finished, renamed to their final names
//! and the manifest committed last; and the clean-up of what killed runs left behind.
//!
//! Bare § numbers in this module refer to docs/format.md.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, SyncSender};
use std::thread::{self, JoinHandle};

use super::{PartInfo, PartSink, part_name, part_width};

/// Finished parts waiting for the background fsync before the sink blocks: with 10 MiB parts,
/// 40 MiB of write-back. More only piles up when the disk is slower than bundling, and each
/// holds a file descriptor.
const SYNC_QUEUE_PARTS: usize = 4;

/// Writes parts into a private staging directory under temporary names, as their bytes come
/// (a streaming sink); see [`StagingDir`] for how they get their final names. Each finished
/// part is handed to a background thread that makes it durable (fsync) while the next parts are
/// made, so [`StagingDir::commit`], which needs every part durable before the manifest is
/// committed, finds them done instead of waiting for each in turn with the CPUs idle. A failed
/// fsync is reported by the next part's end, or by the commit.
#[derive(Debug)]
pub struct StagingSink {
    dir: PathBuf,
    /// The part being written.
    current: Option<(u64, File)>,
    /// `None` until the first part ends, and if the thread could not be started (the commit
    /// then makes every part durable itself).
    syncer: Option<Syncer>,
}

impl StagingSink {
    fn part_path(&self, index: u64) -> PathBuf {
        self.dir.join(format!("part.{index}"))
    }

    /// Hands the finished part `index` to the background fsync; fails with the error of an
    /// earlier part's fsync, if one failed.
    pub(super) fn sync_in_background(&mut self, index: u64, file: File) -> io::Result<()> {
        if self.syncer.is_none() {
            match Syncer::start() {
                Ok(syncer) => self.syncer = Some(syncer),
                Err(e) => {
                    // Not fatal: the commit syncs every part itself, only later.
                    tracing::debug!("no background fsync of bundle parts: {e}");
                    return Ok(());
                }
            }
        }
        match &mut self.syncer {
            Some(syncer) => syncer.sync(index, file),
            None => Ok(()),
        }
    }

    /// Waits for the background fsyncs; returns the indices of the parts made durable, or the
    /// first fsync error.
    pub(super) fn finish_syncing(&mut self) -> io::Result<Vec<u64>> {
        match self.syncer.take() {
            Some(syncer) => syncer.finish(),
            None => Ok(Vec::new()),
        }
    }
}

impl PartSink for StagingSink {
    fn put_part(&mut self, info: &PartInfo, data: Vec<u8>) -> io::Result<()> {
        self.part_bytes(info.index, &data)?;
        self.end_part(info)
    }

    fn streams(&self) -> bool {
        true
    }

    fn part_bytes(&mut self, index: u64, data: &[u8]) -> io::Result<()> {
        let file = match &mut self.current {
            Some((i, file)) if *i == index => file,
            _ => {
                let file = create_private_file(&self.part_path(index))?;
                &mut self.current.insert((index, file)).1
            }
        };
        file.write_all(data)
    }

    fn end_part(&mut self, info: &PartInfo) -> io::Result<()> {
        let file = match self.current.take() {
            Some((index, file)) if index == info.index => file,
            Some((index, _)) => {
                return Err(io::Error::other(format!(
                    "part {} ended while part {index} was being written",
                    info.index
                )));
            }
            // An empty part has no bytes (the cipher never makes one; §6).
            None => create_private_file(&self.part_path(info.index))?,
        };
        // Durable before any rename: `StagingDir::commit` waits for this fsync, so a crash never
        // exposes a manifest whose parts are not on disk.
        self.sync_in_background(info.index, file)
    }
}

/// The background thread that fsyncs finished parts, in order, one at a time.
#[derive(Debug)]
pub(super) struct Syncer {
    /// `None` once closed.
    queue: Option<SyncSender<(u64, File)>>,
    /// Returns the parts made durable, or the first failure (the thread stops there).
    thread: Option<JoinHandle<Result<Vec<u64>, io::Error>>>,
    /// Makes the thread skip what is still queued: the run failed, nothing will be committed.
    abandon: Arc<AtomicBool>,
}

impl Syncer {
    pub(super) fn start() -> io::Result<Self> {
        let (queue, parts) = mpsc::sync_channel::<(u64, File)>(SYNC_QUEUE_PARTS);
        let abandon = Arc::new(AtomicBool::new(false));
        let skip = Arc::clone(&abandon);
        let thread = thread::Builder::new()
            .name("part-fsync".into())
            .spawn(move || {
                let mut synced = Vec::new();
                for (index, file) in parts {
                    if skip.load(Ordering::Relaxed) {
                        continue;
                    }
                    // Returning drops the queue's receiver: the next part's hand-over fails and
                    // collects this error.
                    file.sync_all()?;
                    synced.push(index);
                }
                Ok(synced)
            })?;
        Ok(Self {
            queue: Some(queue),
            thread: Some(thread),
            abandon,
        })
    }

    /// Queues part `index` (blocks while [`SYNC_QUEUE_PARTS`] are queued); fails with the
    /// thread's error if an fsync failed.
    pub(super) fn sync(&mut self, index: u64, file: File) -> io::Result<()> {
        let sent = match &self.queue {
            Some(queue) => queue.send((index, file)).is_ok(),
            None => false,
        };
        if sent {
            return Ok(());
        }
        // The thread has stopped: it failed (or panicked).
        Err(self.join().err().unwrap_or_else(|| {
            io::Error::other(format!(
                "part {index} could not be handed to the fsync thread"
            ))
        }))
    }

    /// Closes the queue and waits for the thread.
    fn join(&mut self) -> io::Result<Vec<u64>> {
        self.queue = None;
        match self.thread.take() {
            Some(thread) => thread
                .join()
                .unwrap_or_else(|_| Err(io::Error::other("the part fsync thread panicked"))),
            None => Err(io::Error::other(
                "the part fsync thread has already stopped",
            )),
        }
    }

    /// Waits for every queued part; returns the indices of those made durable.
    pub(super) fn finish(mut self) -> io::Result<Vec<u64>> {
        self.join()
    }
}

impl Drop for Syncer {
    fn drop(&mut self) {
        if self.thread.is_some() {
            // Dropped without `finish`: the run failed; wait only for the fsync under way.
            self.abandon.store(true, Ordering::Relaxed);
            let _ = self.join();
        }
    }
}

/// Creates `path` exclusively with mode 0600.
pub fn create_private_file(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
}

/// Removes what runs killed before they could clean up (SIGKILL, power loss) left in `dir`:
/// entries named `{prefix}{pid}{suffix}`, or `{prefix}{pid}-{n}{suffix}` when `numbered`, whose
/// process no longer exists. Best effort: what cannot be read or removed is left, with a debug
/// line. An entry of a live process (another run working there) is left alone, and a pid
/// reused by an unrelated process only defers the removal to a later run. Without `/proc`
/// nothing is removed, since no process could be told to be gone.
pub fn remove_stale(dir: &Path, prefix: &str, suffix: &str, numbered: bool) {
    if !Path::new("/proc/self").exists() {
        return;
    }
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| stale_pid(n, prefix, suffix, numbered))
        else {
            continue;
        };
        if pid == std::process::id() || Path::new("/proc").join(pid.to_string()).exists() {
            continue;
        }
        let path = entry.path();
        let removed = match entry.file_type() {
            Ok(t) if t.is_dir() => fs::remove_dir_all(&path),
            _ => fs::remove_file(&path),
        };
        match removed {
            Ok(()) => tracing::info!("removed {}, left by a run that was killed", path.display()),
            Err(e) => tracing::debug!("could not remove {}: {e}", path.display()),
        }
    }
}

/// The pid in `name` if it is exactly `{prefix}{pid}{suffix}` (`{prefix}{pid}-{n}{suffix}` when
/// `numbered`).
pub(super) fn stale_pid(name: &str, prefix: &str, suffix: &str, numbered: bool) -> Option<u32> {
    let middle = name.strip_prefix(prefix)?.strip_suffix(suffix)?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let pid = if numbered {
        let (pid, n) = middle.split_once('-')?;
        digits(n).then_some(pid)?
    } else {
        middle
    };
    if !digits(pid) {
        return None;
    }
    pid.parse().ok()
}

/// A 0700 directory inside the destination that holds parts while they are produced.
///
/// Part names depend on the part count, known only at the end (§8.3 staged mode), so parts are
/// written here as `part.<i>` and renamed into the destination by [`StagingDir::commit`], the
/// manifest last. If the run fails, dropping the guard removes the directory and everything in
/// it (all of which this run created), so nothing that looks like a complete bundle is left.
#[derive(Debug)]
pub struct StagingDir {
    dir: PathBuf,
    dest: PathBuf,
    committed: bool,
}

impl StagingDir {
    /// Creates `<dest>/.amibundle-<name>-<pid>-<n>` with mode 0700, first removing those of
    /// this name that killed runs left (see [`remove_stale`]).
    pub fn create(dest: &Path, name: &str) -> io::Result<Self> {
        remove_stale(dest, &format!(".amibundle-{name}-"), "", true);
        let pid = std::process::id();
        for n in 0..1000u32 {
            let dir = dest.join(format!(".amibundle-{name}-{pid}-{n}"));
            match fs::DirBuilder::new().mode(0o700).create(&dir) {
                Ok(()) => {
                    return Ok(Self {
                        dir,
                        dest: dest.to_path_buf(),
                        committed: false,
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
        Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "too many staging directories already exist",
        ))
    }

    /// The staging directory itself.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// A sink writing into this directory.
    pub fn sink(&self) -> StagingSink {
        StagingSink {
            dir: self.dir.clone(),
            current: None,
            syncer: None,
        }
    }

    /// Makes every part durable (waits for the fsyncs `sink`, this directory's sink, started as
    /// each part was finished, and fsyncs any part it did not), renames each to its final name
    /// `<dest>/<name>.part.<i>`, then writes the manifest through a temporary file, fsyncs it
    /// and renames it to `<dest>/<name>.manifest.xml` — the commit point — and removes the
    /// staging directory. Returns the manifest path. A failure before the commit point (a full
    /// filesystem: a directory may need a new block for the names) removes the parts already
    /// renamed, so no final-named part set is left without its manifest.
    pub fn commit(
        mut self,
        mut sink: StagingSink,
        name: &str,
        parts: &[PartInfo],
        manifest_xml: &[u8],
    ) -> io::Result<PathBuf> {
        if sink.dir != self.dir {
            return Err(io::Error::other(format!(
                "committing {} with the part sink of {}",
                self.dir.display(),
                sink.dir.display()
            )));
        }
        let width = part_width(parts.len() as u64);
        let mut renamed = Vec::with_capacity(parts.len());
        let manifest_path = self.dest.join(format!("{name}.manifest.xml"));
        // Parts are renamed into place only now; their bytes are made durable first so a crash
        // after the manifest rename never exposes a manifest whose parts are not on disk.
        let synced = sink.finish_syncing()?;
        for p in parts {
            // `synced` is in part order.
            if synced.binary_search(&p.index).is_err() {
                File::open(self.dir.join(format!("part.{}", p.index)))?.sync_all()?;
            }
        }
        let staged = (|| {
            for p in parts {
                let to = self.dest.join(part_name(name, p.index, width));
                fs::rename(self.dir.join(format!("part.{}", p.index)), &to)?;
                renamed.push(to);
            }
            let tmp = self.dir.join("manifest.xml");
            let mut f = create_private_file(&tmp)?;
            f.write_all(manifest_xml)?;
            f.sync_all()?;
            drop(f);
            fs::rename(&tmp, &manifest_path)
        })();
        if let Err(e) = staged {
            for path in &renamed {
                let _ = fs::remove_file(path);
            }
            return Err(e);
        }
        // Make the renames themselves durable.
        File::open(&self.dest)?.sync_all()?;
        fs::remove_dir(&self.dir)?;
        self.committed = true;
        Ok(manifest_path)
    }
}

impl Drop for StagingDir {
    fn drop(&mut self) {
        if !self.committed {
            // Best effort: everything in here was created by this run.
            if let Err(e) = fs::remove_dir_all(&self.dir) {
                tracing::warn!(
                    "could not remove staging directory {}: {e}",
                    self.dir.display()
                );
            }
        }
    }
}
