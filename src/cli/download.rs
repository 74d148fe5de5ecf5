//! `amibundle download`: a bundle in S3 → a local directory, every part checked as it arrives;
//! with `--unbundle`, straight into the image without keeping any part.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use serde_json::json;

use super::cloud_args::{self, CloudArgs};
use super::keys::{self, SignatureCheck};
use super::output;
use crate::bundle::pipeline::DecodeOptions;
use crate::bundle::space;
use crate::cloud::s3::{self, BundleLocation};
use crate::cloud::unbundle::{BundleRef, Remote, unbundle};
use crate::progress::Progress;

/// Arguments of `download`.
#[derive(Debug, Args)]
pub struct DownloadArgs {
    /// Bucket and optional key prefix, BUCKET[/PREFIX]
    #[arg(short = 'b', long = "bucket", value_name = "BUCKET")]
    pub bucket: String,
    /// Manifest file name in the bucket (NAME.manifest.xml)
    #[arg(short = 'm', long = "manifest", value_name = "NAME")]
    pub manifest: String,
    /// Directory to download into (with --unbundle: to write the image to)
    #[arg(
        short = 'd',
        long = "directory",
        value_name = "DIR",
        default_value = "."
    )]
    pub directory: PathBuf,
    /// Parts downloaded at once
    #[arg(long, value_name = "N", default_value_t = s3::DEFAULT_CONCURRENCY)]
    pub concurrency: usize,
    /// Decode the parts as they arrive and write only the image (no part or manifest is kept)
    #[arg(long)]
    pub unbundle: bool,
    /// With --unbundle: user private key (default: amibundle's own)
    #[arg(
        short = 'k',
        long = "privatekey",
        value_name = "PATH",
        requires = "unbundle"
    )]
    pub private_key: Option<PathBuf>,
    /// With --unbundle: accept a private key file that others can read
    #[arg(long, requires = "unbundle")]
    pub allow_insecure_key: bool,
    /// With --unbundle: the user certificate to check the manifest signature with [default: the
    /// public key of the private key]
    #[arg(short = 'c', long = "cert", value_name = "PATH", requires = "unbundle")]
    pub cert: Option<PathBuf>,
    /// With --unbundle: do not check the manifest signature (warns)
    #[arg(long, requires = "unbundle", conflicts_with = "cert")]
    pub skip_signature: bool,
    /// With --unbundle: replace an existing image file of the same name
    #[arg(long, requires = "unbundle")]
    pub overwrite: bool,
    /// With --unbundle: accept a manifest declaring an image above 10 GiB, EC2's instance-store
    /// limit (a data volume bundled with --allow-oversize)
    #[arg(long, requires = "unbundle")]
    pub allow_oversize: bool,
    #[command(flatten)]
    pub cloud: CloudArgs,
    /// Print the result as JSON on stdout
    #[arg(long)]
    pub json: bool,
}

/// Runs `download`.
pub fn run(args: DownloadArgs, progress: &dyn Progress) -> anyhow::Result<()> {
    if args.manifest.contains('/') {
        anyhow::bail!(
            "--manifest takes the manifest's file name; put its prefix in --bucket BUCKET/PREFIX"
        );
    }
    let location = BundleLocation::parse(&args.bucket).context("checking --bucket")?;
    output::ensure_dir(&args.directory, "-d/--directory")?;
    if args.unbundle {
        return run_unbundle(&args, &location, progress);
    }
    cloud_args::runtime()?.block_on(async {
        let cloud = args.cloud.load().await?;
        let client = crate::cloud::s3::client_for_bucket(&cloud, &location.bucket).await?;
        let report = s3::download_bundle(
            &client,
            &location,
            &args.manifest,
            &args.directory,
            args.concurrency,
            progress,
        )
        .await
        .with_context(|| format!("downloading {}{}", location, args.manifest))
        .map_err(|e| space::explain(e, &args.directory, "the bundle", None))?;
        if args.json {
            output::print_json(&json!({
                "version": 1,
                "command": "download",
                "manifest": report.manifest_path,
                "downloaded": report.downloaded,
                "skipped": report.skipped,
                "bytes": report.bytes,
                "seconds": report.elapsed.as_secs_f64(),
            }))?;
        } else {
            println!("{}", report.manifest_path.display());
        }
        Ok(())
    })
}

/// `download --unbundle`: the manifest is kept in memory, its signature checked as `unbundle`
/// does, and the parts stream from S3 into the image.
fn run_unbundle(
    args: &DownloadArgs,
    location: &BundleLocation,
    progress: &dyn Progress,
) -> anyhow::Result<()> {
    // Local inputs first: a bad key or certificate costs no request.
    let check = SignatureCheck::new(args.cert.as_deref(), args.skip_signature)?;
    let key = keys::load_private_key(args.private_key.as_deref(), args.allow_insecure_key)?;
    let runtime = cloud_args::runtime()?;
    let cloud = runtime.block_on(args.cloud.load())?;
    let bundle = BundleRef::S3 {
        location: location.clone(),
        manifest_name: args.manifest.clone(),
    };
    let remote = Remote {
        runtime: runtime.handle(),
        cloud: &cloud,
        concurrency: args.concurrency,
    };
    let options = DecodeOptions {
        out_dir: Some(&args.directory),
        overwrite: args.overwrite,
        allow_oversize: args.allow_oversize,
    };
    // The decode runs here, on this thread; the runtime's workers run the downloads.
    let report = unbundle(&bundle, Some(remote), &key, &check, options, progress)
        .map_err(|e| space::explain(e.into(), &args.directory, "the image", None))?;
    let signature = report.signature;
    let image = report.decode.image_path.clone().unwrap_or_default();
    if args.json {
        output::print_json(&json!({
            "version": 1,
            "command": "download",
            "unbundle": true,
            "image": image,
            "image_size": report.decode.image_size,
            "sparse_member": report.decode.sparse,
            "tar_sha1": report.decode.tar_digest,
            "signature": signature.map(|f| format!("{f:?}").to_lowercase()),
            "parts": report.parts,
            "bytes": report.bytes_downloaded,
            "manifest_bytes": report.manifest_bytes,
            "seconds": report.elapsed.as_secs_f64(),
        }))?;
    } else {
        println!("{}", image.display());
    }
    Ok(())
}
