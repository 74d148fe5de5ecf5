//! The journal of a snapshot being written, so that a run killed halfway resumes the pending
//! snapshot instead of starting again.
//!
//! AWS documents that a pending snapshot cannot be read through the EBS direct APIs
//! (ListSnapshotBlocks and GetSnapshotBlock answer only for `completed` ones), so what a killed
//! run had sent is recorded here, on this machine, as EBS acknowledges it: one line per block
//! with its SHA-256. A rerun of the same source finds the journal by the source's name, checks
//! that the snapshot is still pending (DescribeSnapshots, and the last block acknowledged
//! within the snapshot's timeout), and sends only the blocks whose bytes differ from what the
//! journal says EBS holds: every block is still read and hashed, so a source that changed in
//! between is caught block by block, and `CompleteSnapshot`'s aggregate checksum (computed over
//! both runs' blocks) lets EBS refuse a snapshot that does not match. The token that starts the
//! snapshot is written before `StartSnapshot` is sent, so a run killed between the two starts
//! no second snapshot on its rerun (the same token returns the same snapshot).
//!
//! Lines, in order: `amibundle-ebs-journal 1`, `key HEX` (the source, hex-encoded), `token T`,
//! then `snapshot ID SIZE GIB TIMEOUT` once started, `block INDEX SHA256HEX` per acknowledged block,
//! and `completing COUNT AGGREGATE` just before `CompleteSnapshot` is asked for. A line that
//! does not parse (a torn last line after a crash) is ignored: a block it named is sent again.
//! The journal is 0600 in a 0700 directory, read only when it is a regular file of this user
//! with one link, and locked (`<name>.lock`) so two runs of one source cannot interleave.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::bundle::lock::{LockError, RunLock};

const MAGIC: &str = "amibundle-ebs-journal 1";

/// The largest journal read: a 64 TiB volume has 2^27 blocks of 90 bytes' lines; anything
/// bigger is not ours.
const MAX_JOURNAL_BYTES: u64 = 16 << 30;

/// Why a journal could not be used.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// Another run is writing the same snapshot.
    #[error(transparent)]
    Lock(#[from] LockError),
    /// Reading or writing it failed.
    #[error("{action} the resume journal {}", path.display())]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
}

/// A snapshot a journal says was started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Started {
    /// Its id.
    pub id: String,
    /// The image's size in bytes.
    pub size: u64,
    /// The snapshot's size in GiB.
    pub gib: u64,
    /// Its timeout, minutes.
    pub timeout_minutes: u32,
}

/// What a journal recorded of an earlier run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recorded {
    /// The token `StartSnapshot` was (or was about to be) sent with.
    pub token: String,
    /// The snapshot started.
    pub snapshot: Option<Started>,
    /// Blocks EBS acknowledged: index → SHA-256.
    pub blocks: BTreeMap<u64, [u8; 32]>,
    /// `CompleteSnapshot` was asked for with this count and aggregate.
    pub completing: Option<(u64, String)>,
    /// When the journal was last written: the last acknowledgement.
    pub last_write: Option<SystemTime>,
}

/// An open, locked journal.
#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
    file: File,
    _lock: RunLock,
    recorded: Recorded,
}

