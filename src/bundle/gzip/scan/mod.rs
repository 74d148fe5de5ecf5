//! A strict RFC 1951 (DEFLATE) block scanner: walks a complete raw deflate stream without
//! producing its output and reports where its final block starts and where it ends.
//!
//! The parallel encoder needs this because libdeflate always ends a stream with a final block and
//! has no sync-flush API: to join independently compressed chunks into one stream
//! (docs/format.md §5), the encoder clears the final block's BFINAL bit and appends an empty
//! stored block, which requires knowing the exact bit positions of that block's header and of its
//! end. Walking the stream also validates it completely (block types, stored lengths, Huffman
//! code lengths, every symbol, every distance, the decoded length and the padding after the final
//! block), so every chunk the encoder emits is self-checked. Any malformed input is an error;
//! every loop consumes input, so no input can make the scanner run away.
//!
//! [`scan_pair`] scans two streams with the same results as two [`scan`]s, faster: the fast
//! loops of `fast` decode an item of each in turn.

mod fast;
#[cfg(test)]
mod tests;

use self::fast::{Chain, scan_fast, scan_fast_pair};

/// Where a deflate stream's final block lies, and how much it decodes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct StreamEnd {
    /// Bit offset (LSB-first, from the start of the stream) of the final block's header, whose
    /// first bit is BFINAL.
    pub(super) final_block_bit: usize,
    /// Bit offset just after the final block: after its end-of-block code for a Huffman block,
    /// after its last payload byte for a stored block.
    pub(super) end_bit: usize,
    /// Number of bytes the stream decodes to.
    pub(super) decoded_len: u64,
}

/// Why a byte string is not one complete, valid raw deflate stream.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScanError {
    /// The data ends before the final block does.
    #[error("deflate stream ends inside a block at bit {bit}")]
    Truncated {
        /// Bit offset of the item that could not be read completely.
        bit: usize,
    },
    /// A structural rule of RFC 1951 is broken.
    #[error("invalid deflate data at bit {bit}: {what}")]
    Invalid {
        /// Bit offset of the offending item.
        bit: usize,
        /// Which rule is broken.
        what: &'static str,
    },
    /// A stored block's LEN and NLEN are not one's complements.
    #[error("stored block at byte {byte} has LEN {len:#06x} but NLEN {nlen:#06x}")]
    StoredLength {
        /// Byte offset of LEN.
        byte: usize,
        /// The LEN field.
        len: u16,
        /// The NLEN field.
        nlen: u16,
    },
    /// A match reaches back before the start of the stream.
    #[error(
        "distance {distance} at bit {bit} reaches before the start of the stream ({available} bytes decoded)"
    )]
    DistanceTooFar {
        /// Bit offset of the distance code.
        bit: usize,
        /// The decoded distance.
        distance: u32,
        /// Bytes decoded before the match.
        available: u64,
    },
    /// Bytes follow the final block.
    #[error("{count} bytes follow the final block ending at bit {end_bit}")]
    TrailingBytes {
        /// Number of bytes after the byte holding the final block's last bit.
        count: usize,
        /// Bit offset where the final block ends.
        end_bit: usize,
    },
    /// The bits that pad the final block to a byte boundary are not zero.
    #[error("padding bits after the final block ending at bit {end_bit} are not zero")]
    NonzeroPadding {
        /// Bit offset where the final block ends.
        end_bit: usize,
    },
}

/// Longest Huffman code in deflate (RFC 1951 §3.2.7).
const MAX_CODE_BITS: usize = 15;

/// Index bits of each primary table: one lookup resolves every code of up to this many bits;
/// longer codes take the careful path. On binaries compressed by libdeflate at level 6, 0.3% of
/// the items have a longer literal/length or distance code; a 10-bit literal/length table made
/// the scanner about 10% slower, a 12-bit one no faster (with twice the table to build per
/// block). Code-length codes are ≤ 7 bits by definition.
const LITLEN_TABLE_BITS: u32 = 11;
const DIST_TABLE_BITS: u32 = 8;
/// Entries of each primary table.
const LITLEN_FAST: usize = 1 << LITLEN_TABLE_BITS;
const DIST_FAST: usize = 1 << DIST_TABLE_BITS;
const CODELEN_FAST: usize = 1 << 7;

