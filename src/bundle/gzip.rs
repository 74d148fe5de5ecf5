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
//! stored block: exactly the bytes zlib's sync flush appends. The chunks then concatenate into
//! one deflate stream whose only final block is the last chunk's, as §5 requires. Each worker
//! also computes its chunk's CRC-32. The caller's thread re-orders the results, writes one gzip
//! header, the chunk bodies in order, and one trailer with the combined CRC-32 and ISIZE.
//!
//! Chunks are independent: unlike pigz, matches cannot reach back into the previous chunk
//! (libdeflate has no preset dictionary), which costs a little size at each boundary; the chunk
//! size is chosen to keep that small.
//!
//! All writes to the inner writer happen on the caller's thread, so `W` needs neither `Send` nor
//! `'static`; only the chunk buffers cross threads.
//!
//! Bare § numbers in this module refer to docs/format.md.

mod scan;

pub use self::scan::ScanError;

use std::collections::BTreeMap;
use std::fmt;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, SyncSender, TryRecvError};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};

use libdeflater::{CompressionLvl, Compressor};

/// Default chunk size in bytes: the unit of work handed to one compression thread.
///
/// Every chunk starts with an empty window (no matches into the previous chunk) and ends with a
/// 4–5 byte sync marker. Measured on a 523 MB tar of /usr/lib files at level 6 with 2 threads,
/// 2 MiB chunks are 0.09 % smaller than 1 MiB ones and 4 MiB chunks 0.14 % (similar at levels 7
/// and 9), while peak RSS grows from 14 to 23 and 42 MB: not worth it under the tool's 64 MiB
/// budget. Memory in flight is about `2 × threads × 2 × chunk` (input plus output buffer), capped
/// at 48 MiB.
pub const DEFAULT_CHUNK_BYTES: usize = 1 << 20;

/// Default compression level. The reference tool uses 9 (docs/format.md §5 allows any).
///
/// Measured on 200 MB of /usr/lib files, level 6 output is 0.17 % larger than `gzip -9`'s and
/// 0.43 % smaller than `pigz -6`'s, for about 40 % of pigz's CPU time (and 12 % of `gzip -9`'s).
pub const DEFAULT_LEVEL: u32 = 6;

/// Chunks in flight per worker thread (queued, being compressed, or compressed and waiting to be
/// written in order). Two keeps every worker busy while the caller writes results out.
const IN_FLIGHT_PER_THREAD: usize = 2;

/// Upper limit of the chunk buffers in flight, in bytes: each chunk in flight holds its input and
/// an output buffer of about the same size. With 1 MiB chunks this allows 24 chunks (12 busy
/// threads at [`IN_FLIGHT_PER_THREAD`]); more threads than chunks in flight are not started.
const MAX_IN_FLIGHT_BYTES: usize = 48 << 20;

/// Largest payload of one stored deflate block (RFC 1951 §3.2.4: LEN is 16 bits).
const STORED_BLOCK_MAX_BYTES: usize = 65_535;

/// Bytes a stored block adds to its payload when it starts byte-aligned: the header byte (3 bits
/// padded to a byte boundary) plus LEN and NLEN.
const STORED_BLOCK_OVERHEAD_BYTES: usize = 5;

/// LEN and NLEN of the empty stored block that ends every chunk but the last (RFC 1951 §3.2.4):
/// the sync marker, as zlib's `Z_SYNC_FLUSH` writes it after the 3 header bits and padding.
const SYNC_MARKER_LEN_NLEN: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// Most bytes the sync marker adds after a final block's end-of-block code: the 3 header bits
/// may need a new byte (when fewer than 3 bits of the last byte are free), then LEN and NLEN.
const SYNC_MARKER_MAX_BYTES: usize = 5;

/// The fixed part of our gzip header (docs/format.md §5): magic, CM = deflate, FLG = 0,
/// MTIME = 0. XFL and OS follow.
const HEADER_PREFIX: [u8; 8] = [0x1f, 0x8b, 0x08, 0x00, 0x00, 0x00, 0x00, 0x00];

/// OS byte of the header: 3 (Unix), as the reference writes (§5).
const HEADER_OS_UNIX: u8 = 0x03;

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

/// Size of `len` bytes written as byte-aligned stored blocks (at least one block, so an empty
/// final chunk still carries BFINAL).
fn stored_len(len: usize) -> usize {
    let blocks = len.div_ceil(STORED_BLOCK_MAX_BYTES).max(1);
    len + blocks * STORED_BLOCK_OVERHEAD_BYTES
}

/// Writes `data` as stored blocks into `out` (replacing its contents). BFINAL is set on the last
/// block only if `last`; stored blocks end byte-aligned, so no sync marker is needed after them.
fn write_stored(data: &[u8], last: bool, out: &mut Vec<u8>) {
    out.clear();
    out.reserve(stored_len(data.len()));
    let mut blocks = data.chunks(STORED_BLOCK_MAX_BYTES).peekable();
    if blocks.peek().is_none() {
        // An empty chunk still needs one block to carry BFINAL.
        out.push(u8::from(last));
        out.extend_from_slice(&SYNC_MARKER_LEN_NLEN);
        return;
    }
    while let Some(block) = blocks.next() {
        let bfinal = last && blocks.peek().is_none();
        // Invariant: `chunks(STORED_BLOCK_MAX_BYTES)` yields at most 65,535 bytes.
        let len = u16::try_from(block.len()).unwrap_or(u16::MAX);
        // BTYPE = 00 (stored) in bits 1–2, BFINAL in bit 0, padding to the byte boundary.
        out.push(u8::from(bfinal));
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&(!len).to_le_bytes());
        out.extend_from_slice(block);
    }
}

