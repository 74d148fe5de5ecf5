//! Unit tests of the header, the sparse map and the writer, and round trips through the reader,
//! against GNU tar and the reference vectors; the fixtures here are shared with the reader's
//! own tests in `reader`.
//!
//! Bare § numbers in this module refer to docs/format.md.

mod reader;

use std::fs::File;
use std::io::{self, Cursor, Read, Seek, SeekFrom};
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::process::Command;
use std::time::{Duration, SystemTime};

use super::header::*;
use super::reader::is_zero;
use super::*;
use crate::bundle::digest::sha1_hex;

const KIB: u64 = 1024;
const MIB: u64 = 1024 * 1024;
const GIB: u64 = 1024 * MIB;

fn meta(name: &str) -> MemberMeta {
    MemberMeta {
        name: name.to_owned(),
        mode: 0o644,
        mtime: 1_700_000_000,
    }
}

fn region(offset: u64, len: u64) -> DataRegion {
    DataRegion { offset, len }
}

/// Deterministic non-zero content for byte `pos` of a test image.
fn pattern(pos: u64) -> u8 {
    (pos % 251) as u8 + 1
}

/// An image of `size` bytes that reads `pattern` inside `regions` and zeros elsewhere,
/// without allocating it.
struct Synth {
    size: u64,
    regions: Vec<DataRegion>,
    pos: u64,
}

impl Read for Synth {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = buf.len().min((self.size.saturating_sub(self.pos)) as usize);
        for (i, b) in buf[..n].iter_mut().enumerate() {
            let p = self.pos + i as u64;
            let inside = self.regions.iter().any(|r| r.offset <= p && p < r.end());
            *b = if inside { pattern(p) } else { 0 };
        }
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for Synth {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        match pos {
            SeekFrom::Start(p) => self.pos = p,
            _ => unreachable!("the writer only seeks from the start"),
        }
        Ok(self.pos)
    }
}

/// Image bytes with `pattern` inside `regions`.
fn image_bytes(size: u64, regions: &[DataRegion]) -> Vec<u8> {
    let mut v = vec![0u8; size as usize];
    for r in regions {
        for p in r.offset..r.end() {
            v[p as usize] = pattern(p);
        }
    }
    v
}

fn write_vec<R: Read + Seek>(image: &mut R, meta: &MemberMeta, map: &SparseMap) -> Vec<u8> {
    let mut out = Vec::new();
    let n = write_stream(image, meta, map, &mut out, &mut |_| {}).unwrap();
    assert_eq!(n, out.len() as u64);
    out
}

fn stream_for(size: u64, regions: &[DataRegion]) -> Vec<u8> {
    let map = SparseMap::new(size, regions.to_vec()).unwrap();
    write_vec(
        &mut Cursor::new(image_bytes(size, regions)),
        &meta("image.img"),
        &map,
    )
}

fn numeric(value: u64, width: usize) -> Vec<u8> {
    let mut f = vec![0xaau8; width];
    put_numeric(&mut f, value);
    f
}

fn fix_checksum(block: &mut [u8]) {
    block[CHKSUM].fill(b' ');
    let sum: u64 = block[..BLOCK].iter().map(|&b| u64::from(b)).sum();
    block[CHKSUM].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
}

/// A hand-built header block with a valid checksum.
fn raw_header(name: &[u8], typeflag: u8, size: u64, magic: &[u8; 8]) -> Vec<u8> {
    let mut h = vec![0u8; BLOCK];
    h[..name.len()].copy_from_slice(name);
    put_numeric(&mut h[MODE], 0o644);
    put_numeric(&mut h[UID], 0);
    put_numeric(&mut h[GID], 0);
    put_numeric(&mut h[SIZE], size);
    put_numeric(&mut h[MTIME], 1_700_000_000);
    h[TYPEFLAG] = typeflag;
    h[MAGIC].copy_from_slice(magic);
    fix_checksum(&mut h);
    h
}

fn padded(mut data: Vec<u8>) -> Vec<u8> {
    data.resize(padded_len(data.len() as u64) as usize, 0);
    data
}

fn read_all(stream: &[u8]) -> Result<(MemberInfo, Vec<u8>), TarError> {
    let mut reader = TarReader::new(stream);
    let info = reader.read_member_header()?;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("out");
    let mut file = File::options()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .unwrap();
    reader.extract_to(Some(&mut file), &mut |_| {})?;
    Ok((info, std::fs::read(&path).unwrap()))
}

fn entry_at(block: &[u8], index: usize) -> (Vec<u8>, Vec<u8>) {
    let e = &block[24 * index..24 * index + 24];
    (e[..12].to_vec(), e[12..].to_vec())
}