/// The most bits one item resolved by the primary tables takes: a length code with 5 extra bits,
/// then a distance code with 13 extra bits. [`scan_fast`] relies on it leaving, of the 57 bits it
/// holds at least after a refill, enough bits for the next literal/length lookup.
const MAX_FAST_ITEM_BITS: u32 = LITLEN_TABLE_BITS + 5 + DIST_TABLE_BITS + 13;
const _: () = assert!(MAX_FAST_ITEM_BITS <= 49 && MAX_FAST_ITEM_BITS + LITLEN_TABLE_BITS <= 57);

/// Literal/length and distance alphabets that a dynamic header may declare (RFC 1951 §3.2.7:
/// HLIT ≤ 29 + 257 = 286 codes, HDIST ≤ 29 + 1 = 30 codes; 286/287 and 30/31 never occur in data).
const MAX_LITLEN_CODES: usize = 286;
const MAX_DIST_CODES: usize = 30;

/// Bits [`BitReader::peek`] always yields.
const PEEK_BITS: u32 = 57;

/// Longest match in the bit stream: a 15-bit length code with 5 extra bits, then a 15-bit
/// distance code with 13 extra bits. [`scan_symbol`] finds it all in one [`BitReader::peek`].
const MAX_MATCH_BITS: u32 = 48;
const _: () = assert!(MAX_MATCH_BITS <= PEEK_BITS);

/// The end-of-block symbol.
const END_OF_BLOCK: u16 = 256;

/// Longest distance in deflate (RFC 1951 §3.2.5): once this many bytes have been decoded, every
/// distance code is in range.
const WINDOW: u64 = 32768;

/// Order in which a dynamic header lists the code-length code's lengths (RFC 1951 §3.2.7).
const CODELEN_ORDER: [usize; 19] = [
    16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1, 15,
];

/// Base match length and extra bits of length symbols 257..=285 (RFC 1951 §3.2.5), padded to 32
/// entries so that the fast loop can index them with a 5-bit mask instead of a bounds check
/// (the padding is never read: symbols 286 and 287 are exceptional entries).
const LENGTH_BASE: [u16; 32] = [
    3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 15, 17, 19, 23, 27, 31, 35, 43, 51, 59, 67, 83, 99, 115, 131,
    163, 195, 227, 258, 0, 0, 0,
];
const LENGTH_EXTRA: [u8; 29] = [
    0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 0,
];

/// Base distance and extra bits of distance symbols 0..=29 (RFC 1951 §3.2.5), padded like
/// [`LENGTH_BASE`] (symbols 30 and 31 are exceptional entries).
const DIST_BASE: [u16; 32] = [
    1, 2, 3, 4, 5, 7, 9, 13, 17, 25, 33, 49, 65, 97, 129, 193, 257, 385, 513, 769, 1025, 1537,
    2049, 3073, 4097, 6145, 8193, 12289, 16385, 24577, 0, 0,
];
const DIST_EXTRA: [u8; 30] = [
    0, 0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13,
    13,
];

/// Primary table entries (u32), built once per code so that the hot loop needs no other data:
///
/// * bits 0..=5: the bits the item takes in the stream: the code, plus for a length or distance
///   symbol its extra bits (at most 15 + 13 = 28), so one shift skips it; bits 6 and 7 are zero,
///   so that the low byte of the entry is that count (see `bitsleft` in [`scan_fast`]);
/// * bits 8..=11: the code length alone (0: no code of at most log₂ FAST bits starts with these
///   bits: a longer code or no code at all, left to [`Huffman::lookup_slow`]);
/// * bits 12..=15: the number of extra bits;
/// * bits 16..=24: the symbol;
/// * [`MATCH`]: a length symbol 257..=285;
/// * [`EXCEPTIONAL`]: anything the fast loop leaves to the careful path: end-of-block, the
///   symbols that must not occur (literal/length 286/287, distance 30/31), codes longer than the
///   table resolves and bit patterns that are no code.
const ENTRY_BITS_MASK: u32 = 0x3f;
const ENTRY_CODE_SHIFT: u32 = 8;
const ENTRY_EXTRA_SHIFT: u32 = 12;
const ENTRY_SYMBOL_SHIFT: u32 = 16;
const MATCH: u32 = 1 << 30;
const EXCEPTIONAL: u32 = 1 << 31;
/// The entry of bit patterns that start no code the table resolves.
const NO_ENTRY: u32 = EXCEPTIONAL;

