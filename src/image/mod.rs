//! Building the filesystem image for `bundle-vol`: the image file and its filesystem
//! (`fs`), the loop device it is attached to (`loopdev`), the private mounts of the image
//! and of the source volume ([`mount`]), the faithful tree copy that fills the image from a
//! live root filesystem or any directory (`copy`), the sensitive-file filter that decides what
//! the copy leaves out (`filter`), `--generalize` (`generalize`), the image's
//! `/etc/fstab` (`fstab`), and the partition table and GRUB of HVM images (`partition`).
//! The external programs they run (mkfs, blkid, grub-install …) are found and run through one
//! private module, `cmd`.

pub mod bootcheck;
pub(crate) mod bootrefs;
mod cmd;
pub(crate) mod copy;
pub(crate) mod filter;
pub(crate) mod fs;
pub(crate) mod fstab;
pub(crate) mod generalize;
pub(crate) mod loopdev;
pub mod mount;
pub(crate) mod partition;
mod root;
pub mod save;
pub mod snapshot;
pub mod volume;

// The types the public modules' options are made of (`volume::VolumeOptions`,
// `snapshot::SnapshotOptions`), from modules that are otherwise the crate's own.
pub use fs::FsType;
pub use partition::{Bootloader, PartitionChoice, PartitionStyle};

#[cfg(test)]
mod testing;
