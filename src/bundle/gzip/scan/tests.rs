//! Unit tests of the block scanner: libdeflate, zlib and hand-made streams, rejections, corrupted
//! streams against zlib's verdicts, and the paired scan against the single one.

use super::*;
use flate2::{Compress, Compression, FlushCompress, Status};
use libdeflater::{CompressionLvl, Compressor};

use super::super::tests::{random_bytes, text_bytes};

fn libdeflate(data: &[u8], level: i32) -> Vec<u8> {
    let mut c = Compressor::new(CompressionLvl::new(level).expect("level"));
    let mut out = vec![0; c.deflate_compress_bound(data.len())];
    let n = c.deflate_compress(data, &mut out).expect("compress");
    out.truncate(n);
    out
}

fn inflate(stream: &[u8]) -> Vec<u8> {
    let mut d = flate2::Decompress::new(false);
    let mut out = Vec::with_capacity(4 << 20);
    let status = d
        .decompress_vec(stream, &mut out, flate2::FlushDecompress::Finish)
        .expect("inflate");
    assert_eq!(status, Status::StreamEnd);
    assert_eq!(d.total_in() as usize, stream.len());
    out
}

/// Type (BTYPE) of the final block, read from its header at the reported offset.
fn final_block_type(stream: &[u8], end: &StreamEnd) -> u8 {
    let bit = end.final_block_bit + 1;
    let two = u16::from(stream[bit / 8]) | u16::from(*stream.get(bit / 8 + 1).unwrap_or(&0)) << 8;
    ((two >> (bit % 8)) & 3) as u8
}

fn check(stream: &[u8], data: &[u8]) -> StreamEnd {
    let end = scan(stream).expect("scan");
    assert_eq!(end.decoded_len, data.len() as u64);
    assert_eq!(end.end_bit.div_ceil(8), stream.len());
    assert!(end.final_block_bit < end.end_bit);
    // BFINAL is set at the reported header.
    assert_eq!(
        stream[end.final_block_bit / 8] >> (end.final_block_bit % 8) & 1,
        1
    );
    end
}

#[test]
fn scans_libdeflate_streams_of_all_block_types() {
    let inputs: [(&str, Vec<u8>); 5] = [
        ("empty", Vec::new()),
        (
            "tiny",
            b"hello hello hello hello hello hello hello hello hello hello!".to_vec(),
        ),
        ("zeros", vec![0; 700_000]),
        ("text", text_bytes(900_000, 1)),
        ("random", random_bytes(300_000, 2)),
    ];
    let mut seen = [false; 3];
    for level in [1, 6, 9, 12] {
        for (name, data) in &inputs {
            let stream = libdeflate(data, level);
            let end = check(&stream, data);
            let btype = final_block_type(&stream, &end);
            seen[usize::from(btype)] = true;
            match *name {
                // Too short for dynamic tables to pay: a fixed-code block.
                "tiny" => assert_eq!(btype, 1, "level {level}"),
                // libdeflate falls back to stored blocks for incompressible data.
                "random" => assert_eq!(btype, 0, "level {level}"),
                "text" => assert_eq!(btype, 2, "level {level}"),
                _ => {}
            }
            assert_eq!(inflate(&stream), *data, "{name} level {level}");
        }
    }
    assert_eq!(seen, [true; 3]);
}

/// Raw deflate by zlib (flate2): a sync flush after every `piece` bytes, then finish.
fn zlib_with_sync_flushes(data: &[u8], level: u32, piece: usize) -> Vec<u8> {
    let mut c = Compress::new(Compression::new(level), false);
    let mut stream = Vec::with_capacity(data.len() + 1024);
    let pieces: Vec<&[u8]> = data.chunks(piece).collect();
    for (i, piece) in pieces.iter().enumerate() {
        let flush = if i + 1 == pieces.len() {
            FlushCompress::Finish
        } else {
            FlushCompress::Sync
        };
        let start = c.total_in();
        loop {
            stream.reserve(64 * 1024);
            let taken = (c.total_in() - start) as usize;
            let status = c
                .compress_vec(&piece[taken..], &mut stream, flush)
                .expect("compress");
            let taken = (c.total_in() - start) as usize;
            let done = match flush {
                FlushCompress::Finish => status == Status::StreamEnd,
                _ => taken == piece.len() && stream.len() < stream.capacity(),
            };
            if done {
                break;
            }
        }
    }
    stream
}

#[test]
fn scans_zlib_streams_with_sync_flushes() {
    let data = text_bytes(400_000, 3);
    for level in [1, 6, 9] {
        let stream = zlib_with_sync_flushes(&data, level, 50_000);
        let end = check(&stream, &data);
        assert_eq!(inflate(&stream), data);
        // The sync flushes' empty stored blocks (00 00 ff ff after the header bits) lie
        // before the final block.
        let before = &stream[..end.final_block_bit / 8];
        let markers = before
            .windows(4)
            .filter(|w| *w == [0, 0, 0xff, 0xff])
            .count();
        assert!(markers >= 7, "level {level}: {markers} sync markers");
    }
}