/// The value of the extra bits of a length or distance whose code, of the entry's code length,
/// is at the low end of `bits`.
#[inline]
fn extra_value(bits: u64, entry: u32) -> u32 {
    let code = (entry >> ENTRY_CODE_SHIFT) & 0xf;
    let extra = (entry >> ENTRY_EXTRA_SHIFT) & 0xf;
    // Masked to at most 13 bits: the truncation is exact.
    ((bits >> code) & ((1 << extra) - 1)) as u32
}

/// LSB-first bit reader over a byte slice (RFC 1951 §3.1.1). Reads past the end see zero bits,
/// but every consumption is checked against the real length, so they are never accepted.
struct BitReader<'a> {
    data: &'a [u8],
    /// Bits consumed so far.
    pos: usize,
    /// Total bits available.
    limit: usize,
}

impl<'a> BitReader<'a> {
    fn new(data: &'a [u8]) -> Self {
        Self {
            data,
            pos: 0,
            limit: data.len().saturating_mul(8),
        }
    }

    /// The next 57 or more bits (zero beyond the end of the data), without consuming them.
    #[inline]
    fn peek(&self) -> u64 {
        let byte = self.pos >> 3;
        let word = match self
            .data
            .get(byte..)
            .and_then(|rest| rest.first_chunk::<8>())
        {
            Some(bytes) => u64::from_le_bytes(*bytes),
            None => {
                let mut bytes = [0u8; 8];
                let rest = self.data.get(byte..).unwrap_or(&[]);
                bytes[..rest.len()].copy_from_slice(rest);
                u64::from_le_bytes(bytes)
            }
        };
        word >> (self.pos & 7)
    }

    /// Consumes `n` bits, failing if the data does not have them.
    #[inline]
    fn consume(&mut self, n: u32) -> Result<(), ScanError> {
        let end = self.pos + n as usize;
        if end > self.limit {
            return Err(ScanError::Truncated { bit: self.pos });
        }
        self.pos = end;
        Ok(())
    }

    /// Reads an `n`-bit (n ≤ 32) value, first bit least significant.
    #[inline]
    fn bits(&mut self, n: u32) -> Result<u32, ScanError> {
        // Truncation to the low n ≤ 32 bits is the point of the mask.
        let value = (self.peek() & ((1u64 << n) - 1)) as u32;
        self.consume(n)?;
        Ok(value)
    }
}

/// Which code a table decodes; the rules for incomplete codes differ (as in zlib's inftrees.c).
#[derive(Clone, Copy, PartialEq, Eq)]
enum CodeKind {
    CodeLengths,
    LitLen,
    Dist,
}

/// A canonical Huffman decoding table: a primary table of `FAST` entries indexed by the next input
/// bits resolving every code of at most log₂ `FAST` bits, and a canonical (count/symbol) slow path
/// for longer codes and unassigned bit patterns.
struct Huffman<const FAST: usize> {
    kind: CodeKind,
    /// Entries as described at [`ENTRY_BITS_MASK`].
    fast: [u32; FAST],
    /// Number of codes of each length 0..=15.
    counts: [u16; MAX_CODE_BITS + 1],
    /// Symbols ordered by code (length, then symbol value).
    symbols: Vec<u16>,
}

impl<const FAST: usize> Huffman<FAST> {
    fn new(kind: CodeKind) -> Self {
        Self {
            kind,
            fast: [NO_ENTRY; FAST],
            counts: [0; MAX_CODE_BITS + 1],
            symbols: Vec::new(),
        }
    }

    /// The primary table entry of `symbol`, whose code is `len` bits long.
    fn entry(&self, symbol: u16, len: usize) -> u32 {
        // Code lengths are at most 15 bits: the cast is exact.
        let len = len as u32;
        let code = len << ENTRY_CODE_SHIFT | u32::from(symbol) << ENTRY_SYMBOL_SHIFT;
        let index = usize::from(symbol);
        match self.kind {
            CodeKind::CodeLengths => code | len,
            CodeKind::LitLen if symbol < END_OF_BLOCK => code | len,
            CodeKind::LitLen => match LENGTH_EXTRA.get(index.wrapping_sub(257)) {
                Some(&extra) => {
                    let extra = u32::from(extra);
                    MATCH | code | extra << ENTRY_EXTRA_SHIFT | (len + extra)
                }
                // End-of-block, 286 and 287.
                None => EXCEPTIONAL | code,
            },
            CodeKind::Dist => match DIST_EXTRA.get(index) {
                Some(&extra) => {
                    let extra = u32::from(extra);
                    code | extra << ENTRY_EXTRA_SHIFT | (len + extra)
                }
                // 30 and 31.
                None => EXCEPTIONAL | code,
            },
        }
    }

