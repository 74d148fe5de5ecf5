//! Cutting the ciphertext into 10 MiB parts and reading them back (docs/format.md §8).
//!
//! [`PartWriter`] is the last adapter of the bundling pipeline: it accumulates exactly one part
//! in memory, hashes it and hands it to a [`PartSink`] (a staging directory, or the S3 uploader of
//! a streaming upload). Holding the part in memory costs [`PART_SIZE_BYTES`] and lets every sink
//! see the whole part and its digest at once (S3 needs both before the PUT).
//!
//! [`PartReader`] is the first adapter of the unbundling pipeline: it loads one part at a time,
//! checks its size and SHA-1 against the manifest **before** any byte of it is decrypted
//! (§12 step 2), and then serves its bytes.
//!
//! Bare § numbers in this module refer to docs/format.md.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use sha1::{Digest, Sha1};

/// Size of every part but the last (§8.1).
pub const PART_SIZE_BYTES: usize = 10 * 1024 * 1024;

/// Width of the zero-padded part index: the number of decimal digits of the part **count**
/// (§8.2), so 10 parts are `.part.00` … `.part.09`.
pub fn part_width(count: u64) -> usize {
    count.max(1).to_string().len()
}

/// `<name>.part.<index>` with the index left-padded with zeros to `width` (§8.2).
pub fn part_name(name: &str, index: u64, width: usize) -> String {
    format!("{name}.part.{index:0width$}")
}

/// A finished part as the writer saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartInfo {
    /// Index in the ciphertext stream, from 0.
    pub index: u64,
    /// Bytes in the part.
    pub size: u64,
    /// Lowercase hex SHA-1 of the part.
    pub sha1: String,
}

/// Where finished parts go.
pub trait PartSink {
    /// Takes part `info.index` with its bytes (owned, so a sink can hand them to another task
    /// without a copy). Parts arrive in index order.
    fn put_part(&mut self, info: &PartInfo, data: Vec<u8>) -> io::Result<()>;
}

/// Splits a byte stream into parts of [`PART_SIZE_BYTES`] and passes each to a sink.
pub struct PartWriter<S: PartSink> {
    sink: S,
    buf: Vec<u8>,
    parts: Vec<PartInfo>,
    total: u64,
}

impl<S: PartSink> PartWriter<S> {
    /// A writer feeding `sink`.
    pub fn new(sink: S) -> Self {
        Self {
            sink,
            buf: Vec::with_capacity(PART_SIZE_BYTES),
            parts: Vec::new(),
            total: 0,
        }
    }

    /// Bytes written so far.
    pub fn total(&self) -> u64 {
        self.total
    }

    fn emit(&mut self) -> io::Result<()> {
        let info = PartInfo {
            index: self.parts.len() as u64,
            size: self.buf.len() as u64,
            sha1: hex::encode(Sha1::digest(&self.buf)),
        };
        let data = std::mem::replace(&mut self.buf, Vec::with_capacity(PART_SIZE_BYTES));
        self.sink.put_part(&info, data)?;
        self.parts.push(info);
        Ok(())
    }

    /// Emits the last (possibly short) part and returns the sink and the list of parts.
    /// A stream of zero bytes yields zero parts; the cipher never produces one (§6).
    pub fn finish(mut self) -> io::Result<(S, Vec<PartInfo>)> {
        if !self.buf.is_empty() {
            self.emit()?;
        }
        Ok((self.sink, self.parts))
    }
}

