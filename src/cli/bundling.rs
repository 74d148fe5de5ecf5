//! What `bundle-image` and `bundle-vol` share: the manifest and key flags, the bundle spec they
//! make, and the last step (a local bundle, or a streamed upload with `--upload`/`--register`)
//! with its output.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::Args;
use serde_json::json;

use super::keys::{self, Ec2CertArgs, UserKeyArgs};
use super::output;
use super::streaming::{self, StreamArgs, StreamJob};
use crate::bundle::manifest::{self, Bundler, Mapping};
use crate::bundle::pipeline::{self, BundleSpec, Identity, ImageInput, Overrides, PreparedImage};
use crate::cloud::imds::InheritedFields;
use crate::progress::{Progress, steps};

/// Flags of every bundling command.
#[derive(Debug, Args)]
pub struct BundleArgs {
    /// AWS account id, 12 digits, dashes allowed (default on EC2: the instance owner's, from
    /// instance metadata)
    #[arg(short = 'u', long = "user", value_name = "ACCOUNT")]
    pub user: Option<String>,
    /// Architecture: i386, x86_64 or arm64 (default: this machine's)
    #[arg(short = 'r', long = "arch", value_name = "ARCH")]
    pub arch: Option<String>,
    #[command(flatten)]
    pub keys: UserKeyArgs,
    #[command(flatten)]
    pub ec2: Ec2CertArgs,
    /// Kernel id (aki-...) for paravirtual AMIs
    #[arg(long, value_name = "ID")]
    pub kernel: Option<String>,
    /// Ramdisk id (ari-...) for paravirtual AMIs
    #[arg(long, value_name = "ID")]
    pub ramdisk: Option<String>,
    /// Block-device mapping, e.g. ami=sda1,root=/dev/sda1,ephemeral0=sdb (repeatable)
    #[arg(short = 'B', long = "block-device-mapping", value_name = "MAP")]
    pub block_device_mapping: Vec<String>,
    /// Product codes, comma-separated
    #[arg(long = "productcodes", value_name = "CODES", value_delimiter = ',')]
    pub product_codes: Vec<String>,
    /// gzip level, 1 (fastest) to 9 (smallest)
    #[arg(long, value_name = "LEVEL", default_value_t = crate::bundle::gzip::DEFAULT_LEVEL)]
    pub compression_level: u32,
    /// Compression threads (default: all cores)
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
    /// Replace an existing bundle of the same name in the destination
    #[arg(long)]
    pub overwrite: bool,
    /// Print the result as JSON on stdout
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub stream: StreamArgs,
}

/// This machine's architecture in the manifest's vocabulary.
pub fn host_arch() -> Option<&'static str> {
    match std::env::consts::ARCH {
        "x86_64" => Some("x86_64"),
        "x86" => Some("i386"),
        "aarch64" => Some("arm64"),
        _ => None,
    }
}

/// Worker threads for compression and copying: `--threads`, else every core.
pub fn threads(given: Option<usize>) -> usize {
    given.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    })
}

impl BundleArgs {
    /// `--arch`, else this machine's.
    pub fn arch(&self) -> anyhow::Result<String> {
        match &self.arch {
            Some(a) => Ok(a.clone()),
            None => Ok(host_arch()
                .context("cannot tell this machine's architecture: pass --arch")?
                .to_string()),
        }
    }

    /// The manifest fields given on the command line (`-B`, `--kernel`, `--ramdisk`,
    /// `--productcodes`), before any inheritance.
    pub fn given_fields(&self) -> anyhow::Result<InheritedFields> {
        let mut mappings: Vec<Mapping> = Vec::new();
        for spec in &self.block_device_mapping {
            mappings.extend(
                manifest::parse_block_device_mapping(spec)
                    .context("parsing --block-device-mapping")?,
            );
        }
        let mut seen = std::collections::HashSet::new();
        for m in &mappings {
            if !seen.insert(m.virtual_name.clone()) {
                bail!("--block-device-mapping names {} twice", m.virtual_name);
            }
        }
        Ok(InheritedFields {
            kernel_id: self.kernel.clone(),
            ramdisk_id: self.ramdisk.clone(),
            product_codes: self
                .product_codes
                .iter()
                .map(|c| c.trim().to_string())
                .filter(|c| !c.is_empty())
                .collect(),
            block_device_mapping: mappings,
            ancestry: Vec::new(),
        })
    }

    /// The bundle spec for `name` made for `account` with these manifest fields.
    pub fn spec(
        &self,
        name: &str,
        account: String,
        fields: InheritedFields,
        allow_oversize: bool,
    ) -> anyhow::Result<BundleSpec> {
        Ok(BundleSpec {
            name: name.to_string(),
            account,
            arch: self.arch()?,
            kernel_id: fields.kernel_id,
            ramdisk_id: fields.ramdisk_id,
            block_device_mapping: fields.block_device_mapping,
            product_codes: fields.product_codes,
            ancestry: fields.ancestry,
            level: self.compression_level,
            threads: threads(self.threads),
            bundler: Bundler::amibundle(),
            allow_oversize,
        })
    }