    /// Builds the canonical code of RFC 1951 §3.2.2 from code lengths (index = symbol).
    ///
    /// Over-subscribed lengths are always an error. Incomplete codes are accepted, as by zlib,
    /// only for the literal/length and distance codes with at most one code of length 1 (a
    /// distance code may even be empty when a block has no matches); bit patterns outside the
    /// code then fail when decoded.
    fn build(&mut self, lengths: &[u8], bit: usize) -> Result<(), ScanError> {
        let invalid = |what| ScanError::Invalid { bit, what };
        self.counts = [0; MAX_CODE_BITS + 1];
        for &len in lengths {
            self.counts[usize::from(len)] += 1;
        }
        let mut max_len = 0;
        let mut left: i32 = 1;
        for len in 1..=MAX_CODE_BITS {
            if self.counts[len] != 0 {
                max_len = len;
            }
            left = (left << 1) - i32::from(self.counts[len]);
            if left < 0 {
                return Err(invalid(match self.kind {
                    CodeKind::CodeLengths => "over-subscribed code-length code",
                    CodeKind::LitLen => "over-subscribed literal/length code",
                    CodeKind::Dist => "over-subscribed distance code",
                }));
            }
        }
        if left > 0 && (self.kind == CodeKind::CodeLengths || max_len > 1) {
            return Err(invalid(match self.kind {
                CodeKind::CodeLengths => "incomplete code-length code",
                CodeKind::LitLen => "incomplete literal/length code",
                CodeKind::Dist => "incomplete distance code",
            }));
        }

        // Canonical order: by length, then by symbol.
        let mut offsets = [0u16; MAX_CODE_BITS + 2];
        for len in 1..=MAX_CODE_BITS {
            offsets[len + 1] = offsets[len] + self.counts[len];
        }
        self.symbols.clear();
        self.symbols
            .resize(usize::from(offsets[MAX_CODE_BITS + 1]), 0);
        for (symbol, &len) in lengths.iter().enumerate() {
            if len != 0 {
                let slot = &mut offsets[usize::from(len)];
                // Invariant: alphabets have at most 288 symbols, so the index fits in u16.
                self.symbols[usize::from(*slot)] = symbol as u16;
                *slot += 1;
            }
        }

        // Primary table, grown by doubling as libdeflate does: after the step for length `len`,
        // the first 2^len entries form a table indexed by `len` bits that resolves every code
        // of at most `len` bits. Doubling copies the table into its upper half (the extra index
        // bit follows every code already placed, so it does not matter to them), then each code
        // of length `len` takes the one entry of its bit-reversed value (deflate sends Huffman
        // codes most significant bit first into an LSB-first stream); in a code that is not
        // over-subscribed that entry starts no shorter code, so it still held NO_ENTRY. Every
        // entry is written about twice, with no work per unused entry of a sparse code.
        self.fast[0] = NO_ENTRY;
        let mut size = 1;
        let mut code: u32 = 0;
        let mut index = 0usize;
        for len in 1..=MAX_CODE_BITS {
            if size == FAST {
                break;
            }
            self.fast.copy_within(..size, size);
            size *= 2;
            let count = usize::from(self.counts[len]);
            for (i, &symbol) in self.symbols[index..index + count].iter().enumerate() {
                // The code fits in `len` bits (the code is not over-subscribed), so the index is
                // below `size`.
                let reversed = (code + i as u32).reverse_bits() >> (32 - len);
                self.fast[reversed as usize] = self.entry(symbol, len);
            }
            index += count;
            code = (code + count as u32) << 1;
        }
        Ok(())
    }

    /// Decodes one symbol.
    #[inline]
    fn decode(&self, reader: &mut BitReader<'_>) -> Result<u16, ScanError> {
        let (symbol, len) = self.lookup(reader.peek(), reader.pos, reader.limit)?;
        reader.consume(len)?;
        Ok(symbol)
    }

