//! Copying a bundle into another region (issue 5, docs/reference-behaviour.md §15): the parts
//! are copied server-side into a bucket of that region (CopyObject, never through this
//! machine), the manifest is re-wrapped for the region's EC2 certificate and re-signed
//! (`crate::bundle::migrate`), and uploaded last: it is the commit point.
//!
//! Re-runs are cheap and safe. A part already at the destination with the source's size and
//! ETag (the MD5 of its bytes, for a part stored with one PUT) is not copied again; a manifest already there that describes the same bundle, signed by
//! the same user and wrapped for the same EC2 certificate (recorded in the object's metadata,
//! since RSA padding is random and the wrapped fields cannot be compared), is not uploaded
//! again. A destination manifest of a *different* bundle is never replaced: an AMI registered
//! from it would stop working.

use std::collections::HashMap;

use aws_sdk_s3::Client;
use aws_sdk_s3::error::ProvideErrorMetadata;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::ObjectCannedAcl;
use futures::stream::{self, StreamExt, TryStreamExt};

use crate::bundle::crypto::{Certificate, UserKey};
use crate::bundle::manifest::{self, Manifest, PartEntry};
use crate::bundle::migrate::{self, Changes, MigrateError};
use crate::cloud::s3::{self, BucketPolicy, BucketState, BundleLocation, S3Error};

mod regions;
pub use regions::{
    CopyRegistration, FanOut, MAX_PARALLEL_REGIONS, RegionDone, RegionTarget, Source, SourceRef,
    copy_to_regions, destination, plan, resolve_targets,
};

/// User metadata on a copied manifest naming the EC2 certificate its `ec2_*` fields are
/// wrapped for (SHA-256 of the certificate's DER, uppercase colon-separated as `certs` prints
/// it). Sent as `x-amz-meta-amibundle-ec2cert-sha256`.
pub const EC2_CERT_METADATA: &str = "amibundle-ec2cert-sha256";

/// What went wrong copying a bundle into a region.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    /// An S3 request failed.
    #[error(transparent)]
    S3(#[from] S3Error),
    /// Re-wrapping the manifest failed.
    #[error(transparent)]
    Migrate(#[from] MigrateError),
    /// A part the source manifest names is not in the source bucket.
    #[error("source part s3://{bucket}/{key} does not exist: the source bundle is incomplete")]
    MissingSourcePart {
        /// Source bucket.
        bucket: String,
        /// Its key.
        key: String,
    },
    /// The copy's ETag differs from the source object's.
    #[error(
        "the copy of {source_object} to {copy} has ETag {actual}, the source has {expected}: the copy is not identical"
    )]
    CopyMismatch {
        /// `s3://bucket/key` of the source.
        source_object: String,
        /// `s3://bucket/key` of the copy.
        copy: String,
        /// Source ETag.
        expected: String,
        /// Copy ETag.
        actual: String,
    },
    /// The destination is the source itself.
    #[error(
        "the destination s3://{bucket}/{key} is the source bundle itself; choose another --bucket-template"
    )]
    SameLocation {
        /// Bucket.
        bucket: String,
        /// Manifest key.
        key: String,
    },
    /// A region's EC2 certificate could not be chosen.
    #[error("copying to {region}")]
    Ec2Cert {
        /// The region.
        region: String,
        /// Why.
        #[source]
        source: crate::bundle::certs::CertError,
    },
    /// A region's EC2 certificate could not be used.
    #[error("copying to {region}: reading the EC2 certificate {}", path.display())]
    Ec2CertUnusable {
        /// The region.
        region: String,
        /// The certificate file.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The source manifest is not signed by the user's key.
    #[error(
        "checking the source manifest {location} with the user certificate (--cert): copies are \
         re-signed with the user key, so it must be the bundle's own"
    )]
    SourceSignature {
        /// `bucket/prefix/name.manifest.xml`.
        location: String,
        /// Why.
        #[source]
        source: crate::bundle::manifest::ManifestError,
    },
    /// A paravirtual source AMI boots a kernel whose id differs in other regions.
    #[error(
        "source AMI {ami} is paravirtual and boots kernel {kernel}, whose id differs in other \
         regions: pass --kernel-id (and --ramdisk-id) with the ids in the target region"
    )]
    PvKernel {
        /// The source AMI.
        ami: String,
        /// Its kernel.
        kernel: String,
    },
    /// Kernel or ramdisk ids for HVM copies.
    #[error(
        "--kernel-id/--ramdisk-id are for paravirtual AMIs, and the copies would be HVM (which \
         boot their own kernel){hint}"
    )]
    KernelForHvm {
        /// How to make them paravirtual, when that is possible.
        hint: &'static str,
    },
    /// The destination template does not expand to a bucket.
    #[error("checking the destination {text:?} (--bucket-template)")]
    Destination {
        /// The expanded text.
        text: String,
        /// Why.
        #[source]
        source: S3Error,
    },
    /// Registering a copy failed.
    #[error("registering {image_location}")]
    Register {
        /// The copy's location.
        image_location: String,
        /// Why.
        #[source]
        source: crate::cloud::ec2::Ec2Error,
    },
    /// A signal arrived between the copy and its registration.
    #[error(transparent)]
    Interrupted(std::io::Error),
    /// One region's copy failed.
    #[error("copying {image_location} to {region}")]
    InRegion {
        /// The region.
        region: String,
        /// The source's location.
        image_location: String,
        /// Why.
        #[source]
        source: Box<CopyError>,
    },
    /// A target region is not shaped like a region name.
    #[error("--to-region {0:?} is not a region name (for example eu-west-1)")]
    BadRegion(String),
    /// No target region.
    #[error("--to-region names no region")]
    NoRegions,
    /// An EC2 certificate was given for a region that is not a target.
    #[error("--ec2cert names region {0}, which is not in --to-region")]
    CertForOtherRegion(String),
    /// The source AMI is looked up in the configured region, and there is none.
    #[error("--ami is looked up in --region, and no region is configured")]
    NoSourceRegion(#[source] crate::cloud::config::ConfigError),
    /// The source AMI could not be described.
    #[error(transparent)]
    SourceAmi(#[from] crate::cloud::ec2::Ec2Error),
    /// The source bundle could not be read or is incomplete.
    #[error("reading the source manifest {location}")]
    Source {
        /// `bucket/prefix/name.manifest.xml`.
        location: String,
        /// Why.
        #[source]
        source: Box<CopyError>,
    },
    /// Another bundle's manifest is at the destination.
    #[error(
        "s3://{bucket}/{key} already holds a different bundle ({why}); refusing to replace it, since an AMI registered from it would stop working: delete it (amibundle delete) or choose another --bucket-template"
    )]
    OtherBundle {
        /// Bucket.
        bucket: String,
        /// Manifest key.
        key: String,
        /// How it differs.
        why: String,
    },
}

