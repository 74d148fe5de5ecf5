//! The member header (§3.2, §3.3, §3.5): the byte layout of the header block and its sparse
//! extension blocks, numeric fields, the checksum and the member-name rule.
//!
//! Bare § numbers in this module refer to docs/format.md.

use super::{BLOCK, SparseMap, TarError};

/// Sparse map entries in the member header and in each extension block (§3.5).
pub(super) const ENTRIES_IN_HEADER: usize = 4;
pub(super) const ENTRIES_IN_EXTENSION: usize = 21;
/// Byte offsets of the header fields (§3.2 table).
pub(super) const NAME: std::ops::Range<usize> = 0..100;
pub(super) const MODE: std::ops::Range<usize> = 100..108;
pub(super) const UID: std::ops::Range<usize> = 108..116;
pub(super) const GID: std::ops::Range<usize> = 116..124;
pub(super) const SIZE: std::ops::Range<usize> = 124..136;
pub(super) const MTIME: std::ops::Range<usize> = 136..148;
pub(super) const CHKSUM: std::ops::Range<usize> = 148..156;
pub(super) const TYPEFLAG: usize = 156;
pub(super) const MAGIC: std::ops::Range<usize> = 257..265;
pub(super) const UNAME: std::ops::Range<usize> = 265..297;
pub(super) const GNAME: std::ops::Range<usize> = 297..329;
/// POSIX ustar name prefix; in old-GNU headers these bytes hold atime/ctime/offset/sparse data.
pub(super) const USTAR_PREFIX: std::ops::Range<usize> = 345..500;
pub(super) const SPARSE_SLOTS: usize = 386;
pub(super) const IS_EXTENDED: usize = 482;
pub(super) const REALSIZE: std::ops::Range<usize> = 483..495;
/// `isextended` byte of an extension block (§3.5).
pub(super) const EXT_IS_EXTENDED: usize = 504;
/// Old-GNU magic and version, `ustar␠␠\0` (§3.2).
pub(super) const OLDGNU_MAGIC: &[u8; 8] = b"ustar  \0";
/// POSIX magic `ustar\0` followed by version `00`, accepted by the reader (§3.7).
pub(super) const POSIX_MAGIC: &[u8; 8] = b"ustar\x0000";

/// Metadata of the image member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberMeta {
    /// Member name (the bundle name, §2): 1–100 bytes, no `/` or NUL, not `.` or `..`.
    pub name: String,
    /// Permission bits (`st_mode & 07777`).
    pub mode: u32,
    /// Modification time in whole seconds since the epoch.
    pub mtime: u64,
}

/// The header block and any sparse extension blocks of the member (§3.2, §3.3, §3.5).
///
/// # Errors
/// [`TarError::InvalidName`] or [`TarError::InvalidMode`].
pub fn header_blocks(meta: &MemberMeta, map: &SparseMap) -> Result<Vec<u8>, TarError> {
    check_name(meta.name.as_bytes())?;
    if meta.name.len() > NAME.len() {
        // §3.1: no long-name records; §2 keeps bundle names at 100 bytes or less.
        return Err(TarError::InvalidName {
            name: meta.name.clone(),
            reason: "longer than 100 bytes",
        });
    }
    if meta.mode & !0o7777 != 0 {
        return Err(TarError::InvalidMode { mode: meta.mode });
    }
    let sparse = map.is_sparse();
    let mut h = [0u8; BLOCK];
    h[..meta.name.len()].copy_from_slice(meta.name.as_bytes());
    put_numeric(&mut h[MODE], u64::from(meta.mode));
    put_numeric(&mut h[UID], 0);
    put_numeric(&mut h[GID], 0);
    put_numeric(&mut h[SIZE], map.data_bytes());
    put_numeric(&mut h[MTIME], meta.mtime);
    h[TYPEFLAG] = if sparse { b'S' } else { b'0' };
    h[MAGIC].copy_from_slice(OLDGNU_MAGIC);
    h[UNAME][..4].copy_from_slice(b"root");
    h[GNAME][..4].copy_from_slice(b"root");

    let mut extensions: Vec<[u8; BLOCK]> = Vec::new();
    if sparse {
        let entries: Vec<(u64, u64)> = map.entries().collect();
        let (in_header, rest) = entries.split_at(entries.len().min(ENTRIES_IN_HEADER));
        for (slot, &(offset, len)) in in_header.iter().enumerate() {
            put_entry(&mut h[SPARSE_SLOTS + 24 * slot..], offset, len);
        }
        h[IS_EXTENDED] = u8::from(!rest.is_empty());
        put_numeric(&mut h[REALSIZE], map.size);
        let chunks: Vec<&[(u64, u64)]> = rest.chunks(ENTRIES_IN_EXTENSION).collect();
        for (i, chunk) in chunks.iter().enumerate() {
            let mut block = [0u8; BLOCK];
            for (slot, &(offset, len)) in chunk.iter().enumerate() {
                put_entry(&mut block[24 * slot..], offset, len);
            }
            block[EXT_IS_EXTENDED] = u8::from(i + 1 < chunks.len());
            extensions.push(block);
        }
    }
    // §3.3: unsigned sum with the checksum field as spaces, six octal digits, NUL, space.
    h[CHKSUM].fill(b' ');
    let sum: u64 = h.iter().map(|&b| u64::from(b)).sum();
    h[CHKSUM].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());

    let mut out = Vec::with_capacity(BLOCK * (1 + extensions.len()));
    out.extend_from_slice(&h);
    for block in &extensions {
        out.extend_from_slice(block);
    }
    Ok(out)
}

