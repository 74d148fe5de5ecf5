//! `save`'s resumable state: a fixed work directory `DEST/.amibundle-save-PREFIX` (0700,
//! root-owned, locked for the run) that survives a failed run, and a record written only once
//! the image is complete and synced, with the AES key, IV and tar mtime the bundle is made with.
//! A rerun with the same options finds the record, checks that it still describes the image
//! file there (size, inode, mtime) and bundles the same bytes again, so the parts S3 already
//! holds are not sent twice. Any other options (a different fingerprint) start over.
//!
//! The record holds the bundle's key and IV: the directory is as sensitive as the image in it
//! (docs/security.md, "Out of scope"). It is removed when the save succeeds.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::bundle::crypto::{AesIv, AesKey, CryptoError};
use crate::bundle::lock::{LockError, RunLock};
use crate::image::volume::{FstabChoice, VolumeOptions};

/// The record's file name in the state directory.
const SAVE_RECORD: &str = "complete.json";

/// The record format; a record of another version is not reused.
const RECORD_VERSION: u32 = 2;

/// What a resumed run reuses: the key, IV and tar mtime of the bundle the first run made.
#[derive(Debug)]
pub struct Resume {
    /// The AES key of the first attempt.
    pub key: AesKey,
    /// Its IV.
    pub iv: AesIv,
    /// The tar member's mtime.
    pub mtime: u64,
}

/// Why the save state could not be used.
#[derive(Debug, thiserror::Error)]
pub enum SaveError {
    /// The state directory exists but is not ours alone.
    #[error("{} is not a private (0700, root-owned) directory: remove it", dir.display())]
    NotPrivate {
        /// The directory.
        dir: PathBuf,
    },
    /// Another run holds the state, or its lock is unsafe.
    #[error(transparent)]
    Lock(#[from] LockError),
    /// A file of the state could not be read, written or removed.
    #[error("{action} {}", path.display())]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// No random key or IV.
    #[error(transparent)]
    Crypto(#[from] CryptoError),
}

fn io_err(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> SaveError + use<> {
    let path = path.to_path_buf();
    move |source| SaveError::Io {
        action,
        path,
        source,
    }
}

/// The record, written only once the image is complete and synced.
#[derive(Serialize, Deserialize)]
struct SaveRecord {
    version: u32,
    fingerprint: String,
    size: u64,
    inode: u64,
    mtime_ns: i128,
    tar_mtime: u64,
    key: String,
    iv: String,
}

/// The options that decide the image's contents, as they enter the fingerprint: a rerun with
/// any of them changed starts over. Serialized to JSON (field names and values, in this order)
/// and hashed.
#[derive(Serialize)]
struct ImageInputs<'a> {
    volume: &'a Path,
    image_name: &'a str,
    size_mib: Option<u64>,
    fs_type: Option<String>,
    new_uuid: bool,
    all: bool,
    exclude: &'a [PathBuf],
    include: &'a [PathBuf],
    filter: bool,
    tool_inputs: &'a [PathBuf],
    fstab: (&'static str, Option<&'a Path>),
    ephemeral: &'a [(String, String)],
    generalize: bool,
    partition: String,
    bootloader: String,
}

/// The fingerprint of the options that decide the image (SHA-1 of `ImageInputs` as JSON).
pub fn fingerprint(opts: &VolumeOptions) -> String {
    let fstab = match &opts.fstab {
        FstabChoice::Keep => ("keep", None),
        FstabChoice::Generate => ("generate", None),
        FstabChoice::File(path) => ("file", Some(path.as_path())),
    };
    let inputs = ImageInputs {
        volume: &opts.volume,
        image_name: &opts.image_name,
        size_mib: opts.size_mib,
        fs_type: opts.fs_type.map(|t| t.to_string()),
        new_uuid: opts.new_uuid,
        all: opts.all,
        exclude: &opts.exclude,
        include: &opts.include,
        filter: opts.filter,
        tool_inputs: &opts.tool_inputs,
        fstab,
        ephemeral: &opts.ephemeral,
        generalize: opts.generalize,
        partition: opts.partition.name().to_string(),
        bootloader: opts.bootloader.name().to_string(),
    };
    // Serializing plain strings, numbers and paths cannot fail; a path that is not UTF-8 is
    // refused by serde_json and then stands as its lossy form.
    let json = serde_json::to_vec(&inputs).unwrap_or_else(|_| {
        format!(
            "{}|{}|{:?}",
            opts.volume.to_string_lossy(),
            opts.image_name,
            opts.exclude
        )
        .into_bytes()
    });
    crate::bundle::digest::sha1_hex(&json)
}

/// The work directory of `save` and its record of a complete image. Held for the run: a second
/// `save` of the same prefix and destination fails at once.
#[derive(Debug)]
pub struct SaveState {
    dir: PathBuf,
    name: String,
    fingerprint: String,
    _lock: RunLock,
}

impl SaveState {
    /// `<destination>/.amibundle-save-<name>`, 0700 (created if missing; an existing one must be
    /// a directory of ours that others cannot use), locked.
    pub fn open(destination: &Path, name: &str, opts: &VolumeOptions) -> Result<Self, SaveError> {
        let dir = destination.join(format!(".amibundle-save-{name}"));
        match fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                let md = fs::symlink_metadata(&dir).map_err(io_err("inspecting", &dir))?;
                if !md.is_dir() || md.uid() != 0 || md.mode() & 0o077 != 0 {
                    return Err(SaveError::NotPrivate { dir });
                }
            }
            Err(e) => return Err(io_err("creating", &dir)(e)),
        }
        let lock = RunLock::dir(
            &dir,
            &format!(
                "the save state of --prefix {name} in {}",
                destination.display()
            ),
        )?;
        Ok(Self {
            dir,
            name: name.to_string(),
            fingerprint: fingerprint(opts),
            _lock: lock,
        })
    }

