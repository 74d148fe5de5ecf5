//! `bundle-image --snapshot`: an EBS snapshot read back through the EBS direct APIs into the
//! bundler, without a volume or a helper instance; the reverse of `to-ebs`.
//!
//! [`open_snapshot`] checks the snapshot with EC2's DescribeSnapshots (it must be `completed`
//! and in the standard tier: EBS reads nothing else) and lists its written blocks with
//! `ListSnapshotBlocks`, every page. The image is the volume, `VolumeSize` GiB; the blocks
//! listed, adjacent ones coalesced, are its data regions ([`SparseMap`]) and everything else
//! is a hole, so the bundle's tar member is sparse and a hole is never fetched nor stored.
//! [`SnapshotImage::into_input`] then gives the bundler the regions' bytes in order: the blocks
//! are listed again page by page (the tokens stay fresh and the memory stays one page, whatever
//! the snapshot's size; the second listing must equal the first), fetched with
//! `GetSnapshotBlock`, several in flight, each checked against the SHA-256 EBS returns with it,
//! and handed over in index order.
//!
//! Everything EBS says is checked before it is used: the block size, the volume size, the
//! listing's order (strictly ascending, no duplicate, inside the volume), each block's length,
//! algorithm and checksum. Any failure fails the read, naming the snapshot and the block, so
//! that no bundle is ever made from a partial or altered read.

use std::collections::VecDeque;
use std::io::{self, Read};
use std::time::Duration;

use aws_sdk_ebs::Client;
use aws_sdk_ebs::error::ProvideErrorMetadata;
use aws_sdk_ebs::types::ChecksumAlgorithm;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use openssl::sha::Sha256;
use tokio::runtime::Handle;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::{BLOCK_BYTES, GIB, is_access_code, sdk_message};
use crate::bundle::pipeline::ImageInput;
use crate::bundle::tar::{DataRegion, SparseMap};

/// Blocks per `ListSnapshotBlocks` page when the snapshot is first listed (AWS allows 100 to
/// 10,000): few requests, and only the coalesced regions are kept.
pub const LIST_PAGE: i32 = 10_000;

/// Blocks per page when the snapshot is listed again to be read: the block tokens of one page
/// (500 MiB of data) are used within minutes of being issued.
pub const READ_LIST_PAGE: i32 = 1_000;

/// The block size moto (the emulator the tests run against) reports in `ListSnapshotBlocks`,
/// although its blocks are 512 KiB like AWS's. Accepted as [`BLOCK_BYTES`]: the block size only
/// states what each `GetSnapshotBlock` must return, and every block's length is checked to be
/// exactly [`BLOCK_BYTES`], so a listing that lied this way could not slip a short block in.
const MOTO_BLOCK_SIZE: i32 = 512;

/// Pages in a row without a block after which a listing that still has a `NextToken` is
/// refused (AWS may return empty pages, but not without end).
const MAX_EMPTY_PAGES: u32 = 1_000;

/// Attempts at one block when its body breaks off midway (a dropped connection; the SDK
/// retries failed requests itself, but not a body cut after the response began).
const BODY_ATTEMPTS: u32 = 3;

/// How often a wait for a block looks for SIGINT/SIGTERM.
const INTERRUPT_POLL: Duration = Duration::from_millis(100);