impl<S: PartSink> Write for PartWriter<S> {
    fn write(&mut self, mut data: &[u8]) -> io::Result<usize> {
        let n = data.len();
        while !data.is_empty() {
            let room = PART_SIZE_BYTES - self.buf.len();
            let take = room.min(data.len());
            self.buf.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.buf.len() == PART_SIZE_BYTES {
                self.emit()?;
            }
        }
        self.total += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Collects parts in memory (tests, small bundles).
#[derive(Debug, Default)]
pub struct MemorySink {
    /// The parts in order.
    pub parts: Vec<Vec<u8>>,
}

impl PartSink for MemorySink {
    fn put_part(&mut self, _info: &PartInfo, data: Vec<u8>) -> io::Result<()> {
        self.parts.push(data);
        Ok(())
    }
}

/// Writes parts into a private staging directory under temporary names; see
/// [`StagingDir`] for how they get their final names.
#[derive(Debug)]
pub struct StagingSink {
    dir: PathBuf,
}

impl PartSink for StagingSink {
    fn put_part(&mut self, info: &PartInfo, data: Vec<u8>) -> io::Result<()> {
        let path = self.dir.join(format!("part.{}", info.index));
        let mut f = create_private_file(&path)?;
        f.write_all(&data)?;
        // Parts are renamed into place only at the end; make their bytes durable first so a
        // crash after the manifest rename never exposes a manifest whose parts are not on disk.
        f.sync_all()?;
        Ok(())
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
fn stale_pid(name: &str, prefix: &str, suffix: &str, numbered: bool) -> Option<u32> {
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
        }
    }

    /// Renames every part to its final name `<dest>/<name>.part.<i>`, then writes the manifest
    /// through a temporary file, fsyncs it and renames it to `<dest>/<name>.manifest.xml` — the
    /// commit point — and removes the staging directory. Returns the manifest path. A failure
    /// before the commit point (a full filesystem: a directory may need a new block for the
    /// names) removes the parts already renamed, so no final-named part set is left without
    /// its manifest.
    pub fn commit(
        mut self,
        name: &str,
        parts: &[PartInfo],
        manifest_xml: &[u8],
    ) -> io::Result<PathBuf> {
        let width = part_width(parts.len() as u64);
        let mut renamed = Vec::with_capacity(parts.len());
        let manifest_path = self.dest.join(format!("{name}.manifest.xml"));
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

/// One part as the manifest describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpectedPart {
    /// Where the part is read from.
    pub path: PathBuf,
    /// Manifest file name (for messages).
    pub filename: String,
    /// Expected SHA-1, any case.
    pub sha1: String,
}

/// Why a part was refused.
#[derive(Debug, thiserror::Error)]
pub enum PartError {
    /// The part file could not be read.
    #[error("reading part {filename} ({})", path.display())]
    Read {
        /// Manifest file name.
        filename: String,
        /// Path tried.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// The part's SHA-1 differs from the manifest.
    #[error("part {filename} is corrupt: its SHA-1 is {actual}, the manifest says {expected}")]
    Digest {
        /// Manifest file name.
        filename: String,
        /// Manifest digest.
        expected: String,
        /// Computed digest.
        actual: String,
    },
    /// A part is larger than any part can be.
    #[error(
        "part {filename} is {size} bytes, more than the largest part the format allows ({PART_SIZE_BYTES} bytes)"
    )]
    TooLarge {
        /// Manifest file name.
        filename: String,
        /// Its size.
        size: u64,
    },
}

impl From<PartError> for io::Error {
    fn from(e: PartError) -> Self {
        io::Error::other(e)
    }
}

/// Where a [`PartReader`] leaves the first part error it hit, so the caller can report it as
/// such even when the adapters above it wrapped it into their own errors.
pub type PartFailure = std::sync::Arc<std::sync::Mutex<Option<PartError>>>;

/// Reads parts one at a time, in index order, and checks each before serving its bytes.
pub struct PartReader {
    failure: PartFailure,
    parts: std::vec::IntoIter<ExpectedPart>,
    buf: Vec<u8>,
    pos: usize,
    total: u64,
    sizes: Vec<u64>,
}

impl PartReader {
    /// Reads `parts` in the order given (the caller orders them by manifest index).
    pub fn new(parts: Vec<ExpectedPart>) -> Self {
        Self {
            failure: PartFailure::default(),
            parts: parts.into_iter(),
            buf: Vec::new(),
            pos: 0,
            total: 0,
            sizes: Vec::new(),
        }
    }

    /// Total bytes served so far.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// The slot where the first part error is kept.
    pub fn failure(&self) -> PartFailure {
        self.failure.clone()
    }

    /// Sizes of the parts read so far, in order.
    pub fn sizes(&self) -> &[u64] {
        &self.sizes
    }

    fn load_next(&mut self) -> Result<bool, PartError> {
        let Some(part) = self.parts.next() else {
            return Ok(false);
        };
        self.buf.clear();
        self.pos = 0;
        let read_err = |source| PartError::Read {
            filename: part.filename.clone(),
            path: part.path.clone(),
            source,
        };
        let f = open_part(&part.path).map_err(read_err)?;
        // Read at most one byte more than a part may hold so a huge file cannot exhaust memory.
        f.take(PART_SIZE_BYTES as u64 + 1)
            .read_to_end(&mut self.buf)
            .map_err(read_err)?;
        if self.buf.len() > PART_SIZE_BYTES {
            let size = fs::metadata(&part.path)
                .map(|m| m.len())
                .unwrap_or(self.buf.len() as u64);
            return Err(PartError::TooLarge {
                filename: part.filename,
                size,
            });
        }
        let actual = hex::encode(Sha1::digest(&self.buf));
        if !actual.eq_ignore_ascii_case(&part.sha1) {
            return Err(PartError::Digest {
                filename: part.filename,
                expected: part.sha1,
                actual,
            });
        }
        self.sizes.push(self.buf.len() as u64);
        Ok(true)
    }
}

/// Opens a local part for reading: never through a symbolic link (`O_NOFOLLOW`), and only a
/// regular file: a FIFO would block the run and a device could be anything; `O_NONBLOCK` lets
/// the open itself return at once whatever the name is.
pub fn open_part(path: &Path) -> io::Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| {
            if e.raw_os_error() == Some(libc::ELOOP) {
                io::Error::other("it is a symbolic link, which is not followed for a part")
            } else {
                e
            }
        })?;
    if !file.metadata()?.file_type().is_file() {
        return Err(io::Error::other(
            "it is not a regular file (a FIFO, a device or a directory)",
        ));
    }
    Ok(file)
}