/// Writes one sparse map entry (offset ‖ numbytes, 12 bytes each) at the start of `slot`.
pub(super) fn put_entry(slot: &mut [u8], offset: u64, len: u64) {
    put_numeric(&mut slot[..12], offset);
    put_numeric(&mut slot[12..24], len);
}

/// Encodes a numeric field (§3.3): octal digits and NUL below 8^(w−1), else GNU base-256.
pub(super) fn put_numeric(field: &mut [u8], value: u64) {
    let w = field.len();
    let digits = w - 1;
    // 8^digits = 2^(3·digits); digits <= 11 here, so the shift cannot overflow.
    if value < 1u64 << (3 * digits) {
        field[..digits].copy_from_slice(format!("{value:0digits$o}").as_bytes());
        field[digits] = 0;
    } else {
        field.fill(0);
        let be = value.to_be_bytes();
        field[w - be.len()..].copy_from_slice(&be);
        field[0] |= 0x80;
    }
}

/// Parses a numeric field as GNU tar does: base-256 (0x80 flag), or octal with optional leading
/// spaces (and one leading NUL), terminated by the end, NUL or a space. All-NUL reads as 0.
pub(super) fn parse_numeric(field: &[u8]) -> Result<u64, String> {
    let Some(&first) = field.first() else {
        return Ok(0);
    };
    if first & 0x80 != 0 {
        if first & 0x40 != 0 {
            return Err(format!("negative base-256 number {field:02x?}"));
        }
        let mut value = u64::from(first & 0x3f);
        for &b in &field[1..] {
            value = value
                .checked_mul(256)
                .map(|v| v | u64::from(b))
                .ok_or_else(|| format!("base-256 number {field:02x?} is too large"))?;
        }
        return Ok(value);
    }
    let mut i = usize::from(first == 0);
    while i < field.len() && field[i] == b' ' {
        i += 1;
    }
    let mut value = 0u64;
    while i < field.len() && (b'0'..=b'7').contains(&field[i]) {
        value = value
            .checked_mul(8)
            .map(|v| v + u64::from(field[i] - b'0'))
            .ok_or_else(|| format!("octal number {:?} is too large", show(field)))?;
        i += 1;
    }
    if i < field.len() && field[i] != 0 && field[i] != b' ' {
        return Err(format!("invalid octal number {:?}", show(field)));
    }
    Ok(value)
}

pub(super) fn show(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Checks a member name (§3.7; also applied by the writer so it never emits one a reader
/// rejects).
pub(super) fn check_name(name: &[u8]) -> Result<(), TarError> {
    let reason = if name.is_empty() {
        "empty"
    } else if name == b"." || name == b".." {
        "a directory reference"
    } else if name.contains(&b'/') {
        "contains '/'"
    } else if name.contains(&0) {
        "contains NUL"
    } else {
        return Ok(());
    };
    Err(TarError::InvalidName {
        name: show(name),
        reason,
    })
}

/// The bytes of a NUL-padded field up to the first NUL.
pub(super) fn cstr(field: &[u8]) -> &[u8] {
    let end = field.iter().position(|&b| b == 0).unwrap_or(field.len());
    &field[..end]
}

/// Verifies magic and checksum of a header block at stream offset `at` (§3.3, §3.7).
pub(super) fn check_header(block: &[u8], at: u64) -> Result<(), TarError> {
    let magic = &block[MAGIC];
    if magic != OLDGNU_MAGIC && magic != POSIX_MAGIC {
        return Err(TarError::BadMagic {
            offset: at,
            magic: magic.to_vec(),
        });
    }
    let stored = parse_numeric(&block[CHKSUM]).map_err(|e| TarError::Malformed {
        offset: at,
        detail: format!("checksum: {e}"),
    })?;
    let (mut unsigned, mut signed) = (0u64, 0i64);
    for (i, &b) in block.iter().enumerate() {
        let b = if CHKSUM.contains(&i) { b' ' } else { b };
        unsigned += u64::from(b);
        signed += i64::from(b as i8);
    }
    // GNU tar also accepts the signed-byte sum, which some historic writers produced.
    if stored == unsigned || i64::try_from(stored) == Ok(signed) {
        return Ok(());
    }
    Err(TarError::BadChecksum {
        offset: at,
        stored,
        computed: unsigned,
    })
}