    /// Looks up the symbol whose code starts at the low bit of `bits`, found at bit offset `bit`
    /// of data `limit` bits long; returns it with its code length, consuming nothing.
    #[inline]
    fn lookup(&self, bits: u64, bit: usize, limit: usize) -> Result<(u16, u32), ScanError> {
        // FAST is a power of two, so the index is in bounds.
        let entry = self.fast[(bits as usize) & (FAST - 1)];
        let len = (entry >> ENTRY_CODE_SHIFT) & 0xf;
        if len != 0 {
            // Nine bits: the truncation is exact.
            return Ok(((entry >> ENTRY_SYMBOL_SHIFT) as u16 & 0x1ff, len));
        }
        self.lookup_slow(bits, bit, limit)
    }

    /// Canonical decoding one bit at a time (as in zlib's puff.c): codes longer than the primary
    /// table, and bit patterns that are no code at all.
    #[cold]
    fn lookup_slow(&self, bits: u64, bit: usize, limit: usize) -> Result<(u16, u32), ScanError> {
        let mut code: i32 = 0;
        let mut first: i32 = 0;
        let mut index: i32 = 0;
        for len in 1..=MAX_CODE_BITS {
            code |= ((bits >> (len - 1)) & 1) as i32;
            let count = i32::from(self.counts[len]);
            if code - first < count {
                // Invariant: 0 ≤ code - first < count, so the index is within `symbols`.
                return Ok((self.symbols[(index + code - first) as usize], len as u32));
            }
            index += count;
            first = (first + count) << 1;
            code <<= 1;
        }
        // No code matches: fail as truncated if the pattern ran past the data, else invalid.
        if bit + MAX_CODE_BITS > limit {
            return Err(ScanError::Truncated { bit });
        }
        Err(ScanError::Invalid {
            bit,
            what: match self.kind {
                CodeKind::CodeLengths => "bit pattern is no code-length code",
                CodeKind::LitLen => "bit pattern is no literal/length code",
                CodeKind::Dist => "bit pattern is no distance code",
            },
        })
    }
}

/// The fixed literal/length and distance codes.
type FixedTables = (Huffman<LITLEN_FAST>, Huffman<DIST_FAST>);

/// Reusable tables for one scan.
struct Tables {
    litlen: Huffman<LITLEN_FAST>,
    dist: Huffman<DIST_FAST>,
    codelen: Huffman<CODELEN_FAST>,
    /// The fixed codes (RFC 1951 §3.2.6), built on first use.
    fixed: Option<FixedTables>,
    lengths: Vec<u8>,
}

/// Scans one complete raw deflate stream (RFC 1951) and returns where its final block lies.
///
/// The stream must start at bit 0 of `stream`, end with a final block, and be followed only by
/// zero padding bits up to the next byte boundary: no further bytes. Every block is decoded
/// (without keeping the output) and checked; see [`ScanError`].
pub(super) fn scan(stream: &[u8]) -> Result<StreamEnd, ScanError> {
    StreamScan::new(stream).run()
}

/// Scans two streams as [`scan`] does each, with the same results, faster: while both are inside
/// Huffman blocks (past their first [`WINDOW`] bytes), their items are decoded by one loop that
/// takes an item of each in turn ([`scan_fast_pair`]), so the CPU works on two independent
/// chains of dependent loads and shifts at once, where one stream's chain leaves it waiting.
pub(super) fn scan_pair(
    a: &[u8],
    b: &[u8],
) -> (Result<StreamEnd, ScanError>, Result<StreamEnd, ScanError>) {
    let mut sa = StreamScan::new(a);
    let mut sb = StreamScan::new(b);
    loop {
        // Each round: the fast loops where they apply, then one careful unit of each stream (a
        // block header, a stored block, or one item), so every round consumes input of both.
        let pair = match (sa.codes(), sb.codes()) {
            (Some((la, da)), Some((lb, db))) if sa.decoded >= WINDOW && sb.decoded >= WINDOW => {
                Chain::new(sa.reader.data, sa.reader.pos, la, da, sa.decoded).zip(Chain::new(
                    sb.reader.data,
                    sb.reader.pos,
                    lb,
                    db,
                    sb.decoded,
                ))
            }
            _ => None,
        };
        match pair {
            Some((ca, cb)) => {
                let [(pa, na), (pb, nb)] = scan_fast_pair([ca, cb]);
                (sa.reader.pos, sa.decoded) = (pa, na);
                (sb.reader.pos, sb.decoded) = (pb, nb);
            }
            // A stream at a block header gets there in this round's careful step; meanwhile
            // the other waits, to be decoded in pairs from the next round on, instead of alone
            // up to its next careful item.
            None if matches!(sa.mode, Mode::Header) || matches!(sb.mode, Mode::Header) => {}
            // A stream still in its first WINDOW bytes (distances checked) catches up alone; one
            // already past them waits, to go on in pairs. Else (fewer than 8 bytes left to load
            // in one of them) both go alone.
            None => {
                let (a_behind, b_behind) = (sa.decoded < WINDOW, sb.decoded < WINDOW);
                if a_behind || !b_behind {
                    sa.fast();
                }
                if b_behind || !a_behind {
                    sb.fast();
                }
            }
        }
        match (sa.step(), sb.step()) {
            (Ok(None), Ok(None)) => {}
            (ra, rb) => return (settle(ra, sa), settle(rb, sb)),
        }
    }
}