#[test]
fn scans_hand_made_stored_and_fixed_streams() {
    // Stored, non-final, with an empty stored block (a sync marker), then a final empty
    // stored block.
    let stream = [
        0x00, 0x03, 0x00, 0xfc, 0xff, b'a', b'b', b'c', 0x00, 0x00, 0x00, 0xff, 0xff, 0x01, 0x00,
        0x00, 0xff, 0xff,
    ];
    let end = check(&stream, b"abc");
    assert_eq!((end.final_block_bit, end.end_bit), (13 * 8, 18 * 8));
    // The smallest fixed block: BFINAL, BTYPE 01, EOB (7 zero bits): 10 bits.
    let end = check(&[0x03, 0x00], b"");
    assert_eq!((end.final_block_bit, end.end_bit), (0, 10));
}

#[test]
fn rejects_truncated_streams() {
    for (data, level) in [
        (text_bytes(100_000, 4), 6),
        (random_bytes(100_000, 5), 1),
        (text_bytes(50, 6), 9),
    ] {
        let stream = libdeflate(&data, level);
        for cut in [
            0,
            1,
            2,
            stream.len() / 3,
            stream.len() / 2,
            stream.len() - 1,
        ] {
            let err = scan(&stream[..cut]).expect_err("truncated stream accepted");
            assert!(
                matches!(err, ScanError::Truncated { .. } | ScanError::Invalid { .. }),
                "cut {cut}: {err:?}"
            );
        }
    }
}

#[test]
fn rejects_trailing_bytes_and_nonzero_padding() {
    let stream = libdeflate(&text_bytes(10_000, 7), 6);
    let mut longer = stream.clone();
    longer.push(0);
    assert!(matches!(
        scan(&longer),
        Err(ScanError::TrailingBytes { count: 1, .. })
    ));
    // [0x03, 0x00] is a final empty fixed block ending at bit 10: bits 10..16 are padding.
    assert!(matches!(
        scan(&[0x03, 0x04]),
        Err(ScanError::NonzeroPadding { end_bit: 10 })
    ));
    // A stream without a final block never ends.
    assert!(matches!(
        scan(&[0x00, 0x00, 0x00, 0xff, 0xff]),
        Err(ScanError::Truncated { .. })
    ));
}

#[test]
fn rejects_malformed_headers() {
    // Reserved block type 3.
    assert!(matches!(
        scan(&[0x07, 0x00]),
        Err(ScanError::Invalid { bit: 1, .. })
    ));
    // Stored block with NLEN not the complement of LEN.
    assert!(matches!(
        scan(&[0x01, 0x01, 0x00, 0xff, 0xff, b'x']),
        Err(ScanError::StoredLength {
            byte: 1,
            len: 1,
            nlen: 0xffff
        })
    ));
    // Dynamic block declaring HLIT = 287 (bits: BFINAL 1, BTYPE 10, HLIT 11110).
    let err = scan(&[0b1111_0101, 0x00, 0x00, 0x00]).expect_err("HLIT 287");
    assert!(matches!(err, ScanError::Invalid { bit: 3, .. }), "{err:?}");
    // Dynamic block whose code-length code is all zero (incomplete).
    let err = scan(&[0x05, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00]).expect_err("empty code");
    assert!(matches!(err, ScanError::Invalid { .. }), "{err:?}");
}

#[test]
fn rejects_distance_before_the_start() {
    // Fixed block: length symbol 257 (match of 3, code 0000001), distance symbol 0
    // (distance 1, code 00000) with nothing decoded yet.
    let mut bits: Vec<u8> = vec![1, 1, 0];
    bits.extend([0, 0, 0, 0, 0, 0, 1]);
    bits.extend([0, 0, 0, 0, 0]);
    bits.extend([0; 7]);
    let mut stream = vec![0u8; bits.len().div_ceil(8)];
    for (i, b) in bits.iter().enumerate() {
        stream[i / 8] |= b << (i % 8);
    }
    assert!(matches!(
        scan(&stream),
        Err(ScanError::DistanceTooFar {
            distance: 1,
            available: 0,
            ..
        })
    ));
}

/// Streams of every shape: the block types, streams shorter and longer than the window,
/// sync-flushed zlib streams, and an empty one.
fn sample_streams() -> Vec<Vec<u8>> {
    let mut streams = vec![
        libdeflate(&text_bytes(300_000, 21), 6),
        libdeflate(&text_bytes(120_000, 22), 9),
        libdeflate(&random_bytes(70_000, 23), 6),
        libdeflate(&[0; 200_000], 1),
        libdeflate(b"tiny tiny tiny tiny tiny", 6),
        libdeflate(&[], 6),
        zlib_with_sync_flushes(&text_bytes(150_000, 24), 6, 40_000),
    ];
    // Text and random data mixed: dynamic and stored blocks alternate.
    let mut mixed = text_bytes(100_000, 25);
    mixed.extend(random_bytes(50_000, 26));
    mixed.extend(text_bytes(100_000, 27));
    streams.push(libdeflate(&mixed, 6));
    streams
}