/// Why a snapshot could not be read. Each names the snapshot, and the block when there is one.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotReadError {
    /// DescribeSnapshots failed.
    #[error("describing snapshot {snapshot}{hint}")]
    Describe {
        /// The snapshot.
        snapshot: String,
        /// What to do about it.
        hint: &'static str,
        /// Why.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
        /// An access problem (exit code 3).
        access: bool,
    },
    /// Not a snapshot id at all.
    #[error("{0:?} is not a snapshot id (snap- and 8 or 17 hexadecimal digits)")]
    BadId(String),
    /// No such snapshot.
    #[error(
        "snapshot {snapshot} does not exist in {region} (or is not visible to these credentials)"
    )]
    NotFound {
        /// The snapshot.
        snapshot: String,
        /// The region looked in.
        region: String,
    },
    /// The snapshot is not `completed`: EBS reads only completed snapshots.
    #[error("snapshot {snapshot} is {state}{advice}")]
    NotReadable {
        /// The snapshot.
        snapshot: String,
        /// Its state (or tier).
        state: String,
        /// What to do about it.
        advice: String,
    },
    /// What EC2 or EBS said about the snapshot cannot be right.
    #[error("{what} for snapshot {snapshot} cannot be trusted: {detail}")]
    Untrusted {
        /// The snapshot.
        snapshot: String,
        /// Which answer.
        what: &'static str,
        /// What is wrong with it.
        detail: String,
    },
    /// The snapshot has no written block.
    #[error(
        "snapshot {snapshot} holds no data (ListSnapshotBlocks lists no block): there is nothing to bundle"
    )]
    Empty {
        /// The snapshot.
        snapshot: String,
    },
    /// ListSnapshotBlocks failed.
    #[error("listing the blocks of snapshot {snapshot}{hint}")]
    List {
        /// The snapshot.
        snapshot: String,
        /// What to do about it.
        hint: &'static str,
        /// Why.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
        /// An access problem (exit code 3).
        access: bool,
    },
    /// GetSnapshotBlock failed.
    #[error("reading block {block} of snapshot {snapshot}{hint}")]
    Get {
        /// The snapshot.
        snapshot: String,
        /// The block index.
        block: u64,
        /// What to do about it.
        hint: &'static str,
        /// Why.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
        /// An access problem (exit code 3).
        access: bool,
    },
    /// A block's data is not what EBS vouches for.
    #[error("block {block} of snapshot {snapshot} is corrupt: {detail}")]
    Corrupt {
        /// The snapshot.
        snapshot: String,
        /// The block index.
        block: u64,
        /// What is wrong with it.
        detail: String,
    },
}

impl SnapshotReadError {
    /// Permission problems (exit code 3, like the other cloud commands).
    pub fn is_access_problem(&self) -> bool {
        match self {
            Self::Describe { access, .. }
            | Self::List { access, .. }
            | Self::Get { access, .. } => *access,
            _ => false,
        }
    }
}

fn untrusted(snapshot: &str, what: &'static str, detail: String) -> SnapshotReadError {
    SnapshotReadError::Untrusted {
        snapshot: snapshot.to_string(),
        what,
        detail,
    }
}

fn corrupt(snapshot: &str, block: u64, detail: String) -> SnapshotReadError {
    SnapshotReadError::Corrupt {
        snapshot: snapshot.to_string(),
        block,
        detail,
    }
}

/// A completed snapshot, listed: the image it holds.
#[derive(Debug, Clone)]
pub struct SnapshotImage {
    /// The snapshot.
    pub snapshot_id: String,
    /// Its volume's size, GiB: the image is this many GiB.
    pub volume_size_gib: u64,
    /// The image's size and data regions: the written blocks, adjacent ones coalesced.
    pub map: SparseMap,
    /// Written blocks (each [`BLOCK_BYTES`]).
    pub blocks: u64,
    /// Whether the snapshot is encrypted (reading it needs kms:Decrypt on its key).
    pub encrypted: bool,
}

/// Checks that `snapshot_id` can be read (EC2 DescribeSnapshots: `completed`, standard tier)
/// and lists its blocks, every page, into the image it holds.
pub async fn open_snapshot(
    ebs: &Client,
    ec2: &aws_sdk_ec2::Client,
    region: &str,
    snapshot_id: &str,
) -> Result<SnapshotImage, SnapshotReadError> {
    let hex = snapshot_id.strip_prefix("snap-").unwrap_or_default();
    if !matches!(hex.len(), 8 | 17) || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(SnapshotReadError::BadId(snapshot_id.to_string()));
    }
    let (gib, encrypted) = describe(ec2, region, snapshot_id).await?;
    let mut lister = Lister::new(ebs.clone(), snapshot_id, gib, LIST_PAGE);
    let mut regions: Vec<DataRegion> = Vec::new();
    let mut blocks = 0u64;
    while let Some((index, _token)) = lister.next().await? {
        let offset = index * BLOCK_BYTES as u64;
        match regions.last_mut() {
            Some(last) if last.end() == offset => last.len += BLOCK_BYTES as u64,
            _ => regions.push(DataRegion {
                offset,
                len: BLOCK_BYTES as u64,
            }),
        }
        blocks += 1;
    }
    if blocks == 0 {
        return Err(SnapshotReadError::Empty {
            snapshot: snapshot_id.to_string(),
        });
    }
    let map = SparseMap::new(gib * GIB, regions)
        .map_err(|e| untrusted(snapshot_id, "ListSnapshotBlocks", e.to_string()))?;
    Ok(SnapshotImage {
        snapshot_id: snapshot_id.to_string(),
        volume_size_gib: gib,
        map,
        blocks,
        encrypted,
    })
}

