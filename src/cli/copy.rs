//! `amibundle copy --to-region R[,R...]`: clone an instance-store AMI (or a bundle in S3) into
//! other regions: per region, server-side part copies into our bucket there, the manifest
//! re-wrapped for the region's EC2 certificate, and a registration with the same attributes.
//! Regions run in parallel (bounded); every region's outcome is reported before any failure.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use futures::stream::{self, StreamExt};
use serde_json::json;

use super::cloud_args::{self, CloudArgs};
use super::keys::{self, UserKeyArgs};
use super::output;
use super::register::AmiArgs;
use crate::bundle::certs::{self, CertSearch};
use crate::bundle::crypto::{Certificate, UserKey};
use crate::bundle::manifest;
use crate::bundle::migrate::{Changes, IdChange};
use crate::cloud::config::CloudConfig;
use crate::cloud::copy::{self, CopySource, CopyTarget, RegionCopy};
use crate::cloud::ec2::{
    self, AmiOptions, RegisterRequest, RegisterTarget, Registered, SourceImage,
};
use crate::cloud::s3::{self, BucketPolicy, BundleLocation};

/// Regions worked on at once. Each runs its own part copies (`--concurrency`), so this bounds
/// the requests in flight to `MAX_PARALLEL_REGIONS × concurrency`; four is what Bottlerocket's
/// pubsys uses for its multi-region copies.
const MAX_PARALLEL_REGIONS: usize = 4;

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
    #[command(flatten)]
    pub ami_args: AmiArgs,
    #[command(flatten)]
    pub cloud: CloudArgs,
    /// Print the result as JSON on stdout
    #[arg(long)]
    pub json: bool,
}

/// One target region, resolved before any request.
struct Target {
    region: String,
    ec2_cert: Certificate,
    ec2_cert_sha256: String,
}

/// What was copied and registered in one region.
struct Done {
    copy: RegionCopy,
    registered: Registered,
}

/// Where the source is and, for `--ami`, what it looks like.
struct Source {
    copy: CopySource,
    /// `bucket/prefix/name.manifest.xml`.
    image_location: String,
    ami: Option<SourceImage>,
    region: Option<String>,
}

/// The target regions: deduplicated, in the order given, each shaped like a region name.
fn target_regions(args: &CopyArgs) -> anyhow::Result<Vec<String>> {
    let mut seen = HashSet::new();
    let mut regions = Vec::new();
    for r in &args.to_region {
        let r = r.trim();
        let shaped = !r.is_empty()
            && r.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !shaped {
            bail!("--to-region {r:?} is not a region name (for example eu-west-1)");
        }
        if seen.insert(r.to_string()) {
            regions.push(r.to_string());
        }
    }
    if regions.is_empty() {
        bail!("--to-region names no region");
    }
    Ok(regions)
}

/// Resolves each region's EC2 certificate (docs/format.md §11) before anything is sent.
fn resolve_targets(args: &CopyArgs, regions: &[String]) -> anyhow::Result<Vec<Target>> {
    let mut explicit = BTreeMap::new();
    for spec in &args.ec2cert {
        let Some((region, path)) = spec
            .split_once('=')
            .filter(|(r, p)| !r.is_empty() && !p.is_empty())
        else {
            bail!("--ec2cert {spec:?} is not REGION=PATH");
        };
        if !regions.iter().any(|r| r == region) {
            bail!("--ec2cert {spec:?} names region {region}, which is not in --to-region");
        }
        if explicit
            .insert(region.to_string(), PathBuf::from(path))
            .is_some()
        {
            bail!("--ec2cert gives region {region} more than once");
        }
    }
    regions
        .iter()
        .map(|region| {
            let search = CertSearch::from_env(explicit.get(region).cloned(), args.unpinned_ec2cert);
            let found = certs::resolve_for_region(&search, region)
                .with_context(|| format!("copying to {region}"))?;
            tracing::info!("{region}: EC2 certificate {}", found.path.display());
            Ok(Target {
                region: region.clone(),
                ec2_cert: Certificate::from_der(&found.x509.to_der()?)?,
                ec2_cert_sha256: found.fingerprints.sha256_hex(),
            })
        })
        .collect()
}