/// The result of a stream whose last careful step gave `step`: scanned on alone to its end if
/// that step did not end it.
fn settle(
    step: Result<Option<StreamEnd>, ScanError>,
    rest: StreamScan<'_>,
) -> Result<StreamEnd, ScanError> {
    match step {
        Ok(None) => rest.run(),
        Ok(Some(end)) => Ok(end),
        Err(e) => Err(e),
    }
}

/// Where a stream's scan is between two careful steps.
#[derive(Clone, Copy)]
enum Mode {
    /// At a block header.
    Header,
    /// Inside a Huffman block (fixed codes or the dynamic ones in `Tables`) whose header starts
    /// at `header_bit`.
    Codes {
        fixed: bool,
        bfinal: bool,
        header_bit: usize,
    },
}

/// The scan of one stream, resumable after every careful step so that two can be interleaved.
struct StreamScan<'a> {
    reader: BitReader<'a>,
    tables: Tables,
    /// Bytes the stream has decoded to so far.
    decoded: u64,
    mode: Mode,
}

impl<'a> StreamScan<'a> {
    fn new(stream: &'a [u8]) -> Self {
        Self {
            reader: BitReader::new(stream),
            tables: Tables {
                litlen: Huffman::new(CodeKind::LitLen),
                dist: Huffman::new(CodeKind::Dist),
                codelen: Huffman::new(CodeKind::CodeLengths),
                fixed: None,
                lengths: Vec::with_capacity(MAX_LITLEN_CODES + MAX_DIST_CODES),
            },
            decoded: 0,
            mode: Mode::Header,
        }
    }

    /// Scans to the end.
    ///
    /// Inside Huffman blocks two decoders take turns: [`scan_fast`] decodes the common items as
    /// fast as it can and stops, at an item boundary, before anything else; [`scan_symbol`] then
    /// decodes that one item with every check, reporting any error exactly, and hands back.
    /// Since the fast loop only accepts what the careful path would accept, and leaves the rest
    /// to it at the same position, the verdict and every error are the careful path's. Every
    /// round consumes input (a careful step consumes at least one bit or fails), so it cannot
    /// run away.
    fn run(mut self) -> Result<StreamEnd, ScanError> {
        loop {
            self.fast();
            if let Some(end) = self.step()? {
                return Ok(end);
            }
        }
    }

    /// The codes of the Huffman block the scan is in, if it is in one.
    fn codes(&self) -> Option<(&Huffman<LITLEN_FAST>, &Huffman<DIST_FAST>)> {
        match self.mode {
            Mode::Header => None,
            Mode::Codes { fixed: true, .. } => self.tables.fixed.as_ref().map(|(l, d)| (l, d)),
            Mode::Codes { fixed: false, .. } => Some((&self.tables.litlen, &self.tables.dist)),
        }
    }

    /// Inside a Huffman block, decodes what the fast loop accepts; elsewhere nothing.
    fn fast(&mut self) {
        let tables = match self.mode {
            Mode::Header => return,
            Mode::Codes { fixed: true, .. } => match &self.tables.fixed {
                Some((litlen, dist)) => (litlen, dist),
                None => return,
            },
            Mode::Codes { fixed: false, .. } => (&self.tables.litlen, &self.tables.dist),
        };
        let (litlen, dist) = tables;
        let reader = &mut self.reader;
        reader.pos = if self.decoded < WINDOW {
            scan_fast::<true>(reader.data, reader.pos, litlen, dist, &mut self.decoded)
        } else {
            scan_fast::<false>(reader.data, reader.pos, litlen, dist, &mut self.decoded)
        };
    }

