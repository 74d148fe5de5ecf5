//! Advisory locks (`flock`) that keep two runs on one machine from writing the same bundle, or
//! using the same `save` state, at once. A second run does not wait: it fails at once with a
//! message naming the lock and the process holding it.
//!
//! The kernel drops a `flock` when its holder exits, however it exits, so a lock can never be
//! left stale. A lock file is removed by its holder before the lock is released; a run that
//! locked a file that was removed (or replaced) meanwhile notices it (the path no longer names
//! the inode it locked) and tries again on the new one.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

/// Why a lock could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another process holds it.
    #[error(
        "{what} is in use by another amibundle run{}: wait for it to finish, or choose another --prefix or -d/--destination (lock {})",
        holder.map_or(String::new(), |pid| format!(" (pid {pid})")),
        path.display()
    )]
    Busy {
        /// What the lock protects, for the message.
        what: String,
        /// The locked file or directory.
        path: PathBuf,
        /// The holder's pid, when /proc/locks tells.
        holder: Option<u32>,
    },
    /// The lock file is not one amibundle can safely use: owned by another user (who may hold
    /// it to block runs), or with other hard links (a planted link would make root truncate
    /// the file it points to).
    #[error(
        "{} cannot be used as a lock: {problem}; remove it if it is stale (lock files are made \
         0600 by root, alone)",
        path.display()
    )]
    Unsafe {
        /// The lock file.
        path: PathBuf,
        /// What is wrong with it.
        problem: String,
    },
    /// The lock file or directory could not be opened or locked.
    #[error("locking {}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
}

/// An exclusive lock held until dropped.
#[derive(Debug)]
pub struct RunLock {
    _file: Flock<File>,
    path: PathBuf,
    /// A lock file of ours, removed on drop (a locked directory stays).
    remove: bool,
}

impl RunLock {
    /// Locks the file `path` (created 0600 if missing, removed again on drop); `what` names
    /// what it protects in the message of [`LockError::Busy`].
    pub fn file(path: &Path, what: &str) -> Result<Self, LockError> {
        Self::take(path, what, true)
    }

    /// Locks the existing directory `path` (left in place on drop).
    pub fn dir(path: &Path, what: &str) -> Result<Self, LockError> {
        Self::take(path, what, false)
    }

    fn take(path: &Path, what: &str, is_file: bool) -> Result<Self, LockError> {
        let io_err = |source| LockError::Io {
            path: path.to_path_buf(),
            source,
        };
        for _ in 0..100 {
            // A lock file of ours is created new (O_EXCL); one that is already there is used
            // as it is, never truncated or written to, and only when it is safe (see
            // `check_existing`).
            let mut created = false;
            let file = if is_file {
                match OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(path)
                {
                    Ok(f) => {
                        created = true;
                        Ok(f)
                    }
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => OpenOptions::new()
                        .read(true)
                        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
                        .open(path)
                        .and_then(|f| check_existing(&f, path).map(|()| f)),
                    Err(e) => Err(e),
                }
            } else {
                OpenOptions::new()
                    .read(true)
                    .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW)
                    .open(path)
            };
            let file = match file {
                Ok(f) => f,
                // Removed by its holder between our two opens: try again.
                Err(e) if is_file && e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => {
                    return Err(match e.downcast::<LockError>() {
                        Ok(unsafe_lock) => unsafe_lock,
                        Err(e) => io_err(e),
                    });
                }
            };
            let file = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                Ok(locked) => locked,
                Err((file, Errno::EWOULDBLOCK)) => {
                    let md = file.metadata().map_err(io_err)?;
                    return Err(LockError::Busy {
                        what: what.to_string(),
                        path: path.to_path_buf(),
                        holder: holder(md.dev(), md.ino()),
                    });
                }
                Err((_, errno)) => return Err(io_err(errno.into())),
            };
            // Still the inode the path names? (The previous holder may have removed it.)
            let ours = file.metadata().map_err(io_err)?;
            match fs::symlink_metadata(path) {
                Ok(now) if now.dev() == ours.dev() && now.ino() == ours.ino() => {}
                Ok(_) => continue,
                Err(e) if e.kind() == io::ErrorKind::NotFound && is_file => continue,
                Err(e) => return Err(io_err(e)),
            }
            let mut file = file;
            if created {
                // For a person looking at the file: who holds it.
                writeln!(file, "{}", std::process::id()).map_err(io_err)?;
            }
            return Ok(Self {
                _file: file,
                path: path.to_path_buf(),
                remove: is_file,
            });
        }
        Err(io_err(io::Error::other(
            "the lock file kept being replaced by other runs",
        )))
    }
}

