//! S3: where a bundle lives, the bucket preflight (region, ownership, ACLs), concurrent
//! resumable uploads with the manifest last, downloads checked part by part, streaming a bundle
//! straight into an image ([`PartStream`], [`unbundle_stream`]) and deletes of exactly the
//! objects a manifest names.

use std::collections::HashMap;
use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_sdk_s3::Client;
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{
    BucketLocationConstraint, CreateBucketConfiguration, Delete, ObjectCannedAcl, ObjectIdentifier,
    ObjectOwnership, OwnershipControls, OwnershipControlsRule,
};
use base64::Engine;
use futures::stream::{self, StreamExt, TryStreamExt};
use md5::{Digest as _, Md5};
use sha1::Sha1;

use crate::bundle::crypto::UserKey;
use crate::bundle::manifest::{Manifest, PartEntry};
use crate::bundle::parts;
use crate::bundle::pipeline::{self, DecodeReport, LocalBundle};
use crate::progress::Progress;

/// Parts uploaded or downloaded at once by default. Each holds one 10 MiB part in memory, so
/// the default costs about 80 MiB; S3 itself takes thousands of requests per second per prefix.
pub const DEFAULT_CONCURRENCY: usize = 8;

/// The canned ACL EC2 needs on every object of a bundle: owner FULL_CONTROL plus read access for
/// EC2's AMI service (RegisterImage documentation).
pub const DEFAULT_ACL: &str = "aws-exec-read";

/// The canned ACLs a bundle may be uploaded with: [`DEFAULT_ACL`], or `public-read` (anyone may
/// read the parts, as the reference tools allowed).
pub const ACLS: [&str; 2] = [DEFAULT_ACL, "public-read"];

/// Objects removed per DeleteObjects call (the S3 maximum).
const DELETE_BATCH: usize = 1000;

/// A bucket and key prefix (`""` or ending in `/`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BundleLocation {
    /// Bucket name.
    pub bucket: String,
    /// Key prefix, empty or ending with `/`.
    pub prefix: String,
}

impl BundleLocation {
    /// Parses `bucket`, `bucket/some/prefix` or `s3://bucket/some/prefix` (leading and trailing
    /// slashes ignored, as ec2-upload-bundle does).
    pub fn parse(text: &str) -> Result<Self, S3Error> {
        let rest = text.strip_prefix("s3://").unwrap_or(text).trim_matches('/');
        let (bucket, prefix) = match rest.split_once('/') {
            Some((b, p)) => (b, p.trim_matches('/')),
            None => (rest, ""),
        };
        validate_bucket_name(bucket)?;
        if prefix
            .split('/')
            .any(|seg| seg.is_empty() && !prefix.is_empty() || seg == "." || seg == "..")
        {
            return Err(S3Error::BadPrefix(prefix.to_string()));
        }
        let prefix = if prefix.is_empty() {
            String::new()
        } else {
            format!("{prefix}/")
        };
        Ok(Self {
            bucket: bucket.to_string(),
            prefix,
        })
    }

    /// Parses the manifest's address `[s3://]BUCKET/[PREFIX/]NAME.manifest.xml` into its
    /// location and file name.
    pub fn parse_manifest_url(url: &str) -> Result<(Self, String), S3Error> {
        let rest = url.strip_prefix("s3://").unwrap_or(url);
        match rest.rsplit_once('/') {
            Some((dir, file)) if !file.is_empty() => Ok((Self::parse(dir)?, file.to_string())),
            _ => Err(S3Error::BadManifestUrl(url.to_string())),
        }
    }

    /// The key of a file of the bundle.
    pub fn key(&self, file_name: &str) -> String {
        format!("{}{}", self.prefix, file_name)
    }

    /// RegisterImage's `ImageLocation`: `bucket/prefix/name.manifest.xml`, no scheme.
    pub fn image_location(&self, manifest_name: &str) -> String {
        format!("{}/{}", self.bucket, self.key(manifest_name))
    }
}

impl std::fmt::Display for BundleLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "s3://{}/{}", self.bucket, self.prefix)
    }
}