impl Read for PartReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.buf.len() {
            match self.load_next() {
                Ok(true) => {}
                Ok(false) => return Ok(0),
                Err(e) => {
                    let text = e.to_string();
                    if let Ok(mut slot) = self.failure.lock() {
                        slot.get_or_insert(e);
                    }
                    return Err(io::Error::other(text));
                }
            }
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        self.total += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn width_follows_the_count() {
        let cases = [
            (1, 1, "x.part.0"),
            (9, 1, "x.part.8"),
            (10, 2, "x.part.09"),
            (11, 2, "x.part.10"),
            (99, 2, "x.part.98"),
            (100, 3, "x.part.099"),
            (101, 3, "x.part.100"),
            (999, 3, "x.part.998"),
            (1000, 4, "x.part.0999"),
            (1025, 4, "x.part.1024"),
        ];
        for (count, width, last) in cases {
            assert_eq!(part_width(count), width, "count {count}");
            assert_eq!(part_name("x", count - 1, part_width(count)), last);
        }
        assert_eq!(part_name("x", 0, part_width(10)), "x.part.00");
    }

    fn split(len: usize) -> Vec<Vec<u8>> {
        let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        let mut w = PartWriter::new(MemorySink::default());
        // Odd write sizes so part boundaries fall inside writes.
        for chunk in data.chunks(777_777) {
            w.write_all(chunk).unwrap();
        }
        let (sink, infos) = w.finish().unwrap();
        assert_eq!(sink.parts.concat(), data);
        for (i, (info, part)) in infos.iter().zip(&sink.parts).enumerate() {
            assert_eq!(info.index, i as u64);
            assert_eq!(info.size, part.len() as u64);
            assert_eq!(info.sha1, crate::bundle::digest::sha1_hex(part));
        }
        sink.parts
    }

    #[test]
    fn part_boundaries() {
        let p = PART_SIZE_BYTES;
        let sizes = |len| split(len).iter().map(Vec::len).collect::<Vec<_>>();
        assert_eq!(sizes(16), vec![16]);
        assert_eq!(sizes(p - 16), vec![p - 16]);
        assert_eq!(sizes(p), vec![p]);
        assert_eq!(sizes(p + 16), vec![p, 16]);
        assert_eq!(sizes(2 * p), vec![p, p]);
    }