    /// The key and certificate files this run was given (never to be copied into an image).
    pub fn key_files(&self) -> Vec<PathBuf> {
        [&self.keys.private_key, &self.keys.cert, &self.ec2.ec2cert]
            .into_iter()
            .flatten()
            .filter_map(|p| std::fs::canonicalize(p).ok())
            .collect()
    }
}

pub use crate::image::save::Resume;

/// The steps of a bundling job for one progress display ([`Progress::plan`]): the snapshot
/// of a volume (`snapshot`), then the bundle (made locally, or streamed to S3), then the
/// registration if asked for. Step names are the ones the code passes to [`Progress::step`].
pub fn plan_steps(args: &BundleArgs, snapshot: bool) -> Vec<&'static str> {
    let mut steps = Vec::new();
    if snapshot {
        steps.push(steps::SNAPSHOT);
    }
    steps.push(if args.stream.enabled() {
        steps::BUNDLE_UPLOAD
    } else {
        steps::BUNDLE
    });
    if args.stream.register.is_some() {
        steps.push(steps::REGISTER);
    }
    steps
}

/// Bundles `input` into `destination` (or, with `--upload`/`--register`, straight into S3) and
/// prints the result. `label` names the input in messages; `command` goes into the JSON, with
/// `extra_json`'s fields (local or streamed). `resume` applies to streamed bundles only.
#[allow(clippy::too_many_arguments)]
pub fn bundle_and_report(
    args: &BundleArgs,
    spec: &BundleSpec,
    input: ImageInput,
    label: &str,
    destination: &Path,
    command: &'static str,
    resume: Option<Resume>,
    extra_json: Option<serde_json::Value>,
    progress: &dyn Progress,
) -> anyhow::Result<()> {
    let (user_key, user_cert, _) = keys::load_identity(&args.keys)?;
    if args.stream.enabled() {
        progress.step(steps::BUNDLE_UPLOAD);
        let overrides = Overrides {
            mtime: resume.as_ref().map(|r| r.mtime),
            ..Overrides::default()
        };
        let image = PreparedImage::open(input, spec, &overrides)
            .with_context(|| format!("bundling {label}"))?;
        let job = StreamJob {
            spec,
            user_key,
            user_cert,
            ec2: &args.ec2,
            overwrite: args.overwrite,
            json: args.json,
            command,
            resume: resume.map(|r| (r.key, r.iv)),
            extra_json,
        };
        return streaming::run(&args.stream, job, image, progress);
    }
    let ec2_cert = keys::load_ec2_cert(&args.ec2, &args.stream.local_region())?;
    progress.step(steps::BUNDLE);
    let identity = Identity {
        user_key,
        user_cert,
        ec2_cert,
    };
    let report = pipeline::bundle_to_dir(
        input,
        spec,
        &identity,
        destination,
        args.overwrite,
        Overrides::default(),
        progress,
    )
    .with_context(|| format!("bundling {label}"))
    .map_err(|e| crate::bundle::space::explain(e, destination, "the bundle", None))?;

    let secs = report.elapsed.as_secs_f64();
    if args.json {
        let parts: Vec<_> = report
            .manifest
            .image
            .parts
            .iter()
            .zip(&report.part_paths)
            .map(|(p, path)| json!({"index": p.index, "filename": p.filename, "path": path, "sha1": p.digest}))
            .collect();
        output::print_json(&output::with_fields(
            json!({
                "version": 1,
                "command": command,
                "manifest": report.manifest_path,
                "name": report.manifest.image.name,
                "image_size": report.image_size,
                "image_data_bytes": report.data_bytes,
                "sparse": report.sparse,
                "tar_bytes": report.tar_bytes,
                "tar_sha1": report.manifest.image.digest,
                "gzip_bytes": report.gzip_bytes,
                "bundled_size": report.bundled_bytes,
                "part_count": parts.len(),
                "parts": parts,
                "seconds": secs,
            }),
            extra_json,
        ))?;
    } else {
        if args.keys.private_key.is_none() {
            tracing::info!("bundle encrypted for amibundle's own key pair");
        }
        eprintln!(
            "bundled {} ({} bytes, {} of data) into {} part(s), {} bytes, in {:.1} s",
            report.manifest.image.name,
            report.image_size,
            crate::progress::human_bytes(report.data_bytes),
            report.part_paths.len(),
            report.bundled_bytes,
            secs
        );
        println!("{}", report.manifest_path.display());
    }
    Ok(())
}
