//! The tar stage of a bundle: an old-GNU tar writer for the single image member (dense type `0`
//! or old-GNU sparse type `S`), the sparse map it is driven by, and the matching reader used by
//! verify/unbundle (docs/format.md §3).
//!
//! We do not use the `tar` crate: golden tests need injectable hole maps and mtimes, and the
//! stream must have the exact old-GNU layout GNU `tar -c -S --owner 0 --group 0` writes (§3.1).
//!
//! Bare § numbers in this module refer to docs/format.md.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;

use nix::errno::Errno;
use nix::unistd::{Whence, lseek};

/// Size of one tar block (docs/format.md §3.1).
pub const BLOCK_BYTES: u64 = 512;
/// Size of one tar record: blocking factor 20, the stream is padded to a multiple (§3.1).
pub const RECORD_BYTES: u64 = 10_240;

/// `BLOCK_BYTES` as a buffer length.
const BLOCK: usize = 512;
/// Buffer for image and member data. 8 KiB reads cost a syscall per 8 KiB; 1 MiB keeps syscall
/// overhead negligible next to hashing and compression while staying small in memory.
const IO_BUFFER_BYTES: usize = 1 << 20;
/// Granularity at which extraction skips all-zero data to keep the output sparse: the page and
/// ext4 block size, so skipped ranges become real holes.
const ZERO_SKIP_BYTES: u64 = 4096;
/// Sparse map entries in the member header and in each extension block (§3.5).
const ENTRIES_IN_HEADER: usize = 4;
const ENTRIES_IN_EXTENSION: usize = 21;
/// Byte offsets of the header fields (§3.2 table).
const NAME: std::ops::Range<usize> = 0..100;
const MODE: std::ops::Range<usize> = 100..108;
const UID: std::ops::Range<usize> = 108..116;
const GID: std::ops::Range<usize> = 116..124;
const SIZE: std::ops::Range<usize> = 124..136;
const MTIME: std::ops::Range<usize> = 136..148;
const CHKSUM: std::ops::Range<usize> = 148..156;
const TYPEFLAG: usize = 156;
const MAGIC: std::ops::Range<usize> = 257..265;
const UNAME: std::ops::Range<usize> = 265..297;
const GNAME: std::ops::Range<usize> = 297..329;
/// POSIX ustar name prefix; in old-GNU headers these bytes hold atime/ctime/offset/sparse data.
const USTAR_PREFIX: std::ops::Range<usize> = 345..500;
const SPARSE_SLOTS: usize = 386;
const IS_EXTENDED: usize = 482;
const REALSIZE: std::ops::Range<usize> = 483..495;
/// `isextended` byte of an extension block (§3.5).
const EXT_IS_EXTENDED: usize = 504;
/// Old-GNU magic and version, `ustar␠␠\0` (§3.2).
const OLDGNU_MAGIC: &[u8; 8] = b"ustar  \0";
/// POSIX magic `ustar\0` followed by version `00`, accepted by the reader (§3.7).
const POSIX_MAGIC: &[u8; 8] = b"ustar\x0000";
/// Largest member the reader accepts. Far above any image (10 GiB default limit, §2, which the
/// user may override) yet small enough that offsets never overflow `i64` (`lseek`, `set_len`).
const MAX_MEMBER_BYTES: u64 = 1 << 50;
/// Largest GNU long-name or PAX record the reader buffers; real ones are a few hundred bytes.
const MAX_EXTENDED_HEADER_BYTES: u64 = 1 << 20;
/// Most entries an old-GNU sparse map may have (16 Mi: 256 MiB of regions in memory, from at
/// least 400 MiB of headers). A 10 GiB image alternating 4 KiB of data and 4 KiB of hole has
/// 1.3 Mi regions.
const MAX_SPARSE_ENTRIES: u64 = 1 << 24;