    /// One careful unit with every check: a block header (a whole stored block, or the header
    /// and tables of a Huffman block), or inside a Huffman block one item. Returns where the
    /// stream ends once its final block has ended, else `None`.
    fn step(&mut self) -> Result<Option<StreamEnd>, ScanError> {
        let reader = &mut self.reader;
        let (header_bit, bfinal) = match self.mode {
            Mode::Header => {
                let header_bit = reader.pos;
                let bfinal = reader.bits(1)? == 1;
                match reader.bits(2)? {
                    0 => self.decoded += scan_stored(reader)?,
                    1 => {
                        self.tables.fixed.get_or_insert_with(fixed_tables);
                        self.mode = Mode::Codes {
                            fixed: true,
                            bfinal,
                            header_bit,
                        };
                        return Ok(None);
                    }
                    2 => {
                        read_dynamic_header(reader, &mut self.tables)?;
                        self.mode = Mode::Codes {
                            fixed: false,
                            bfinal,
                            header_bit,
                        };
                        return Ok(None);
                    }
                    _ => {
                        return Err(ScanError::Invalid {
                            bit: header_bit + 1,
                            what: "reserved block type 3",
                        });
                    }
                }
                (header_bit, bfinal)
            }
            Mode::Codes {
                fixed,
                bfinal,
                header_bit,
            } => {
                let (litlen, dist) = match (&self.tables.fixed, fixed) {
                    (Some((litlen, dist)), true) => (litlen, dist),
                    _ => (&self.tables.litlen, &self.tables.dist),
                };
                match scan_symbol(reader, litlen, dist, self.decoded)? {
                    Some(len) => {
                        self.decoded += len;
                        return Ok(None);
                    }
                    None => {
                        self.mode = Mode::Header;
                        (header_bit, bfinal)
                    }
                }
            }
        };
        // A stored block, or a Huffman block's end-of-block, has just ended the block.
        if !bfinal {
            return Ok(None);
        }
        let stream = reader.data;
        let end_bit = reader.pos;
        let used = end_bit.div_ceil(8);
        if stream.len() > used {
            return Err(ScanError::TrailingBytes {
                count: stream.len() - used,
                end_bit,
            });
        }
        if end_bit % 8 != 0 && stream[end_bit / 8] >> (end_bit % 8) != 0 {
            return Err(ScanError::NonzeroPadding { end_bit });
        }
        Ok(Some(StreamEnd {
            final_block_bit: header_bit,
            end_bit,
            decoded_len: self.decoded,
        }))
    }
}

/// Skips a stored block whose 3 header bits were read; returns its payload length.
fn scan_stored(reader: &mut BitReader<'_>) -> Result<u64, ScanError> {
    // The rest of the current byte is padding (RFC 1951 §3.2.4); its value is not specified.
    let pad = (8 - reader.pos % 8) % 8;
    reader.consume(pad as u32)?;
    let byte = reader.pos / 8;
    // Both fields are 16 bits wide; the truncation is exact.
    let len = reader.bits(16)? as u16;
    let nlen = reader.bits(16)? as u16;
    if len != !nlen {
        return Err(ScanError::StoredLength { byte, len, nlen });
    }
    reader.consume(u32::from(len) * 8)?;
    Ok(u64::from(len))
}

/// Builds the fixed literal/length and distance codes (RFC 1951 §3.2.6). The fixed distance
/// code has 32 five-bit codes; 30 and 31 are rejected when decoded, as are literal/lengths 286
/// and 287.
fn fixed_tables() -> FixedTables {
    let mut lengths = [0u8; 288];
    lengths[..144].fill(8);
    lengths[144..256].fill(9);
    lengths[256..280].fill(7);
    lengths[280..].fill(8);
    let mut litlen = Huffman::new(CodeKind::LitLen);
    let mut dist = Huffman::new(CodeKind::Dist);
    // Both fixed codes are complete by construction (RFC 1951 §3.2.6), so building cannot fail;
    // an error would leave a table whose lookups all fail, which the scan would report.
    let _ = litlen.build(&lengths, 0);
    let _ = dist.build(&[5u8; 32], 0);
    (litlen, dist)
}

