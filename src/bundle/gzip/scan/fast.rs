//! The scanner's fast loops: one stream ([`scan_fast`]) and two streams in turn
//! ([`scan_fast_pair`]), each decoding only what the careful path would accept and leaving
//! everything else to it at an item boundary.

use super::{
    DIST_BASE, DIST_FAST, ENTRY_BITS_MASK, ENTRY_SYMBOL_SHIFT, EXCEPTIONAL, Huffman, LENGTH_BASE,
    LITLEN_FAST, MATCH, WINDOW, extra_value,
};

/// The fast loop: decodes literals and matches from bit `pos` of `data` while they are resolved
/// by the primary tables and lie entirely within `data`, adding the number of bytes they decode
/// to `decoded`; returns the bit offset of the first item it leaves to the careful path
/// (`scan_symbol`): one whose
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
/// `MAX_FAST_ITEM_BITS` (37 with the table sizes above), so one refill per item is enough, and
/// the next literal/length entry can be looked up right after an item, before the refill (at
/// least 57 - 37 = 20 stream bits are left), which keeps the refill off the chain of dependent
/// loads and shifts that decoding is.
///
/// `bitsleft` is decremented by whole entries, not by their bit counts: the low byte of an entry
/// is its bit count (bits 6 and 7 are zero), a subtraction only borrows upwards, and the true
/// count is in 0..=63, so the low 6 bits of `bitsleft` stay exact while the upper bits collect
/// garbage, masked off before each refill. Likewise `u64::wrapping_shr` uses only the low 6 bits
/// of an entry as the shift. This saves a mask on the critical path.
pub(super) fn scan_fast<const CHECK_DISTANCES: bool>(
    data: &[u8],
    pos: usize,
    litlen: &Huffman<LITLEN_FAST>,
    dist: &Huffman<DIST_FAST>,
    decoded: &mut u64,
) -> usize {
    let (litlen, dist) = (&litlen.fast, &dist.fast);
    // Only bytes that exist are loaded, so whatever the loop consumes is within the data: it can
    // never accept a truncated item.
    let load = |at: usize| load(data, at);
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

/// One stream's state in [`scan_fast_pair`]: the bit buffer of [`scan_fast`] (see there), for a
/// stream past its first [`WINDOW`] bytes, where no distance needs checking.
pub(super) struct Chain<'a> {
    data: &'a [u8],
    litlen: &'a [u32; LITLEN_FAST],
    dist: &'a [u32; DIST_FAST],
    bitbuf: u64,
    bitsleft: u32,
    in_pos: usize,
    /// Bytes decoded so far.
    n: u64,
    /// The literal/length entry of the next item.
    entry: u32,
}

impl<'a> Chain<'a> {
    /// The chain of a stream at bit `pos` of `data`, inside a block with these codes, having
    /// decoded `decoded` bytes; `None` if fewer than 8 bytes are left to load.
    pub(super) fn new(
        data: &'a [u8],
        pos: usize,
        litlen: &'a Huffman<LITLEN_FAST>,
        dist: &'a Huffman<DIST_FAST>,
        decoded: u64,
    ) -> Option<Self> {
        let word = load(data, pos / 8)?;
        // As in `scan_fast`: at least 49 bits counted, 57 stream bits in `bitbuf`.
        let skip = (pos % 8) as u32;
        let bitbuf = word >> skip;
        Some(Self {
            data,
            litlen: &litlen.fast,
            dist: &dist.fast,
            bitbuf,
            bitsleft: 56 - skip,
            in_pos: pos / 8 + 7,
            n: decoded,
            entry: litlen.fast[(bitbuf as usize) & (LITLEN_FAST - 1)],
        })
    }

    /// The bit offset of the next item.
    fn position(&self) -> usize {
        self.in_pos * 8 - (self.bitsleft & ENTRY_BITS_MASK) as usize
    }

    /// Decodes the next item if [`scan_fast`] would accept it (without distance checks), and
    /// refills; returns whether the chain can go on: false, at an item boundary, for an item
    /// left to the careful path or once fewer than 8 bytes are left to load.
    ///
    /// Unlike `scan_fast` it has no branch on the item's kind: a distance entry is looked up for
    /// every item and its bit count masked out for literals. That lengthens the chain of
    /// dependent loads of a literal, but with two chains in turn there is always work for the
    /// CPU, while a mispredicted branch would have flushed both.
    #[inline(always)]
    fn step(&mut self) -> bool {
        let entry = self.entry;
        let rest = self.bitbuf.wrapping_shr(entry);
        let dist_entry = self.dist[(rest as usize) & (DIST_FAST - 1)];
        // All ones for a match (MATCH is bit 30), zero for a literal.
        let match_mask = 0u32.wrapping_sub((entry >> 30) & 1);
        if (entry | (dist_entry & match_mask)) & EXCEPTIONAL != 0 {
            return false;
        }
        let symbol = (entry >> ENTRY_SYMBOL_SHIFT) as usize;
        let length =
            u32::from(LENGTH_BASE[symbol.wrapping_sub(257) & 31]) + extra_value(self.bitbuf, entry);
        let dist_entry = dist_entry & match_mask;
        self.bitbuf = rest.wrapping_shr(dist_entry);
        self.bitsleft = self.bitsleft.wrapping_sub(entry).wrapping_sub(dist_entry);
        self.n += u64::from(if match_mask != 0 { length } else { 1 });
        // As in `scan_fast`: the next lookup before the refill, at least 20 stream bits left.
        let next = self.litlen[(self.bitbuf as usize) & (LITLEN_FAST - 1)];
        self.entry = next;
        let Some(word) = load(self.data, self.in_pos) else {
            return false;
        };
        self.bitsleft &= ENTRY_BITS_MASK;
        self.bitbuf |= word << self.bitsleft;
        self.in_pos += 7 - (self.bitsleft >> 3) as usize;
        self.bitsleft |= 56;
        true
    }
}

/// The 8 bytes at `at` as a little-endian word, if `data` has them.
#[inline(always)]
fn load(data: &[u8], at: usize) -> Option<u64> {
    data.get(at..)
        .and_then(|rest| rest.first_chunk::<8>())
        .map(|bytes| u64::from_le_bytes(*bytes))
}

/// The fast loop of two streams at once (see [`scan_pair`]): an item of each in turn, until either
/// stops; returns each stream's bit offset of its next item and its bytes decoded. Each chain
/// accepts exactly what [`scan_fast`] would, so the careful path takes over each stream where it
/// would have, or earlier (when the other stream stopped), which changes nothing but speed.
pub(super) fn scan_fast_pair([mut a, mut b]: [Chain<'_>; 2]) -> [(usize, u64); 2] {
    loop {
        // Both step in every round (no short circuit): a chain that stops is left at an item
        // boundary, the other has taken one more item.
        let go_a = a.step();
        let go_b = b.step();
        if !(go_a & go_b) {
            break;
        }
    }
    [(a.position(), a.n), (b.position(), b.n)]
}
