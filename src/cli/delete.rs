//! `amibundle delete`: remove exactly the objects of one bundle (manifest first).

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use serde_json::json;

use super::cloud_args::{self, CloudArgs};
use super::output;
use crate::bundle::manifest;
use crate::bundle::pipeline::LocalBundle;
use crate::cloud::s3::{self, BundleLocation};

/// Arguments of `delete`.
#[derive(Debug, Args)]
pub struct DeleteArgs {
    /// Bucket and optional key prefix, BUCKET[/PREFIX]
    #[arg(short = 'b', long = "bucket", value_name = "BUCKET")]
    pub bucket: String,
    /// Manifest: a file name in the bucket, or a local manifest file
    #[arg(short = 'm', long = "manifest", value_name = "MANIFEST")]
    pub manifest: String,
    /// Also delete the bucket if it is empty afterwards
    #[arg(long)]
    pub clear: bool,
    #[command(flatten)]
    pub cloud: CloudArgs,
    /// Print the result as JSON on stdout
    #[arg(long)]
    pub json: bool,
}

/// Runs `delete`.
pub fn run(args: DeleteArgs) -> anyhow::Result<()> {
    let location = BundleLocation::parse(&args.bucket).context("checking --bucket")?;
    cloud_args::runtime()?.block_on(async {
        let cloud = args.cloud.load().await?;
        let client = crate::cloud::s3::client_for_bucket(&cloud, &location.bucket).await?;
        let local = PathBuf::from(&args.manifest);
        let (name, manifest) = if args.manifest.contains('/') || local.is_file() {
            let bundle = LocalBundle::open(&local, None)?;
            let name = local
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default()
                .to_string();
            manifest::check_file_name(&bundle.manifest, &name)
                .with_context(|| format!("checking {}", local.display()))?;
            (name, bundle.manifest)
        } else {
            let (manifest, _) = s3::fetch_manifest(&client, &location, &args.manifest).await?;
            (args.manifest.clone(), manifest)
        };
        let report = s3::delete_bundle(&client, &location, &name, &manifest, args.clear)
            .await
            .with_context(|| format!("deleting bundle {name} from {location}"))?;
        if args.json {
            output::print_json(&json!({
                "version": 1,
                "command": "delete",
                "deleted": report.deleted,
                "bucket_removed": report.bucket_removed,
            }))?;
        } else {
            for key in &report.deleted {
                println!("deleted s3://{}/{key}", location.bucket);
            }
            if report.bucket_removed {
                println!("deleted bucket {}", location.bucket);
            }
        }
        Ok(())
    })
}
