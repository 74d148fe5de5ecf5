//! Gzip for the bundle stream (docs/format.md §5): a parallel, pigz-style encoder on libdeflate
//! that writes exactly one gzip member, the matching output-size bound used to fix part-name
//! widths before streaming (§8.3), and a strict multi-member reader.
//!
//! # Encoder design
//!
//! The input is cut into chunks of [`DEFAULT_CHUNK_BYTES`]. A pool of worker threads compresses
//! each chunk independently as raw deflate with libdeflate, whose buffer-at-once compressor is
//! both faster and denser than zlib's streaming one at the same level. libdeflate always ends a
//! stream with a final block and cannot sync-flush, so the worker walks its output with a strict
//! block scanner (the private `scan` module), which also validates the whole chunk, and, for
//! every chunk but the last, clears the final block's BFINAL bit and appends an empty non-final
//! stored block: exactly the bytes zlib's sync flush appends. Workers take chunks two at a time
//! and scan the two streams together, an item of each in turn, which keeps the CPU busier than
//! one stream's chain of dependent table lookups does (a quarter less scanning time). The chunks
//! then concatenate into one deflate stream whose only final block is the last chunk's, as §5
//! requires. Each worker also computes its chunks' CRC-32. The caller's thread re-orders the
//! results, writes one gzip header, the chunk bodies in order, and one trailer with the combined
//! CRC-32 and ISIZE.
//!
//! Chunks are independent: unlike pigz, matches cannot reach back into the previous chunk
//! (libdeflate has no preset dictionary), which costs a little size at each boundary; the chunk
//! size is chosen to keep that small.
//!
//! All writes to the inner writer happen on the caller's thread, so `W` needs neither `Send` nor
//! `'static`; only the chunk buffers cross threads.
//!
//! The encoder is in the `encoder` submodule, the reader in `reader`, the block scanner in `scan`.
//!
//! Bare § numbers in this module refer to docs/format.md.

mod encoder;
mod reader;
mod scan;
#[cfg(test)]
mod tests;

pub use self::encoder::ParallelGzEncoder;
pub use self::reader::GzipReader;
pub use self::scan::ScanError;

use std::io;

/// Default chunk size in bytes: the unit of work handed to one compression thread.
///
/// Every chunk starts with an empty window (no matches into the previous chunk) and ends with a
/// 4–5 byte sync marker. Measured on a 523 MB tar of /usr/lib files at level 6 with 2 threads,
/// 2 MiB chunks are 0.09 % smaller than 1 MiB ones and 4 MiB chunks 0.14 % (similar at levels 7
/// and 9), while peak RSS grows from 14 to 23 and 42 MB: not worth it under the tool's 64 MiB
/// budget. Memory in flight is about `4 × threads × 2 × chunk` (input plus output buffer; `2 ×`
/// instead of `4 ×` with more than 5 threads), capped at 48 MiB.
pub const DEFAULT_CHUNK_BYTES: usize = 1 << 20;

/// Default compression level. The reference tool uses 9 (docs/format.md §5 allows any).
///
/// Measured on 200 MB of /usr/lib files, level 6 output is 0.17 % larger than `gzip -9`'s and
/// 0.43 % smaller than `pigz -6`'s, for about 40 % of pigz's CPU time (and 12 % of `gzip -9`'s).
pub const DEFAULT_LEVEL: u32 = 6;

