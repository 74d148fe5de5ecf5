//! Streaming upload (docs/format.md §8.3, streaming mode): parts go to S3 while the image is
//! still being bundled, so nothing of the bundle is ever written to local disk.
//!
//! The bundling pipeline is synchronous and runs on the caller's thread; its last adapter hands
//! each finished 10 MiB part to its S3 part sink, which starts an upload task on the tokio runtime
//! and returns at once, unless `concurrency` uploads are already in flight: then it waits for
//! one to finish. So at most `concurrency` parts are being uploaded plus the one being filled,
//! `concurrency + 1` parts in memory in all.
//!
//! Part names need the part count, known only at the end (§8.2), so the width is fixed up front
//! from the encoder's output bound (§8.3): a bundle that compresses well gets extra leading zeros,
//! and the manifest lists the names actually used. The manifest is uploaded last, after every
//! part is confirmed: it is the commit point. On failure (an S3 error, a bundling error), the
//! uploads under way are let finish (a PUT abandoned by its client may still be stored by S3
//! after the clean-up) and every part this run sent is deleted again, so no half bundle is left
//! behind. A signal stops the uploads at once instead, then deletes every part sent: a PUT that
//! S3 completes after that delete is the one leftover possible.
//!
//! Bare § numbers in this module refer to docs/format.md.

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use aws_sdk_s3::Client;
use aws_sdk_s3::types::ObjectCannedAcl;
use md5::{Digest as _, Md5};
use tokio::runtime::Handle;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

use crate::bundle::crypto::{AesIv, AesKey};
use crate::bundle::parts::{self, PartInfo, PartSink};
use crate::bundle::pipeline::{self, BundleReport, BundleSpec, Identity, PreparedImage};
use crate::cloud::s3::{self, BundleLocation, S3Error};
use crate::progress::Progress;

/// How long the clean-up after a failure may take before it gives up (the user is waiting, maybe
/// after pressing Ctrl-C).
const CLEANUP_TIMEOUT: Duration = Duration::from_secs(30);
/// How often a wait on S3 looks for SIGINT/SIGTERM.
const INTERRUPT_POLL: Duration = Duration::from_millis(100);

/// Runs `fut` to its end unless SIGINT/SIGTERM arrives first: then fails with the
/// interruption ([`crate::interrupt::check`]'s error). Waiting on S3 (a slow or stalled PUT)
/// must not keep an interrupted run going, nor let it finish as if nothing happened.
async fn interruptible<F: std::future::Future>(fut: F) -> io::Result<F::Output> {
    let signal = async {
        loop {
            if let Err(e) = crate::interrupt::check() {
                return e;
            }
            tokio::time::sleep(INTERRUPT_POLL).await;
        }
    };
    tokio::select! {
        out = fut => Ok(out),
        e = signal => Err(e),
    }
}

/// Where and how a streamed bundle is stored.
#[derive(Debug, Clone)]
pub struct StreamTarget {
    /// S3 client for the bucket's region.
    pub client: Client,
    /// Bucket and key prefix.
    pub location: BundleLocation,
    /// Canned ACL of every object.
    pub acl: String,
    /// Parts uploaded at once.
    pub concurrency: usize,
    /// Replace a bundle of the same name already at the location.
    pub overwrite: bool,
    /// Resuming an interrupted run that made the same bundle (same image, key, IV and tar
    /// mtime, so the same bytes): parts S3 already holds with the same size and MD5 are not sent
    /// again, a manifest already there is simply replaced at the end, and on failure the parts
    /// stay for the next attempt.
    pub resume: bool,
}

/// What a streamed bundle produced.
#[derive(Debug)]
pub struct StreamReport {
    /// Figures of the bundling pass, with the manifest.
    pub bundle: BundleReport,
    /// `bucket/prefix/name.manifest.xml`, for RegisterImage.
    pub image_location: String,
    /// Part names as stored.
    pub parts: Vec<String>,
    /// Parts S3 already held from an interrupted run (resume), not sent again.
    pub skipped: usize,
    /// Digits of the part indices (§8.3); more than §8.2's when the data compressed well.
    pub width: usize,
    /// Bytes sent, parts and manifest.
    pub bytes_sent: u64,
    /// Wall time, bundling and uploading.
    pub elapsed: Duration,
}