/// Turns the complete deflate stream in `out`, whose final block lies as `end` says, into a
/// non-final stream piece that the next chunk's stream can follow (see the module
/// documentation): clears BFINAL, cuts after the final block, zeroes the bits after it in its
/// last byte, and appends an empty non-final stored block, byte for byte what zlib's sync flush
/// writes (3 zero header bits, zero padding to the byte boundary, `00 00 ff ff`).
fn definalize(out: &mut Vec<u8>, end: &scan::StreamEnd) {
    let header = end.final_block_bit;
    out[header / 8] &= !(1 << (header % 8));
    out.truncate(end.end_bit.div_ceil(8));
    if end.end_bit % 8 != 0 {
        let last = end.end_bit / 8;
        out[last] &= (1u8 << (end.end_bit % 8)) - 1;
    }
    // The empty block's 3 header bits are zero (BFINAL 0, BTYPE 00); with the padding they
    // occupy the rest of the current byte if 3 bits are free there, else one more zero byte.
    out.resize((end.end_bit + 3).div_ceil(8), 0);
    out.extend_from_slice(&SYNC_MARKER_LEN_NLEN);
}

/// One chunk of input on its way to a worker.
struct Job {
    seq: u64,
    offset: u64,
    data: Vec<u8>,
    /// A recycled buffer for the compressed bytes.
    out: Vec<u8>,
    last: bool,
    /// Test hook: make the worker panic on this job.
    #[cfg(test)]
    panic: bool,
}

/// A compressed chunk with its buffers handed back for reuse.
struct Compressed {
    data: Vec<u8>,
    out: Vec<u8>,
    crc: crc32fast::Hasher,
}

/// What a worker sends back for one job.
struct Done {
    seq: u64,
    result: Result<Compressed, GzipError>,
}

/// Compresses one chunk as raw deflate into `job.out` (see the module documentation).
fn compress_chunk(c: &mut Compressor, job: Job) -> Result<Compressed, GzipError> {
    #[cfg(test)]
    if job.panic {
        panic!("injected worker panic");
    }
    let Job {
        seq,
        offset,
        data,
        mut out,
        last,
        ..
    } = job;

    // Give libdeflate only as much room as stays within the stored size once the sync marker is
    // appended: a larger result would be replaced by stored blocks anyway (see
    // `compressed_bound`), and libdeflate reports running out of room instead of writing more.
    let stored = stored_len(data.len());
    let room = if last {
        stored
    } else {
        stored - SYNC_MARKER_MAX_BYTES
    };
    out.clear();
    out.resize(room, 0);
    match c.deflate_compress(&data, &mut out) {
        Ok(len) => {
            out.truncate(len);
            let end = scan::scan(&out).map_err(|source| GzipError::CheckChunk {
                chunk: seq,
                offset,
                source,
            })?;
            if end.decoded_len != data.len() as u64 {
                return Err(GzipError::ChunkLength {
                    chunk: seq,
                    offset,
                    decoded: end.decoded_len,
                    expected: data.len() as u64,
                });
            }
            if !last {
                definalize(&mut out, &end);
            }
        }
        // libdeflate's only error: the output does not fit in `room`.
        Err(_) => write_stored(&data, last, &mut out),
    }

    let mut crc = crc32fast::Hasher::new();
    crc.update(&data);
    Ok(Compressed { data, out, crc })
}

/// Body of a worker thread: take jobs until the queue closes or the encoder stops.
fn run_worker(
    level: CompressionLvl,
    jobs: Arc<Mutex<Receiver<Job>>>,
    done: Sender<Done>,
    stop: Arc<AtomicBool>,
) {
    let mut compressor = None;
    loop {
        let job = {
            // A poisoned lock means another worker panicked while waiting, which cannot happen
            // (recv does not panic); stopping is the safe reaction either way.
            let Ok(queue) = jobs.lock() else { return };
            let Ok(job) = queue.recv() else { return };
            job
        };
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let (seq, offset) = (job.seq, job.offset);
        // A panic (including libdeflater's on a failed allocation of the compressor, made here
        // for that reason) must become an error for the caller, not a chunk that never arrives:
        // the caller would wait for it forever while the other workers are idle.
        let result = panic::catch_unwind(AssertUnwindSafe(|| {
            let c = compressor.get_or_insert_with(|| Compressor::new(level));
            compress_chunk(c, job)
        }))
        .unwrap_or(Err(GzipError::WorkerPanicked { chunk: seq, offset }));
        let panicked = matches!(result, Err(GzipError::WorkerPanicked { .. }));
        if done.send(Done { seq, result }).is_err() || panicked {
            // The compressor's state is unknown after a panic; this thread retires.
            return;
        }
    }
}

/// Parallel gzip encoder producing exactly one gzip member (docs/format.md §5).
///
/// Write the uncompressed stream into it, then call [`finish`](Self::finish): that writes the
/// trailer and returns the inner writer. Dropping the encoder without `finish` stops its threads
/// and leaves the output incomplete.
///
/// `write` copies into the current chunk and returns once the chunk is queued; it blocks only
/// while the most chunks are in flight (`2 × threads`, fewer for very large chunks or thread
/// counts; see [`with_chunk_size`](Self::with_chunk_size)). Compressed chunks are written to the
/// inner writer, in order, on the caller's thread during `write`, `flush` and `finish`. Errors
/// from the inner writer are returned unchanged; after any error the encoder refuses further use
/// ([`GzipError::Poisoned`]).
pub struct ParallelGzEncoder<W: Write> {
    /// `Some` until `finish` hands it back.
    inner: Option<W>,
    level: u32,
    chunk_bytes: usize,
    /// The chunk being filled.
    fill: Vec<u8>,
    /// `None` once the pool is shut down.
    jobs: Option<SyncSender<Job>>,
    results: Receiver<Done>,
    workers: Vec<JoinHandle<()>>,
    stop: Arc<AtomicBool>,
    max_in_flight: u64,
    /// Sequence number of the next chunk to dispatch.
    next_seq: u64,
    /// Sequence number of the next chunk to write out.
    next_write: u64,
    /// Compressed chunks that arrived ahead of `next_write`.
    ready: BTreeMap<u64, Compressed>,
    spare_data: Vec<Vec<u8>>,
    spare_out: Vec<Vec<u8>>,
    /// CRC-32 of all chunks written out so far.
    crc: crc32fast::Hasher,
    /// Input bytes accepted so far.
    total_in: u64,
    /// Input bytes handed to workers so far (the offset of the next chunk).
    dispatched: u64,
    header_written: bool,
    poisoned: bool,
    /// Test hook: the chunk on which a worker is made to panic.
    #[cfg(test)]
    panic_on_chunk: Option<u64>,
}

