//! How big the image is: the used space and inodes of the source ([`source_usage`]) and the
//! size rule of [`HEADROOM_BYTES`], capped at EC2's 10 GiB for root volumes ([`plan_image`]).

use std::path::Path;

use super::FsError;

/// Images are sized in whole MiB (the classic `--size` unit), which also keeps the loop device
/// a whole number of sectors.
pub const SIZE_ALIGN_BYTES: u64 = 1 << 20;

/// Fixed headroom added to the used space. The size rule: `used + used / 10 + 256 MiB`
/// rounded up to a MiB. The tenth covers per-file rounding to blocks, directories and
/// extended-attribute blocks of the copy; the 256 MiB cover the new filesystem's own metadata
/// (journal up to 64 MiB and inode tables of 1/64 of the size up to 10 GiB) plus room to write
/// a few files after boot. statvfs's used space already excludes the source's own metadata.
pub const HEADROOM_BYTES: u64 = 256 << 20;

/// EC2's limit for the root device of an instance-store AMI: 10 GiB.
pub const ROOT_LIMIT_BYTES: u64 = 10 << 30;

/// Bytes of image per inode that `mke2fs` creates by default (`inode_ratio` of the default
/// usage type in mke2fs.conf). When the source has more files than that gives, the inode
/// count is set explicitly (see [`plan_image`]).
const EXT_BYTES_PER_INODE: u64 = 16384;

/// What the source uses, from statvfs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SourceUsage {
    /// Bytes in use (blocks in use × fragment size; the filesystem's own metadata excluded).
    pub used_bytes: u64,
    /// Inodes in use (0 where the filesystem does not count them, e.g. btrfs).
    pub used_inodes: u64,
}

/// The used space and inodes of the filesystem holding `path`. For a volume that is only part
/// of its filesystem this is an over-estimate, which only makes the image larger.
///
/// # Errors
///
/// [`FsError::Statvfs`].
pub fn source_usage(path: &Path) -> Result<SourceUsage, FsError> {
    let st = nix::sys::statvfs::statvfs(path).map_err(|source| FsError::Statvfs {
        path: path.to_owned(),
        source,
    })?;
    // The counts are `u32` on some 32-bit targets.
    #[allow(clippy::useless_conversion)]
    let used_blocks = u64::from(st.blocks()).saturating_sub(u64::from(st.blocks_free()));
    #[allow(clippy::useless_conversion)]
    Ok(SourceUsage {
        used_bytes: used_blocks.saturating_mul(u64::from(st.fragment_size())),
        used_inodes: u64::from(st.files()).saturating_sub(u64::from(st.files_free())),
    })
}

/// Whether the image is of a root volume (EC2 limits instance-store roots to 10 GiB) or of a
/// data directory (no limit).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VolumeRole {
    /// The root filesystem of the AMI.
    Root,
    /// Any other directory.
    Data,
}

/// The image's size and, for ext, inode count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImagePlan {
    /// The image file's size in bytes (whole MiB).
    pub size_bytes: u64,
    /// The inode count to give `mke2fs` (`MkfsSpec::inodes`) when its default would be too
    /// few for the source's files.
    pub inodes: Option<u64>,
}

/// Sizes the image: `requested_mib` (`--size`) if given, else the rule of [`HEADROOM_BYTES`]
/// (`used + used / 10 + 256 MiB`, in whole MiB). Inodes: the source's count plus a tenth and
/// 4096 more; when `mke2fs`'s default (one per 16 KiB) is fewer, the count is set explicitly
/// and the automatic size grows by the inode tables' size (256 bytes each).
///
/// Root volumes: an automatic size above 10 GiB is capped at 10 GiB as long as the used space
/// plus the filesystem's metadata still fits (`used + used / 50 + 256 MiB`), and an explicit
/// size must be at most 10 GiB.
///
/// # Errors
///
/// [`FsError::TooBigForRoot`], [`FsError::SizeAboveRootLimit`], [`FsError::SizeTooSmall`]
/// (an explicit size below `used + used / 50 + 256 MiB`).
pub fn plan_image(
    requested_mib: Option<u64>,
    usage: SourceUsage,
    role: VolumeRole,
) -> Result<ImagePlan, FsError> {
    let used = usage.used_bytes;
    let wanted_inodes = usage
        .used_inodes
        .saturating_add(usage.used_inodes / 10)
        .saturating_add(4096);
    let inode_table = |inodes: Option<u64>| inodes.map_or(0, |n| n.saturating_mul(256));
    // The least that holds the data: its metadata at up to 10 GiB fits in the 256 MiB.
    let minimum = |inodes| {
        round_up_mib(
            used.saturating_add(used / 50)
                .saturating_add(HEADROOM_BYTES)
                .saturating_add(inode_table(inodes)),
        )
    };
    let inodes_for =
        |size: u64| (wanted_inodes > size / EXT_BYTES_PER_INODE).then_some(wanted_inodes);

    if let Some(mib) = requested_mib {
        let size = mib.saturating_mul(SIZE_ALIGN_BYTES);
        if role == VolumeRole::Root && size > ROOT_LIMIT_BYTES {
            return Err(FsError::SizeAboveRootLimit { requested_mib: mib });
        }
        let inodes = inodes_for(size);
        let needed = minimum(inodes);
        if size < needed {
            return Err(FsError::SizeTooSmall {
                requested_mib: mib,
                needed_mib: needed >> 20,
            });
        }
        return Ok(ImagePlan {
            size_bytes: size,
            inodes,
        });
    }

    let base = used
        .saturating_add(used / 10)
        .saturating_add(HEADROOM_BYTES);
    let inodes = inodes_for(base);
    let size = round_up_mib(base.saturating_add(inode_table(inodes)));
    if role == VolumeRole::Root && size > ROOT_LIMIT_BYTES {
        let inodes = inodes_for(ROOT_LIMIT_BYTES);
        let needed = minimum(inodes);
        if needed > ROOT_LIMIT_BYTES {
            return Err(FsError::TooBigForRoot {
                needed_mib: needed >> 20,
            });
        }
        return Ok(ImagePlan {
            size_bytes: ROOT_LIMIT_BYTES,
            inodes,
        });
    }
    Ok(ImagePlan {
        size_bytes: size,
        inodes,
    })
}

