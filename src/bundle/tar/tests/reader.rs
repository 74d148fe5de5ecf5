//! Unit tests of the tar reader: what it tolerates, and every malformed stream it refuses.
//!
//! Bare § numbers in this module refer to docs/format.md.

use super::*;
use crate::bundle::tar::reader::{MAX_SPARSE_ENTRIES, MapBuilder};

#[test]
fn tolerates_missing_end_blocks_and_record_padding() {
    let stream = stream_for(3000, &[region(0, 3000)]);
    for cut in [512 + 3072, 512 + 3072 + 512, 512 + 3072 + 1024] {
        let (info, data) = read_all(&stream[..cut]).unwrap();
        assert_eq!(info.size, 3000);
        assert_eq!(data.len(), 3000);
    }
    // Extra zero blocks beyond the record are fine too.
    let mut longer = stream.clone();
    longer.extend_from_slice(&[0u8; 10_240]);
    read_all(&longer).unwrap();
}

fn expect_err(stream: &[u8]) -> TarError {
    match read_all(stream) {
        Ok(_) => panic!("stream was accepted"),
        Err(e) => e,
    }
}

#[test]
fn reader_rejects_bad_streams() {
    let good = stream_for(3000, &[region(0, 3000)]);
    read_all(&good).unwrap();

    let mut bad = good.clone();
    bad[50] = b'x';
    assert!(matches!(
        expect_err(&bad),
        TarError::BadChecksum { offset: 0, .. }
    ));

    let mut bad = good.clone();
    bad[MAGIC].copy_from_slice(b"ustar\0\0\0");
    fix_checksum(&mut bad);
    assert!(matches!(expect_err(&bad), TarError::BadMagic { .. }));

    for name in [&b"dir/image"[..], b"..", b".", b""] {
        let mut bad = good.clone();
        bad[NAME].fill(0);
        bad[..name.len()].copy_from_slice(name);
        fix_checksum(&mut bad);
        assert!(
            matches!(expect_err(&bad), TarError::InvalidName { .. }),
            "{name:?}"
        );
    }

    for (flag, kind) in [
        (b'2', "symbolic link"),
        (b'1', "hard link"),
        (b'5', "directory"),
    ] {
        let mut bad = good.clone();
        bad[TYPEFLAG] = flag;
        fix_checksum(&mut bad);
        let err = expect_err(&bad);
        assert!(
            matches!(&err, TarError::NotRegularFile { kind: k, .. } if k == kind),
            "{err:?}"
        );
    }

    // Two members.
    let mut two = good[..512 + 3072].to_vec();
    two.extend_from_slice(&good);
    let err = expect_err(&two);
    assert!(
        matches!(err, TarError::MoreThanOneMember { offset: 3584 }),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .contains("tar stream has more than one member")
    );

    // Truncated data.
    assert!(matches!(
        expect_err(&good[..2000]),
        TarError::Truncated {
            what: "member data",
            ..
        }
    ));
    assert!(matches!(
        expect_err(&good[..300]),
        TarError::Truncated { .. }
    ));
    assert!(matches!(expect_err(&[]), TarError::EmptyStream));
    assert!(matches!(
        expect_err(&[0u8; 10_240]),
        TarError::NoMember { offset: 0 }
    ));

    // Garbage after the end blocks, in a partial block, and inside the end blocks.
    for (at, len) in [(10_239, 10_240), (10_240, 10_250), (4000, 10_240)] {
        let mut bad = good.clone();
        bad.resize(len, 0);
        bad[at] = 7;
        let err = expect_err(&bad);
        assert!(
            matches!(err, TarError::TrailingGarbage { offset } if offset == at as u64),
            "{err:?}"
        );
    }

    // Absurd size.
    let mut bad = good.clone();
    put_numeric(&mut bad[SIZE], 1 << 60);
    fix_checksum(&mut bad);
    assert!(matches!(expect_err(&bad), TarError::TooLarge { .. }));
}

