//! Free space: a check before writing where the space needed is known up front (`statvfs`), and
//! the same kind of message when the filesystem fills up midway (`ENOSPC`, `EDQUOT`). Either way
//! the message names the directory, what it needs and what it has.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

/// Not enough space in a directory's filesystem, found before writing or while writing.
#[derive(Debug)]
pub struct NoSpace {
    /// The directory written into.
    pub dir: PathBuf,
    /// What needs the space ("the image", "the bundle's parts" ...).
    pub what: String,
    /// About how many bytes it needs, when known.
    pub needed: Option<u64>,
    /// Bytes free for unprivileged use, when `statvfs` tells.
    pub free: Option<u64>,
    /// The write that failed, for a filesystem that filled up midway; `None` for a check
    /// made before writing.
    pub source: Option<io::Error>,
}

impl NoSpace {
    /// The filesystem holding `dir` filled up while writing `what`: `full` is the failed
    /// write's error (ENOSPC or EDQUOT), the free space is measured now.
    pub fn midway(dir: &Path, what: String, needed: Option<u64>, full: &io::Error) -> Self {
        Self {
            dir: dir.to_path_buf(),
            what,
            needed,
            free: free_bytes(dir),
            source: Some(io::Error::from_raw_os_error(
                full.raw_os_error().unwrap_or(libc::ENOSPC),
            )),
        }
    }
}

impl fmt::Display for NoSpace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bytes = crate::progress::human_bytes;
        write!(f, "{NO_SPACE}{}: ", self.dir.display())?;
        match (&self.source, self.needed) {
            (None, Some(n)) => write!(f, "{} needs about {}", self.what, bytes(n))?,
            (None, None) => write!(f, "{} does not fit", self.what)?,
            (Some(_), Some(n)) => write!(
                f,
                "the filesystem filled up while writing {} (about {} needed)",
                self.what,
                bytes(n)
            )?,
            (Some(_), None) => write!(f, "the filesystem filled up while writing {}", self.what)?,
        }
        if let Some(free) = self.free {
            write!(f, ", has {} free", bytes(free))?;
        }
        write!(f, " (free some space, or use -d/--destination elsewhere)")
    }
}

impl std::error::Error for NoSpace {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_ref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

/// Bytes available to an unprivileged writer in the filesystem holding `dir`.
pub fn free_bytes(dir: &Path) -> Option<u64> {
    let st = nix::sys::statvfs::statvfs(dir).ok()?;
    #[allow(clippy::useless_conversion)] // the field types differ between targets
    Some(u64::from(st.blocks_available()).saturating_mul(u64::from(st.fragment_size())))
}

/// Refuses up front when `dir`'s filesystem has less than `needed` bytes free for `what`.
/// Nothing is refused when the free space cannot be read.
pub fn ensure(dir: &Path, needed: u64, what: &str) -> Result<(), NoSpace> {
    match free_bytes(dir) {
        Some(free) if free < needed => Err(NoSpace {
            dir: dir.to_path_buf(),
            what: what.to_string(),
            needed: Some(needed),
            free: Some(free),
            source: None,
        }),
        _ => Ok(()),
    }
}

/// Whether an I/O error says the filesystem (or the user's quota) is full.
pub fn is_full(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT))
}

/// The first error in `err`'s chain that says the filesystem is full, if any.
pub fn full_in_chain<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a io::Error> {
    let mut cur = Some(err);
    while let Some(e) = cur {
        if let Some(io) = e.downcast_ref::<io::Error>() {
            if is_full(io) {
                return Some(io);
            }
        }
        if e.is::<NoSpace>() {
            return None;
        }
        cur = e.source();
    }
    None
}