/// S3's bucket naming rules for new buckets (general purpose buckets), so a bad name is refused
/// before any request: 3–63 characters of `[a-z0-9.-]`, starting and ending with a letter or
/// digit, no `..`, not shaped like an IP address, none of the reserved prefixes and suffixes.
pub fn validate_bucket_name(name: &str) -> Result<(), S3Error> {
    let bad = |why: &str| {
        Err(S3Error::BadBucketName {
            name: name.to_string(),
            why: why.to_string(),
        })
    };
    if !(3..=63).contains(&name.len()) {
        return bad("it must be 3 to 63 characters long");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-')
    {
        return bad("only lowercase letters, digits, '.' and '-' are allowed");
    }
    let first = name.as_bytes()[0];
    let last = name.as_bytes()[name.len() - 1];
    if !first.is_ascii_alphanumeric() || !last.is_ascii_alphanumeric() {
        return bad("it must start and end with a letter or digit");
    }
    if name.contains("..") || name.contains(".-") || name.contains("-.") {
        return bad("'..', '.-' and '-.' are not allowed");
    }
    if name.split('.').count() == 4 && name.split('.').all(|p| p.parse::<u8>().is_ok()) {
        return bad("it must not look like an IP address");
    }
    for prefix in ["xn--", "sthree-", "amzn-s3-demo-"] {
        if name.starts_with(prefix) {
            return bad("that prefix is reserved by AWS");
        }
    }
    for suffix in ["-s3alias", "--ol-s3", ".mrap", "--x-s3", "--table-s3"] {
        if name.ends_with(suffix) {
            return bad("that suffix is reserved by AWS");
        }
    }
    Ok(())
}

/// The bucket amibundle uses when none is given: unique per account and region, and stable so
/// re-runs find it again.
pub fn default_bucket_name(account: &str, region: &str) -> String {
    format!("amibundle-{account}-{region}")
}

/// What went wrong talking to S3 (the SDK error rendered with its whole cause chain).
#[derive(Debug, thiserror::Error)]
pub enum S3Error {
    /// Bucket name refused before any request.
    #[error("bucket name {name:?} is not valid: {why}")]
    BadBucketName {
        /// The name.
        name: String,
        /// Which rule it breaks.
        why: String,
    },
    /// Not `s3://BUCKET/[PREFIX/]NAME.manifest.xml`.
    #[error("{0:?} is not a manifest address: use s3://BUCKET/[PREFIX/]NAME.manifest.xml")]
    BadManifestUrl(String),
    /// Key prefix with empty, `.` or `..` segments.
    #[error("key prefix {0:?} has an empty, '.' or '..' segment")]
    BadPrefix(String),
    /// The bucket belongs to another account (or we may not see it).
    #[error(
        "bucket {bucket} exists but belongs to another AWS account (or these credentials may not access it): choose another bucket name"
    )]
    NotYours {
        /// Bucket.
        bucket: String,
    },
    /// The bucket is in another region than the AMI.
    #[error(
        "bucket {bucket} is in {actual}, but the AMI is to be registered in {wanted}: EC2 registers only from a bucket in its own region; use --region {actual} or another bucket"
    )]
    RegionMismatch {
        /// Bucket.
        bucket: String,
        /// Where it is.
        actual: String,
        /// Where it should be.
        wanted: String,
    },
    /// The bucket does not exist and we were not to create it.
    #[error("bucket {bucket} does not exist")]
    NoSuchBucket {
        /// Bucket.
        bucket: String,
    },
    /// ACLs are disabled on the bucket (Object Ownership BucketOwnerEnforced, the S3 default
    /// since April 2023), so EC2 could never be granted read access.
    #[error(
        "bucket {bucket} has ACLs disabled (Object Ownership is BucketOwnerEnforced), so the aws-exec-read ACL EC2 needs cannot be set; allow ACLs with `aws s3api put-bucket-ownership-controls --bucket {bucket} --ownership-controls 'Rules=[{{ObjectOwnership=BucketOwnerPreferred}}]'` or rerun with --fix-ownership"
    )]
    AclsDisabled {
        /// Bucket.
        bucket: String,
    },
    /// A request failed.
    #[error("{0}")]
    Request(Box<RequestFailure>),
    /// A downloaded object differs from the manifest.
    #[error("s3://{bucket}/{key} is corrupt: its SHA-1 is {actual}, the manifest says {expected}")]
    Corrupt {
        /// Bucket.
        bucket: String,
        /// Key.
        key: String,
        /// Manifest digest.
        expected: String,
        /// Computed.
        actual: String,
    },
    /// A downloaded object is larger than any part can be (refused from its announced length,
    /// or as soon as its body passes the limit, so a huge object cannot exhaust memory).
    #[error(
        "s3://{bucket}/{key} is {size} bytes, more than the largest part the format allows ({} bytes): not a part of this bundle",
        parts::PART_SIZE_BYTES
    )]
    PartTooLarge {
        /// Bucket.
        bucket: String,
        /// Key.
        key: String,
        /// Its size (as announced, or as much as was read).
        size: u64,
    },
    /// The manifest in S3 could not be parsed.
    #[error("parsing manifest s3://{bucket}/{key}")]
    Manifest {
        /// Bucket.
        bucket: String,
        /// Key.
        key: String,
        /// Cause.
        #[source]
        source: Box<crate::bundle::manifest::ManifestError>,
    },
    /// Local file trouble.
    #[error("{action} {}", path.display())]
    Local {
        /// What we were doing.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The local bundle is not complete.
    #[error(transparent)]
    Bundle(#[from] Box<crate::bundle::Error>),
}

/// A failed S3 request, with what we were doing and a hint for known causes.
#[derive(Debug)]
pub struct RequestFailure {
    /// What we were doing ("uploading", "listing" …).
    pub action: &'static str,
    /// Bucket.
    pub bucket: String,
    /// Key or prefix.
    pub key: String,
    /// S3 error code, if any.
    pub code: Option<String>,
    /// HTTP status, if any.
    pub status: Option<u16>,
    /// The SDK error with its causes.
    pub detail: String,
    /// A hint for known causes (starts with "; ").
    pub hint: String,
}

impl std::fmt::Display for RequestFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} s3://{}/{}: {}{}",
            self.action, self.bucket, self.key, self.detail, self.hint
        )
    }
}

/// A failure that did not come from S3 itself (a request that could not be built, a body that
/// could not be read).
pub(crate) fn local_failure(
    action: &'static str,
    bucket: &str,
    key: &str,
    detail: impl std::fmt::Display,
) -> S3Error {
    S3Error::Request(Box::new(RequestFailure {
        action,
        bucket: bucket.to_string(),
        key: key.to_string(),
        code: None,
        status: None,
        detail: detail.to_string(),
        hint: String::new(),
    }))
}

impl S3Error {
    /// Bucket ownership and access problems: exit code 3, which Packer reads as "the bucket may
    /// be owned by somebody else".
    pub fn is_access_problem(&self) -> bool {
        match self {
            S3Error::NotYours { .. } | S3Error::AclsDisabled { .. } => true,
            S3Error::Request(f) => {
                matches!(f.status, Some(403))
                    || matches!(
                        f.code.as_deref(),
                        Some(
                            "AccessDenied"
                                | "AllAccessDisabled"
                                | "AccessControlListNotSupported"
                                | "InvalidAccessKeyId"
                        )
                    )
            }
            _ => false,
        }
    }
}

/// Renders an SDK error into [`S3Error::Request`] with a hint for the causes users meet.
pub(crate) fn request_error<E>(
    action: &'static str,
    bucket: &str,
    key: &str,
    err: SdkError<E, HttpResponse>,
) -> S3Error
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let code = err.code().map(str::to_string);
    let status = err.raw_response().map(|r| r.status().as_u16());
    let message = err.message().map(str::to_string);
    let detail = match (&code, &message) {
        (Some(c), Some(m)) => format!("{c}: {m}"),
        (Some(c), None) => c.clone(),
        _ => DisplayErrorContext(&err).to_string(),
    };
    let hint = match code.as_deref() {
        Some("AccessControlListNotSupported") => {
            "; the bucket has ACLs disabled: allow them (Object Ownership BucketOwnerPreferred) or rerun with --fix-ownership".to_string()
        }
        Some("AccessDenied") if action == "uploading" => {
            "; the credentials need s3:PutObject and s3:PutObjectAcl on the bucket".to_string()
        }
        Some("InvalidAccessKeyId" | "SignatureDoesNotMatch") => {
            "; check the access key, secret key and session token".to_string()
        }
        Some("PermanentRedirect" | "AuthorizationHeaderMalformed" | "IllegalLocationConstraintException") => {
            "; the bucket is in another region: pass the bucket's region with --region".to_string()
        }
        Some("ExpiredToken") => "; the session token has expired: get fresh credentials".to_string(),
        _ => String::new(),
    };
    S3Error::Request(Box::new(RequestFailure {
        action,
        bucket: bucket.to_string(),
        key: key.to_string(),
        code,
        status,
        detail,
        hint,
    }))
}

/// How to treat a missing or misconfigured bucket.
#[derive(Debug, Clone, Copy, Default)]
pub struct BucketPolicy {
    /// Create the bucket when it does not exist.
    pub create: bool,
    /// Switch BucketOwnerEnforced to BucketOwnerPreferred instead of failing.
    pub fix_ownership: bool,
}

/// What [`ensure_bucket`] found or did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BucketState {
    /// Existed, in the right region, ACLs usable.
    Existing,
    /// Created now.
    Created,
}