/// A failed streaming upload.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// Bundling failed.
    #[error(transparent)]
    Bundle(#[from] crate::bundle::Error),
    /// S3 failed.
    #[error(transparent)]
    S3(#[from] S3Error),
    /// A bundle of that name is already there.
    #[error(
        "s3://{bucket}/{key} already exists; pass --overwrite to replace that bundle (an AMI registered from it stops working), or choose another name or prefix"
    )]
    Exists {
        /// Bucket.
        bucket: String,
        /// Manifest key.
        key: String,
    },
}

impl StreamError {
    /// Bucket ownership and access problems (exit code 3).
    pub fn is_access_problem(&self) -> bool {
        matches!(self, StreamError::S3(e) if e.is_access_problem())
    }
}

/// State shared by the sink and the uploads it started.
#[derive(Default)]
struct Uploads {
    /// The first upload failure; later ones are consequences or duplicates.
    failure: Mutex<Option<S3Error>>,
    /// Every upload task started.
    tasks: Mutex<Vec<JoinHandle<()>>>,
    /// Keys confirmed stored, with their sizes.
    stored: Mutex<Vec<(String, u64)>>,
    /// Every key a PUT was started for: what a clean-up deletes.
    sent: Mutex<Vec<String>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic in an upload task cannot leave these plain collections inconsistent.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Uploads {
    fn failed(&self) -> bool {
        lock(&self.failure).is_some()
    }

    fn take_failure(&self) -> Option<S3Error> {
        lock(&self.failure).take()
    }

    /// Waits for every upload task to end.
    async fn join_all(&self) {
        let tasks = std::mem::take(&mut *lock(&self.tasks));
        for task in tasks {
            // A task that panicked or was aborted has stored nothing we do not know of.
            let _ = task.await;
        }
    }

    /// [`Uploads::join_all`], unless SIGINT/SIGTERM comes first: then the uploads still running
    /// are stopped and the interruption is returned.
    async fn join_all_interruptible(&self) -> io::Result<()> {
        let mut tasks = std::mem::take(&mut *lock(&self.tasks));
        let joined = async {
            for task in tasks.iter_mut() {
                let _ = task.await;
            }
        };
        let result = interruptible(joined).await;
        if result.is_err() {
            for task in &tasks {
                task.abort();
            }
        }
        result
    }

    /// Stops every upload still running.
    fn abort_all(&self) {
        for task in lock(&self.tasks).iter() {
            task.abort();
        }
    }
}

/// The sink at the end of the bundling pipeline: uploads each part as it is cut.
struct S3PartSink<'a> {
    handle: Handle,
    client: Client,
    location: BundleLocation,
    name: String,
    width: usize,
    acl: ObjectCannedAcl,
    slots: Arc<Semaphore>,
    uploads: Arc<Uploads>,
    progress: &'a dyn Progress,
    /// What the location already holds (resume): key → (size, lowercase hex ETag).
    existing: HashMap<String, (u64, String)>,
    skipped: usize,
}

/// The sink's error when an upload failed: the pipeline stops; the real cause is in
/// [`Uploads::failure`].
fn upload_failed() -> io::Error {
    io::Error::other("a part upload failed")
}