/// Errors of the tar writer and reader.
#[derive(Debug, thiserror::Error)]
pub enum TarError {
    /// The sparse map handed to [`SparseMap::new`] breaks §3.5 rule 1.
    #[error("invalid sparse map for a {size}-byte image: {detail}")]
    InvalidMap { size: u64, detail: String },
    /// The member name cannot be written or extracted safely.
    #[error("invalid tar member name {name:?}: {reason}")]
    InvalidName { name: String, reason: &'static str },
    /// The mode has bits outside the permission bits.
    #[error("invalid tar member mode {mode:o}: only the bits 07777 may be set")]
    InvalidMode { mode: u32 },
    /// Reading the image's size failed.
    #[error("reading the size of the image")]
    StatImage(#[source] io::Error),
    /// `SEEK_DATA`/`SEEK_HOLE` failed in a way that is not "unsupported".
    #[error("finding the data regions of the image at offset {offset}")]
    FindHoles {
        offset: u64,
        #[source]
        source: Errno,
    },
    /// Seeking the image failed.
    #[error("seeking the image to offset {offset}")]
    SeekImage {
        offset: u64,
        #[source]
        source: io::Error,
    },
    /// Reading the image failed.
    #[error("reading the image at offset {offset}")]
    ReadImage {
        offset: u64,
        #[source]
        source: io::Error,
    },
    /// The image ended before the end of a data region of the map.
    #[error(
        "image ends at offset {offset}, but its sparse map has data up to offset {expected_end}"
    )]
    ImageShort { offset: u64, expected_end: u64 },
    /// A non-seekable input ended before `size` bytes.
    #[error("input ended after {got} bytes, expected exactly {expected} bytes")]
    InputShort { got: u64, expected: u64 },
    /// A non-seekable input had more than `size` bytes.
    #[error("input has more than the expected {expected} bytes")]
    InputLong { expected: u64 },
    /// Writing the tar stream failed.
    #[error("writing the tar stream at offset {offset}")]
    WriteStream {
        offset: u64,
        #[source]
        source: io::Error,
    },
    /// Reading the tar stream failed.
    #[error("reading the tar stream at offset {offset}")]
    ReadStream {
        offset: u64,
        #[source]
        source: io::Error,
    },
    /// The tar stream contains no bytes at all.
    #[error("tar stream is empty")]
    EmptyStream,
    /// The tar stream ends in the middle of something.
    #[error("tar stream is truncated at offset {offset} inside the {what}")]
    Truncated { offset: u64, what: &'static str },
    /// An end-of-archive (zero) block came before any member.
    #[error("tar stream has no member: zero block at offset {offset} before any member header")]
    NoMember { offset: u64 },
    /// A header block has neither the old-GNU nor the POSIX magic.
    #[error("tar header at offset {offset} has unrecognized magic {magic:02x?}")]
    BadMagic { offset: u64, magic: Vec<u8> },
    /// A header block's checksum does not match.
    #[error("tar header at offset {offset} has checksum {stored:o}, computed {computed:o}")]
    BadChecksum {
        offset: u64,
        stored: u64,
        computed: u64,
    },
    /// A header field or record cannot be parsed.
    #[error("malformed tar header at offset {offset}: {detail}")]
    Malformed { offset: u64, detail: String },
    /// A PAX header uses the PAX sparse formats, which we do not read.
    #[error("pax header at offset {offset} has key {key}: PAX sparse members are not supported")]
    PaxSparse { offset: u64, key: String },
    /// The member is not a regular file.
    #[error("tar member {name:?} is a {kind}, expected exactly one regular file")]
    NotRegularFile { name: String, kind: String },
    /// A member's size is beyond any plausible image.
    #[error("tar member at offset {offset} claims {size} bytes, more than the {max}-byte limit")]
    TooLarge { offset: u64, size: u64, max: u64 },
    /// A second member follows the image member.
    #[error("tar stream has more than one member: a second header at offset {offset}")]
    MoreThanOneMember { offset: u64 },
    /// Non-zero bytes follow the member where only end-of-archive zeros may be.
    #[error("tar stream has non-zero data at offset {offset} after the member")]
    TrailingGarbage { offset: u64 },
    /// Writing the extracted image failed.
    #[error("writing the extracted image at offset {offset}")]
    WriteOutput {
        offset: u64,
        #[source]
        source: io::Error,
    },
    /// Setting the length of the extracted image failed.
    #[error("setting the length of the extracted image to {len} bytes")]
    SetOutputLen {
        len: u64,
        #[source]
        source: io::Error,
    },
}

/// One data region of an image: `len` bytes at `offset` that may contain non-zero data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataRegion {
    /// Start of the region in the image.
    pub offset: u64,
    /// Length of the region in bytes (never 0 inside a [`SparseMap`]).
    pub len: u64,
}

impl DataRegion {
    fn end(&self) -> u64 {
        // Cannot overflow: every constructor checks `offset + len <= size`.
        self.offset + self.len
    }
}

/// The data regions of an image of `size` bytes; everything else is a hole reading as zeros.
///
/// Invariants (docs/format.md §3.5 and what the reader needs): regions have `len > 0`, are in
/// ascending order, do not overlap, lie within `[0, size)`, and every region except the last has
/// a length that is a multiple of 512.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SparseMap {
    size: u64,
    regions: Vec<DataRegion>,
}

impl SparseMap {
    /// Builds the map our writer will emit, normalized per §3.5 rules 1–2.
    ///
    /// `regions` must be in ascending order, must not overlap and must lie within `[0, size)`.
    /// Each region is widened to 512-byte alignment (start down, end up, clamped to `size`) —
    /// always allowed, since it only takes in zeros of a hole — and regions that then touch or
    /// overlap are merged. Zero-length regions are dropped, so a map decoded from a header with
    /// its terminal entry `(size, 0)` can be passed as is. Empty `regions` means all hole.
    ///
    /// # Errors
    /// [`TarError::InvalidMap`] for unordered, overlapping or out-of-range regions.
    pub fn new(size: u64, regions: Vec<DataRegion>) -> Result<Self, TarError> {
        let invalid = |detail: String| TarError::InvalidMap { size, detail };
        let mut out: Vec<DataRegion> = Vec::with_capacity(regions.len());
        let mut prev_end = 0u64;
        for (index, region) in regions.into_iter().enumerate() {
            let end = region.offset.checked_add(region.len).filter(|&e| e <= size);
            let Some(end) = end else {
                return Err(invalid(format!(
                    "region {index} ({}+{}) extends past the end of the image",
                    region.offset, region.len
                )));
            };
            if region.offset < prev_end {
                return Err(invalid(format!(
                    "region {index} at offset {} overlaps or precedes the region ending at {prev_end}",
                    region.offset
                )));
            }
            if region.len == 0 {
                continue;
            }
            prev_end = end;
            let start = round_down(region.offset, BLOCK_BYTES);
            // Cannot overflow: end <= size <= u64::MAX and rounding up is clamped to size.
            let end = round_up(end, BLOCK_BYTES).unwrap_or(size).min(size);
            match out.last_mut() {
                Some(last) if start <= last.end() => last.len = end - last.offset,
                _ => out.push(DataRegion {
                    offset: start,
                    len: end - start,
                }),
            }
        }
        Ok(Self { size, regions: out })
    }

