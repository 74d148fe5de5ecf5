//! `--upload` and `--register` of the bundling commands: bundle straight into S3 and register the
//! AMI, in one run (`cloud::publish` does the work).

use anyhow::Context;
use clap::Args;
use serde_json::json;

use super::cloud_args::{self, CloudArgs};
use super::keys::{self, Ec2CertArgs};
use super::output;
use super::register::AmiArgs;
use crate::bundle::crypto::{AesIv, AesKey, Certificate, UserKey};
use crate::bundle::pipeline::{BundleSpec, Identity, PreparedImage};
use crate::cloud::ec2;
use crate::cloud::publish::{self, Publish};
use crate::cloud::s3::{self, BucketPolicy, BundleLocation};
use crate::progress::Progress;

/// Streaming upload and registration flags.
#[derive(Debug, Args, Clone)]
pub struct StreamArgs {
    /// Upload the bundle to S3 while it is being made, keeping nothing on local disk:
    /// s3://BUCKET[/PREFIX], or no value for amibundle-ACCOUNT-REGION
    #[arg(long, value_name = "S3URL", num_args = 0..=1, default_missing_value = "")]
    pub upload: Option<String>,
    /// Then register the AMI under this name (implies --upload)
    #[arg(long, value_name = "AMI_NAME")]
    pub register: Option<String>,
    /// Parts uploaded at once (each holds 10 MiB of memory); for bundle-image --snapshot, also
    /// the EBS blocks read at once (512 KiB each)
    #[arg(long, value_name = "N", default_value_t = s3::DEFAULT_CONCURRENCY)]
    pub concurrency: usize,
    /// Canned ACL of every object (EC2 needs aws-exec-read; public-read makes the bundle public)
    #[arg(long, value_name = "ACL", default_value = s3::DEFAULT_ACL,
          value_parser = s3::ACLS)]
    pub acl: String,
    /// If the bucket has ACLs disabled, enable them (Object Ownership BucketOwnerPreferred)
    #[arg(long)]
    pub fix_ownership: bool,
    #[command(flatten)]
    pub ami: AmiArgs,
    #[command(flatten)]
    pub cloud: CloudArgs,
}

impl StreamArgs {
    /// Whether the bundle goes to S3 instead of a local directory.
    pub fn enabled(&self) -> bool {
        self.upload.is_some() || self.register.is_some()
    }

    /// The region that picks the EC2 certificate of a local bundle: --region, else the
    /// environment's, else us-east-1 (every commercial region uses the same certificate).
    pub fn local_region(&self) -> String {
        self.cloud
            .region
            .clone()
            .or_else(|| std::env::var("AWS_REGION").ok())
            .or_else(|| std::env::var("AWS_DEFAULT_REGION").ok())
            .filter(|r| !r.is_empty())
            .unwrap_or_else(|| "us-east-1".to_string())
    }
}

/// A streamed bundle to make: everything but the image.
pub struct StreamJob<'a> {
    /// What goes into the manifest.
    pub spec: &'a BundleSpec,
    /// The user's key pair.
    pub user_key: UserKey,
    /// The user's certificate.
    pub user_cert: Certificate,
    /// Which EC2 certificate.
    pub ec2: &'a Ec2CertArgs,
    /// Replace a bundle of the same name.
    pub overwrite: bool,
    /// Print JSON.
    pub json: bool,
    /// The command, for the JSON output.
    pub command: &'static str,
    /// A resumed `save`: the key and IV of the interrupted run (parts S3 holds are not sent
    /// again).
    pub resume: Option<(AesKey, AesIv)>,
    /// More fields for the JSON output (an object), e.g. `save`'s phase timings.
    pub extra_json: Option<serde_json::Value>,
}

/// Bundles `image` into S3 and, with --register, registers it ([`publish::publish`]); prints
/// the image location (and the AMI id).
pub fn run(
    args: &StreamArgs,
    job: StreamJob<'_>,
    image: PreparedImage,
    progress: &dyn Progress,
) -> anyhow::Result<()> {
    let ami = args.ami.options()?;
    if let Some(name) = &args.register {
        ec2::validate_ami_name(name).context("checking --register")?;
    }
    let location = match args.upload.as_deref() {
        Some(url) if !url.is_empty() => {
            Some(BundleLocation::parse(url).context("checking --upload")?)
        }
        _ => None,
    };
    let runtime = cloud_args::runtime()?;
    let cloud = runtime.block_on(args.cloud.load())?;
    let region = cloud.require_region()?.to_string();
    let identity = Identity {
        user_key: job.user_key,
        user_cert: job.user_cert,
        ec2_cert: keys::load_ec2_cert(job.ec2, &region)?,
    };
    let options = Publish {
        region: region.clone(),
        location,
        acl: args.acl.clone(),
        concurrency: args.concurrency,
        bucket_policy: BucketPolicy {
            create: true,
            fix_ownership: args.fix_ownership,
        },
        overwrite: job.overwrite,
        register: args.register.clone().map(|name| (name, ami)),
        resume: job.resume,
    };
    let done = publish::publish(
        runtime.handle(),
        &cloud,
        image,
        job.spec,
        &identity,
        options,
        progress,
    )?;
    let (report, location, registered) = (&done.report, &done.location, &done.registered);
    let b = &report.bundle;
    if job.json {
        output::print_json(&output::with_fields(
            json!({
            "version": 1,
            "command": job.command,
            "name": b.manifest.image.name,
            "bucket": location.bucket,
            "prefix": location.prefix,
            "region": region,
            "image_location": report.image_location,
            "image_size": b.image_size,
            "image_data_bytes": b.data_bytes,
            "sparse": b.sparse,
            "tar_bytes": b.tar_bytes,
            "tar_sha1": b.manifest.image.digest,
            "gzip_bytes": b.gzip_bytes,
            "bundled_size": b.bundled_bytes,
            "part_count": report.parts.len(),
            "parts": report.parts,
            "part_name_width": report.width,
            "bytes_sent": report.bytes_sent,
            "seconds": report.elapsed.as_secs_f64(),
            "parts_skipped": report.skipped,
            "ami_id": registered.as_ref().map(|r| r.image_id.clone()),
            "ami_created": registered.as_ref().map(|r| r.created),
            "register_seconds": registered.as_ref().map(|_| done.register_time.as_secs_f64()),
            }),
            job.extra_json,
        ))?;
    } else {
        eprintln!(
            "bundled {} ({} bytes, {} of data) into {} part(s) uploaded to s3://{}/{}, {} bytes, in {:.1} s",
            b.manifest.image.name,
            b.image_size,
            crate::progress::human_bytes(b.data_bytes),
            report.parts.len(),
            location.bucket,
            location.prefix,
            b.bundled_bytes,
            report.elapsed.as_secs_f64()
        );
        println!("{}", report.image_location);
        if let Some(r) = registered {
            println!("{}", r.image_id);
        }
    }
    Ok(())
}