/// Checks that `bucket` exists in `region`, is ours and allows ACLs; creates it (ACLs enabled)
/// when missing and allowed. Every check happens before any object is sent. `account`, when
/// known, is the account that must own the bucket.
pub async fn ensure_bucket(
    s3: &Client,
    bucket: &str,
    region: &str,
    account: Option<&str>,
    policy: BucketPolicy,
) -> Result<BucketState, S3Error> {
    validate_bucket_name(bucket)?;
    let state = match s3.get_bucket_location().bucket(bucket).send().await {
        Ok(out) => {
            let actual = super::config::region_of_location(
                out.location_constraint()
                    .map(BucketLocationConstraint::as_str),
            );
            if actual != region {
                return Err(S3Error::RegionMismatch {
                    bucket: bucket.into(),
                    actual,
                    wanted: region.into(),
                });
            }
            BucketState::Existing
        }
        Err(err) => match err.code() {
            Some("NoSuchBucket") if policy.create => create_bucket(s3, bucket, region).await?,
            Some("NoSuchBucket") => {
                return Err(S3Error::NoSuchBucket {
                    bucket: bucket.into(),
                });
            }
            Some("AccessDenied" | "AllAccessDisabled") => {
                return Err(S3Error::NotYours {
                    bucket: bucket.into(),
                });
            }
            _ => return Err(request_error("locating bucket", bucket, "", err)),
        },
    };
    if state == BucketState::Existing {
        check_owner(s3, bucket, account).await?;
    }
    check_ownership(s3, bucket, policy.fix_ownership).await?;
    Ok(state)
}

/// Refuses a bucket that belongs to another account. S3 answers `x-amz-expected-bucket-owner`
/// with 403 when the owner differs; where that header is not enforced (emulators), the bucket
/// must appear in the caller's own bucket list.
async fn check_owner(s3: &Client, bucket: &str, account: Option<&str>) -> Result<(), S3Error> {
    if let Some(account) = account {
        if let Err(err) = s3
            .head_bucket()
            .bucket(bucket)
            .expected_bucket_owner(account)
            .send()
            .await
        {
            let status = err.raw_response().map(|r| r.status().as_u16());
            if status == Some(403) {
                return Err(S3Error::NotYours {
                    bucket: bucket.into(),
                });
            }
            return Err(request_error(
                "checking the owner of bucket",
                bucket,
                "",
                err,
            ));
        }
    }
    let mut token: Option<String> = None;
    loop {
        let out = match s3
            .list_buckets()
            .set_continuation_token(token.clone())
            .send()
            .await
        {
            Ok(out) => out,
            Err(err) => {
                // Listing needs s3:ListAllMyBuckets, which pipelines often lack: then the
                // expected-owner check above is all we can do.
                tracing::debug!(
                    "cannot list buckets to check ownership: {}",
                    DisplayErrorContext(&err)
                );
                return Ok(());
            }
        };
        if out.buckets().iter().any(|b| b.name() == Some(bucket)) {
            return Ok(());
        }
        match out.continuation_token() {
            Some(t) if !t.is_empty() => token = Some(t.to_string()),
            _ => {
                return Err(S3Error::NotYours {
                    bucket: bucket.into(),
                });
            }
        }
    }
}

async fn create_bucket(s3: &Client, bucket: &str, region: &str) -> Result<BucketState, S3Error> {
    tracing::info!("creating bucket {bucket} in {region}");
    let mut req = s3
        .create_bucket()
        .bucket(bucket)
        // ACLs must stay enabled: EC2 reads bundles through the aws-exec-read grant.
        .object_ownership(ObjectOwnership::BucketOwnerPreferred);
    // us-east-1 is the one region that takes no location constraint.
    if region != "us-east-1" {
        req = req.create_bucket_configuration(
            CreateBucketConfiguration::builder()
                .location_constraint(BucketLocationConstraint::from(region))
                .build(),
        );
    }
    match req.send().await {
        Ok(_) => Ok(BucketState::Created),
        Err(err) => match err.code() {
            Some("BucketAlreadyOwnedByYou") => Ok(BucketState::Existing),
            Some("BucketAlreadyExists") => Err(S3Error::NotYours {
                bucket: bucket.into(),
            }),
            _ => Err(request_error("creating bucket", bucket, "", err)),
        },
    }
}

async fn check_ownership(s3: &Client, bucket: &str, fix: bool) -> Result<(), S3Error> {
    let enforced = match s3
        .get_bucket_ownership_controls()
        .bucket(bucket)
        .send()
        .await
    {
        Ok(out) => out
            .ownership_controls()
            .map(|c| {
                c.rules()
                    .iter()
                    .any(|r| r.object_ownership() == &ObjectOwnership::BucketOwnerEnforced)
            })
            .unwrap_or(false),
        // No ownership controls at all: the pre-2023 default, ACLs enabled.
        Err(err) if err.code() == Some("OwnershipControlsNotFoundError") => false,
        Err(err) => {
            return Err(request_error(
                "reading ownership controls of",
                bucket,
                "",
                err,
            ));
        }
    };
    if !enforced {
        return Ok(());
    }
    if !fix {
        return Err(S3Error::AclsDisabled {
            bucket: bucket.into(),
        });
    }
    tracing::warn!(
        "bucket {bucket} has ACLs disabled; switching Object Ownership to BucketOwnerPreferred (--fix-ownership)"
    );
    let rule = OwnershipControlsRule::builder()
        .object_ownership(ObjectOwnership::BucketOwnerPreferred)
        .build()
        .map_err(|e| local_failure("building ownership controls for", bucket, "", e))?;
    let controls = OwnershipControls::builder()
        .rules(rule)
        .build()
        .map_err(|e| local_failure("building ownership controls for", bucket, "", e))?;
    s3.put_bucket_ownership_controls()
        .bucket(bucket)
        .ownership_controls(controls)
        .send()
        .await
        .map_err(|err| request_error("enabling ACLs on", bucket, "", err))?;
    Ok(())
}

/// The region a bucket is in (for commands that work on an existing bucket wherever it is).
pub async fn bucket_region(s3: &Client, bucket: &str) -> Result<String, S3Error> {
    match s3.get_bucket_location().bucket(bucket).send().await {
        Ok(out) => Ok(super::config::region_of_location(
            out.location_constraint()
                .map(BucketLocationConstraint::as_str),
        )),
        Err(err) => match err.code() {
            Some("NoSuchBucket") => Err(S3Error::NoSuchBucket {
                bucket: bucket.into(),
            }),
            Some("AccessDenied" | "AllAccessDisabled") => Err(S3Error::NotYours {
                bucket: bucket.into(),
            }),
            _ => Err(request_error("locating bucket", bucket, "", err)),
        },
    }
}

/// Size and ETag of every object under `prefix` (paginated).
pub async fn list_objects(
    s3: &Client,
    bucket: &str,
    prefix: &str,
) -> Result<HashMap<String, (u64, String)>, S3Error> {
    let mut found = HashMap::new();
    let mut pages = s3
        .list_objects_v2()
        .bucket(bucket)
        .prefix(prefix)
        .into_paginator()
        .send();
    while let Some(page) = pages.next().await {
        let page = page.map_err(|err| request_error("listing", bucket, prefix, err))?;
        for obj in page.contents() {
            if let Some(key) = obj.key() {
                let size = obj.size().and_then(|s| u64::try_from(s).ok()).unwrap_or(0);
                let etag = obj
                    .e_tag()
                    .unwrap_or_default()
                    .trim_matches('"')
                    .to_ascii_lowercase();
                found.insert(key.to_string(), (size, etag));
            }
        }
    }
    Ok(found)
}