    #[test]
    fn staging_commit_renames_and_cleans_up() {
        let dest = tempfile::tempdir().unwrap();
        let staging = StagingDir::create(dest.path(), "img").unwrap();
        let staging_path = staging.path().to_path_buf();
        let mut w = PartWriter::new(staging.sink());
        w.write_all(&vec![7u8; PART_SIZE_BYTES + 5]).unwrap();
        let (_, parts) = w.finish().unwrap();
        let manifest = staging
            .commit("img", &parts, b"<?xml version='1.0'?>")
            .unwrap();
        assert_eq!(manifest, dest.path().join("img.manifest.xml"));
        assert!(!staging_path.exists());
        let mut names: Vec<_> = fs::read_dir(dest.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["img.manifest.xml", "img.part.0", "img.part.1"]);
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(dest.path().join("img.part.1"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn dropped_staging_leaves_nothing() {
        let dest = tempfile::tempdir().unwrap();
        {
            let staging = StagingDir::create(dest.path(), "img").unwrap();
            let mut w = PartWriter::new(staging.sink());
            w.write_all(&[1, 2, 3]).unwrap();
            w.finish().unwrap();
        }
        assert_eq!(fs::read_dir(dest.path()).unwrap().count(), 0);
    }

    #[test]
    fn reader_checks_each_part() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a");
        let b = dir.path().join("b");
        fs::write(&a, b"hello ").unwrap();
        fs::write(&b, b"world").unwrap();
        let good = vec![
            ExpectedPart {
                path: a.clone(),
                filename: "a".into(),
                sha1: crate::bundle::digest::sha1_hex(b"hello ").to_uppercase(),
            },
            ExpectedPart {
                path: b.clone(),
                filename: "b".into(),
                sha1: crate::bundle::digest::sha1_hex(b"world"),
            },
        ];
        let mut out = String::new();
        PartReader::new(good.clone())
            .read_to_string(&mut out)
            .unwrap();
        assert_eq!(out, "hello world");

        fs::write(&b, b"World").unwrap();
        let err = PartReader::new(good.clone())
            .read_to_end(&mut Vec::new())
            .unwrap_err();
        assert!(err.to_string().contains("part b is corrupt"), "{err}");

        fs::remove_file(&b).unwrap();
        let err = PartReader::new(good)
            .read_to_end(&mut Vec::new())
            .unwrap_err();
        assert!(err.to_string().contains("reading part b"), "{err}");
    }

    #[test]
    fn stale_names_are_matched_exactly() {
        let p = ".amibundle-disk-";
        assert_eq!(stale_pid(".amibundle-disk-123-0", p, "", true), Some(123));
        // Another bundle's staging directory ("disk-5"), or other shapes, are not ours.
        assert_eq!(stale_pid(".amibundle-disk-5-123-0", p, "", true), None);
        assert_eq!(stale_pid(".amibundle-disk-123", p, "", true), None);
        assert_eq!(stale_pid(".amibundle-disk--0", p, "", true), None);
        assert_eq!(stale_pid(".amibundle-disk-12a-0", p, "", true), None);
        let q = ".x.part.1.amibundle-";
        assert_eq!(
            stale_pid(".x.part.1.amibundle-77.partial", q, ".partial", false),
            Some(77)
        );
        assert_eq!(
            stale_pid(".x.part.1.amibundle-77-0.partial", q, ".partial", false),
            None
        );
        assert_eq!(
            stale_pid(".x.part.10.amibundle-77.partial", q, ".partial", false),
            None
        );
        assert_eq!(
            stale_pid(".x.part.1.amibundle-77", q, ".partial", false),
            None
        );
    }

    #[test]
    fn only_entries_of_processes_that_are_gone_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        // pid_max is at most 2^22: this process cannot exist.
        let gone = 4_000_000_000u32;
        let me = std::process::id();
        let names = [
            format!(".amibundle-d-{gone}-0"),
            format!(".amibundle-d-{me}-0"),
            ".amibundle-d-1-0".to_string(),
            format!(".amibundle-d-5-{gone}-0"),
        ];
        for n in &names {
            fs::create_dir(dir.path().join(n)).unwrap();
            fs::write(dir.path().join(n).join("part.0"), b"x").unwrap();
        }
        let file = format!(".d.part.0.amibundle-{gone}.partial");
        fs::write(dir.path().join(&file), b"x").unwrap();
        remove_stale(dir.path(), ".amibundle-d-", "", true);
        remove_stale(dir.path(), ".d.part.0.amibundle-", ".partial", false);
        let mut left: Vec<String> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        let mut want = names[1..].to_vec();
        want.sort();
        assert_eq!(left, want);
    }
}