#[test]
fn numeric_fields_octal_and_base256() {
    assert_eq!(numeric(8_589_934_591, 12), b"77777777777\0");
    assert_eq!(
        numeric(8_589_934_592, 12),
        [0x80, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0]
    );
    assert_eq!(
        numeric(10 * GIB, 12),
        [0x80, 0, 0, 0, 0, 0, 0, 2, 0x80, 0, 0, 0]
    );
    assert_eq!(numeric(0o644, 8), b"0000644\0");
    assert_eq!(numeric(3000, 12), b"00000005670\0");
    assert_eq!(numeric(2_097_151, 8), b"7777777\0");
    assert_eq!(numeric(2_097_152, 8), [0x80, 0, 0, 0, 0, 0x20, 0, 0]);
    for (value, width) in [
        (0, 12),
        (8_589_934_591, 12),
        (8_589_934_592, 12),
        (10 * GIB, 12),
        (u64::MAX, 12),
        (2_097_152, 8),
    ] {
        assert_eq!(parse_numeric(&numeric(value, width)), Ok(value));
    }
}

#[test]
fn numeric_parser_is_lenient_like_gnu_tar() {
    assert_eq!(parse_numeric(b"  644 \0\0"), Ok(0o644));
    assert_eq!(parse_numeric(b"0000644 "), Ok(0o644));
    assert_eq!(parse_numeric(b"\0 000644"), Ok(0o644));
    assert_eq!(parse_numeric(b"\0\0\0\0\0\0\0\0"), Ok(0));
    assert!(parse_numeric(b"00006x4\0").is_err());
    assert!(parse_numeric(b"0000694\0").is_err());
    assert!(parse_numeric(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xfe]).is_err());
    // 2^64 does not fit.
    assert!(parse_numeric(&[0x80, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0]).is_err());
    assert!(parse_numeric(b"7777777777777777777777\0").is_err());
}

#[test]
fn dense_header_layout_matches_the_table() {
    let map = SparseMap::dense(3000);
    assert!(!map.is_sparse());
    let h = header_blocks(&meta("image.img"), &map).unwrap();
    assert_eq!(h.len(), BLOCK);
    assert_eq!(&h[..9], b"image.img");
    assert!(h[9..100].iter().all(|&b| b == 0));
    assert_eq!(&h[100..108], b"0000644\0");
    assert_eq!(&h[108..116], b"0000000\0");
    assert_eq!(&h[116..124], b"0000000\0");
    assert_eq!(&h[124..136], b"00000005670\0");
    assert_eq!(&h[136..148], b"14524770400\0"); // 1_700_000_000
    assert_eq!(h[156], b'0');
    assert!(h[157..257].iter().all(|&b| b == 0));
    assert_eq!(&h[257..265], b"ustar  \0");
    assert_eq!(&h[265..269], b"root");
    assert!(h[269..297].iter().all(|&b| b == 0));
    assert_eq!(&h[297..301], b"root");
    assert!(h[301..512].iter().all(|&b| b == 0));
    // Checksum: six octal digits, NUL, space; the unsigned sum with the field as spaces.
    assert_eq!(&h[154..156], b"\0 ");
    let stored = u64::from_str_radix(std::str::from_utf8(&h[148..154]).unwrap(), 8).unwrap();
    let expected: u64 = h
        .iter()
        .enumerate()
        .map(|(i, &b)| {
            if (148..156).contains(&i) {
                32
            } else {
                u64::from(b)
            }
        })
        .sum();
    assert_eq!(stored, expected);
    check_header(&h, 0).unwrap();
}

#[test]
fn hundred_byte_name_fills_the_field_and_longer_is_rejected() {
    let name = "n".repeat(100);
    let h = header_blocks(&meta(&name), &SparseMap::dense(1)).unwrap();
    assert_eq!(&h[..100], name.as_bytes());
    assert_eq!(&h[100..108], b"0000644\0");
    assert!(matches!(
        header_blocks(&meta(&"n".repeat(101)), &SparseMap::dense(1)),
        Err(TarError::InvalidName { .. })
    ));
    for bad in ["", ".", "..", "a/b", "a\0b"] {
        assert!(matches!(
            header_blocks(&meta(bad), &SparseMap::dense(1)),
            Err(TarError::InvalidName { .. })
        ));
    }
    let mut m = meta("x");
    m.mode = 0o100644;
    assert!(matches!(
        header_blocks(&m, &SparseMap::dense(1)),
        Err(TarError::InvalidMode { .. })
    ));
}

