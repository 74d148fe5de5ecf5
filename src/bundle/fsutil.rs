//! Small filesystem helpers shared by the bundle engine.

use std::ffi::OsString;
use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// A failure of [`write_atomically`]: the file it was working on (the temporary file, or `path`
/// itself for the final rename and for a `path` without a parent or file name) and the cause.
#[derive(Debug, thiserror::Error)]
#[error("writing {}", path.display())]
pub struct AtomicWriteError {
    /// The temporary file, or the destination.
    pub path: PathBuf,
    /// The I/O error.
    #[source]
    pub source: io::Error,
}

/// Writes `bytes` to `path` so that readers see either the old file or the complete new one,
/// never a partial one: the bytes go to a temporary file `.<file name><tmp_suffix>` in the same
/// directory, created exclusively (a planted file or link is never followed) with mode `mode`,
/// set exactly whatever the umask, fsynced, and renamed over `path`. The directory itself is not
/// fsynced, so after a crash the rename may not have reached the disk yet.
///
/// `tmp_suffix` should make the name unique per process, for example
/// `format!(".tmp.{}", std::process::id())`. A temporary file of that name left over by a
/// crashed run is replaced. On failure the temporary file is removed (best effort).
///
/// # Errors
///
/// [`AtomicWriteError`] naming the temporary file (create, write, chmod, fsync) or `path`
/// (rename; `path` has no parent directory or no file name).
pub fn write_atomically(
    path: &Path,
    bytes: &[u8],
    mode: u32,
    tmp_suffix: &str,
) -> Result<(), AtomicWriteError> {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(AtomicWriteError {
            path: path.to_owned(),
            source: io::Error::new(io::ErrorKind::InvalidInput, "not a file path"),
        });
    };
    let mut tmp_name = OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(tmp_suffix);
    let tmp = dir.join(tmp_name);
    let tmp_err = |source| AtomicWriteError {
        path: tmp.clone(),
        source,
    };

    let open = || {
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)
    };
    let mut file = match open() {
        // Left over from a crashed run that had our name: it is ours to replace.
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            fs::remove_file(&tmp).map_err(tmp_err)?;
            open()
        }
        other => other,
    }
    .map_err(tmp_err)?;
    let written = file
        .write_all(bytes)
        .and_then(|()| file.set_permissions(fs::Permissions::from_mode(mode)))
        .and_then(|()| file.sync_all())
        .map_err(tmp_err)
        .and_then(|()| {
            fs::rename(&tmp, path).map_err(|source| AtomicWriteError {
                path: path.to_owned(),
                source,
            })
        });
    if written.is_err() {
        // Best effort: the original error is what matters.
        let _ = fs::remove_file(&tmp);
    }
    written
}
