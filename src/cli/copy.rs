//! `amibundle copy --to-region R[,R...]`: clone an instance-store AMI (or a bundle in S3) into
//! other regions: per region, server-side part copies into our bucket there, the manifest
//! re-wrapped for the region's EC2 certificate, and a registration with the same attributes.
//! Regions run in parallel (bounded); every region's outcome is reported before any failure.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Args;
use serde_json::json;

use super::cloud_args::{self, CloudArgs};
use super::keys::{self, UserKeyArgs};
use super::output;
use super::register::AmiArgs;
use crate::bundle::manifest;
use crate::cloud::copy::{self, CopyRegistration, FanOut, RegionDone, Source, SourceRef};
use crate::cloud::ec2;
use crate::cloud::s3::{self, BucketPolicy};

/// The AMI attributes `--ami` takes from the source AMI, which therefore cannot be given too.
const ATTRIBUTES_FROM_SOURCE_AMI: [&str; 5] = [
    "description",
    "virtualization_type",
    "root_device_name",
    "ena_support",
    "sriov_net_support",
];

/// Arguments of `copy`.
#[derive(Debug, Args)]
pub struct CopyArgs {
    /// The bundle to copy, BUCKET/[PREFIX/]NAME.manifest.xml (registered with the AMI flags)
    #[arg(
        long,
        value_name = "LOCATION",
        required_unless_present = "ami",
        conflicts_with = "ami"
    )]
    pub image_location: Option<String>,
    /// The AMI to copy, in --region: its bundle, registered alike in each target region
    #[arg(long, value_name = "AMI_ID", conflicts_with_all = ATTRIBUTES_FROM_SOURCE_AMI)]
    pub ami: Option<String>,
    /// Regions to copy to, comma-separated
    #[arg(long, value_name = "REGIONS", value_delimiter = ',', required = true)]
    pub to_region: Vec<String>,
    #[command(flatten)]
    pub keys: UserKeyArgs,
    /// EC2 certificate for one target region, REGION=PATH (repeatable; default: the pinned
    /// certificate of each region)
    #[arg(long = "ec2cert", value_name = "REGION=PATH")]
    pub ec2cert: Vec<String>,
    /// Accept --ec2cert files that match no known EC2 certificate (test setups only: EC2
    /// itself will not be able to decrypt those copies)
    #[arg(long)]
    pub unpinned_ec2cert: bool,
    /// Destination BUCKET[/PREFIX] in each region, with {region} and {account} placeholders
    /// (default: amibundle-{account}-{region}, with the source's prefix)
    #[arg(long, value_name = "TEMPLATE")]
    pub bucket_template: Option<String>,
    /// Parts copied at once in each region
    #[arg(long, value_name = "N", default_value_t = s3::DEFAULT_CONCURRENCY)]
    pub concurrency: usize,
    /// AMI name in the target regions (default: the source AMI's name, or the bundle name)
    #[arg(short = 'n', long, value_name = "NAME")]
    pub name: Option<String>,
    /// Kernel id for the copies (paravirtual only; kernel ids differ per region)
    #[arg(long, value_name = "AKI")]
    pub kernel_id: Option<String>,
    /// Ramdisk id for the copies (paravirtual only; ramdisk ids differ per region)
    #[arg(long, value_name = "ARI")]
    pub ramdisk_id: Option<String>,
    /// If a destination bucket has ACLs disabled, enable them (BucketOwnerPreferred)
    #[arg(long)]
    pub fix_ownership: bool,
    /// Canned ACL of the copied objects (EC2 needs aws-exec-read)
    #[arg(long, value_name = "ACL", default_value = s3::DEFAULT_ACL, value_parser = s3::ACLS)]
    pub acl: String,
    /// Copy the bundles only; print each copy's image location instead of registering it
    #[arg(long)]
    pub no_register: bool,
    #[command(flatten)]
    pub ami_args: AmiArgs,
    #[command(flatten)]
    pub cloud: CloudArgs,
    /// Print the result as JSON on stdout
    #[arg(long)]
    pub json: bool,
}

/// `--ec2cert REGION=PATH` values by region.
fn explicit_certs(specs: &[String]) -> anyhow::Result<BTreeMap<String, PathBuf>> {
    let mut explicit = BTreeMap::new();
    for spec in specs {
        let Some((region, path)) = spec
            .split_once('=')
            .filter(|(r, p)| !r.is_empty() && !p.is_empty())
        else {
            bail!("--ec2cert {spec:?} is not REGION=PATH");
        };
        if explicit
            .insert(region.to_string(), PathBuf::from(path))
            .is_some()
        {
            bail!("--ec2cert gives region {region} more than once");
        }
    }
    Ok(explicit)
}

