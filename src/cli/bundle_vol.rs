//! `amibundle bundle-vol`: a running system (or any directory) → a faithful image → a bundle,
//! local or streamed to S3. Runs as root; every mount lives in a private mount namespace.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use serde_json::json;

use super::bundling::{self, BundleArgs};
use super::output;
use crate::bundle::manifest;
use crate::bundle::pipeline::ImageInput;
use crate::cloud::imds::{self, ImdsOptions, InstanceMetadata};
use crate::image::bootcheck::{CheckOptions, Virtualization};
use crate::image::fs::{self as imgfs, FsType};
use crate::image::mount;
use crate::image::partition::{Bootloader, PartitionChoice};
use crate::image::save::SaveState;
use crate::image::volume::{self, FstabChoice, VolumeImage, VolumeOptions};
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
    let image_out = destination.join(&args.prefix);
    if (args.clone_only || args.keep_image)
        && !args.bundle.overwrite
        && std::fs::symlink_metadata(&image_out).is_ok()
    {
        bail!(
            "{} already exists; pass --overwrite to replace it",
            image_out.display()
        );
    }
    let exclude = expand(&volume, &args.exclude, "--exclude");
    let include = expand(&volume, &args.include, "--include");
    let given = args.bundle.given_fields()?;

    // Instance metadata: what to inherit, and the account when -u is absent.
    let metadata = if args.no_inherit && args.bundle.user.is_some() {
        None
    } else {
        read_metadata(args.no_inherit)?
    };
    let fields = match (&metadata, args.no_inherit) {
        (Some(md), false) => imds::inherit(given, md),
        _ => given,
    };
    let account = match (&args.bundle.user, &metadata) {
        (Some(u), _) => Some(u.clone()),
        (None, Some(md)) => md.account_id.clone(),
        (None, None) => None,
    };
    let spec = if args.clone_only {
        None
    } else {
        let account = account.context(
            "no -u/--user given and no account id from instance metadata: pass -u/--user ACCOUNT",
        )?;
        Some(
            args.bundle
                .spec(&args.prefix, account, fields.clone(), false)?,
        )
    };
    // Fail on bad keys now, not after the copy.
    if !args.clone_only {
        crate::cli::keys::load_identity(&args.bundle.keys)?;
    }

    let opts = VolumeOptions {
        volume: volume.clone(),
        image_name: args.prefix.clone(),
        size_mib: args.size,
        fs_type: args.fs_type.map(FsType::from),
        new_uuid: args.new_uuid,
        all: args.all,
        exclude,
        include,
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
        destination: Some(destination.clone()),
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
        }),
        allow_unbootable: args.allow_unbootable,
    };
    // bundle-vol: a fresh private work directory, removed on any exit. save: a fixed one that
    // survives a failure, so a rerun can take the finished image up again.
    let work = if save {
        Work::Save(SaveState::open(&destination, &args.prefix, &opts)?)
    } else {
        Work::Temp(imgfs::create_work_dir(&destination)?)
    };
    let image_file = work.path().join(&args.prefix);
    if !args.clone_only {
        progress.plan(command, &bundling::plan_steps(&args.bundle, true));
    }
    progress.step(crate::progress::steps::SNAPSHOT);
    let snapshot_started = Instant::now();
    let reused = match &work {
        Work::Save(state) => state.reusable_image(),
        Work::Temp(_) => None,
    };
    let (made, resume) = match reused {
        Some(resume) => {
            tracing::info!(
                "reusing the complete image {} made by an interrupted run",
                image_file.display()
            );
            (None, Some(resume))
        }
        None => {
            if let Work::Save(state) = &work {
                state.clear()?;
            }
            tracing::info!(
                "saving {} into a {} image in {}",
                volume.display(),
                opts.fs_type
                    .map_or("matching".to_string(), |t| t.to_string()),
                work.path().display()
            );
            let made = match volume::make_image(&ns, &opts, work.path(), progress) {
                Ok(made) => made,
                Err(e) => {
                    let e = anyhow::Error::new(e)
                        .context(format!("making an image of {}", volume.display()));
                    // A full filesystem is said as such, measured before the image goes.
                    let e = crate::bundle::space::explain_full_dir(e, &destination, "the image");
                    // save: an image cut short (an error, SIGINT/SIGTERM) is of no use to a
                    // rerun, which would start over anyway: nothing is kept.
                    if let Work::Save(state) = work {
                        if let Err(e) = state.remove() {
                            tracing::warn!("{e:#}");
                        }
                    }
                    return Err(e);
                }
            };
            let resume = match &work {
                Work::Save(state) => Some(state.mark_complete(&made.path)?),
                Work::Temp(_) => None,
            };
            (Some(made), resume)
        }
    };
    let snapshot_seconds = snapshot_started.elapsed().as_secs_f64();
    let filter_list = match &made {
        Some(made) => report_image(made, &destination, &args.prefix)?,
        None => None,
    };
    let image_reused = made.is_none();

    let keep = args.clone_only || args.keep_image;
    let image_path = if keep && !save {
        std::fs::rename(&image_file, &image_out)
            .with_context(|| format!("moving the image to {}", image_out.display()))?;
        image_out.clone()
    } else {
        image_file.clone()
    };
    let Some(spec) = spec else {
        let Some(made) = made else {
            unreachable!("--clone-only never reuses an image")
        };
        if args.bundle.json {
            output::print_json(&json!({
                "version": 1,
                "command": "bundle-vol",
                "image": image_path,
                "image_size": made.size,
                "files": made.copy.files,
                "bytes_copied": made.copy.bytes,
                "filtered": made.filter.filtered.len(),
                "filtered_list": filter_list,
                "phase_seconds": {
                    "prepare": made.timings.prepare.as_secs_f64(),
                    "filter": made.timings.filter.as_secs_f64(),
                    "copy": made.timings.copy.as_secs_f64(),
                    "finish": made.timings.finish.as_secs_f64(),
                },
            }))?;
        } else {
            println!("{}", image_path.display());
        }
        return Ok(());
    };
    let extra = save.then(|| {
        json!({
            "image_reused": image_reused,
            "snapshot_seconds": snapshot_seconds,
        })
    });
    let result = bundling::bundle_and_report(
        &args.bundle,
        &spec,
        ImageInput::File(image_path.clone()),
        &image_path.display().to_string(),
        &destination,
        command,
        resume,
        extra,
        progress,
    );
    if let Work::Save(state) = work {
        match &result {
            Ok(()) if args.keep_image => {
                std::fs::rename(&image_file, &image_out)
                    .with_context(|| format!("moving the image to {}", image_out.display()))?;
                state.remove()?;
            }
            Ok(()) => state.remove()?,
            Err(_) => tracing::warn!(
                "the image is kept in {} so that rerunning the same `amibundle save` resumes (parts already in S3 are not sent again); remove that directory to start over",
                state.dir().display()
            ),
        }
    }
    if result.is_ok() {
        progress.plan_done();
    }
    // bundle-vol's work directory (and the image in it, unless kept) is removed when `work`
    // drops here.
    result
}