/// Splits `BUCKET/[PREFIX/]NAME.manifest.xml` (an `s3://` scheme is tolerated).
fn split_image_location(text: &str) -> anyhow::Result<(BundleLocation, String)> {
    let text = text.strip_prefix("s3://").unwrap_or(text);
    let (dir, file) = text
        .rsplit_once('/')
        .filter(|(_, f)| f.ends_with(".manifest.xml"))
        .with_context(|| {
            format!("image location {text:?} is not BUCKET/[PREFIX/]NAME.manifest.xml")
        })?;
    let location =
        BundleLocation::parse(dir).with_context(|| format!("checking image location {text:?}"))?;
    Ok((location, file.to_string()))
}

/// Finds, fetches and checks the source bundle.
async fn load_source(
    args: &CopyArgs,
    cloud: &CloudConfig,
    user_cert: &Certificate,
) -> anyhow::Result<Source> {
    let (text, ami, region) = match (&args.image_location, &args.ami) {
        (Some(location), _) => (location.clone(), None, None),
        (None, Some(ami_id)) => {
            let region = cloud
                .require_region()
                .context("--ami is looked up in --region")?
                .to_string();
            let image = ec2::describe_image(&cloud.ec2_client(&region), &region, ami_id).await?;
            (image.image_location.clone(), Some(image), Some(region))
        }
        (None, None) => bail!("pass --image-location or --ami"),
    };
    let (location, manifest_name) = split_image_location(&text)?;
    let client = args
        .cloud
        .client_for_bucket(cloud, &location.bucket)
        .await?;
    let (manifest, raw) = s3::fetch_manifest(&client, &location, &manifest_name)
        .await
        .with_context(|| {
            format!(
                "reading the source manifest {}",
                location.image_location(&manifest_name)
            )
        })?;
    manifest::verify_signature(&raw, &manifest, user_cert).with_context(|| {
        format!(
            "checking the source manifest {} with the user certificate (--cert): copies are re-signed with the user key, so it must be the bundle's own",
            location.image_location(&manifest_name)
        )
    })?;
    let objects = s3::list_objects(&client, &location.bucket, &location.prefix).await?;
    let copy = CopySource {
        location,
        manifest_name,
        manifest,
        objects,
    };
    copy.check_complete()?;
    Ok(Source {
        image_location: copy.location.image_location(&copy.manifest_name),
        copy,
        ami,
        region,
    })
}

/// The destination in `region`: the template expanded, or our default bucket with the source's
/// prefix.
fn destination(
    template: Option<&str>,
    account: &str,
    region: &str,
    source: &BundleLocation,
) -> anyhow::Result<BundleLocation> {
    let text = match template {
        Some(t) => t.replace("{region}", region).replace("{account}", account),
        None => format!(
            "{}/{}",
            s3::default_bucket_name(account, region),
            source.prefix
        ),
    };
    BundleLocation::parse(&text)
        .with_context(|| format!("checking the destination {text:?} (--bucket-template)"))
}

/// The kernel or ramdisk change for the manifest: the override, else removal of the source's id
/// (ids differ per region and are never mapped automatically).
fn id_change(what: &str, source: Option<&String>, wanted: &Option<String>, flag: &str) -> IdChange {
    match (wanted, source) {
        (Some(id), _) => IdChange::Set(id.clone()),
        (None, Some(old)) => {
            tracing::warn!(
                "the source names {what} {old}, which does not exist under that id in other regions; the copies' manifests leave it out (pass {flag} to set one)"
            );
            IdChange::Remove
        }
        (None, None) => IdChange::Keep,
    }
}

