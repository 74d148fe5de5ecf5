//! `amibundle bundle-image`: an image file (or stdin), or an EBS snapshot read through the EBS
//! direct APIs, → parts + signed manifest.

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Args;
use serde_json::json;

use super::bundling::{self, BundleArgs};
use super::{cloud_args, output};
use crate::bundle::manifest;
use crate::bundle::pipeline::ImageInput;
use crate::cloud::{ebs, imds};
use crate::progress::Progress;

/// Arguments of `bundle-image`.
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("source").required(true).args(["image", "snapshot"])))]
pub struct BundleImageArgs {
    /// Image file to bundle, or - for stdin (then --size and --prefix are required)
    #[arg(short = 'i', long = "image", value_name = "IMAGE")]
    pub image: Option<PathBuf>,
    /// EBS snapshot to bundle (snap-...), read through the EBS direct APIs in --region: the
    /// image is its volume, blocks never written are holes; it must be completed
    #[arg(long, value_name = "SNAPSHOT", conflicts_with = "size")]
    pub snapshot: Option<String>,
    /// Exact size in bytes of the image read from stdin
    #[arg(long, value_name = "BYTES")]
    pub size: Option<u64>,
    /// Directory for the parts and the manifest [default: .]
    #[arg(short = 'd', long = "destination", value_name = "DIR")]
    pub destination: Option<PathBuf>,
    /// Bundle name (default: the image's file name, or the snapshot id)
    #[arg(short = 'p', long = "prefix", value_name = "NAME")]
    pub prefix: Option<String>,
    /// Bundle an image larger than EC2's 10 GiB instance-store limit
    #[arg(long)]
    pub allow_oversize: bool,
    #[command(flatten)]
    pub bundle: BundleArgs,
}

/// Runs `bundle-image`.
pub fn run(args: Box<BundleImageArgs>, progress: &dyn Progress) -> anyhow::Result<()> {
    let from_stdin = args.image.as_ref().is_some_and(|i| i.as_os_str() == "-");
    let name = match (&args.prefix, &args.image, &args.snapshot) {
        (Some(p), ..) => p.clone(),
        (None, _, Some(snapshot)) => snapshot.clone(),
        (None, Some(_), None) if from_stdin => {
            bail!("reading the image from stdin needs --prefix NAME for the bundle")
        }
        (None, Some(image), None) => image
            .file_name()
            .and_then(|n| n.to_str())
            .map(str::to_string)
            .with_context(|| {
                format!(
                    "image path {} has no usable file name: pass --prefix",
                    image.display()
                )
            })?,
        (None, None, None) => bail!("pass -i IMAGE or --snapshot SNAPSHOT"),
    };
    manifest::validate_bundle_name(&name).with_context(|| {
        match (&args.prefix, &args.snapshot) {
            (Some(_), _) => "checking --prefix",
            (None, Some(_)) => {
                "using the snapshot id as the bundle name (pass --prefix to choose another)"
            }
            (None, None) => {
                "using the image's file name as the bundle name (pass --prefix to choose another)"
            }
        }
        .to_string()
    })?;
    let fields = args.bundle.given_fields()?;
    let account = match &args.bundle.user {
        Some(user) => user.clone(),
        None => {
            let account = imds::read_account_id(&imds::ImdsOptions::from_env()).context(
                "no -u/--user given and no account id from instance metadata: pass -u/--user ACCOUNT",
            )?;
            tracing::info!("account {account} from instance metadata");
            account
        }
    };
    let spec = args
        .bundle
        .spec(&name, account, fields, args.allow_oversize)?;
    if args.size.is_some() && !from_stdin {
        bail!("--size is only for an image read from stdin (-i -)");
    }
    if args.bundle.stream.enabled() {
        if let Some(dir) = &args.destination {
            bail!(
                "-d/--destination {} has no use with --upload: a streamed bundle is not written locally",
                dir.display()
            );
        }
    }
    let destination = args
        .destination
        .clone()
        .unwrap_or_else(|| PathBuf::from("."));
    output::ensure_dir(&destination, "-d/--destination")?;
    // A snapshot's blocks are fetched on this runtime while the bundler reads them; it lives
    // until the bundle is made.
    let (input, label, extra_json, _runtime) = match (&args.image, &args.snapshot) {
        (_, Some(snapshot)) => {
            let runtime = cloud_args::runtime()?;
            let (input, extra) = open_snapshot(&args, snapshot, &runtime)?;
            (
                input,
                format!("snapshot {snapshot}"),
                Some(extra),
                Some(runtime),
            )
        }
        (Some(image), None) if from_stdin => {
            let size = args
                .size
                .context("reading the image from stdin needs --size BYTES")?;
            let input = ImageInput::Stream {
                reader: Box::new(std::io::stdin()),
                size,
                label: "stdin".to_string(),
            };
            (input, image.display().to_string(), None, None)
        }
        (Some(image), None) => (
            ImageInput::File(image.clone()),
            image.display().to_string(),
            None,
            None,
        ),
        (None, None) => bail!("pass -i IMAGE or --snapshot SNAPSHOT"),
    };
    let steps = bundling::plan_steps(&args.bundle, false);
    if steps.len() > 1 {
        progress.plan("bundle-image", &steps);
    }
    bundling::bundle_and_report(
        &args.bundle,
        &spec,
        input,
        &label,
        &destination,
        "bundle-image",
        None,
        extra_json,
        progress,
    )?;
    progress.plan_done();
    Ok(())
}

/// Checks and lists `snapshot` (in the cloud flags' region) and returns it as the bundler's
/// input, with the JSON fields that describe it.
fn open_snapshot(
    args: &BundleImageArgs,
    snapshot: &str,
    runtime: &tokio::runtime::Runtime,
) -> anyhow::Result<(ImageInput, serde_json::Value)> {
    let cloud = runtime.block_on(args.bundle.stream.cloud.load())?;
    let region = cloud.require_region()?.to_string();
    let client = cloud.ebs_client(&region);
    // Every error names the snapshot (and the region where it matters).
    let image = runtime.block_on(ebs::open_snapshot(
        &client,
        &cloud.ec2_client(&region),
        &region,
        snapshot,
    ))?;
    tracing::info!(
        "snapshot {snapshot}: {} GiB volume, {} written block(s) of 512 KiB ({} of data){}",
        image.volume_size_gib,
        image.blocks,
        crate::progress::human_bytes(image.map.data_bytes()),
        if image.encrypted { ", encrypted" } else { "" }
    );
    let extra = json!({
        "snapshot_id": image.snapshot_id,
        "snapshot_region": region,
        "snapshot_volume_size_gib": image.volume_size_gib,
        "snapshot_blocks": image.blocks,
    });
    let concurrency = args.bundle.stream.concurrency.max(1);
    Ok((
        image.into_input(runtime.handle(), client, concurrency),
        extra,
    ))
}
