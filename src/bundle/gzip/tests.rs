//! Unit tests of the encoder (round trips through gzip and flate2, the exact header, one member,
//! the size bound, errors) and of the strict reader.
//!
//! Bare § numbers in this module refer to docs/format.md.

use std::cell::RefCell;
use std::fmt;
use std::io::{self, Read, Write};
use std::process::{Command, Stdio};
use std::rc::Rc;
use std::thread;

use flate2::{Compression, Status};
use libdeflater::{CompressionLvl, Compressor};

use super::encoder::{
    MAX_IN_FLIGHT_BYTES, SYNC_MARKER_LEN_NLEN, definalize, definalize_in, stored_len, write_stored,
};
use super::*;

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
        "bundle", "image", "manifest", "part", "key", "volume", "kernel", "ramdisk", "the", "of",
        "and", "usr", "lib", "share", "doc", "x86_64", "ec2", "ami", "tar", "gzip",
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
        // The encoder's way: in place, in a recycled buffer whose stale bytes follow the stream.
        let mut recycled = stream.clone();
        recycled.extend_from_slice(&[0xff; 16]);
        definalize(&mut stream, &end);
        let len = definalize_in(&mut recycled, &end);
        assert_eq!(
            recycled[..len],
            stream[..],
            "piece {i}: in place over stale bytes"
        );
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
    assert_eq!(
        (enc.max_in_flight, enc.workers.len(), enc.paired),
        (8, 2, true)
    );
    // Up to 5 threads take 1 MiB chunks in pairs (4 in flight each); 6 would need 24 chunks in
    // flight, over the cap: they take one chunk at a time, 2 in flight each, all 6 busy.
    let enc = ParallelGzEncoder::with_chunk_size(Vec::new(), 6, 5, 1 << 20).expect("enc");
    assert_eq!(
        (enc.max_in_flight, enc.workers.len(), enc.paired),
        (20, 5, true)
    );
    let enc = ParallelGzEncoder::with_chunk_size(Vec::new(), 6, 6, 1 << 20).expect("enc");
    assert_eq!(
        (enc.max_in_flight, enc.workers.len(), enc.paired),
        (12, 6, false)
    );
    let enc = ParallelGzEncoder::with_chunk_size(Vec::new(), 6, 16, 1 << 20).expect("enc");
    let cap = MAX_IN_FLIGHT_BYTES / ((1 << 20) + stored_len(1 << 20));
    assert_eq!(
        (enc.max_in_flight, enc.workers.len(), enc.paired),
        (cap as u64, 16, false)
    );
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
fn one_chunk_in_flight_still_pairs_nothing_and_finishes() {
    // 13 MiB chunks: only one fits under the in-flight cap, so no chunk can wait for a partner
    // while another is out: each goes alone (a held one would wait forever).
    let chunk = 13 << 20;
    let mut enc = ParallelGzEncoder::with_chunk_size(Vec::new(), 1, 2, chunk).expect("enc");
    assert_eq!(enc.max_in_flight, 1);
    let mut data = vec![0u8; 3 * chunk + 5];
    data[chunk + 7] = 1;
    enc.write_all(&data).expect("write");
    let gz = enc.finish().expect("finish");
    assert_eq!(decode_single_member(&gz), data);
}