#[test]
fn scan_pair_agrees_with_scan() {
    let streams = sample_streams();
    for a in &streams {
        for b in &streams {
            assert_eq!(scan_pair(a, b), (scan(a), scan(b)));
        }
    }
}

#[test]
fn scan_pair_agrees_with_scan_on_corrupted_streams() {
    // Bit flips all through two long streams (most land after the first 32 KiB, where the
    // pair loop decodes), truncations, and trailing bytes, each paired with an intact and a
    // corrupted partner: every verdict and error is the one `scan` gives.
    let a = libdeflate(&text_bytes(300_000, 31), 6);
    let b = libdeflate(&text_bytes(250_000, 32), 9);
    let noise = random_bytes(4_096, 33);
    let mut rejected = 0;
    for (i, step) in (0..a.len() * 8).step_by(997).enumerate() {
        let mut bad_a = a.clone();
        bad_a[step / 8] ^= 1 << (step % 8);
        let mut bad_b = b.clone();
        let bit = usize::from(noise[i % noise.len()]) * 1_000 + i * 131;
        let bit = bit % (b.len() * 8);
        bad_b[bit / 8] ^= 1 << (bit % 8);
        for (x, y) in [
            (&bad_a, &b),
            (&a, &bad_b),
            (&bad_a, &bad_b),
            (&bad_b, &bad_a),
        ] {
            let (rx, ry) = scan_pair(x, y);
            assert_eq!(rx, scan(x), "flip {step}");
            assert_eq!(ry, scan(y), "flip {step}");
            rejected += usize::from(rx.is_err()) + usize::from(ry.is_err());
        }
    }
    // Most flips only turn one literal into another; enough are errors to test their paths.
    assert!(rejected > 40, "only {rejected} corrupted streams rejected");
    for cut in [
        0,
        1,
        7,
        8,
        9,
        100,
        5_000,
        a.len() / 2,
        a.len() - 9,
        a.len() - 1,
    ] {
        let short = &a[..cut];
        assert_eq!(scan_pair(short, &b), (scan(short), scan(&b)), "cut {cut}");
        assert_eq!(scan_pair(&b, short), (scan(&b), scan(short)), "cut {cut}");
    }
    let mut long = b.clone();
    long.extend([0, 1]);
    assert_eq!(scan_pair(&a, &long), (scan(&a), scan(&long)));
}

/// zlib's verdict on a raw deflate stream: the decoded length if it inflates to the end of a
/// final block using exactly all the bytes.
fn zlib_verdict(stream: &[u8]) -> Option<u64> {
    let mut d = flate2::Decompress::new(false);
    let mut out = Vec::with_capacity(8 << 20);
    match d.decompress_vec(stream, &mut out, flate2::FlushDecompress::Finish) {
        Ok(Status::StreamEnd) if d.total_in() as usize == stream.len() => Some(d.total_out()),
        _ => None,
    }
}

/// The scanner must agree with zlib's inflate, which checks the same structure, except that
/// zlib ignores the padding after the final block, which the scanner requires to be zero.
fn assert_agrees_with_zlib(stream: &[u8], ctx: &str) -> bool {
    match (scan(stream), zlib_verdict(stream)) {
        (Ok(end), Some(len)) => {
            assert_eq!(end.decoded_len, len, "{ctx}");
            true
        }
        (Err(ScanError::NonzeroPadding { .. }), Some(_)) | (Err(_), None) => false,
        (Ok(end), None) => panic!("{ctx}: scanner accepted what zlib rejects: {end:?}"),
        (Err(err), Some(_)) => panic!("{ctx}: scanner rejected what zlib accepts: {err}"),
    }
}

#[test]
fn corrupted_streams_agree_with_zlib() {
    // Every single-bit flip of short dynamic, fixed and stored streams: the scanner accepts
    // exactly what zlib accepts (many flips only change a literal), never panics or hangs.
    let cases = [
        (text_bytes(2_000, 8), 6),
        (
            b"abcabcabcabcabcabcabcabcabcabcabcabcabcabcabcabcabcabcabcabcabc".to_vec(),
            9,
        ),
        (random_bytes(300, 11), 1),
    ];
    for (data, level) in &cases {
        let stream = libdeflate(data, *level);
        let mut rejected = 0;
        for bit in 0..stream.len() * 8 {
            let mut bad = stream.clone();
            bad[bit / 8] ^= 1 << (bit % 8);
            if !assert_agrees_with_zlib(&bad, &format!("level {level} bit {bit}")) {
                rejected += 1;
            }
        }
        assert!(rejected > 0, "level {level}: no flip rejected");
    }
    // Bytes scrambled throughout a long stream.
    let long = libdeflate(&text_bytes(200_000, 9), 9);
    let noise = random_bytes(long.len(), 10);
    for step in [97, 1_009, 20_011] {
        let mut bad = long.clone();
        for i in (0..bad.len()).step_by(step) {
            bad[i] ^= noise[i] | 1;
        }
        assert!(!assert_agrees_with_zlib(&bad, &format!("step {step}")));
    }
}