/// Where the image is made.
enum Work {
    /// bundle-vol: private, removed with everything in it when dropped.
    Temp(tempfile::TempDir),
    /// save: fixed, kept after a failure for the rerun.
    Save(SaveState),
}

impl Work {
    fn path(&self) -> &Path {
        match self {
            Work::Temp(dir) => dir.path(),
            Work::Save(state) => state.dir(),
        }
    }
}

/// Expands `--exclude`/`--include` patterns, warning about those that match nothing.
fn expand(volume: &Path, patterns: &[PathBuf], flag: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for p in patterns {
        let (matches, none) = volume::expand_pattern(volume, p);
        if none {
            tracing::warn!(
                "{flag} {} matches nothing under {}",
                p.display(),
                volume.display()
            );
        }
        out.extend(matches);
    }
    out
}

/// Instance metadata for inheritance (and the account). Off EC2 that is said and the run goes
/// on with what the user gave; a failure on EC2 stops it (naming `--no-inherit`).
fn read_metadata(no_inherit: bool) -> anyhow::Result<Option<InstanceMetadata>> {
    match imds::read_instance_metadata(&ImdsOptions::from_env()) {
        Ok(md) => Ok(Some(md)),
        Err(e) if e.is_unavailable() => {
            if !no_inherit {
                tracing::info!(
                    "no instance metadata ({}): not on EC2, nothing inherited",
                    crate::bundle::error_chain(&e)
                );
            }
            Ok(None)
        }
        Err(e) if no_inherit => {
            tracing::warn!(
                "instance metadata could not be read: {}",
                crate::bundle::error_chain(&e)
            );
            Ok(None)
        }
        Err(e) => Err(anyhow::Error::new(e).context(
            "reading instance metadata to inherit ancestry, kernel, product codes and mappings (pass --no-inherit to go without)",
        )),
    }
}