#[test]
fn sparse_map_new_normalizes_and_validates() {
    let map = SparseMap::new(
        10_000,
        vec![
            region(100, 100),
            region(600, 10),
            region(2048, 512),
            region(2560, 1),
            region(9000, 0),
            region(9990, 10),
        ],
    )
    .unwrap();
    // Widened to 512, touching regions merged, empty ones dropped, end clamped to size.
    assert_eq!(
        map.regions(),
        [region(0, 1024), region(2048, 1024), region(9728, 272)]
    );
    assert!(map.is_sparse());
    assert_eq!(map.data_bytes(), 1024 + 1024 + 272);
    let bad = [
        vec![region(1000, 10), region(500, 10)],
        vec![region(0, 100), region(50, 100)],
        vec![region(9999, 2)],
        vec![region(u64::MAX, 2)],
    ];
    for regions in bad {
        assert!(matches!(
            SparseMap::new(10_000, regions),
            Err(TarError::InvalidMap { .. })
        ));
    }
    let full = SparseMap::new(1000, vec![region(0, 600), region(600, 400)]).unwrap();
    assert!(!full.is_sparse());
    assert_eq!(full, SparseMap::dense(1000));
    assert!(SparseMap::new(1000, vec![]).unwrap().is_sparse());
}

/// §14.4 item 5: 0, 3, 4, 24 and 25 data regions, ending in a hole or in data.
#[test]
fn sparse_map_placement_and_stream_len() {
    for (count, ext_blocks) in [(0, 0), (3, 0), (4, 1), (24, 1), (25, 2)] {
        for ends_in_data in [false, true] {
            let mut regions: Vec<DataRegion> =
                (0..count).map(|i| region(2048 * i + 1024, 512)).collect();
            let mut size = 2048 * count + 4096;
            if ends_in_data && count > 0 {
                // Last region ends exactly at an unaligned size.
                size = 2048 * (count - 1) + 1024 + 300;
                regions.last_mut().unwrap().len = 300;
            }
            let map = SparseMap::new(size, regions.clone()).unwrap();
            assert_eq!(map.regions(), &regions[..]);
            let ctx = format!("{count} regions, ends in data: {ends_in_data}");
            let h = header_blocks(&meta("image.img"), &map).unwrap();
            assert_eq!(h.len(), BLOCK * (1 + ext_blocks), "{ctx}");
            assert_eq!(h[TYPEFLAG], b'S', "{ctx}");
            assert_eq!(h[IS_EXTENDED], u8::from(ext_blocks > 0), "{ctx}");
            assert_eq!(parse_numeric(&h[REALSIZE]), Ok(size), "{ctx}");
            assert_eq!(parse_numeric(&h[SIZE]), Ok(map.data_bytes()), "{ctx}");
            // All entries in order, terminal (size, 0) last, unused slots all NUL.
            let mut expected: Vec<(u64, u64)> = regions.iter().map(|r| (r.offset, r.len)).collect();
            expected.push((size, 0));
            let mut slots: Vec<&[u8]> = h[SPARSE_SLOTS..IS_EXTENDED].chunks(24).collect();
            for (b, block) in h[BLOCK..].chunks(BLOCK).enumerate() {
                assert_eq!(
                    block[EXT_IS_EXTENDED],
                    u8::from(b + 1 < ext_blocks),
                    "{ctx}"
                );
                assert!(block[505..].iter().all(|&x| x == 0), "{ctx}");
                slots.extend(block[..EXT_IS_EXTENDED].chunks(24));
            }
            for (i, slot) in slots.iter().enumerate() {
                match expected.get(i) {
                    Some(&(o, n)) => {
                        assert_eq!(slot[..12], numeric(o, 12)[..], "{ctx} entry {i}");
                        assert_eq!(slot[12..], numeric(n, 12)[..], "{ctx} entry {i}");
                    }
                    None => assert!(slot.iter().all(|&x| x == 0), "{ctx} slot {i}"),
                }
            }
            if count == 25 {
                // The second extension block holds only the terminal entry.
                let second = &h[3 * BLOCK - BLOCK..];
                assert_eq!(entry_at(second, 0), (numeric(size, 12), numeric(0, 12)));
                assert!(second[24..EXT_IS_EXTENDED].iter().all(|&x| x == 0));
            }
            // The whole stream: exactly stream_len bytes, data is the regions' bytes.
            let image = image_bytes(size, &regions);
            let out = write_vec(&mut Cursor::new(image.clone()), &meta("image.img"), &map);
            assert_eq!(out.len() as u64, stream_len(&map), "{ctx}");
            let data: Vec<u8> = regions
                .iter()
                .flat_map(|r| image[r.offset as usize..r.end() as usize].to_vec())
                .collect();
            let start = h.len();
            assert_eq!(out[..start], h[..]);
            assert_eq!(out[start..start + data.len()], data[..], "{ctx}");
            assert!(out[start + data.len()..].iter().all(|&x| x == 0), "{ctx}");
            let l = BLOCK as u64 * (1 + ext_blocks as u64)
                + regions.iter().map(|r| padded_len(r.len)).sum::<u64>()
                + 1024;
            assert_eq!(stream_len(&map), l.div_ceil(10_240) * 10_240, "{ctx}");
            // And it reads back.
            let (info, extracted) = read_all(&out).unwrap();
            assert_eq!(info.map, map, "{ctx}");
            assert!(info.sparse);
            assert_eq!(extracted, image, "{ctx}");
        }
    }
}

