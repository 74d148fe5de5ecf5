//! `copy`'s fan-out: one bundle (or the bundle of an instance-store AMI) copied into several
//! regions at once, each copy registered like its source. Per region: the destination bucket,
//! the server-side copy of [`super::copy_bundle`], then the registration; the regions run in
//! parallel ([`MAX_PARALLEL_REGIONS`]) and every region's outcome is returned, so one failed
//! region never hides the others.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::time::Duration;

use aws_sdk_s3::Client;
use futures::stream::{self, StreamExt};

use super::{CopyError, CopySource, CopyTarget, RegionCopy};
use crate::bundle::certs::{self, CertSearch};
use crate::bundle::crypto::{Certificate, UserKey};
use crate::bundle::manifest;
use crate::bundle::migrate::{Changes, IdChange};
use crate::cloud::config::CloudConfig;
use crate::cloud::ec2::{
    self, AmiOptions, RegisterRequest, RegisterTarget, Registered, SourceImage,
};
use crate::cloud::s3::{self, BucketPolicy, BundleLocation};

/// Regions worked on at once. Each runs its own part copies (`concurrency`), so this bounds the
/// requests in flight to `MAX_PARALLEL_REGIONS × concurrency`; four is what Bottlerocket's
/// pubsys uses for its multi-region copies.
pub const MAX_PARALLEL_REGIONS: usize = 4;

/// One target region with its EC2 certificate, resolved before any request.
#[derive(Debug)]
pub struct RegionTarget {
    /// The region.
    pub region: String,
    /// Its EC2 certificate (docs/format.md §11).
    pub ec2_cert: Certificate,
    /// The certificate's SHA-256 fingerprint.
    pub ec2_cert_sha256: String,
}

impl RegionTarget {
    /// The pinned EC2 certificate of `region`, or `explicit` (which must match a pin unless
    /// `unpinned`).
    pub fn resolve(
        region: &str,
        explicit: Option<PathBuf>,
        unpinned: bool,
    ) -> Result<Self, CopyError> {
        let cert_err = |source| CopyError::Ec2Cert {
            region: region.to_string(),
            source,
        };
        let search = CertSearch::from_env(explicit, unpinned);
        let found = certs::resolve_for_region(&search, region).map_err(cert_err)?;
        tracing::info!("{region}: EC2 certificate {}", found.path.display());
        let unusable =
            |source: Box<dyn std::error::Error + Send + Sync>| CopyError::Ec2CertUnusable {
                region: region.to_string(),
                path: found.path.clone(),
                source,
            };
        let der = found.x509.to_der().map_err(|e| unusable(Box::new(e)))?;
        let ec2_cert = Certificate::from_der(&der).map_err(|e| unusable(Box::new(e)))?;
        Ok(RegionTarget {
            region: region.to_string(),
            ec2_cert,
            ec2_cert_sha256: found.fingerprints.sha256_hex(),
        })
    }
}

/// The target regions with their EC2 certificates, resolved before anything is sent: each
/// region shaped like a region name, duplicates dropped (first one kept), `explicit`
/// certificates (by region) only for regions in the list; the others use their pinned
/// certificate (see [`RegionTarget::resolve`]).
pub fn resolve_targets(
    regions: &[String],
    explicit: &BTreeMap<String, PathBuf>,
    unpinned: bool,
) -> Result<Vec<RegionTarget>, CopyError> {
    let mut seen = HashSet::new();
    let mut names = Vec::new();
    for r in regions {
        let r = r.trim();
        let shaped = !r.is_empty()
            && r.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !shaped {
            return Err(CopyError::BadRegion(r.to_string()));
        }
        if seen.insert(r) {
            names.push(r);
        }
    }
    if names.is_empty() {
        return Err(CopyError::NoRegions);
    }
    if let Some(other) = explicit.keys().find(|r| !seen.contains(r.as_str())) {
        return Err(CopyError::CertForOtherRegion(other.clone()));
    }
    names
        .into_iter()
        .map(|region| RegionTarget::resolve(region, explicit.get(region).cloned(), unpinned))
        .collect()
}