impl CopyError {
    /// Bucket ownership and access problems (exit code 3).
    pub fn is_access_problem(&self) -> bool {
        match self {
            Self::S3(e) => e.is_access_problem(),
            Self::InRegion { source, .. } | Self::Source { source, .. } => {
                source.is_access_problem()
            }
            _ => false,
        }
    }
}

/// The bundle being copied: where it is, its manifest and what its bucket holds.
#[derive(Debug, Clone)]
pub struct CopySource {
    /// Bucket and prefix.
    pub location: BundleLocation,
    /// `<name>.manifest.xml`.
    pub manifest_name: String,
    /// The parsed source manifest (its signature checked by the caller).
    pub manifest: Manifest,
    /// Size and ETag of every object under the source prefix ([`s3::list_objects`]).
    pub objects: HashMap<String, (u64, String)>,
}

impl CopySource {
    /// The source object of `part`, or [`CopyError::MissingSourcePart`].
    fn object(&self, part: &PartEntry) -> Result<(String, u64, String), CopyError> {
        let key = self.location.key(&part.filename);
        match self.objects.get(&key) {
            Some((size, etag)) => Ok((key, *size, etag.clone())),
            None => Err(CopyError::MissingSourcePart {
                bucket: self.location.bucket.clone(),
                key,
            }),
        }
    }

    /// Checks that every part of the manifest is in the source bucket.
    pub fn check_complete(&self) -> Result<(), CopyError> {
        for part in &self.manifest.image.parts {
            self.object(part)?;
        }
        Ok(())
    }
}