#[test]
fn reader_accepts_signed_checksum() {
    let mut stream = stream_for(3000, &[region(0, 3000)]);
    stream[200] = 0xe9; // a high byte (in the ignored linkname) makes the two sums differ
    stream[CHKSUM].fill(b' ');
    let signed: i64 = stream[..BLOCK].iter().map(|&b| i64::from(b as i8)).sum();
    let unsigned: i64 = stream[..BLOCK].iter().map(|&b| i64::from(b)).sum();
    assert_ne!(signed, unsigned);
    stream[CHKSUM].copy_from_slice(format!("{signed:06o}\0 ").as_bytes());
    let (info, data) = read_all(&stream).unwrap();
    assert_eq!((info.size, data.len()), (3000, 3000));
    stream[CHKSUM].copy_from_slice(format!("{:06o}\0 ", signed + 1).as_bytes());
    assert!(matches!(expect_err(&stream), TarError::BadChecksum { .. }));
}

/// A sparse header announcing extension blocks, then the same extension block forever.
struct EndlessExtensions {
    header: Vec<u8>,
    block: Vec<u8>,
    pos: u64,
}

impl Read for EndlessExtensions {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let (src, at) = match usize::try_from(self.pos).unwrap() {
            p if p < BLOCK => (&self.header, p),
            p => (&self.block, (p - BLOCK) % BLOCK),
        };
        let n = buf.len().min(BLOCK - at);
        buf[..n].copy_from_slice(&src[at..at + n]);
        self.pos += n as u64;
        Ok(n)
    }
}

fn endless_extensions(in_header: &[(u64, u64)], in_block: &[(u64, u64)]) -> EndlessExtensions {
    let mut header = raw_header(b"image.img", b'S', 1 << 40, OLDGNU_MAGIC);
    for (slot, &(offset, len)) in in_header.iter().enumerate() {
        put_entry(&mut header[SPARSE_SLOTS + 24 * slot..], offset, len);
    }
    put_numeric(&mut header[REALSIZE], 1 << 45);
    header[IS_EXTENDED] = 1;
    fix_checksum(&mut header);
    let mut block = vec![0u8; BLOCK];
    for (slot, &(offset, len)) in in_block.iter().enumerate() {
        put_entry(&mut block[24 * slot..], offset, len);
    }
    block[EXT_IS_EXTENDED] = 1;
    EndlessExtensions {
        header,
        block,
        pos: 0,
    }
}

#[test]
fn reader_rejects_a_bad_sparse_map_at_its_first_bad_entry() {
    // A repeated extension block (cheap to produce by gzip from a tiny ciphertext): the
    // second copy goes backwards. The map used to be collected in full before any check, so
    // this read forever and held every entry in memory.
    let in_header: Vec<(u64, u64)> = (0..4).map(|i| (i * 1024, 512)).collect();
    let in_block: Vec<(u64, u64)> = (0..21).map(|i| (4096 + i * 1024, 512)).collect();
    let mut reader = TarReader::new(endless_extensions(&in_header, &in_block));
    let err = reader.read_member_header().unwrap_err();
    assert!(
        matches!(&err, TarError::Malformed { offset: 1024, detail }
                if detail.contains("entry 25 at offset 4096 is not after")),
        "{err:?}"
    );
    // More data than the size field says is caught as soon as the sum passes it.
    let ext = endless_extensions(&[(0, 1 << 40), (1 << 41, 512)], &[]);
    let err = TarReader::new(ext).read_member_header().unwrap_err();
    assert!(
        matches!(&err, TarError::Malformed { offset: 0, detail } if detail.contains("size field")),
        "{err:?}"
    );
}

#[test]
fn sparse_map_entries_are_bounded() {
    // Zero-length entries store nothing, but there cannot be endlessly many of them either.
    let mut map = MapBuilder::new(1 << 20, 0, 0);
    map.add(0, 0).unwrap();
    map.entries = MAX_SPARSE_ENTRIES;
    let err = map.add(0, 0).unwrap_err();
    assert!(err.contains("more than 16777216 entries"), "{err}");
    let mut map = MapBuilder::new(1 << 20, 0, 0);
    for _ in 0..1000 {
        map.add(0, 0).unwrap();
    }
    assert!(map.regions.is_empty());
    let map = map.finish().unwrap();
    assert_eq!((map.size(), map.regions().len()), (1 << 20, 0));
}