/// Options of [`upload_bundle`].
#[derive(Debug, Clone)]
pub struct UploadOptions {
    /// Parts in flight at once.
    pub concurrency: usize,
    /// Canned ACL of every object.
    pub acl: String,
    /// Do not upload the manifest.
    pub skip_manifest: bool,
    /// Upload only parts with index ≥ this (ec2-upload-bundle's `--part`).
    pub from_part: u32,
    /// Skip parts S3 already holds with the same size and MD5.
    pub resume: bool,
}

impl Default for UploadOptions {
    fn default() -> Self {
        Self {
            concurrency: DEFAULT_CONCURRENCY,
            acl: DEFAULT_ACL.into(),
            skip_manifest: false,
            from_part: 0,
            resume: true,
        }
    }
}

/// What [`upload_bundle`] did.
#[derive(Debug, Clone)]
pub struct UploadReport {
    /// Where the bundle is.
    pub location: BundleLocation,
    /// `bucket/prefix/name.manifest.xml`, for RegisterImage.
    pub image_location: String,
    /// Part file names sent.
    pub uploaded: Vec<String>,
    /// Part file names already present and skipped.
    pub skipped: Vec<String>,
    /// Whether the manifest was sent.
    pub manifest_uploaded: bool,
    /// Bytes sent (parts and manifest).
    pub bytes_sent: u64,
    /// Wall time.
    pub elapsed: Duration,
}

/// One part to send.
struct PendingPart {
    filename: String,
    path: PathBuf,
}

fn md5_base64(data: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(Md5::digest(data))
}

/// Stores one file of a bundle at `location`: with Content-MD5 (S3 refuses a body that does not
/// match), the SDK's CRC32 checksum, and the canned ACL EC2 needs. Returns the bytes sent.
pub async fn put_bundle_object(
    s3: &Client,
    location: &BundleLocation,
    file_name: &str,
    data: Vec<u8>,
    acl: &ObjectCannedAcl,
) -> Result<u64, S3Error> {
    let len = data.len() as u64;
    let key = location.key(file_name);
    s3.put_object()
        .bucket(&location.bucket)
        .key(&key)
        .content_md5(md5_base64(&data))
        .acl(acl.clone())
        .body(ByteStream::from(data))
        .send()
        .await
        .map_err(|err| request_error("uploading", &location.bucket, &key, err))?;
    Ok(len)
}

/// Whether `key` exists in `bucket` (HeadObject).
pub async fn object_exists(s3: &Client, bucket: &str, key: &str) -> Result<bool, S3Error> {
    match s3.head_object().bucket(bucket).key(key).send().await {
        Ok(_) => Ok(true),
        Err(err)
            if err.as_service_error().is_some_and(|e| e.is_not_found())
                || err
                    .raw_response()
                    .is_some_and(|r| r.status().as_u16() == 404) =>
        {
            Ok(false)
        }
        Err(err) => Err(request_error("checking", bucket, key, err)),
    }
}

/// Deletes exactly `keys` from `bucket`, in batches of the S3 maximum.
pub async fn delete_keys(s3: &Client, bucket: &str, keys: &[String]) -> Result<(), S3Error> {
    for batch in keys.chunks(DELETE_BATCH) {
        let objects = batch
            .iter()
            .map(|k| ObjectIdentifier::builder().key(k).build())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| local_failure("deleting", bucket, &batch[0], e))?;
        let delete = Delete::builder()
            .set_objects(Some(objects))
            .quiet(true)
            .build()
            .map_err(|e| local_failure("deleting", bucket, &batch[0], e))?;
        let out = s3
            .delete_objects()
            .bucket(bucket)
            .delete(delete)
            .send()
            .await
            .map_err(|err| request_error("deleting", bucket, &batch[0], err))?;
        if let Some(first) = out.errors().first() {
            return Err(S3Error::Request(Box::new(RequestFailure {
                action: "deleting",
                bucket: bucket.to_string(),
                key: first.key().unwrap_or_default().to_string(),
                code: first.code().map(str::to_string),
                status: None,
                detail: format!(
                    "{}: {} ({} of {} objects in this batch failed)",
                    first.code().unwrap_or("error"),
                    first.message().unwrap_or_default(),
                    out.errors().len(),
                    batch.len()
                ),
                hint: String::new(),
            })));
        }
    }
    Ok(())
}

/// Uploads a local bundle: parts concurrently (each with Content-MD5 and the SDK's CRC32
/// checksum, and the canned ACL), the manifest last — it is the commit point that makes the
/// bundle registrable. The smallest part goes first, alone, so a permission or ACL problem
/// surfaces before the bulk of the data is sent. With `resume`, parts S3 already holds with the
/// same size and MD5 are skipped.
pub async fn upload_bundle(
    s3: &Client,
    location: &BundleLocation,
    bundle: &LocalBundle,
    opts: &UploadOptions,
    progress: &dyn Progress,
) -> Result<UploadReport, S3Error> {
    let started = Instant::now();
    bundle.check_part_sizes().map_err(Box::new)?;
    let manifest_name = bundle
        .manifest_path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("image.manifest.xml")
        .to_string();
    crate::bundle::manifest::check_file_name(&bundle.manifest, &manifest_name)
        .map_err(|e| S3Error::Bundle(Box::new(crate::bundle::Error::from(e))))?;
    let existing = if opts.resume {
        list_objects(s3, &location.bucket, &location.prefix).await?
    } else {
        HashMap::new()
    };
    let acl = ObjectCannedAcl::from(opts.acl.as_str());

    let mut pending = Vec::new();
    let mut skipped = Vec::new();
    let mut total = 0u64;
    let mut entries = bundle.manifest.image.parts.clone();
    entries.sort_by_key(|p| p.index);
    for entry in entries.iter().filter(|p| p.index >= opts.from_part) {
        let p = PendingPart {
            filename: entry.filename.clone(),
            path: bundle.parts_dir.join(&entry.filename),
        };
        let key = location.key(&p.filename);
        if let Some((size, etag)) = existing.get(&key) {
            let data = fs::read(&p.path).map_err(|source| S3Error::Local {
                action: "reading part",
                path: p.path.clone(),
                source,
            })?;
            if *size == data.len() as u64 && *etag == hex::encode(Md5::digest(&data)) {
                tracing::debug!(
                    "s3://{}/{key} is already uploaded; skipping",
                    location.bucket
                );
                skipped.push(p.filename.clone());
                continue;
            }
        }
        total += fs::metadata(&p.path).map(|m| m.len()).unwrap_or(0);
        pending.push(p);
    }
    // Smallest first (the last part, usually): a cheap probe of write and ACL permissions.
    if let Some(i) = (0..pending.len()).min_by_key(|&i| {
        fs::metadata(&pending[i].path)
            .map(|m| m.len())
            .unwrap_or(u64::MAX)
    }) {
        let first = pending.remove(i);
        pending.insert(0, first);
    }

    progress.start("uploading", Some(total));
    let part_count = pending.len() as u64;
    let parts_done = std::sync::atomic::AtomicU64::new(0);
    progress.items("parts", 0, Some(part_count));
    let parts_done = &parts_done;
    let put = |part: PendingPart| {
        let acl = acl.clone();
        async move {
            let data = tokio::fs::read(&part.path)
                .await
                .map_err(|source| S3Error::Local {
                    action: "reading part",
                    path: part.path.clone(),
                    source,
                })?;
            let len = put_bundle_object(s3, location, &part.filename, data, &acl).await?;
            progress.inc(len);
            let done = parts_done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
            progress.items("parts", done, Some(part_count));
            Ok::<_, S3Error>((part.filename, len))
        }
    };
    let mut uploaded = Vec::new();
    let mut bytes_sent = 0;
    let mut rest = pending.into_iter();
    if let Some(first) = rest.next() {
        let (name, len) = put(first).await?;
        uploaded.push(name);
        bytes_sent += len;
    }
    let results: Vec<(String, u64)> = stream::iter(rest.map(put))
        .buffer_unordered(opts.concurrency.max(1))
        .try_collect()
        .await?;
    for (name, len) in results {
        uploaded.push(name);
        bytes_sent += len;
    }
    progress.finish();

    let mut manifest_uploaded = false;
    if !opts.skip_manifest {
        bytes_sent +=
            put_bundle_object(s3, location, &manifest_name, bundle.raw.clone(), &acl).await?;
        manifest_uploaded = true;
    }
    uploaded.sort();
    Ok(UploadReport {
        location: location.clone(),
        image_location: location.image_location(&manifest_name),
        uploaded,
        skipped,
        manifest_uploaded,
        bytes_sent,
        elapsed: started.elapsed(),
    })
}

