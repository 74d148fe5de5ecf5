//! The EBS direct APIs: an image's bytes into a new EBS snapshot, without a volume or a helper
//! instance (`to-ebs`).
//!
//! A snapshot is written in blocks of [`BLOCK_BYTES`] (512 KiB): `StartSnapshot` (size in GiB,
//! description, tags, encryption, an idempotency token and a timeout), one `PutSnapshotBlock`
//! per block that holds any non-zero byte (with its SHA-256, checked by EBS), several in flight
//! ([`BlockSender`]), then `CompleteSnapshot` with the number of blocks sent and the linear
//! aggregate checksum (the SHA-256 of the blocks' SHA-256s in index order), and the snapshot
//! waited for until `completed`. A block that is all zeros is never sent: an unwritten block of
//! a snapshot reads as zeros, so an image of 10 GiB holding 1 GiB sends about 1 GiB. A snapshot
//! that fails is deleted, never left looking complete.

use std::collections::{BTreeMap, VecDeque};
use std::io;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_sdk_ebs::Client;
use aws_sdk_ebs::error::ProvideErrorMetadata;
use aws_sdk_ebs::primitives::ByteStream;
use aws_sdk_ebs::types::{ChecksumAggregationMethod, ChecksumAlgorithm, Status, Tag};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use openssl::sha::{Sha256, sha256};
use tokio::runtime::Handle;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

mod convert;
mod journal;
mod read;
mod session;
pub use convert::{
    Conversion, ConvertError, Converted, SnapshotSink, check_boot_sector, check_bootable_disk,
    convert_bundle, convert_image_file,
};
pub use journal::{Journal, JournalError, Recorded, Started, default_dir as default_journal_dir};
pub use read::{SnapshotImage, SnapshotReadError, open_snapshot};
pub use session::{Session, snapshot_image_file};

/// The EBS direct APIs' block size: every `PutSnapshotBlock` carries exactly this much.
pub const BLOCK_BYTES: usize = 512 << 10;

/// Blocks in flight at once by default (each holds [`BLOCK_BYTES`] of memory).
pub const DEFAULT_CONCURRENCY: usize = 16;

/// How long a snapshot may stay pending before EBS gives it up (`StartSnapshot`'s Timeout,
/// minutes): long enough for a slow link, short enough that an abandoned one goes.
pub const DEFAULT_TIMEOUT_MINUTES: i32 = 60;

/// How long [`wait_completed`] waits for `completed` after `CompleteSnapshot`.
const WAIT_LIMIT: Duration = Duration::from_secs(3600);

const GIB: u64 = 1 << 30;

/// How the snapshot is made.
#[derive(Debug, Clone)]
pub struct SnapshotOptions {
    /// Its description.
    pub description: String,
    /// Its tags.
    pub tags: Vec<(String, String)>,
    /// Encrypt it (with `kms_key_arn`, else the account's default EBS key).
    pub encrypted: bool,
    /// The KMS key to encrypt with.
    pub kms_key_arn: Option<String>,
    /// Minutes it may stay pending ([`DEFAULT_TIMEOUT_MINUTES`]).
    pub timeout_minutes: i32,
    /// Blocks sent at once.
    pub concurrency: usize,
    /// `StartSnapshot`'s idempotency token: the same token starts no second snapshot. With a
    /// journal, the journal's token is used.
    pub client_token: Option<String>,
    /// Where the resume journals are kept ([`Journal`]); `None` makes a run that is killed
    /// start again from nothing.
    pub journal_dir: Option<PathBuf>,
}

impl Default for SnapshotOptions {
    fn default() -> Self {
        SnapshotOptions {
            description: String::new(),
            tags: Vec::new(),
            encrypted: false,
            kms_key_arn: None,
            timeout_minutes: DEFAULT_TIMEOUT_MINUTES,
            concurrency: DEFAULT_CONCURRENCY,
            client_token: None,
            journal_dir: None,
        }
    }
}

