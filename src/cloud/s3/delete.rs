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

/// The objects of bundle `name` under `location` found by listing (every page), whether or not
/// its manifest is still there: `NAME.manifest.xml`, `NAME.manifest` (an older manifest name
/// the reference removes too) and `NAME.part.N` (N decimal digits): what a failed upload
/// leaves behind. Keys are matched exactly after the prefix, so nothing of another bundle (nor
/// of `NAME-2` or a "directory" `NAME.part.1/…`) is taken.
pub async fn bundle_keys_by_name(
    s3: &Client,
    location: &BundleLocation,
    name: &str,
) -> Result<BundleObjects, S3Error> {
    let listed = super::list_objects(s3, &location.bucket, &location.key(name)).await?;
    Ok(bundle_keys_in(
        listed.keys().map(String::as_str),
        location,
        name,
    ))
}

/// A bundle's objects found by listing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BundleObjects {
    /// Its manifests, `.manifest.xml` first.
    pub manifests: Vec<String>,
    /// Its parts, by index.
    pub parts: Vec<String>,
}

impl BundleObjects {
    /// Every key, manifests first.
    pub fn keys(&self) -> impl Iterator<Item = &String> {
        self.manifests.iter().chain(&self.parts)
    }

    /// Whether nothing was found.
    pub fn is_empty(&self) -> bool {
        self.manifests.is_empty() && self.parts.is_empty()
    }
}

/// The keys of bundle `name` among `keys` (see [`bundle_keys_by_name`]).
fn bundle_keys_in<'a>(
    keys: impl Iterator<Item = &'a str>,
    location: &BundleLocation,
    name: &str,
) -> BundleObjects {
    let base = location.key(name);
    let mut manifests = Vec::new();
    let mut parts: Vec<(u64, String)> = Vec::new();
    for key in keys {
        let Some(rest) = key.strip_prefix(base.as_str()) else {
            continue;
        };
        if rest == ".manifest.xml" || rest == ".manifest" {
            manifests.push(key.to_string());
        } else if let Some(n) = rest.strip_prefix(".part.") {
            if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) {
                parts.push((n.parse().unwrap_or(u64::MAX), key.to_string()));
            }
        }
    }
    manifests.sort();
    // `.manifest.xml` after `.manifest` in byte order: reversed, it goes first.
    manifests.reverse();
    parts.sort();
    BundleObjects {
        manifests,
        parts: parts.into_iter().map(|(_, k)| k).collect(),
    }
}

/// Deletes exactly `objects` (from [`bundle_keys_by_name`]): the manifests first, so that a
/// half-deleted bundle is never registrable, then the parts; with `clear`, the bucket too if it
/// is then empty.
pub async fn delete_listed(
    s3: &Client,
    location: &BundleLocation,
    objects: BundleObjects,
    clear: bool,
) -> Result<DeleteReport, S3Error> {
    delete_keys(s3, &location.bucket, &objects.manifests).await?;
    delete_keys(s3, &location.bucket, &objects.parts).await?;
    let mut report = DeleteReport {
        deleted: objects.manifests.into_iter().chain(objects.parts).collect(),
        bucket_removed: false,
    };
    if clear {
        report.bucket_removed = clear_bucket(s3, &location.bucket).await?;
    }
    Ok(report)
}

/// Deletes `bucket` if it is empty; a bucket still holding other objects is kept (warned).
async fn clear_bucket(s3: &Client, bucket: &str) -> Result<bool, S3Error> {
    match s3.delete_bucket().bucket(bucket).send().await {
        Ok(_) => Ok(true),
        Err(err) if err.code() == Some("BucketNotEmpty") => {
            tracing::warn!("bucket {bucket} still holds other objects; it was kept");
            Ok(false)
        }
        Err(err) => Err(request_error("deleting bucket", bucket, "", err)),
    }
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
        report.bucket_removed = clear_bucket(s3, &location.bucket).await?;
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_named_bundles_objects_are_taken_from_a_listing_manifests_first() {
        let location = BundleLocation::parse("bkt/builds").unwrap();
        let listed = [
            "builds/web.part.10",
            "builds/web.part.2",
            "builds/web.manifest.xml",
            "builds/web.manifest",
            "builds/web.part.",
            "builds/web.part.3x",
            "builds/web.part.1/evil",
            "builds/web-2.part.0",
            "builds/web-2.manifest.xml",
            "builds/web.partial",
            "builds/web.manifest.xml.bak",
            "builds/other/web.part.0",
            "builds/web.part.0",
        ];
        let found = bundle_keys_in(listed.into_iter(), &location, "web");
        assert_eq!(
            found.manifests,
            ["builds/web.manifest.xml", "builds/web.manifest"]
        );
        assert_eq!(
            found.parts,
            [
                "builds/web.part.0",
                "builds/web.part.2",
                "builds/web.part.10"
            ]
        );
    }
}
