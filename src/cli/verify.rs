//! `amibundle verify`: every check of unbundle, without writing the image.

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Args;
use serde_json::json;

use super::cloud_args::{self, CloudArgs};
use super::keys::{self, SignatureArgs, SignatureCheck};
use super::output;
use crate::bundle::pipeline::{DecodeOptions, LocalBundle};
use crate::cloud::s3::{self, BundleLocation};
use crate::progress::Progress;

/// Arguments of `verify`.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// The bundle's manifest file, or s3://BUCKET/PREFIX/NAME.manifest.xml (downloaded to a
    /// private temporary directory, every part checked as it arrives)
    #[arg(short = 'm', long = "manifest", value_name = "PATH|S3-URL")]
    pub manifest: PathBuf,
    #[command(flatten)]
    pub signature: SignatureArgs,
    /// User private key: also decrypt the whole stream and check the tar digest
    #[arg(short = 'k', long = "privatekey", value_name = "PATH")]
    pub private_key: Option<PathBuf>,
    /// Accept a private key file that others can read
    #[arg(long)]
    pub allow_insecure_key: bool,
    /// Directory holding the parts (default: the manifest's directory)
    #[arg(short = 's', long = "source", value_name = "DIR")]
    pub source: Option<PathBuf>,
    /// Accept a manifest declaring an image above 10 GiB, EC2's instance-store limit (a data
    /// volume bundled with --allow-oversize)
    #[arg(long)]
    pub allow_oversize: bool,
    #[command(flatten)]
    pub cloud: CloudArgs,
    /// Print the result as JSON on stdout
    #[arg(long)]
    pub json: bool,
}

/// Downloads `s3://bucket/prefix/name.manifest.xml` into a private temporary directory.
fn fetch_from_s3(
    url: &str,
    cloud_args: &CloudArgs,
    progress: &dyn Progress,
) -> anyhow::Result<(tempfile::TempDir, PathBuf)> {
    let (location, file) = BundleLocation::parse_manifest_url(url)?;
    let file = file.as_str();
    let tmp = tempfile::Builder::new()
        .prefix(".amibundle-verify-")
        .tempdir()
        .context("creating a temporary directory")?;
    let manifest = cloud_args::runtime()?.block_on(async {
        let cloud = cloud_args.load().await?;
        let client = crate::cloud::s3::client_for_bucket(&cloud, &location.bucket).await?;
        let report = s3::download_bundle(
            &client,
            &location,
            file,
            tmp.path(),
            s3::DEFAULT_CONCURRENCY,
            progress,
        )
        .await
        .with_context(|| format!("downloading {url}"))?;
        Ok::<_, anyhow::Error>(report.manifest_path)
    })?;
    Ok((tmp, manifest))
}

/// Runs `verify`.
pub fn run(args: VerifyArgs, progress: &dyn Progress) -> anyhow::Result<()> {
    let mut check = SignatureCheck::new(
        args.signature.cert.as_deref(),
        args.signature.skip_signature,
    )?;
    if matches!(check, SignatureCheck::PrivateKey) && args.private_key.is_none() {
        // Neither -c nor -k: amibundle's own certificate, if it has one.
        let own = keys::default_identity_dir()
            .ok()
            .map(|d| d.join(crate::bundle::crypto::GENERATED_CERT_FILE))
            .filter(|p| p.exists());
        match own {
            Some(path) => check = SignatureCheck::new(Some(&path), false)?,
            None => bail!(
                "verify checks the manifest signature: pass --cert (the certificate of the key \
                 that signed it) or --privatekey (which also checks the whole stream), or \
                 --skip-signature to check only the parts"
            ),
        }
    }
    let text = args.manifest.to_string_lossy().into_owned();
    // Keeps the downloaded copy alive until the checks are done; removed on return.
    let (_download, manifest_path) = if text.starts_with("s3://") {
        let (tmp, path) = fetch_from_s3(&text, &args.cloud, progress)?;
        (Some(tmp), path)
    } else {
        (None, args.manifest.clone())
    };
    let bundle = LocalBundle::open(&manifest_path, args.source.as_deref())?;
    let m = &bundle.manifest;
    let key = match &args.private_key {
        Some(path) => Some(keys::load_private_key(Some(path), args.allow_insecure_key)?),
        None => None,
    };
    let signature = check.check(
        &bundle.raw,
        &bundle.manifest,
        &args.manifest.display().to_string(),
        key.as_ref(),
    )?;
    let decode = match &key {
        Some(key) => Some(
            bundle
                .decode(
                    key,
                    DecodeOptions {
                        allow_oversize: args.allow_oversize,
                        ..DecodeOptions::default()
                    },
                    progress,
                )
                .with_context(|| format!("verifying {}", args.manifest.display()))?,
        ),
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
            None => println!("signature: not checked (--skip-signature)"),
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
