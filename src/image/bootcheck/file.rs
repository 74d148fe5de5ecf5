//! The boot check of an image file (`amibundle check-image`): the image is attached read-only,
//! its root partition found from its own table, mounted read-only in the private mount
//! namespace, and checked; nothing in it is changed.

use std::path::Path;

use super::{BootReport, CheckOptions, DiskFacts, check_tree};
use crate::image::fstab::RootFs;
use crate::image::mount::PrivateNamespace;
use crate::image::partition::{self, PartitionStyle, TableSpec};
use crate::image::volume::{ReadOnlyImage, VolumeError};

/// Checks the image file `image` (a raw disk image: partitioned, or a bare filesystem); its
/// filesystem is mounted read-only under a new directory in `work_dir`, removed afterwards.
///
/// # Errors
/// [`VolumeError`] when the image cannot be read, attached or mounted (an image whose table or
/// filesystem is not recognised is an error naming it), or the check cannot read a file.
pub fn check_image_file(
    ns: &PrivateNamespace,
    image: &Path,
    work_dir: &Path,
    opts: &CheckOptions,
) -> Result<BootReport, VolumeError> {
    let boot_code = partition::has_boot_code(image).map_err(|source| VolumeError::Io {
        action: "reading the boot sector of",
        path: image.to_owned(),
        source,
    })?;
    let opened = ReadOnlyImage::open(ns, image, work_dir, "check")?;
    let table = match opened.root_partition {
        Some((number, _)) => Some(TableSpec::from_disk(
            image,
            partition::SECTOR_BYTES,
            number,
        )?),
        None => None,
    };
    let disk = DiskFacts {
        style: table.as_ref().map_or(PartitionStyle::None, |t| t.style),
        boot_code,
        root: RootFs {
            uuid: opened.probe.uuid.clone(),
            label: opened
                .probe
                .label
                .as_ref()
                .map(|l| l.to_string_lossy().into_owned()),
            partuuid: table.as_ref().and_then(TableSpec::root_partuuid),
            partlabel: table
                .as_ref()
                .filter(|t| t.style == PartitionStyle::Gpt)
                .map(|t| t.root_name.clone()),
            fs_type: opened.fs_type.as_str().to_owned(),
        },
    };
    let report = check_tree(&opened.dir, &disk, opts);
    opened.close()?;
    Ok(report?)
}