impl<W: Write> fmt::Debug for ParallelGzEncoder<W> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ParallelGzEncoder")
            .field("level", &self.level)
            .field("threads", &self.workers.len())
            .field("chunk_bytes", &self.chunk_bytes)
            .field("total_in", &self.total_in)
            .finish_non_exhaustive()
    }
}

impl<W: Write> ParallelGzEncoder<W> {
    /// Creates an encoder writing to `inner` at `level` (1..=9) with `threads` worker threads and
    /// [`DEFAULT_CHUNK_BYTES`] chunks.
    ///
    /// # Errors
    ///
    /// `InvalidInput` ([`GzipError`]) for a level outside 1..=9 or zero threads; the OS error if a
    /// thread cannot be started.
    pub fn new(inner: W, level: u32, threads: usize) -> io::Result<Self> {
        Self::with_chunk_size(inner, level, threads, DEFAULT_CHUNK_BYTES)
    }

    /// Like [`new`](Self::new) with chunks of `chunk_bytes` bytes (see [`DEFAULT_CHUNK_BYTES`]).
    ///
    /// At most `2 × threads` chunks are in flight, holding at most 48 MiB of chunk buffers (input
    /// plus output): with many threads or large chunks fewer chunks are in flight, and only as
    /// many threads are started as chunks may be in flight (at least one).
    ///
    /// # Errors
    ///
    /// As [`new`](Self::new), and `InvalidInput` for a zero chunk size.
    pub fn with_chunk_size(
        inner: W,
        level: u32,
        threads: usize,
        chunk_bytes: usize,
    ) -> io::Result<Self> {
        // Levels map one to one onto libdeflate's 1..=9 (it also has 10..=12, near-optimal
        // parsing, far slower; the public contract stays gzip's 1..=9).
        let lvl = match i32::try_from(level).map(CompressionLvl::new) {
            Ok(Ok(lvl)) if (1..=9).contains(&level) => lvl,
            _ => return Err(GzipError::InvalidLevel { level }.into_io()),
        };
        if threads == 0 {
            return Err(GzipError::NoThreads.into_io());
        }
        if chunk_bytes == 0 {
            return Err(GzipError::EmptyChunkSize.into_io());
        }
        let per_chunk = chunk_bytes.saturating_add(stored_len(chunk_bytes));
        let max_in_flight = threads
            .saturating_mul(IN_FLIGHT_PER_THREAD)
            .min(MAX_IN_FLIGHT_BYTES / per_chunk)
            .max(1);
        let threads = threads.min(max_in_flight);
        // The queue holds one job per thread on top of the one each is working on; together with
        // results awaiting their turn this stays within `max_in_flight` (enforced in `dispatch`).
        let (job_tx, job_rx) = mpsc::sync_channel::<Job>(threads);
        let job_rx = Arc::new(Mutex::new(job_rx));
        // Unbounded, but never holds more than `max_in_flight` results; workers must never block
        // on it, or dropping the encoder could deadlock.
        let (done_tx, done_rx) = mpsc::channel::<Done>();
        let stop = Arc::new(AtomicBool::new(false));
        let mut workers = Vec::with_capacity(threads);
        for index in 0..threads {
            let (jobs, done, stop) = (Arc::clone(&job_rx), done_tx.clone(), Arc::clone(&stop));
            let spawned = thread::Builder::new()
                .name(format!("gzip-{index}"))
                .spawn(move || run_worker(lvl, jobs, done, stop));
            match spawned {
                Ok(handle) => workers.push(handle),
                Err(source) => {
                    // Close the queue so the threads already started exit, then wait for them.
                    drop(job_tx);
                    for handle in workers {
                        let _ = handle.join();
                    }
                    return Err(GzipError::SpawnWorker { index, source }.into_io());
                }
            }
        }
        // Only the workers may hold senders: when all of them are gone, `recv` must fail rather
        // than wait forever.
        drop(done_tx);
        Ok(Self {
            inner: Some(inner),
            level,
            chunk_bytes,
            fill: Vec::with_capacity(chunk_bytes),
            jobs: Some(job_tx),
            results: done_rx,
            workers,
            stop,
            max_in_flight: u64::try_from(max_in_flight).unwrap_or(u64::MAX),
            next_seq: 0,
            next_write: 0,
            ready: BTreeMap::new(),
            spare_data: Vec::new(),
            spare_out: Vec::new(),
            crc: crc32fast::Hasher::new(),
            total_in: 0,
            dispatched: 0,
            header_written: false,
            poisoned: false,
            #[cfg(test)]
            panic_on_chunk: None,
        })
    }

    /// Number of uncompressed bytes accepted so far.
    pub fn total_in(&self) -> u64 {
        self.total_in
    }

    /// Compresses what is left, writes the trailer, flushes and returns the inner writer.
    ///
    /// # Errors
    ///
    /// Errors of the inner writer (unchanged) and [`GzipError`]s from compression.
    pub fn finish(mut self) -> io::Result<W> {
        self.check_usable()?;
        self.guard(|s| {
            s.dispatch(true)?;
            s.drain()?;
            let mut trailer = [0u8; 8];
            trailer[..4].copy_from_slice(&s.crc.clone().finalize().to_le_bytes());
            // ISIZE is the length modulo 2^32 (RFC 1952 §2.3.1); the truncation is the format.
            trailer[4..].copy_from_slice(&(s.total_in as u32).to_le_bytes());
            let inner = s.inner_mut()?;
            inner.write_all(&trailer)?;
            inner.flush()
        })?;
        self.shutdown();
        self.inner
            .take()
            .ok_or_else(|| GzipError::Poisoned.into_io())
    }

