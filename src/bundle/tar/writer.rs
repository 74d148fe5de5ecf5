//! The tar writer (§3.1): the whole stream of the single image member, from a seekable image
//! with its sparse map or from a stream of known length.
//!
//! Bare § numbers in this module refer to docs/format.md.

use std::io::{Read, Seek, SeekFrom, Write};

use super::header::header_blocks;
use super::{
    BLOCK, BLOCK_BYTES, DataRegion, IO_BUFFER_BYTES, MemberMeta, RECORD_BYTES, SparseMap, TarError,
    block_padding, chunk_len, padded_len, read_full,
};

/// Exact length T of the stream for this map, record padding included (§3.1).
pub fn stream_len(map: &SparseMap) -> u64 {
    let headers = BLOCK_BYTES * (1 + map.extension_blocks() as u64);
    let data: u64 = map.regions.iter().map(|r| padded_len(r.len)).sum::<u64>();
    let l = headers + data + 2 * BLOCK_BYTES;
    l.div_ceil(RECORD_BYTES) * RECORD_BYTES
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
        let got = copy_region(image, region, &mut buf, &mut out, &mut done, on_progress)?;
        if got < region.len {
            return Err(TarError::ImageShort {
                offset: region.offset + got,
                expected_end: region.end(),
            });
        }
    }
    let written = out.finish(map.data_bytes())?;
    debug_assert_eq!(written, stream_len(map));
    Ok(written)
}

/// Copies the bytes of `region` from `input` (positioned at its start) into `out`, adding them
/// to `done` and reporting it after each piece. Returns the bytes copied: fewer than the
/// region's length only when `input` ended first.
fn copy_region<R: Read, W: Write>(
    input: &mut R,
    region: &DataRegion,
    buf: &mut [u8],
    out: &mut CountingWriter<'_, W>,
    done: &mut u64,
    on_progress: &mut dyn FnMut(u64),
) -> Result<u64, TarError> {
    let mut pos = region.offset;
    while pos < region.end() {
        let want = chunk_len(region.end() - pos, buf.len());
        let got = read_full(input, &mut buf[..want]).map_err(|source| TarError::ReadImage {
            offset: pos,
            source,
        })?;
        out.put(&buf[..got])?;
        pos += got as u64;
        *done += got as u64;
        on_progress(*done);
        if got < want {
            break;
        }
    }
    Ok(pos - region.offset)
}

/// Writes the stream T for an image described by `map` whose data comes from a source that
/// cannot seek: `data` yields the bytes of the map's data regions one after the other, in
/// order, and nothing else (the holes are not in it). An EBS snapshot read block by block is
/// such a source. Returns the bytes written (= [`stream_len`]`(map)`).
///
/// # Errors
/// [`TarError::InputShort`] / [`TarError::InputLong`] if `data` does not hold exactly the map's
/// data bytes, read errors (with the image offset), write errors, invalid name or mode.
pub fn write_stream_from_regions<R: Read, W: Write>(
    data: &mut R,
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
    let expected = map.data_bytes();
    for region in &map.regions {
        let got = copy_region(data, region, &mut buf, &mut out, &mut done, on_progress)?;
        if got < region.len {
            return Err(TarError::InputShort {
                got: done,
                expected,
            });
        }
    }
    let mut probe = [0u8; 1];
    if read_full(data, &mut probe).map_err(|source| TarError::ReadImage {
        offset: map.size(),
        source,
    })? != 0
    {
        return Err(TarError::InputLong { expected });
    }
    let written = out.finish(expected)?;
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
