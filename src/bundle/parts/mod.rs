//! Cutting the ciphertext into 10 MiB parts and reading them back (docs/format.md §8).
//!
//! [`PartWriter`] is the last adapter of the bundling pipeline: it hashes each part as its bytes
//! pass and hands them to a [`PartSink`]. A sink that needs a whole part at once (the S3 uploader
//! of a streaming upload: the PUT needs the body and its digest) gets it accumulated in memory,
//! [`PART_SIZE_BYTES`] at most; a streaming sink (the staging directory of a local bundle) gets
//! the bytes as they come, while they are still in the CPU's cache, and holds nothing.
//!
//! [`PartReader`] is the first adapter of the unbundling pipeline: it loads one part at a time,
//! checks its size and SHA-1 against the manifest **before** any byte of it is decrypted
//! (§12 step 2), and then serves its bytes.
//!
//! The writer is in `writer`, the staging directory local bundles are committed from in
//! `staging`, the reader in `reader`; part sizes and names are here.
//!
//! Bare § numbers in this module refer to docs/format.md.

mod reader;
mod staging;
#[cfg(test)]
mod tests;
mod writer;

pub use self::reader::{ExpectedPart, PartError, PartFailure, PartReader, open_part};
pub use self::staging::{StagingDir, StagingSink, create_private_file, remove_stale};
pub use self::writer::{MemorySink, PartWriter};

use std::io;

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
    /// without a copy). Parts arrive in index order. Not called on a streaming sink.
    fn put_part(&mut self, info: &PartInfo, data: Vec<u8>) -> io::Result<()>;

    /// Whether the sink takes each part's bytes as they are produced ([`PartSink::part_bytes`],
    /// then [`PartSink::end_part`]) instead of whole ([`PartSink::put_part`]).
    fn streams(&self) -> bool {
        false
    }

    /// The next bytes of part `index` (streaming sinks only); parts and bytes arrive in order.
    fn part_bytes(&mut self, index: u64, data: &[u8]) -> io::Result<()> {
        let _ = (index, data);
        Err(io::Error::other("this part sink does not stream"))
    }

    /// Part `info.index` is complete (streaming sinks only).
    fn end_part(&mut self, info: &PartInfo) -> io::Result<()> {
        let _ = info;
        Err(io::Error::other("this part sink does not stream"))
    }
}