/// The default directory of the journals: `$XDG_STATE_HOME/amibundle/to-ebs` when set (and
/// absolute), else `/var/lib/amibundle/to-ebs` for root and `~/.local/state/amibundle/to-ebs`
/// for anyone else.
pub fn default_dir() -> Option<PathBuf> {
    if let Some(xdg) = std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
    {
        return Some(xdg.join("amibundle/to-ebs"));
    }
    if nix::unistd::geteuid().is_root() {
        return Some(PathBuf::from("/var/lib/amibundle/to-ebs"));
    }
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(|h| PathBuf::from(h).join(".local/state/amibundle/to-ebs"))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Parses a journal's text for `key`; `None` when it is not a journal of that key.
fn parse(text: &str, key: &str) -> Option<Recorded> {
    let mut lines = text.split('\n');
    if lines.next()? != MAGIC {
        return None;
    }
    let stored_key = lines.next()?.strip_prefix("key ")?;
    if unhex(stored_key)? != key.as_bytes() {
        return None;
    }
    let token = lines.next()?.strip_prefix("token ")?;
    if token.is_empty()
        || !token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
    {
        return None;
    }
    let mut recorded = Recorded {
        token: token.to_string(),
        ..Recorded::default()
    };
    for line in lines {
        let fields: Vec<&str> = line.split(' ').collect();
        match fields.as_slice() {
            ["snapshot", id, size, gib, timeout] if recorded.snapshot.is_none() => {
                let (Ok(size), Ok(gib), Ok(timeout_minutes)) =
                    (size.parse(), gib.parse(), timeout.parse())
                else {
                    continue;
                };
                if id.starts_with("snap-") && id[5..].bytes().all(|b| b.is_ascii_alphanumeric()) {
                    recorded.snapshot = Some(Started {
                        id: id.to_string(),
                        size,
                        gib,
                        timeout_minutes,
                    });
                }
            }
            ["block", index, sum] if recorded.snapshot.is_some() => {
                let Some(started) = &recorded.snapshot else {
                    continue;
                };
                let (Ok(index), Some(sum)) = (index.parse::<u64>(), unhex(sum)) else {
                    continue;
                };
                let blocks = started.size.div_ceil(super::BLOCK_BYTES as u64);
                if let (true, Ok(sum)) = (index < blocks, <[u8; 32]>::try_from(sum)) {
                    recorded.blocks.insert(index, sum);
                }
            }
            ["completing", count, aggregate] if recorded.snapshot.is_some() => {
                if let Ok(count) = count.parse() {
                    recorded.completing = Some((count, aggregate.to_string()));
                }
            }
            _ => {}
        }
    }
    Some(recorded)
}

impl Journal {
    /// Opens (and locks) the journal of the source `key` in `dir`, created 0700 if missing. An
    /// existing journal of the same key is read; anything else there is replaced.
    pub fn open(dir: &Path, key: &str) -> Result<Self, JournalError> {
        let io_err = |action, path: &Path| {
            let path = path.to_path_buf();
            move |source| JournalError::Io {
                action,
                path,
                source,
            }
        };
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io_err("creating the directory of", dir))?;
        let name = hex(&openssl::sha::sha256(key.as_bytes())[..16]);
        let lock = RunLock::file(
            &dir.join(format!("{name}.lock")),
            "the snapshot of this source",
        )?;
        let path = dir.join(format!("{name}.journal"));
        let recorded = read_existing(&path, key).map_err(io_err("reading", &path))?;
        let file = OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
            .map_err(io_err("opening", &path))?;
        let mut journal = Journal {
            path,
            file,
            _lock: lock,
            recorded: Recorded::default(),
        };
        match recorded {
            Some(recorded) => journal.recorded = recorded,
            None => journal.reset(key)?,
        }
        Ok(journal)
    }

    /// What the journal holds.
    pub fn recorded(&self) -> &Recorded {
        &self.recorded
    }

    /// Its path, for messages.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Forgets everything and starts a fresh record of `key` with a new token.
    pub fn reset(&mut self, key: &str) -> Result<(), JournalError> {
        let mut token = [0u8; 16];
        openssl::rand::rand_bytes(&mut token).map_err(|e| JournalError::Io {
            action: "making a token for",
            path: self.path.clone(),
            source: io::Error::other(e),
        })?;
        let token = hex(&token);
        self.file
            .set_len(0)
            .map_err(|source| self.io_error("emptying", source))?;
        self.append(&format!(
            "{MAGIC}\nkey {}\ntoken {token}\n",
            hex(key.as_bytes())
        ))?;
        // The token must be on disk before StartSnapshot is sent with it.
        self.file
            .sync_data()
            .map_err(|source| self.io_error("writing", source))?;
        self.recorded = Recorded {
            token,
            ..Recorded::default()
        };
        Ok(())
    }

    fn io_error(&self, action: &'static str, source: io::Error) -> JournalError {
        JournalError::Io {
            action,
            path: self.path.clone(),
            source,
        }
    }

    fn append(&mut self, text: &str) -> Result<(), JournalError> {
        // One write per record: a process killed mid-run loses at most what it had not yet
        // written, never a line already in the page cache.
        self.file
            .write_all(text.as_bytes())
            .map_err(|source| self.io_error("writing", source))
    }

    /// Records the snapshot started.
    pub fn record_snapshot(&mut self, started: Started) -> Result<(), JournalError> {
        self.append(&format!(
            "snapshot {} {} {} {}\n",
            started.id, started.size, started.gib, started.timeout_minutes
        ))?;
        self.file
            .sync_data()
            .map_err(|source| self.io_error("writing", source))?;
        self.recorded.snapshot = Some(started);
        self.recorded.blocks.clear();
        self.recorded.completing = None;
        Ok(())
    }

    /// Records a block EBS acknowledged (on disk only: memory does not grow with the blocks
    /// sent).
    pub fn record_block(&mut self, index: u64, sum: &[u8; 32]) -> Result<(), JournalError> {
        self.append(&format!("block {index} {}\n", hex(sum)))
    }

    /// Takes the blocks an earlier run recorded out of memory (the resumed sender holds them
    /// from then on).
    pub fn take_blocks(&mut self) -> BTreeMap<u64, [u8; 32]> {
        std::mem::take(&mut self.recorded.blocks)
    }

    /// Records that `CompleteSnapshot` is about to be asked for.
    pub fn record_completing(&mut self, count: u64, aggregate: &str) -> Result<(), JournalError> {
        self.append(&format!("completing {count} {aggregate}\n"))?;
        self.file
            .sync_data()
            .map_err(|source| self.io_error("writing", source))?;
        self.recorded.completing = Some((count, aggregate.to_string()));
        Ok(())
    }

    /// Removes the journal: the snapshot is finished (or deleted). The lock is held until
    /// the journal is dropped.
    pub fn remove(&self) -> Result<(), JournalError> {
        fs::remove_file(&self.path).map_err(|source| self.io_error("removing", source))
    }
}

