//! The concurrent, resumable upload of a local bundle ([`upload_bundle`]), the manifest last,
//! and the PUT of one bundle file ([`put_bundle_object`]).

use std::collections::HashMap;
use std::fs;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use aws_sdk_s3::Client;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::ObjectCannedAcl;
use base64::Engine;
use futures::stream::{self, StreamExt, TryStreamExt};
use md5::{Digest as _, Md5};

use super::{
    BundleLocation, DEFAULT_ACL, DEFAULT_CONCURRENCY, S3Error, list_objects, request_error,
};
use crate::bundle::pipeline::LocalBundle;
use crate::progress::Progress;

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
