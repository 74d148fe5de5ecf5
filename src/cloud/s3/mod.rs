//! S3: where a bundle lives, the bucket preflight (region, ownership, ACLs), concurrent
//! resumable uploads with the manifest last, downloads checked part by part, streaming a bundle
//! straight into an image ([`PartStream`], [`unbundle_stream`]) and deletes of exactly the
//! objects a manifest names.
//!
//! This file holds the shared constants and the errors ([`S3Error`]); each job has its own
//! file, re-exported here: `location` (bundle locations, bucket names), `bucket` (preflight and
//! creation), `list` (listing, existence checks), `upload`, `download`, `unbundle` (streaming
//! a bundle into an image) and `delete`.

use std::path::PathBuf;

use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};

use crate::bundle::parts;

mod bucket;
mod delete;
mod download;
mod list;
mod location;
#[cfg(test)]
mod tests;
mod unbundle;
mod upload;

pub use self::bucket::{
    BucketPolicy, BucketState, bucket_region, client_for_bucket, ensure_bucket,
};
pub use self::delete::{
    BundleObjects, DeleteReport, bundle_keys_by_name, delete_bundle, delete_keys, delete_listed,
};
pub use self::download::{DownloadReport, download_bundle, fetch_manifest};
pub use self::list::{list_objects, object_exists};
pub use self::location::{BundleLocation, default_bucket_name, validate_bucket_name};
pub use self::unbundle::{PartStream, StreamFailure, StreamUnbundleReport, unbundle_stream};
pub use self::upload::{UploadOptions, UploadReport, put_bundle_object, upload_bundle};

/// Parts uploaded or downloaded at once by default. S3 serves each connection far slower than
/// an instance's network interface (AWS sizes it at 85–90 MB/s a request), so throughput grows
/// with the parts in flight until the interface is full; under the benchmarks' network model
/// (docs/benchmarks.md: a sixth of the interface per connection) 12 reached the plateau that 8
/// fell short of, since every part also spends a first-byte latency and its hashing idle on its
/// connection. Each holds one 10 MiB part in memory, so the default costs about 120 MiB; S3
/// itself takes thousands of requests per second per prefix.
pub const DEFAULT_CONCURRENCY: usize = 12;

/// The canned ACL EC2 needs on every object of a bundle: owner FULL_CONTROL plus read access for
/// EC2's AMI service (RegisterImage documentation).
pub const DEFAULT_ACL: &str = "aws-exec-read";

/// The canned ACLs a bundle may be uploaded with: [`DEFAULT_ACL`], or `public-read` (anyone may
/// read the parts, as the reference tools allowed).
pub const ACLS: [&str; 2] = [DEFAULT_ACL, "public-read"];

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
