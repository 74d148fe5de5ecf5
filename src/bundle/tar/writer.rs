//! The tar writer (§3.1): the whole stream of the single image member, from a seekable image
//! with its sparse map or from a stream of known length.
//!
//! Bare § numbers in this module refer to docs/format.md.

use std::io::{self, Read, Seek, SeekFrom, Write};

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

/// A writer of the tar stream that can lend its own buffer: image data is then read straight into
/// it instead of into a buffer of the tar writer's and copied from there. The parallel gzip
/// encoder lends the chunk its workers compress; [`Copying`] gives any `Write` this interface.
pub trait DirectWrite: Write {
    /// Calls `fill` once with room in the writer's own buffer: at most `max` bytes, and at least
    /// one if `max` is not zero. The first `n` bytes there, `n` being what `fill` returns, are
    /// then written to the stream as by `write`. Returns `n`.
    ///
    /// # Errors
    ///
    /// An error of `fill` is returned unchanged (and nothing of that room is written), as are the
    /// writer's own errors. After an error the writer may be unusable.
    fn write_direct(
        &mut self,
        max: usize,
        fill: &mut dyn FnMut(&mut [u8]) -> io::Result<usize>,
    ) -> io::Result<usize>;
}

/// [`DirectWrite`] for any `Write`: the room lent is a buffer of its own, copied to the inner
/// writer.
#[derive(Debug)]
pub struct Copying<W: Write> {
    inner: W,
    buf: Vec<u8>,
}

impl<W: Write> Copying<W> {
    /// Wraps `inner` with a buffer of the tar writer's read size.
    pub fn new(inner: W) -> Self {
        Self {
            inner,
            buf: vec![0; IO_BUFFER_BYTES],
        }
    }

    /// The inner writer.
    pub fn into_inner(self) -> W {
        self.inner
    }
}

impl<W: Write> Write for Copying<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.inner.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl<W: Write> DirectWrite for Copying<W> {
    fn write_direct(
        &mut self,
        max: usize,
        fill: &mut dyn FnMut(&mut [u8]) -> io::Result<usize>,
    ) -> io::Result<usize> {
        let room = max.min(self.buf.len());
        let n = fill(&mut self.buf[..room])?;
        let filled = self.buf.get(..n).ok_or_else(|| overfilled(n, room))?;
        self.inner.write_all(filled)?;
        Ok(n)
    }
}

/// The error of a `fill` that reports more bytes than the room it was given.
pub(crate) fn overfilled(n: usize, room: usize) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("{n} bytes reported written into {room} bytes of room"),
    )
}

impl<W: DirectWrite> DirectWrite for crate::interrupt::Interruptible<W> {
    fn write_direct(
        &mut self,
        max: usize,
        fill: &mut dyn FnMut(&mut [u8]) -> io::Result<usize>,
    ) -> io::Result<usize> {
        crate::interrupt::check()?;
        self.0.write_direct(max, fill)
    }
}

/// How one read of image data into the stream went: `got` bytes of the `asked` (fewer only at
/// the end of the input), or the read's error.
type Fill = Result<(usize, usize), io::Error>;

/// Counts the bytes written so errors can name the stream offset.
struct CountingWriter<'a, W: DirectWrite> {
    out: &'a mut W,
    written: u64,
}

impl<W: DirectWrite> CountingWriter<'_, W> {
    /// Reads up to `max` (> 0) bytes of `input` straight into the stream ([`read_full`]: fewer
    /// only at its end). The writer's errors are the `Err`; the read's are in the [`Fill`].
    fn read_into<R: Read + ?Sized>(&mut self, input: &mut R, max: usize) -> Result<Fill, TarError> {
        let mut outcome = None;
        let written = self
            .out
            .write_direct(max, &mut |room| match read_full(input, room) {
                Ok(got) => {
                    outcome = Some(Ok((got, room.len())));
                    Ok(got)
                }
                Err(e) => {
                    // Kept apart from the writer's own errors, which name the stream offset.
                    let kind = e.kind();
                    outcome = Some(Err(e));
                    Err(io::Error::new(kind, "reading the image failed"))
                }
            });
        let offset = self.written;
        let stream_err = |source| TarError::WriteStream { offset, source };
        match outcome {
            Some(Err(e)) => Ok(Err(e)),
            Some(Ok(read)) => {
                self.written += written.map_err(stream_err)? as u64;
                Ok(Ok(read))
            }
            // `fill` was never called: without this error the callers would wait for data
            // forever.
            None => Err(stream_err(match written {
                Err(e) => e,
                Ok(_) => io::Error::other("the stream writer lent no room for image data"),
            })),
        }
    }

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
    write_stream_direct(image, meta, map, &mut Copying::new(out), on_progress)
}