/// DescribeSnapshots: the volume size in GiB and whether it is encrypted, once the snapshot is
/// known to be readable.
async fn describe(
    ec2: &aws_sdk_ec2::Client,
    region: &str,
    snapshot_id: &str,
) -> Result<(u64, bool), SnapshotReadError> {
    let not_found = || SnapshotReadError::NotFound {
        snapshot: snapshot_id.to_string(),
        region: region.to_string(),
    };
    let snap = match super::describe_snapshot(ec2, snapshot_id).await {
        Ok(Some(snap)) => snap,
        Ok(None) => return Err(not_found()),
        Err(super::DescribeFailure::Answer(detail)) => {
            return Err(untrusted(snapshot_id, "DescribeSnapshots", detail));
        }
        Err(super::DescribeFailure::Request(e)) => {
            let access = is_access_code(e.code());
            return Err(SnapshotReadError::Describe {
                snapshot: snapshot_id.to_string(),
                hint: if access {
                    ": the credentials need ec2:DescribeSnapshots, ebs:ListSnapshotBlocks and \
                     ebs:GetSnapshotBlock (and kms:Decrypt for an encrypted snapshot) in this \
                     region"
                } else {
                    ""
                },
                source: Box::new(io::Error::other(
                    aws_sdk_ec2::error::DisplayErrorContext(*e).to_string(),
                )),
                access,
            });
        }
    };
    let state = snap.state().map_or("in no state", |s| s.as_str());
    if state != "completed" {
        let advice = match state {
            "pending" => ": wait until it is completed (EBS reads only completed snapshots)".into(),
            _ => format!(
                "{}: EBS reads only completed snapshots",
                snap.state_message()
                    .map(|m| format!(" ({m})"))
                    .unwrap_or_default()
            ),
        };
        return Err(SnapshotReadError::NotReadable {
            snapshot: snapshot_id.to_string(),
            state: state.to_string(),
            advice,
        });
    }
    if snap
        .storage_tier()
        .is_some_and(|t| t.as_str().eq_ignore_ascii_case("archive"))
    {
        return Err(SnapshotReadError::NotReadable {
            snapshot: snapshot_id.to_string(),
            state: "archived".into(),
            advice: ": restore it to the standard tier first (aws ec2 restore-snapshot-tier); \
                     EBS cannot read an archived snapshot"
                .into(),
        });
    }
    let gib = match snap.volume_size() {
        Some(g) if g > 0 => g as u64,
        other => {
            return Err(untrusted(
                snapshot_id,
                "DescribeSnapshots",
                format!("volume size {other:?} GiB"),
            ));
        }
    };
    Ok((gib, snap.encrypted().unwrap_or(false)))
}

/// Walks `ListSnapshotBlocks`, page by page, checking every page against EBS's documented
/// answers: block size 512 KiB, the volume size EC2 gave, block indexes strictly ascending
/// across pages (so no duplicate) and inside the volume, a token for every block, and an end.
struct Lister {
    ebs: Client,
    snapshot: String,
    gib: u64,
    page_size: i32,
    page: VecDeque<(u64, String)>,
    next_token: Option<String>,
    started: bool,
    last: Option<u64>,
    empty_pages: u32,
}

impl Lister {
    fn new(ebs: Client, snapshot: &str, gib: u64, page_size: i32) -> Self {
        Lister {
            ebs,
            snapshot: snapshot.to_string(),
            gib,
            page_size,
            page: VecDeque::new(),
            next_token: None,
            started: false,
            last: None,
            empty_pages: 0,
        }
    }

    /// The next written block: its index and token; `None` at the end of the listing.
    async fn next(&mut self) -> Result<Option<(u64, String)>, SnapshotReadError> {
        loop {
            if let Some(block) = self.page.pop_front() {
                return Ok(Some(block));
            }
            if self.started && self.next_token.is_none() {
                return Ok(None);
            }
            self.fetch_page().await?;
        }
    }

