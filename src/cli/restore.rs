//! `amibundle restore`: a bundle of a directory (local, or streamed from S3) back into a
//! directory with every attribute bundle-vol kept: the data-volume backup's way back.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, bail};
use clap::Args;
use serde_json::json;

use super::cloud_args::{self, CloudArgs};
use super::keys::{self, SignatureArgs, SignatureCheck};
use super::{bundling, output};
use crate::bundle::pipeline::DecodeOptions;
use crate::cloud::s3;
use crate::cloud::unbundle::{BundleRef, Remote, unbundle};
use crate::image::fs as imgfs;
use crate::image::{mount, volume};
use crate::progress::Progress;

/// Arguments of `restore`.
#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// The bundle's manifest file, or s3://BUCKET/PREFIX/NAME.manifest.xml (parts streamed, not
    /// stored)
    #[arg(short = 'm', long = "manifest", value_name = "PATH|S3-URL")]
    pub manifest: String,
    /// Directory to restore into: created if missing, must be empty
    #[arg(short = 'd', long = "destination", value_name = "DIR")]
    pub destination: PathBuf,
    /// User private key (default: amibundle's own)
    #[arg(short = 'k', long = "privatekey", value_name = "PATH")]
    pub private_key: Option<PathBuf>,
    /// Accept a private key file that others can read
    #[arg(long)]
    pub allow_insecure_key: bool,
    #[command(flatten)]
    pub signature: SignatureArgs,
    /// Where the image is unbundled while it is copied [default: the destination's parent]
    #[arg(long, value_name = "DIR")]
    pub work_dir: Option<PathBuf>,
    /// Accept a manifest declaring an image above 10 GiB, EC2's instance-store limit (a data
    /// volume bundled with --allow-oversize)
    #[arg(long)]
    pub allow_oversize: bool,
    /// Accept entries the destination cannot hold faithfully (listed as warnings)
    #[arg(long)]
    pub allow_lossy: bool,
    /// Copy threads (default: all cores)
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
    /// Parts downloaded at once (S3)
    #[arg(long, value_name = "N", default_value_t = s3::DEFAULT_CONCURRENCY)]
    pub concurrency: usize,
    #[command(flatten)]
    pub cloud: CloudArgs,
    /// Print the result as JSON on stdout
    #[arg(long)]
    pub json: bool,
}

/// Runs `restore`.
pub fn run(args: RestoreArgs, progress: &dyn Progress) -> anyhow::Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("restore must run as root: it attaches the image to a loop device and mounts it");
    }
    // Before any thread (the S3 runtime) exists: the image's mount stays private.
    let ns = mount::enter_private_namespace()?;
    let started = Instant::now();
    let target = &args.destination;
    let created = match std::fs::read_dir(target) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                bail!(
                    "--destination {} is not empty: restore into an empty or new directory",
                    target.display()
                );
            }
            false
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir(target)
                .with_context(|| format!("creating --destination {}", target.display()))?;
            true
        }
        Err(e) => {
            return Err(e).with_context(|| format!("reading --destination {}", target.display()));
        }
    };
    let result = restore_into(&args, &ns, target, started, progress);
    if result.is_err() && created {
        // The directory this run made goes with it (remove_dir: only while it is empty).
        let _ = std::fs::remove_dir(target);
    }
    result
}

fn restore_into(
    args: &RestoreArgs,
    ns: &mount::PrivateNamespace,
    target: &std::path::Path,
    started: Instant,
    progress: &dyn Progress,
) -> anyhow::Result<()> {
    let target = std::fs::canonicalize(target)?;
    let work_parent = match &args.work_dir {
        Some(d) => d.clone(),
        None => target
            .parent()
            .map(PathBuf::from)
            .context("--destination has no parent directory: pass --work-dir")?,
    };
    let key = keys::load_private_key(args.private_key.as_deref(), args.allow_insecure_key)?;
    let check = SignatureCheck::new(
        args.signature.cert.as_deref(),
        args.signature.skip_signature,
    )?;
    let work = imgfs::create_work_dir(&work_parent)?;

    let bundle = BundleRef::parse(&args.manifest)?;
    let runtime = cloud_args::runtime()?;
    let cloud = match bundle {
        BundleRef::S3 { .. } => Some(runtime.block_on(args.cloud.load())?),
        BundleRef::Local { .. } => None,
    };
    let remote = cloud.as_ref().map(|cloud| Remote {
        runtime: runtime.handle(),
        cloud,
        concurrency: args.concurrency,
    });
    let options = DecodeOptions {
        allow_oversize: args.allow_oversize,
        ..DecodeOptions::into_dir(work.path())
    };
    let image = unbundle(&bundle, remote, &key, &check, options, progress)?
        .decode
        .image_path
        .context("the unbundled image has no path")?;

    let report = volume::restore_image(
        ns,
        &image,
        work.path(),
        &target,
        args.allow_lossy,
        bundling::threads(args.threads),
        progress,
    )
    .with_context(|| format!("restoring {} into {}", args.manifest, target.display()))?;
    for (path, what) in &report.lossy {
        tracing::warn!("{} not restored faithfully: {what}", path.display());
    }
    if args.json {
        output::print_json(&json!({
            "version": 1,
            "command": "restore",
            "destination": target,
            "files": report.files,
            "dirs": report.dirs,
            "symlinks": report.symlinks,
            "hardlinks": report.hardlinks,
            "devices": report.devices,
            "fifos": report.fifos,
            "bytes": report.bytes,
            "xattrs": report.xattrs,
            "lossy": report.lossy.len(),
            "seconds": started.elapsed().as_secs_f64(),
        }))?;
    } else {
        tracing::info!(
            "restored {} files, {} directories, {} of data",
            report.files,
            report.dirs,
            crate::progress::human_bytes(report.bytes)
        );
        println!("{}", target.display());
    }
    Ok(())
}
