//! `amibundle bundle-image`: an image file (or stdin) → parts + signed manifest.

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Args;

use super::bundling::{self, BundleArgs};
use super::output;
use crate::bundle::manifest;
use crate::bundle::pipeline::ImageInput;
use crate::cloud::imds;
use crate::progress::Progress;

/// Arguments of `bundle-image`.
#[derive(Debug, Args)]
pub struct BundleImageArgs {
    /// Image file to bundle, or - for stdin (then --size and --prefix are required)
    #[arg(short = 'i', long = "image", value_name = "IMAGE")]
    pub image: PathBuf,
    /// Exact size in bytes of the image read from stdin
    #[arg(long, value_name = "BYTES")]
    pub size: Option<u64>,
    /// Directory for the parts and the manifest [default: .]
    #[arg(short = 'd', long = "destination", value_name = "DIR")]
    pub destination: Option<PathBuf>,
    /// Bundle name (default: the image's file name)
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
    let from_stdin = args.image.as_os_str() == "-";
    let name = match &args.prefix {
        Some(p) => p.clone(),
        None if from_stdin => {
            bail!("reading the image from stdin needs --prefix NAME for the bundle")
        }
        None => args
            .image
            .file_name()
            .and_then(|n| n.to_str())
            .map(str::to_string)
            .with_context(|| {
                format!(
                    "image path {} has no usable file name: pass --prefix",
                    args.image.display()
                )
            })?,
    };
    manifest::validate_bundle_name(&name).with_context(|| match &args.prefix {
        Some(_) => "checking --prefix".to_string(),
        None => "using the image's file name as the bundle name (pass --prefix to choose another)"
            .to_string(),
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
    let input = if from_stdin {
        let size = args
            .size
            .context("reading the image from stdin needs --size BYTES")?;
        ImageInput::Stream {
            reader: Box::new(std::io::stdin()),
            size,
            label: "stdin".to_string(),
        }
    } else {
        if args.size.is_some() {
            bail!("--size is only for an image read from stdin (-i -)");
        }
        ImageInput::File(args.image.clone())
    };
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
    let steps = bundling::plan_steps(&args.bundle, false);
    if steps.len() > 1 {
        progress.plan("bundle-image", &steps);
    }
    bundling::bundle_and_report(
        &args.bundle,
        &spec,
        input,
        &args.image.display().to_string(),
        &destination,
        "bundle-image",
        None,
        None,
        progress,
    )?;
    progress.plan_done();
    Ok(())
}
