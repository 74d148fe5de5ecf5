//! The data regions of an image (§3.5): the sparse map the writer is driven by and the reader
//! decodes, and finding the regions of a file with `SEEK_DATA`/`SEEK_HOLE`.
//!
//! Bare § numbers in this module refer to docs/format.md.

use std::fs::File;

use nix::errno::Errno;
use nix::unistd::{Whence, lseek};

use super::header::{ENTRIES_IN_EXTENSION, ENTRIES_IN_HEADER};
use super::{BLOCK_BYTES, TarError};

/// One data region of an image: `len` bytes at `offset` that may contain non-zero data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataRegion {
    /// Start of the region in the image.
    pub offset: u64,
    /// Length of the region in bytes (never 0 inside a [`SparseMap`]).
    pub len: u64,
}

impl DataRegion {
    /// The first byte after the region.
    pub fn end(&self) -> u64 {
        // Cannot overflow: every constructor checks `offset + len <= size`.
        self.offset + self.len
    }
}

/// The data regions of an image of `size` bytes; everything else is a hole reading as zeros.
///
/// Invariants (docs/format.md §3.5 and what the reader needs): regions have `len > 0`, are in
/// ascending order, do not overlap, lie within `[0, size)`, and every region except the last has
/// a length that is a multiple of 512.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SparseMap {
    pub(super) size: u64,
    pub(super) regions: Vec<DataRegion>,
}

impl SparseMap {
    /// Builds the map our writer will emit, normalized per §3.5 rules 1–2.
    ///
    /// `regions` must be in ascending order, must not overlap and must lie within `[0, size)`.
    /// Each region is widened to 512-byte alignment (start down, end up, clamped to `size`) —
    /// always allowed, since it only takes in zeros of a hole — and regions that then touch or
    /// overlap are merged. Zero-length regions are dropped, so a map decoded from a header with
    /// its terminal entry `(size, 0)` can be passed as is. Empty `regions` means all hole.
    ///
    /// # Errors
    /// [`TarError::InvalidMap`] for unordered, overlapping or out-of-range regions.
    pub fn new(size: u64, regions: Vec<DataRegion>) -> Result<Self, TarError> {
        let invalid = |detail: String| TarError::InvalidMap { size, detail };
        let mut out: Vec<DataRegion> = Vec::with_capacity(regions.len());
        let mut prev_end = 0u64;
        for (index, region) in regions.into_iter().enumerate() {
            let end = region.offset.checked_add(region.len).filter(|&e| e <= size);
            let Some(end) = end else {
                return Err(invalid(format!(
                    "region {index} ({}+{}) extends past the end of the image",
                    region.offset, region.len
                )));
            };
            if region.offset < prev_end {
                return Err(invalid(format!(
                    "region {index} at offset {} overlaps or precedes the region ending at {prev_end}",
                    region.offset
                )));
            }
            if region.len == 0 {
                continue;
            }
            prev_end = end;
            let start = round_down(region.offset, BLOCK_BYTES);
            // Cannot overflow: end <= size <= u64::MAX and rounding up is clamped to size.
            let end = round_up(end, BLOCK_BYTES).unwrap_or(size).min(size);
            match out.last_mut() {
                Some(last) if start <= last.end() => last.len = end - last.offset,
                _ => out.push(DataRegion {
                    offset: start,
                    len: end - start,
                }),
            }
        }
        Ok(Self { size, regions: out })
    }

    /// The map of an image without holes: one region `[0, size)` (none when `size` is 0).
    pub fn dense(size: u64) -> Self {
        let regions = if size == 0 {
            Vec::new()
        } else {
            vec![DataRegion {
                offset: 0,
                len: size,
            }]
        };
        Self { size, regions }
    }

