//! The part writer (§8.1): the ciphertext cut into parts of [`PART_SIZE_BYTES`], each hashed and
//! handed whole to a [`PartSink`].
//!
//! Bare § numbers in this module refer to docs/format.md.

use std::io::{self, Write};

use super::{PART_SIZE_BYTES, PartInfo, PartSink};
use crate::bundle::digest::sha1_hex;

/// Splits a byte stream into parts of [`PART_SIZE_BYTES`] and passes each to a sink.
pub struct PartWriter<S: PartSink> {
    sink: S,
    buf: Vec<u8>,
    parts: Vec<PartInfo>,
    total: u64,
}

impl<S: PartSink> PartWriter<S> {
    /// A writer feeding `sink`.
    pub fn new(sink: S) -> Self {
        Self {
            sink,
            buf: Vec::with_capacity(PART_SIZE_BYTES),
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
            size: self.buf.len() as u64,
            sha1: sha1_hex(&self.buf),
        };
        let data = std::mem::replace(&mut self.buf, Vec::with_capacity(PART_SIZE_BYTES));
        self.sink.put_part(&info, data)?;
        self.parts.push(info);
        Ok(())
    }

    /// Emits the last (possibly short) part and returns the sink and the list of parts.
    /// A stream of zero bytes yields zero parts; the cipher never produces one (§6).
    pub fn finish(mut self) -> io::Result<(S, Vec<PartInfo>)> {
        if !self.buf.is_empty() {
            self.emit()?;
        }
        Ok((self.sink, self.parts))
    }
}

impl<S: PartSink> Write for PartWriter<S> {
    fn write(&mut self, mut data: &[u8]) -> io::Result<usize> {
        let n = data.len();
        while !data.is_empty() {
            let room = PART_SIZE_BYTES - self.buf.len();
            let take = room.min(data.len());
            self.buf.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.buf.len() == PART_SIZE_BYTES {
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