/// Reads a dynamic block's header (RFC 1951 §3.2.7) into `tables.litlen` and `tables.dist`.
fn read_dynamic_header(reader: &mut BitReader<'_>, tables: &mut Tables) -> Result<(), ScanError> {
    let header_bit = reader.pos;
    let hlit = reader.bits(5)? as usize + 257;
    let hdist = reader.bits(5)? as usize + 1;
    let hclen = reader.bits(4)? as usize + 4;
    if hlit > MAX_LITLEN_CODES || hdist > MAX_DIST_CODES {
        return Err(ScanError::Invalid {
            bit: header_bit,
            what: "more than 286 literal/length or 30 distance codes",
        });
    }
    let mut codelen_lengths = [0u8; 19];
    for &symbol in &CODELEN_ORDER[..hclen] {
        // Three bits: the truncation is exact.
        codelen_lengths[symbol] = reader.bits(3)? as u8;
    }
    tables.codelen.build(&codelen_lengths, header_bit)?;

    let total = hlit + hdist;
    let lengths = &mut tables.lengths;
    lengths.clear();
    while lengths.len() < total {
        let bit = reader.pos;
        let symbol = tables.codelen.decode(reader)?;
        let (value, repeat) = match symbol {
            0..=15 => (symbol as u8, 1),
            16 => {
                let Some(&previous) = lengths.last() else {
                    return Err(ScanError::Invalid {
                        bit,
                        what: "code-length repeat with no previous length",
                    });
                };
                (previous, 3 + reader.bits(2)? as usize)
            }
            17 => (0, 3 + reader.bits(3)? as usize),
            _ => (0, 11 + reader.bits(7)? as usize),
        };
        if lengths.len() + repeat > total {
            return Err(ScanError::Invalid {
                bit,
                what: "code lengths run past HLIT + HDIST",
            });
        }
        lengths.resize(lengths.len() + repeat, value);
    }
    if lengths[usize::from(END_OF_BLOCK)] == 0 {
        return Err(ScanError::Invalid {
            bit: header_bit,
            what: "the end-of-block code has no length",
        });
    }
    tables.litlen.build(&lengths[..hlit], header_bit)?;
    tables.dist.build(&lengths[hlit..], header_bit)?;
    Ok(())
}

/// The careful path: decodes one literal, match or end-of-block starting at `reader.pos`, with
/// every check; returns the bytes it decodes to, or `None` for end-of-block.
fn scan_symbol(
    reader: &mut BitReader<'_>,
    litlen: &Huffman<LITLEN_FAST>,
    dist: &Huffman<DIST_FAST>,
    decoded: u64,
) -> Result<Option<u64>, ScanError> {
    let start = reader.pos;
    // A match takes at most MAX_MATCH_BITS, all in the bits peeked.
    let bits = reader.peek();
    let (symbol, len) = litlen.lookup(bits, start, reader.limit)?;
    if symbol < END_OF_BLOCK {
        reader.consume(len)?;
        return Ok(Some(1));
    }
    if symbol == END_OF_BLOCK {
        reader.consume(len)?;
        return Ok(None);
    }
    let index = usize::from(symbol - 257);
    let Some(&extra) = LENGTH_EXTRA.get(index) else {
        return Err(ScanError::Invalid {
            bit: start,
            what: "literal/length symbol 286 or 287",
        });
    };
    let mut used = len;
    let extra = u32::from(extra);
    // Masked to at most 5 bits: the truncation is exact.
    let length = u32::from(LENGTH_BASE[index]) + ((bits >> used) & ((1 << extra) - 1)) as u32;
    used += extra;

    let dist_bit = start + used as usize;
    let (symbol, len) = dist.lookup(bits >> used, dist_bit, reader.limit)?;
    let symbol = usize::from(symbol);
    let Some(&extra) = DIST_EXTRA.get(symbol) else {
        // A length cut off by the end of the data is a truncation.
        reader.consume(used)?;
        return Err(ScanError::Invalid {
            bit: dist_bit,
            what: "distance symbol 30 or 31",
        });
    };
    used += len;
    let extra = u32::from(extra);
    // Masked to at most 13 bits: the truncation is exact.
    let distance = u32::from(DIST_BASE[symbol]) + ((bits >> used) & ((1 << extra) - 1)) as u32;
    used += extra;
    // A match cut off by the end of the data is a truncation.
    reader.consume(used)?;
    if u64::from(distance) > decoded {
        return Err(ScanError::DistanceTooFar {
            bit: dist_bit,
            distance,
            available: decoded,
        });
    }
    Ok(Some(u64::from(length)))
}
