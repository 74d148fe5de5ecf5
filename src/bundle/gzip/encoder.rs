//! The parallel gzip encoder (§5): chunks compressed as raw deflate by a pool of libdeflate
//! workers, joined into one deflate stream and written as exactly one gzip member (see the
//! parent module's documentation for the design).
//!
//! Bare § numbers in this module refer to docs/format.md.

use std::collections::BTreeMap;
use std::fmt;
use std::io::{self, Write};
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, SyncSender, TryRecvError};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};

use libdeflater::{CompressionLvl, Compressor};

use super::{DEFAULT_CHUNK_BYTES, GzipError, scan};
use crate::bundle::tar::{self, DirectWrite};

/// Chunks in flight per worker thread (waiting for a partner, queued, being compressed, or
/// compressed and waiting to be written in order) when workers take chunks two at a time (see
/// [`Job`]): a pair being compressed and one queued, so that every worker finds its next pair
/// ready while the caller writes results out.
const IN_FLIGHT_PER_THREAD_PAIRED: usize = 4;

/// Chunks in flight per worker thread when [`MAX_IN_FLIGHT_BYTES`] does not allow
/// [`IN_FLIGHT_PER_THREAD_PAIRED`] (many threads or large chunks): workers then take one chunk
/// at a time, one being compressed and one queued, rather than fewer workers be busy.
const IN_FLIGHT_PER_THREAD: usize = 2;

/// Upper limit of the chunk buffers in flight, in bytes: each chunk in flight holds its input and
/// an output buffer of about the same size. With 1 MiB chunks this allows 23 chunks: up to 5
/// threads take chunks in pairs, up to 11 one at a time; more threads than chunks in flight are
/// not started.
pub(super) const MAX_IN_FLIGHT_BYTES: usize = 48 << 20;

/// Largest payload of one stored deflate block (RFC 1951 §3.2.4: LEN is 16 bits).
const STORED_BLOCK_MAX_BYTES: usize = 65_535;

/// Bytes a stored block adds to its payload when it starts byte-aligned: the header byte (3 bits
/// padded to a byte boundary) plus LEN and NLEN.
const STORED_BLOCK_OVERHEAD_BYTES: usize = 5;

/// LEN and NLEN of the empty stored block that ends every chunk but the last (RFC 1951 §3.2.4):
/// the sync marker, as zlib's `Z_SYNC_FLUSH` writes it after the 3 header bits and padding.
pub(super) const SYNC_MARKER_LEN_NLEN: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// Most bytes the sync marker adds after a final block's end-of-block code: the 3 header bits
/// may need a new byte (when fewer than 3 bits of the last byte are free), then LEN and NLEN.
const SYNC_MARKER_MAX_BYTES: usize = 5;

/// The fixed part of our gzip header (docs/format.md §5): magic, CM = deflate, FLG = 0,
/// MTIME = 0. XFL and OS follow.
const HEADER_PREFIX: [u8; 8] = [0x1f, 0x8b, 0x08, 0x00, 0x00, 0x00, 0x00, 0x00];

/// OS byte of the header: 3 (Unix), as the reference writes (§5).
const HEADER_OS_UNIX: u8 = 0x03;

/// Size of `len` bytes written as byte-aligned stored blocks (at least one block, so an empty
/// final chunk still carries BFINAL).
pub(super) fn stored_len(len: usize) -> usize {
    let blocks = len.div_ceil(STORED_BLOCK_MAX_BYTES).max(1);
    len + blocks * STORED_BLOCK_OVERHEAD_BYTES
}

