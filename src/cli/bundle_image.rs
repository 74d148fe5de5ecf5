//! `amibundle bundle-image`: an image file (or stdin) → parts + signed manifest.

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Args;
use serde_json::json;

use super::keys::{self, Ec2CertArgs, UserKeyArgs};
use super::output;
use super::streaming::{self, StreamArgs, StreamJob};
use crate::bundle::manifest::{self, Bundler};
use crate::bundle::pipeline::{self, BundleSpec, Identity, ImageInput, Overrides, PreparedImage};
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
    /// Bundle an image larger than EC2's 10 GiB instance-store limit
    #[arg(long)]
    pub allow_oversize: bool,
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
    let arch = match &args.arch {
        Some(a) => a.clone(),
        None => host_arch()
            .context("cannot tell this machine's architecture: pass --arch")?
            .to_string(),
    };
    let mut mappings = Vec::new();
    for spec in &args.block_device_mapping {
        mappings.extend(
            manifest::parse_block_device_mapping(spec).context("parsing --block-device-mapping")?,
        );
    }
    let mut seen = std::collections::HashSet::new();
    for m in &mappings {
        if !seen.insert(m.virtual_name.clone()) {
            bail!("--block-device-mapping names {} twice", m.virtual_name);
        }
    }
    let account = match &args.user {
        Some(user) => user.clone(),
        None => {
            let account = imds::read_account_id(&imds::ImdsOptions::from_env()).context(
                "no -u/--user given and no account id from instance metadata: pass -u/--user ACCOUNT",
            )?;
            tracing::info!("account {account} from instance metadata");
            account
        }
    };
    let spec = BundleSpec {
        name: name.clone(),
        account,
        arch,
        kernel_id: args.kernel.clone(),
        ramdisk_id: args.ramdisk.clone(),
        block_device_mapping: mappings,
        product_codes: args
            .product_codes
            .iter()
            .map(|c| c.trim().to_string())
            .filter(|c| !c.is_empty())
            .collect(),
        ancestry: Vec::new(),
        level: args.compression_level,
        threads: args.threads.unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        }),
        bundler: Bundler::amibundle(),
        allow_oversize: args.allow_oversize,
    };
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
    let (user_key, user_cert, _) = keys::load_identity(&args.keys)?;
    if args.stream.enabled() {
        if let Some(dir) = &args.destination {
            bail!(
                "-d/--destination {} has no use with --upload: a streamed bundle is not written locally",
                dir.display()
            );
        }
        let image = PreparedImage::open(input, &spec, &Overrides::default())
            .with_context(|| format!("bundling {}", args.image.display()))?;
        let job = StreamJob {
            spec: &spec,
            user_key,
            user_cert,
            ec2: &args.ec2,
            overwrite: args.overwrite,
            json: args.json,
            command: "bundle-image",
        };
        return streaming::run(&args.stream, job, image, progress);
    }
    let ec2_cert = keys::load_ec2_cert(&args.ec2, &args.stream.local_region())?;
    let identity = Identity {
        user_key,
        user_cert,
        ec2_cert,
    };
    let destination = args
        .destination
        .clone()
        .unwrap_or_else(|| PathBuf::from("."));

    let report = pipeline::bundle_to_dir(
        input,
        &spec,
        &identity,
        &destination,
        args.overwrite,
        Overrides::default(),
        progress,
    )
    .with_context(|| format!("bundling {}", args.image.display()))?;

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
        output::print_json(&json!({
            "version": 1,
            "command": "bundle-image",
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
        }))?;
    } else {
        if !args.keys_given() {
            tracing::info!("bundle encrypted for amibundle's own key pair");
        }
        eprintln!(
            "bundled {} ({} bytes, {} of data) into {} part(s), {} bytes, in {:.1} s",
            report.manifest.image.name,
            report.image_size,
            indicatif::HumanBytes(report.data_bytes),
            report.part_paths.len(),
            report.bundled_bytes,
            secs
        );
        println!("{}", report.manifest_path.display());
    }
    Ok(())
}

impl BundleImageArgs {
    fn keys_given(&self) -> bool {
        self.keys.private_key.is_some()
    }
}