    async fn fetch_page(&mut self) -> Result<(), SnapshotReadError> {
        let snapshot = self.snapshot.as_str();
        let bad = |detail: String| untrusted(snapshot, "ListSnapshotBlocks", detail);
        let mut req = self
            .ebs
            .list_snapshot_blocks()
            .snapshot_id(snapshot)
            .max_results(self.page_size);
        if let Some(token) = &self.next_token {
            req = req.next_token(token);
        }
        let out = req.send().await.map_err(|e| {
            let access = is_access_code(e.code());
            SnapshotReadError::List {
                snapshot: snapshot.to_string(),
                hint: if access {
                    ": the credentials need ebs:ListSnapshotBlocks and ebs:GetSnapshotBlock \
                     (and kms:Decrypt for an encrypted snapshot) in this region"
                } else {
                    ""
                },
                source: sdk_message(e),
                access,
            }
        })?;
        self.started = true;
        match out.block_size() {
            Some(size) if size == BLOCK_BYTES as i32 => {}
            // moto's value: see MOTO_BLOCK_SIZE.
            Some(MOTO_BLOCK_SIZE) => {}
            other => {
                return Err(bad(format!(
                    "block size {other:?}, where the EBS direct APIs use {BLOCK_BYTES} bytes"
                )));
            }
        }
        if out.volume_size() != i64::try_from(self.gib).ok() {
            return Err(bad(format!(
                "volume size {:?} GiB, where DescribeSnapshots says {} GiB",
                out.volume_size(),
                self.gib
            )));
        }
        let volume_blocks = self.gib * GIB / BLOCK_BYTES as u64;
        for block in out.blocks() {
            let index = match block.block_index() {
                Some(i) if i >= 0 => i as u64,
                other => return Err(bad(format!("a block with index {other:?}"))),
            };
            if index >= volume_blocks {
                return Err(bad(format!(
                    "block {index} lies beyond the end of the {} GiB volume (its last block is {})",
                    self.gib,
                    volume_blocks - 1
                )));
            }
            match self.last {
                Some(last) if index == last => {
                    return Err(bad(format!("block {index} is listed twice")));
                }
                Some(last) if index < last => {
                    return Err(bad(format!(
                        "block {index} is listed after block {last}: the listing is not in \
                         ascending order"
                    )));
                }
                _ => {}
            }
            let token = match block.block_token() {
                Some(t) if !t.is_empty() => t.to_string(),
                _ => return Err(bad(format!("block {index} has no block token"))),
            };
            self.last = Some(index);
            self.page.push_back((index, token));
        }
        let next = out
            .next_token()
            .filter(|t| !t.is_empty())
            .map(str::to_string);
        if next.is_some() && next == self.next_token {
            return Err(bad(
                "the same NextToken came back again: the listing would not end".into(),
            ));
        }
        if next.is_some() && out.blocks().is_empty() {
            self.empty_pages += 1;
            if self.empty_pages > MAX_EMPTY_PAGES {
                return Err(bad(format!(
                    "{MAX_EMPTY_PAGES} pages in a row without a block: the listing would not end"
                )));
            }
        } else {
            self.empty_pages = 0;
        }
        self.next_token = next;
        Ok(())
    }
}

impl SnapshotImage {
    /// The image as the bundler's input: the data regions' bytes, read from EBS as the bundler
    /// consumes them. `concurrency` blocks are fetched at once (each holds [`BLOCK_BYTES`] of
    /// memory; one more waits for the bundler) and delivered in index order. `runtime` runs
    /// the requests; the bundler reads on its own thread, outside the runtime.
    pub fn into_input(self, runtime: &Handle, ebs: Client, concurrency: usize) -> ImageInput {
        let (tx, rx) = mpsc::channel(1);
        let label = format!("snapshot {}", self.snapshot_id);
        let driver = Driver {
            ebs,
            snapshot: self.snapshot_id,
            gib: self.volume_size_gib,
            map: self.map.clone(),
            concurrency: concurrency.max(1),
            tx,
        };
        ImageInput::Regions {
            map: self.map,
            reader: Box::new(BlockReader {
                runtime: runtime.clone(),
                rx,
                block: Vec::new(),
                pos: 0,
                state: ReaderState::Reading,
                start: Some(driver),
                _driver: None,
            }),
            label,
        }
    }
}