/// One region to copy into.
#[derive(Debug)]
pub struct CopyTarget<'a> {
    /// The region.
    pub region: String,
    /// An S3 client for that region.
    pub client: Client,
    /// Destination bucket (in `region`) and prefix.
    pub location: BundleLocation,
    /// The account that must own the bucket (the manifest's `image/user`).
    pub account: String,
    /// Create the bucket, fix its ownership controls.
    pub bucket_policy: BucketPolicy,
    /// Canned ACL of every object (EC2 needs `aws-exec-read`).
    pub acl: String,
    /// Parts copied at once.
    pub concurrency: usize,
    /// The user's key: unwraps the AES key and IV, signs the new manifest.
    pub user_key: &'a UserKey,
    /// The user's certificate: checks an existing destination manifest.
    pub user_cert: &'a Certificate,
    /// The region's EC2 certificate.
    pub ec2_cert: &'a Certificate,
    /// Its SHA-256 fingerprint (recorded as [`EC2_CERT_METADATA`]).
    pub ec2_cert_sha256: String,
    /// Kernel and ramdisk changes.
    pub changes: Changes,
}

/// What [`copy_bundle`] did in one region.
#[derive(Debug, Clone)]
pub struct RegionCopy {
    /// Where the copy is.
    pub location: BundleLocation,
    /// `bucket/prefix/name.manifest.xml`, for RegisterImage.
    pub image_location: String,
    /// Whether the bucket was created now.
    pub bucket_created: bool,
    /// Parts copied now.
    pub copied: Vec<String>,
    /// Parts already there (same size and ETag).
    pub skipped: Vec<String>,
    /// Bytes copied server-side.
    pub bytes_copied: u64,
    /// Whether the manifest was uploaded (false when an identical one was there).
    pub manifest_uploaded: bool,
    /// The region's manifest.
    pub manifest: Manifest,
}

/// What is at the destination manifest key.
enum Existing {
    /// Nothing.
    Absent,
    /// The same bundle, manifest and EC2 certificate: nothing to upload.
    Current,
    /// The same bundle, but the manifest must be written again (another EC2 certificate,
    /// another kernel, not signed by this user).
    Stale,
}

/// Copies `source` into `target.location`: ensures the bucket (in the region, ours, ACLs
/// usable), refuses to replace another bundle's manifest, copies the parts that are not already
/// there server-side (`concurrency` at once, each with the ACL, each copy's ETag checked against
/// the source's), then uploads the re-wrapped manifest last.
///
/// # Errors
///
/// [`CopyError`]; nothing is deleted on failure: the parts already copied are what the next run
/// skips, and without the manifest they are not a bundle.
pub async fn copy_bundle(
    source: &CopySource,
    target: &CopyTarget<'_>,
) -> Result<RegionCopy, CopyError> {
    let s3 = &target.client;
    let dest = &target.location;
    let manifest_key = dest.key(&source.manifest_name);
    if dest == &source.location {
        return Err(CopyError::SameLocation {
            bucket: dest.bucket.clone(),
            key: manifest_key,
        });
    }
    source.check_complete()?;
    // Re-wrapping first: a wrong key fails before anything is created.
    let migrated = migrate::rewrap(
        &source.manifest,
        target.user_key,
        target.ec2_cert,
        &target.changes,
    )?;
    let state = s3::ensure_bucket(
        s3,
        &dest.bucket,
        &target.region,
        Some(&target.account),
        target.bucket_policy,
    )
    .await?;
    let existing = match state {
        BucketState::Created => Existing::Absent,
        BucketState::Existing => {
            existing_manifest(s3, dest, &manifest_key, &migrated, target).await?
        }
    };

    let present = match state {
        BucketState::Created => HashMap::new(),
        BucketState::Existing => s3::list_objects(s3, &dest.bucket, &dest.prefix).await?,
    };
    let mut todo = Vec::new();
    let mut skipped = Vec::new();
    for part in &source.manifest.image.parts {
        let (src_key, size, etag) = source.object(part)?;
        let dest_key = dest.key(&part.filename);
        // A copy's ETag is the MD5 of its bytes, and so is the source's when it was a single
        // PUT (amibundle, ec2-upload-bundle): equal ETags mean equal bytes. A source uploaded
        // in several pieces (`aws s3 cp` above 8 MiB) has a multipart ETag ("…-N") that no copy
        // matches, so such a part is copied on every run: correct, only not resumable.
        if !is_multipart_etag(&etag) && present.get(&dest_key) == Some(&(size, etag.clone())) {
            skipped.push(part.filename.clone());
        } else {
            todo.push((part.filename.clone(), src_key, dest_key, size, etag));
        }
    }
    let acl = ObjectCannedAcl::from(target.acl.as_str());
    let copy =
        |(filename, src_key, dest_key, size, etag): (String, String, String, u64, String)| {
            let acl = acl.clone();
            async move {
                crate::interrupt::check()
                    .map_err(|e| s3::local_failure("copying to", &dest.bucket, &dest_key, e))?;
                copy_object(
                    s3,
                    &source.location.bucket,
                    &src_key,
                    dest,
                    &dest_key,
                    &etag,
                    acl,
                )
                .await?;
                tracing::debug!(
                    "{}: copied s3://{}/{src_key} to s3://{}/{dest_key}",
                    target.region,
                    source.location.bucket,
                    dest.bucket
                );
                Ok::<_, CopyError>((filename, size))
            }
        };
    let done: Vec<(String, u64)> = stream::iter(todo.into_iter().map(copy))
        .buffer_unordered(target.concurrency.max(1))
        .try_collect()
        .await?;
    let bytes_copied = done.iter().map(|d| d.1).sum();
    let mut copied: Vec<String> = done.into_iter().map(|d| d.0).collect();
    copied.sort();

    let manifest_uploaded = match existing {
        Existing::Current => false,
        Existing::Absent | Existing::Stale => {
            crate::interrupt::check()
                .map_err(|e| s3::local_failure("uploading", &dest.bucket, &manifest_key, e))?;
            let xml = migrated
                .to_xml()
                .map_err(|source| MigrateError::Manifest { source })?;
            put_manifest(s3, dest, &manifest_key, xml.into_bytes(), &acl, target).await?;
            true
        }
    };
    Ok(RegionCopy {
        location: dest.clone(),
        image_location: dest.image_location(&source.manifest_name),
        bucket_created: state == BucketState::Created,
        copied,
        skipped,
        bytes_copied,
        manifest_uploaded,
        manifest: migrated,
    })
}

