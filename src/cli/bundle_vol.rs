//! `amibundle bundle-vol`: a running system (or any directory) → a faithful image → a bundle,
//! local or streamed to S3. Runs as root; every mount lives in a private mount namespace.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use serde_json::json;

use super::bundling::{self, BundleArgs};
use super::{image_report, output};
use crate::bundle::manifest;
use crate::bundle::pipeline::ImageInput;
use crate::cloud::imds::{self, ImdsOptions, InheritedFields};
use crate::image::bootcheck::{CheckOptions, Platform, Virtualization};
use crate::image::fs::FsType;
use crate::image::mount;
use crate::image::partition::{Bootloader, PartitionChoice};
use crate::image::snapshot::{self, SnapshotOptions, WorkKind};
use crate::image::volume::{self, FstabChoice, VolumeOptions};
use crate::progress::Progress;

/// `--fs-type` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FsTypeArg {
    /// ext2
    Ext2,
    /// ext3
    Ext3,
    /// ext4
    Ext4,
    /// XFS (needs mkfs.xfs)
    Xfs,
}

impl From<FsTypeArg> for FsType {
    fn from(t: FsTypeArg) -> Self {
        match t {
            FsTypeArg::Ext2 => FsType::Ext2,
            FsTypeArg::Ext3 => FsType::Ext3,
            FsTypeArg::Ext4 => FsType::Ext4,
            FsTypeArg::Xfs => FsType::Xfs,
        }
    }
}

/// Arguments of `bundle-vol`.
#[derive(Debug, Args)]
pub struct BundleVolArgs {
    /// The directory to save: the root filesystem, or any directory (e.g. a data volume)
    #[arg(short = 'v', long = "volume", value_name = "DIR", default_value = "/")]
    pub volume: PathBuf,
    /// Directory for the work files (the image while it is made) and the bundle
    #[arg(
        short = 'd',
        long = "destination",
        value_name = "DIR",
        default_value = "/var/tmp"
    )]
    pub destination: PathBuf,
    /// Bundle and image name
    #[arg(
        short = 'p',
        long = "prefix",
        value_name = "NAME",
        default_value = "image"
    )]
    pub prefix: String,
    /// Image size in MiB (default: used space + 10% + 256 MiB; root volumes at most 10240)
    #[arg(short = 's', long = "size", value_name = "MIB")]
    pub size: Option<u64>,
    /// Leave out these paths (anchored at the volume; shell wildcards allowed, e.g. /tmp/*)
    #[arg(short = 'e', long = "exclude", value_name = "PATH", value_delimiter = ',', num_args = 1..)]
    pub exclude: Vec<PathBuf>,
    /// Keep these paths even if the sensitive-file filter would leave them out
    #[arg(short = 'i', long = "include", value_name = "PATH", value_delimiter = ',', num_args = 1..)]
    pub include: Vec<PathBuf>,
    /// Turn the sensitive-file filter off (private keys, credentials, histories)
    #[arg(long)]
    pub no_filter: bool,
    /// Also copy other filesystems mounted below the volume (never /proc, /sys, tmpfs ...)
    #[arg(short = 'a', long)]
    pub all: bool,
    /// Install this file as the image's /etc/fstab
    #[arg(long, value_name = "FILE", conflicts_with = "generate_fstab")]
    pub fstab: Option<PathBuf>,
    /// Write an /etc/fstab naming the root by UUID/LABEL, instance-store disks with nofail
    #[arg(long)]
    pub generate_fstab: bool,
    /// Partition table of the image: auto (like the root disk's; none for a directory), mbr,
    /// gpt (with a BIOS boot partition) or none
    #[arg(short = 'P', long, value_name = "STYLE", value_enum, default_value_t = PartitionChoice::Auto)]
    pub partition: PartitionChoice,
    /// Bootloader of a partitioned image: grub2 (the image's own GRUB 2 for BIOS) or none
    #[arg(long, value_name = "NAME", value_enum, default_value_t = Bootloader::Grub2)]
    pub bootloader: Bootloader,
    /// Filesystem of the image (default: the volume's own type)
    #[arg(long, value_name = "TYPE", value_enum)]
    pub fs_type: Option<FsTypeArg>,
    /// Give the image's filesystem a new UUID instead of the volume's
    #[arg(long)]
    pub new_uuid: bool,
    /// In the image only: remove SSH host keys, machine-id, cloud-init state, histories
    #[arg(long)]
    pub generalize: bool,
    /// Do not take ancestry, kernel, ramdisk, product codes and mappings from instance metadata
    #[arg(long)]
    pub no_inherit: bool,
    /// Only make the image file (DEST/PREFIX); no bundle, no keys or account needed
    #[arg(long)]
    pub clone_only: bool,
    /// Keep the image file (DEST/PREFIX) after bundling
    #[arg(long)]
    pub keep_image: bool,
    /// Accept entries that cannot be copied faithfully (listed as warnings)
    #[arg(long)]
    pub allow_lossy: bool,
    /// Bundle the image even when the boot check finds it will not boot on an instance-store
    /// (Xen) instance (the problems are shown as warnings); the environment variable serves the
    /// ec2-bundle-vol command line, which has no such flag
    #[arg(long, env = "AMIBUNDLE_ALLOW_UNBOOTABLE")]
    pub allow_unbootable: bool,
    /// Accepted for ec2-bundle-vol compatibility: amibundle never prompts
    #[arg(long, hide = true)]
    pub batch: bool,
    #[command(flatten)]
    pub bundle: BundleArgs,
}