/// A finished snapshot.
#[derive(Debug, Clone)]
pub struct SnapshotReport {
    /// Its id.
    pub snapshot_id: String,
    /// Its size, GiB (the image's size rounded up).
    pub volume_size_gib: u64,
    /// Blocks sent by this run.
    pub blocks_sent: u64,
    /// Blocks an earlier, interrupted run had sent that were still right (resumed runs).
    pub blocks_resumed: u64,
    /// Blocks of the image never sent: holes and blocks of zeros.
    pub blocks_skipped: u64,
    /// Whether an earlier run's pending snapshot was resumed.
    pub resumed: bool,
    /// Wall time from `StartSnapshot` to `completed`.
    pub elapsed: Duration,
}

/// Why a snapshot was not made. Each says which request and which snapshot.
#[derive(Debug, thiserror::Error)]
pub enum EbsError {
    /// `StartSnapshot` failed.
    #[error("starting a snapshot of {gib} GiB{hint}")]
    Start {
        /// Its size.
        gib: u64,
        /// What to do about it.
        hint: &'static str,
        /// Why.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
        /// An access problem (exit code 3).
        access: bool,
    },
    /// A request on a started snapshot failed.
    #[error("{action} of snapshot {snapshot}{hint}")]
    Request {
        /// What was being done.
        action: String,
        /// The snapshot.
        snapshot: String,
        /// What to do about it.
        hint: &'static str,
        /// Why.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
        /// An access problem (exit code 3).
        access: bool,
        /// A network or service failure that outlasted the retries: the snapshot is kept
        /// pending for a rerun to resume.
        transient: bool,
    },
    /// The snapshot did not complete.
    #[error("snapshot {snapshot} ended in state {state}{message}")]
    Failed {
        /// The snapshot.
        snapshot: String,
        /// Its state.
        state: String,
        /// EBS's message, if any.
        message: String,
    },
    /// The snapshot was still pending when the wait ended.
    #[error("snapshot {snapshot} is still {state} after {} s", .waited.as_secs())]
    WaitTimeout {
        /// The snapshot.
        snapshot: String,
        /// Its state.
        state: String,
        /// How long it was waited for.
        waited: Duration,
    },
    /// The image could not be read.
    #[error("reading {what} at byte {offset}")]
    Read {
        /// The image.
        what: String,
        /// Where.
        offset: u64,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// An empty image has no snapshot.
    #[error("{0} is empty: there is nothing to make a snapshot of")]
    Empty(String),
    /// A signal arrived.
    #[error(transparent)]
    Interrupted(io::Error),
    /// The resume journal could not be used.
    #[error(transparent)]
    Journal(#[from] JournalError),
}

impl EbsError {
    /// Permission problems (exit code 3, like the other cloud commands).
    pub fn is_access_problem(&self) -> bool {
        match self {
            EbsError::Start { access, .. } | EbsError::Request { access, .. } => *access,
            _ => false,
        }
    }

    /// Failures after which the pending snapshot is kept for a rerun to resume (a signal, the
    /// network or the service failing past the retries, the journal, a wait that ran out)
    /// rather than deleted (a refusal, a bad image, a failed snapshot).
    pub fn is_resumable(&self) -> bool {
        match self {
            EbsError::Request { transient, .. } => *transient,
            EbsError::Interrupted(_) | EbsError::Journal(_) | EbsError::WaitTimeout { .. } => true,
            _ => false,
        }
    }
}

/// Whether a request failed for a passing reason: the connection, a timeout, a 5xx or a
/// throttle that outlasted the SDK's retries.
fn is_transient<E: ProvideErrorMetadata>(err: &aws_sdk_ebs::error::SdkError<E>) -> bool {
    use aws_sdk_ebs::error::SdkError;
    match err {
        SdkError::DispatchFailure(_) | SdkError::TimeoutError(_) | SdkError::ResponseError(_) => {
            true
        }
        SdkError::ServiceError(e) => {
            e.raw().status().is_server_error()
                || matches!(
                    err.code(),
                    Some(
                        "ThrottlingException"
                            | "RequestThrottledException"
                            | "InternalServerException"
                            | "ServiceUnavailableException"
                    )
                )
        }
        _ => false,
    }
}

/// Error codes that mean the caller may not do this.
fn is_access_code(code: Option<&str>) -> bool {
    matches!(
        code,
        Some(
            "AccessDeniedException"
                | "AccessDenied"
                | "UnauthorizedOperation"
                | "UnrecognizedClientException"
                | "KMSKeyNotAccessibleFault"
                | "KMSAccessDeniedException"
        )
    )
}

/// What to tell the user about an access problem.
fn access_hint(access: bool) -> &'static str {
    if access {
        ": the credentials need ebs:StartSnapshot, ebs:PutSnapshotBlock, \
         ebs:CompleteSnapshot (and kms:GenerateDataKey* and kms:Decrypt for an encrypted \
         snapshot) in this region"
    } else {
        ""
    }
}

/// Whether every byte of `block` is zero.
fn all_zero(block: &[u8]) -> bool {
    let words = block.chunks_exact(8);
    let rest = words.remainder();
    words
        .map(|w| u64::from_ne_bytes([w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]]))
        .all(|w| w == 0)
        && rest.iter().all(|&b| b == 0)
}

