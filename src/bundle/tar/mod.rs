//! The tar stage of a bundle: an old-GNU tar writer for the single image member (dense type `0`
//! or old-GNU sparse type `S`), the sparse map it is driven by, and the matching reader used by
//! verify/unbundle (docs/format.md §3).
//!
//! We do not use the `tar` crate: golden tests need injectable hole maps and mtimes, and the
//! stream must have the exact old-GNU layout GNU `tar -c -S --owner 0 --group 0` writes (§3.1).
//!
//! The writer side is `header` (the header block and its fields) and `writer` (the stream), the
//! reader side is `reader`, and `sparse` holds the data-region map both sides share.
//!
//! Bare § numbers in this module refer to docs/format.md.

mod header;
mod reader;
mod sparse;
#[cfg(test)]
mod tests;
mod writer;

pub use self::header::{MemberMeta, header_blocks};
pub use self::reader::{ImageSink, MemberInfo, TarReader};
pub use self::sparse::{DataRegion, SparseMap};
pub(crate) use self::writer::overfilled;
pub use self::writer::{
    Copying, DirectWrite, stream_len, write_stream, write_stream_direct, write_stream_from_reader,
    write_stream_from_reader_direct, write_stream_from_regions,
};

use std::io::{self, Read};

use nix::errno::Errno;

/// Size of one tar block (docs/format.md §3.1).
pub const BLOCK_BYTES: u64 = 512;
/// Size of one tar record: blocking factor 20, the stream is padded to a multiple (§3.1).
pub const RECORD_BYTES: u64 = 10_240;

/// `BLOCK_BYTES` as a buffer length.
const BLOCK: usize = 512;
/// Buffer for image and member data. 8 KiB reads cost a syscall per 8 KiB; 128 KiB keeps syscall
/// overhead negligible next to hashing and compression, and the buffer in the CPU's L2 cache:
/// the kernel's copy into it and the hashing and copying of it that follow all hit the cache
/// (with 1 MiB, the kernel's copy alone cost three times as much here).
const IO_BUFFER_BYTES: usize = 128 << 10;

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

/// `len` rounded up to whole blocks.
fn padded_len(len: u64) -> u64 {
    len.div_ceil(BLOCK_BYTES) * BLOCK_BYTES
}

/// Zeros to append after `len` bytes of data to reach a block boundary.
fn block_padding(len: u64) -> usize {
    // Always < 512, so the cast is lossless.
    (padded_len(len) - len) as usize
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