#[test]
fn chunks_checked_in_pairs_with_stored_neighbours_round_trip() {
    // Text and random chunks alternate, so pairs mix a deflated chunk with a stored one (checked
    // alone) as well as two deflated ones (checked together); odd chunk counts leave the last
    // chunk alone.
    let piece = 32 * 1024;
    for chunks in [1, 2, 3, 6, 7] {
        let mut data = Vec::new();
        for i in 0..chunks {
            if i % 3 == 1 {
                data.extend(random_bytes(piece, i as u64));
            } else {
                data.extend(text_bytes(piece, i as u64));
            }
        }
        let gz = encode(&data, 6, 2, piece);
        assert_eq!(system_gunzip(&gz), data, "{chunks} chunks");
        assert_eq!(decode_single_member(&gz), data, "{chunks} chunks");
        // Pairing does not change the output: one thread, same bytes; and 200 threads, too many
        // to pair under the in-flight cap (which is in bytes: small chunks need many threads).
        assert_eq!(encode(&data, 6, 1, piece), gz, "{chunks} chunks");
        let many = ParallelGzEncoder::with_chunk_size(Vec::new(), 6, 200, piece).expect("enc");
        assert!(!many.paired);
        drop(many);
        assert_eq!(encode(&data, 6, 200, piece), gz, "{chunks} chunks");
    }
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

/// The same stream written by `write_direct` in pieces of `piece` bytes.
fn encode_direct(data: &[u8], threads: usize, chunk: usize, piece: usize) -> Vec<u8> {
    use crate::bundle::tar::DirectWrite;
    let mut enc = ParallelGzEncoder::with_chunk_size(Vec::new(), 6, threads, chunk).expect("enc");
    let mut rest = data;
    while !rest.is_empty() {
        let n = enc
            .write_direct(piece, &mut |room| {
                assert!(!room.is_empty() && room.len() <= piece);
                let n = room.len().min(rest.len());
                room[..n].copy_from_slice(&rest[..n]);
                Ok(n)
            })
            .expect("write_direct");
        rest = &rest[n..];
    }
    assert_eq!(enc.total_in(), data.len() as u64);
    enc.finish().expect("finish")
}

#[test]
fn direct_writes_give_the_same_stream_as_writes() {
    // Pieces that cross chunk ends and ones that fill chunks exactly; inputs that end inside a
    // chunk and exactly at a chunk end (then an empty final chunk follows, as with `write`).
    let chunk = 64 * 1024;
    for len in [0, 1, 5_000, chunk - 1, chunk, 3 * chunk, 3 * chunk + 777] {
        let data = text_bytes(len, len as u64);
        let expected = encode(&data, 6, 2, chunk);
        for piece in [1_000, 4_096, chunk, 200_000] {
            assert_eq!(
                encode_direct(&data, 2, chunk, piece),
                expected,
                "len {len} piece {piece}"
            );
        }
    }
}

#[test]
fn direct_write_errors_are_returned_and_poison_the_encoder() {
    use crate::bundle::tar::DirectWrite;
    let mut enc = ParallelGzEncoder::with_chunk_size(Vec::new(), 6, 1, 1024).expect("enc");
    // More bytes reported than lent.
    let err = enc
        .write_direct(100, &mut |room| Ok(room.len() + 1))
        .expect_err("overfilled");
    assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    assert!(enc.write(b"x").is_err(), "usable after an error");
    // The fill's own error comes back unchanged.
    let mut enc = ParallelGzEncoder::with_chunk_size(Vec::new(), 6, 1, 1024).expect("enc");
    let err = enc
        .write_direct(100, &mut |_| {
            Err(io::Error::new(io::ErrorKind::TimedOut, Marker))
        })
        .expect_err("fill error");
    assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    assert!(err.get_ref().is_some_and(|e| e.is::<Marker>()), "{err:?}");
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
    let mut enc = ParallelGzEncoder::with_chunk_size(shared.clone(), 6, 2, 64 * 1024).expect("enc");
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

    // A flush right after a chunk filled up: that chunk was held for a partner and must go out.
    let data = text_bytes(3 * 64 * 1024, 13);
    let shared = SharedVec::default();
    let mut enc = ParallelGzEncoder::with_chunk_size(shared.clone(), 6, 2, 64 * 1024).expect("enc");
    enc.write_all(&data).expect("write");
    enc.flush().expect("flush");
    let so_far = shared.0.borrow().clone();
    let mut inflate = flate2::Decompress::new(false);
    let mut out = Vec::with_capacity(200_000);
    inflate
        .decompress_vec(&so_far[10..], &mut out, flate2::FlushDecompress::Sync)
        .expect("inflate");
    assert_eq!(out, data);
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