impl PartSink for S3PartSink<'_> {
    fn put_part(&mut self, info: &PartInfo, data: Vec<u8>) -> io::Result<()> {
        if self.uploads.failed() {
            return Err(upload_failed());
        }
        // Wait for a free upload slot: this is what bounds the parts held in memory. Never
        // called on a runtime thread (the pipeline runs on the caller's thread).
        let permit = self
            .handle
            .block_on(interruptible(Arc::clone(&self.slots).acquire_owned()))?
            .map_err(|_| upload_failed())?;
        if self.uploads.failed() {
            return Err(upload_failed());
        }
        let file_name = parts::part_name(&self.name, info.index, self.width);
        if let Some((size, etag)) = self.existing.get(&self.location.key(&file_name)) {
            // A single-PUT object's ETag is the MD5 of its bytes.
            if *size == info.size && *etag == hex::encode(Md5::digest(&data)) {
                tracing::debug!("{file_name} is already in S3 from the interrupted run");
                self.skipped += 1;
                drop(permit);
                return Ok(());
            }
        }
        let (client, location, acl) =
            (self.client.clone(), self.location.clone(), self.acl.clone());
        let uploads = Arc::clone(&self.uploads);
        lock(&self.uploads.sent).push(self.location.key(&file_name));
        let task = self.handle.spawn(async move {
            let result = s3::put_bundle_object(&client, &location, &file_name, data, &acl).await;
            drop(permit);
            match result {
                Ok(len) => lock(&uploads.stored).push((location.key(&file_name), len)),
                Err(e) => {
                    let mut failure = lock(&uploads.failure);
                    if failure.is_none() {
                        *failure = Some(e);
                    }
                }
            }
        });
        lock(&self.uploads.tasks).push(task);
        let stored = lock(&self.uploads.stored).len() as u64;
        self.progress.items("parts uploaded", stored, None);
        Ok(())
    }
}