/// The record of `key` in the journal at `path`, if there is a usable one.
fn read_existing(path: &Path, key: &str) -> io::Result<Option<Recorded>> {
    let file = match OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let md = file.metadata()?;
    if !md.file_type().is_file()
        || md.uid() != nix::unistd::geteuid().as_raw()
        || md.nlink() != 1
        || md.len() > MAX_JOURNAL_BYTES
    {
        return Err(io::Error::other(
            "it is not a regular file of this user with one link: remove it",
        ));
    }
    let mut text = String::new();
    if file
        .take(MAX_JOURNAL_BYTES)
        .read_to_string(&mut text)
        .is_err()
    {
        // Not text: not a journal of ours; it is replaced.
        return Ok(None);
    }
    Ok(parse(&text, key).map(|mut r| {
        r.last_write = md.modified().ok();
        r
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_journal_reads_back_what_was_recorded_and_ignores_torn_or_foreign_lines() {
        let dir = tempfile::tempdir().unwrap();
        let key = "image /tmp/disk img\nwith a newline";
        let mut j = Journal::open(dir.path(), key).unwrap();
        let token = j.recorded().token.clone();
        assert_eq!(token.len(), 32);
        let started = Started {
            id: "snap-0123abcd".into(),
            size: (3 << 19) + 1,
            gib: 1,
            timeout_minutes: 60,
        };
        j.record_snapshot(started.clone()).unwrap();
        j.record_block(0, &[1; 32]).unwrap();
        j.record_block(3, &[2; 32]).unwrap();
        let path = j.path().to_path_buf();
        drop(j);
        // A torn line, a block beyond the image, a malformed sum, garbage.
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"block 4 0202\nblock 9 ").unwrap();
        f.write_all(format!("block 7 {}\nblock 1 zz\n\x00\x01", hex(&[3; 32])).as_bytes())
            .unwrap();
        drop(f);
        let j = Journal::open(dir.path(), key).unwrap();
        let r = j.recorded();
        assert_eq!(r.token, token);
        assert_eq!(r.snapshot, Some(started));
        assert_eq!(r.blocks.keys().copied().collect::<Vec<_>>(), [0, 3]);
        assert!(r.completing.is_none());
        drop(j);

        // Another source's key in the same place starts afresh.
        let other = Journal::open(dir.path(), "another").unwrap();
        assert!(other.recorded().snapshot.is_none());
        assert_ne!(other.recorded().token, token);
    }

    #[test]
    fn a_second_run_of_the_same_source_is_refused_while_the_first_holds_it() {
        let dir = tempfile::tempdir().unwrap();
        let _first = Journal::open(dir.path(), "k").unwrap();
        let err = Journal::open(dir.path(), "k").unwrap_err();
        assert!(matches!(err, JournalError::Lock(_)), "{err}");
    }

    #[test]
    fn a_planted_link_is_not_read_or_written() {
        let dir = tempfile::tempdir().unwrap();
        let name = hex(&openssl::sha::sha256(b"k")[..16]);
        let victim = dir.path().join("victim");
        fs::write(&victim, b"precious").unwrap();
        std::os::unix::fs::symlink(&victim, dir.path().join(format!("{name}.journal"))).unwrap();
        let err = Journal::open(dir.path(), "k").unwrap_err();
        assert!(err.to_string().contains(".journal"), "{err}");
        assert_eq!(fs::read(&victim).unwrap(), b"precious");
    }

    #[test]
    fn completing_is_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = Journal::open(dir.path(), "k").unwrap();
        j.record_snapshot(Started {
            id: "snap-1".into(),
            size: 1 << 30,
            gib: 1,
            timeout_minutes: 10,
        })
        .unwrap();
        j.record_completing(2, "abc=").unwrap();
        drop(j);
        let j = Journal::open(dir.path(), "k").unwrap();
        assert_eq!(j.recorded().completing, Some((2, "abc=".into())));
        assert!(j.recorded().last_write.is_some());
        j.remove().unwrap();
        drop(j);
        assert!(fs::read_dir(dir.path()).unwrap().next().is_none());
    }
}