/// What the task that fetches the blocks needs; it starts at the bundler's first read, so a
/// bundle that fails before (a key, an existing bundle, the size limit) fetches nothing.
struct Driver {
    ebs: Client,
    snapshot: String,
    gib: u64,
    map: SparseMap,
    concurrency: usize,
    tx: mpsc::Sender<Result<Delivery, SnapshotReadError>>,
}

/// What the driver hands the reader.
enum Delivery {
    /// The next block's data, in index order.
    Block(Vec<u8>),
    /// Every block was delivered and the listing ended where the first one did.
    End,
}

/// A task aborted when this is dropped (the reader given up, or the driver aborted): nothing
/// keeps fetching blocks nobody will read.
struct AbortOnDrop<T>(JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A block being fetched: its data once checked.
type Fetch = AbortOnDrop<Result<Vec<u8>, SnapshotReadError>>;

/// Lists the snapshot again, checks the listing against the first one (`map`), fetches the
/// blocks `concurrency` at a time and sends them in order; the last message is `End` or the
/// failure.
async fn drive(d: Driver) {
    let Driver {
        ebs,
        snapshot,
        gib,
        map,
        concurrency,
        tx,
    } = d;
    let last = match deliver(&ebs, &snapshot, gib, &map, concurrency, &tx).await {
        Ok(()) => Ok(Delivery::End),
        Err(e) => Err(e),
    };
    // The reader may be gone (the bundle failed elsewhere): nothing to tell then.
    let _ = tx.send(last).await;
}

async fn deliver(
    ebs: &Client,
    snapshot: &str,
    gib: u64,
    map: &SparseMap,
    concurrency: usize,
    tx: &mpsc::Sender<Result<Delivery, SnapshotReadError>>,
) -> Result<(), SnapshotReadError> {
    let mut expected = map.regions().iter().flat_map(|r| {
        let first = r.offset / BLOCK_BYTES as u64;
        first..first + r.len / BLOCK_BYTES as u64
    });
    let changed = |detail: String| untrusted(snapshot, "the second ListSnapshotBlocks", detail);
    let mut lister = Lister::new(ebs.clone(), snapshot, gib, READ_LIST_PAGE);
    let mut in_flight: VecDeque<(u64, Fetch)> = VecDeque::new();
    let mut listed = true;
    loop {
        while listed && in_flight.len() < concurrency {
            let Some((index, token)) = lister.next().await? else {
                listed = false;
                break;
            };
            match expected.next() {
                Some(want) if want == index => {}
                Some(want) => {
                    return Err(changed(format!(
                        "it lists block {index} where the first listing had block {want}"
                    )));
                }
                None => {
                    return Err(changed(format!(
                        "it lists block {index} after the last block of the first listing"
                    )));
                }
            }
            let task = tokio::spawn(fetch_block(ebs.clone(), snapshot.to_string(), index, token));
            in_flight.push_back((index, AbortOnDrop(task)));
        }
        let Some((index, mut task)) = in_flight.pop_front() else {
            break;
        };
        let data = (&mut task.0).await.map_err(|e| SnapshotReadError::Get {
            snapshot: snapshot.to_string(),
            block: index,
            hint: "",
            source: Box::new(e),
            access: false,
        })??;
        if tx.send(Ok(Delivery::Block(data))).await.is_err() {
            return Ok(()); // the reader was dropped
        }
    }
    if let Some(want) = expected.next() {
        return Err(changed(format!(
            "it ends before block {want}, which the first listing had"
        )));
    }
    Ok(())
}

/// One block: GetSnapshotBlock, its body read to the end (never more than a block), and its
/// length, algorithm and SHA-256 checked against what EBS says. A body that breaks off midway
/// is asked for again, up to [`BODY_ATTEMPTS`] times.
async fn fetch_block(
    ebs: Client,
    snapshot: String,
    index: u64,
    token: String,
) -> Result<Vec<u8>, SnapshotReadError> {
    let get_err =
        |source: Box<dyn std::error::Error + Send + Sync>, access: bool| SnapshotReadError::Get {
            snapshot: snapshot.clone(),
            block: index,
            hint: if access {
                ": the credentials need ebs:GetSnapshotBlock (and kms:Decrypt for an encrypted \
                 snapshot) in this region"
            } else {
                ""
            },
            source,
            access,
        };
    // Cannot fail: the listing checked every index is inside the volume (at most 64 TiB).
    let index_i32 = i32::try_from(index).map_err(|_| {
        get_err(
            "block index beyond the EBS direct APIs' range".into(),
            false,
        )
    })?;
    let mut attempt = 1;
    loop {
        let out = ebs
            .get_snapshot_block()
            .snapshot_id(&snapshot)
            .block_index(index_i32)
            .block_token(&token)
            .send()
            .await
            .map_err(|e| {
                let access = is_access_code(e.code());
                get_err(sdk_message(e), access)
            })?;
        let claimed = claimed_checksum(&out).map_err(|d| corrupt(&snapshot, index, d))?;
        let mut body = out.block_data;
        let mut data = Vec::with_capacity(BLOCK_BYTES);
        let broke = loop {
            match body.next().await {
                Some(Ok(chunk)) if data.len() + chunk.len() > BLOCK_BYTES => {
                    let detail = format!("its data runs past {BLOCK_BYTES} bytes");
                    return Err(corrupt(&snapshot, index, detail));
                }
                Some(Ok(chunk)) => data.extend_from_slice(&chunk),
                Some(Err(e)) => break e,
                None => {
                    check_data(&data, &claimed).map_err(|d| corrupt(&snapshot, index, d))?;
                    return Ok(data);
                }
            }
        };
        if attempt >= BODY_ATTEMPTS {
            return Err(get_err(Box::new(broke), false));
        }
        tracing::debug!("block {index} of {snapshot}: its body broke off ({broke}); again");
        attempt += 1;
    }
}

/// The SHA-256 EBS vouches for, once the answer's algorithm and length are the documented ones.
fn claimed_checksum(
    out: &aws_sdk_ebs::operation::get_snapshot_block::GetSnapshotBlockOutput,
) -> Result<[u8; 32], String> {
    if out.checksum_algorithm() != Some(&ChecksumAlgorithm::ChecksumAlgorithmSha256) {
        return Err(format!(
            "its checksum algorithm is {:?}, not SHA256",
            out.checksum_algorithm().map(|a| a.as_str())
        ));
    }
    if out.data_length() != Some(BLOCK_BYTES as i32) {
        return Err(format!(
            "EBS gives its length as {} (x-amz-Data-Length), not {BLOCK_BYTES} bytes",
            out.data_length()
                .map_or("nothing".to_string(), |l| format!("{l} bytes"))
        ));
    }
    out.checksum()
        .and_then(|c| BASE64.decode(c).ok())
        .and_then(|c| c.try_into().ok())
        .ok_or_else(|| {
            format!(
                "its checksum {:?} is not a base64 SHA-256",
                out.checksum().unwrap_or("")
            )
        })
}

/// Whether a block's whole data is a block long and has the SHA-256 EBS gave.
fn check_data(data: &[u8], claimed: &[u8; 32]) -> Result<(), String> {
    if data.len() != BLOCK_BYTES {
        return Err(format!(
            "its data is {} bytes long, where EBS gives its length as {BLOCK_BYTES}",
            data.len()
        ));
    }
    let mut sha = Sha256::new();
    sha.update(data);
    let actual = sha.finish();
    if actual != *claimed {
        return Err(format!(
            "the SHA-256 of its data is {}, but EBS's checksum says {}",
            BASE64.encode(actual),
            BASE64.encode(claimed)
        ));
    }
    Ok(())
}

/// Where the reader is.
enum ReaderState {
    Reading,
    /// The driver said `End`: everything was delivered.
    Done,
    /// A failure was reported; every later read fails too.
    Failed,
}

/// The bundler's side: the blocks' bytes in order, from the driver.
struct BlockReader {
    runtime: Handle,
    rx: mpsc::Receiver<Result<Delivery, SnapshotReadError>>,
    block: Vec<u8>,
    pos: usize,
    state: ReaderState,
    /// The driver, until the first read starts it.
    start: Option<Driver>,
    _driver: Option<AbortOnDrop<()>>,
}

impl BlockReader {
    /// Waits for the driver's next message (starting it on the first call), looking for a
    /// signal meanwhile.
    fn receive(&mut self) -> io::Result<Option<Result<Delivery, SnapshotReadError>>> {
        if let Some(driver) = self.start.take() {
            self._driver = Some(AbortOnDrop(self.runtime.spawn(drive(driver))));
        }
        let rx = &mut self.rx;
        self.runtime.block_on(async {
            loop {
                tokio::select! {
                    message = rx.recv() => return Ok(message),
                    () = tokio::time::sleep(INTERRUPT_POLL) => crate::interrupt::check()?,
                }
            }
        })
    }
}

impl Read for BlockReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if self.pos < self.block.len() {
                let n = buf.len().min(self.block.len() - self.pos);
                buf[..n].copy_from_slice(&self.block[self.pos..self.pos + n]);
                self.pos += n;
                return Ok(n);
            }
            match self.state {
                ReaderState::Done => return Ok(0),
                ReaderState::Failed => {
                    return Err(io::Error::other("the snapshot's read failed before"));
                }
                ReaderState::Reading => {}
            }
            let message = self.receive().inspect_err(|_| {
                self.state = ReaderState::Failed;
            })?;
            match message {
                Some(Ok(Delivery::Block(data))) => {
                    self.block = data;
                    self.pos = 0;
                }
                Some(Ok(Delivery::End)) => self.state = ReaderState::Done,
                Some(Err(e)) => {
                    self.state = ReaderState::Failed;
                    return Err(io::Error::other(e));
                }
                None => {
                    self.state = ReaderState::Failed;
                    return Err(io::Error::other(
                        "the snapshot's block reader stopped before the end",
                    ));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use aws_sdk_ebs::operation::get_snapshot_block::GetSnapshotBlockOutput;
    use aws_sdk_ebs::primitives::ByteStream;

    use super::*;

    fn answer(
        algorithm: Option<ChecksumAlgorithm>,
        length: i32,
        checksum: &str,
    ) -> GetSnapshotBlockOutput {
        let mut b = GetSnapshotBlockOutput::builder()
            .data_length(length)
            .checksum(checksum)
            .block_data(ByteStream::from_static(b""));
        if let Some(a) = algorithm {
            b = b.checksum_algorithm(a);
        }
        b.build()
    }

    #[test]
    fn only_a_sha256_of_a_whole_block_is_taken_as_its_checksum() {
        let data = vec![7u8; BLOCK_BYTES];
        let sum = openssl::sha::sha256(&data);
        let good = answer(
            Some(ChecksumAlgorithm::ChecksumAlgorithmSha256),
            BLOCK_BYTES as i32,
            &BASE64.encode(sum),
        );
        assert_eq!(claimed_checksum(&good), Ok(sum));
        assert_eq!(check_data(&data, &sum), Ok(()));

        let no_algorithm = answer(None, BLOCK_BYTES as i32, &BASE64.encode(sum));
        assert!(
            claimed_checksum(&no_algorithm)
                .unwrap_err()
                .contains("not SHA256")
        );
        let other = answer(
            Some(ChecksumAlgorithm::from("CRC32")),
            BLOCK_BYTES as i32,
            &BASE64.encode(sum),
        );
        assert!(claimed_checksum(&other).unwrap_err().contains("\"CRC32\""));
        let short = answer(
            Some(ChecksumAlgorithm::ChecksumAlgorithmSha256),
            512,
            &BASE64.encode(sum),
        );
        assert!(
            claimed_checksum(&short)
                .unwrap_err()
                .contains("as 512 bytes")
        );
        for bad in ["", "not base64!", &BASE64.encode([1u8; 20])] {
            let a = answer(
                Some(ChecksumAlgorithm::ChecksumAlgorithmSha256),
                BLOCK_BYTES as i32,
                bad,
            );
            assert!(
                claimed_checksum(&a)
                    .unwrap_err()
                    .contains("is not a base64 SHA-256"),
                "{bad:?}"
            );
        }

        let mut flipped = data.clone();
        flipped[BLOCK_BYTES - 1] ^= 1;
        assert!(
            check_data(&flipped, &sum)
                .unwrap_err()
                .contains("SHA-256 of its data")
        );
        assert!(
            check_data(&data[..BLOCK_BYTES - 1], &sum)
                .unwrap_err()
                .contains("524287 bytes long")
        );
    }
}