#[test]
fn all_hole_and_empty_images() {
    let hole = SparseMap::new(5 * MIB, vec![]).unwrap();
    let h = header_blocks(&meta("image.img"), &hole).unwrap();
    assert_eq!(h.len(), BLOCK);
    assert_eq!(h[TYPEFLAG], b'S');
    assert_eq!(&h[SIZE], b"00000000000\0");
    assert_eq!(
        entry_at(&h[SPARSE_SLOTS..], 0),
        (numeric(5 * MIB, 12), numeric(0, 12))
    );
    assert!(h[SPARSE_SLOTS + 24..IS_EXTENDED].iter().all(|&b| b == 0));
    let mut synth = Synth {
        size: 5 * MIB,
        regions: vec![],
        pos: 0,
    };
    let out = write_vec(&mut synth, &meta("image.img"), &hole);
    assert_eq!(out.len(), 10_240);
    let (info, extracted) = read_all(&out).unwrap();
    assert_eq!(info.size, 5 * MIB);
    assert!(extracted.len() as u64 == 5 * MIB && is_zero(&extracted));

    let empty = SparseMap::dense(0);
    let out = write_vec(&mut Cursor::new(Vec::new()), &meta("e"), &empty);
    assert_eq!(out[TYPEFLAG], b'0');
    assert_eq!(out.len(), 10_240);
    let (info, extracted) = read_all(&out).unwrap();
    assert_eq!((info.size, info.sparse), (0, false));
    assert!(extracted.is_empty());
}

/// docs/format.md §3.5 worked example (test vector v3).
#[test]
fn worked_example_v3() {
    let islands: Vec<DataRegion> = (0..12).map(|k| region((2 + 8 * k) * MIB, 4096)).collect();
    let map = SparseMap::new(128 * MIB, islands.clone()).unwrap();
    let h = header_blocks(&meta("holes.img"), &map).unwrap();
    assert_eq!(h.len(), 2 * BLOCK);
    assert_eq!(parse_numeric(&h[SIZE]), Ok(49_152));
    assert_eq!(
        entry_at(&h[SPARSE_SLOTS..], 0),
        (b"00010000000\0".to_vec(), b"00000010000\0".to_vec())
    );
    assert_eq!(h[IS_EXTENDED], 1);
    assert_eq!(&h[REALSIZE], b"01000000000\0");
    let ext = &h[BLOCK..];
    assert_eq!(
        entry_at(ext, 8),
        (b"01000000000\0".to_vec(), b"00000000000\0".to_vec())
    );
    assert!(ext[9 * 24..].iter().all(|&b| b == 0));
    assert_eq!(stream_len(&map), 51_200);
    let mut synth = Synth {
        size: 128 * MIB,
        regions: islands.clone(),
        pos: 0,
    };
    let mut progress = Vec::new();
    let mut out = Vec::new();
    let n = write_stream(&mut synth, &meta("holes.img"), &map, &mut out, &mut |d| {
        progress.push(d)
    })
    .unwrap();
    assert_eq!(n, 51_200);
    assert_eq!(out.len(), 51_200);
    assert_eq!(progress.last(), Some(&49_152));
    assert!(progress.windows(2).all(|w| w[0] <= w[1]));
    assert!(out[1024..1024 + 4096].iter().all(|&b| b != 0));
    assert!(out[50_176..].iter().all(|&b| b == 0));
}

#[test]
fn short_image_is_reported_with_offset() {
    let map = SparseMap::new(10_000, vec![region(4096, 4096)]).unwrap();
    let mut image = Cursor::new(vec![1u8; 6000]);
    let err = write_stream(&mut image, &meta("i"), &map, &mut Vec::new(), &mut |_| {}).unwrap_err();
    assert!(
        matches!(
            err,
            TarError::ImageShort {
                offset: 6000,
                expected_end: 8192
            }
        ),
        "{err:?}"
    );
}

/// A [`DirectWrite`] into a `Vec` that lends rooms of at most `room` bytes, or none at all, or
/// fails after `fail_after` bytes.
struct Lender {
    out: Vec<u8>,
    room: usize,
    lends: bool,
    fail_after: Option<usize>,
}

impl Lender {
    fn new(room: usize) -> Self {
        Self {
            out: Vec::new(),
            room,
            lends: true,
            fail_after: None,
        }
    }

    fn check(&self) -> io::Result<()> {
        match self.fail_after {
            Some(limit) if self.out.len() >= limit => Err(io::Error::other("lender full")),
            _ => Ok(()),
        }
    }
}

