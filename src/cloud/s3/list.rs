//! Listing the objects under a prefix and checking whether one exists.

use std::collections::HashMap;

use aws_sdk_s3::Client;

use super::{S3Error, request_error};

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