/// Starts a snapshot of `size` bytes (rounded up to whole GiB, as EBS sizes volumes).
pub async fn start_snapshot(
    client: &Client,
    size: u64,
    options: &SnapshotOptions,
) -> Result<(String, u64), EbsError> {
    let gib = size.div_ceil(GIB).max(1);
    let mut req = client
        .start_snapshot()
        .volume_size(i64::try_from(gib).unwrap_or(i64::MAX))
        .timeout(options.timeout_minutes)
        .encrypted(options.encrypted);
    if !options.description.is_empty() {
        req = req.description(&options.description);
    }
    if let Some(key) = &options.kms_key_arn {
        req = req.kms_key_arn(key);
    }
    if let Some(token) = &options.client_token {
        req = req.client_token(token);
    }
    for (k, v) in &options.tags {
        req = req.tags(Tag::builder().key(k).value(v).build());
    }
    let out = req.send().await.map_err(|e| {
        let access = is_access_code(e.code());
        EbsError::Start {
            gib,
            hint: access_hint(access),
            source: sdk_message(e),
            access,
        }
    })?;
    let id = out.snapshot_id().unwrap_or_default().to_string();
    if id.is_empty() {
        return Err(EbsError::Start {
            gib,
            hint: "",
            source: "StartSnapshot returned no snapshot id".into(),
            access: false,
        });
    }
    Ok((id, gib))
}

/// A request error with its whole context as the message (the SDK's own Display is terse).
fn sdk_message<E: std::error::Error>(e: E) -> Box<dyn std::error::Error + Send + Sync> {
    Box::new(io::Error::other(
        aws_sdk_ebs::error::DisplayErrorContext(e).to_string(),
    ))
}

fn request_error<E>(
    action: String,
    snapshot: &str,
    err: aws_sdk_ebs::error::SdkError<E>,
) -> EbsError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let access = is_access_code(err.code());
    let transient = is_transient(&err);
    EbsError::Request {
        action,
        snapshot: snapshot.to_string(),
        hint: access_hint(access),
        source: sdk_message(err),
        access,
        transient,
    }
}

/// What a [`BlockSender`] did.
#[derive(Debug, Clone)]
pub struct SentBlocks {
    /// Blocks sent by this run.
    pub sent: u64,
    /// Blocks an earlier run had sent with the same bytes, not sent again.
    pub resumed: u64,
    /// Blocks of zeros not sent.
    pub zero: u64,
    /// Blocks the snapshot holds: `CompleteSnapshot`'s count.
    pub written: u64,
    /// The linear aggregate checksum (base64 SHA-256 of the blocks' SHA-256s in index order).
    pub aggregate: String,
}

/// Sends the blocks of one snapshot, several at once, from a synchronous caller (the image is
/// read, or decoded, on the caller's thread; `runtime` runs the requests). All-zero blocks are
/// counted and dropped. Memory: at most `concurrency` blocks in flight.
///
/// A sender resuming an earlier run's snapshot knows what that run sent (`previous`, from its
/// journal): a block whose SHA-256 matches is not sent again, one that differs is (zeros
/// included, to overwrite it), and any such block this run never offers is overwritten with
/// zeros by [`BlockSender::finish`], so the snapshot holds exactly this run's image. Each block
/// EBS acknowledges is recorded in the journal.
pub struct BlockSender {
    runtime: Handle,
    client: Client,
    snapshot_id: String,
    permits: Arc<Semaphore>,
    tasks: JoinSet<Result<(u64, [u8; 32]), EbsError>>,
    /// The blocks written, in index order, not yet folded into `aggregate`: each with its
    /// SHA-256 once known (in flight: `None`). Folded from the front as they complete, so
    /// memory stays bounded by the blocks in flight, whatever the image's size.
    unfolded: VecDeque<(u64, Option<[u8; 32]>)>,
    aggregate: Sha256,
    written: u64,
    previous: BTreeMap<u64, [u8; 32]>,
    journal: Option<Arc<Mutex<Journal>>>,
    zero: u64,
    sent: u64,
    resumed: u64,
}