impl io::Write for Lender {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.check()?;
        self.out.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl DirectWrite for Lender {
    fn write_direct(
        &mut self,
        max: usize,
        fill: &mut dyn FnMut(&mut [u8]) -> io::Result<usize>,
    ) -> io::Result<usize> {
        self.check()?;
        if !self.lends {
            return Ok(0);
        }
        // A room that never lines up with the 128 KiB reads.
        let mut room = vec![0xAA; max.min(self.room)];
        let n = fill(&mut room)?;
        self.out.extend_from_slice(&room[..n]);
        Ok(n)
    }
}

#[test]
fn direct_writes_give_the_same_stream_as_writes() {
    let size = 3 * MIB + 100;
    let regions = [region(0, 300 * KIB), region(MIB, 2 * MIB + 100)];
    let map = SparseMap::new(size, regions.to_vec()).unwrap();
    let expected = stream_for(size, &regions);
    let dense = write_vec(
        &mut Cursor::new(image_bytes(size, &[])),
        &meta("d"),
        &SparseMap::dense(size),
    );
    for room in [1, 1000, 100_003, 1 << 20] {
        let mut out = Lender::new(room);
        let mut image = Cursor::new(image_bytes(size, &regions));
        let n = write_stream_direct(&mut image, &meta("image.img"), &map, &mut out, &mut |_| {})
            .unwrap();
        assert_eq!(n, expected.len() as u64);
        assert!(out.out == expected, "room {room}");

        let mut out = Lender::new(room);
        let zeros = image_bytes(size, &[]);
        write_stream_from_reader_direct(&mut &zeros[..], &meta("d"), size, &mut out, &mut |_| {})
            .unwrap();
        assert!(out.out == dense, "room {room}");
    }
}

#[test]
fn direct_write_errors_name_their_side() {
    let map = SparseMap::dense(1 << 20);
    // The writer's error: WriteStream at the offset reached.
    let mut out = Lender::new(4096);
    out.fail_after = Some(100_000);
    let mut image = Cursor::new(vec![1u8; 1 << 20]);
    let err = write_stream_direct(&mut image, &meta("i"), &map, &mut out, &mut |_| {}).unwrap_err();
    assert!(
        matches!(err, TarError::WriteStream { offset, .. } if offset == out.out.len() as u64),
        "{err:?}"
    );
    // The image's error: ReadImage at the image offset, with the reader's own error.
    struct Broken;
    impl Read for Broken {
        fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
            Err(io::Error::new(io::ErrorKind::TimedOut, "disk gone"))
        }
    }
    impl Seek for Broken {
        fn seek(&mut self, _: SeekFrom) -> io::Result<u64> {
            Ok(0)
        }
    }
    let err = write_stream_direct(
        &mut Broken,
        &meta("i"),
        &map,
        &mut Lender::new(4096),
        &mut |_| {},
    )
    .unwrap_err();
    match err {
        TarError::ReadImage { offset: 0, source } => {
            assert_eq!(source.kind(), io::ErrorKind::TimedOut);
            assert_eq!(source.to_string(), "disk gone");
        }
        other => panic!("{other:?}"),
    }
    let err = write_stream_from_reader_direct(
        &mut Broken,
        &meta("i"),
        10,
        &mut Lender::new(4096),
        &mut |_| {},
    )
    .unwrap_err();
    assert!(
        matches!(err, TarError::ReadImage { offset: 0, .. }),
        "{err:?}"
    );
    // A writer that lends no room is an error, not a wait for data forever.
    let mut out = Lender::new(4096);
    out.lends = false;
    let mut image = Cursor::new(vec![1u8; 1 << 20]);
    let err = write_stream_direct(&mut image, &meta("i"), &map, &mut out, &mut |_| {}).unwrap_err();
    assert!(
        matches!(&err, TarError::WriteStream { offset: 512, source } if source.to_string().contains("no room")),
        "{err:?}"
    );
}

#[test]
fn write_from_reader_exact_short_long() {
    let data: Vec<u8> = (0..5000u64).map(pattern).collect();
    let m = meta("stdin.img");
    let mut out = Vec::new();
    let n = write_stream_from_reader(&mut &data[..], &m, 5000, &mut out, &mut |_| {}).unwrap();
    assert_eq!(n, out.len() as u64);
    let via_seek = write_vec(&mut Cursor::new(data.clone()), &m, &SparseMap::dense(5000));
    assert_eq!(out, via_seek);
    let err = write_stream_from_reader(&mut &data[..], &m, 6000, &mut Vec::new(), &mut |_| {})
        .unwrap_err();
    assert!(
        matches!(
            err,
            TarError::InputShort {
                got: 5000,
                expected: 6000
            }
        ),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        "input ended after 5000 bytes, expected exactly 6000 bytes"
    );
    let err = write_stream_from_reader(&mut &data[..], &m, 4000, &mut Vec::new(), &mut |_| {})
        .unwrap_err();
    assert!(
        matches!(err, TarError::InputLong { expected: 4000 }),
        "{err:?}"
    );
}