/// Runs `copy`.
pub fn run(args: CopyArgs) -> anyhow::Result<()> {
    let ami_options = args.ami_args.options()?;
    if let Some(name) = &args.name {
        ec2::validate_ami_name(name)?;
    }
    let regions = target_regions(&args)?;
    let targets = resolve_targets(&args, &regions)?;
    let (user_key, user_cert, _) = keys::load_identity(&args.keys)?;
    let runtime = cloud_args::runtime()?;
    runtime.block_on(async {
        let cloud = args.cloud.load().await?;
        let source = load_source(&args, &cloud, &user_cert).await?;
        let manifest = &source.copy.manifest;
        let account = manifest::normalize_account(&manifest.image.user)
            .context("reading the source manifest's account (image/user)")?;
        let machine = manifest.machine.as_ref();
        if let Some(ami) = &source.ami {
            if ami.virtualization_type.as_deref() == Some("paravirtual")
                && ami.kernel_id.is_some()
                && args.kernel_id.is_none()
            {
                bail!(
                    "source AMI {} is paravirtual and boots kernel {}, whose id differs in other regions: pass --kernel-id (and --ramdisk-id) with the ids in the target region",
                    ami.image_id,
                    ami.kernel_id.as_deref().unwrap_or_default()
                );
            }
            for device in &ami.other_mappings {
                tracing::warn!(
                    "source AMI {} maps {device} to something other than an instance-store volume; the copies register instance-store mappings only",
                    ami.image_id
                );
            }
        }
        // Refused before anything is copied, not after (register_image refuses it too).
        let virtualization = source
            .ami
            .as_ref()
            .and_then(|a| a.virtualization_type.clone())
            .unwrap_or_else(|| args.ami_args.virtualization_type.clone());
        if virtualization == "hvm" && (args.kernel_id.is_some() || args.ramdisk_id.is_some()) {
            bail!(
                "--kernel-id/--ramdisk-id are for paravirtual AMIs, and the copies would be HVM (which boot their own kernel){}",
                if source.ami.is_some() {
                    ""
                } else {
                    ": add --virtualization-type paravirtual"
                }
            );
        }
        let changes = Changes {
            kernel: id_change(
                "kernel",
                machine.and_then(|m| m.kernel_id.as_ref()),
                &args.kernel_id,
                "--kernel-id",
            ),
            ramdisk: id_change(
                "ramdisk",
                machine.and_then(|m| m.ramdisk_id.as_ref()),
                &args.ramdisk_id,
                "--ramdisk-id",
            ),
        };
        let policy = BucketPolicy {
            create: true,
            fix_ownership: args.fix_ownership,
        };

        let ctx = RegionContext {
            args: &args,
            cloud: &cloud,
            source: &source,
            account: &account,
            user_key: &user_key,
            user_cert: &user_cert,
            ami: &ami_options,
            changes: &changes,
            policy,
        };
        let results: Vec<(String, anyhow::Result<Done>)> = stream::iter(targets.iter())
            .map(|target| copy_region(&ctx, target))
            .buffer_unordered(MAX_PARALLEL_REGIONS)
            .collect()
            .await;
        let mut by_region: BTreeMap<String, anyhow::Result<Done>> = results.into_iter().collect();
        report(&args, &source, &regions, &mut by_region)
    })
}

/// What every region's copy shares.
struct RegionContext<'a> {
    args: &'a CopyArgs,
    cloud: &'a CloudConfig,
    source: &'a Source,
    account: &'a str,
    user_key: &'a UserKey,
    user_cert: &'a Certificate,
    ami: &'a AmiOptions,
    changes: &'a Changes,
    policy: BucketPolicy,
}

