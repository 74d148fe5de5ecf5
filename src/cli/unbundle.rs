//! `amibundle unbundle`: parts + manifest → the image, after checking everything.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use serde_json::json;

use super::{keys, output};
use crate::bundle::crypto::Certificate;
use crate::bundle::pipeline::LocalBundle;
use crate::bundle::space;
use crate::progress::Progress;

/// Arguments of `unbundle`.
#[derive(Debug, Args)]
pub struct UnbundleArgs {
    /// The bundle's manifest file
    #[arg(short = 'm', long = "manifest", value_name = "PATH")]
    pub manifest: PathBuf,
    /// User private key (default: amibundle's own)
    #[arg(short = 'k', long = "privatekey", value_name = "PATH")]
    pub private_key: Option<PathBuf>,
    /// Accept a private key file that others can read
    #[arg(long)]
    pub allow_insecure_key: bool,
    /// Also verify the manifest signature with this user certificate
    #[arg(short = 'c', long = "cert", value_name = "PATH")]
    pub cert: Option<PathBuf>,
    /// Directory holding the parts (default: the manifest's directory)
    #[arg(short = 's', long = "source", value_name = "DIR")]
    pub source: Option<PathBuf>,
    /// Directory to write the image to
    #[arg(
        short = 'd',
        long = "destination",
        value_name = "DIR",
        default_value = "."
    )]
    pub destination: PathBuf,
    /// Replace an existing image file of the same name
    #[arg(long)]
    pub overwrite: bool,
    /// Print the result as JSON on stdout
    #[arg(long)]
    pub json: bool,
}

/// Runs `unbundle`.
pub fn run(args: UnbundleArgs, progress: &dyn Progress) -> anyhow::Result<()> {
    let bundle = LocalBundle::open(&args.manifest, args.source.as_deref())?;
    let signature = match &args.cert {
        Some(path) => {
            let cert = Certificate::load(path)?;
            let form = bundle.verify_signature(&cert).with_context(|| {
                format!(
                    "verifying the signature of {} with {}",
                    args.manifest.display(),
                    path.display()
                )
            })?;
            Some(form)
        }
        None => None,
    };
    let key = keys::load_private_key(args.private_key.as_deref(), args.allow_insecure_key)?;
    let report = bundle
        .decode(&key, Some(&args.destination), args.overwrite, progress)
        .with_context(|| format!("unbundling {}", args.manifest.display()))
        .map_err(|e| space::explain(e, &args.destination, "the image", None))?;
    let image = report.image_path.clone().unwrap_or_default();
    if args.json {
        output::print_json(&json!({
            "version": 1,
            "command": "unbundle",
            "image": image,
            "image_size": report.image_size,
            "sparse_member": report.sparse,
            "tar_sha1": report.tar_digest,
            "signature": signature.map(|f| format!("{f:?}").to_lowercase()),
            "seconds": report.elapsed.as_secs_f64(),
        }))?;
    } else {
        println!("{}", image.display());
    }
    Ok(())
}