/// What `copy` copies.
#[derive(Debug, Clone)]
pub enum SourceRef {
    /// A bundle in S3, `[s3://]BUCKET/[PREFIX/]NAME.manifest.xml`.
    ImageLocation(String),
    /// An instance-store AMI in the configured region: its bundle.
    Ami(String),
}

/// The bundle being copied and, when it was named by AMI id, that AMI.
#[derive(Debug)]
pub struct Source {
    /// The bundle, its manifest and what its bucket holds.
    pub copy: CopySource,
    /// `bucket/prefix/name.manifest.xml`.
    pub image_location: String,
    /// The source AMI (`--ami`): its attributes are the copies'.
    pub ami: Option<SourceImage>,
    /// The source AMI's region.
    pub region: Option<String>,
}

impl Source {
    /// Finds the source (an AMI is described in the configured region), then [`Self::load`]s
    /// it with a client in its bucket's region.
    pub async fn find(
        cloud: &CloudConfig,
        what: &SourceRef,
        user_cert: &Certificate,
    ) -> Result<Self, CopyError> {
        let (text, ami) = match what {
            SourceRef::ImageLocation(text) => (text.clone(), None),
            SourceRef::Ami(ami_id) => {
                let region = cloud
                    .require_region()
                    .map_err(CopyError::NoSourceRegion)?
                    .to_string();
                let image =
                    ec2::describe_image(&cloud.ec2_client(&region), &region, ami_id).await?;
                (image.image_location.clone(), Some((image, region)))
            }
        };
        let (location, manifest_name) = BundleLocation::parse_manifest_url(&text)?;
        let what = location.image_location(&manifest_name);
        let in_context = |source| CopyError::Source {
            location: what.clone(),
            source: Box::new(source),
        };
        let client = s3::client_for_bucket(cloud, &location.bucket)
            .await
            .map_err(|e| in_context(e.into()))?;
        Self::load(&client, location, manifest_name, ami, user_cert)
            .await
            .map_err(in_context)
    }

    /// Fetches the manifest `manifest_name` at `location` with `client` (a client for that
    /// bucket's region), checks its signature with the user's certificate (the copies are
    /// re-signed with the user's key, so the source must be the user's own bundle), and lists
    /// the bucket to check that every part is there.
    pub async fn load(
        client: &Client,
        location: BundleLocation,
        manifest_name: String,
        ami: Option<(SourceImage, String)>,
        user_cert: &Certificate,
    ) -> Result<Self, CopyError> {
        let image_location = location.image_location(&manifest_name);
        let (manifest, raw) = s3::fetch_manifest(client, &location, &manifest_name).await?;
        manifest::verify_signature(&raw, &manifest, user_cert).map_err(|source| {
            CopyError::SourceSignature {
                location: image_location.clone(),
                source,
            }
        })?;
        let objects = s3::list_objects(client, &location.bucket, &location.prefix).await?;
        let copy = CopySource {
            location,
            manifest_name,
            manifest,
            objects,
        };
        copy.check_complete()?;
        let (ami, region) = match ami {
            Some((ami, region)) => (Some(ami), Some(region)),
            None => (None, None),
        };
        Ok(Source {
            copy,
            image_location,
            ami,
            region,
        })
    }
}

/// How the copies are registered.
#[derive(Debug, Clone)]
pub struct CopyRegistration {
    /// AMI name (default: the source AMI's name, or the bundle name).
    pub name: Option<String>,
    /// Kernel id in the target regions (paravirtual only).
    pub kernel_id: Option<String>,
    /// Ramdisk id in the target regions (paravirtual only).
    pub ramdisk_id: Option<String>,
    /// The AMI options; for an AMI source its own attributes are used instead (but its tags,
    /// `force` and `wait` come from here).
    pub ami: AmiOptions,
}