    /// Runs `f`, marking the encoder unusable if it fails: a failed step may have lost a chunk.
    fn guard<T>(&mut self, f: impl FnOnce(&mut Self) -> io::Result<T>) -> io::Result<T> {
        let result = f(self);
        if result.is_err() {
            self.poisoned = true;
            self.shutdown();
        }
        result
    }

    fn check_usable(&self) -> io::Result<()> {
        if self.poisoned {
            return Err(GzipError::Poisoned.into_io());
        }
        Ok(())
    }

    fn inner_mut(&mut self) -> io::Result<&mut W> {
        // `inner` is only taken by `finish`, which consumes the encoder.
        self.inner
            .as_mut()
            .ok_or_else(|| GzipError::Poisoned.into_io())
    }

    fn in_flight(&self) -> u64 {
        self.next_seq - self.next_write
    }

    /// Hands the current chunk to the pool (`last` marks the final chunk, which may be empty).
    fn dispatch(&mut self, last: bool) -> io::Result<()> {
        while self.in_flight() >= self.max_in_flight {
            self.receive(true)?;
            self.write_ready()?;
        }
        let chunk_bytes = self.chunk_bytes;
        let next_fill = self
            .spare_data
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(chunk_bytes));
        let data = std::mem::replace(&mut self.fill, next_fill);
        let seq = self.next_seq;
        let offset = self.dispatched;
        self.dispatched += data.len() as u64;
        let job = Job {
            seq,
            offset,
            data,
            out: self.spare_out.pop().unwrap_or_default(),
            last,
            #[cfg(test)]
            panic: self.panic_on_chunk == Some(seq),
        };
        let Some(jobs) = &self.jobs else {
            return Err(GzipError::WorkersGone.into_io());
        };
        jobs.send(job)
            .map_err(|_| GzipError::WorkersGone.into_io())?;
        self.next_seq += 1;
        // Write out whatever is already done so output leaves as early as possible.
        while self.receive(false)? {}
        self.write_ready()
    }

    /// Takes one result from the workers; returns whether one arrived (always true if `block`).
    fn receive(&mut self, block: bool) -> io::Result<bool> {
        let done = if block {
            self.results
                .recv()
                .map_err(|_| GzipError::WorkersGone.into_io())?
        } else {
            match self.results.try_recv() {
                Ok(done) => done,
                Err(TryRecvError::Empty) => return Ok(false),
                Err(TryRecvError::Disconnected) => {
                    if self.in_flight() == 0 {
                        return Ok(false);
                    }
                    return Err(GzipError::WorkersGone.into_io());
                }
            }
        };
        let compressed = done.result.map_err(GzipError::into_io)?;
        self.ready.insert(done.seq, compressed);
        Ok(true)
    }

    /// Writes out, in order, every compressed chunk whose predecessors are all written.
    fn write_ready(&mut self) -> io::Result<()> {
        while let Some(chunk) = self.ready.remove(&self.next_write) {
            if !self.header_written {
                // XFL as gzip sets it (§5): 2 = maximum compression, 4 = fastest.
                let xfl = match self.level {
                    9 => 0x02,
                    1 => 0x04,
                    _ => 0x00,
                };
                let mut header = [0u8; 10];
                header[..8].copy_from_slice(&HEADER_PREFIX);
                header[8] = xfl;
                header[9] = HEADER_OS_UNIX;
                self.inner_mut()?.write_all(&header)?;
                self.header_written = true;
            }
            self.inner_mut()?.write_all(&chunk.out)?;
            self.crc.combine(&chunk.crc);
            self.next_write += 1;
            let Compressed { mut data, out, .. } = chunk;
            data.clear();
            self.spare_data.push(data);
            self.spare_out.push(out);
        }
        Ok(())
    }

    /// Waits for every dispatched chunk and writes it out.
    fn drain(&mut self) -> io::Result<()> {
        while self.in_flight() > 0 {
            self.receive(true)?;
            self.write_ready()?;
        }
        Ok(())
    }

    /// Closes the job queue and joins the workers. Idempotent; never blocks for long: workers
    /// never wait on the result channel, and they skip queued jobs once `stop` is set.
    fn shutdown(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.jobs = None;
        for handle in self.workers.drain(..) {
            // A worker panic was already reported as a chunk error (or the encoder is being
            // dropped); there is nothing more to do with it here.
            let _ = handle.join();
        }
    }
}

impl<W: Write> Write for ParallelGzEncoder<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.check_usable()?;
        self.guard(|s| {
            let mut rest = buf;
            while !rest.is_empty() {
                let take = (s.chunk_bytes - s.fill.len()).min(rest.len());
                s.fill.extend_from_slice(&rest[..take]);
                s.total_in += take as u64;
                rest = &rest[take..];
                if s.fill.len() == s.chunk_bytes {
                    s.dispatch(false)?;
                }
            }
            Ok(buf.len())
        })
    }

    /// Makes everything written so far decodable from the inner writer: the partial chunk is
    /// compressed (ending in a sync flush), every chunk in flight is written out, and the inner
    /// writer is flushed. This stalls the pipeline and ends a chunk early, so call it rarely.
    fn flush(&mut self) -> io::Result<()> {
        self.check_usable()?;
        self.guard(|s| {
            if !s.fill.is_empty() {
                s.dispatch(false)?;
            }
            s.drain()?;
            s.inner_mut()?.flush()
        })
    }
}

impl<W: Write> Drop for ParallelGzEncoder<W> {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Counts the bytes read through it, to report offsets in the compressed stream.
#[derive(Debug)]
struct CountingReader<R> {
    inner: R,
    count: u64,
}

impl<R: Read> Read for CountingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count += n as u64;
        Ok(n)
    }
}

type MemberDecoder<R> = flate2::bufread::GzDecoder<BufReader<CountingReader<R>>>;

/// Strict gzip reader (docs/format.md §5 Reader).
///
/// Decodes one or more concatenated members. Each member's CRC-32 and ISIZE are checked by
/// flate2; ISIZE is only compared modulo 2³², never used as a length. Truncated input, a corrupt
/// member, an empty input, and bytes after a member that do not form another gzip member are all
/// errors ([`GzipError::Decode`], [`GzipError::TrailingData`]).
pub struct GzipReader<R: Read> {
    /// `None` only transiently while switching members.
    decoder: Option<MemberDecoder<R>>,
    /// Index of the member being decoded.
    member: u64,
    finished: bool,
}