fn round_up_mib(bytes: u64) -> u64 {
    bytes
        .div_ceil(SIZE_ALIGN_BYTES)
        .saturating_mul(SIZE_ALIGN_BYTES)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::fs::tests::MIB;

    const GIB: u64 = 1 << 30;

    fn usage(used_bytes: u64, used_inodes: u64) -> SourceUsage {
        SourceUsage {
            used_bytes,
            used_inodes,
        }
    }

    #[test]
    fn sizes_images_by_the_documented_rule() {
        // 1000 MiB used: 1000 + 100 + 256 MiB.
        let plan = plan_image(None, usage(1000 * MIB, 30_000), VolumeRole::Root).expect("plan");
        assert_eq!(
            plan,
            ImagePlan {
                size_bytes: 1356 * MIB,
                inodes: None
            }
        );
        // Rounded up to whole MiB.
        let plan = plan_image(None, usage(1, 0), VolumeRole::Data).expect("plan");
        assert_eq!(plan.size_bytes, 257 * MIB);
        // Many small files: more inodes than one per 16 KiB, and room for their tables.
        let plan = plan_image(None, usage(1000 * MIB, 200_000), VolumeRole::Data).expect("plan");
        let inodes = 200_000 + 20_000 + 4096;
        assert_eq!(plan.inodes, Some(inodes));
        assert_eq!(
            plan.size_bytes,
            (1356 * MIB + inodes * 256).div_ceil(MIB) * MIB
        );
        // Root volumes are capped at 10 GiB while the data still fits...
        let plan = plan_image(None, usage(9 * GIB, 100_000), VolumeRole::Root).expect("plan");
        assert_eq!(
            plan,
            ImagePlan {
                size_bytes: 10 * GIB,
                inodes: None
            }
        );
        // ... and refused when it does not, saying what to do.
        let err = plan_image(None, usage(10 * GIB - 200 * MIB, 100_000), VolumeRole::Root)
            .expect_err("too big");
        assert!(matches!(err, FsError::TooBigForRoot { .. }), "{err:?}");
        assert!(err.to_string().contains("--exclude"), "{err}");
        // Data volumes are not capped.
        let plan = plan_image(None, usage(20 * GIB, 100_000), VolumeRole::Data).expect("plan");
        assert_eq!(
            plan,
            ImagePlan {
                size_bytes: 22 * GIB + 256 * MIB,
                inodes: None
            }
        );
    }

    #[test]
    fn checks_an_explicit_size() {
        let used = usage(1000 * MIB, 1000);
        assert_eq!(
            plan_image(Some(2048), used, VolumeRole::Root).expect("plan"),
            ImagePlan {
                size_bytes: 2048 * MIB,
                inodes: None
            }
        );
        let err = plan_image(Some(10241), used, VolumeRole::Root).expect_err("over the limit");
        assert_eq!(
            err.to_string(),
            "--size 10241 MiB is above EC2's 10240 MiB limit for instance-store root volumes"
        );
        assert!(plan_image(Some(20480), used, VolumeRole::Data).is_ok());
        // 1000 + 20 + 256 MiB is the least.
        assert!(plan_image(Some(1276), used, VolumeRole::Data).is_ok());
        let err = plan_image(Some(1275), used, VolumeRole::Data).expect_err("too small");
        assert_eq!(
            err.to_string(),
            "--size 1275 MiB is too small: the volume's used space needs at least 1276 MiB"
        );
    }
}