/// A copy into several regions.
#[derive(Debug)]
pub struct FanOut<'a> {
    /// What is copied.
    pub source: &'a Source,
    /// The account owning the bundle (and the destination buckets).
    pub account: String,
    /// The user's key (unwraps, re-signs) and certificate.
    pub user_key: &'a UserKey,
    /// The user's certificate.
    pub user_cert: &'a Certificate,
    /// Kernel and ramdisk changes for the manifests (`FanOut::plan`).
    pub changes: Changes,
    /// Create the destination buckets, fix their ownership controls.
    pub policy: BucketPolicy,
    /// Parts copied at once in each region.
    pub concurrency: usize,
    /// Canned ACL of the copied objects (EC2 reads them through `aws-exec-read`).
    pub acl: String,
    /// Register each copy (else stop once the bundle is in the region).
    pub register: bool,
    /// Destination `BUCKET[/PREFIX]` with `{region}` and `{account}` placeholders (default:
    /// `amibundle-{account}-{region}` with the source's prefix).
    pub bucket_template: Option<String>,
    /// How the copies are registered.
    pub registration: CopyRegistration,
}

/// What was copied and registered in one region.
#[derive(Debug)]
pub struct RegionDone {
    /// The copy.
    pub copy: RegionCopy,
    /// The AMI; `None` when [`FanOut::register`] is off.
    pub registered: Option<Registered>,
}

