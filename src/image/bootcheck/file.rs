//! The boot check of an image file (`amibundle check-image`): the image is attached read-only,
//! its root partition found from its own table, mounted read-only in the private mount
//! namespace, and checked; nothing in it is changed.

use std::fs::{self, File};
use std::os::unix::fs::FileExt as _;
use std::path::Path;

use nix::mount::MsFlags;

use super::{BootReport, CheckOptions, DiskFacts, check_tree};
use crate::image::fs::{self as imgfs, FsType};
use crate::image::fstab::RootFs;
use crate::image::loopdev::{LoopDevice, LoopOptions};
use crate::image::mount::{Mount, PrivateNamespace};
use crate::image::partition::{self, PartitionStyle, TableSpec};
use crate::image::volume::VolumeError;

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
    let io = |action: &'static str| {
        move |source| VolumeError::Io {
            action,
            path: image.to_owned(),
            source,
        }
    };
    let mut boot_sector = [0u8; 440];
    File::open(image)
        .and_then(|f| f.read_exact_at(&mut boot_sector, 0))
        .map_err(io("reading the boot sector of"))?;
    let root_part = partition::root_partition(image)?;
    let table = match root_part {
        Some((number, _)) => Some(TableSpec::from_disk(
            image,
            partition::SECTOR_BYTES,
            number,
        )?),
        None => None,
    };

    let mut loopdev = LoopDevice::attach(
        image,
        LoopOptions {
            read_only: true,
            partscan: false,
        },
    )?;
    let device = match root_part {
        Some((number, extent)) => {
            loopdev.add_partition(number, extent.offset_bytes, extent.size_bytes)?
        }
        None => loopdev.path().to_path_buf(),
    };
    let probe = imgfs::probe_device(&device)?;
    let fs_type: FsType = probe
        .fs_type
        .as_deref()
        .and_then(|t| t.parse().ok())
        .ok_or_else(|| imgfs::FsError::Unsupported {
            fs_type: probe
                .fs_type
                .clone()
                .unwrap_or_else(|| "nothing recognisable".into()),
            mount_point: image.to_path_buf(),
        })?;
    let disk = DiskFacts {
        style: table.as_ref().map_or(PartitionStyle::None, |t| t.style),
        boot_code: boot_sector.iter().any(|&b| b != 0),
        root: RootFs {
            uuid: probe.uuid.clone(),
            label: probe
                .label
                .as_ref()
                .map(|l| l.to_string_lossy().into_owned()),
            partuuid: table.as_ref().and_then(TableSpec::root_partuuid),
            partlabel: table
                .as_ref()
                .filter(|t| t.style == PartitionStyle::Gpt)
                .map(|t| t.root_name.clone()),
            fs_type: fs_type.as_str().to_owned(),
        },
    };
    let mnt = work_dir.join("check");
    fs::create_dir(&mnt).map_err(|source| VolumeError::Io {
        action: "creating",
        path: mnt.clone(),
        source,
    })?;
    let mounted = Mount::new(
        ns,
        &device,
        &mnt,
        fs_type.as_str(),
        MsFlags::MS_RDONLY,
        fs_type.mount_data(),
    )?;
    let report = check_tree(&mnt, &disk, opts);
    mounted.unmount()?;
    loopdev.detach()?;
    fs::remove_dir(&mnt).map_err(|source| VolumeError::Io {
        action: "removing",
        path: mnt.clone(),
        source,
    })?;
    Ok(report?)
}