    /// The map of an image without holes: one region `[0, size)` (none when `size` is 0).
    pub fn dense(size: u64) -> Self {
        let regions = if size == 0 {
            Vec::new()
        } else {
            vec![DataRegion {
                offset: 0,
                len: size,
            }]
        };
        Self { size, regions }
    }

    /// Finds the data regions of an open file with `SEEK_DATA`/`SEEK_HOLE` (§3.5).
    ///
    /// Falls back to [`SparseMap::dense`] when the filesystem does not support hole reporting.
    /// The file's offset is restored afterwards.
    ///
    /// # Errors
    /// [`TarError::StatImage`] or [`TarError::FindHoles`].
    pub fn from_file(file: &File) -> Result<Self, TarError> {
        let size = file.metadata().map_err(TarError::StatImage)?.len();
        let saved = lseek(file, 0, Whence::SeekCur)
            .map_err(|source| TarError::FindHoles { offset: 0, source })?;
        let scanned = scan_regions(file, size)?;
        lseek(file, saved, Whence::SeekSet)
            .map_err(|source| TarError::FindHoles { offset: 0, source })?;
        match scanned {
            Some(regions) => Self::new(size, regions),
            None => Ok(Self::dense(size)),
        }
    }

    /// Builds a map from regions already checked against the invariants (reader side).
    fn from_checked(size: u64, regions: Vec<DataRegion>) -> Self {
        Self { size, regions }
    }

    /// Size of the image (the member's real size).
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The data regions, ascending.
    pub fn regions(&self) -> &[DataRegion] {
        &self.regions
    }

    /// Bytes of data stored in the archive: Σ nᵢ (the header's `size` field).
    pub fn data_bytes(&self) -> u64 {
        self.regions.iter().map(|r| r.len).sum()
    }

    /// Whether the member is written as old-GNU sparse (`S`): true unless the regions cover the
    /// whole image, in which case it is a plain type `0` member (§3.4).
    pub fn is_sparse(&self) -> bool {
        // Regions are disjoint and within [0, size), so they cover it iff their sum is size.
        self.data_bytes() != self.size
    }

    /// Number of sparse extension blocks after the header (§3.5 placement).
    fn extension_blocks(&self) -> usize {
        if !self.is_sparse() {
            return 0;
        }
        let entries = self.regions.len() + 1; // + terminal entry
        entries
            .saturating_sub(ENTRIES_IN_HEADER)
            .div_ceil(ENTRIES_IN_EXTENSION)
    }

    /// Map entries as written: the data regions then the terminal entry `(size, 0)` (§3.5 rule 3).
    fn entries(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.regions
            .iter()
            .map(|r| (r.offset, r.len))
            .chain(std::iter::once((self.size, 0)))
    }
}

/// Walks `SEEK_DATA`/`SEEK_HOLE`; `None` when the filesystem cannot report holes.
fn scan_regions(file: &File, size: u64) -> Result<Option<Vec<DataRegion>>, TarError> {
    let mut regions = Vec::new();
    let mut offset = 0u64;
    while offset < size {
        let data = match lseek(file, to_off(offset)?, Whence::SeekData) {
            Ok(data) => from_off(data),
            // ENXIO: no data at or after `offset`, the rest is a hole.
            Err(Errno::ENXIO) => break,
            // Old kernels and some filesystems (e.g. via FUSE) do not support SEEK_DATA.
            Err(Errno::EINVAL | Errno::EOPNOTSUPP) if offset == 0 => return Ok(None),
            Err(source) => return Err(TarError::FindHoles { offset, source }),
        };
        if data >= size {
            break; // the file shrank or grew while we looked
        }
        let hole = match lseek(file, to_off(data)?, Whence::SeekHole) {
            Ok(hole) => from_off(hole).min(size),
            Err(source) => {
                return Err(TarError::FindHoles {
                    offset: data,
                    source,
                });
            }
        };
        if hole <= data {
            break;
        }
        regions.push(DataRegion {
            offset: data,
            len: hole - data,
        });
        offset = hole;
    }
    Ok(Some(regions))
}

fn to_off(offset: u64) -> Result<i64, TarError> {
    i64::try_from(offset).map_err(|_| TarError::FindHoles {
        offset,
        source: Errno::EOVERFLOW,
    })
}

fn from_off(offset: i64) -> u64 {
    // lseek never returns a negative offset on success.
    u64::try_from(offset).unwrap_or(0)
}

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