/// Whether an existing lock file may be used: a regular file, owned by this user, with no
/// other hard link. Errors are [`LockError::Unsafe`] inside an `io::Error`.
fn check_existing(file: &File, path: &Path) -> io::Result<()> {
    let md = file.metadata()?;
    let unsafe_lock = |problem: String| {
        io::Error::other(LockError::Unsafe {
            path: path.to_path_buf(),
            problem,
        })
    };
    if !md.file_type().is_file() {
        return Err(unsafe_lock("it is not a regular file".into()));
    }
    let me = nix::unistd::geteuid().as_raw();
    if md.uid() != me {
        return Err(unsafe_lock(format!(
            "it belongs to user {} (another user can hold it to block this run)",
            md.uid()
        )));
    }
    if md.nlink() != 1 {
        return Err(unsafe_lock(format!(
            "it has {} hard links (it may be a link planted to another file)",
            md.nlink()
        )));
    }
    Ok(())
}

impl Drop for RunLock {
    fn drop(&mut self) {
        // Removed while still locked: a run that opened it meanwhile sees the change and retries.
        if self.remove {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// The pid holding a `flock` on the inode `dev`/`ino`, from /proc/locks
/// (`1: FLOCK  ADVISORY  WRITE 1234 fe:00:5318857 0 EOF`, device numbers in hex).
fn holder(dev: u64, ino: u64) -> Option<u32> {
    let text = fs::read_to_string("/proc/locks").ok()?;
    let want = format!(
        "{:02x}:{:02x}:{ino}",
        libc::major(dev as libc::dev_t),
        libc::minor(dev as libc::dev_t)
    );
    text.lines().find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let at = fields.iter().position(|f| *f == "FLOCK")?;
        let (pid, id) = (fields.get(at + 3)?, fields.get(at + 4)?);
        (*id == want).then(|| pid.parse().ok()).flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_fails_naming_the_holder_and_the_file_goes_with_the_first() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.lock");
        let first = RunLock::file(&path, "bundle x").unwrap();
        let err = RunLock::file(&path, "bundle x").unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("bundle x is in use by another amibundle run")
                && text.contains(&format!("(pid {})", std::process::id()))
                && text.contains(&path.display().to_string()),
            "{text}"
        );
        drop(first);
        assert!(!path.exists(), "the lock file is removed with the lock");
        let again = RunLock::file(&path, "bundle x").unwrap();
        drop(again);
    }

    #[test]
    fn a_locked_directory_stays() {
        let dir = tempfile::tempdir().unwrap();
        let first = RunLock::dir(dir.path(), "state").unwrap();
        assert!(matches!(
            RunLock::dir(dir.path(), "state"),
            Err(LockError::Busy { .. })
        ));
        drop(first);
        assert!(dir.path().is_dir());
        RunLock::dir(dir.path(), "state").unwrap();
    }

    /// Issue 12, finding 5: lock files live in shared directories (/var/tmp); a hard link
    /// planted at the lock's name made root truncate its target, and a file another user made
    /// there could block runs.
    #[test]
    fn a_planted_hard_link_is_never_truncated_and_a_foreign_lock_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"root:secret:\n").unwrap();
        let path = dir.path().join("x.lock");
        std::fs::hard_link(&victim, &path).unwrap();
        let err = RunLock::file(&path, "bundle x").unwrap_err();
        assert!(
            matches!(&err, LockError::Unsafe { problem, .. } if problem.contains("2 hard links")),
            "{err}"
        );
        assert_eq!(std::fs::read(&victim).unwrap(), b"root:secret:\n");
        std::fs::remove_file(&path).unwrap();

        // Another user's file (needs root to make; CI runs as root).
        if nix::unistd::geteuid().is_root() {
            std::fs::write(&path, b"").unwrap();
            nix::unistd::chown(&path, Some(nix::unistd::Uid::from_raw(4242)), None).unwrap();
            let err = RunLock::file(&path, "bundle x").unwrap_err().to_string();
            assert!(err.contains("belongs to user 4242"), "{err}");
            std::fs::remove_file(&path).unwrap();
        }

        // A stale lock file of ours (a run killed with -9) is used, not rewritten.
        std::fs::write(&path, b"12345\n").unwrap();
        let lock = RunLock::file(&path, "bundle x").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"12345\n");
        drop(lock);
        assert!(!path.exists());
    }
}