#[cfg(feature = "cli")]
/// When `err` comes from a full filesystem (and is not already a [`NoSpace`]), the same kind of
/// message as the up-front check, naming `dir`, `what` and about how much it `needed`; the
/// original error stays in the chain. Otherwise `err` unchanged.
pub fn explain(err: anyhow::Error, dir: &Path, what: &str, needed: Option<u64>) -> anyhow::Error {
    if already_said(&err) {
        return err;
    }
    let full = err
        .chain()
        .find_map(|e| e.downcast_ref::<io::Error>().filter(|io| is_full(io)))
        .map(|io| io::Error::from_raw_os_error(io.raw_os_error().unwrap_or(libc::ENOSPC)));
    match full {
        Some(source) => {
            // (No free figure: what the failed run wrote is gone by now.)
            let ns = NoSpace {
                dir: dir.to_path_buf(),
                what: what.to_string(),
                needed,
                free: None,
                source: Some(source),
            };
            // The full message on top; what was being done when it happened below it.
            err.context(ns.to_string())
        }
        None => err,
    }
}

#[cfg(feature = "cli")]
/// Like [`explain`], and also when the error does not say why but `dir`'s filesystem has (next
/// to) nothing left: a loop-mounted image whose backing file cannot grow reports I/O errors,
/// not `ENOSPC`, to the writes inside it.
pub fn explain_full_dir(err: anyhow::Error, dir: &Path, what: &str) -> anyhow::Error {
    let err = explain(err, dir, what, None);
    if already_said(&err) {
        return err;
    }
    match free_bytes(dir) {
        Some(free) if free < NEARLY_FULL_BYTES => {
            let ns = NoSpace {
                dir: dir.to_path_buf(),
                what: what.to_string(),
                needed: None,
                free: Some(free),
                source: Some(io::Error::from_raw_os_error(libc::ENOSPC)),
            };
            err.context(ns.to_string())
        }
        _ => err,
    }
}

#[cfg(feature = "cli")]
/// Whether `err`'s chain holds a [`NoSpace`] already (also one wrapped transparently, as
/// `bundle::Error::NoSpace` does, which hides the type from the chain but not its message).
fn already_said(err: &anyhow::Error) -> bool {
    err.chain()
        .any(|e| e.is::<NoSpace>() || e.to_string().starts_with(NO_SPACE))
}

/// How every [`NoSpace`] message starts.
const NO_SPACE: &str = "not enough space in ";

/// Free space below which a failed write is taken to be a full filesystem.
#[cfg(feature = "cli")]
const NEARLY_FULL_BYTES: u64 = 1 << 20;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_directory_the_need_and_the_free_space() {
        let up_front = NoSpace {
            dir: "/mnt/small".into(),
            what: "the image".into(),
            needed: Some(30 << 20),
            free: Some(5 << 20),
            source: None,
        };
        assert_eq!(
            up_front.to_string(),
            "not enough space in /mnt/small: the image needs about 30.00 MiB, has 5.00 MiB free (free some space, or use -d/--destination elsewhere)"
        );
        let midway = NoSpace {
            source: Some(io::Error::from_raw_os_error(libc::ENOSPC)),
            ..up_front
        };
        assert!(
            midway
                .to_string()
                .contains("the filesystem filled up while writing the image"),
            "{midway}"
        );
    }

    #[cfg(feature = "cli")]
    #[test]
    fn a_full_filesystem_is_explained_and_other_errors_are_not() {
        let dir = tempfile::tempdir().unwrap();
        let full = anyhow::Error::new(io::Error::from_raw_os_error(libc::ENOSPC))
            .context("writing part 3");
        let text = format!("{:#}", explain(full, dir.path(), "the bundle", Some(1000)));
        assert!(
            text.starts_with(&format!("not enough space in {}", dir.path().display()))
                && text.contains("writing part 3"),
            "{text}"
        );
        let other = anyhow::Error::new(io::Error::from_raw_os_error(libc::EACCES));
        let text = format!("{:#}", explain(other, dir.path(), "the bundle", None));
        assert!(!text.contains("not enough space"), "{text}");
        assert!(ensure(dir.path(), 1, "x").is_ok());
        assert!(ensure(dir.path(), u64::MAX, "x").is_err());
    }
}