/// Runs `bundle-vol`.
pub fn run(args: Box<BundleVolArgs>, progress: &dyn Progress) -> anyhow::Result<()> {
    run_volume(*args, false, progress)
}

/// Runs `save`: `bundle-vol --upload [--register]` in one pass, resumable. The bucket defaults
/// to amibundle-ACCOUNT-REGION and the AMI name to the prefix.
pub fn run_save(args: Box<BundleVolArgs>, progress: &dyn Progress) -> anyhow::Result<()> {
    let mut args = *args;
    if args.clone_only {
        bail!("save bundles, uploads and registers: --clone-only belongs to bundle-vol");
    }
    if args.bundle.stream.upload.is_none() {
        args.bundle.stream.upload = Some(String::new());
    }
    if args.bundle.stream.register.is_none() {
        args.bundle.stream.register = Some(args.prefix.clone());
    }
    run_volume(args, true, progress)
}

fn run_volume(args: BundleVolArgs, save: bool, progress: &dyn Progress) -> anyhow::Result<()> {
    let command = if save { "save" } else { "bundle-vol" };
    if !nix::unistd::geteuid().is_root() {
        bail!(
            "{command} must run as root: it reads every file of the volume, attaches a loop device and mounts the image"
        );
    }
    // First, before any thread exists: every mount from here on is private to this process.
    let ns = mount::enter_private_namespace()?;

    manifest::validate_bundle_name(&args.prefix).context("checking --prefix")?;
    let volume = std::fs::canonicalize(&args.volume)
        .with_context(|| format!("--volume {}", args.volume.display()))?;
    output::ensure_dir(&args.destination, "-d/--destination")?;
    let destination = std::fs::canonicalize(&args.destination)
        .with_context(|| format!("--destination {}", args.destination.display()))?;
    if !destination.is_dir() {
        bail!("--destination {} is not a directory", destination.display());
    }
    if args.clone_only && args.bundle.stream.enabled() {
        bail!("--clone-only makes only the image: it cannot be combined with --upload/--register");
    }
    let keep_at = (args.clone_only || args.keep_image).then(|| destination.join(&args.prefix));
    if let Some(out) = keep_at.as_ref().filter(|_| !args.bundle.overwrite) {
        if std::fs::symlink_metadata(out).is_ok() {
            bail!(
                "{} already exists; pass --overwrite to replace it",
                out.display()
            );
        }
    }
    let (fields, account) = imds::inherit_from_instance(
        args.bundle.given_fields()?,
        args.bundle.user.clone(),
        args.no_inherit,
        &ImdsOptions::from_env(),
    )
    .context(
        "reading instance metadata to inherit ancestry, kernel, product codes and mappings (pass --no-inherit to go without)",
    )?;
    let spec = if args.clone_only {
        None
    } else {
        let account = account.context(
            "no -u/--user given and no account id from instance metadata: pass -u/--user ACCOUNT",
        )?;
        // Fail on bad keys now, not after the copy.
        crate::cli::keys::load_identity(&args.bundle.keys)?;
        Some(
            args.bundle
                .spec(&args.prefix, account, fields.clone(), false)?,
        )
    };
    let opts = volume_options(&args, volume, &destination, &fields);
    let how = SnapshotOptions {
        destination: destination.clone(),
        work: if save {
            WorkKind::Resumable
        } else {
            WorkKind::Temporary
        },
        keep_at,
    };
    if !args.clone_only {
        progress.plan(command, &bundling::plan_steps(&args.bundle, true));
    }
    progress.step(crate::progress::steps::SNAPSHOT);
    let mut snap = snapshot::snapshot(&ns, &opts, how, progress).map_err(|e| {
        // A full filesystem is said as such, measured before the image goes.
        crate::bundle::space::explain_full_dir(e.into(), &destination, "the image")
    })?;
    let filter_list = match &snap.made {
        Some(made) => image_report::report_image(made, &destination, &args.prefix)?,
        None => None,
    };
    let Some(spec) = spec else {
        let made = snap
            .made
            .as_ref()
            .context("--clone-only never reuses an image")?;
        image_report::print_clone(args.bundle.json, snap.image(), made, filter_list)?;
        snap.finish(true)?;
        return Ok(());
    };
    let extra = save.then(|| {
        json!({
            "image_reused": snap.reused(),
            "snapshot_seconds": snap.seconds,
        })
    });
    let image = snap.image().to_path_buf();
    let result = bundling::bundle_and_report(
        &args.bundle,
        &spec,
        ImageInput::File(image.clone()),
        &image.display().to_string(),
        &destination,
        command,
        snap.resume.take(),
        extra,
        progress,
    );
    if let Some(kept) = snap.finish(result.is_ok())? {
        tracing::warn!(
            "the image is kept in {} so that rerunning the same `amibundle save` resumes (parts already in S3 are not sent again); remove that directory to start over",
            kept.display()
        );
    }
    if result.is_ok() {
        progress.plan_done();
    }
    result
}

