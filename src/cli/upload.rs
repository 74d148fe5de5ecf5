//! `amibundle upload`: a local bundle → S3, parts concurrently, manifest last.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use serde_json::json;

use super::cloud_args::{self, CloudArgs};
use super::output;
use crate::bundle::pipeline::LocalBundle;
use crate::cloud::s3::{self, BucketPolicy, BundleLocation, UploadOptions};
use crate::progress::Progress;

/// Arguments of `upload`.
#[derive(Debug, Args)]
pub struct UploadArgs {
    /// The bundle's manifest file
    #[arg(short = 'm', long = "manifest", value_name = "PATH")]
    pub manifest: PathBuf,
    /// Bucket and optional key prefix, BUCKET[/PREFIX] (default: amibundle-ACCOUNT-REGION)
    #[arg(short = 'b', long = "bucket", value_name = "BUCKET")]
    pub bucket: Option<String>,
    /// Directory holding the parts (default: the manifest's directory)
    #[arg(short = 'd', long = "directory", value_name = "DIR")]
    pub directory: Option<PathBuf>,
    /// Parts uploaded at once
    #[arg(long, value_name = "N", default_value_t = s3::DEFAULT_CONCURRENCY)]
    pub concurrency: usize,
    /// Canned ACL of every object (EC2 needs aws-exec-read; public-read makes the bundle public)
    #[arg(long, value_name = "ACL", default_value = s3::DEFAULT_ACL,
          value_parser = s3::ACLS)]
    pub acl: String,
    /// Upload only the parts from this index on
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub part: u32,
    /// Do not upload the manifest
    #[arg(long, alias = "skipmanifest")]
    pub skip_manifest: bool,
    /// Upload every part even if S3 already holds it
    #[arg(long)]
    pub no_resume: bool,
    /// If the bucket has ACLs disabled, enable them (Object Ownership BucketOwnerPreferred)
    #[arg(long)]
    pub fix_ownership: bool,
    #[command(flatten)]
    pub cloud: CloudArgs,
    /// Print the result as JSON on stdout
    #[arg(long)]
    pub json: bool,
}

/// Runs `upload`.
pub fn run(args: UploadArgs, progress: &dyn Progress) -> anyhow::Result<()> {
    let bundle = LocalBundle::open(&args.manifest, args.directory.as_deref())?;
    cloud_args::runtime()?.block_on(async {
        let cloud = args.cloud.load().await?;
        let region = cloud.require_region()?.to_string();
        let account = bundle.manifest.image.user.clone();
        let location = match &args.bucket {
            Some(b) => BundleLocation::parse(b).context("checking --bucket")?,
            None => BundleLocation::parse(&s3::default_bucket_name(&account, &region))?,
        };
        let client = cloud.s3_client(&region);
        let policy = BucketPolicy {
            create: true,
            fix_ownership: args.fix_ownership,
        };
        let state =
            s3::ensure_bucket(&client, &location.bucket, &region, Some(&account), policy).await?;
        tracing::info!("bucket {} in {region}: {state:?}", location.bucket);
        let opts = UploadOptions {
            concurrency: args.concurrency,
            acl: args.acl.clone(),
            skip_manifest: args.skip_manifest,
            from_part: args.part,
            resume: !args.no_resume,
        };
        let report = s3::upload_bundle(&client, &location, &bundle, &opts, progress)
            .await
            .with_context(|| format!("uploading {} to {location}", args.manifest.display()))?;
        if args.json {
            output::print_json(&json!({
                "version": 1,
                "command": "upload",
                "bucket": location.bucket,
                "prefix": location.prefix,
                "region": region,
                "image_location": report.image_location,
                "manifest_uploaded": report.manifest_uploaded,
                "uploaded": report.uploaded,
                "skipped": report.skipped,
                "bytes_sent": report.bytes_sent,
                "seconds": report.elapsed.as_secs_f64(),
            }))?;
        } else {
            eprintln!(
                "uploaded {} part(s), skipped {} already there, {} bytes in {:.1} s",
                report.uploaded.len(),
                report.skipped.len(),
                report.bytes_sent,
                report.elapsed.as_secs_f64()
            );
            println!("{}", report.image_location);
        }
        Ok(())
    })
}