impl BlockSender {
    /// A sender for the pending snapshot `snapshot_id`.
    pub fn new(runtime: Handle, client: Client, snapshot_id: String, concurrency: usize) -> Self {
        BlockSender {
            runtime,
            client,
            snapshot_id,
            permits: Arc::new(Semaphore::new(concurrency.max(1))),
            tasks: JoinSet::new(),
            unfolded: VecDeque::new(),
            aggregate: Sha256::new(),
            written: 0,
            previous: BTreeMap::new(),
            journal: None,
            zero: 0,
            sent: 0,
            resumed: 0,
        }
    }

    /// Resumes from what an earlier run sent (`previous`: index → SHA-256), recording what
    /// this run sends in `journal`.
    pub fn resuming(
        mut self,
        previous: BTreeMap<u64, [u8; 32]>,
        journal: Option<Arc<Mutex<Journal>>>,
    ) -> Self {
        self.previous = previous;
        self.journal = journal;
        self
    }

    /// Queues block `index` (exactly [`BLOCK_BYTES`]; a short last block is padded with
    /// zeros). Blocks come in increasing index order. Waits while `concurrency` blocks are in
    /// flight; returns the first failure of any block sent so far.
    pub fn send(&mut self, index: u64, mut block: Vec<u8>) -> Result<(), EbsError> {
        if self.unfolded.back().is_some_and(|(last, _)| *last >= index) {
            return Err(EbsError::Request {
                action: format!("sending block {index}"),
                snapshot: self.snapshot_id.clone(),
                hint: "",
                source: "blocks must be sent in increasing index order".into(),
                access: false,
                transient: false,
            });
        }
        // Blocks an earlier run wrote below this one that this run's image leaves empty (a
        // hole now): overwritten with zeros, in order.
        while let Some(entry) = self.previous.first_entry() {
            if *entry.key() >= index {
                break;
            }
            let (below, _) = entry.remove_entry();
            self.put_zeros(below)?;
        }
        block.resize(BLOCK_BYTES, 0);
        let before = self.previous.remove(&index);
        if before.is_none() && all_zero(&block) {
            self.zero += 1;
            return Ok(());
        }
        let checksum = sha256(&block);
        if before == Some(checksum) {
            self.unfolded.push_back((index, Some(checksum)));
            self.fold();
            self.resumed += 1;
            return Ok(());
        }
        self.put(index, block, checksum)
    }

    /// Overwrites block `index` with zeros.
    fn put_zeros(&mut self, index: u64) -> Result<(), EbsError> {
        let zeros = vec![0; BLOCK_BYTES];
        let checksum = sha256(&zeros);
        self.put(index, zeros, checksum)
    }

    /// Sends `block` (exactly [`BLOCK_BYTES`], whose SHA-256 is `checksum`) as block `index`.
    fn put(&mut self, index: u64, block: Vec<u8>, checksum: [u8; 32]) -> Result<(), EbsError> {
        self.collect_finished()?;
        let permit = self
            .runtime
            .block_on(self.permits.clone().acquire_owned())
            .map_err(|_| EbsError::Interrupted(io::Error::other("block sender closed")))?;
        let client = self.client.clone();
        let snapshot = self.snapshot_id.clone();
        self.sent += 1;
        self.unfolded.push_back((index, None));
        self.tasks.spawn_on(
            async move {
                let _permit = permit;
                let index_i32 = i32::try_from(index).map_err(|_| EbsError::Request {
                    action: format!("sending block {index}"),
                    snapshot: snapshot.clone(),
                    hint: "",
                    source: "block index beyond the EBS direct APIs' range".into(),
                    access: false,
                    transient: false,
                })?;
                client
                    .put_snapshot_block()
                    .snapshot_id(&snapshot)
                    .block_index(index_i32)
                    .data_length(BLOCK_BYTES as i32)
                    .checksum(BASE64.encode(checksum))
                    .checksum_algorithm(ChecksumAlgorithm::ChecksumAlgorithmSha256)
                    .block_data(ByteStream::from(block))
                    .send()
                    .await
                    .map_err(|e| request_error(format!("sending block {index}"), &snapshot, e))?;
                Ok((index, checksum))
            },
            &self.runtime,
        );
        Ok(())
    }