    /// The state directory (where the image is made).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The image's path in it.
    pub fn image(&self) -> PathBuf {
        self.dir.join(&self.name)
    }

    /// The record's resume data when it describes exactly the image file there now, made with
    /// the same options.
    pub fn reusable_image(&self) -> Option<Resume> {
        let text = fs::read(self.dir.join(SAVE_RECORD)).ok()?;
        let rec: SaveRecord = serde_json::from_slice(&text).ok()?;
        let md = fs::symlink_metadata(self.image()).ok()?;
        let mtime_ns = i128::from(md.mtime()) * 1_000_000_000 + i128::from(md.mtime_nsec());
        let same = rec.version == RECORD_VERSION
            && rec.fingerprint == self.fingerprint
            && md.is_file()
            && md.len() == rec.size
            && md.ino() == rec.inode
            && mtime_ns == rec.mtime_ns;
        if !same {
            tracing::info!(
                "the image left by an earlier run does not match this one: starting over"
            );
            return None;
        }
        Some(Resume {
            key: AesKey::from_hex(&rec.key).ok()?,
            iv: AesIv::from_hex(&rec.iv).ok()?,
            mtime: rec.tar_mtime,
        })
    }

    /// Removes what an earlier run left (an incomplete image, a stale record).
    pub fn clear(&self) -> Result<(), SaveError> {
        for entry in fs::read_dir(&self.dir).map_err(io_err("reading", &self.dir))? {
            let path = entry.map_err(io_err("reading", &self.dir))?.path();
            let md = fs::symlink_metadata(&path).map_err(io_err("inspecting", &path))?;
            if md.is_dir() {
                fs::remove_dir_all(&path)
            } else {
                fs::remove_file(&path)
            }
            .map_err(io_err("removing", &path))?;
        }
        Ok(())
    }

