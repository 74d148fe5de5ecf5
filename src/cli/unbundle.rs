//! `amibundle unbundle`: parts + manifest → the image, after checking everything.

use std::path::PathBuf;

use clap::Args;
use serde_json::json;

use super::keys::{self, SignatureArgs, SignatureCheck};
use super::output;
use crate::bundle::pipeline::DecodeOptions;
use crate::bundle::space;
use crate::cloud::unbundle::{BundleRef, unbundle};
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
    #[command(flatten)]
    pub signature: SignatureArgs,
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
    /// Accept a manifest declaring an image above 10 GiB, EC2's instance-store limit (a data
    /// volume bundled with --allow-oversize)
    #[arg(long)]
    pub allow_oversize: bool,
    /// Print the result as JSON on stdout
    #[arg(long)]
    pub json: bool,
}

/// Runs `unbundle`.
pub fn run(args: UnbundleArgs, progress: &dyn Progress) -> anyhow::Result<()> {
    let check = SignatureCheck::new(
        args.signature.cert.as_deref(),
        args.signature.skip_signature,
    )?;
    let key = keys::load_private_key(args.private_key.as_deref(), args.allow_insecure_key)?;
    output::ensure_dir(&args.destination, "-d/--destination")?;
    let bundle = BundleRef::Local {
        manifest: args.manifest.clone(),
        parts: args.source.clone(),
    };
    let options = DecodeOptions {
        out_dir: Some(&args.destination),
        overwrite: args.overwrite,
        allow_oversize: args.allow_oversize,
    };
    let done = unbundle(&bundle, None, &key, &check, options, progress)
        .map_err(|e| space::explain(e.into(), &args.destination, "the image", None))?;
    let (report, signature) = (&done.decode, done.signature);
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