/// Copies the bundle into one region and registers it there; errors name the region.
async fn copy_region(ctx: &RegionContext<'_>, target: &Target) -> (String, anyhow::Result<Done>) {
    let region = target.region.clone();
    let result = async {
        let location = destination(
            ctx.args.bucket_template.as_deref(),
            ctx.account,
            &region,
            &ctx.source.copy.location,
        )?;
        let copy_target = CopyTarget {
            region: region.clone(),
            client: ctx.cloud.s3_client(&region),
            location,
            account: ctx.account.to_string(),
            bucket_policy: ctx.policy,
            acl: s3::DEFAULT_ACL.to_string(),
            concurrency: ctx.args.concurrency,
            user_key: ctx.user_key,
            user_cert: ctx.user_cert,
            ec2_cert: &target.ec2_cert,
            ec2_cert_sha256: target.ec2_cert_sha256.clone(),
            changes: ctx.changes.clone(),
        };
        let copy = copy::copy_bundle(&ctx.source.copy, &copy_target).await?;
        tracing::info!(
            "{region}: {} part(s) copied, {} already there; manifest {}",
            copy.copied.len(),
            copy.skipped.len(),
            if copy.manifest_uploaded {
                "uploaded"
            } else {
                "already there"
            }
        );
        crate::interrupt::check()?;
        let registered = register(ctx.args, ctx.cloud, &region, ctx.source, &copy, ctx.ami)
            .await
            .with_context(|| format!("registering {}", copy.image_location))?;
        Ok::<_, anyhow::Error>(Done { copy, registered })
    }
    .await
    .with_context(|| format!("copying {} to {region}", ctx.source.image_location));
    (region, result)
}

/// Registers the copy in `region`: like the source AMI (`--ami`), else from the manifest and the
/// AMI flags. Idempotent: an AMI of the same name from the same location is reused.
async fn register(
    args: &CopyArgs,
    cloud: &CloudConfig,
    region: &str,
    source: &Source,
    copy: &RegionCopy,
    ami_options: &AmiOptions,
) -> anyhow::Result<Registered> {
    let client = cloud.ec2_client(region);
    let machine = copy.manifest.machine.as_ref();
    let architecture = machine
        .map(|m| m.architecture.clone())
        .unwrap_or_else(|| "i386".into());
    let Some(ami) = &source.ami else {
        let target = RegisterTarget {
            image_location: copy.image_location.clone(),
            name: args
                .name
                .clone()
                .unwrap_or_else(|| copy.manifest.image.name.clone()),
            architecture,
            kernel_id: args.kernel_id.clone(),
            ramdisk_id: args.ramdisk_id.clone(),
        };
        let (_, registered) = ec2::register_and_wait(&client, region, target, ami_options).await?;
        return Ok(registered);
    };
    let req = RegisterRequest {
        image_location: copy.image_location.clone(),
        name: args.name.clone().unwrap_or_else(|| ami.name.clone()),
        description: ami.description.clone(),
        // EC2 always describes both; where a source does not (emulators), the manifest's
        // architecture and amibundle's default virtualization type stand in.
        architecture: ami.architecture.clone().unwrap_or(architecture),
        virtualization_type: ami
            .virtualization_type
            .clone()
            .unwrap_or_else(|| ami_options.virtualization_type.clone()),
        root_device_name: ami
            .root_device_name
            .clone()
            .unwrap_or_else(|| ec2::DEFAULT_ROOT_DEVICE.to_string()),
        ephemeral_mappings: ami.ephemeral_mappings.clone(),
        ena_support: ami.ena_support,
        sriov_net_support: ami.sriov_net_support,
        kernel_id: args.kernel_id.clone(),
        ramdisk_id: args.ramdisk_id.clone(),
        tags: ami_options.tags.clone(),
        force: ami_options.force,
    };
    let registered = ec2::register_image(&client, region, &req).await?;
    if ami_options.wait {
        ec2::wait_available(
            &client,
            region,
            &registered.image_id,
            Duration::from_secs(ec2::WAIT_TIMEOUT_SECS),
        )
        .await?;
    }
    Ok(registered)
}

/// Prints every region's outcome (successes on stdout, failures logged), then fails if any
/// region failed: with that region's error when it is the only one, so its exit code holds.
fn report(
    args: &CopyArgs,
    source: &Source,
    regions: &[String],
    results: &mut BTreeMap<String, anyhow::Result<Done>>,
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
                            "ami_id": d.registered.image_id,
                            "ami_created": d.registered.created,
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
                println!("{region}\t{}", d.registered.image_id);
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
