//! `amibundle verify`: every check of unbundle, without writing the image.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use serde_json::json;

use super::{keys, output};
use crate::bundle::crypto::Certificate;
use crate::bundle::pipeline::LocalBundle;
use crate::progress::Progress;

/// Arguments of `verify`.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// The bundle's manifest file
    #[arg(short = 'm', long = "manifest", value_name = "PATH")]
    pub manifest: PathBuf,
    /// User certificate: check the manifest signature
    #[arg(short = 'c', long = "cert", value_name = "PATH")]
    pub cert: Option<PathBuf>,
    /// User private key: also decrypt the whole stream and check the tar digest
    #[arg(short = 'k', long = "privatekey", value_name = "PATH")]
    pub private_key: Option<PathBuf>,
    /// Accept a private key file that others can read
    #[arg(long)]
    pub allow_insecure_key: bool,
    /// Directory holding the parts (default: the manifest's directory)
    #[arg(short = 's', long = "source", value_name = "DIR")]
    pub source: Option<PathBuf>,
    /// Print the result as JSON on stdout
    #[arg(long)]
    pub json: bool,
}

/// Runs `verify`.
pub fn run(args: VerifyArgs, progress: &dyn Progress) -> anyhow::Result<()> {
    let bundle = LocalBundle::open(&args.manifest, args.source.as_deref())?;
    let m = &bundle.manifest;
    let signature = match &args.cert {
        Some(path) => {
            let cert = Certificate::load(path)?;
            Some(bundle.verify_signature(&cert).with_context(|| {
                format!(
                    "verifying the signature of {} with {}",
                    args.manifest.display(),
                    path.display()
                )
            })?)
        }
        None => None,
    };
    let decode = match &args.private_key {
        Some(path) => {
            let key = keys::load_private_key(Some(path), args.allow_insecure_key)?;
            Some(
                bundle
                    .decode(&key, None, false, progress)
                    .with_context(|| format!("verifying {}", args.manifest.display()))?,
            )
        }
        None => {
            bundle
                .check_part_digests(progress)
                .with_context(|| format!("verifying {}", args.manifest.display()))?;
            None
        }
    };
    let sig_text = signature.map(|f| format!("{f:?}").to_lowercase());
    if args.json {
        output::print_json(&json!({
            "version": 1,
            "command": "verify",
            "manifest": args.manifest,
            "name": m.image.name,
            "ok": true,
            "signature": sig_text,
            "parts": m.image.parts.len(),
            "bundled_size": m.image.bundled_size,
            "image_size": m.image.size,
            "stream_checked": decode.is_some(),
            "tar_sha1": decode.as_ref().map(|d| d.tar_digest.clone()),
        }))?;
    } else {
        println!(
            "manifest:  {} ({}, {} bytes, {} part(s))",
            args.manifest.display(),
            m.image.name,
            m.image.size,
            m.image.parts.len()
        );
        match &sig_text {
            Some(form) => println!("signature: ok ({form} form)"),
            None => println!("signature: not checked (pass --cert)"),
        }
        println!(
            "parts:     ok ({} bytes, every SHA-1 matches)",
            m.image.bundled_size
        );
        match &decode {
            Some(d) => println!(
                "stream:    ok (tar SHA-1 {}, image {} bytes)",
                d.tar_digest, d.image_size
            ),
            None => println!("stream:    not checked (pass --privatekey)"),
        }
    }
    Ok(())
}
