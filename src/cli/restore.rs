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
use crate::bundle::pipeline::{DecodeOptions, LocalBundle};
use crate::cloud::s3::{self, BundleLocation};
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
    let check = SignatureCheck::from_args(
        args.signature.cert.as_deref(),
        args.signature.skip_signature,
    )?;
    let work = imgfs::create_work_dir(&work_parent)?;

    let image = if args.manifest.starts_with("s3://") {
        let (location, file) = BundleLocation::parse_manifest_url(&args.manifest)?;
        let runtime = cloud_args::runtime()?;
        let (client, manifest, raw) = runtime.block_on(async {
            let cloud = args.cloud.load().await?;
            let client = args
                .cloud
                .client_for_bucket(&cloud, &location.bucket)
                .await?;
            let (manifest, raw) = s3::fetch_manifest(&client, &location, &file)
                .await
                .with_context(|| format!("downloading {}", args.manifest))?;
            Ok::<_, anyhow::Error>((client, manifest, raw))
        })?;
        check.check(&raw, &manifest, &args.manifest, Some(&key))?;
        let report = s3::unbundle_stream(
            runtime.handle(),
            &client,
            &location,
            &manifest,
            &key,
            work.path(),
            s3::StreamDecode {
                overwrite: false,
                allow_oversize: args.allow_oversize,
            },
            args.concurrency,
            progress,
        )
        .with_context(|| format!("unbundling {}", args.manifest))?;
        report.decode.image_path
    } else {
        let path = PathBuf::from(&args.manifest);
        let bundle = LocalBundle::open(&path, None)?;
        check.check(
            &bundle.raw,
            &bundle.manifest,
            &path.display().to_string(),
            Some(&key),
        )?;
        bundle
            .decode(
                &key,
                DecodeOptions {
                    allow_oversize: args.allow_oversize,
                    ..DecodeOptions::into_dir(work.path())
                },
                progress,
            )
            .with_context(|| format!("unbundling {}", path.display()))?
            .image_path
    }
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
