//! The strict gzip reader (§5 Reader): one or more concatenated members, each checked, and
//! nothing but gzip members after the first.
//!
//! Bare § numbers in this module refer to docs/format.md.

use std::fmt;
use std::io::{self, BufRead, BufReader, Read};

use super::GzipError;

/// Counts the bytes read through it, to report offsets in the compressed stream.
#[derive(Debug)]
struct CountingReader<R> {
    inner: R,
    count: u64,
}

impl<R: Read> Read for CountingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count += n as u64;
        Ok(n)
    }
}

type MemberDecoder<R> = flate2::bufread::GzDecoder<BufReader<CountingReader<R>>>;

/// Strict gzip reader (docs/format.md §5 Reader).
///
/// Decodes one or more concatenated members. Each member's CRC-32 and ISIZE are checked by
/// flate2; ISIZE is only compared modulo 2³², never used as a length. Truncated input, a corrupt
/// member, an empty input, and bytes after a member that do not form another gzip member are all
/// errors ([`GzipError::Decode`], [`GzipError::TrailingData`]).
pub struct GzipReader<R: Read> {
    /// `None` only transiently while switching members.
    decoder: Option<MemberDecoder<R>>,
    /// Index of the member being decoded.
    member: u64,
    finished: bool,
}

impl<R: Read> fmt::Debug for GzipReader<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GzipReader")
            .field("member", &self.member)
            .field("finished", &self.finished)
            .finish_non_exhaustive()
    }
}

impl<R: Read> GzipReader<R> {
    /// Creates a reader decoding the gzip stream `inner`.
    pub fn new(inner: R) -> Self {
        let buffered = BufReader::new(CountingReader { inner, count: 0 });
        Self {
            decoder: Some(flate2::bufread::GzDecoder::new(buffered)),
            member: 0,
            finished: false,
        }
    }

    /// Returns the underlying reader. Compressed bytes read ahead into the internal buffer are
    /// lost, so its position is unspecified unless the stream was read to the end.
    pub fn into_inner(self) -> R {
        // Invariant: `decoder` is only `None` between `take` and the unconditional re-assignment
        // in `next_member`, which contains no early return.
        let decoder = self.decoder.expect("decoder present outside next_member");
        decoder.into_inner().into_inner().inner
    }

    /// Called when the current member ended cleanly: either the input ends too, or the next
    /// bytes must start another member.
    fn next_member(&mut self) -> io::Result<bool> {
        let Some(decoder) = self.decoder.as_mut() else {
            return Ok(false);
        };
        let buffered = decoder.get_mut();
        let member = self.member;
        let decode_err = |source| GzipError::Decode { member, source }.into_io();
        if buffered.fill_buf().map_err(decode_err)?.is_empty() {
            return Ok(false);
        }
        let offset = buffered.get_ref().count - buffered.buffer().len() as u64;
        let Some(old) = self.decoder.take() else {
            return Ok(false);
        };
        let mut next = flate2::bufread::GzDecoder::new(old.into_inner());
        if next.header().is_none() {
            // The header did not parse; reading yields the parser's error (or, if it was never
            // stored, a generic one).
            let source = match next.read(&mut [0u8; 1]) {
                Err(e) => e,
                Ok(_) => io::Error::new(io::ErrorKind::InvalidData, "invalid gzip header"),
            };
            self.decoder = Some(next);
            return Err(GzipError::TrailingData {
                member,
                offset,
                source,
            }
            .into_io());
        }
        self.decoder = Some(next);
        self.member += 1;
        Ok(true)
    }
}

impl<R: Read> Read for GzipReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() || self.finished {
            return Ok(0);
        }
        loop {
            let Some(decoder) = self.decoder.as_mut() else {
                return Ok(0);
            };
            let member = self.member;
            let result = decoder.read(buf);
            match result {
                Ok(0) => {
                    if !self.next_member().inspect_err(|_| self.finished = true)? {
                        self.finished = true;
                        return Ok(0);
                    }
                }
                Ok(n) => return Ok(n),
                Err(source) => {
                    self.finished = true;
                    return Err(GzipError::Decode { member, source }.into_io());
                }
            }
        }
    }
}
