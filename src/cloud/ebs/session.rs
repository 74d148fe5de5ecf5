//! One snapshot written from one source: started afresh, or resumed from the [`Journal`] of a
//! run that was killed or failed on the network; completed, or after a failure either kept
//! pending for a rerun (a signal, the network, the service) or deleted (anything else), so
//! that nothing incomplete is ever left looking usable.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use aws_sdk_ebs::Client;
use tokio::runtime::Handle;

use super::journal::{Journal, Started};
use super::{
    BLOCK_BYTES, BlockSender, EbsError, SentBlocks, SnapshotOptions, SnapshotReport, delete_failed,
    describe_state, request_completion, start_snapshot, wait_completed,
};
use crate::bundle::tar::SparseMap;
use crate::progress::Progress;

/// A pending snapshot is resumed only if its last block was acknowledged at least this long
/// before its timeout ends (EBS abandons a snapshot left unwritten for its timeout).
const RESUME_MARGIN: Duration = Duration::from_secs(120);

/// The snapshot of one source.
pub struct Session {
    runtime: Handle,
    client: Client,
    ec2: aws_sdk_ec2::Client,
    options: SnapshotOptions,
    key: String,
    journal: Option<Arc<Mutex<Journal>>>,
    snapshot: Option<Started>,
    resumed: bool,
    started: Instant,
}

impl Session {
    /// A session for the source named `key` (with its region and encryption: what makes two
    /// runs the same snapshot), its journal opened and locked when `options.journal_dir` is
    /// set. Sends nothing.
    pub fn open(
        runtime: Handle,
        client: Client,
        ec2: aws_sdk_ec2::Client,
        options: SnapshotOptions,
        key: &str,
    ) -> Result<Self, EbsError> {
        let key = format!(
            "{key}\nencrypted={} kms={}",
            options.encrypted,
            options.kms_key_arn.as_deref().unwrap_or("")
        );
        let journal = match &options.journal_dir {
            Some(dir) => Some(Arc::new(Mutex::new(Journal::open(dir, &key)?))),
            None => None,
        };
        Ok(Session {
            runtime,
            client,
            ec2,
            options,
            key,
            journal,
            snapshot: None,
            resumed: false,
            started: Instant::now(),
        })
    }