/// Shows the uploads still under way once the bundle is complete (the last `concurrency`
/// parts), until they are all stored or one failed.
async fn show_last_uploads(uploads: &Uploads, progress: &dyn Progress) {
    let total = lock(&uploads.tasks).len() as u64;
    progress.start("uploading the last parts", None);
    let mut shown: u64 = lock(&uploads.stored).iter().map(|(_, len)| len).sum();
    loop {
        let (stored, bytes) = {
            let stored = lock(&uploads.stored);
            (
                stored.len() as u64,
                stored.iter().map(|(_, len)| len).sum::<u64>(),
            )
        };
        progress.inc(bytes.saturating_sub(shown));
        shown = bytes;
        progress.items("parts uploaded", stored, Some(total));
        // (An interruption is the caller's to report: it waits interruptibly next.)
        if stored >= total || lock(&uploads.failure).is_some() || crate::interrupt::check().is_err()
        {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    progress.finish();
}

/// Bundles `image` straight into S3 at `target.location` (see the module docs). The bucket must
/// have passed [`s3::ensure_bucket`]. Runs on the caller's thread, which must not be a runtime
/// thread; `handle` runs the uploads.
///
/// `key_iv` injects the AES key and IV (a resumed run reuses its predecessor's); `None` draws
/// fresh ones.
pub fn bundle_to_s3(
    handle: &Handle,
    image: PreparedImage,
    spec: &BundleSpec,
    identity: &Identity,
    key_iv: Option<(AesKey, AesIv)>,
    target: &StreamTarget,
    progress: &dyn Progress,
) -> Result<StreamReport, StreamError> {
    let started = Instant::now();
    let s3 = &target.client;
    let location = &target.location;
    let manifest_name = format!("{}.manifest.xml", spec.name);
    let manifest_key = location.key(&manifest_name);
    let existing = if target.resume {
        handle.block_on(s3::list_objects(s3, &location.bucket, &location.prefix))?
    } else {
        HashMap::new()
    };
    if !target.resume && handle.block_on(s3::object_exists(s3, &location.bucket, &manifest_key))? {
        if !target.overwrite {
            return Err(StreamError::Exists {
                bucket: location.bucket.clone(),
                key: manifest_key,
            });
        }
        // Retire the old bundle first (its manifest first): new parts must never sit under an
        // old manifest that would then name a mix of old and new data.
        tracing::warn!(
            "replacing the bundle at s3://{}/{manifest_key}",
            location.bucket
        );
        let (old, _) = handle.block_on(s3::fetch_manifest(s3, location, &manifest_name))?;
        handle.block_on(s3::delete_bundle(s3, location, &manifest_name, &old, false))?;
    }

    let width = parts::part_width(image.max_parts());
    let uploads = Arc::new(Uploads::default());
    let sink = S3PartSink {
        handle: handle.clone(),
        client: s3.clone(),
        location: location.clone(),
        name: spec.name.clone(),
        width,
        acl: ObjectCannedAcl::from(target.acl.as_str()),
        slots: Arc::new(Semaphore::new(target.concurrency.max(1))),
        uploads: Arc::clone(&uploads),
        progress,
        existing,
        skipped: 0,
    };
    let destination = format!("s3://{}/{}", location.bucket, location.prefix);
    let sink_err = |source: io::Error| crate::bundle::Error::WriteBundle {
        dir: destination.clone().into(),
        source,
    };
    let outcome = pipeline::bundle_to_sink(
        image, spec, identity, key_iv, sink, width, &sink_err, progress,
    );
    let mut skipped = 0;
    let result = match outcome {
        Ok((sink, streamed)) => {
            skipped = sink.skipped;
            let pending = lock(&uploads.tasks)
                .len()
                .saturating_sub(lock(&uploads.stored).len());
            if pending > 0 {
                handle.block_on(show_last_uploads(&uploads, progress));
            }
            match handle.block_on(uploads.join_all_interruptible()) {
                Err(source) => Err(StreamError::Bundle(sink_err(source))),
                Ok(()) => match uploads.take_failure() {
                    Some(e) => Err(StreamError::S3(e)),
                    None => Ok(streamed),
                },
            }
        }
        // An upload failure stops the pipeline with a stand-in error: report the real one.
        Err(e) => Err(uploads
            .take_failure()
            .map_or(StreamError::Bundle(e), StreamError::S3)),
    };
    let streamed = match result {
        Ok(streamed) => streamed,
        Err(e) => {
            if target.resume {
                // The parts stored are the next attempt's head start.
                uploads.abort_all();
                handle.block_on(uploads.join_all());
            } else {
                if crate::interrupt::signal().is_some() {
                    // A signal asks to stop now: the uploads under way are abandoned (one S3
                    // still stores after the delete below would be left; said in the docs).
                    uploads.abort_all();
                }
                handle.block_on(remove_stored(s3, &location.bucket, &uploads));
            }
            return Err(e);
        }
    };

    let mut bytes_sent: u64 = lock(&uploads.stored).iter().map(|(_, len)| len).sum();
    let acl = ObjectCannedAcl::from(target.acl.as_str());
    let manifest_sent = handle.block_on(s3::put_bundle_object(
        s3,
        location,
        &manifest_name,
        streamed.xml.clone().into_bytes(),
        &acl,
    ));
    match manifest_sent {
        Ok(len) => bytes_sent += len,
        Err(e) => {
            if !target.resume {
                handle.block_on(remove_stored(s3, &location.bucket, &uploads));
            }
            return Err(e.into());
        }
    }
    let parts = streamed
        .manifest
        .image
        .parts
        .iter()
        .map(|p| p.filename.clone())
        .collect();
    Ok(StreamReport {
        bundle: streamed.report,
        image_location: location.image_location(&manifest_name),
        parts,
        skipped,
        width: streamed.width,
        bytes_sent,
        elapsed: started.elapsed(),
    })
}

/// After a failure: waits for the uploads under way (not aborted: S3 may still store a PUT whose
/// client went away, after the delete), then deletes every part this run sent, stored or not
/// (deleting a missing key is no error), so the location holds no orphan parts. Best effort, bounded by [`CLEANUP_TIMEOUT`]; what cannot
/// be removed is named in a warning.
async fn remove_stored(s3: &Client, bucket: &str, uploads: &Uploads) {
    let cleanup = async {
        uploads.join_all().await;
        let keys: Vec<String> = lock(&uploads.sent).clone();
        if keys.is_empty() {
            return Ok(0);
        }
        s3::delete_keys(s3, bucket, &keys)
            .await
            .map(|()| keys.len())
    };
    match tokio::time::timeout(CLEANUP_TIMEOUT, cleanup).await {
        Ok(Ok(0)) => {}
        Ok(Ok(n)) => tracing::info!("removed the {n} part(s) this run sent to s3://{bucket}"),
        Ok(Err(e)) => tracing::warn!(
            "could not remove the parts already uploaded to s3://{bucket}: {}",
            crate::bundle::error_chain(&e)
        ),
        Err(_) => tracing::warn!(
            "gave up removing the parts already uploaded to s3://{bucket} after {} s; remove them with `aws s3 rm`",
            CLEANUP_TIMEOUT.as_secs()
        ),
    }
}
