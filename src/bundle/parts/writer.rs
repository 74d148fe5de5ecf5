//! The part writer (§8.1): the ciphertext cut into parts of [`PART_SIZE_BYTES`], each hashed and
//! handed whole to a [`PartSink`].
//!
//! Bare § numbers in this module refer to docs/format.md.

use std::io::{self, Write};

use sha1::{Digest, Sha1};

use super::{PART_SIZE_BYTES, PartInfo, PartSink};

/// Splits a byte stream into parts of [`PART_SIZE_BYTES`], hashing each as its bytes pass, and
/// passes them to a sink: whole, or as they come to a streaming sink ([`PartSink::streams`]).
pub struct PartWriter<S: PartSink> {
    sink: S,
    streaming: bool,
    /// The part being filled (not streaming).
    buf: Vec<u8>,
    /// Bytes of the current part so far.
    filled: usize,
    hasher: Sha1,
    parts: Vec<PartInfo>,
    total: u64,
}

impl<S: PartSink> PartWriter<S> {
    /// A writer feeding `sink`.
    pub fn new(sink: S) -> Self {
        let streaming = sink.streams();
        Self {
            sink,
            streaming,
            buf: if streaming {
                Vec::new()
            } else {
                Vec::with_capacity(PART_SIZE_BYTES)
            },
            filled: 0,
            hasher: Sha1::new(),
            parts: Vec::new(),
            total: 0,
        }
    }

    /// Bytes written so far.
    pub fn total(&self) -> u64 {
        self.total
    }

    fn emit(&mut self) -> io::Result<()> {
        let info = PartInfo {
            index: self.parts.len() as u64,
            size: self.filled as u64,
            sha1: hex::encode(std::mem::take(&mut self.hasher).finalize()),
        };
        self.filled = 0;
        if self.streaming {
            self.sink.end_part(&info)?;
        } else {
            let data = std::mem::replace(&mut self.buf, Vec::with_capacity(PART_SIZE_BYTES));
            self.sink.put_part(&info, data)?;
        }
        self.parts.push(info);
        Ok(())
    }

    /// Emits the last (possibly short) part and returns the sink and the list of parts.
    /// A stream of zero bytes yields zero parts; the cipher never produces one (§6).
    pub fn finish(mut self) -> io::Result<(S, Vec<PartInfo>)> {
        if self.filled > 0 {
            self.emit()?;
        }
        Ok((self.sink, self.parts))
    }
}

impl<S: PartSink> Write for PartWriter<S> {
    fn write(&mut self, mut data: &[u8]) -> io::Result<usize> {
        let n = data.len();
        while !data.is_empty() {
            let room = PART_SIZE_BYTES - self.filled;
            let (piece, rest) = data.split_at(room.min(data.len()));
            self.hasher.update(piece);
            if self.streaming {
                self.sink.part_bytes(self.parts.len() as u64, piece)?;
            } else {
                self.buf.extend_from_slice(piece);
            }
            self.filled += piece.len();
            data = rest;
            if self.filled == PART_SIZE_BYTES {
                self.emit()?;
            }
        }
        self.total += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Collects parts in memory (tests, small bundles).
#[derive(Debug, Default)]
pub struct MemorySink {
    /// The parts in order.
    pub parts: Vec<Vec<u8>>,
}

impl PartSink for MemorySink {
    fn put_part(&mut self, _info: &PartInfo, data: Vec<u8>) -> io::Result<()> {
        self.parts.push(data);
        Ok(())
    }
}