/// How one GET went: a failure while its body streamed in (a reset or truncated response)
/// is worth a new request, which the SDK's own retries do not cover — they end when the
/// response head has arrived.
enum GetFailure {
    /// The body broke off; a new GET may succeed.
    Body(S3Error),
    /// Anything else (the SDK has already retried what it could).
    Final(S3Error),
}

/// Runs `get` up to [`crate::cloud::config::MAX_ATTEMPTS`] times while its body breaks off,
/// backing off exponentially from the configured base in between.
async fn retry_body<F, Fut>(mut get: F) -> Result<Vec<u8>, S3Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Vec<u8>, GetFailure>>,
{
    let base = crate::cloud::config::retry_base();
    let mut attempt = 1;
    loop {
        match get().await {
            Ok(data) => return Ok(data),
            Err(GetFailure::Final(e)) => return Err(e),
            Err(GetFailure::Body(e)) if attempt >= crate::cloud::config::MAX_ATTEMPTS => {
                return Err(e);
            }
            Err(GetFailure::Body(e)) => {
                tracing::debug!("{e}; retrying (attempt {attempt})");
                tokio::time::sleep(base * 2u32.saturating_pow(attempt - 1)).await;
                attempt += 1;
            }
        }
    }
}

/// Reads an object fully into memory.
async fn get_bytes(s3: &Client, bucket: &str, key: &str) -> Result<Vec<u8>, S3Error> {
    retry_body(|| async {
        let out = s3
            .get_object()
            .bucket(bucket)
            .key(key)
            .send()
            .await
            .map_err(|err| GetFailure::Final(request_error("downloading", bucket, key, err)))?;
        let body = out
            .body
            .collect()
            .await
            .map_err(|e| GetFailure::Body(local_failure("downloading", bucket, key, e)))?;
        Ok(body.into_bytes().to_vec())
    })
    .await
}

/// Downloads and parses a manifest.
pub async fn fetch_manifest(
    s3: &Client,
    location: &BundleLocation,
    manifest_name: &str,
) -> Result<(Manifest, Vec<u8>), S3Error> {
    let key = location.key(manifest_name);
    let raw = get_bytes(s3, &location.bucket, &key).await?;
    let manifest = Manifest::parse(&raw)
        .and_then(|m| {
            crate::bundle::manifest::check_file_name(&m, manifest_name)?;
            Ok(m)
        })
        .map_err(|source| S3Error::Manifest {
            bucket: location.bucket.clone(),
            key,
            source: Box::new(source),
        })?;
    Ok((manifest, raw))
}

/// What [`download_bundle`] did.
#[derive(Debug, Clone)]
pub struct DownloadReport {
    /// The manifest written locally.
    pub manifest_path: PathBuf,
    /// Parts fetched.
    pub downloaded: Vec<String>,
    /// Parts already present with the right SHA-1.
    pub skipped: Vec<String>,
    /// Bytes fetched.
    pub bytes: u64,
    /// Wall time.
    pub elapsed: Duration,
}

fn write_atomically(dir: &Path, name: &str, data: &[u8]) -> Result<PathBuf, S3Error> {
    let final_path = dir.join(name);
    let tmp = dir.join(format!(".{name}.amibundle-{}.partial", std::process::id()));
    let local = |action, source| S3Error::Local {
        action,
        path: final_path.clone(),
        source,
    };
    let _ = fs::remove_file(&tmp);
    let mut f = parts::create_private_file(&tmp).map_err(|e| local("writing", e))?;
    f.write_all(data).and_then(|()| f.sync_all()).map_err(|e| {
        let _ = fs::remove_file(&tmp);
        local("writing", e)
    })?;
    fs::rename(&tmp, &final_path).map_err(|e| {
        let _ = fs::remove_file(&tmp);
        local("writing", e)
    })?;
    Ok(final_path)
}

fn sha1_hex(data: &[u8]) -> String {
    hex::encode(Sha1::digest(data))
}