/// Tells the user what went into the image and what did not; writes the filter's list next to
/// the bundle. Returns the list's path, if one was written.
fn report_image(
    made: &VolumeImage,
    destination: &Path,
    prefix: &str,
) -> anyhow::Result<Option<PathBuf>> {
    let c = &made.copy;
    tracing::info!(
        "image: {} files, {} directories, {} symlinks, {} hard links, {} devices, {} fifos, {} of data, {} xattrs",
        c.files,
        c.dirs,
        c.symlinks,
        c.hardlinks,
        c.devices,
        c.fifos,
        crate::progress::human_bytes(c.bytes),
        c.xattrs
    );
    if c.sockets_skipped > 0 {
        tracing::info!(
            "{} sockets skipped (they exist only while bound)",
            c.sockets_skipped
        );
    }
    for (path, fs_type) in &made.skipped_mounts {
        tracing::warn!(
            "{} is a separate {fs_type} filesystem: only its mount point is in the image (pass --all to copy it too)",
            path.display()
        );
    }
    for (path, what) in &c.lossy {
        tracing::warn!("{} not copied faithfully: {what}", path.display());
    }
    if !c.changed.is_empty() {
        tracing::warn!(
            "{} files changed while being copied (a live system); the image holds what was read",
            c.changed.len()
        );
    }
    for r in &made.boot_rewrites {
        tracing::warn!("rewrote a reference to an identifier the image could not keep: {r}");
    }
    for w in &made.fstab_warnings {
        tracing::warn!("{w}");
    }
    if let Some(prev) = &made.fstab_previous {
        tracing::info!(
            "/etc/fstab replaced; the previous one is {} in the image",
            prev.display()
        );
    }
    if let Some(boot) = &made.boot {
        tracing::info!(
            "{} image: GRUB 2 installed with {} ({})",
            made.partition,
            boot.program.display(),
            boot.grub_dir.display()
        );
        for w in &boot.warnings {
            tracing::warn!("{w}");
        }
    }
    if let Some(report) = &made.boot_check {
        if report.problems.is_empty() {
            tracing::info!(
                "boot check: no problems ({}, kernel {}, {})",
                report
                    .config
                    .as_deref()
                    .map_or("no configuration".into(), |p| p.display().to_string()),
                report.kernel_version.as_deref().unwrap_or("?"),
                report.command_line.as_deref().unwrap_or("")
            );
        }
        for p in &report.problems {
            tracing::warn!("boot check: {}: {} (fix: {})", p.code, p.message, p.fix);
        }
    }
    if let Some(g) = &made.generalize {
        for action in &g.actions {
            tracing::info!("generalize: {action}");
        }
    }
    let list = if made.filter.filtered.is_empty() && made.filter.kept.is_empty() {
        None
    } else {
        let path = destination.join(format!("{prefix}.filtered.txt"));
        if std::fs::symlink_metadata(&path).is_ok() {
            std::fs::remove_file(&path).with_context(|| format!("replacing {}", path.display()))?;
        }
        made.filter.write_to(&path)?;
        Some(path)
    };
    if let Some(path) = &list {
        tracing::info!(
            "sensitive-file filter: {} path(s) left out of the image; the list is in {} (--include PATH keeps one, --no-filter turns the filter off)",
            made.filter.filtered.len(),
            path.display()
        );
    }
    Ok(list)
}