/// Runs `copy`.
pub fn run(args: CopyArgs) -> anyhow::Result<()> {
    let ami = args.ami_args.options()?;
    if let Some(name) = &args.name {
        ec2::validate_ami_name(name)?;
    }
    let targets = copy::resolve_targets(
        &args.to_region,
        &explicit_certs(&args.ec2cert)?,
        args.unpinned_ec2cert,
    )?;
    let what = match (&args.image_location, &args.ami) {
        (Some(location), _) => SourceRef::ImageLocation(location.clone()),
        (None, Some(ami_id)) => SourceRef::Ami(ami_id.clone()),
        (None, None) => bail!("pass --image-location or --ami"),
    };
    let (user_key, user_cert, _) = keys::load_identity(&args.keys)?;
    let runtime = cloud_args::runtime()?;
    runtime.block_on(async {
        let cloud = args.cloud.load().await?;
        let source = Source::find(&cloud, &what, &user_cert).await?;
        let account = manifest::normalize_account(&source.copy.manifest.image.user)
            .context("reading the source manifest's account (image/user)")?;
        let registration = CopyRegistration {
            name: args.name.clone(),
            kernel_id: args.kernel_id.clone(),
            ramdisk_id: args.ramdisk_id.clone(),
            ami,
        };
        let job = FanOut {
            source: &source,
            account,
            user_key: &user_key,
            user_cert: &user_cert,
            changes: copy::plan(&source, &registration)?,
            policy: BucketPolicy {
                create: true,
                fix_ownership: args.fix_ownership,
            },
            concurrency: args.concurrency,
            acl: args.acl.clone(),
            register: !args.no_register,
            bucket_template: args.bucket_template.clone(),
            registration,
        };
        let results = copy::copy_to_regions(&cloud, &job, &targets).await;
        let regions: Vec<String> = targets.iter().map(|t| t.region.clone()).collect();
        let mut by_region: BTreeMap<String, anyhow::Result<RegionDone>> = results
            .into_iter()
            .map(|(region, r)| (region, r.map_err(anyhow::Error::from)))
            .collect();
        report(&args, &source, &regions, &mut by_region)
    })
}

/// Prints every region's outcome (successes on stdout, failures logged), then fails if any
/// region failed: with that region's error when it is the only one, so its exit code holds.
fn report(
    args: &CopyArgs,
    source: &Source,
    regions: &[String],
    results: &mut BTreeMap<String, anyhow::Result<RegionDone>>,
) -> anyhow::Result<()> {
    let failed: Vec<String> = regions
        .iter()
        .filter(|r| results.get(*r).is_some_and(|res| res.is_err()))
        .cloned()
        .collect();
    if args.json {
        let mut done = serde_json::Map::new();
        let mut errors = serde_json::Map::new();
        for region in regions {
            match results.get(region) {
                Some(Ok(d)) => {
                    let c = &d.copy;
                    done.insert(
                        region.clone(),
                        json!({
                            "ami_id": d.registered.as_ref().map(|r| r.image_id.clone()),
                            "ami_created": d.registered.as_ref().map(|r| r.created),
                            "image_location": c.image_location,
                            "bucket": c.location.bucket,
                            "prefix": c.location.prefix,
                            "bucket_created": c.bucket_created,
                            "parts_copied": c.copied,
                            "parts_skipped": c.skipped,
                            "bytes_copied": c.bytes_copied,
                            "manifest_uploaded": c.manifest_uploaded,
                        }),
                    );
                }
                Some(Err(e)) => {
                    errors.insert(region.clone(), json!(format!("{e:#}")));
                }
                None => {}
            }
        }
        output::print_json(&json!({
            "version": 1,
            "command": "copy",
            "source": {
                "image_location": source.image_location,
                "ami_id": source.ami.as_ref().map(|a| a.image_id.clone()),
                "region": source.region,
            },
            "regions": done,
            "failed": errors,
        }))?;
    } else {
        for region in regions {
            if let Some(Ok(d)) = results.get(region) {
                match &d.registered {
                    Some(r) => println!("{region}\t{}", r.image_id),
                    None => println!("{region}\t{}", d.copy.image_location),
                }
            }
        }
    }
    match failed.as_slice() {
        [] => Ok(()),
        [only] => match results.remove(only) {
            Some(Err(e)) => Err(e),
            _ => bail!("copying to {only} failed"),
        },
        many => {
            for region in &many[1..] {
                if let Some(Err(e)) = results.get(region) {
                    tracing::error!("{e:#}");
                }
            }
            // The first failure is returned itself, so its exit code (3 for bucket access)
            // holds; the others are logged above.
            match results.remove(&many[0]) {
                Some(Err(e)) => Err(e.context(format!(
                    "{} of {} regions failed ({})",
                    many.len(),
                    regions.len(),
                    many.join(", ")
                ))),
                _ => bail!("copying to {} failed", many.join(", ")),
            }
        }
    }
}
