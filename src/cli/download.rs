//! `amibundle download`: a bundle in S3 → a local directory, every part checked as it arrives.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use serde_json::json;

use super::cloud_args::{self, CloudArgs};
use super::output;
use crate::cloud::s3::{self, BundleLocation};
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
    /// Directory to download into
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
    cloud_args::runtime()?.block_on(async {
        let cloud = args.cloud.load().await?;
        let client = args
            .cloud
            .client_for_bucket(&cloud, &location.bucket)
            .await?;
        let report = s3::download_bundle(
            &client,
            &location,
            &args.manifest,
            &args.directory,
            args.concurrency,
            progress,
        )
        .await
        .with_context(|| format!("downloading {}{}", location, args.manifest))?;
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