#[test]
fn write_from_regions_equals_the_seeking_writer_and_refuses_short_or_long_data() {
    // Islands (one of them the image's tail), holes between: the regions' bytes in order.
    let size = 3 * MIB;
    let regions = [
        region(0, 512 * KIB),
        region(MIB, 1536 * KIB),
        region(3 * MIB - 512 * KIB, 512 * KIB),
    ];
    let map = SparseMap::new(size, regions.to_vec()).unwrap();
    assert_eq!(map.regions().len(), 2, "touching regions are merged");
    let image = image_bytes(size, &regions);
    let data: Vec<u8> = map
        .regions()
        .iter()
        .flat_map(|r| image[r.offset as usize..r.end() as usize].iter().copied())
        .collect();
    let m = meta("snap.img");
    let mut out = Vec::new();
    let mut seen = Vec::new();
    let n = write_stream_from_regions(&mut &data[..], &m, &map, &mut out, &mut |d| seen.push(d))
        .unwrap();
    assert_eq!(n, out.len() as u64);
    assert_eq!(n, stream_len(&map));
    assert_eq!(out, write_vec(&mut Cursor::new(image.clone()), &m, &map));
    assert_eq!(
        seen.last(),
        Some(&map.data_bytes()),
        "progress reaches the data size"
    );
    assert!(seen.windows(2).all(|w| w[0] <= w[1]));
    let (info, back) = read_all(&out).unwrap();
    assert!(info.sparse);
    assert_eq!(back, image);

    let short = &data[..data.len() - 1];
    let err = write_stream_from_regions(&mut &short[..], &m, &map, &mut Vec::new(), &mut |_| {})
        .unwrap_err();
    assert!(
        matches!(err, TarError::InputShort { got, expected } if got == expected - 1 && expected == map.data_bytes()),
        "{err:?}"
    );
    let mut long = data.clone();
    long.push(0);
    let err = write_stream_from_regions(&mut &long[..], &m, &map, &mut Vec::new(), &mut |_| {})
        .unwrap_err();
    assert!(matches!(err, TarError::InputLong { .. }), "{err:?}");

    // A failing source fails the stream, naming the image offset it was reading.
    struct Failing;
    impl Read for Failing {
        fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
            Err(io::Error::other("block 7 is corrupt"))
        }
    }
    let err = write_stream_from_regions(&mut Failing, &m, &map, &mut Vec::new(), &mut |_| {})
        .unwrap_err();
    assert!(
        matches!(err, TarError::ReadImage { offset: 0, .. }),
        "{err:?}"
    );
}

fn sparse_temp_file(dir: &std::path::Path, name: &str, size: u64, islands: &[u64]) -> File {
    let path = dir.join(name);
    let file = File::options()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .unwrap();
    file.set_len(size).unwrap();
    for &at in islands {
        let chunk: Vec<u8> = (at..at + 4096).map(pattern).collect();
        file.write_all_at(&chunk, at).unwrap();
    }
    file.sync_all().unwrap();
    file.set_permissions(std::fs::Permissions::from_mode(0o644))
        .unwrap();
    file.set_modified(SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000))
        .unwrap();
    file
}

fn gnu_tar(args: &[&str]) {
    let status = Command::new("tar").args(args).status().unwrap();
    assert!(status.success(), "tar {args:?} failed");
}