/// The image's options from the flags.
fn volume_options(
    args: &BundleVolArgs,
    volume: PathBuf,
    destination: &Path,
    fields: &InheritedFields,
) -> VolumeOptions {
    VolumeOptions {
        exclude: volume::expand_patterns(&volume, &args.exclude, "--exclude"),
        include: volume::expand_patterns(&volume, &args.include, "--include"),
        volume,
        image_name: args.prefix.clone(),
        size_mib: args.size,
        fs_type: args.fs_type.map(FsType::from),
        new_uuid: args.new_uuid,
        all: args.all,
        filter: !args.no_filter,
        tool_inputs: args.bundle.key_files(),
        fstab: match (&args.fstab, args.generate_fstab) {
            (Some(f), _) => FstabChoice::File(f.clone()),
            (None, true) => FstabChoice::Generate,
            (None, false) => FstabChoice::Keep,
        },
        ephemeral: fields
            .block_device_mapping
            .iter()
            .map(|m| (m.virtual_name.clone(), m.device.clone()))
            .collect(),
        generalize: args.generalize,
        destination: Some(destination.to_path_buf()),
        allow_lossy: args.allow_lossy,
        threads: bundling::threads(args.bundle.threads),
        generator: format!("amibundle {}", env!("CARGO_PKG_VERSION")),
        partition: args.partition,
        bootloader: args.bootloader,
        // An image only for cloning is checked by check-image on demand.
        boot_check: (!args.clone_only).then(|| CheckOptions {
            virtualization: Virtualization::from_ami_type(
                &args.bundle.stream.ami.virtualization_type,
            ),
            ena: args.bundle.stream.ami.ena_support,
            sriov: args.bundle.stream.ami.sriov_net_support,
            platform: Platform::Xen,
        }),
        allow_unbootable: args.allow_unbootable,
    }
}