    /// Records the finished image (synced first) with a fresh key, IV and tar mtime: from now
    /// on a rerun makes the same bundle bytes.
    pub fn mark_complete(&self, image: &Path) -> Result<Resume, SaveError> {
        fs::File::open(image)
            .and_then(|f| f.sync_all())
            .map_err(io_err("syncing", image))?;
        let md = fs::metadata(image).map_err(io_err("inspecting", image))?;
        let (key, iv) = (AesKey::random()?, AesIv::random()?);
        let tar_mtime = u64::try_from(md.mtime()).unwrap_or(0);
        let rec = SaveRecord {
            version: RECORD_VERSION,
            fingerprint: self.fingerprint.clone(),
            size: md.len(),
            inode: md.ino(),
            mtime_ns: i128::from(md.mtime()) * 1_000_000_000 + i128::from(md.mtime_nsec()),
            tar_mtime,
            key: key.to_hex(),
            iv: iv.to_hex(),
        };
        let json = serde_json::to_vec(&rec).map_err(|e| io_err("writing", &self.dir)(e.into()))?;
        let tmp = self.dir.join(format!("{SAVE_RECORD}.tmp"));
        let mut f =
            crate::bundle::parts::create_private_file(&tmp).map_err(io_err("writing", &tmp))?;
        f.write_all(&json)
            .and_then(|()| f.sync_all())
            .map_err(io_err("writing", &tmp))?;
        let path = self.dir.join(SAVE_RECORD);
        fs::rename(&tmp, &path).map_err(io_err("writing", &path))?;
        Ok(Resume {
            key,
            iv,
            mtime: tar_mtime,
        })
    }

    /// Removes the state directory (the save succeeded, or its image is of no use).
    pub fn remove(self) -> Result<(), SaveError> {
        fs::remove_dir_all(&self.dir).map_err(io_err("removing", &self.dir))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options() -> VolumeOptions {
        VolumeOptions {
            volume: PathBuf::from("/srv/data"),
            image_name: "data".into(),
            ..VolumeOptions::default()
        }
    }

    #[test]
    fn the_fingerprint_changes_with_every_option_that_decides_the_image() {
        let base = fingerprint(&options());
        assert_eq!(base, fingerprint(&options()), "stable");
        let changed: Vec<VolumeOptions> = vec![
            VolumeOptions {
                size_mib: Some(1024),
                ..options()
            },
            VolumeOptions {
                exclude: vec![PathBuf::from("/srv/data/tmp")],
                ..options()
            },
            VolumeOptions {
                generalize: true,
                ..options()
            },
            VolumeOptions {
                fstab: FstabChoice::File(PathBuf::from("/etc/fstab.new")),
                ..options()
            },
            VolumeOptions {
                new_uuid: true,
                ..options()
            },
        ];
        for opts in changed {
            assert_ne!(fingerprint(&opts), base, "{opts:?}");
        }
        // Options that only affect how the image is made, not what is in it, do not count.
        let threads = VolumeOptions {
            threads: 7,
            ..options()
        };
        assert_eq!(fingerprint(&threads), base);
    }

    #[test]
    fn a_record_is_reused_only_for_the_image_it_describes() {
        let dest = tempfile::tempdir().unwrap();
        let opts = options();
        let state = SaveState::open(dest.path(), "data", &opts).unwrap();
        let image = state.image();
        fs::write(&image, vec![1u8; 4096]).unwrap();
        assert!(state.reusable_image().is_none(), "no record yet");
        let first = state.mark_complete(&image).unwrap();
        let again = state
            .reusable_image()
            .expect("the record describes the image");
        assert_eq!(again.key.to_hex(), first.key.to_hex());
        assert_eq!(again.mtime, first.mtime);
        // The image changed since: not reused.
        fs::write(&image, vec![2u8; 8192]).unwrap();
        assert!(state.reusable_image().is_none());
        drop(state);
        // Other options: not reused either.
        let state = SaveState::open(dest.path(), "data", &opts).unwrap();
        state.mark_complete(&state.image()).unwrap();
        drop(state);
        let other = VolumeOptions {
            generalize: true,
            ..opts.clone()
        };
        let state = SaveState::open(dest.path(), "data", &other).unwrap();
        assert!(state.reusable_image().is_none());
        // A second holder of the same state is refused while the first holds it.
        assert!(matches!(
            SaveState::open(dest.path(), "data", &opts),
            Err(SaveError::Lock(_))
        ));
        state.remove().unwrap();
        assert!(!dest.path().join(".amibundle-save-data").exists());
    }
}