/// Writes `data` as stored blocks into `out` (replacing its contents). BFINAL is set on the last
/// block only if `last`; stored blocks end byte-aligned, so no sync marker is needed after them.
pub(super) fn write_stored(data: &[u8], last: bool, out: &mut Vec<u8>) {
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
#[cfg(test)]
pub(super) fn definalize(out: &mut Vec<u8>, end: &scan::StreamEnd) {
    out.resize(out.len().max(definalized_len(end)), 0);
    let len = definalize_in(out, end);
    out.truncate(len);
}

/// The length of a stream after [`definalize`].
#[cfg(test)]
fn definalized_len(end: &scan::StreamEnd) -> usize {
    (end.end_bit + 3).div_ceil(8) + SYNC_MARKER_LEN_NLEN.len()
}

/// [`definalize`] in a buffer holding the stream at its start and at least
/// [`definalized_len`] bytes (whatever follows the stream is overwritten); returns the new
/// length.
pub(super) fn definalize_in(out: &mut [u8], end: &scan::StreamEnd) -> usize {
    let header = end.final_block_bit;
    out[header / 8] &= !(1 << (header % 8));
    let cut = end.end_bit.div_ceil(8);
    if end.end_bit % 8 != 0 {
        let last = end.end_bit / 8;
        out[last] &= (1u8 << (end.end_bit % 8)) - 1;
    }
    // The empty block's 3 header bits are zero (BFINAL 0, BTYPE 00); with the padding they
    // occupy the rest of the current byte if 3 bits are free there, else one more zero byte.
    let marker = (end.end_bit + 3).div_ceil(8);
    out[cut..marker].fill(0);
    out[marker..marker + SYNC_MARKER_LEN_NLEN.len()].copy_from_slice(&SYNC_MARKER_LEN_NLEN);
    marker + SYNC_MARKER_LEN_NLEN.len()
}

/// One chunk of input on its way to a worker.
struct Chunk {
    seq: u64,
    offset: u64,
    /// The chunk is `data[..len]`; the buffer is `chunk_bytes` long (initialized once, reused).
    data: Vec<u8>,
    len: usize,
    /// A recycled buffer for the compressed bytes.
    out: Vec<u8>,
    last: bool,
    /// Test hook: make the worker panic on this chunk.
    #[cfg(test)]
    panic: bool,
}

/// What a worker takes at once: two consecutive chunks, compressed one after the other and then
/// checked together ([`scan::scan_pair`], about a quarter faster than one after the other), or
/// a single chunk (the last one, or one that `flush` or a lack of chunks in flight sends alone).
struct Job {
    first: Chunk,
    second: Option<Chunk>,
}

/// A compressed chunk with its buffers handed back for reuse.
struct Compressed {
    /// The input buffer, handed back whole.
    data: Vec<u8>,
    /// The compressed bytes are `out[..len]`; the rest is kept (initialized) for reuse.
    out: Vec<u8>,
    len: usize,
    crc: crc32fast::Hasher,
}

/// What a worker sends back for one chunk.
struct Done {
    seq: u64,
    result: Result<Compressed, GzipError>,
}

/// Compresses `chunk` as raw deflate into `chunk.out` (see the module documentation); returns
/// the length of the deflate stream still to be checked, or `None` when the chunk was stored
/// instead (then `chunk.out` holds exactly the stored blocks).
fn deflate_chunk(c: &mut Compressor, chunk: &mut Chunk) -> Option<usize> {
    #[cfg(test)]
    if chunk.panic {
        panic!("injected worker panic");
    }
    let data = &chunk.data[..chunk.len];
    // Give libdeflate only as much room as stays within the stored size once the sync marker is
    // appended: a larger result would be replaced by stored blocks anyway (see
    // `compressed_bound`), and libdeflate reports running out of room instead of writing more.
    let stored = stored_len(data.len());
    let room = if chunk.last {
        stored
    } else {
        stored - SYNC_MARKER_MAX_BYTES
    };
    // A recycled buffer keeps its length and bytes: only growth is zeroed, not every chunk.
    if chunk.out.len() < stored {
        chunk.out.resize(stored, 0);
    }
    match c.deflate_compress(data, &mut chunk.out[..room]) {
        Ok(len) => Some(len),
        // libdeflate's only error: the output does not fit in `room`.
        Err(_) => {
            write_stored(data, chunk.last, &mut chunk.out);
            None
        }
    }
}

/// Finishes a chunk whose deflate stream of `len` bytes was scanned with the result `scanned`
/// (`None` for a stored chunk): checks that the stream is valid and decodes to the chunk's
/// length, makes it joinable to the next chunk's, and computes the chunk's CRC-32.
fn finish_chunk(
    chunk: Chunk,
    scanned: Option<(usize, Result<scan::StreamEnd, scan::ScanError>)>,
) -> Result<Compressed, GzipError> {
    let Chunk {
        seq,
        offset,
        data: buffer,
        len: data_len,
        mut out,
        last,
        ..
    } = chunk;
    let data = &buffer[..data_len];
    let len = match scanned {
        None => out.len(),
        Some((len, end)) => {
            let end = end.map_err(|source| GzipError::CheckChunk {
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
            if last {
                len
            } else {
                // `room` left the marker's bytes free below the stored size.
                definalize_in(&mut out, &end)
            }
        }
    };
    let mut crc = crc32fast::Hasher::new();
    crc.update(data);
    Ok(Compressed {
        data: buffer,
        out,
        len,
        crc,
    })
}

/// Compresses and checks the chunks of `job`; `at` is set to the sequence number and offset of
/// each chunk before it is worked on, so that a panic can be reported for the right chunk.
fn compress_job(c: &mut Compressor, job: Job, at: &mut (u64, u64)) -> [Option<Done>; 2] {
    let Job { mut first, second } = job;
    *at = (first.seq, first.offset);
    let deflated_first = deflate_chunk(c, &mut first);
    let Some(mut second) = second else {
        let scanned = deflated_first.map(|len| (len, scan::scan(&first.out[..len])));
        let seq = first.seq;
        return [
            Some(Done {
                seq,
                result: finish_chunk(first, scanned),
            }),
            None,
        ];
    };
    *at = (second.seq, second.offset);
    let deflated_second = deflate_chunk(c, &mut second);
    *at = (first.seq, first.offset);
    let (scanned_first, scanned_second) = match (deflated_first, deflated_second) {
        (Some(a), Some(b)) => {
            let (end_a, end_b) = scan::scan_pair(&first.out[..a], &second.out[..b]);
            (Some((a, end_a)), Some((b, end_b)))
        }
        (a, b) => (
            a.map(|len| (len, scan::scan(&first.out[..len]))),
            b.map(|len| (len, scan::scan(&second.out[..len]))),
        ),
    };
    let (seq_first, seq_second) = (first.seq, second.seq);
    [
        Some(Done {
            seq: seq_first,
            result: finish_chunk(first, scanned_first),
        }),
        Some(Done {
            seq: seq_second,
            result: finish_chunk(second, scanned_second),
        }),
    ]
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
        let mut at = (job.first.seq, job.first.offset);
        // A panic (including libdeflater's on a failed allocation of the compressor, made here
        // for that reason) must become an error for the caller, not a chunk that never arrives:
        // the caller would wait for it forever while the other workers are idle.
        let results = panic::catch_unwind(AssertUnwindSafe(|| {
            let c = compressor.get_or_insert_with(|| Compressor::new(level));
            compress_job(c, job, &mut at)
        }));
        let Ok(results) = results else {
            let (chunk, offset) = at;
            let result = Err(GzipError::WorkerPanicked { chunk, offset });
            // The compressor's state is unknown after a panic; this thread retires.
            let _ = done.send(Done { seq: chunk, result });
            return;
        };
        for result in results.into_iter().flatten() {
            if done.send(result).is_err() {
                return;
            }
        }
    }
}

/// Parallel gzip encoder producing exactly one gzip member (docs/format.md §5).
///
/// Write the uncompressed stream into it, then call [`finish`](Self::finish): that writes the
/// trailer and returns the inner writer. Dropping the encoder without `finish` stops its threads
/// and leaves the output incomplete.
///
/// `write` copies into the current chunk (or, through [`DirectWrite`], the caller reads its input
/// straight into the chunk) and returns once the chunk is queued; it blocks only
/// while the most chunks are in flight (`4 × threads`, fewer for large chunks or many threads;
/// see [`with_chunk_size`](Self::with_chunk_size)). Compressed chunks are written to the
/// inner writer, in order, on the caller's thread during `write`, `flush` and `finish`. Errors
/// from the inner writer are returned unchanged; after any error the encoder refuses further use
/// ([`GzipError::Poisoned`]).
pub struct ParallelGzEncoder<W: Write> {
    /// `Some` until `finish` hands it back.
    inner: Option<W>,
    level: u32,
    chunk_bytes: usize,
    /// The chunk being filled: `fill[..filled]`. The buffer is always `chunk_bytes` long, so
    /// that the input can be read straight into it ([`DirectWrite`]).
    fill: Vec<u8>,
    filled: usize,
    /// `None` once the pool is shut down.
    jobs: Option<SyncSender<Job>>,
    results: Receiver<Done>,
    pub(super) workers: Vec<JoinHandle<()>>,
    stop: Arc<AtomicBool>,
    pub(super) max_in_flight: u64,
    /// Sequence number of the next chunk to dispatch.
    next_seq: u64,
    /// Sequence number of the next chunk to write out.
    next_write: u64,
    /// Compressed chunks that arrived ahead of `next_write`.
    ready: BTreeMap<u64, Compressed>,
    /// Whether workers take chunks in pairs (when [`MAX_IN_FLIGHT_BYTES`] allows enough in
    /// flight for it).
    pub(super) paired: bool,
    /// A full chunk waiting for the next one, to be sent together as one [`Job`]; counted in
    /// flight.
    pending: Option<Chunk>,
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
    pub(super) panic_on_chunk: Option<u64>,
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
    /// At most `4 × threads` chunks are in flight, and workers take them two at a time (their
    /// deflate streams are checked faster together), as long as that holds at most 48 MiB of
    /// chunk buffers (input plus output). Beyond that (many threads or large chunks), workers
    /// take one chunk at a time, at most `2 × threads` are in flight within the 48 MiB, and only
    /// as many threads are started as chunks may be in flight (at least one).
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
        let cap = MAX_IN_FLIGHT_BYTES / per_chunk;
        let paired = threads.saturating_mul(IN_FLIGHT_PER_THREAD_PAIRED) <= cap;
        let max_in_flight = if paired {
            threads * IN_FLIGHT_PER_THREAD_PAIRED
        } else {
            threads.saturating_mul(IN_FLIGHT_PER_THREAD).min(cap).max(1)
        };
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
            fill: vec![0; chunk_bytes],
            filled: 0,
            jobs: Some(job_tx),
            results: done_rx,
            workers,
            stop,
            max_in_flight: u64::try_from(max_in_flight).unwrap_or(u64::MAX),
            next_seq: 0,
            next_write: 0,
            ready: BTreeMap::new(),
            paired,
            pending: None,
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
    ///
    /// A chunk is held back (`pending`) until the next one comes, to go to a worker together;
    /// the last chunk is sent at once, with the one held back if any.
    fn dispatch(&mut self, last: bool) -> io::Result<()> {
        while self.in_flight() >= self.max_in_flight {
            if self.pending.is_some() && self.in_flight() == 1 {
                // Nothing else is out to wait for: the held chunk goes alone.
                self.send_pending()?;
            }
            self.receive(true)?;
            self.write_ready()?;
        }
        let chunk_bytes = self.chunk_bytes;
        let next_fill = self
            .spare_data
            .pop()
            .unwrap_or_else(|| vec![0; chunk_bytes]);
        let data = std::mem::replace(&mut self.fill, next_fill);
        let len = std::mem::take(&mut self.filled);
        let seq = self.next_seq;
        let offset = self.dispatched;
        self.dispatched += len as u64;
        let chunk = Chunk {
            seq,
            offset,
            data,
            len,
            out: self.spare_out.pop().unwrap_or_default(),
            last,
            #[cfg(test)]
            panic: self.panic_on_chunk == Some(seq),
        };
        self.next_seq += 1;
        match self.pending.take() {
            Some(first) => self.send(Job {
                first,
                second: Some(chunk),
            })?,
            None if self.paired && !last => self.pending = Some(chunk),
            None => self.send(Job {
                first: chunk,
                second: None,
            })?,
        }
        // Write out whatever is already done so output leaves as early as possible.
        while self.receive(false)? {}
        self.write_ready()
    }

    /// Sends the chunk held back for a partner, alone.
    fn send_pending(&mut self) -> io::Result<()> {
        match self.pending.take() {
            Some(first) => self.send(Job {
                first,
                second: None,
            }),
            None => Ok(()),
        }
    }

    fn send(&mut self, job: Job) -> io::Result<()> {
        let Some(jobs) = &self.jobs else {
            return Err(GzipError::WorkersGone.into_io());
        };
        jobs.send(job).map_err(|_| GzipError::WorkersGone.into_io())
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
            self.inner_mut()?.write_all(&chunk.out[..chunk.len])?;
            self.crc.combine(&chunk.crc);
            self.next_write += 1;
            let Compressed { data, out, .. } = chunk;
            self.spare_data.push(data);
            self.spare_out.push(out);
        }
        Ok(())
    }

    /// Waits for every dispatched chunk and writes it out.
    fn drain(&mut self) -> io::Result<()> {
        self.send_pending()?;
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
                let take = (s.chunk_bytes - s.filled).min(rest.len());
                s.fill[s.filled..s.filled + take].copy_from_slice(&rest[..take]);
                s.filled += take;
                s.total_in += take as u64;
                rest = &rest[take..];
                if s.filled == s.chunk_bytes {
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
            if s.filled > 0 {
                s.dispatch(false)?;
            }
            s.drain()?;
            s.inner_mut()?.flush()
        })
    }
}

impl<W: Write> DirectWrite for ParallelGzEncoder<W> {
    /// Lends the free part of the current chunk: the input is read straight into the buffer a
    /// worker compresses, with no copy.
    fn write_direct(
        &mut self,
        max: usize,
        fill: &mut dyn FnMut(&mut [u8]) -> io::Result<usize>,
    ) -> io::Result<usize> {
        self.check_usable()?;
        self.guard(|s| {
            // A full chunk is dispatched as soon as it is full, so there is always room here.
            let room = (s.chunk_bytes - s.filled).min(max);
            let start = s.filled;
            let n = fill(&mut s.fill[start..start + room])?;
            if n > room {
                return Err(tar::overfilled(n, room));
            }
            s.filled += n;
            s.total_in += n as u64;
            if s.filled == s.chunk_bytes {
                s.dispatch(false)?;
            }
            Ok(n)
        })
    }
}

impl<W: Write> Drop for ParallelGzEncoder<W> {
    fn drop(&mut self) {
        self.shutdown();
    }
}
