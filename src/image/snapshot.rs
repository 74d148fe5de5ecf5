//! The first half of `bundle-vol` and `save` as one call: a volume → an image file in a work
//! directory under the destination, ready to bundle ([`snapshot`]).
//!
//! Two kinds of work directory:
//! - [`WorkKind::Temporary`] (`bundle-vol`): a fresh private directory, removed with everything
//!   in it when the [`Snapshot`] is dropped, whatever happened;
//! - [`WorkKind::Resumable`] (`save`): the fixed, locked [`SaveState`] directory, which survives
//!   a failed bundle so that a rerun with the same options takes the finished image up again
//!   and bundles it with the same key, IV and tar mtime ([`Snapshot::resume`]). An image cut
//!   short is of no use to a rerun and is removed at once.
//!
//! The image can be kept after bundling ([`SnapshotOptions::keep_at`]): `bundle-vol` moves it
//! there before bundling (the bundle is made from the kept file), `save` only once the bundle
//! is complete (until then the image is the resumable state).

use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::image::fs::{self as imgfs, FsError};
use crate::image::mount::PrivateNamespace;
use crate::image::save::{Resume, SaveError, SaveState};
use crate::image::volume::{self, VolumeError, VolumeImage, VolumeOptions};
use crate::progress::Progress;

/// Which work directory the image is made in (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkKind {
    /// Private, removed when the snapshot is dropped (`bundle-vol`).
    Temporary,
    /// Fixed and kept after a failure for a rerun (`save`).
    Resumable,
}

/// Where and how a snapshot is made.
#[derive(Debug, Clone)]
pub struct SnapshotOptions {
    /// The existing directory that holds the work directory (and a kept image).
    pub destination: PathBuf,
    /// The work directory's kind.
    pub work: WorkKind,
    /// Keep the image file at this path (which must not exist) instead of removing it.
    pub keep_at: Option<PathBuf>,
}

/// Why no snapshot was made, or its work directory could not be tidied.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// The temporary work directory.
    #[error(transparent)]
    WorkDir(#[from] FsError),
    /// The resumable state.
    #[error(transparent)]
    Save(#[from] SaveError),
    /// Making the image.
    #[error("making an image of {}", volume.display())]
    Volume {
        /// The volume.
        volume: PathBuf,
        /// What failed.
        #[source]
        source: VolumeError,
    },
    /// The image could not be moved to where it is kept.
    #[error("moving the image to {}", to.display())]
    Keep {
        /// Where it was to go.
        to: PathBuf,
        /// Why it could not.
        #[source]
        source: std::io::Error,
    },
}

/// A finished image in its work directory.
pub struct Snapshot {
    work: Work,
    image: PathBuf,
    keep_at: Option<PathBuf>,
    /// What was made; `None` when the complete image of an interrupted `save` was reused.
    pub made: Option<VolumeImage>,
    /// Key, IV and tar mtime to bundle with (resumable snapshots only).
    pub resume: Option<Resume>,
    /// Wall time of the snapshot, seconds.
    pub seconds: f64,
}

enum Work {
    Temp(tempfile::TempDir),
    Save(SaveState),
}

impl Work {
    fn path(&self) -> &Path {
        match self {
            Work::Temp(dir) => dir.path(),
            Work::Save(state) => state.dir(),
        }
    }
}

/// Makes (or, resumable, reuses) the image of `opts.volume` as described in the module docs.
/// The caller has entered the private mount namespace (`ns`).
pub fn snapshot(
    ns: &PrivateNamespace,
    opts: &VolumeOptions,
    how: SnapshotOptions,
    progress: &dyn Progress,
) -> Result<Snapshot, SnapshotError> {
    let work = match how.work {
        WorkKind::Temporary => Work::Temp(imgfs::create_work_dir(&how.destination)?),
        WorkKind::Resumable => {
            Work::Save(SaveState::open(&how.destination, &opts.image_name, opts)?)
        }
    };
    let image = work.path().join(&opts.image_name);
    let started = Instant::now();
    let reused = match &work {
        Work::Save(state) => state.reusable_image(),
        Work::Temp(_) => None,
    };
    let (made, resume) = match reused {
        Some(resume) => {
            tracing::info!(
                "reusing the complete image {} made by an interrupted run",
                image.display()
            );
            (None, Some(resume))
        }
        None => {
            if let Work::Save(state) = &work {
                state.clear()?;
            }
            tracing::info!(
                "saving {} into a {} image in {}",
                opts.volume.display(),
                opts.fs_type
                    .map_or("matching".to_string(), |t| t.to_string()),
                work.path().display()
            );
            let made = match volume::make_image(ns, opts, work.path(), progress) {
                Ok(made) => made,
                Err(source) => {
                    // An image cut short (an error, SIGINT/SIGTERM) is of no use to a rerun,
                    // which would start over anyway: nothing is kept.
                    if let Work::Save(state) = work {
                        if let Err(e) = state.remove() {
                            tracing::warn!("{}", crate::bundle::error_chain(&e));
                        }
                    }
                    return Err(SnapshotError::Volume {
                        volume: opts.volume.clone(),
                        source,
                    });
                }
            };
            let resume = match &work {
                Work::Save(state) => Some(state.mark_complete(&made.path)?),
                Work::Temp(_) => None,
            };
            (Some(made), resume)
        }
    };
    let mut snap = Snapshot {
        work,
        image,
        keep_at: how.keep_at,
        made,
        resume,
        seconds: started.elapsed().as_secs_f64(),
    };
    if let (Work::Temp(_), Some(to)) = (&snap.work, snap.keep_at.clone()) {
        move_image(&snap.image, &to)?;
        snap.image = to;
    }
    Ok(snap)
}

fn move_image(from: &Path, to: &Path) -> Result<(), SnapshotError> {
    std::fs::rename(from, to).map_err(|source| SnapshotError::Keep {
        to: to.to_path_buf(),
        source,
    })
}

impl Snapshot {
    /// The image file to bundle.
    pub fn image(&self) -> &Path {
        &self.image
    }

    /// Whether the image is the complete one of an interrupted run.
    pub fn reused(&self) -> bool {
        self.made.is_none()
    }

    /// Tidies up after the bundle: `bundled` says whether it succeeded. A temporary work
    /// directory goes in any case. A resumable one goes once the bundle succeeded (the image
    /// moved to [`SnapshotOptions::keep_at`] first, if asked); after a failure it stays for the
    /// rerun, and its path is returned so that the caller can say so.
    pub fn finish(self, bundled: bool) -> Result<Option<PathBuf>, SnapshotError> {
        match self.work {
            Work::Temp(dir) => {
                let path = dir.path().to_path_buf();
                dir.close()
                    .map_err(|source| SnapshotError::WorkDir(FsError::WorkDir { path, source }))?;
                Ok(None)
            }
            Work::Save(state) if bundled => {
                if let Some(to) = &self.keep_at {
                    move_image(&self.image, to)?;
                }
                state.remove()?;
                Ok(None)
            }
            Work::Save(state) => Ok(Some(state.dir().to_path_buf())),
        }
    }
}
