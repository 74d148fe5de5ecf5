//! The one entry point of `bundle-image --upload [--register]`, `bundle-vol --upload
//! [--register]` and `save`: ensure the bucket (in the region, owned by the bundle's account,
//! ACLs usable), stream the bundle into it (`crate::cloud::stream::bundle_to_s3`), then
//! register the AMI if asked and wait for it.

use std::time::{Duration, Instant};

use tokio::runtime::Handle;

use crate::bundle::crypto::{AesIv, AesKey};
use crate::bundle::manifest::{self, ManifestError};
use crate::bundle::pipeline::{BundleSpec, Identity, PreparedImage};
use crate::cloud::config::CloudConfig;
use crate::cloud::ec2::{self, AmiOptions, Ec2Error, RegisterTarget, Registered};
use crate::cloud::s3::{self, BucketPolicy, BucketState, BundleLocation, S3Error};
use crate::cloud::stream::{self, StreamError, StreamReport, StreamTarget};
use crate::progress::{Progress, steps};

/// Where and how a bundle is published.
#[derive(Debug)]
pub struct Publish {
    /// The region (of the bucket, the EC2 certificate and the AMI).
    pub region: String,
    /// Bucket and prefix; `None` for [`s3::default_bucket_name`] of the account and region.
    pub location: Option<BundleLocation>,
    /// Canned ACL of every object.
    pub acl: String,
    /// Parts uploaded at once.
    pub concurrency: usize,
    /// Create the bucket if missing; enable ACLs if they are disabled.
    pub bucket_policy: BucketPolicy,
    /// Replace a bundle of the same name.
    pub overwrite: bool,
    /// Register the AMI under this name, with these options.
    pub register: Option<(String, AmiOptions)>,
    /// A resumed run: its predecessor's AES key and IV, so the bundle is the same bytes and the
    /// parts S3 already holds are not sent again. `None` draws fresh ones.
    pub resume: Option<(AesKey, AesIv)>,
}

/// What [`publish`] did.
#[derive(Debug)]
pub struct Published {
    /// Where the bundle is.
    pub location: BundleLocation,
    /// The bucket as found (created now, or already there).
    pub bucket: BucketState,
    /// The streamed bundle.
    pub report: StreamReport,
    /// The AMI, when registered.
    pub registered: Option<Registered>,
    /// Time spent registering and waiting.
    pub register_time: Duration,
}

/// Why [`publish`] failed.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The bundle's account (`image/user`) is not an account id.
    #[error("reading the bundle's account")]
    Account(#[source] ManifestError),
    /// The bucket could not be used.
    #[error(transparent)]
    Bucket(#[from] S3Error),
    /// Bundling or uploading failed.
    #[error("bundling {name} into {location}")]
    Stream {
        /// Bundle name.
        name: String,
        /// Where it was going.
        location: String,
        /// Why.
        #[source]
        source: Box<StreamError>,
    },
    /// Registering failed.
    #[error("registering {image_location}")]
    Register {
        /// The bundle's location.
        image_location: String,
        /// Why.
        #[source]
        source: Ec2Error,
    },
}

impl PublishError {
    /// Bucket ownership and access problems (exit code 3).
    pub fn is_access_problem(&self) -> bool {
        match self {
            Self::Bucket(e) => e.is_access_problem(),
            Self::Stream { source, .. } => source.is_access_problem(),
            _ => false,
        }
    }
}

/// Ensures the bucket, streams `image` into it as the bundle `spec` describes, then registers
/// it if asked. Blocks; `handle` runs the uploads.
pub fn publish(
    handle: &Handle,
    cloud: &CloudConfig,
    image: PreparedImage,
    spec: &BundleSpec,
    identity: &Identity,
    options: Publish,
    progress: &dyn Progress,
) -> Result<Published, PublishError> {
    let region = &options.region;
    let account = manifest::normalize_account(&spec.account).map_err(PublishError::Account)?;
    let location = match &options.location {
        Some(l) => l.clone(),
        None => BundleLocation::parse(&s3::default_bucket_name(&account, region))?,
    };
    let client = cloud.s3_client(region);
    let bucket = handle.block_on(s3::ensure_bucket(
        &client,
        &location.bucket,
        region,
        Some(&account),
        options.bucket_policy,
    ))?;
    tracing::info!("bucket {} in {region}: {bucket:?}", location.bucket);

    let target = StreamTarget {
        client,
        location: location.clone(),
        acl: options.acl.clone(),
        concurrency: options.concurrency,
        overwrite: options.overwrite,
        resume: options.resume.is_some(),
    };
    let report = stream::bundle_to_s3(
        handle,
        image,
        spec,
        identity,
        options.resume,
        &target,
        progress,
    )
    .map_err(|source| PublishError::Stream {
        name: spec.name.clone(),
        location: location.to_string(),
        source: Box::new(source),
    })?;
    let natural = crate::bundle::parts::part_width(report.parts.len() as u64);
    if report.width > natural {
        tracing::info!(
            "part names carry {} digits where a local bundle of {} part(s) would carry {}: the width is fixed before the part count is known when streaming (docs/format.md §8.3); the manifest lists the names used",
            report.width,
            report.parts.len(),
            natural
        );
    }

    let started = Instant::now();
    let registered = match &options.register {
        Some((name, ami)) => {
            progress.step(steps::REGISTER);
            let machine = report.bundle.manifest.machine.as_ref();
            let target = RegisterTarget {
                image_location: report.image_location.clone(),
                name: name.clone(),
                architecture: machine
                    .map(|m| m.architecture.clone())
                    .unwrap_or_else(|| "i386".into()),
                kernel_id: machine.and_then(|m| m.kernel_id.clone()),
                ramdisk_id: machine.and_then(|m| m.ramdisk_id.clone()),
            };
            let client = cloud.ec2_client(region);
            let (_, registered) = handle
                .block_on(ec2::register_and_wait(&client, region, target, ami))
                .map_err(|source| PublishError::Register {
                    image_location: report.image_location.clone(),
                    source,
                })?;
            Some(registered)
        }
        None => None,
    };
    Ok(Published {
        location,
        bucket,
        report,
        registered,
        register_time: started.elapsed(),
    })
}