/// Our writer, fed `from_file`, reproduces GNU tar 1.34's `tar -c -S` byte for byte, and
/// GNU tar extracts our stream to an identical, still sparse file.
#[test]
fn golden_against_gnu_tar() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let cases: [(&str, u64, Vec<u64>); 3] = [
        // Islands at 512-aligned (not 4 KiB-aligned) offsets and one at the very end.
        (
            "ends-in-data.img",
            8 * MIB,
            vec![1536, MIB + 512, 3 * MIB, 8 * MIB - 4096],
        ),
        ("ends-in-hole.img", 8 * MIB, vec![0, 5 * MIB + 512]),
        (
            "many.img",
            8 * MIB,
            (0..30).map(|k| k * 256 * KIB).collect(),
        ),
    ];
    let mut files: Vec<(String, File)> = cases
        .iter()
        .map(|(n, s, i)| (n.to_string(), sparse_temp_file(d, n, *s, i)))
        .collect();
    // A dense file.
    let dense: Vec<u8> = (0..100_000u64).map(pattern).collect();
    std::fs::write(d.join("dense.img"), &dense).unwrap();
    let f = File::open(d.join("dense.img")).unwrap();
    f.set_permissions(std::fs::Permissions::from_mode(0o644))
        .unwrap();
    f.set_modified(SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000))
        .unwrap();
    files.push(("dense.img".to_owned(), f));

    for (name, file) in &mut files {
        let theirs = d.join(format!("{name}.gnu.tar"));
        let src = d.to_str().unwrap();
        gnu_tar(&[
            "-c",
            "-S",
            "--owner",
            "0",
            "--group",
            "0",
            "-b",
            "20",
            "-f",
            theirs.to_str().unwrap(),
            "-C",
            src,
            name,
        ]);
        let theirs = std::fs::read(&theirs).unwrap();
        let map = SparseMap::from_file(file).unwrap();
        assert_eq!(map.is_sparse(), name != "dense.img", "{name}");
        let ours = write_vec(file, &meta(name), &map);
        assert_eq!(ours.len(), theirs.len(), "{name}");
        assert!(ours == theirs, "{name}: our stream differs from GNU tar's");

        let ours_path = d.join(format!("{name}.ours.tar"));
        std::fs::write(&ours_path, &ours).unwrap();
        let out = d.join(format!("x-{name}"));
        std::fs::create_dir(&out).unwrap();
        gnu_tar(&[
            "-x",
            "-f",
            ours_path.to_str().unwrap(),
            "-C",
            out.to_str().unwrap(),
        ]);
        let extracted = out.join(&name);
        assert!(
            std::fs::read(&extracted).unwrap() == std::fs::read(d.join(&name)).unwrap(),
            "{name}: GNU tar extracted different bytes"
        );
        let md = std::fs::metadata(&extracted).unwrap();
        if name != "dense.img" {
            assert!(md.blocks() * 512 <= 1024 * KIB, "{name} not sparse: {md:?}");
        }
    }
}

/// Base-256 map entries and realsize: a 9 GiB sparse file with data beyond 8 GiB.
#[test]
fn round_trip_beyond_8_gib() {
    let dir = tempfile::tempdir().unwrap();
    let far = 8 * GIB + 3 * 4096;
    let mut file = sparse_temp_file(dir.path(), "big.img", 9 * GIB, &[100 * KIB, far]);
    let map = SparseMap::from_file(&file).unwrap();
    assert_eq!(map.size(), 9 * GIB);
    assert!(map.regions().iter().any(|r| r.offset >= 8 * GIB));
    assert!(map.data_bytes() <= 64 * KIB, "{map:?}");
    let stream = write_vec(&mut file, &meta("big.img"), &map);
    assert_eq!(stream.len() as u64, stream_len(&map));
    assert_eq!(stream[REALSIZE.start], 0x80);
    assert_eq!(
        stream[SPARSE_SLOTS + 24],
        0x80,
        "second entry offset is base-256"
    );

    let mut reader = TarReader::new(&stream[..]);
    let info = reader.read_member_header().unwrap();
    assert_eq!(info.map, map);
    assert_eq!(info.size, 9 * GIB);
    let out_path = dir.path().join("out.img");
    let mut out = File::options()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&out_path)
        .unwrap();
    reader.extract_to(Some(&mut out), &mut |_| {}).unwrap();
    let md = out.metadata().unwrap();
    assert_eq!(md.len(), 9 * GIB);
    assert!(
        md.blocks() * 512 <= 256 * KIB,
        "not sparse: {} blocks",
        md.blocks()
    );
    for at in [100 * KIB, far] {
        let mut buf = vec![0u8; 4096];
        out.read_exact_at(&mut buf, at).unwrap();
        assert!(buf.iter().zip(at..).all(|(&b, p)| b == pattern(p)));
    }
    let mut buf = vec![1u8; 4096];
    out.read_exact_at(&mut buf, 4 * GIB).unwrap();
    assert!(is_zero(&buf));
}