/// Downloads a bundle into `dir`: every part concurrently, each checked against the manifest's
/// SHA-1 as it arrives (a corrupt object is an error naming it), parts already present with the
/// right digest skipped; the manifest is written last.
pub async fn download_bundle(
    s3: &Client,
    location: &BundleLocation,
    manifest_name: &str,
    dir: &Path,
    concurrency: usize,
    progress: &dyn Progress,
) -> Result<DownloadReport, S3Error> {
    let started = Instant::now();
    let (manifest, raw) = fetch_manifest(s3, location, manifest_name).await?;
    let mut todo = Vec::new();
    let mut skipped = Vec::new();
    // The temporary files of a killed download (see `write_atomically`).
    for name in manifest.image.parts.iter().map(|p| p.filename.as_str()) {
        parts::remove_stale(dir, &format!(".{name}.amibundle-"), ".partial", false);
    }
    parts::remove_stale(
        dir,
        &format!(".{manifest_name}.amibundle-"),
        ".partial",
        false,
    );
    let mut present = 0u64;
    for part in &manifest.image.parts {
        let local = dir.join(&part.filename);
        // A part already here from an earlier run: read as a part is (a regular file, no
        // link followed, at most a part's size); anything else is fetched and replaced.
        let earlier = parts::open_part(&local).and_then(|f| {
            let mut data = Vec::new();
            f.take(parts::PART_SIZE_BYTES as u64 + 1)
                .read_to_end(&mut data)
                .map(|_| data)
        });
        if let Ok(data) = earlier {
            if data.len() <= parts::PART_SIZE_BYTES
                && sha1_hex(&data).eq_ignore_ascii_case(&part.digest)
            {
                skipped.push(part.filename.clone());
                present += data.len() as u64;
                continue;
            }
        }
        todo.push(part.clone());
    }
    // What is still to come: the parts not here yet, and the manifest.
    let needed = manifest
        .image
        .bundled_size
        .saturating_sub(present)
        .saturating_add(raw.len() as u64);
    crate::bundle::space::ensure(dir, needed, "the bundle (parts and manifest)")
        .map_err(|e| S3Error::Bundle(Box::new(e.into())))?;
    progress.start("downloading", None);
    let fetch = |part: PartEntry| async move {
        let data = fetch_part(s3, location, &part).await?;
        write_atomically(dir, &part.filename, &data)?;
        progress.inc(data.len() as u64);
        Ok::<_, S3Error>((part.filename, data.len() as u64))
    };
    let results: Vec<(String, u64)> = stream::iter(todo.into_iter().map(fetch))
        .buffer_unordered(concurrency.max(1))
        .try_collect()
        .await?;
    progress.finish();
    // Every part checked out; together they must be the ciphertext the manifest describes,
    // or the manifest (the commit point of a download) is not written.
    let bytes: u64 = results.iter().map(|r| r.1).sum();
    if present + bytes != manifest.image.bundled_size {
        return Err(S3Error::Bundle(Box::new(
            crate::bundle::Error::BundledSize {
                expected: manifest.image.bundled_size,
                actual: present + bytes,
            },
        )));
    }
    let manifest_path = write_atomically(dir, manifest_name, &raw)?;
    let mut downloaded: Vec<String> = results.into_iter().map(|r| r.0).collect();
    downloaded.sort();
    Ok(DownloadReport {
        manifest_path,
        downloaded,
        skipped,
        bytes,
        elapsed: started.elapsed(),
    })
}

/// Downloads one part into memory and checks it against the manifest: at most
/// [`parts::PART_SIZE_BYTES`] are accepted (a bigger object is refused from its announced
/// length, or as soon as its body grows past the limit), and its SHA-1 must match before the
/// bytes are returned (a corrupt object is [`S3Error::Corrupt`], naming it).
async fn fetch_part(
    s3: &Client,
    location: &BundleLocation,
    part: &PartEntry,
) -> Result<Vec<u8>, S3Error> {
    retry_body(|| fetch_part_once(s3, location, part)).await
}

/// One GET of [`fetch_part`].
async fn fetch_part_once(
    s3: &Client,
    location: &BundleLocation,
    part: &PartEntry,
) -> Result<Vec<u8>, GetFailure> {
    let key = location.key(&part.filename);
    let bucket = &location.bucket;
    let out = s3
        .get_object()
        .bucket(bucket)
        .key(&key)
        .send()
        .await
        .map_err(|err| GetFailure::Final(request_error("downloading", bucket, &key, err)))?;
    let limit = parts::PART_SIZE_BYTES as u64;
    let too_large = |size| S3Error::PartTooLarge {
        bucket: bucket.clone(),
        key: key.clone(),
        size,
    };
    let announced = out.content_length().and_then(|l| u64::try_from(l).ok());
    if let Some(len) = announced.filter(|&len| len > limit) {
        return Err(GetFailure::Final(too_large(len)));
    }
    // Bounded by the check above: at most one part's worth is reserved.
    let mut data = Vec::with_capacity(
        announced
            .and_then(|len| usize::try_from(len).ok())
            .unwrap_or(0),
    );
    let mut body = out.body;
    while let Some(chunk) = body
        .try_next()
        .await
        .map_err(|e| GetFailure::Body(local_failure("downloading", bucket, &key, e)))?
    {
        let size = (data.len() + chunk.len()) as u64;
        if size > limit {
            return Err(GetFailure::Final(too_large(announced.unwrap_or(size))));
        }
        data.extend_from_slice(&chunk);
    }
    let actual = sha1_hex(&data);
    if !actual.eq_ignore_ascii_case(&part.digest) {
        return Err(GetFailure::Final(S3Error::Corrupt {
            bucket: bucket.clone(),
            key,
            expected: part.digest.clone(),
            actual,
        }));
    }
    Ok(data)
}

/// How often a reader waiting for the next part looks for SIGINT/SIGTERM, so an interrupt is
/// honoured promptly even while a slow GET is outstanding.
const INTERRUPT_POLL_MILLIS: u64 = 100;

/// A checked part on its way to the reader, with the permit that counts it against the memory
/// bound until the reader takes it.
type Delivery = Result<(Vec<u8>, tokio::sync::OwnedSemaphorePermit), S3Error>;

/// Where a [`PartStream`] keeps the S3 failure it hit, so the caller can report it as itself
/// rather than as the gzip or tar error the missing bytes caused upstream.
pub type StreamFailure = Arc<Mutex<Option<S3Error>>>;

/// What a [`PartStream`] needs to start its downloads (on the first read).
struct StreamPlan {
    runtime: tokio::runtime::Handle,
    s3: Client,
    location: BundleLocation,
    parts: Vec<PartEntry>,
    concurrency: usize,
}

/// A bundle's ciphertext read straight from S3: a blocking [`Read`] yielding the parts
/// concatenated in index order, for the synchronous decode pipeline
/// ([`pipeline::decode_ciphertext`]).
///
/// On the first read, a task on the given runtime starts GETting parts, up to `concurrency` at
/// once, in index order. Each part's SHA-1 is checked against the manifest before it is handed
/// on, and parts are delivered in index order whatever order they arrive in. Memory is bounded:
/// a semaphore of `concurrency` permits counts every part from the start of its GET until the
/// reader takes it, so at most `concurrency` parts are in flight or waiting, plus the one being
/// read: (`concurrency` + 1) × 10 MiB at worst. Nothing is written to disk.
///
/// A failed GET, a corrupt or oversized object, is kept in [`PartStream::failure`] and the read
/// fails; the downloads stop. Dropping the stream cancels any GET still running.
pub struct PartStream {
    plan: Option<StreamPlan>,
    rx: Option<mpsc::Receiver<Delivery>>,
    driver: Option<tokio::task::JoinHandle<()>>,
    bucket: String,
    keys: Vec<String>,
    received: usize,
    current: Vec<u8>,
    pos: usize,
    failed: bool,
    failure: StreamFailure,
    fetched: Arc<AtomicU64>,
}