/// `CopyObject` of one part into `dest`, with the ACL; the copy's ETag must equal the source's.
async fn copy_object(
    s3: &Client,
    src_bucket: &str,
    src_key: &str,
    dest: &BundleLocation,
    dest_key: &str,
    src_etag: &str,
    acl: ObjectCannedAcl,
) -> Result<(), CopyError> {
    let out = s3
        .copy_object()
        .bucket(&dest.bucket)
        .key(dest_key)
        .copy_source(copy_source(src_bucket, src_key))
        // Only the object we listed: a source replaced meanwhile fails instead of mixing
        // bundles.
        .copy_source_if_match(format!("\"{src_etag}\""))
        .acl(acl)
        .send()
        .await
        .map_err(|err| s3::request_error("copying to", &dest.bucket, dest_key, err))?;
    if is_multipart_etag(src_etag) {
        // Nothing to compare the copy's MD5 ETag with; the condition above pinned the source.
        return Ok(());
    }
    let actual = out
        .copy_object_result()
        .and_then(|r| r.e_tag())
        .unwrap_or_default()
        .trim_matches('"')
        .to_ascii_lowercase();
    if actual != src_etag {
        return Err(CopyError::CopyMismatch {
            source_object: format!("s3://{src_bucket}/{src_key}"),
            copy: format!("s3://{}/{dest_key}", dest.bucket),
            expected: src_etag.to_string(),
            actual,
        });
    }
    Ok(())
}

/// A multipart upload's ETag (`<md5 of the part MD5s>-<part count>`), which is not the MD5 of
/// the object's bytes.
fn is_multipart_etag(etag: &str) -> bool {
    etag.contains('-')
}

/// `x-amz-copy-source`: `bucket/key`, the key percent-encoded except `/` (S3 decodes it).
fn copy_source(bucket: &str, key: &str) -> String {
    let mut out = format!("{bucket}/");
    for b in key.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b'/') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Uploads the manifest with Content-MD5, the ACL and the EC2 certificate it is wrapped for.
async fn put_manifest(
    s3: &Client,
    dest: &BundleLocation,
    key: &str,
    data: Vec<u8>,
    acl: &ObjectCannedAcl,
    target: &CopyTarget<'_>,
) -> Result<(), CopyError> {
    use base64::Engine;
    use md5::Digest;
    let md5 = base64::engine::general_purpose::STANDARD.encode(md5::Md5::digest(&data));
    s3.put_object()
        .bucket(&dest.bucket)
        .key(key)
        .content_md5(md5)
        .acl(acl.clone())
        .metadata(EC2_CERT_METADATA, &target.ec2_cert_sha256)
        .body(ByteStream::from(data))
        .send()
        .await
        .map_err(|err| s3::request_error("uploading", &dest.bucket, key, err))?;
    Ok(())
}