/// Exact length T of the stream for this map, record padding included (§3.1).
pub fn stream_len(map: &SparseMap) -> u64 {
    let headers = BLOCK_BYTES * (1 + map.extension_blocks() as u64);
    let data: u64 = map.regions.iter().map(|r| padded_len(r.len)).sum::<u64>();
    let l = headers + data + 2 * BLOCK_BYTES;
    l.div_ceil(RECORD_BYTES) * RECORD_BYTES
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
fn put_entry(slot: &mut [u8], offset: u64, len: u64) {
    put_numeric(&mut slot[..12], offset);
    put_numeric(&mut slot[12..24], len);
}

/// Encodes a numeric field (§3.3): octal digits and NUL below 8^(w−1), else GNU base-256.
fn put_numeric(field: &mut [u8], value: u64) {
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
fn parse_numeric(field: &[u8]) -> Result<u64, String> {
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

fn show(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Checks a member name (§3.7; also applied by the writer so it never emits one a reader
/// rejects).
fn check_name(name: &[u8]) -> Result<(), TarError> {
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

fn round_down(value: u64, align: u64) -> u64 {
    value - value % align
}

fn round_up(value: u64, align: u64) -> Option<u64> {
    value.checked_next_multiple_of(align)
}

/// `len` rounded up to whole blocks.
fn padded_len(len: u64) -> u64 {
    len.div_ceil(BLOCK_BYTES) * BLOCK_BYTES
}

/// Zeros to append after `len` bytes of data to reach a block boundary.
fn block_padding(len: u64) -> usize {
    // Always < 512, so the cast is lossless.
    (padded_len(len) - len) as usize
}

/// Counts the bytes written so errors can name the stream offset.
struct CountingWriter<'a, W: Write> {
    out: &'a mut W,
    written: u64,
}

impl<W: Write> CountingWriter<'_, W> {
    fn put(&mut self, bytes: &[u8]) -> Result<(), TarError> {
        self.out
            .write_all(bytes)
            .map_err(|source| TarError::WriteStream {
                offset: self.written,
                source,
            })?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    fn zeros(&mut self, mut count: u64) -> Result<(), TarError> {
        const ZEROS: [u8; BLOCK] = [0; BLOCK];
        while count > 0 {
            let n = count.min(BLOCK_BYTES);
            // n <= 512.
            self.put(&ZEROS[..n as usize])?;
            count -= n;
        }
        Ok(())
    }

    /// Data padding, two end-of-archive blocks and record padding (§3.1 steps 2–4).
    fn finish(&mut self, data_bytes: u64) -> Result<u64, TarError> {
        self.zeros(block_padding(data_bytes) as u64)?;
        self.zeros(2 * BLOCK_BYTES)?;
        let record_pad = self.written.next_multiple_of(RECORD_BYTES) - self.written;
        self.zeros(record_pad)?;
        Ok(self.written)
    }
}

/// Writes the whole stream T for `image` described by `meta` and `map` (§3.1).
///
/// Reads each data region at its offset in 1 MiB pieces and calls
/// `on_progress(image bytes read so far)` after each piece. Returns the number of bytes written,
/// which equals [`stream_len`]`(map)`.
///
/// # Errors
/// Invalid name or mode, image I/O errors, [`TarError::ImageShort`] if the image ends inside a
/// data region, [`TarError::WriteStream`].
pub fn write_stream<R: Read + Seek, W: Write>(
    image: &mut R,
    meta: &MemberMeta,
    map: &SparseMap,
    out: &mut W,
    on_progress: &mut dyn FnMut(u64),
) -> Result<u64, TarError> {
    let mut out = CountingWriter { out, written: 0 };
    out.put(&header_blocks(meta, map)?)?;
    let mut buf = vec![0u8; IO_BUFFER_BYTES];
    let mut done = 0u64;
    on_progress(0);
    for region in &map.regions {
        image
            .seek(SeekFrom::Start(region.offset))
            .map_err(|source| TarError::SeekImage {
                offset: region.offset,
                source,
            })?;
        let mut pos = region.offset;
        while pos < region.end() {
            let want = chunk_len(region.end() - pos, buf.len());
            let got = read_full(image, &mut buf[..want]).map_err(|source| TarError::ReadImage {
                offset: pos,
                source,
            })?;
            if got < want {
                return Err(TarError::ImageShort {
                    offset: pos + got as u64,
                    expected_end: region.end(),
                });
            }
            out.put(&buf[..want])?;
            pos += want as u64;
            done += want as u64;
            on_progress(done);
        }
    }
    let written = out.finish(map.data_bytes())?;
    debug_assert_eq!(written, stream_len(map));
    Ok(written)
}

/// Writes the stream for a non-seekable source of exactly `size` bytes (e.g. stdin) as a type
/// `0` member. Returns the number of bytes written (= [`stream_len`] of a dense map).
///
/// # Errors
/// [`TarError::InputShort`] / [`TarError::InputLong`] if the source does not hold exactly
/// `size` bytes, read and write errors, invalid name or mode.
pub fn write_stream_from_reader<R: Read, W: Write>(
    input: &mut R,
    meta: &MemberMeta,
    size: u64,
    out: &mut W,
    on_progress: &mut dyn FnMut(u64),
) -> Result<u64, TarError> {
    let map = SparseMap::dense(size);
    let mut out = CountingWriter { out, written: 0 };
    out.put(&header_blocks(meta, &map)?)?;
    let mut buf = vec![0u8; IO_BUFFER_BYTES];
    let mut done = 0u64;
    on_progress(0);
    while done < size {
        let want = chunk_len(size - done, buf.len());
        let got = read_full(input, &mut buf[..want]).map_err(|source| TarError::ReadImage {
            offset: done,
            source,
        })?;
        out.put(&buf[..got])?;
        done += got as u64;
        on_progress(done);
        if got < want {
            return Err(TarError::InputShort {
                got: done,
                expected: size,
            });
        }
    }
    let mut probe = [0u8; 1];
    if read_full(input, &mut probe).map_err(|source| TarError::ReadImage {
        offset: done,
        source,
    })? != 0
    {
        return Err(TarError::InputLong { expected: size });
    }
    out.finish(size)
}

fn chunk_len(remaining: u64, buf_len: usize) -> usize {
    // The minimum is at most buf_len, so it fits in usize.
    remaining.min(buf_len as u64) as usize
}

/// Reads until `buf` is full or EOF; returns the bytes read.
fn read_full<R: Read + ?Sized>(input: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match input.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// The image member as described by its header(s).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberInfo {
    /// Member name (after GNU long-name or PAX `path` overrides).
    pub name: String,
    /// Permission bits.
    pub mode: u32,
    /// Modification time in whole seconds.
    pub mtime: u64,
    /// Real size of the image (`realsize` for `S`, `size` for `0`).
    pub size: u64,
    /// Data regions (dense for type `0`).
    pub map: SparseMap,
    /// Whether the member was an old-GNU sparse (`S`) member.
    pub sparse: bool,
}

/// Reader for a tar stream holding exactly one regular member (docs/format.md §3.7).
#[derive(Debug)]
pub struct TarReader<R: Read> {
    input: R,
    /// Bytes consumed so far, for error messages.
    offset: u64,
    member: Option<MemberInfo>,
}

/// Result of reading one block.
enum Block {
    Full(Box<[u8; BLOCK]>),
    /// EOF after this many bytes (1..512) of a block.
    Partial(Vec<u8>),
    Eof,
}

/// Overrides from GNU long-name and PAX records for the next header.
#[derive(Default)]
struct Overrides {
    name: Option<Vec<u8>>,
    size: Option<u64>,
    mtime: Option<u64>,
}

impl<R: Read> TarReader<R> {
    /// Wraps a tar stream.
    pub fn new(input: R) -> Self {
        Self {
            input,
            offset: 0,
            member: None,
        }
    }

    /// Reads the member's header(s): optional GNU long-name (`L`) and PAX (`x`, `g`) records,
    /// then one regular (`0`/NUL) or old-GNU sparse (`S`) header with its extension blocks.
    /// Calling it again returns the same information.
    ///
    /// # Errors
    /// Bad magic or checksum, malformed fields, a non-regular member, an invalid name, an
    /// invalid sparse map, an absurd size, a zero block before any member, or truncation.
    pub fn read_member_header(&mut self) -> Result<MemberInfo, TarError> {
        if let Some(info) = &self.member {
            return Ok(info.clone());
        }
        let mut over = Overrides::default();
        loop {
            let at = self.offset;
            let block = match self.read_block()? {
                Block::Full(block) => block,
                Block::Eof if at == 0 => return Err(TarError::EmptyStream),
                Block::Eof | Block::Partial(_) => {
                    return Err(TarError::Truncated {
                        offset: self.offset,
                        what: "member header",
                    });
                }
            };
            if is_zero(&block[..]) {
                return Err(TarError::NoMember { offset: at });
            }
            check_header(&block[..], at)?;
            let typeflag = block[TYPEFLAG];
            match typeflag {
                b'0' | 0 | b'S' => {
                    let info = self.parse_member(&block, at, over)?;
                    self.member = Some(info.clone());
                    return Ok(info);
                }
                b'L' => {
                    let data = self.read_extended(&block, at, "GNU long-name record")?;
                    // The record holds the name and a terminating NUL.
                    let end = data.iter().position(|&b| b == 0).unwrap_or(data.len());
                    over.name = Some(data[..end].to_vec());
                }
                b'x' => {
                    let data = self.read_extended(&block, at, "PAX header")?;
                    apply_pax(&data, at, &mut over)?;
                }
                b'g' => {
                    // Global PAX defaults carry nothing we honour for a single member.
                    self.read_extended(&block, at, "PAX global header")?;
                }
                other => {
                    let kind = match other {
                        b'1' => "hard link".to_owned(),
                        b'2' | b'K' => "symbolic link".to_owned(),
                        b'3' => "character device".to_owned(),
                        b'4' => "block device".to_owned(),
                        b'5' => "directory".to_owned(),
                        b'6' => "FIFO".to_owned(),
                        _ => format!("member of unsupported type {:?}", char::from(other)),
                    };
                    return Err(TarError::NotRegularFile {
                        name: show(cstr(&block[NAME])),
                        kind,
                    });
                }
            }
        }
    }

    /// Parses the member header block (and reads its extension blocks).
    fn parse_member(
        &mut self,
        block: &[u8; BLOCK],
        at: u64,
        over: Overrides,
    ) -> Result<MemberInfo, TarError> {
        let field = |range: std::ops::Range<usize>, what: &str| {
            parse_numeric(&block[range]).map_err(|e| TarError::Malformed {
                offset: at,
                detail: format!("{what}: {e}"),
            })
        };
        let mut name = cstr(&block[NAME]).to_vec();
        if block[MAGIC] == POSIX_MAGIC[..] && block[USTAR_PREFIX.start] != 0 {
            let mut full = cstr(&block[USTAR_PREFIX]).to_vec();
            full.push(b'/');
            full.extend_from_slice(&name);
            name = full;
        }
        if let Some(n) = over.name {
            name = n;
        }
        check_name(&name)?;
        let name = String::from_utf8(name).map_err(|e| TarError::InvalidName {
            name: show(e.as_bytes()),
            reason: "not valid UTF-8",
        })?;
        // Some writers (Go's FileInfoHeader) include the file-type bits; keep permissions only.
        let mode = (field(MODE, "mode")? & 0o7777) as u32;
        let mtime = match over.mtime {
            Some(mtime) => mtime,
            None => field(MTIME, "mtime")?,
        };
        let size = match over.size {
            Some(size) => size,
            None => field(SIZE, "size")?,
        };
        check_size(size, at)?;
        if block[TYPEFLAG] != b'S' {
            return Ok(MemberInfo {
                name,
                mode,
                mtime,
                size,
                map: SparseMap::dense(size),
                sparse: false,
            });
        }
        let realsize = field(REALSIZE, "realsize")?;
        check_size(realsize, at)?;
        let mut map = MapBuilder::new(realsize, size, at);
        map.collect(&block[SPARSE_SLOTS..IS_EXTENDED], at)?;
        let mut extended = block[IS_EXTENDED] != 0;
        while extended {
            let ext_at = self.offset;
            let Block::Full(ext) = self.read_block()? else {
                return Err(TarError::Truncated {
                    offset: self.offset,
                    what: "sparse extension block",
                });
            };
            map.collect(&ext[..EXT_IS_EXTENDED], ext_at)?;
            extended = ext[EXT_IS_EXTENDED] != 0;
        }
        let map = map.finish()?;
        Ok(MemberInfo {
            name,
            mode,
            mtime,
            size: realsize,
            map,
            sparse: true,
        })
    }

    /// Reads the data of a long-name or PAX record (padded to blocks).
    fn read_extended(
        &mut self,
        block: &[u8; BLOCK],
        at: u64,
        what: &'static str,
    ) -> Result<Vec<u8>, TarError> {
        let size = parse_numeric(&block[SIZE]).map_err(|e| TarError::Malformed {
            offset: at,
            detail: format!("{what} size: {e}"),
        })?;
        if size > MAX_EXTENDED_HEADER_BYTES {
            return Err(TarError::TooLarge {
                offset: at,
                size,
                max: MAX_EXTENDED_HEADER_BYTES,
            });
        }
        // size <= 1 MiB, so these fit in usize.
        let mut data = vec![0u8; padded_len(size) as usize];
        self.read_exact_at(&mut data, what)?;
        data.truncate(size as usize);
        Ok(data)
    }

    /// Streams the member data into `out` (or discards it when `None`), then reads the rest of
    /// the stream to EOF, requiring only zero blocks there. Returns the input.
    ///
    /// With `Some(file)`, the file is truncated first (so holes read as zeros), written with
    /// positional writes (it must not be in append mode) that skip holes and all-zero 4 KiB
    /// blocks, and finally set to the member's real size, so the output stays sparse (§3.7).
    /// `on_progress(member data bytes processed)` is called after each 1 MiB piece.
    ///
    /// # Errors
    /// Those of [`TarReader::read_member_header`] if it was not called yet, truncation, output
    /// I/O errors, [`TarError::MoreThanOneMember`] and [`TarError::TrailingGarbage`].
    pub fn extract_to(
        mut self,
        mut out: Option<&mut File>,
        on_progress: &mut dyn FnMut(u64),
    ) -> Result<R, TarError> {
        let info = match self.member.take() {
            Some(info) => info,
            None => self.read_member_header()?,
        };
        if let Some(file) = out.as_deref_mut() {
            file.set_len(0)
                .map_err(|source| TarError::SetOutputLen { len: 0, source })?;
        }
        let mut buf = vec![0u8; IO_BUFFER_BYTES];
        let mut done = 0u64;
        on_progress(0);
        for region in info.map.regions() {
            let mut pos = region.offset;
            while pos < region.end() {
                let n = chunk_len(region.end() - pos, buf.len());
                self.read_exact_at(&mut buf[..n], "member data")?;
                if let Some(file) = out.as_deref_mut() {
                    write_sparse(file, pos, &buf[..n])?;
                }
                pos += n as u64;
                done += n as u64;
                on_progress(done);
            }
        }
        let pad = block_padding(info.map.data_bytes());
        self.read_exact_at(&mut buf[..pad], "member data padding")?;
        if let Some(file) = out {
            file.set_len(info.size)
                .map_err(|source| TarError::SetOutputLen {
                    len: info.size,
                    source,
                })?;
        }
        // §3.7: only zero blocks may follow, up to EOF; the end-of-archive blocks and record
        // padding may be short or missing. Reading to EOF lets an upstream hasher see it all.
        loop {
            let at = self.offset;
            let rest: Vec<u8> = match self.read_block()? {
                Block::Eof => break,
                Block::Full(block) if is_zero(&block[..]) => continue,
                Block::Full(block) => {
                    if check_header(&block[..], at).is_ok() {
                        return Err(TarError::MoreThanOneMember { offset: at });
                    }
                    block.to_vec()
                }
                Block::Partial(bytes) if is_zero(&bytes) => break,
                Block::Partial(bytes) => bytes,
            };
            let first = rest.iter().position(|&b| b != 0).unwrap_or(0);
            return Err(TarError::TrailingGarbage {
                offset: at + first as u64,
            });
        }
        Ok(self.input)
    }

    fn read_block(&mut self) -> Result<Block, TarError> {
        let mut block = Box::new([0u8; BLOCK]);
        let n =
            read_full(&mut self.input, &mut block[..]).map_err(|source| TarError::ReadStream {
                offset: self.offset,
                source,
            })?;
        self.offset += n as u64;
        Ok(match n {
            0 => Block::Eof,
            BLOCK => Block::Full(block),
            n => Block::Partial(block[..n].to_vec()),
        })
    }

    fn read_exact_at(&mut self, buf: &mut [u8], what: &'static str) -> Result<(), TarError> {
        let n = read_full(&mut self.input, buf).map_err(|source| TarError::ReadStream {
            offset: self.offset,
            source,
        })?;
        self.offset += n as u64;
        if n < buf.len() {
            return Err(TarError::Truncated {
                offset: self.offset,
                what,
            });
        }
        Ok(())
    }
}

/// Writes `data` at `pos`, leaving 4 KiB-aligned all-zero blocks unwritten (holes).
fn write_sparse(file: &File, pos: u64, data: &[u8]) -> Result<(), TarError> {
    let flush = |from: usize, to: usize| {
        let at = pos + from as u64;
        file.write_all_at(&data[from..to], at)
            .map_err(|source| TarError::WriteOutput { offset: at, source })
    };
    let mut run: Option<usize> = None;
    let mut i = 0usize;
    while i < data.len() {
        let abs = pos + i as u64;
        // At most 4096, so it fits in usize.
        let to_boundary = (ZERO_SKIP_BYTES - abs % ZERO_SKIP_BYTES) as usize;
        let seg = to_boundary.min(data.len() - i);
        let skippable = seg as u64 == ZERO_SKIP_BYTES && is_zero(&data[i..i + seg]);
        if skippable {
            if let Some(start) = run.take() {
                flush(start, i)?;
            }
        } else if run.is_none() {
            run = Some(i);
        }
        i += seg;
    }
    if let Some(start) = run {
        flush(start, data.len())?;
    }
    Ok(())
}

fn is_zero(bytes: &[u8]) -> bool {
    bytes.iter().all(|&b| b == 0)
}

/// The bytes of a NUL-padded field up to the first NUL.
fn cstr(field: &[u8]) -> &[u8] {
    let end = field.iter().position(|&b| b == 0).unwrap_or(field.len());
    &field[..end]
}

/// Verifies magic and checksum of a header block at stream offset `at` (§3.3, §3.7).
fn check_header(block: &[u8], at: u64) -> Result<(), TarError> {
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

fn check_size(size: u64, at: u64) -> Result<(), TarError> {
    if size > MAX_MEMBER_BYTES {
        return Err(TarError::TooLarge {
            offset: at,
            size,
            max: MAX_MEMBER_BYTES,
        });
    }
    Ok(())
}

/// Builds an old-GNU sparse map entry by entry, checking each one against §3.7 and §3.5 as it
/// is decoded. The extension blocks come from an untrusted (and possibly highly compressed)
/// stream, so a bad map is rejected at its first bad entry instead of after all its blocks were
/// read, and the map held in memory is bounded: only data regions are stored, each one advances
/// through the image, and there are at most [`MAX_SPARSE_ENTRIES`] entries.
struct MapBuilder {
    realsize: u64,
    size: u64,
    /// Stream offset of the member header, for error messages about the whole map.
    at: u64,
    regions: Vec<DataRegion>,
    /// Entries decoded so far (used ones, zero-length ones included).
    entries: u64,
    /// End of the previous entry.
    prev_end: u64,
    /// Σ numbytes so far (at most `size`).
    sum: u64,
    /// An unused entry was seen: the map has ended.
    ended: bool,
}

impl MapBuilder {
    fn new(realsize: u64, size: u64, at: u64) -> Self {
        Self {
            realsize,
            size,
            at,
            regions: Vec::new(),
            entries: 0,
            prev_end: 0,
            sum: 0,
            ended: false,
        }
    }

    /// Adds the 24-byte entries of `slots` (a header's or extension block's, at stream offset
    /// `at`). An entry whose numbytes field starts with NUL ends the map (as in GNU tar); a used
    /// entry after that is malformed.
    fn collect(&mut self, slots: &[u8], at: u64) -> Result<(), TarError> {
        let bad = |detail: String| TarError::Malformed { offset: at, detail };
        for slot in slots.chunks_exact(24) {
            if slot[12] == 0 {
                self.ended = true;
                continue;
            }
            if self.ended {
                return Err(bad("sparse map entry after the end of the map".to_owned()));
            }
            let parse = |field: &[u8]| {
                parse_numeric(field).map_err(|e| bad(format!("sparse map entry: {e}")))
            };
            let (offset, len) = (parse(&slot[..12])?, parse(&slot[12..])?);
            self.add(offset, len).map_err(bad)?;
        }
        Ok(())
    }

    fn add(&mut self, offset: u64, len: u64) -> Result<(), String> {
        let i = self.entries;
        if i >= MAX_SPARSE_ENTRIES {
            return Err(format!(
                "sparse map has more than {MAX_SPARSE_ENTRIES} entries"
            ));
        }
        self.entries += 1;
        let (prev_end, realsize, size) = (self.prev_end, self.realsize, self.size);
        if offset < prev_end {
            return Err(format!(
                "sparse map entry {i} at offset {offset} is not after the previous one ending at {prev_end}"
            ));
        }
        let Some(end) = offset.checked_add(len).filter(|&e| e <= realsize) else {
            return Err(format!(
                "sparse map entry {i} ({offset}+{len}) extends past the real size {realsize}"
            ));
        };
        self.prev_end = end;
        // Cannot overflow: the entries are disjoint within realsize.
        self.sum += len;
        if self.sum > size {
            return Err(format!(
                "sparse map holds more than the {size} bytes of data the size field says"
            ));
        }
        if len == 0 {
            return Ok(());
        }
        // §3.5: data is stored region by region in whole blocks; only the last region may end
        // inside a block, or the block count would disagree with `size`.
        if let Some(r) = self.regions.last().filter(|r| r.len % BLOCK_BYTES != 0) {
            return Err(format!(
                "sparse map region at offset {} has unaligned length {} and is not the last",
                r.offset, r.len
            ));
        }
        self.regions.push(DataRegion { offset, len });
        Ok(())
    }

    fn finish(self) -> Result<SparseMap, TarError> {
        if self.sum != self.size {
            return Err(TarError::Malformed {
                offset: self.at,
                detail: format!(
                    "sparse map holds {} bytes of data but the size field says {}",
                    self.sum, self.size
                ),
            });
        }
        Ok(SparseMap::from_checked(self.realsize, self.regions))
    }
}

/// Applies the records of a PAX extended header (`"<len> <key>=<value>\n"`) to `over`.
fn apply_pax(data: &[u8], at: u64, over: &mut Overrides) -> Result<(), TarError> {
    let bad = |detail: String| TarError::Malformed { offset: at, detail };
    let mut rest = data;
    while !rest.is_empty() {
        if rest.iter().all(|&b| b == 0) {
            break; // some writers pad the record area with NULs
        }
        let space = rest
            .iter()
            .position(|&b| b == b' ')
            .ok_or_else(|| bad("pax record without a length".to_owned()))?;
        let len: usize = std::str::from_utf8(&rest[..space])
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad(format!("pax record length {:?}", show(&rest[..space]))))?;
        if len <= space + 1 || len > rest.len() || rest[len - 1] != b'\n' {
            return Err(bad(format!("pax record of length {len} is malformed")));
        }
        let record = &rest[space + 1..len - 1];
        rest = &rest[len..];
        let eq = record
            .iter()
            .position(|&b| b == b'=')
            .ok_or_else(|| bad("pax record without '='".to_owned()))?;
        let (key, value) = (&record[..eq], &record[eq + 1..]);
        let number = |what: &str| {
            std::str::from_utf8(value)
                .ok()
                .and_then(|s| s.parse::<u64>().ok())
                .ok_or_else(|| bad(format!("pax {what} {:?}", show(value))))
        };
        match key {
            b"path" => over.name = Some(value.to_vec()),
            b"size" => over.size = Some(number("size")?),
            b"mtime" => {
                // Fractional seconds are allowed; we keep whole seconds like the header field.
                let whole = value.split(|&b| b == b'.').next().unwrap_or(value);
                let secs = std::str::from_utf8(whole)
                    .ok()
                    .and_then(|s| s.parse::<u64>().ok())
                    .ok_or_else(|| bad(format!("pax mtime {:?}", show(value))))?;
                over.mtime = Some(secs);
            }
            k if k.starts_with(b"GNU.sparse.") => {
                return Err(TarError::PaxSparse {
                    offset: at,
                    key: show(k),
                });
            }
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    use std::process::Command;
    use std::time::{Duration, SystemTime};

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
                let mut expected: Vec<(u64, u64)> =
                    regions.iter().map(|r| (r.offset, r.len)).collect();
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
        let err =
            write_stream(&mut image, &meta("i"), &map, &mut Vec::new(), &mut |_| {}).unwrap_err();
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
            assert_eq!(hex::encode(Sha1::digest(&stream)), text("tar_stream_sha1"));

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
}