/// Errors of the gzip encoder and reader.
///
/// They travel inside [`io::Error`] (the encoder and reader implement `Write` and `Read`); use
/// [`io::Error::get_ref`] and `downcast_ref::<GzipError>()` to inspect them. Errors of the inner
/// writer are not wrapped: they come back unchanged.
#[derive(Debug, thiserror::Error)]
pub enum GzipError {
    /// The compression level is not in 1..=9.
    #[error("compression level {level} is not in 1..=9")]
    InvalidLevel {
        /// The rejected level.
        level: u32,
    },
    /// Zero compression threads were requested.
    #[error("the number of compression threads must be at least 1")]
    NoThreads,
    /// A zero chunk size was requested.
    #[error("the compression chunk size must be at least 1 byte")]
    EmptyChunkSize,
    /// A worker thread could not be started.
    #[error("starting compression thread {index}")]
    SpawnWorker {
        /// Index of the thread in the pool.
        index: usize,
        /// The operating-system error.
        #[source]
        source: io::Error,
    },
    /// The deflate stream compressed for a chunk failed its self-check: this is a bug in the
    /// compressor or memory corruption, never a property of the input.
    #[error("checking the compressed chunk {chunk} (input offset {offset})")]
    CheckChunk {
        /// Sequence number of the chunk.
        chunk: u64,
        /// Offset of the chunk's first byte in the input stream.
        offset: u64,
        /// What is wrong with the deflate stream.
        #[source]
        source: ScanError,
    },
    /// The deflate stream compressed for a chunk is valid but decodes to the wrong length (a
    /// compressor bug, like [`GzipError::CheckChunk`]).
    #[error(
        "compressed chunk {chunk} (input offset {offset}) decodes to {decoded} bytes instead of {expected}"
    )]
    ChunkLength {
        /// Sequence number of the chunk.
        chunk: u64,
        /// Offset of the chunk's first byte in the input stream.
        offset: u64,
        /// Length the stream decodes to.
        decoded: u64,
        /// Length of the chunk.
        expected: u64,
    },
    /// A worker thread panicked while compressing a chunk.
    #[error("compression thread panicked on chunk {chunk} (input offset {offset})")]
    WorkerPanicked {
        /// Sequence number of the chunk.
        chunk: u64,
        /// Offset of the chunk's first byte in the input stream.
        offset: u64,
    },
    /// Every worker thread is gone although chunks were still outstanding.
    #[error("compression threads exited with chunks outstanding")]
    WorkersGone,
    /// The encoder was used again after an earlier error; its output is incomplete.
    #[error("gzip encoder used after an earlier error")]
    Poisoned,
    /// Decoding a member failed (bad header, corrupt or truncated deflate data, CRC-32 or ISIZE
    /// mismatch).
    #[error("decoding gzip member {member}")]
    Decode {
        /// Index of the member, counting from 0.
        member: u64,
        /// The decoder's error.
        #[source]
        source: io::Error,
    },
    /// Bytes follow a complete member but do not start another gzip member (§5 Reader).
    #[error("data after gzip member {member} at compressed offset {offset} is not a gzip member")]
    TrailingData {
        /// Index of the last good member, counting from 0.
        member: u64,
        /// Offset of the unexpected bytes in the compressed stream.
        offset: u64,
        /// Why the bytes are not a gzip header.
        #[source]
        source: io::Error,
    },
}

impl GzipError {
    /// Wraps the error into an `io::Error` of a fitting kind.
    fn into_io(self) -> io::Error {
        let kind = match &self {
            GzipError::InvalidLevel { .. } | GzipError::NoThreads | GzipError::EmptyChunkSize => {
                io::ErrorKind::InvalidInput
            }
            GzipError::SpawnWorker { source, .. } => source.kind(),
            GzipError::Decode { source, .. } => source.kind(),
            GzipError::TrailingData { .. } => io::ErrorKind::InvalidData,
            GzipError::CheckChunk { .. }
            | GzipError::ChunkLength { .. }
            | GzipError::WorkerPanicked { .. }
            | GzipError::WorkersGone
            | GzipError::Poisoned => io::ErrorKind::Other,
        };
        io::Error::new(kind, self)
    }
}

/// Upper bound of the gzip output of [`ParallelGzEncoder`] for `input_len` bytes of input cut
/// into chunks of `chunk_bytes` (docs/format.md §8.3, G_max), at any level.
///
/// This is the §8.3 formula: zlib's `deflateBound` T + T/2¹² + T/2¹⁴ + T/2²⁵ + 13, plus 18 bytes
/// of gzip header and trailer, plus 10 bytes per chunk (counting a possible empty final chunk).
///
/// libdeflate alone guarantees less: it falls back to stored blocks, but per block of as little
/// as 5,000 bytes, so its own bound (`deflate_compress_bound`) is C + 5·⌈C/5000⌉, about T/1000
/// of overhead. The encoder therefore stores a chunk itself whenever its deflate stream, sync
/// marker included, would be larger than the same bytes as byte-aligned stored blocks of up to
/// 65,535 bytes. Each chunk then costs at most C + 5·⌈C/65535⌉ bytes (5 for an empty one), which
/// sums to less than this bound for every input length and chunk size, independent of the level
/// and of libdeflate internals. The bound is kept at the §8.3 formula so that every writer of
/// the format computes the same part-name width.
///
/// A `chunk_bytes` of 0 is treated as 1.
pub fn compressed_bound(input_len: u64, chunk_bytes: usize) -> u64 {
    let t = input_len;
    let chunk = u64::try_from(chunk_bytes.max(1)).unwrap_or(u64::MAX);
    // Full chunks plus the final one, which is empty when the length is a multiple of the chunk
    // size (finish always emits a final chunk to carry BFINAL).
    let chunks = t / chunk + 1;
    let deflate_bound = t
        .saturating_add(t >> 12)
        .saturating_add(t >> 14)
        .saturating_add(t >> 25)
        .saturating_add(13);
    deflate_bound
        .saturating_add(18)
        .saturating_add(chunks.saturating_mul(10))
}