    fn journal(&self) -> Option<MutexGuard<'_, Journal>> {
        self.journal
            .as_ref()
            .map(|j| j.lock().unwrap_or_else(std::sync::PoisonError::into_inner))
    }

    /// The snapshot started (or resumed), if any.
    pub fn snapshot_id(&self) -> Option<&str> {
        self.snapshot.as_ref().map(|s| s.id.as_str())
    }

    /// A snapshot an earlier run of this source had asked EBS to complete (its image `size`
    /// bytes, when known): waited for until `completed` and returned, so that a run killed
    /// while waiting (or while registering) goes straight on. `None` when there is none, or it
    /// did not survive (the journal is then started afresh).
    pub fn completed_before(
        &mut self,
        size: Option<u64>,
    ) -> Result<Option<SnapshotReport>, EbsError> {
        let Some((snapshot, completing)) = self.journal().map(|j| {
            let r = j.recorded();
            (r.snapshot.clone(), r.completing.clone())
        }) else {
            return Ok(None);
        };
        let (Some(started), Some((count, aggregate))) = (snapshot, completing) else {
            return Ok(None);
        };
        if size.is_some_and(|s| s != started.size) {
            return Ok(None);
        }
        let state = self
            .runtime
            .block_on(describe_state(&self.ec2, &started.id))?;
        match state.as_ref().map(|(s, _)| s.as_str()) {
            Some("completed") => {}
            Some("pending") => {
                // The completion may never have reached EBS: ask again (an answer that it is
                // already completing is no failure), then wait.
                if let Err(e) = self.runtime.block_on(request_completion(
                    &self.client,
                    &started.id,
                    count,
                    &aggregate,
                )) {
                    tracing::debug!("asking again for the completion of {}: {e}", started.id);
                }
                self.runtime
                    .block_on(wait_completed(&self.ec2, &started.id))?;
            }
            _ => {
                tracing::info!(
                    "the snapshot {} an earlier run completed is gone or failed: starting afresh",
                    started.id
                );
                if let Some(mut j) = self.journal() {
                    j.reset(&self.key)?;
                }
                return Ok(None);
            }
        }
        tracing::info!(
            "snapshot {} was completed by an earlier run of this source",
            started.id
        );
        let total = started.size.div_ceil(BLOCK_BYTES as u64);
        self.snapshot = Some(started.clone());
        self.resumed = true;
        Ok(Some(SnapshotReport {
            snapshot_id: started.id,
            volume_size_gib: started.gib,
            blocks_sent: 0,
            blocks_resumed: count,
            blocks_skipped: total.saturating_sub(count),
            resumed: true,
            elapsed: self.started.elapsed(),
        }))
    }

    /// Starts the snapshot of an image of `size` bytes, or resumes the one an earlier run of
    /// this source left pending (same size, still pending, within its timeout); a stale one of
    /// ours is deleted first. Returns the sender of its blocks.
    pub fn start(&mut self, size: u64) -> Result<BlockSender, EbsError> {
        // What the journal says, without its blocks (taken only when resuming).
        let recorded = self.journal().map(|j| {
            let r = j.recorded();
            (
                r.token.clone(),
                r.snapshot.clone(),
                r.completing.is_some(),
                r.last_write,
            )
        });
        let mut previous = Default::default();
        let mut token = self.options.client_token.clone();
        if let Some((recorded_token, snapshot, completing, last_write)) = recorded {
            token = Some(recorded_token);
            if let Some(old) = snapshot {
                let state = self.runtime.block_on(describe_state(&self.ec2, &old.id))?;
                let state = state.as_ref().map(|(s, _)| s.as_str());
                // Moto reports an EBS snapshot `completed` from the start; on AWS a snapshot
                // is `completed` only once CompleteSnapshot was asked for, which the journal
                // would say (`completed_before`).
                let alive = matches!(state, Some("pending" | "completed"));
                let in_time = last_write.is_some_and(|t| {
                    let limit = Duration::from_secs(u64::from(old.timeout_minutes) * 60);
                    SystemTime::now()
                        .duration_since(t)
                        .is_ok_and(|age| age + RESUME_MARGIN < limit)
                });
                let mut j = self.journal().expect("a recorded snapshot has a journal");
                if alive && in_time && old.size == size && !completing {
                    previous = j.take_blocks();
                    tracing::info!(
                        "resuming snapshot {}: {} block(s) were sent by an earlier run",
                        old.id,
                        previous.len()
                    );
                    drop(j);
                    self.snapshot = Some(old);
                    self.resumed = true;
                } else {
                    j.reset(&self.key)?;
                    token = Some(j.recorded().token.clone());
                    drop(j);
                    if state == Some("pending") {
                        tracing::info!(
                            "deleting snapshot {}, left pending by an earlier run that cannot \
                             be resumed (another size, or too close to its timeout)",
                            old.id
                        );
                        self.runtime.block_on(delete_failed(&self.ec2, &old.id));
                    }
                }
            }
        }
        if self.snapshot.is_none() {
            let options = SnapshotOptions {
                client_token: token,
                ..self.options.clone()
            };
            let (id, gib) = self
                .runtime
                .block_on(start_snapshot(&self.client, size, &options))?;
            tracing::info!("started snapshot {id} ({gib} GiB)");
            let started = Started {
                id,
                size,
                gib,
                timeout_minutes: u32::try_from(self.options.timeout_minutes).unwrap_or(60),
            };
            self.snapshot = Some(started.clone());
            if let Some(mut j) = self.journal() {
                j.record_snapshot(started)?;
            }
        }
        let id = self.snapshot_id().unwrap_or_default().to_string();
        Ok(BlockSender::new(
            self.runtime.clone(),
            self.client.clone(),
            id,
            self.options.concurrency,
        )
        .resuming(previous, self.journal.clone()))
    }

    /// Completes the snapshot with what `sent` did, and waits for `completed`.
    pub fn complete(&mut self, sent: &SentBlocks) -> Result<SnapshotReport, EbsError> {
        let Some(started) = self.snapshot.clone() else {
            return Err(EbsError::Empty("the image".into()));
        };
        if let Some(mut j) = self.journal() {
            j.record_completing(sent.written, &sent.aggregate)?;
        }
        self.runtime.block_on(super::complete_snapshot(
            &self.client,
            &self.ec2,
            &started.id,
            sent.written,
            &sent.aggregate,
        ))?;
        let total = started.size.div_ceil(BLOCK_BYTES as u64);
        Ok(SnapshotReport {
            snapshot_id: started.id,
            volume_size_gib: started.gib,
            blocks_sent: sent.sent,
            blocks_resumed: sent.resumed,
            blocks_skipped: total.saturating_sub(sent.written),
            resumed: self.resumed,
            elapsed: self.started.elapsed(),
        })
    }

    /// After a failure: a snapshot kept for a rerun when `resumable` (said how), else deleted
    /// and its journal removed.
    pub fn abandon(&mut self, resumable: bool) {
        let ours = self.snapshot.take();
        if resumable {
            if let (Some(started), Some(_)) = (&ours, &self.journal) {
                tracing::warn!(
                    "snapshot {} is kept pending: run the same command again within {} minutes \
                     to resume it (only the blocks it lacks are sent); after that EBS abandons it",
                    started.id,
                    started.timeout_minutes
                );
                return;
            }
        }
        if let Some(started) = &ours {
            self.runtime.block_on(delete_failed(&self.ec2, &started.id));
        }
        let Some(j) = self.journal() else {
            return;
        };
        // Keep the journal while it may still serve a rerun: interrupted before a snapshot was
        // recorded (its token stays: a StartSnapshot that reached EBS returns the same
        // snapshot), or failing before this run took up an earlier run's snapshot.
        let earlier = ours.is_none() && j.recorded().snapshot.is_some();
        if (resumable && ours.is_none()) || earlier {
            return;
        }
        if let Err(e) = j.remove() {
            tracing::warn!("{}", crate::bundle::error_chain(&e));
        }
    }

    /// Everything is done (the AMI registered too): the journal goes.
    pub fn close(self) -> Result<(), EbsError> {
        if let Some(j) = self.journal() {
            j.remove()?;
        }
        Ok(())
    }
}