impl std::fmt::Debug for PartStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PartStream")
            .field("bucket", &self.bucket)
            .field("parts", &self.keys.len())
            .field("received", &self.received)
            .finish()
    }
}

impl PartStream {
    /// A stream of the parts of `manifest` under `location`. Nothing is requested until the
    /// first read, so a caller that fails before reading (a wrong key) costs no GET. The reads
    /// block: call them from a thread outside `runtime` (not from async code).
    pub fn new(
        runtime: tokio::runtime::Handle,
        s3: Client,
        location: &BundleLocation,
        manifest: &Manifest,
        concurrency: usize,
    ) -> Self {
        let mut entries = manifest.image.parts.clone();
        entries.sort_by_key(|p| p.index);
        let keys = entries.iter().map(|p| location.key(&p.filename)).collect();
        Self {
            plan: Some(StreamPlan {
                runtime,
                s3,
                location: location.clone(),
                parts: entries,
                concurrency: concurrency.max(1),
            }),
            rx: None,
            driver: None,
            bucket: location.bucket.clone(),
            keys,
            received: 0,
            current: Vec::new(),
            pos: 0,
            failed: false,
            failure: StreamFailure::default(),
            fetched: Arc::new(AtomicU64::new(0)),
        }
    }

    /// The slot where the S3 failure that stopped the stream is kept.
    pub fn failure(&self) -> StreamFailure {
        self.failure.clone()
    }

    /// A counter of the part bytes downloaded so far.
    pub fn fetched(&self) -> Arc<AtomicU64> {
        self.fetched.clone()
    }

    fn start(&mut self) {
        let Some(plan) = self.plan.take() else {
            return;
        };
        let (tx, rx) = mpsc::channel();
        let fetched = self.fetched.clone();
        self.rx = Some(rx);
        self.driver = Some(plan.runtime.spawn(drive_downloads(
            plan.s3,
            plan.location,
            plan.parts,
            plan.concurrency,
            tx,
            fetched,
        )));
    }

    /// Waits for the next part, looking for a signal meanwhile. `Ok(Err(_))` is an S3 failure.
    fn next_part(&mut self) -> io::Result<Result<Vec<u8>, S3Error>> {
        self.start();
        let key = self.keys.get(self.received).cloned().unwrap_or_default();
        let Some(rx) = &self.rx else {
            return Ok(Err(local_failure(
                "downloading",
                &self.bucket,
                &key,
                "the download was never started",
            )));
        };
        loop {
            crate::interrupt::check()?;
            match rx.recv_timeout(Duration::from_millis(INTERRUPT_POLL_MILLIS)) {
                // The permit is dropped here: the part now counts as the one being read.
                Ok(delivery) => return Ok(delivery.map(|(data, _permit)| data)),
                Err(mpsc::RecvTimeoutError::Timeout) => continue,
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    return Ok(Err(local_failure(
                        "downloading",
                        &self.bucket,
                        &key,
                        "the download task stopped before this part arrived",
                    )));
                }
            }
        }
    }
}

