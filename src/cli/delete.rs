//! `amibundle delete`: remove exactly the objects of one bundle (manifest first): those its
//! manifest names (`-m`), or those found by listing its name (`-p`, which also clears the parts
//! a failed upload left without a manifest).

use std::path::PathBuf;

use anyhow::{Context, bail};
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
    #[arg(
        short = 'm',
        long = "manifest",
        value_name = "MANIFEST",
        required_unless_present = "prefix",
        conflicts_with = "prefix"
    )]
    pub manifest: Option<String>,
    /// Bundle name: delete NAME.manifest.xml and every NAME.part.N found by listing the bucket,
    /// parts without a manifest too (what a failed upload leaves); lists them and asks first
    #[arg(short = 'p', long = "prefix", value_name = "NAME")]
    pub prefix: Option<String>,
    /// With -p: delete without asking
    #[arg(short = 'y', long)]
    pub yes: bool,
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
    if let Some(name) = &args.prefix {
        manifest::validate_bundle_name(name).context("checking -p/--prefix")?;
    }
    cloud_args::runtime()?.block_on(async {
        let cloud = args.cloud.load().await?;
        let client = crate::cloud::s3::client_for_bucket(&cloud, &location.bucket).await?;
        let report = match (&args.prefix, &args.manifest) {
            (Some(name), _) => {
                let found = s3::bundle_keys_by_name(&client, &location, name).await?;
                if found.is_empty() {
                    bail!("{location} holds no object of bundle {name}: nothing deleted");
                }
                if !args.yes && !confirm(&location, &found)? {
                    bail!(
                        "not confirmed: nothing deleted (pass -y/--yes to delete without asking)"
                    );
                }
                s3::delete_listed(&client, &location, found, args.clear)
                    .await
                    .with_context(|| format!("deleting bundle {name} from {location}"))?
            }
            (None, Some(manifest)) => {
                delete_by_manifest(&client, &location, manifest, args.clear).await?
            }
            (None, None) => bail!("give the bundle to delete: -m MANIFEST or -p NAME"),
        };
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

/// `-m`: the objects the manifest names (a local file, or its name in the bucket).
async fn delete_by_manifest(
    client: &aws_sdk_s3::Client,
    location: &BundleLocation,
    manifest: &str,
    clear: bool,
) -> anyhow::Result<s3::DeleteReport> {
    let local = PathBuf::from(manifest);
    let (name, parsed) = if manifest.contains('/') || local.is_file() {
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
        let (parsed, _) = s3::fetch_manifest(client, location, manifest).await?;
        (manifest.to_string(), parsed)
    };
    s3::delete_bundle(client, location, &name, &parsed, clear)
        .await
        .with_context(|| format!("deleting bundle {name} from {location}"))
}

/// Lists what `-p` would delete on stderr and asks; `Ok(true)` only for y/yes.
fn confirm(location: &BundleLocation, found: &s3::BundleObjects) -> anyhow::Result<bool> {
    use std::io::{BufRead, Write};
    let mut err = std::io::stderr().lock();
    writeln!(err, "these objects will be deleted:")?;
    for key in found.keys() {
        writeln!(err, "  s3://{}/{key}", location.bucket)?;
    }
    write!(err, "Continue [y/N]: ")?;
    err.flush()?;
    let mut answer = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut answer)
        .context("reading the answer from stdin")?;
    Ok(matches!(
        answer.trim().to_ascii_lowercase().as_str(),
        "y" | "yes"
    ))
}
