//! `to-ebs`'s steps on a local copy of the image: the Nitro boot check (the image mounted
//! read-only), `--check-boot` (a bundle's image decrypted into the work directory first), and
//! `--partition` (a bare filesystem, or a disk without boot code, copied into a partitioned
//! image with GRUB 2 by bundle-vol's own code). Runs that stage the image locally keep no resume
//! journal: their staging directory is new on every run.

use std::path::Path;

use anyhow::{Context, bail};

use super::keys;
use super::to_ebs::ToEbsArgs;
use crate::bundle::pipeline::DecodeOptions;
use crate::cloud::ebs::{self, Conversion};
use crate::cloud::unbundle::{BundleRef, Remote};
use crate::image::bootcheck::{self, CheckOptions, Platform, Virtualization};
use crate::image::fs as imgfs;
use crate::image::mount::PrivateNamespace;
use crate::image::partition::{Bootloader, PartitionChoice};
use crate::image::snapshot::{self, Snapshot, SnapshotOptions, WorkKind};
use crate::image::volume::{FstabChoice, ReadOnlyImage, VolumeOptions};
use crate::progress::Progress;

/// The boot check for Nitro (`image::bootcheck` with `Platform::Nitro`) of the image file
/// `image`, which must pass (unless `--allow-unbootable`) before anything is sent. It mounts
/// the image read-only, so it needs root; without root it is skipped with a warning naming
/// the command that runs it.
pub(super) fn nitro_check(
    args: &ToEbsArgs,
    ns: Option<&PrivateNamespace>,
    image: &Path,
    ena: bool,
) -> anyhow::Result<()> {
    let Some(ns) = ns else {
        tracing::warn!(
            "the Nitro boot check mounts the image and needs root: it was not run; run `sudo \
             amibundle check-image --platform nitro {}` before using the AMI",
            image.display()
        );
        return Ok(());
    };
    if !args.work_dir.is_dir() {
        bail!("--work-dir {} is not a directory", args.work_dir.display());
    }
    let work = imgfs::create_work_dir(&args.work_dir)?;
    let opts = CheckOptions {
        virtualization: Virtualization::Hvm,
        platform: Platform::Nitro,
        ena,
        sriov: false,
    };
    let report = bootcheck::check_image_file(ns, image, work.path(), &opts).with_context(|| {
        format!(
            "checking that {} boots on Nitro (pass --allow-unbootable to register it unchecked)",
            image.display()
        )
    });
    let report = match report {
        Ok(report) => report,
        Err(e) if args.allow_unbootable => {
            tracing::warn!("{e:#}");
            return Ok(());
        }
        Err(e) => return Err(e),
    };
    for p in &report.problems {
        tracing::warn!(
            "{}: {}: {} (fix: {})",
            image.display(),
            p.code,
            p.message,
            p.fix
        );
    }
    let errors = report.errors().count();
    if errors > 0 && !args.allow_unbootable {
        bail!(
            "{} will not boot as an EBS-backed AMI on a Nitro instance: {errors} problem(s) \
             above; nothing was sent (fix them, or pass --allow-unbootable to register it anyway)",
            image.display()
        );
    }
    if errors == 0 {
        tracing::info!("{}: the Nitro boot check passed", image.display());
    }
    Ok(())
}

/// `--check-boot` for a bundle: its image decrypted into a work directory (removed
/// afterwards), checked for Nitro, then made into the snapshot from there.
#[allow(clippy::too_many_arguments)]
pub(super) fn convert_checked(
    args: &ToEbsArgs,
    ns: Option<&PrivateNamespace>,
    runtime: &tokio::runtime::Handle,
    cloud: &crate::cloud::config::CloudConfig,
    region: &str,
    bundle: &BundleRef,
    remote: Option<Remote<'_>>,
    (key, check): (&crate::bundle::crypto::UserKey, &keys::SignatureCheck),
    conversion: &Conversion,
    progress: &dyn Progress,
) -> anyhow::Result<ebs::Converted> {
    if !args.work_dir.is_dir() {
        bail!("--work-dir {} is not a directory", args.work_dir.display());
    }
    let work = imgfs::create_work_dir(&args.work_dir)?;
    let options = DecodeOptions {
        allow_oversize: args.allow_oversize,
        ..DecodeOptions::into_dir(work.path())
    };
    let unbundled =
        crate::cloud::unbundle::unbundle(bundle, remote, key, check, options, progress)?;
    let image = unbundled
        .decode
        .image_path
        .context("the unbundled image has no path")?;
    let mut conversion = conversion.clone();
    // The staging directory is new on every run: no journal to resume from.
    conversion.snapshot.journal_dir = None;
    let prepared = match &mut conversion.register {
        Some(reg) => {
            if reg.architecture.is_empty() {
                reg.architecture = unbundled
                    .manifest
                    .machine
                    .as_ref()
                    .map_or("x86_64".into(), |m| m.architecture.clone());
            }
            prepare_image(args, ns, &image, reg.ena_support, progress)?
        }
        None => Prepared::as_is(&image),
    };
    let done = ebs::convert_image_file(
        runtime,
        cloud,
        region,
        &prepared.path,
        &conversion,
        progress,
    )?;
    prepared.finish()?;
    Ok(done)
}

