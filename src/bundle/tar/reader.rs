//! The tar reader used by verify and unbundle (§3.7): one regular or old-GNU sparse member,
//! GNU long names and PAX records tolerated, the sparse map checked as it is decoded, and the
//! image extracted sparse.
//!
//! Bare § numbers in this module refer to docs/format.md.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;

use super::header::{
    EXT_IS_EXTENDED, IS_EXTENDED, MAGIC, MODE, MTIME, NAME, POSIX_MAGIC, REALSIZE, SIZE,
    SPARSE_SLOTS, TYPEFLAG, USTAR_PREFIX, check_header, check_name, cstr, parse_numeric, show,
};
use super::{
    BLOCK, BLOCK_BYTES, DataRegion, IO_BUFFER_BYTES, SparseMap, TarError, block_padding, chunk_len,
    padded_len, read_full,
};

/// Granularity at which extraction skips all-zero data to keep the output sparse: the page and
/// ext4 block size, so skipped ranges become real holes.
const ZERO_SKIP_BYTES: u64 = 4096;

/// Largest member the reader accepts. Far above any image (10 GiB default limit, §2, which the
/// user may override) yet small enough that offsets never overflow `i64` (`lseek`, `set_len`).
const MAX_MEMBER_BYTES: u64 = 1 << 50;
/// Largest GNU long-name or PAX record the reader buffers; real ones are a few hundred bytes.
const MAX_EXTENDED_HEADER_BYTES: u64 = 1 << 20;
/// Most entries an old-GNU sparse map may have (16 Mi: 256 MiB of regions in memory, from at
/// least 400 MiB of headers). A 10 GiB image alternating 4 KiB of data and 4 KiB of hole has
/// 1.3 Mi regions.
pub(super) const MAX_SPARSE_ENTRIES: u64 = 1 << 24;

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
        self,
        out: Option<&mut File>,
        on_progress: &mut dyn FnMut(u64),
    ) -> Result<R, TarError> {
        match out {
            Some(file) => self.extract_into(Some(&mut FileSink(file)), on_progress),
            None => self.extract_into(None, on_progress),
        }
    }

    /// [`TarReader::extract_to`] into any [`ImageSink`] (or nowhere when `None`).
    ///
    /// # Errors
    /// As [`TarReader::extract_to`]; the sink's errors are [`TarError::WriteOutput`] and
    /// [`TarError::SetOutputLen`].
    pub fn extract_into(
        mut self,
        mut out: Option<&mut dyn ImageSink>,
        on_progress: &mut dyn FnMut(u64),
    ) -> Result<R, TarError> {
        let info = match self.member.take() {
            Some(info) => info,
            None => self.read_member_header()?,
        };
        if let Some(sink) = out.as_deref_mut() {
            sink.begin(info.size)
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
                if let Some(sink) = out.as_deref_mut() {
                    sink.write_at(pos, &buf[..n])
                        .map_err(|source| TarError::WriteOutput {
                            offset: pos,
                            source,
                        })?;
                }
                pos += n as u64;
                done += n as u64;
                on_progress(done);
            }
        }
        let pad = block_padding(info.map.data_bytes());
        self.read_exact_at(&mut buf[..pad], "member data padding")?;
        if let Some(sink) = out {
            sink.end(info.size)
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
/// Where an extracted member's bytes go ([`TarReader::extract_into`]): a file, or anything
/// else that takes an image in order (the blocks of an EBS snapshot).
pub trait ImageSink {
    /// Called once, before any data, with the member's size.
    fn begin(&mut self, size: u64) -> io::Result<()>;
    /// The member's `data` at `offset`. Offsets only grow and writes never overlap; what is
    /// never written (holes) reads as zeros.
    fn write_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()>;
    /// Called once, after all the data, with the member's size.
    fn end(&mut self, size: u64) -> io::Result<()>;
}

/// A file as an [`ImageSink`]: truncated first (so holes read as zeros), written with
/// positional writes that skip all-zero 4 KiB blocks, then set to the member's size, so the
/// output stays sparse (§3.7).
struct FileSink<'a>(&'a File);

impl ImageSink for FileSink<'_> {
    fn begin(&mut self, _size: u64) -> io::Result<()> {
        self.0.set_len(0)
    }

    fn write_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        write_sparse(self.0, offset, data)
    }

    fn end(&mut self, size: u64) -> io::Result<()> {
        self.0.set_len(size)
    }
}

fn write_sparse(file: &File, pos: u64, data: &[u8]) -> io::Result<()> {
    let flush = |from: usize, to: usize| file.write_all_at(&data[from..to], pos + from as u64);
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

pub(super) fn is_zero(bytes: &[u8]) -> bool {
    bytes.iter().all(|&b| b == 0)
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
pub(super) struct MapBuilder {
    realsize: u64,
    size: u64,
    /// Stream offset of the member header, for error messages about the whole map.
    at: u64,
    pub(super) regions: Vec<DataRegion>,
    /// Entries decoded so far (used ones, zero-length ones included).
    pub(super) entries: u64,
    /// End of the previous entry.
    prev_end: u64,
    /// Σ numbytes so far (at most `size`).
    sum: u64,
    /// An unused entry was seen: the map has ended.
    ended: bool,
}

impl MapBuilder {
    pub(super) fn new(realsize: u64, size: u64, at: u64) -> Self {
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

    pub(super) fn add(&mut self, offset: u64, len: u64) -> Result<(), String> {
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

    pub(super) fn finish(self) -> Result<SparseMap, TarError> {
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