/// [`write_stream`] into a [`DirectWrite`]: image data is read straight into the writer's buffer,
/// in pieces of at most 128 KiB (which stay in the CPU's L2 cache for whatever the writer does
/// with them next).
///
/// # Errors
/// As [`write_stream`].
pub fn write_stream_direct<R: Read + Seek, W: DirectWrite>(
    image: &mut R,
    meta: &MemberMeta,
    map: &SparseMap,
    out: &mut W,
    on_progress: &mut dyn FnMut(u64),
) -> Result<u64, TarError> {
    let mut out = CountingWriter { out, written: 0 };
    out.put(&header_blocks(meta, map)?)?;
    let mut done = 0u64;
    on_progress(0);
    for region in &map.regions {
        image
            .seek(SeekFrom::Start(region.offset))
            .map_err(|source| TarError::SeekImage {
                offset: region.offset,
                source,
            })?;
        let got = copy_region(image, region, &mut out, &mut done, on_progress)?;
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

/// Reads the bytes of `region` from `input` (positioned at its start) straight into `out`,
/// adding them to `done` and reporting it after each piece. Returns the bytes copied: fewer
/// than the region's length only when `input` ended first.
fn copy_region<R: Read, W: DirectWrite>(
    input: &mut R,
    region: &DataRegion,
    out: &mut CountingWriter<'_, W>,
    done: &mut u64,
    on_progress: &mut dyn FnMut(u64),
) -> Result<u64, TarError> {
    let mut pos = region.offset;
    while pos < region.end() {
        let want = chunk_len(region.end() - pos, IO_BUFFER_BYTES);
        let (got, asked) = out
            .read_into(input, want)?
            .map_err(|source| TarError::ReadImage {
                offset: pos,
                source,
            })?;
        pos += got as u64;
        *done += got as u64;
        on_progress(*done);
        if got < asked {
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
    let mut copying = Copying::new(out);
    let mut out = CountingWriter {
        out: &mut copying,
        written: 0,
    };
    out.put(&header_blocks(meta, map)?)?;
    let mut done = 0u64;
    on_progress(0);
    let expected = map.data_bytes();
    for region in &map.regions {
        let got = copy_region(data, region, &mut out, &mut done, on_progress)?;
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
    write_stream_from_reader_direct(input, meta, size, &mut Copying::new(out), on_progress)
}

/// [`write_stream_from_reader`] into a [`DirectWrite`] (see [`write_stream_direct`]).
///
/// # Errors
/// As [`write_stream_from_reader`].
pub fn write_stream_from_reader_direct<R: Read, W: DirectWrite>(
    input: &mut R,
    meta: &MemberMeta,
    size: u64,
    out: &mut W,
    on_progress: &mut dyn FnMut(u64),
) -> Result<u64, TarError> {
    let map = SparseMap::dense(size);
    let mut out = CountingWriter { out, written: 0 };
    out.put(&header_blocks(meta, &map)?)?;
    let mut done = 0u64;
    on_progress(0);
    while done < size {
        let want = chunk_len(size - done, IO_BUFFER_BYTES);
        let (got, asked) = out
            .read_into(input, want)?
            .map_err(|source| TarError::ReadImage {
                offset: done,
                source,
            })?;
        done += got as u64;
        on_progress(done);
        if got < asked {
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