/// The image to send: the one given, or a partitioned copy of it (removed by
/// [`Prepared::finish`], or when dropped).
pub(super) struct Prepared {
    /// The image file to send.
    pub(super) path: std::path::PathBuf,
    copy: Option<Snapshot>,
}

impl Prepared {
    fn as_is(image: &Path) -> Self {
        Prepared {
            path: image.to_path_buf(),
            copy: None,
        }
    }

    /// Whether the image is a partitioned copy (made anew on every run).
    pub(super) fn is_copy(&self) -> bool {
        self.copy.is_some()
    }

    /// Removes the copy, if any.
    pub(super) fn finish(self) -> anyhow::Result<()> {
        if let Some(copy) = self.copy {
            copy.finish(true)?;
        }
        Ok(())
    }
}

/// Readies the image file `image` for an EBS-backed AMI: one that can boot as it is gets the
/// Nitro check; a bare filesystem (or a disk without boot code) is refused unless `--partition`,
/// which copies its filesystem into a new partitioned image with GRUB 2 (bundle-vol's table,
/// mkfs, faithful copy and bootloader code, its boot check run for Nitro) in `--work-dir`.
pub(super) fn prepare_image(
    args: &ToEbsArgs,
    ns: Option<&PrivateNamespace>,
    image: &Path,
    ena: bool,
    progress: &dyn Progress,
) -> anyhow::Result<Prepared> {
    match ebs::check_bootable_disk(image) {
        Ok(()) => {
            nitro_check(args, ns, image, ena)?;
            Ok(Prepared::as_is(image))
        }
        Err(ebs::ConvertError::NotBootable(_)) if args.partition => {
            let ns = ns.context(
                "--partition mounts the image and makes a new one with loop devices: run as root",
            )?;
            partitioned_copy(args, ns, image, ena, progress)
        }
        Err(e) => Err(e.into()),
    }
}

/// `--partition`: the filesystem of `image` (mounted read-only) copied into a new MBR image
/// with GRUB 2 in `--work-dir`, checked for Nitro.
fn partitioned_copy(
    args: &ToEbsArgs,
    ns: &PrivateNamespace,
    image: &Path,
    ena: bool,
    progress: &dyn Progress,
) -> anyhow::Result<Prepared> {
    if !args.work_dir.is_dir() {
        bail!("--work-dir {} is not a directory", args.work_dir.display());
    }
    let mounts = imgfs::create_work_dir(&args.work_dir)?;
    let source = ReadOnlyImage::open(ns, image, mounts.path(), "source")
        .with_context(|| format!("mounting {} read-only for --partition", image.display()))?;
    let name = image
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("image")
        .to_string();
    tracing::info!(
        "{}: no partition table or no boot code: copying its filesystem into a partitioned \
         image with GRUB 2 (--partition)",
        image.display()
    );
    let options = VolumeOptions {
        volume: source.dir.clone(),
        image_name: format!("{name}.partitioned"),
        size_mib: None,
        fs_type: None,
        new_uuid: false,
        all: false,
        exclude: Vec::new(),
        include: Vec::new(),
        // A copy of an image, not of a running server: nothing is left out.
        filter: false,
        tool_inputs: Vec::new(),
        fstab: FstabChoice::Keep,
        ephemeral: Vec::new(),
        generalize: false,
        destination: None,
        allow_lossy: false,
        threads: super::bundling::threads(None),
        generator: format!("amibundle {}", env!("CARGO_PKG_VERSION")),
        partition: PartitionChoice::Mbr,
        bootloader: Bootloader::Grub2,
        boot_check: Some(CheckOptions {
            virtualization: Virtualization::Hvm,
            platform: Platform::Nitro,
            ena,
            sriov: false,
        }),
        allow_unbootable: args.allow_unbootable,
    };
    let copy = snapshot::snapshot(
        ns,
        &options,
        SnapshotOptions {
            destination: args.work_dir.clone(),
            work: WorkKind::Temporary,
            keep_at: None,
        },
        progress,
    );
    source.close()?;
    let copy = copy.with_context(|| format!("making a partitioned copy of {}", image.display()))?;
    if let Some(report) = copy.made.as_ref().and_then(|m| m.boot_check.as_ref()) {
        for p in &report.problems {
            tracing::warn!(
                "partitioned copy: {}: {} (fix: {})",
                p.code,
                p.message,
                p.fix
            );
        }
    }
    Ok(Prepared {
        path: copy.image().to_path_buf(),
        copy: Some(copy),
    })
}