    /// Finds the data regions of an open file with `SEEK_DATA`/`SEEK_HOLE` (§3.5).
    ///
    /// Falls back to [`SparseMap::dense`] when the filesystem does not support hole reporting.
    /// The file's offset is restored afterwards.
    ///
    /// # Errors
    /// [`TarError::StatImage`] or [`TarError::FindHoles`].
    pub fn from_file(file: &File) -> Result<Self, TarError> {
        let size = file.metadata().map_err(TarError::StatImage)?.len();
        let saved = lseek(file, 0, Whence::SeekCur)
            .map_err(|source| TarError::FindHoles { offset: 0, source })?;
        let scanned = scan_regions(file, size)?;
        lseek(file, saved, Whence::SeekSet)
            .map_err(|source| TarError::FindHoles { offset: 0, source })?;
        match scanned {
            Some(regions) => Self::new(size, regions),
            None => Ok(Self::dense(size)),
        }
    }

    /// Builds a map from regions already checked against the invariants (reader side).
    pub(super) fn from_checked(size: u64, regions: Vec<DataRegion>) -> Self {
        Self { size, regions }
    }

    /// Size of the image (the member's real size).
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The data regions, ascending.
    pub fn regions(&self) -> &[DataRegion] {
        &self.regions
    }

    /// Bytes of data stored in the archive: Σ nᵢ (the header's `size` field).
    pub fn data_bytes(&self) -> u64 {
        self.regions.iter().map(|r| r.len).sum()
    }

    /// Whether the member is written as old-GNU sparse (`S`): true unless the regions cover the
    /// whole image, in which case it is a plain type `0` member (§3.4).
    pub fn is_sparse(&self) -> bool {
        // Regions are disjoint and within [0, size), so they cover it iff their sum is size.
        self.data_bytes() != self.size
    }

    /// Number of sparse extension blocks after the header (§3.5 placement).
    pub(super) fn extension_blocks(&self) -> usize {
        if !self.is_sparse() {
            return 0;
        }
        let entries = self.regions.len() + 1; // + terminal entry
        entries
            .saturating_sub(ENTRIES_IN_HEADER)
            .div_ceil(ENTRIES_IN_EXTENSION)
    }

    /// Map entries as written: the data regions then the terminal entry `(size, 0)` (§3.5 rule 3).
    pub(super) fn entries(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.regions
            .iter()
            .map(|r| (r.offset, r.len))
            .chain(std::iter::once((self.size, 0)))
    }
}

/// Walks `SEEK_DATA`/`SEEK_HOLE`; `None` when the filesystem cannot report holes.
fn scan_regions(file: &File, size: u64) -> Result<Option<Vec<DataRegion>>, TarError> {
    let mut regions = Vec::new();
    let mut offset = 0u64;
    while offset < size {
        let data = match lseek(file, to_off(offset)?, Whence::SeekData) {
            Ok(data) => from_off(data),
            // ENXIO: no data at or after `offset`, the rest is a hole.
            Err(Errno::ENXIO) => break,
            // Old kernels and some filesystems (e.g. via FUSE) do not support SEEK_DATA.
            Err(Errno::EINVAL | Errno::EOPNOTSUPP) if offset == 0 => return Ok(None),
            Err(source) => return Err(TarError::FindHoles { offset, source }),
        };
        if data >= size {
            break; // the file shrank or grew while we looked
        }
        let hole = match lseek(file, to_off(data)?, Whence::SeekHole) {
            Ok(hole) => from_off(hole).min(size),
            Err(source) => {
                return Err(TarError::FindHoles {
                    offset: data,
                    source,
                });
            }
        };
        if hole <= data {
            break;
        }
        regions.push(DataRegion {
            offset: data,
            len: hole - data,
        });
        offset = hole;
    }
    Ok(Some(regions))
}

fn to_off(offset: u64) -> Result<i64, TarError> {
    i64::try_from(offset).map_err(|_| TarError::FindHoles {
        offset,
        source: Errno::EOVERFLOW,
    })
}

fn from_off(offset: i64) -> u64 {
    // lseek never returns a negative offset on success.
    u64::try_from(offset).unwrap_or(0)
}

fn round_down(value: u64, align: u64) -> u64 {
    value - value % align
}

fn round_up(value: u64, align: u64) -> Option<u64> {
    value.checked_next_multiple_of(align)
}
