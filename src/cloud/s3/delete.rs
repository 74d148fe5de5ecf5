//! Deleting a bundle: the manifest first, then exactly the parts it names ([`delete_bundle`]),
//! and batched deletes of given keys ([`delete_keys`]).

use aws_sdk_s3::Client;
use aws_sdk_s3::error::ProvideErrorMetadata;
use aws_sdk_s3::types::{Delete, ObjectIdentifier};

use super::{BundleLocation, RequestFailure, S3Error, local_failure, request_error};
use crate::bundle::manifest::Manifest;

/// Objects removed per DeleteObjects call (the S3 maximum).
const DELETE_BATCH: usize = 1000;

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