#[test]
fn reader_rejects_bad_sparse_maps() {
    let regions = [region(0, 1024), region(4096, 512)];
    let good = stream_for(8192, &regions);
    read_all(&good).unwrap();
    let with = |f: &dyn Fn(&mut Vec<u8>)| {
        let mut s = good.clone();
        f(&mut s);
        fix_checksum(&mut s);
        expect_err(&s)
    };
    // Σ numbytes != size.
    let err = with(&|s| put_numeric(&mut s[SIZE], 2048));
    assert!(
        matches!(&err, TarError::Malformed { detail, .. } if detail.contains("size field")),
        "{err:?}"
    );
    // Not ascending.
    let err = with(&|s| put_entry(&mut s[SPARSE_SLOTS + 24..], 512, 512));
    assert!(
        matches!(&err, TarError::Malformed { detail, .. } if detail.contains("not after")),
        "{err:?}"
    );
    // Beyond realsize.
    let err = with(&|s| put_numeric(&mut s[REALSIZE], 4096));
    assert!(
        matches!(&err, TarError::Malformed { detail, .. } if detail.contains("real size")),
        "{err:?}"
    );
    // Unaligned region that is not the last (sizes kept consistent).
    let err = with(&|s| {
        put_entry(&mut s[SPARSE_SLOTS..], 0, 1000);
        put_numeric(&mut s[SIZE], 1512);
    });
    assert!(
        matches!(&err, TarError::Malformed { detail, .. } if detail.contains("unaligned")),
        "{err:?}"
    );
    // Extension block announced but missing.
    let mut s = good[..512].to_vec();
    s[IS_EXTENDED] = 1;
    fix_checksum(&mut s);
    assert!(matches!(
        expect_err(&s),
        TarError::Truncated {
            what: "sparse extension block",
            ..
        }
    ));
}

/// One PAX record, `"<len> <key>=<value>\n"`, where `<len>` counts itself.
fn pax_record(key: &str, value: &str) -> String {
    let body = format!(" {key}={value}\n");
    let mut len = body.len() + 1;
    while (len.to_string().len() + body.len()) != len {
        len += 1;
    }
    format!("{len}{body}")
}

#[test]
fn reader_accepts_pax_path_and_size() {
    assert_eq!(pax_record("path", "pax.img"), "16 path=pax.img\n");
    assert_eq!(pax_record("a", "1234567"), "13 a=1234567\n");
    let data: Vec<u8> = (0..600u64).map(pattern).collect();
    let records = [
        pax_record("path", "pax.img"),
        pax_record("size", "600"),
        pax_record("mtime", "1234.56789"),
        pax_record("foo", "x"),
    ]
    .concat();
    let mut s = raw_header(b"PaxHeaders.0/x", b'x', records.len() as u64, POSIX_MAGIC);
    s.extend(padded(records.as_bytes().to_vec()));
    s.extend(raw_header(b"ignored", b'0', 0, POSIX_MAGIC));
    s.extend(padded(data.clone()));
    s.extend([0u8; 1024]);
    let (info, extracted) = read_all(&s).unwrap();
    assert_eq!(
        (info.name.as_str(), info.size, info.mtime),
        ("pax.img", 600, 1234)
    );
    assert_eq!(extracted, data);

    let records = pax_record("GNU.sparse.major", "1");
    let mut s = raw_header(b"PaxHeaders.0/x", b'x', records.len() as u64, POSIX_MAGIC);
    s.extend(padded(records.as_bytes().to_vec()));
    s.extend(raw_header(b"x", b'0', 0, POSIX_MAGIC));
    s.extend([0u8; 1024]);
    let err = expect_err(&s);
    assert!(matches!(&err, TarError::PaxSparse { key, .. } if key == "GNU.sparse.major"));

    // POSIX prefix field makes the name contain '/'.
    let mut h = raw_header(b"x", b'0', 0, POSIX_MAGIC);
    h[USTAR_PREFIX.start..USTAR_PREFIX.start + 3].copy_from_slice(b"dir");
    fix_checksum(&mut h);
    h.extend([0u8; 1024]);
    assert!(matches!(expect_err(&h), TarError::InvalidName { .. }));
}

#[test]
fn reader_accepts_gnu_long_name() {
    let long = "l".repeat(150);
    let mut name_data = long.clone().into_bytes();
    name_data.push(0);
    let mut s = raw_header(b"././@LongLink", b'L', name_data.len() as u64, OLDGNU_MAGIC);
    s.extend(padded(name_data));
    s.extend(raw_header(&long.as_bytes()[..100], b'0', 3, OLDGNU_MAGIC));
    s.extend(padded(b"abc".to_vec()));
    s.extend([0u8; 1024]);
    let (info, extracted) = read_all(&s).unwrap();
    assert_eq!(info.name, long);
    assert_eq!(extracted, b"abc");
}