/// Makes a snapshot of the raw image file (or block device) at `path`: only the blocks that
/// hold data are read (holes found with `SEEK_DATA`/`SEEK_HOLE` are skipped unread), and of
/// those only the ones with a non-zero byte are sent. A run killed (or cut off from the
/// network) resumes on its rerun; any other failure deletes the snapshot. The session is
/// returned open, for the caller to close once the snapshot is used.
pub fn snapshot_image_file(
    runtime: &Handle,
    client: &Client,
    ec2: &aws_sdk_ec2::Client,
    region: &str,
    path: &Path,
    options: &SnapshotOptions,
    progress: &dyn Progress,
) -> Result<(SnapshotReport, Session), EbsError> {
    let what = path.display().to_string();
    let read_err = |offset: u64| {
        let what = what.clone();
        move |source: io::Error| EbsError::Read {
            what,
            offset,
            source,
        }
    };
    let mut file = File::open(path).map_err(read_err(0))?;
    let size = match file.metadata().map_err(read_err(0))? {
        m if m.is_file() => m.len(),
        // A block device: its size is where its end is.
        _ => file.seek(SeekFrom::End(0)).map_err(read_err(0))?,
    };
    if size == 0 {
        return Err(EbsError::Empty(what));
    }
    let canonical = std::fs::canonicalize(path).map_err(read_err(0))?;
    let mut session = Session::open(
        runtime.clone(),
        client.clone(),
        ec2.clone(),
        options.clone(),
        &format!("{region} image {}", canonical.display()),
    )?;
    if let Some(done) = session.completed_before(Some(size))? {
        return Ok((done, session));
    }
    let map = SparseMap::from_file(&file).unwrap_or_else(|_| SparseMap::dense(size));
    let sent = session
        .start(size)
        .and_then(|sender| send_image_blocks(sender, &mut file, &map, &what, progress))
        .and_then(|sent| session.complete(&sent));
    match sent {
        Ok(report) => Ok((report, session)),
        Err(e) => {
            session.abandon(e.is_resumable());
            Err(e)
        }
    }
}

/// Reads the blocks of `file` that `map` says hold data and hands them to `sender`.
fn send_image_blocks(
    mut sender: BlockSender,
    file: &mut File,
    map: &SparseMap,
    what: &str,
    progress: &dyn Progress,
) -> Result<SentBlocks, EbsError> {
    let size = map.size();
    let mut blocks_to_read = 0u64;
    let mut seen = 0u64;
    for region in map.regions() {
        let first = (region.offset / BLOCK_BYTES as u64).max(seen);
        let last = region.end().div_ceil(BLOCK_BYTES as u64);
        blocks_to_read += last.saturating_sub(first);
        seen = seen.max(last);
    }
    progress.start(
        "sending blocks",
        Some((blocks_to_read * BLOCK_BYTES as u64).min(size)),
    );
    let mut next = 0u64; // the first block not yet looked at
    for region in map.regions() {
        let first = region.offset / BLOCK_BYTES as u64;
        let last = region.end().div_ceil(BLOCK_BYTES as u64);
        for index in first.max(next)..last {
            crate::interrupt::check().map_err(EbsError::Interrupted)?;
            let offset = index * BLOCK_BYTES as u64;
            let len = (size - offset).min(BLOCK_BYTES as u64) as usize;
            let mut block = vec![0u8; len];
            file.seek(SeekFrom::Start(offset))
                .and_then(|_| file.read_exact(&mut block))
                .map_err(|source| EbsError::Read {
                    what: what.to_string(),
                    offset,
                    source,
                })?;
            sender.send(index, block)?;
            progress.inc(len as u64);
        }
        next = next.max(last);
    }
    let sent = sender.finish()?;
    progress.finish();
    Ok(sent)
}