#[test]
fn round_trip_dense_and_zero_blocks_become_holes() {
    // A dense member whose data has a long all-zero stretch: extraction leaves a hole.
    let mut image: Vec<u8> = (0..3 * MIB + 100).map(pattern).collect();
    image[4096..2 * MIB as usize + 4096].fill(0);
    let stream = write_vec(
        &mut Cursor::new(image.clone()),
        &meta("dense.img"),
        &SparseMap::dense(image.len() as u64),
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("out");
    let mut file = File::options()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .unwrap();
    // Pre-existing content must not survive (holes read as zeros).
    file.write_all_at(&vec![0xee; 4 * MIB as usize], 0).unwrap();
    let mut reader = TarReader::new(&stream[..]);
    let info = reader.read_member_header().unwrap();
    assert!(!info.sparse);
    assert_eq!(
        (info.name.as_str(), info.mode, info.mtime, info.size),
        ("dense.img", 0o644, 1_700_000_000, image.len() as u64)
    );
    let mut progress = 0;
    let rest = reader
        .extract_to(Some(&mut file), &mut |d| progress = d)
        .unwrap();
    assert!(rest.is_empty(), "input read to EOF");
    assert_eq!(progress, image.len() as u64);
    assert!(std::fs::read(&path).unwrap() == image);
    let blocks = file.metadata().unwrap().blocks() * 512;
    assert!(blocks < 2 * MIB, "zero blocks were written: {blocks}");
    // Verification without output reads the whole stream too.
    let rest = TarReader::new(&stream[..])
        .extract_to(None, &mut |_| {})
        .unwrap();
    assert!(rest.is_empty());
}

#[test]
fn from_file_of_dense_and_empty_files() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("d");
    std::fs::write(&path, vec![5u8; 10_000]).unwrap();
    let file = File::open(&path).unwrap();
    assert_eq!(
        SparseMap::from_file(&file).unwrap(),
        SparseMap::dense(10_000)
    );
    std::fs::write(&path, b"").unwrap();
    let file = File::open(&path).unwrap();
    assert_eq!(SparseMap::from_file(&file).unwrap(), SparseMap::dense(0));
}

/// docs/format.md §14.3 item 7 and §14.4 item 1 on the reference vectors: decode each
/// vector's stream, check the member header, extract, and re-create the stream.
#[test]
fn peer_vectors() {
    use sha1::{Digest, Sha1};
    let root = crate::test_data().join("peer-bundles");
    // (vector, typeflag S?, size field, map entries incl. terminal, ext blocks)
    let table = [
        ("v1-small-ext4", true, 634_880, 9, 1),
        ("v2-three-parts", false, 26_214_400, 0, 0),
        ("v3-sparse-islands", true, 49_152, 13, 1),
        ("v4-prefix", false, 3_000, 0, 0),
    ];
    for (vector, sparse, size_field, entries, ext) in table {
        let dir = root.join(vector);
        let expected: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("expected.json")).unwrap()).unwrap();
        let text = |k: &str| expected[k].as_str().unwrap().to_owned();
        let mut encrypted = Vec::new();
        for part in expected["parts"].as_array().unwrap() {
            encrypted.extend(std::fs::read(dir.join(part.as_str().unwrap())).unwrap());
        }
        let gz = openssl::symm::decrypt(
            openssl::symm::Cipher::aes_128_cbc(),
            &hex::decode(text("aes_key_hex")).unwrap(),
            Some(&hex::decode(text("aes_iv_hex")).unwrap()),
            &encrypted,
        )
        .unwrap();
        let mut stream = Vec::new();
        flate2::read::GzDecoder::new(&gz[..])
            .read_to_end(&mut stream)
            .unwrap();
        assert_eq!(sha1_hex(&stream), text("tar_stream_sha1"));

        let mut reader = TarReader::new(&stream[..]);
        let info = reader.read_member_header().unwrap();
        let image_size = expected["image_size"].as_u64().unwrap();
        assert_eq!(info.name, text("image_name"), "{vector}");
        assert_eq!(info.size, image_size, "{vector}");
        assert_eq!(info.sparse, sparse, "{vector}");
        assert_eq!(
            stream[TYPEFLAG],
            if sparse { b'S' } else { b'0' },
            "{vector}"
        );
        assert_eq!(parse_numeric(&stream[SIZE]), Ok(size_field), "{vector}");
        if sparse {
            assert_eq!(info.map.regions().len() + 1, entries, "{vector}");
            assert_eq!(info.map.extension_blocks(), ext, "{vector}");
        }
        assert_eq!(stream_len(&info.map), stream.len() as u64, "{vector}");

        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join(&info.name);
        let mut out = File::options()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .unwrap();
        reader.extract_to(Some(&mut out), &mut |_| {}).unwrap();
        let md = out.metadata().unwrap();
        assert_eq!(md.len(), image_size, "{vector}");
        if sparse {
            assert!(md.blocks() * 512 < 4 * MIB, "{vector} not sparse");
        }
        let mut hasher = Sha1::new();
        io::copy(&mut File::open(&path).unwrap(), &mut hasher).unwrap();
        assert_eq!(
            hex::encode(hasher.finalize()),
            text("image_sha1"),
            "{vector}"
        );

        // §14.4 item 1: same metadata, map and image through our writer.
        let m = MemberMeta {
            name: info.name.clone(),
            mode: info.mode,
            mtime: info.mtime,
        };
        let mut hashing = Sha1::new();
        let n = write_stream(&mut out, &m, &info.map, &mut hashing, &mut |_| {}).unwrap();
        assert_eq!(n, stream.len() as u64, "{vector}");
        assert_eq!(
            hex::encode(hashing.finalize()),
            text("tar_stream_sha1"),
            "{vector}"
        );
    }
}
