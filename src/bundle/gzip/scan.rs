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
    let mut reader = BitReader::new(stream);
    let mut tables = Tables {
        litlen: Huffman::new(CodeKind::LitLen),
        dist: Huffman::new(CodeKind::Dist),
        codelen: Huffman::new(CodeKind::CodeLengths),
        fixed: None,
        lengths: Vec::with_capacity(MAX_LITLEN_CODES + MAX_DIST_CODES),
    };
    let mut decoded: u64 = 0;
    loop {
        let header_bit = reader.pos;
        let bfinal = reader.bits(1)? == 1;
        match reader.bits(2)? {
            0 => decoded += scan_stored(&mut reader)?,
            1 => {
                let (litlen, dist) = tables.fixed.get_or_insert_with(fixed_tables);
                decoded = scan_codes(&mut reader, litlen, dist, decoded)?;
            }
            2 => {
                read_dynamic_header(&mut reader, &mut tables)?;
                decoded = scan_codes(&mut reader, &tables.litlen, &tables.dist, decoded)?;
            }
            _ => {
                return Err(ScanError::Invalid {
                    bit: header_bit + 1,
                    what: "reserved block type 3",
                });
            }
        }
        if bfinal {
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
            return Ok(StreamEnd {
                final_block_bit: header_bit,
                end_bit,
                decoded_len: decoded,
            });
        }
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

/// Decodes the symbols of a Huffman block up to and including end-of-block; returns the number
/// of bytes decoded so far in the stream (`decoded` plus this block's).
///
/// Two decoders take turns: [`scan_fast`] decodes the common items as fast as it can and stops,
/// at an item boundary, before anything else; [`scan_symbol`] then decodes that one item with
/// every check, reporting any error exactly, and hands back. Since the fast loop only accepts what
/// the careful path would accept, and leaves the rest to it at the same position, the verdict and
/// every error are the careful path's. Every round of this loop consumes input (the careful path
/// consumes at least one bit or fails), so it cannot run away.
fn scan_codes(
    reader: &mut BitReader<'_>,
    litlen: &Huffman<LITLEN_FAST>,
    dist: &Huffman<DIST_FAST>,
    mut decoded: u64,
) -> Result<u64, ScanError> {
    loop {
        reader.pos = if decoded < WINDOW {
            scan_fast::<true>(reader.data, reader.pos, litlen, dist, &mut decoded)
        } else {
            scan_fast::<false>(reader.data, reader.pos, litlen, dist, &mut decoded)
        };
        match scan_symbol(reader, litlen, dist, decoded)? {
            Some(len) => decoded += len,
            None => return Ok(decoded),
        }
    }
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

/// The fast loop: decodes literals and matches from bit `pos` of `data` while they are resolved
/// by the primary tables and lie entirely within `data`, adding the number of bytes they decode
/// to `decoded`; returns the bit offset of the first item it leaves to [`scan_symbol`]: one whose
/// literal/length or distance entry is [`EXCEPTIONAL`], a match that reaches before the start of
/// the stream, any item once fewer than 8 bytes of `data` are left to load and, with
/// `CHECK_DISTANCES`, the first item after `WINDOW` bytes are decoded. Without
/// `CHECK_DISTANCES` (which the caller passes only once `WINDOW` bytes are decoded, when every
/// distance is in range) it does not compute distances at all: a distance entry's bit count is
/// all it needs.
///
/// Bits are held in a register as in libdeflate's decompressor: `bitbuf` holds the stream from
/// the current position at its low end (then zeros, shifted in as bits are consumed), of which
/// `bitsleft` bits are counted as loaded, and
/// `in_pos` is the index of the first byte not yet counted; the current position is
/// `in_pos * 8 - bitsleft`. A refill ORs in the 8 bytes at `in_pos` shifted past the counted
/// bits and counts the whole bytes that fit (after it 56 ≤ bitsleft ≤ 63, without a branch):
/// the bits of the word that spill above `bitsleft` are the stream's following bits, which the
/// next refill ORs in again at the same place, so after a refill all 64 bits of `bitbuf` are
/// stream bits (57 after the first fill, which skips up to 7). An item takes at most
/// [`MAX_FAST_ITEM_BITS`] (37 with the table sizes above), so one refill per item is enough, and
/// the next literal/length entry can be looked up right after an item, before the refill (at
/// least 57 - 37 = 20 stream bits are left), which keeps the refill off the chain of dependent
/// loads and shifts that decoding is.
///
/// `bitsleft` is decremented by whole entries, not by their bit counts: the low byte of an entry
/// is its bit count (bits 6 and 7 are zero), a subtraction only borrows upwards, and the true
/// count is in 0..=63, so the low 6 bits of `bitsleft` stay exact while the upper bits collect
/// garbage, masked off before each refill. Likewise `u64::wrapping_shr` uses only the low 6 bits
/// of an entry as the shift. This saves a mask on the critical path.
fn scan_fast<const CHECK_DISTANCES: bool>(
    data: &[u8],
    pos: usize,
    litlen: &Huffman<LITLEN_FAST>,
    dist: &Huffman<DIST_FAST>,
    decoded: &mut u64,
) -> usize {
    let (litlen, dist) = (&litlen.fast, &dist.fast);
    // Only bytes that exist are loaded, so whatever the loop consumes is within the data: it can
    // never accept a truncated item.
    let load = |at: usize| {
        data.get(at..)
            .and_then(|rest| rest.first_chunk::<8>())
            .map(|bytes| u64::from_le_bytes(*bytes))
    };
    let Some(word) = load(pos / 8) else {
        return pos;
    };
    // The first fill counts 7 bytes, less the bits before `pos` in the first: at least 49 bits,
    // and 57 stream bits in `bitbuf`, enough for one item and the next lookup.
    let skip = (pos % 8) as u32;
    let mut bitbuf = word >> skip;
    let mut bitsleft = 56 - skip;
    let mut in_pos = pos / 8 + 7;
    let mut n = *decoded;
    let mut entry = litlen[(bitbuf as usize) & (LITLEN_FAST - 1)];
    loop {
        if entry & (MATCH | EXCEPTIONAL) == 0 {
            // A literal: the most common item, and the only data-dependent branch (a
            // branchless variant that always looks up a distance entry and masks it out for
            // literals was slower: it lengthens every literal's dependency chain).
            bitbuf = bitbuf.wrapping_shr(entry);
            bitsleft = bitsleft.wrapping_sub(entry);
            n += 1;
        } else {
            if entry & EXCEPTIONAL != 0 {
                break;
            }
            // A match: its length symbol and extra bits, then its distance code and extra
            // bits. Nothing is consumed until the whole match is accepted. The length is not
            // on the critical path, only the shifts are.
            let symbol = (entry >> ENTRY_SYMBOL_SHIFT) as usize;
            let length =
                u32::from(LENGTH_BASE[symbol.wrapping_sub(257) & 31]) + extra_value(bitbuf, entry);
            let rest = bitbuf.wrapping_shr(entry);
            let dist_entry = dist[(rest as usize) & (DIST_FAST - 1)];
            if dist_entry & EXCEPTIONAL != 0 {
                break;
            }
            if CHECK_DISTANCES {
                let symbol = (dist_entry >> ENTRY_SYMBOL_SHIFT) as usize;
                let distance = u32::from(DIST_BASE[symbol & 31]) + extra_value(rest, dist_entry);
                if u64::from(distance) > n {
                    break;
                }
            }
            bitbuf = rest.wrapping_shr(dist_entry);
            bitsleft = bitsleft.wrapping_sub(entry).wrapping_sub(dist_entry);
            n += u64::from(length);
            if CHECK_DISTANCES && n >= WINDOW {
                // Every distance is now in range: let the caller continue without the checks.
                break;
            }
        }
        // Look up the next item before refilling (see above): at least 57 - MAX_FAST_ITEM_BITS
        // stream bits remain at the low end of `bitbuf`, enough for the LITLEN_TABLE_BITS the
        // lookup takes.
        let next = litlen[(bitbuf as usize) & (LITLEN_FAST - 1)];
        let Some(word) = load(in_pos) else {
            break;
        };
        bitsleft &= ENTRY_BITS_MASK;
        bitbuf |= word << bitsleft;
        in_pos += 7 - (bitsleft >> 3) as usize;
        bitsleft |= 56;
        entry = next;
    }
    bitsleft &= ENTRY_BITS_MASK;
    *decoded = n;
    in_pos * 8 - bitsleft as usize
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::{Compress, Compression, FlushCompress, Status};
    use libdeflater::{CompressionLvl, Compressor};

    use super::super::tests::{random_bytes, text_bytes};

    fn libdeflate(data: &[u8], level: i32) -> Vec<u8> {
        let mut c = Compressor::new(CompressionLvl::new(level).expect("level"));
        let mut out = vec![0; c.deflate_compress_bound(data.len())];
        let n = c.deflate_compress(data, &mut out).expect("compress");
        out.truncate(n);
        out
    }

    fn inflate(stream: &[u8]) -> Vec<u8> {
        let mut d = flate2::Decompress::new(false);
        let mut out = Vec::with_capacity(4 << 20);
        let status = d
            .decompress_vec(stream, &mut out, flate2::FlushDecompress::Finish)
            .expect("inflate");
        assert_eq!(status, Status::StreamEnd);
        assert_eq!(d.total_in() as usize, stream.len());
        out
    }

    /// Type (BTYPE) of the final block, read from its header at the reported offset.
    fn final_block_type(stream: &[u8], end: &StreamEnd) -> u8 {
        let bit = end.final_block_bit + 1;
        let two =
            u16::from(stream[bit / 8]) | u16::from(*stream.get(bit / 8 + 1).unwrap_or(&0)) << 8;
        ((two >> (bit % 8)) & 3) as u8
    }

    fn check(stream: &[u8], data: &[u8]) -> StreamEnd {
        let end = scan(stream).expect("scan");
        assert_eq!(end.decoded_len, data.len() as u64);
        assert_eq!(end.end_bit.div_ceil(8), stream.len());
        assert!(end.final_block_bit < end.end_bit);
        // BFINAL is set at the reported header.
        assert_eq!(
            stream[end.final_block_bit / 8] >> (end.final_block_bit % 8) & 1,
            1
        );
        end
    }

    #[test]
    fn scans_libdeflate_streams_of_all_block_types() {
        let inputs: [(&str, Vec<u8>); 5] = [
            ("empty", Vec::new()),
            (
                "tiny",
                b"hello hello hello hello hello hello hello hello hello hello!".to_vec(),
            ),
            ("zeros", vec![0; 700_000]),
            ("text", text_bytes(900_000, 1)),
            ("random", random_bytes(300_000, 2)),
        ];
        let mut seen = [false; 3];
        for level in [1, 6, 9, 12] {
            for (name, data) in &inputs {
                let stream = libdeflate(data, level);
                let end = check(&stream, data);
                let btype = final_block_type(&stream, &end);
                seen[usize::from(btype)] = true;
                match *name {
                    // Too short for dynamic tables to pay: a fixed-code block.
                    "tiny" => assert_eq!(btype, 1, "level {level}"),
                    // libdeflate falls back to stored blocks for incompressible data.
                    "random" => assert_eq!(btype, 0, "level {level}"),
                    "text" => assert_eq!(btype, 2, "level {level}"),
                    _ => {}
                }
                assert_eq!(inflate(&stream), *data, "{name} level {level}");
            }
        }
        assert_eq!(seen, [true; 3]);
    }

    /// Raw deflate by zlib (flate2): a sync flush after every `piece` bytes, then finish.
    fn zlib_with_sync_flushes(data: &[u8], level: u32, piece: usize) -> Vec<u8> {
        let mut c = Compress::new(Compression::new(level), false);
        let mut stream = Vec::with_capacity(data.len() + 1024);
        let pieces: Vec<&[u8]> = data.chunks(piece).collect();
        for (i, piece) in pieces.iter().enumerate() {
            let flush = if i + 1 == pieces.len() {
                FlushCompress::Finish
            } else {
                FlushCompress::Sync
            };
            let start = c.total_in();
            loop {
                stream.reserve(64 * 1024);
                let taken = (c.total_in() - start) as usize;
                let status = c
                    .compress_vec(&piece[taken..], &mut stream, flush)
                    .expect("compress");
                let taken = (c.total_in() - start) as usize;
                let done = match flush {
                    FlushCompress::Finish => status == Status::StreamEnd,
                    _ => taken == piece.len() && stream.len() < stream.capacity(),
                };
                if done {
                    break;
                }
            }
        }
        stream
    }

    #[test]
    fn scans_zlib_streams_with_sync_flushes() {
        let data = text_bytes(400_000, 3);
        for level in [1, 6, 9] {
            let stream = zlib_with_sync_flushes(&data, level, 50_000);
            let end = check(&stream, &data);
            assert_eq!(inflate(&stream), data);
            // The sync flushes' empty stored blocks (00 00 ff ff after the header bits) lie
            // before the final block.
            let before = &stream[..end.final_block_bit / 8];
            let markers = before
                .windows(4)
                .filter(|w| *w == [0, 0, 0xff, 0xff])
                .count();
            assert!(markers >= 7, "level {level}: {markers} sync markers");
        }
    }

    #[test]
    fn scans_hand_made_stored_and_fixed_streams() {
        // Stored, non-final, with an empty stored block (a sync marker), then a final empty
        // stored block.
        let stream = [
            0x00, 0x03, 0x00, 0xfc, 0xff, b'a', b'b', b'c', 0x00, 0x00, 0x00, 0xff, 0xff, 0x01,
            0x00, 0x00, 0xff, 0xff,
        ];
        let end = check(&stream, b"abc");
        assert_eq!((end.final_block_bit, end.end_bit), (13 * 8, 18 * 8));
        // The smallest fixed block: BFINAL, BTYPE 01, EOB (7 zero bits): 10 bits.
        let end = check(&[0x03, 0x00], b"");
        assert_eq!((end.final_block_bit, end.end_bit), (0, 10));
    }

    #[test]
    fn rejects_truncated_streams() {
        for (data, level) in [
            (text_bytes(100_000, 4), 6),
            (random_bytes(100_000, 5), 1),
            (text_bytes(50, 6), 9),
        ] {
            let stream = libdeflate(&data, level);
            for cut in [
                0,
                1,
                2,
                stream.len() / 3,
                stream.len() / 2,
                stream.len() - 1,
            ] {
                let err = scan(&stream[..cut]).expect_err("truncated stream accepted");
                assert!(
                    matches!(err, ScanError::Truncated { .. } | ScanError::Invalid { .. }),
                    "cut {cut}: {err:?}"
                );
            }
        }
    }

    #[test]
    fn rejects_trailing_bytes_and_nonzero_padding() {
        let stream = libdeflate(&text_bytes(10_000, 7), 6);
        let mut longer = stream.clone();
        longer.push(0);
        assert!(matches!(
            scan(&longer),
            Err(ScanError::TrailingBytes { count: 1, .. })
        ));
        // [0x03, 0x00] is a final empty fixed block ending at bit 10: bits 10..16 are padding.
        assert!(matches!(
            scan(&[0x03, 0x04]),
            Err(ScanError::NonzeroPadding { end_bit: 10 })
        ));
        // A stream without a final block never ends.
        assert!(matches!(
            scan(&[0x00, 0x00, 0x00, 0xff, 0xff]),
            Err(ScanError::Truncated { .. })
        ));
    }

    #[test]
    fn rejects_malformed_headers() {
        // Reserved block type 3.
        assert!(matches!(
            scan(&[0x07, 0x00]),
            Err(ScanError::Invalid { bit: 1, .. })
        ));
        // Stored block with NLEN not the complement of LEN.
        assert!(matches!(
            scan(&[0x01, 0x01, 0x00, 0xff, 0xff, b'x']),
            Err(ScanError::StoredLength {
                byte: 1,
                len: 1,
                nlen: 0xffff
            })
        ));
        // Dynamic block declaring HLIT = 287 (bits: BFINAL 1, BTYPE 10, HLIT 11110).
        let err = scan(&[0b1111_0101, 0x00, 0x00, 0x00]).expect_err("HLIT 287");
        assert!(matches!(err, ScanError::Invalid { bit: 3, .. }), "{err:?}");
        // Dynamic block whose code-length code is all zero (incomplete).
        let err = scan(&[0x05, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00]).expect_err("empty code");
        assert!(matches!(err, ScanError::Invalid { .. }), "{err:?}");
    }

    #[test]
    fn rejects_distance_before_the_start() {
        // Fixed block: length symbol 257 (match of 3, code 0000001), distance symbol 0
        // (distance 1, code 00000) with nothing decoded yet.
        let mut bits: Vec<u8> = vec![1, 1, 0];
        bits.extend([0, 0, 0, 0, 0, 0, 1]);
        bits.extend([0, 0, 0, 0, 0]);
        bits.extend([0; 7]);
        let mut stream = vec![0u8; bits.len().div_ceil(8)];
        for (i, b) in bits.iter().enumerate() {
            stream[i / 8] |= b << (i % 8);
        }
        assert!(matches!(
            scan(&stream),
            Err(ScanError::DistanceTooFar {
                distance: 1,
                available: 0,
                ..
            })
        ));
    }

    /// zlib's verdict on a raw deflate stream: the decoded length if it inflates to the end of a
    /// final block using exactly all the bytes.
    fn zlib_verdict(stream: &[u8]) -> Option<u64> {
        let mut d = flate2::Decompress::new(false);
        let mut out = Vec::with_capacity(8 << 20);
        match d.decompress_vec(stream, &mut out, flate2::FlushDecompress::Finish) {
            Ok(Status::StreamEnd) if d.total_in() as usize == stream.len() => Some(d.total_out()),
            _ => None,
        }
    }

    /// The scanner must agree with zlib's inflate, which checks the same structure, except that
    /// zlib ignores the padding after the final block, which the scanner requires to be zero.
    fn assert_agrees_with_zlib(stream: &[u8], ctx: &str) -> bool {
        match (scan(stream), zlib_verdict(stream)) {
            (Ok(end), Some(len)) => {
                assert_eq!(end.decoded_len, len, "{ctx}");
                true
            }
            (Err(ScanError::NonzeroPadding { .. }), Some(_)) | (Err(_), None) => false,
            (Ok(end), None) => panic!("{ctx}: scanner accepted what zlib rejects: {end:?}"),
            (Err(err), Some(_)) => panic!("{ctx}: scanner rejected what zlib accepts: {err}"),
        }
    }

    #[test]
    fn corrupted_streams_agree_with_zlib() {
        // Every single-bit flip of short dynamic, fixed and stored streams: the scanner accepts
        // exactly what zlib accepts (many flips only change a literal), never panics or hangs.
        let cases = [
            (text_bytes(2_000, 8), 6),
            (
                b"abcabcabcabcabcabcabcabcabcabcabcabcabcabcabcabcabcabcabcabcabc".to_vec(),
                9,
            ),
            (random_bytes(300, 11), 1),
        ];
        for (data, level) in &cases {
            let stream = libdeflate(data, *level);
            let mut rejected = 0;
            for bit in 0..stream.len() * 8 {
                let mut bad = stream.clone();
                bad[bit / 8] ^= 1 << (bit % 8);
                if !assert_agrees_with_zlib(&bad, &format!("level {level} bit {bit}")) {
                    rejected += 1;
                }
            }
            assert!(rejected > 0, "level {level}: no flip rejected");
        }
        // Bytes scrambled throughout a long stream.
        let long = libdeflate(&text_bytes(200_000, 9), 9);
        let noise = random_bytes(long.len(), 10);
        for step in [97, 1_009, 20_011] {
            let mut bad = long.clone();
            for i in (0..bad.len()).step_by(step) {
                bad[i] ^= noise[i] | 1;
            }
            assert!(!assert_agrees_with_zlib(&bad, &format!("step {step}")));
        }
    }
}