    /// Records the blocks already sent; the first failure is returned.
    fn collect_finished(&mut self) -> Result<(), EbsError> {
        while let Some(done) = self.tasks.try_join_next() {
            self.record(done)?;
        }
        Ok(())
    }

    fn record(
        &mut self,
        done: Result<Result<(u64, [u8; 32]), EbsError>, tokio::task::JoinError>,
    ) -> Result<(), EbsError> {
        let (index, checksum) = done.map_err(|e| EbsError::Request {
            action: "sending a block".into(),
            snapshot: self.snapshot_id.clone(),
            hint: "",
            source: Box::new(e),
            access: false,
            transient: false,
        })??;
        if let Some(journal) = &self.journal {
            journal
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .record_block(index, &checksum)?;
        }
        if let Some(slot) = self.unfolded.iter_mut().find(|(i, _)| *i == index) {
            slot.1 = Some(checksum);
        }
        self.fold();
        Ok(())
    }

    /// Folds the known checksums at the front of `unfolded` into the aggregate.
    fn fold(&mut self) {
        while let Some((_, Some(checksum))) = self.unfolded.front() {
            self.aggregate.update(checksum);
            self.written += 1;
            self.unfolded.pop_front();
        }
    }

    /// Overwrites with zeros the blocks an earlier run sent that this run's image does not
    /// hold, waits for every block, and returns what was done.
    pub fn finish(mut self) -> Result<SentBlocks, EbsError> {
        for index in std::mem::take(&mut self.previous).into_keys() {
            self.put_zeros(index)?;
        }
        let runtime = self.runtime.clone();
        while let Some(done) = runtime.block_on(self.tasks.join_next()) {
            self.record(done)?;
        }
        debug_assert!(self.unfolded.is_empty());
        let aggregate = std::mem::replace(&mut self.aggregate, Sha256::new());
        Ok(SentBlocks {
            sent: self.sent,
            resumed: self.resumed,
            zero: self.zero,
            written: self.written,
            aggregate: BASE64.encode(aggregate.finish()),
        })
    }
}

impl Drop for BlockSender {
    fn drop(&mut self) {
        // Requests still in flight on an error path are abandoned.
        self.tasks.abort_all();
    }
}

/// Completes the snapshot (`CompleteSnapshot` with the count and the linear aggregate) and
/// waits for `completed` through EC2's DescribeSnapshots.
pub async fn complete_snapshot(
    client: &Client,
    ec2: &aws_sdk_ec2::Client,
    snapshot_id: &str,
    blocks: u64,
    aggregate: &str,
) -> Result<(), EbsError> {
    request_completion(client, snapshot_id, blocks, aggregate).await?;
    wait_completed(ec2, snapshot_id).await
}

/// `CompleteSnapshot` with the count and the linear aggregate.
pub async fn request_completion(
    client: &Client,
    snapshot_id: &str,
    blocks: u64,
    aggregate: &str,
) -> Result<(), EbsError> {
    let out = client
        .complete_snapshot()
        .snapshot_id(snapshot_id)
        .changed_blocks_count(i32::try_from(blocks).unwrap_or(i32::MAX))
        .checksum(aggregate)
        .checksum_algorithm(ChecksumAlgorithm::ChecksumAlgorithmSha256)
        .checksum_aggregation_method(ChecksumAggregationMethod::ChecksumAggregationLinear)
        .send()
        .await
        .map_err(|e| request_error("completing".into(), snapshot_id, e))?;
    if out.status() == Some(&Status::Error) {
        return Err(EbsError::Failed {
            snapshot: snapshot_id.to_string(),
            state: "error".into(),
            message: String::new(),
        });
    }
    Ok(())
}