impl<R: Read> fmt::Debug for GzipReader<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GzipReader")
            .field("member", &self.member)
            .field("finished", &self.finished)
            .finish_non_exhaustive()
    }
}

impl<R: Read> GzipReader<R> {
    /// Creates a reader decoding the gzip stream `inner`.
    pub fn new(inner: R) -> Self {
        let buffered = BufReader::new(CountingReader { inner, count: 0 });
        Self {
            decoder: Some(flate2::bufread::GzDecoder::new(buffered)),
            member: 0,
            finished: false,
        }
    }

    /// Returns the underlying reader. Compressed bytes read ahead into the internal buffer are
    /// lost, so its position is unspecified unless the stream was read to the end.
    pub fn into_inner(self) -> R {
        // Invariant: `decoder` is only `None` between `take` and the unconditional re-assignment
        // in `next_member`, which contains no early return.
        let decoder = self.decoder.expect("decoder present outside next_member");
        decoder.into_inner().into_inner().inner
    }

    /// Called when the current member ended cleanly: either the input ends too, or the next
    /// bytes must start another member.
    fn next_member(&mut self) -> io::Result<bool> {
        let Some(decoder) = self.decoder.as_mut() else {
            return Ok(false);
        };
        let buffered = decoder.get_mut();
        let member = self.member;
        let decode_err = |source| GzipError::Decode { member, source }.into_io();
        if buffered.fill_buf().map_err(decode_err)?.is_empty() {
            return Ok(false);
        }
        let offset = buffered.get_ref().count - buffered.buffer().len() as u64;
        let Some(old) = self.decoder.take() else {
            return Ok(false);
        };
        let mut next = flate2::bufread::GzDecoder::new(old.into_inner());
        if next.header().is_none() {
            // The header did not parse; reading yields the parser's error (or, if it was never
            // stored, a generic one).
            let source = match next.read(&mut [0u8; 1]) {
                Err(e) => e,
                Ok(_) => io::Error::new(io::ErrorKind::InvalidData, "invalid gzip header"),
            };
            self.decoder = Some(next);
            return Err(GzipError::TrailingData {
                member,
                offset,
                source,
            }
            .into_io());
        }
        self.decoder = Some(next);
        self.member += 1;
        Ok(true)
    }
}

