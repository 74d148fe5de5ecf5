//! Streaming a bundle from S3 straight into an image: [`PartStream`], a blocking reader of the
//! checked parts in index order with bounded memory, and [`unbundle_stream`], which decodes it.

use std::fs;
use std::io::{self, Read};

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_sdk_s3::Client;
use futures::stream::{self, StreamExt};

use super::download::fetch_part;
use super::{BundleLocation, S3Error, local_failure};
use crate::bundle::crypto::UserKey;
use crate::bundle::manifest::{Manifest, PartEntry};
use crate::bundle::pipeline::{self, DecodeReport};
use crate::progress::Progress;

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

/// Downloads the parts of `manifest` from `location` and decodes them straight into the image
/// in `options.out_dir` (none: everything checked, nothing written), or into `sink` ([`PartStream`] → [`pipeline::decode_ciphertext`]): no part is written to disk,
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
    options: pipeline::DecodeOptions<'_>,
    sink: Option<&mut dyn crate::bundle::tar::ImageSink>,
    concurrency: usize,
    progress: &dyn Progress,
) -> Result<StreamUnbundleReport, S3Error> {
    let started = Instant::now();
    let bundle_err = |e: crate::bundle::Error| S3Error::Bundle(Box::new(e));
    pipeline::check_declared_size(manifest, options.allow_oversize).map_err(bundle_err)?;
    // Cheap checks before any part is requested; decode_ciphertext repeats them when it knows
    // the tar member's name.
    if let Some(out_dir) = options.out_dir {
        let not_a_dir = |source| {
            bundle_err(crate::bundle::Error::Destination {
                dir: out_dir.to_path_buf(),
                source,
            })
        };
        match fs::metadata(out_dir) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => {
                return Err(not_a_dir(io::Error::new(
                    io::ErrorKind::NotADirectory,
                    "not a directory",
                )));
            }
            Err(source) => return Err(not_a_dir(source)),
        }
        let image = out_dir.join(&manifest.image.name);
        if !options.overwrite && fs::symlink_metadata(&image).is_ok() {
            return Err(bundle_err(crate::bundle::Error::Exists(image)));
        }
    }
    let source = PartStream::new(runtime.clone(), s3.clone(), location, manifest, concurrency);
    let failure = source.failure();
    let fetched = source.fetched();
    let parts = manifest.image.parts.len();
    let decoded = match sink {
        Some(sink) => {
            pipeline::decode_ciphertext_into(manifest, key, source, options, sink, progress)
        }
        None => pipeline::decode_ciphertext(manifest, key, source, options, progress),
    };
    let decode = decoded.map_err(|e| match failure.lock().ok().and_then(|mut f| f.take()) {
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