/// Reads the manifest already at the destination, if any, and compares it with `wanted`.
async fn existing_manifest(
    s3: &Client,
    dest: &BundleLocation,
    key: &str,
    wanted: &Manifest,
    target: &CopyTarget<'_>,
) -> Result<Existing, CopyError> {
    let out = match s3.get_object().bucket(&dest.bucket).key(key).send().await {
        Ok(out) => out,
        Err(err)
            if err.code() == Some("NoSuchKey")
                || err
                    .raw_response()
                    .is_some_and(|r| r.status().as_u16() == 404) =>
        {
            return Ok(Existing::Absent);
        }
        Err(err) => return Err(s3::request_error("downloading", &dest.bucket, key, err).into()),
    };
    let recorded_cert = out
        .metadata()
        .and_then(|m| m.get(EC2_CERT_METADATA))
        .cloned();
    let raw = out
        .body
        .collect()
        .await
        .map_err(|e| s3::local_failure("downloading", &dest.bucket, key, e))?
        .into_bytes();
    let other = |why: String| CopyError::OtherBundle {
        bucket: dest.bucket.clone(),
        key: key.to_string(),
        why,
    };
    let found = Manifest::parse(&raw).map_err(|e| other(format!("it does not parse: {e}")))?;
    if let Some(why) = bundle_difference(&found, wanted) {
        return Err(other(why));
    }
    let signed_by_user = manifest::verify_signature(&raw, &found, target.user_cert).is_ok();
    let same = signed_by_user
        && found.machine == wanted.machine
        && found.version == wanted.version
        && recorded_cert.as_deref() == Some(target.ec2_cert_sha256.as_str());
    Ok(if same {
        Existing::Current
    } else {
        Existing::Stale
    })
}

/// How `found` describes another bundle than `wanted` (another image, other parts or another
/// user side), if it does; the EC2 side and the signature are ignored.
fn bundle_difference(found: &Manifest, wanted: &Manifest) -> Option<String> {
    let (a, b) = (&found.image, &wanted.image);
    if a.name != b.name || a.user != b.user {
        return Some(format!("image {} of account {}", a.name, a.user));
    }
    if !a.digest.eq_ignore_ascii_case(&b.digest) || a.size != b.size {
        return Some(format!("image digest {}", a.digest));
    }
    let parts_differ = a.parts.len() != b.parts.len()
        || a.parts
            .iter()
            .zip(&b.parts)
            .any(|(x, y)| x.filename != y.filename || !x.digest.eq_ignore_ascii_case(&y.digest));
    if parts_differ || a.bundled_size != b.bundled_size {
        return Some("other parts".to_string());
    }
    let user_side = |hex: &str| hex.trim_start_matches('0').to_ascii_lowercase();
    if user_side(&a.user_encrypted_key) != user_side(&b.user_encrypted_key)
        || user_side(&a.user_encrypted_iv) != user_side(&b.user_encrypted_iv)
    {
        return Some("another encryption key".to_string());
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_source_encodes_the_key_but_not_its_slashes() {
        assert_eq!(
            copy_source("src-bucket", "images/web/x.img.part.0"),
            "src-bucket/images/web/x.img.part.0"
        );
        assert_eq!(copy_source("b", "a b/c+d%"), "b/a%20b/c%2Bd%25");
    }

    #[test]
    fn bundle_difference_ignores_only_the_ec2_side_and_signature() {
        let raw = std::fs::read(
            crate::test_data().join("peer-bundles/v2-three-parts/random.img.manifest.xml"),
        )
        .unwrap();
        let base = Manifest::parse(&raw).unwrap();
        let mut same = base.clone();
        same.image.ec2_encrypted_key = "00".repeat(128);
        same.image.ec2_encrypted_iv = "11".repeat(128);
        same.signature = "22".repeat(256);
        same.image.digest = same.image.digest.to_ascii_uppercase();
        assert_eq!(bundle_difference(&same, &base), None);

        type Mutation = fn(&mut Manifest);
        let cases: [(&str, Mutation); 6] = [
            ("name", |m| m.image.name = "other.img".into()),
            ("user", |m| m.image.user = "210987654321".into()),
            ("digest", |m| m.image.digest = "0".repeat(40)),
            ("part", |m| m.image.parts[1].digest = "0".repeat(40)),
            ("parts", |m| {
                m.image.parts.pop();
            }),
            ("key", |m| m.image.user_encrypted_key = "ab".repeat(256)),
        ];
        for (what, mutate) in cases {
            let mut m = base.clone();
            mutate(&mut m);
            assert!(bundle_difference(&m, &base).is_some(), "{what}");
        }
    }
}