/// Why DescribeSnapshots gave no usable answer about a snapshot.
#[derive(Debug)]
pub(crate) enum DescribeFailure {
    /// The request failed.
    Request(
        Box<
            aws_sdk_ec2::error::SdkError<
                aws_sdk_ec2::operation::describe_snapshots::DescribeSnapshotsError,
            >,
        >,
    ),
    /// It answered about other snapshots than the one asked for.
    Answer(String),
}

/// DescribeSnapshots of `snapshot_id` alone: `None` when EC2 knows no such snapshot
/// (`InvalidSnapshot.*`); an answer about any other snapshot is refused.
pub(crate) async fn describe_snapshot(
    ec2: &aws_sdk_ec2::Client,
    snapshot_id: &str,
) -> Result<Option<aws_sdk_ec2::types::Snapshot>, DescribeFailure> {
    let out = match ec2
        .describe_snapshots()
        .snapshot_ids(snapshot_id)
        .send()
        .await
    {
        Ok(out) => out,
        Err(e) if e.code().is_some_and(|c| c.starts_with("InvalidSnapshot")) => return Ok(None),
        Err(e) => return Err(DescribeFailure::Request(Box::new(e))),
    };
    match out.snapshots() {
        [] => Ok(None),
        [one] if one.snapshot_id() == Some(snapshot_id) => Ok(Some(one.clone())),
        others => Err(DescribeFailure::Answer(format!(
            "asked for {snapshot_id}, it answered about {:?}",
            others
                .iter()
                .map(|s| s.snapshot_id().unwrap_or("?"))
                .collect::<Vec<_>>()
        ))),
    }
}

/// The state of a snapshot and EBS's message about it, from EC2's DescribeSnapshots; `None`
/// when there is no such snapshot.
pub async fn describe_state(
    ec2: &aws_sdk_ec2::Client,
    snapshot_id: &str,
) -> Result<Option<(String, String)>, EbsError> {
    let snap = describe_snapshot(ec2, snapshot_id).await.map_err(|f| {
        let (access, transient, source) = match f {
            DescribeFailure::Request(e) => {
                (is_access_code(e.code()), is_transient(&e), sdk_message(e))
            }
            DescribeFailure::Answer(m) => (false, false, m.into()),
        };
        EbsError::Request {
            action: "describing".into(),
            snapshot: snapshot_id.to_string(),
            hint: if access {
                ": the credentials need ec2:DescribeSnapshots"
            } else {
                ""
            },
            source,
            access,
            transient,
        }
    })?;
    Ok(snap.map(|snap| {
        (
            snap.state()
                .map_or("unknown".to_string(), |s| s.as_str().to_string()),
            snap.state_message().unwrap_or_default().to_string(),
        )
    }))
}

/// Polls DescribeSnapshots until the snapshot is `completed` (an `error` state fails).
pub async fn wait_completed(ec2: &aws_sdk_ec2::Client, snapshot_id: &str) -> Result<(), EbsError> {
    let started = Instant::now();
    let mut delay = Duration::from_millis(200);
    loop {
        let (state, message) = describe_state(ec2, snapshot_id)
            .await?
            .unwrap_or(("missing".to_string(), String::new()));
        match state.as_str() {
            "completed" => return Ok(()),
            "error" | "recoverable" | "missing" => {
                return Err(EbsError::Failed {
                    snapshot: snapshot_id.to_string(),
                    state,
                    message: if message.is_empty() {
                        message
                    } else {
                        format!(": {message}")
                    },
                });
            }
            _ => {}
        }
        if started.elapsed() > WAIT_LIMIT {
            return Err(EbsError::WaitTimeout {
                snapshot: snapshot_id.to_string(),
                state,
                waited: started.elapsed(),
            });
        }
        crate::interrupt::check().map_err(EbsError::Interrupted)?;
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(10));
    }
}

/// Deletes a snapshot that failed (best effort, said on failure), so that nothing incomplete
/// is left looking usable.
pub async fn delete_failed(ec2: &aws_sdk_ec2::Client, snapshot_id: &str) {
    if let Err(e) = ec2.delete_snapshot().snapshot_id(snapshot_id).send().await {
        tracing::warn!(
            "could not delete the failed snapshot {snapshot_id}: {}; delete it yourself",
            aws_sdk_ec2::error::DisplayErrorContext(e)
        );
    } else {
        tracing::info!("deleted the failed snapshot {snapshot_id}");
    }
}
