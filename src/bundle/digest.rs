//! Hashing adapters: SHA-1 over every byte that passes through a reader or writer.
//!
//! The tar-stream digest (`image/digest`, docs/format.md §4) is computed by putting a
//! [`HashingWriter`] between the tar writer and the compressor when bundling, and a
//! [`HashingReader`] between the decompressor and the tar reader when unbundling, so the stream
//! is hashed in the same pass that produces or consumes it.

use std::io::{self, Read, Write};

use sha1::{Digest, Sha1};

use crate::bundle::tar::{DirectWrite, overfilled};

/// Lowercase hex SHA-1 of `data`.
pub fn sha1_hex(data: &[u8]) -> String {
    hex::encode(Sha1::digest(data))
}

/// A writer that hashes and counts everything written through it.
#[derive(Debug)]
pub struct HashingWriter<W> {
    inner: W,
    hasher: Sha1,
    len: u64,
}

impl<W: Write> HashingWriter<W> {
    /// Wraps `inner`.
    pub fn new(inner: W) -> Self {
        Self {
            inner,
            hasher: Sha1::new(),
            len: 0,
        }
    }

    /// Bytes written so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True when nothing has been written yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The inner writer, e.g. to read its counters.
    pub fn get_ref(&self) -> &W {
        &self.inner
    }

    /// Returns the lowercase hex SHA-1 of everything written, the byte count and the inner writer.
    pub fn finish(self) -> (String, u64, W) {
        (hex::encode(self.hasher.finalize()), self.len, self.inner)
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Hashes what the inner writer's `fill` put into its room right after the read, while the bytes
/// are still in the CPU's cache.
impl<W: DirectWrite> DirectWrite for HashingWriter<W> {
    fn write_direct(
        &mut self,
        max: usize,
        fill: &mut dyn FnMut(&mut [u8]) -> io::Result<usize>,
    ) -> io::Result<usize> {
        let hasher = &mut self.hasher;
        let n = self.inner.write_direct(max, &mut |room| {
            let n = fill(room)?;
            hasher.update(room.get(..n).ok_or_else(|| overfilled(n, room.len()))?);
            Ok(n)
        })?;
        self.len += n as u64;
        Ok(n)
    }
}

/// A reader that hashes and counts everything read through it.
#[derive(Debug)]
pub struct HashingReader<R> {
    inner: R,
    hasher: Sha1,
    len: u64,
}

impl<R: Read> HashingReader<R> {
    /// Wraps `inner`.
    pub fn new(inner: R) -> Self {
        Self {
            inner,
            hasher: Sha1::new(),
            len: 0,
        }
    }

    /// Returns the lowercase hex SHA-1 of everything read, the byte count and the inner reader.
    pub fn finish(self) -> (String, u64, R) {
        (hex::encode(self.hasher.finalize()), self.len, self.inner)
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }
}

/// A writer that only counts the bytes written through it.
#[derive(Debug)]
pub struct CountingWriter<W> {
    inner: W,
    len: u64,
}

impl<W: Write> CountingWriter<W> {
    /// Wraps `inner`.
    pub fn new(inner: W) -> Self {
        Self { inner, len: 0 }
    }

    /// Bytes written so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True when nothing has been written yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The byte count and the inner writer.
    pub fn finish(self) -> (u64, W) {
        (self.len, self.inner)
    }
}

impl<W: Write> Write for CountingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.len += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_answers() {
        assert_eq!(sha1_hex(b""), "da39a3ee5e6b4b0d3255bfef95601890afd80709");
        assert_eq!(sha1_hex(b"abc"), "a9993e364706816aba3e25717850c26c9cd0d89d");
    }

    #[test]
    fn direct_writes_are_hashed_as_filled() {
        let mut w = HashingWriter::new(crate::bundle::tar::Copying::new(Vec::new()));
        w.write_all(b"ab").unwrap();
        let n = w
            .write_direct(10, &mut |room| {
                room[..3].copy_from_slice(b"cde");
                Ok(3)
            })
            .unwrap();
        assert_eq!(n, 3);
        // A fill reporting more than its room is refused, and nothing of it is hashed.
        let err = w
            .write_direct(4, &mut |room| Ok(room.len() + 1))
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        let (hex, len, inner) = w.finish();
        assert_eq!(hex, sha1_hex(b"abcde"));
        assert_eq!(len, 5);
        assert_eq!(inner.into_inner(), b"abcde");
    }

    #[test]
    fn writer_and_reader_hash_what_passes() {
        let mut w = HashingWriter::new(Vec::new());
        w.write_all(b"ab").unwrap();
        w.write_all(b"c").unwrap();
        let (digest, len, inner) = w.finish();
        assert_eq!(digest, sha1_hex(b"abc"));
        assert_eq!((len, inner.as_slice()), (3, &b"abc"[..]));

        let mut r = HashingReader::new(&b"abc"[..]);
        let mut out = Vec::new();
        r.read_to_end(&mut out).unwrap();
        let (digest, len, _) = r.finish();
        assert_eq!(
            (digest.as_str(), len),
            ("a9993e364706816aba3e25717850c26c9cd0d89d", 3)
        );
    }
}
