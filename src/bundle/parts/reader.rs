//! The part reader (§12 step 2): parts loaded one at a time, each checked against its size limit
//! and the manifest's SHA-1 before any of its bytes are served.
//!
//! Bare § numbers in this module refer to docs/format.md.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use super::PART_SIZE_BYTES;
use crate::bundle::digest::sha1_hex;

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
        let actual = sha1_hex(&self.buf);
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