impl Read for PartStream {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.failed {
            return Err(io::Error::other("the S3 download failed earlier"));
        }
        while self.pos == self.current.len() {
            // Release the finished part before waiting for the next one.
            self.current = Vec::new();
            self.pos = 0;
            if self.received == self.keys.len() {
                return Ok(0);
            }
            match self.next_part()? {
                Ok(data) => {
                    self.current = data;
                    self.received += 1;
                }
                Err(e) => {
                    self.failed = true;
                    let text = e.to_string();
                    if let Ok(mut slot) = self.failure.lock() {
                        slot.get_or_insert(e);
                    }
                    return Err(io::Error::other(text));
                }
            }
        }
        let n = out.len().min(self.current.len() - self.pos);
        out[..n].copy_from_slice(&self.current[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

impl Drop for PartStream {
    fn drop(&mut self) {
        // Cancels the GETs still running when the decode stopped early.
        if let Some(driver) = self.driver.take() {
            driver.abort();
        }
    }
}

/// The download side of a [`PartStream`]: GETs up to `concurrency` parts at once, each holding
/// a permit until the reader takes it, and sends them in index order; stops at the first
/// failure (sent too, in its place) or when the reader is gone.
async fn drive_downloads(
    s3: Client,
    location: BundleLocation,
    parts: Vec<PartEntry>,
    concurrency: usize,
    tx: mpsc::Sender<Delivery>,
    fetched: Arc<AtomicU64>,
) {
    let permits = Arc::new(tokio::sync::Semaphore::new(concurrency));
    let (s3, location, fetched) = (&s3, &location, &fetched);
    let fetches = stream::iter(parts)
        .map(|part| {
            let permits = permits.clone();
            async move {
                let permit = permits.acquire_owned().await.map_err(|e| {
                    let key = location.key(&part.filename);
                    local_failure("downloading", &location.bucket, &key, e)
                })?;
                let data = fetch_part(s3, location, &part).await?;
                fetched.fetch_add(data.len() as u64, Ordering::Relaxed);
                Ok((data, permit))
            }
        })
        .buffered(concurrency);
    let mut fetches = std::pin::pin!(fetches);
    while let Some(delivery) = fetches.next().await {
        let failed = delivery.is_err();
        // An unbounded channel cannot block the runtime; the permits bound what it holds.
        if tx.send(delivery).is_err() || failed {
            break;
        }
    }
}

/// What [`unbundle_stream`] did.
#[derive(Debug, Clone)]
pub struct StreamUnbundleReport {
    /// The decode: image path, size, tar digest.
    pub decode: DecodeReport,
    /// Parts downloaded (each exactly once).
    pub parts: usize,
    /// Part bytes downloaded.
    pub bytes: u64,
    /// Wall time of the download and decode.
    pub elapsed: Duration,
}

/// [`unbundle_stream`]'s choices (the image always goes to a directory).
#[derive(Debug, Clone, Copy, Default)]
pub struct StreamDecode {
    /// Replace an existing image file of the same name.
    pub overwrite: bool,
    /// Accept a manifest declaring an image above 10 GiB
    /// ([`pipeline::DecodeOptions::allow_oversize`]).
    pub allow_oversize: bool,
}

/// Downloads the parts of `manifest` from `location` and decodes them straight into the image
/// in `out_dir` ([`PartStream`] → [`pipeline::decode_ciphertext`]): no part is written to disk,
/// the image is a temporary file renamed only after every check passed, and on any failure
/// (a GET, a corrupt object, a wrong key, an interrupt) nothing is left behind. A failure of
/// the download is returned as itself, not as the decode error it caused.
///
/// Blocks; call it from outside `runtime`, which runs the downloads.
#[allow(clippy::too_many_arguments)]
pub fn unbundle_stream(
    runtime: &tokio::runtime::Handle,
    s3: &Client,
    location: &BundleLocation,
    manifest: &Manifest,
    key: &UserKey,
    out_dir: &Path,
    options: StreamDecode,
    concurrency: usize,
    progress: &dyn Progress,
) -> Result<StreamUnbundleReport, S3Error> {
    let started = Instant::now();
    let bundle_err = |e: crate::bundle::Error| S3Error::Bundle(Box::new(e));
    pipeline::check_declared_size(manifest, options.allow_oversize).map_err(bundle_err)?;
    let StreamDecode {
        overwrite,
        allow_oversize,
    } = options;
    // Cheap checks before any part is requested; decode_ciphertext repeats them when it knows
    // the tar member's name.
    match fs::metadata(out_dir) {
        Ok(meta) if meta.is_dir() => {}
        Ok(_) => {
            return Err(bundle_err(crate::bundle::Error::Destination {
                dir: out_dir.to_path_buf(),
                source: io::Error::new(io::ErrorKind::NotADirectory, "not a directory"),
            }));
        }
        Err(source) => {
            return Err(bundle_err(crate::bundle::Error::Destination {
                dir: out_dir.to_path_buf(),
                source,
            }));
        }
    }
    let image = out_dir.join(&manifest.image.name);
    if !overwrite && fs::symlink_metadata(&image).is_ok() {
        return Err(bundle_err(crate::bundle::Error::Exists(image)));
    }
    let source = PartStream::new(runtime.clone(), s3.clone(), location, manifest, concurrency);
    let failure = source.failure();
    let fetched = source.fetched();
    let parts = manifest.image.parts.len();
    let decode = pipeline::decode_ciphertext(
        manifest,
        key,
        source,
        pipeline::DecodeOptions {
            out_dir: Some(out_dir),
            overwrite,
            allow_oversize,
        },
        progress,
    )
    .map_err(|e| match failure.lock().ok().and_then(|mut f| f.take()) {
        Some(s3_error) => s3_error,
        None => bundle_err(e),
    })?;
    Ok(StreamUnbundleReport {
        decode,
        parts,
        bytes: fetched.load(Ordering::Relaxed),
        elapsed: started.elapsed(),
    })
}

/// What [`delete_bundle`] removed.
#[derive(Debug, Clone, Default)]
pub struct DeleteReport {
    /// Keys deleted.
    pub deleted: Vec<String>,
    /// Whether the bucket was removed (`--clear`).
    pub bucket_removed: bool,
}

/// Deletes the manifest first (so a half-deleted bundle is never registrable), then exactly the
/// parts it names, never other objects; with `clear`, the bucket too if it is then empty.
pub async fn delete_bundle(
    s3: &Client,
    location: &BundleLocation,
    manifest_name: &str,
    manifest: &Manifest,
    clear: bool,
) -> Result<DeleteReport, S3Error> {
    let mut report = DeleteReport::default();
    let manifest_key = location.key(manifest_name);
    s3.delete_object()
        .bucket(&location.bucket)
        .key(&manifest_key)
        .send()
        .await
        .map_err(|err| request_error("deleting", &location.bucket, &manifest_key, err))?;
    report.deleted.push(manifest_key);
    let keys: Vec<String> = manifest
        .image
        .parts
        .iter()
        .map(|p| location.key(&p.filename))
        .collect();
    delete_keys(s3, &location.bucket, &keys).await?;
    report.deleted.extend(keys);
    if clear {
        match s3.delete_bucket().bucket(&location.bucket).send().await {
            Ok(_) => report.bucket_removed = true,
            Err(err) if err.code() == Some("BucketNotEmpty") => {
                tracing::warn!(
                    "bucket {} still holds other objects; it was kept",
                    location.bucket
                );
            }
            Err(err) => return Err(request_error("deleting bucket", &location.bucket, "", err)),
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_parse_like_ec2_upload_bundle() {
        let l = BundleLocation::parse("my-bucket").unwrap();
        assert_eq!((l.bucket.as_str(), l.prefix.as_str()), ("my-bucket", ""));
        let l = BundleLocation::parse("/my-bucket/a/b/").unwrap();
        assert_eq!(
            (l.bucket.as_str(), l.prefix.as_str()),
            ("my-bucket", "a/b/")
        );
        let l = BundleLocation::parse("s3://my-bucket/images").unwrap();
        assert_eq!(l.key("x.manifest.xml"), "images/x.manifest.xml");
        assert_eq!(
            l.image_location("x.manifest.xml"),
            "my-bucket/images/x.manifest.xml"
        );
        assert!(BundleLocation::parse("my-bucket/a//b").is_err());
        assert!(BundleLocation::parse("my-bucket/../b").is_err());
        assert!(BundleLocation::parse("My_Bucket").is_err());
    }

    #[test]
    fn bucket_names_follow_s3_rules() {
        for ok in [
            "abc",
            "amibundle-123456789012-eu-west-1",
            "a.b-c",
            &"a".repeat(63),
        ] {
            assert!(validate_bucket_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "ab",
            &"a".repeat(64),
            "Abc",
            "a_b",
            "-ab",
            "ab-",
            "a..b",
            "a.-b",
            "192.168.5.4",
            "xn--abc",
            "abc-s3alias",
            "",
        ] {
            let err = validate_bucket_name(bad).unwrap_err().to_string();
            assert!(err.contains("not valid"), "{bad}: {err}");
        }
    }

    #[test]
    fn default_bucket_is_per_account_and_region_and_valid() {
        let name = default_bucket_name("123456789012", "ap-southeast-2");
        assert_eq!(name, "amibundle-123456789012-ap-southeast-2");
        validate_bucket_name(&name).unwrap();
    }

    #[test]
    fn legacy_locations_map_to_regions() {
        assert_eq!(crate::cloud::config::region_of_location(None), "us-east-1");
        assert_eq!(
            crate::cloud::config::region_of_location(Some("")),
            "us-east-1"
        );
        assert_eq!(
            crate::cloud::config::region_of_location(Some("US")),
            "us-east-1"
        );
        assert_eq!(
            crate::cloud::config::region_of_location(Some("EU")),
            "eu-west-1"
        );
        assert_eq!(
            crate::cloud::config::region_of_location(Some("eu-central-1")),
            "eu-central-1"
        );
    }

    #[test]
    fn access_problems_are_classified() {
        let req = |code: Option<&str>, status| {
            S3Error::Request(Box::new(RequestFailure {
                action: "uploading",
                bucket: "b".into(),
                key: "k".into(),
                code: code.map(str::to_string),
                status,
                detail: String::new(),
                hint: String::new(),
            }))
        };
        assert!(S3Error::NotYours { bucket: "b".into() }.is_access_problem());
        assert!(S3Error::AclsDisabled { bucket: "b".into() }.is_access_problem());
        assert!(req(Some("AccessDenied"), Some(403)).is_access_problem());
        assert!(req(Some("AccessControlListNotSupported"), Some(400)).is_access_problem());
        assert!(req(None, Some(403)).is_access_problem());
        assert!(!req(Some("SlowDown"), Some(503)).is_access_problem());
        assert!(
            !S3Error::RegionMismatch {
                bucket: "b".into(),
                actual: "x".into(),
                wanted: "y".into()
            }
            .is_access_problem()
        );
    }
}
