//! Checked downloads: the manifest ([`fetch_manifest`]), a whole bundle into a directory
//! ([`download_bundle`]), and single parts checked against the manifest's size limit and SHA-1
//! ([`fetch_part`]), with GETs whose body breaks off retried.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use aws_sdk_s3::Client;
use futures::stream::{self, StreamExt, TryStreamExt};
use sha1::{Digest as _, Sha1};

use super::{BundleLocation, S3Error, local_failure, request_error};
use crate::bundle::digest::sha1_hex;
use crate::bundle::fsutil::write_atomically;
use crate::bundle::manifest::{Manifest, PartEntry};
use crate::bundle::parts;
use crate::progress::Progress;

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

/// Writes `data` to `dir/name` with [`write_atomically`]: through the temporary file
/// `.NAME.amibundle-PID.partial` (mode 0600) that [`download_bundle`] clears when a killed run
/// left it behind, renamed over `dir/name`. Returns the final path; a failure names it.
fn write_local(dir: &Path, name: &str, data: &[u8]) -> Result<PathBuf, S3Error> {
    let final_path = dir.join(name);
    let tmp_suffix = format!(".amibundle-{}.partial", std::process::id());
    write_atomically(&final_path, data, 0o600, &tmp_suffix).map_err(|e| S3Error::Local {
        action: "writing",
        path: final_path.clone(),
        source: e.source,
    })?;
    Ok(final_path)
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
    // The temporary files of a killed download (see `write_local`).
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
        write_local(dir, &part.filename, &data)?;
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
    let manifest_path = write_local(dir, manifest_name, &raw)?;
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
pub(super) async fn fetch_part(
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
    // Hashed as it arrives, while the link is the bottleneck, rather than in one piece at the
    // end, when the other parts of its wave end too.
    let mut sha1 = Sha1::new();
    while let Some(chunk) = body
        .try_next()
        .await
        .map_err(|e| GetFailure::Body(local_failure("downloading", bucket, &key, e)))?
    {
        let size = (data.len() + chunk.len()) as u64;
        if size > limit {
            return Err(GetFailure::Final(too_large(announced.unwrap_or(size))));
        }
        sha1.update(&chunk);
        data.extend_from_slice(&chunk);
    }
    let actual = hex::encode(sha1.finalize());
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