impl<R: Read> Read for GzipReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() || self.finished {
            return Ok(0);
        }
        loop {
            let Some(decoder) = self.decoder.as_mut() else {
                return Ok(0);
            };
            let member = self.member;
            let result = decoder.read(buf);
            match result {
                Ok(0) => {
                    if !self.next_member().inspect_err(|_| self.finished = true)? {
                        self.finished = true;
                        return Ok(0);
                    }
                }
                Ok(n) => return Ok(n),
                Err(source) => {
                    self.finished = true;
                    return Err(GzipError::Decode { member, source }.into_io());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::{Compression, Status};
    use std::cell::RefCell;
    use std::process::{Command, Stdio};
    use std::rc::Rc;

    /// Deterministic xorshift bytes (incompressible). Shared with the scanner's tests.
    pub(super) fn random_bytes(len: usize, mut seed: u64) -> Vec<u8> {
        let mut v = Vec::with_capacity(len + 8);
        seed |= 1;
        while v.len() < len {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            v.extend_from_slice(&seed.to_le_bytes());
        }
        v.truncate(len);
        v
    }

    /// Deterministic text-like bytes: words from a small vocabulary with numbers mixed in, so
    /// deflate finds many matches, some of them far back. Shared with the scanner's tests.
    pub(super) fn text_bytes(len: usize, seed: u64) -> Vec<u8> {
        const WORDS: &[&str] = &[
            "bundle", "image", "manifest", "part", "key", "volume", "kernel", "ramdisk", "the",
            "of", "and", "usr", "lib", "share", "doc", "x86_64", "ec2", "ami", "tar", "gzip",
        ];
        let rnd = random_bytes(len, seed);
        let mut v = Vec::with_capacity(len + 16);
        let mut i = 0;
        while v.len() < len {
            let r = rnd[i % rnd.len().max(1)];
            i += 1;
            v.extend_from_slice(WORDS[usize::from(r) % WORDS.len()].as_bytes());
            if r % 7 == 0 {
                v.extend_from_slice(format!("{}", u32::from(r) * 37).as_bytes());
            }
            v.push(if r % 11 == 0 { b'\n' } else { b' ' });
        }
        v.truncate(len);
        v
    }

    fn encode(data: &[u8], level: u32, threads: usize, chunk: usize) -> Vec<u8> {
        let mut enc =
            ParallelGzEncoder::with_chunk_size(Vec::new(), level, threads, chunk).expect("encoder");
        // Uneven write sizes so chunk boundaries fall inside writes.
        for piece in data.chunks(7_777) {
            enc.write_all(piece).expect("write");
        }
        assert_eq!(enc.total_in(), data.len() as u64);
        enc.finish().expect("finish")
    }

    /// Decodes with a single-member decoder and checks that it consumed every byte.
    fn decode_single_member(gz: &[u8]) -> Vec<u8> {
        let mut dec = flate2::bufread::GzDecoder::new(gz);
        let mut out = Vec::new();
        dec.read_to_end(&mut out).expect("GzDecoder");
        assert!(
            dec.into_inner().is_empty(),
            "bytes left after the first member"
        );
        out
    }

    fn system_gunzip(gz: &[u8]) -> Vec<u8> {
        let mut child = Command::new("gzip")
            .arg("-dc")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn gzip");
        let mut stdin = child.stdin.take().expect("stdin");
        let input = gz.to_vec();
        let feeder = thread::spawn(move || stdin.write_all(&input));
        let output = child.wait_with_output().expect("gzip output");
        feeder.join().expect("feeder").expect("feeding gzip");
        assert!(
            output.status.success(),
            "gzip -d failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        output.stdout
    }

    fn check_trailer(gz: &[u8], data: &[u8]) {
        let t = &gz[gz.len() - 8..];
        assert_eq!(t[..4], crc32fast::hash(data).to_le_bytes(), "CRC-32");
        assert_eq!(t[4..], (data.len() as u32).to_le_bytes(), "ISIZE");
    }

    #[test]
    fn round_trips_with_gzip_and_flate2_across_lengths_threads_levels() {
        let chunk = 64 * 1024;
        let lengths = [0, 1, chunk - 1, chunk, chunk + 1, 3 * chunk + 17];
        let data = text_bytes(3 * chunk + 17, 1);
        for &len in &lengths {
            for threads in [1, 2, 4] {
                for level in [1, 6, 9] {
                    let input = &data[..len];
                    let gz = encode(input, level, threads, chunk);
                    let ctx = format!("len {len} threads {threads} level {level}");
                    assert_eq!(decode_single_member(&gz), input, "flate2: {ctx}");
                    assert_eq!(system_gunzip(&gz), input, "gzip -d: {ctx}");
                    check_trailer(&gz, input);
                }
            }
        }
    }

    #[test]
    fn round_trips_with_default_chunk_size() {
        let data = text_bytes(3 * DEFAULT_CHUNK_BYTES + 17, 2);
        for len in [DEFAULT_CHUNK_BYTES, 3 * DEFAULT_CHUNK_BYTES + 17] {
            let mut enc = ParallelGzEncoder::new(Vec::new(), DEFAULT_LEVEL, 2).expect("encoder");
            enc.write_all(&data[..len]).expect("write");
            let gz = enc.finish().expect("finish");
            assert_eq!(decode_single_member(&gz), &data[..len]);
            assert_eq!(system_gunzip(&gz), &data[..len]);
        }
    }

    #[test]
    fn chunks_smaller_than_the_window_round_trip() {
        // 1,000-byte chunks are shorter than the 32 KiB window and than libdeflate's stored
        // pass-through threshold at some levels; every boundary must still join correctly.
        let data = text_bytes(200_000, 3);
        for (threads, level) in [(1, 1), (3, 6), (2, 9)] {
            let gz = encode(&data, level, threads, 1_000);
            assert_eq!(decode_single_member(&gz), data);
            assert_eq!(system_gunzip(&gz), data);
        }
    }

    #[test]
    fn header_bytes_match_the_reference() {
        for (level, xfl) in [(1, 0x04), (6, 0x00), (9, 0x02)] {
            let gz = encode(b"hello", level, 1, 1024);
            assert_eq!(
                gz[..10],
                [0x1f, 0x8b, 0x08, 0x00, 0x00, 0x00, 0x00, 0x00, xfl, 0x03],
                "level {level}"
            );
        }
    }

    #[test]
    fn output_is_exactly_one_member() {
        let data = text_bytes(300_000, 4);
        let gz = encode(&data, 9, 4, 50_000);
        // A single-member decoder must end exactly at the end of the output.
        assert_eq!(decode_single_member(&gz), data);
        // And raw-inflating the body must hit BFINAL exactly 8 bytes (the trailer) before the end.
        let body = &gz[10..];
        let mut inflate = flate2::Decompress::new(false);
        let mut out = Vec::with_capacity(data.len() + 1024);
        let status = inflate
            .decompress_vec(body, &mut out, flate2::FlushDecompress::Finish)
            .expect("inflate");
        assert_eq!(status, Status::StreamEnd);
        assert_eq!(inflate.total_in() as usize, body.len() - 8);
        assert_eq!(out, data);
        check_trailer(&gz, &data);
    }

    #[test]
    fn compressed_bound_holds_for_incompressible_input() {
        for &chunk in &[1_000, 65_536, 1 << 20] {
            for &len in &[0, 1, 100, 65_535, 65_536, 200_000, (1 << 20) + 5] {
                let data = random_bytes(len, len as u64 + 11);
                for level in [1, 6, 9] {
                    let gz = encode(&data, level, 2, chunk);
                    let ctx = format!("len {len} chunk {chunk} level {level}");
                    let bound = compressed_bound(len as u64, chunk);
                    assert!(gz.len() as u64 <= bound, "{ctx}: {} > {bound}", gz.len());
                    // The tighter guarantee of the stored fallback: every chunk (including an
                    // empty final one) within C + 5·⌈C/65535⌉, 5 bytes at least.
                    let full = len / chunk;
                    let tail = len % chunk;
                    let tight = 18 + full * stored_len(chunk) + stored_len(tail);
                    assert!(gz.len() <= tight, "{ctx}: {} > {tight}", gz.len());
                    assert_eq!(decode_single_member(&gz), data, "{ctx}");
                }
            }
        }
    }

    /// Raw deflate of `data` by libdeflate at `level` (1..=12).
    fn libdeflate_raw(data: &[u8], level: i32) -> Vec<u8> {
        let mut c = Compressor::new(CompressionLvl::new(level).expect("level"));
        let mut out = vec![0; c.deflate_compress_bound(data.len())];
        let n = c.deflate_compress(data, &mut out).expect("compress");
        out.truncate(n);
        out
    }

    #[test]
    fn definalized_streams_join_at_every_bit_offset() {
        // Pieces of varied lengths and kinds end their final block at every bit offset within a
        // byte; each definalized piece must end exactly like a zlib sync flush, and the joined
        // pieces must form one stream.
        let text = text_bytes(400_000, 20);
        let random = random_bytes(100_000, 21);
        let mut residues = [false; 8];
        let mut body = Vec::new();
        let mut input = Vec::new();
        let mut start = 0;
        for i in 0..60usize {
            let len = 1 + (i * 7_919) % 9_000;
            let piece = if i % 5 == 4 {
                &random[..len]
            } else {
                &text[start..start + len]
            };
            start += len;
            let level = [1, 6, 9, 12][i % 4];
            let mut stream = libdeflate_raw(piece, level);
            let end = scan::scan(&stream).expect("scan");
            residues[end.end_bit % 8] = true;
            definalize(&mut stream, &end);
            // Cut after the final block, 3 zero header bits, zero padding, LEN/NLEN of an empty
            // block: the bytes zlib's sync flush writes.
            let marker_at = (end.end_bit + 3).div_ceil(8);
            assert_eq!(stream.len(), marker_at + 4, "piece {i}");
            assert_eq!(stream[marker_at..], SYNC_MARKER_LEN_NLEN, "piece {i}");
            assert_eq!(
                stream[end.end_bit / 8] >> (end.end_bit % 8),
                0,
                "piece {i}: bits after the block"
            );
            for &b in &stream[end.end_bit.div_ceil(8)..marker_at] {
                assert_eq!(b, 0, "piece {i}: padding");
            }
            // BFINAL is now clear, so the piece alone never ends.
            assert!(matches!(
                scan::scan(&stream),
                Err(ScanError::Truncated { .. })
            ));
            body.extend_from_slice(&stream);
            input.extend_from_slice(piece);
        }
        assert_eq!(residues, [true; 8], "bit offsets covered");
        let last = text_bytes(5_000, 22);
        body.extend(libdeflate_raw(&last, 6));
        input.extend_from_slice(&last);
        let joined = scan::scan(&body).expect("joined stream");
        assert_eq!(joined.decoded_len, input.len() as u64);

        let mut gz = vec![0x1f, 0x8b, 0x08, 0, 0, 0, 0, 0, 0, 0x03];
        gz.extend_from_slice(&body);
        gz.extend_from_slice(&crc32fast::hash(&input).to_le_bytes());
        gz.extend_from_slice(&(input.len() as u32).to_le_bytes());
        assert_eq!(system_gunzip(&gz), input);
        assert_eq!(decode_single_member(&gz), input);
    }

    #[test]
    fn in_flight_memory_is_capped_for_many_threads() {
        let enc = ParallelGzEncoder::with_chunk_size(Vec::new(), 6, 64, 4 << 20).expect("enc");
        let per_chunk = (4 << 20) + stored_len(4 << 20);
        assert_eq!(enc.max_in_flight, (MAX_IN_FLIGHT_BYTES / per_chunk) as u64);
        assert_eq!(enc.workers.len(), MAX_IN_FLIGHT_BYTES / per_chunk);
        let enc = ParallelGzEncoder::with_chunk_size(Vec::new(), 6, 2, 1 << 20).expect("enc");
        assert_eq!((enc.max_in_flight, enc.workers.len()), (4, 2));
        // A chunk larger than the cap still works, one chunk at a time.
        let mut enc = ParallelGzEncoder::with_chunk_size(Vec::new(), 1, 4, 64 << 20).expect("enc");
        assert_eq!((enc.max_in_flight, enc.workers.len()), (1, 1));
        enc.write_all(b"small").expect("write");
        assert_eq!(
            decode_single_member(&enc.finish().expect("finish")),
            b"small"
        );
    }

    #[test]
    fn stored_fallback_decodes_with_gzip() {
        // Random data does not fit in the room given to libdeflate, so these chunks go out
        // stored by the encoder itself.
        let data = random_bytes(300_000, 9);
        for last_len in [300_000, 262_144] {
            let gz = encode(&data[..last_len], 1, 2, 65_536);
            assert!(gz.len() < last_len + last_len / 1000 + 100);
            assert_eq!(system_gunzip(&gz), &data[..last_len]);
        }
        let mut out = Vec::new();
        write_stored(&[], true, &mut out);
        assert_eq!(out, [1, 0, 0, 0xff, 0xff]);
    }

    #[test]
    fn compressed_bound_formula() {
        assert_eq!(compressed_bound(0, 1 << 20), 13 + 18 + 10);
        let t: u64 = 10 << 30;
        let expected = t + (t >> 12) + (t >> 14) + (t >> 25) + 13 + 18 + 10 * (10 * 1024 + 1);
        assert_eq!(compressed_bound(t, 1 << 20), expected);
        assert_eq!(compressed_bound(5, 0), compressed_bound(5, 1));
    }

    /// Fails every write after `limit` bytes with a recognisable error.
    #[derive(Debug)]
    struct FailingWriter {
        written: usize,
        limit: usize,
    }

    #[derive(Debug)]
    struct Marker;
    impl fmt::Display for Marker {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("disk full marker")
        }
    }
    impl std::error::Error for Marker {}

    impl Write for FailingWriter {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if self.written + buf.len() > self.limit {
                return Err(io::Error::new(io::ErrorKind::StorageFull, Marker));
            }
            self.written += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn inner_writer_errors_propagate_unchanged() {
        let data = random_bytes(400_000, 6);
        let inner = FailingWriter {
            written: 0,
            limit: 100_000,
        };
        let mut enc = ParallelGzEncoder::with_chunk_size(inner, 6, 2, 16 * 1024).expect("enc");
        let err = match enc.write_all(&data) {
            Err(e) => e,
            Ok(()) => enc.finish().expect_err("finish must fail"),
        };
        assert_eq!(err.kind(), io::ErrorKind::StorageFull);
        assert!(err.get_ref().is_some_and(|e| e.is::<Marker>()), "{err:?}");

        // Also when the failure comes only from the trailer in finish.
        let inner = FailingWriter {
            written: 0,
            limit: 15,
        };
        let mut enc = ParallelGzEncoder::new(inner, 6, 1).expect("enc");
        enc.write_all(b"x").expect("write");
        let err = enc.finish().expect_err("finish must fail");
        assert_eq!(err.kind(), io::ErrorKind::StorageFull);
    }

    #[test]
    fn encoder_refuses_use_after_an_error() {
        let inner = FailingWriter {
            written: 0,
            limit: 0,
        };
        let mut enc = ParallelGzEncoder::with_chunk_size(inner, 6, 1, 1024).expect("enc");
        let data = random_bytes(10_000, 8);
        let err = enc.write_all(&data).expect_err("first error");
        assert_eq!(err.kind(), io::ErrorKind::StorageFull);
        let err = enc.write(b"more").expect_err("poisoned");
        assert!(matches!(
            err.get_ref().and_then(|e| e.downcast_ref::<GzipError>()),
            Some(GzipError::Poisoned)
        ));
    }

    #[test]
    fn worker_panic_becomes_an_error() {
        let mut enc = ParallelGzEncoder::with_chunk_size(Vec::new(), 6, 2, 1024).expect("enc");
        enc.panic_on_chunk = Some(3);
        let data = text_bytes(50_000, 7);
        let err = match enc.write_all(&data) {
            Err(e) => e,
            Ok(()) => enc.finish().expect_err("finish must fail"),
        };
        let inner = err.get_ref().and_then(|e| e.downcast_ref::<GzipError>());
        assert!(
            matches!(
                inner,
                Some(GzipError::WorkerPanicked {
                    chunk: 3,
                    offset: 3072
                })
            ),
            "{err:?}"
        );
    }

    #[test]
    fn dropping_without_finish_does_not_hang() {
        let data = text_bytes(500_000, 10);
        let mut enc = ParallelGzEncoder::with_chunk_size(Vec::new(), 9, 4, 8 * 1024).expect("enc");
        enc.write_all(&data).expect("write");
        drop(enc);
        // Dropped before anything was written, too.
        drop(ParallelGzEncoder::new(Vec::new(), 6, 3).expect("enc"));
    }

    #[test]
    fn rejects_invalid_parameters() {
        for (level, threads, chunk) in [(0, 1, 1024), (10, 1, 1024), (6, 0, 1024), (6, 1, 0)] {
            let err = ParallelGzEncoder::with_chunk_size(Vec::new(), level, threads, chunk)
                .expect_err("must be rejected");
            assert_eq!(
                err.kind(),
                io::ErrorKind::InvalidInput,
                "{level} {threads} {chunk}"
            );
        }
    }

    /// A writer whose contents stay visible while the encoder owns it.
    #[derive(Clone, Default)]
    struct SharedVec(Rc<RefCell<Vec<u8>>>);
    impl Write for SharedVec {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.borrow_mut().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn flush_makes_everything_written_decodable() {
        let shared = SharedVec::default();
        let data = text_bytes(150_000, 12);
        let mut enc =
            ParallelGzEncoder::with_chunk_size(shared.clone(), 6, 2, 64 * 1024).expect("enc");
        enc.write_all(&data[..100_000]).expect("write");
        enc.flush().expect("flush");
        let so_far = shared.0.borrow().clone();
        let mut inflate = flate2::Decompress::new(false);
        let mut out = Vec::with_capacity(200_000);
        inflate
            .decompress_vec(&so_far[10..], &mut out, flate2::FlushDecompress::Sync)
            .expect("inflate");
        assert_eq!(out, &data[..100_000]);
        enc.write_all(&data[100_000..]).expect("write");
        enc.finish().expect("finish");
        assert_eq!(decode_single_member(&shared.0.borrow()), data);
    }

    fn read_all(gz: &[u8]) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        GzipReader::new(gz).read_to_end(&mut out)?;
        Ok(out)
    }

    fn gzip_error(err: &io::Error) -> Option<&GzipError> {
        err.get_ref().and_then(|e| e.downcast_ref::<GzipError>())
    }

    #[test]
    fn reader_round_trips_encoder_output() {
        let data = text_bytes(200_000, 13);
        assert_eq!(read_all(&encode(&data, 6, 2, 30_000)).expect("read"), data);
        assert_eq!(read_all(&encode(b"", 6, 1, 1024)).expect("read"), b"");
    }

    #[test]
    fn reader_decodes_concatenated_members() {
        let a = text_bytes(70_000, 14);
        let b = random_bytes(5_000, 15);
        let mut gz = encode(&a, 6, 2, 16_384);
        let mut flate_member = flate2::write::GzEncoder::new(Vec::new(), Compression::fast());
        flate_member.write_all(&b).expect("write");
        gz.extend(flate_member.finish().expect("finish"));
        gz.extend(encode(b"", 9, 1, 1024));
        let mut expected = a.clone();
        expected.extend_from_slice(&b);
        assert_eq!(read_all(&gz).expect("read"), expected);
    }

    #[test]
    fn reader_rejects_trailing_garbage() {
        let data = text_bytes(10_000, 16);
        let gz = encode(&data, 6, 1, 4096);
        let garbage: [&[u8]; 5] = [
            &[0],
            &[0; 512],
            &[0x1f],
            &[0x1f, 0x8b, 0x08, 0x00],
            b"not gzip at all",
        ];
        for g in garbage {
            let mut bad = gz.clone();
            bad.extend_from_slice(g);
            let err = read_all(&bad).expect_err("trailing bytes must fail");
            match gzip_error(&err) {
                Some(GzipError::TrailingData { member, offset, .. }) => {
                    assert_eq!((*member, *offset), (0, gz.len() as u64), "{g:?}");
                }
                other => panic!("{g:?}: unexpected error {other:?}"),
            }
        }
    }

    #[test]
    fn reader_rejects_truncated_input() {
        let data = text_bytes(100_000, 17);
        let gz = encode(&data, 6, 2, 32_768);
        for cut in [
            0,
            1,
            5,
            10,
            11,
            gz.len() / 2,
            gz.len() - 9,
            gz.len() - 8,
            gz.len() - 1,
        ] {
            assert!(read_all(&gz[..cut]).is_err(), "cut at {cut} accepted");
        }
    }

    #[test]
    fn reader_rejects_bad_crc_and_isize() {
        let data = text_bytes(20_000, 18);
        let gz = encode(&data, 6, 1, 8192);
        for pos in [gz.len() - 8, gz.len() - 1] {
            let mut bad = gz.clone();
            bad[pos] ^= 0x01;
            let err = read_all(&bad).expect_err("corrupt trailer accepted");
            assert!(
                matches!(gzip_error(&err), Some(GzipError::Decode { member: 0, .. })),
                "{err:?}"
            );
        }
    }
}