/// The checks made before anything is copied, and the kernel and ramdisk changes for the
/// copies' manifests: a paravirtual source AMI needs the kernel id of each target region; kernel
/// and ramdisk ids are for paravirtual AMIs only; a source's own ids are never carried over
/// (ids differ per region), with a warning.
pub fn plan(source: &Source, registration: &CopyRegistration) -> Result<Changes, CopyError> {
    if let Some(ami) = &source.ami {
        if ami.virtualization_type.as_deref() == Some("paravirtual")
            && ami.kernel_id.is_some()
            && registration.kernel_id.is_none()
        {
            return Err(CopyError::PvKernel {
                ami: ami.image_id.clone(),
                kernel: ami.kernel_id.clone().unwrap_or_default(),
            });
        }
        for device in &ami.other_mappings {
            tracing::warn!(
                "source AMI {} maps {device} to something other than an instance-store volume; the copies register instance-store mappings only",
                ami.image_id
            );
        }
    }
    let virtualization = source
        .ami
        .as_ref()
        .and_then(|a| a.virtualization_type.clone())
        .unwrap_or_else(|| registration.ami.virtualization_type.clone());
    if virtualization == "hvm"
        && (registration.kernel_id.is_some() || registration.ramdisk_id.is_some())
    {
        return Err(CopyError::KernelForHvm {
            hint: if source.ami.is_some() {
                ""
            } else {
                ": add --virtualization-type paravirtual"
            },
        });
    }
    let machine = source.copy.manifest.machine.as_ref();
    Ok(Changes {
        kernel: id_change(
            "kernel",
            machine.and_then(|m| m.kernel_id.as_ref()),
            &registration.kernel_id,
            "--kernel-id",
        ),
        ramdisk: id_change(
            "ramdisk",
            machine.and_then(|m| m.ramdisk_id.as_ref()),
            &registration.ramdisk_id,
            "--ramdisk-id",
        ),
    })
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

/// The destination in `region`: the template expanded, or our default bucket with the source's
/// prefix.
pub fn destination(
    template: Option<&str>,
    account: &str,
    region: &str,
    source: &BundleLocation,
) -> Result<BundleLocation, CopyError> {
    let text = match template {
        Some(t) => t.replace("{region}", region).replace("{account}", account),
        None => format!(
            "{}/{}",
            s3::default_bucket_name(account, region),
            source.prefix
        ),
    };
    BundleLocation::parse(&text).map_err(|source| CopyError::Destination { text, source })
}

/// Copies into every target region, [`MAX_PARALLEL_REGIONS`] at a time, and registers each copy
/// (unless [`FanOut::register`] is off).
/// Returns each region's outcome (a failure is [`CopyError::InRegion`]), in no particular order.
pub async fn copy_to_regions(
    cloud: &CloudConfig,
    job: &FanOut<'_>,
    targets: &[RegionTarget],
) -> Vec<(String, Result<RegionDone, CopyError>)> {
    stream::iter(targets.iter())
        .map(|target| async move {
            let result =
                copy_region(cloud, job, target)
                    .await
                    .map_err(|source| CopyError::InRegion {
                        region: target.region.clone(),
                        image_location: job.source.image_location.clone(),
                        source: Box::new(source),
                    });
            (target.region.clone(), result)
        })
        .buffer_unordered(MAX_PARALLEL_REGIONS)
        .collect()
        .await
}

/// Copies the bundle into one region and registers it there.
async fn copy_region(
    cloud: &CloudConfig,
    job: &FanOut<'_>,
    target: &RegionTarget,
) -> Result<RegionDone, CopyError> {
    let region = &target.region;
    let location = destination(
        job.bucket_template.as_deref(),
        &job.account,
        region,
        &job.source.copy.location,
    )?;
    let copy_target = CopyTarget {
        region: region.clone(),
        client: cloud.s3_client(region),
        location,
        account: job.account.clone(),
        bucket_policy: job.policy,
        acl: job.acl.clone(),
        concurrency: job.concurrency,
        user_key: job.user_key,
        user_cert: job.user_cert,
        ec2_cert: &target.ec2_cert,
        ec2_cert_sha256: target.ec2_cert_sha256.clone(),
        changes: job.changes.clone(),
    };
    let copy = super::copy_bundle(&job.source.copy, &copy_target).await?;
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
    crate::interrupt::check().map_err(CopyError::Interrupted)?;
    if !job.register {
        return Ok(RegionDone {
            copy,
            registered: None,
        });
    }
    let registered = register(cloud, region, job, &copy)
        .await
        .map_err(|source| CopyError::Register {
            image_location: copy.image_location.clone(),
            source,
        })?;
    Ok(RegionDone {
        copy,
        registered: Some(registered),
    })
}

/// Registers the copy in `region`: like the source AMI (an AMI source), else from the manifest
/// and the AMI options. Idempotent: an AMI of the same name from the same location is reused.
async fn register(
    cloud: &CloudConfig,
    region: &str,
    job: &FanOut<'_>,
    copy: &RegionCopy,
) -> Result<Registered, ec2::Ec2Error> {
    let client = cloud.ec2_client(region);
    let reg = &job.registration;
    let machine = copy.manifest.machine.as_ref();
    let architecture = machine
        .map(|m| m.architecture.clone())
        .unwrap_or_else(|| "i386".into());
    let Some(ami) = &job.source.ami else {
        let target = RegisterTarget {
            image_location: copy.image_location.clone(),
            name: reg
                .name
                .clone()
                .unwrap_or_else(|| copy.manifest.image.name.clone()),
            architecture,
            kernel_id: reg.kernel_id.clone(),
            ramdisk_id: reg.ramdisk_id.clone(),
        };
        let (_, registered) = ec2::register_and_wait(&client, region, target, &reg.ami).await?;
        return Ok(registered);
    };
    let req = RegisterRequest {
        image_location: copy.image_location.clone(),
        name: reg.name.clone().unwrap_or_else(|| ami.name.clone()),
        description: ami.description.clone(),
        // EC2 always describes both; where a source does not (emulators), the manifest's
        // architecture and amibundle's default virtualization type stand in.
        architecture: ami.architecture.clone().unwrap_or(architecture),
        virtualization_type: ami
            .virtualization_type
            .clone()
            .unwrap_or_else(|| reg.ami.virtualization_type.clone()),
        root_device_name: ami
            .root_device_name
            .clone()
            .unwrap_or_else(|| ec2::DEFAULT_ROOT_DEVICE.to_string()),
        ephemeral_mappings: ami.ephemeral_mappings.clone(),
        ena_support: ami.ena_support,
        sriov_net_support: ami.sriov_net_support,
        kernel_id: reg.kernel_id.clone(),
        ramdisk_id: reg.ramdisk_id.clone(),
        tags: reg.ami.tags.clone(),
        force: reg.ami.force,
    };
    let registered = ec2::register_image(&client, region, &req).await?;
    if reg.ami.wait {
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
