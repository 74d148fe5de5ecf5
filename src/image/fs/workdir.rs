//! Where the image is made: a fresh work directory only its owner can use (0700,
//! [`create_work_dir`]) and, in it, the sparse image file, mode 0600, created exclusively
//! ([`create_image_file`]): the unencrypted image holds the whole system.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};

use super::FsError;

/// Creates a fresh work directory in `parent`, mode 0700 (removed with its contents when the
/// returned guard drops: unmount everything below it first, and call `keep()` on it if an
/// unmount failed).
///
/// # Errors
///
/// [`FsError::WorkDir`].
pub fn create_work_dir(parent: &Path) -> Result<tempfile::TempDir, FsError> {
    tempfile::Builder::new()
        .prefix("amibundle-")
        .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o700))
        .tempdir_in(parent)
        .map_err(|source| FsError::WorkDir {
            path: parent.to_owned(),
            source,
        })
}

/// Creates the sparse image file `dir/name` of `size` bytes, mode 0600, failing if it exists.
/// `dir` must be a directory of this user that others cannot use (mode 0700, e.g. from
/// [`create_work_dir`]), so nobody else can open, swap or watch the unencrypted image.
///
/// # Errors
///
/// [`FsError::UnsafeWorkDir`], [`FsError::BadImageName`], [`FsError::BadImageSize`] (zero
/// or not whole sectors), [`FsError::CreateImage`] (e.g. it exists).
pub fn create_image_file(dir: &Path, name: &str, size: u64) -> Result<PathBuf, FsError> {
    let md = std::fs::metadata(dir).map_err(|source| FsError::WorkDir {
        path: dir.to_owned(),
        source,
    })?;
    let mode = md.mode() & 0o7777;
    if !md.is_dir() || md.uid() != nix::unistd::geteuid().as_raw() || mode & 0o077 != 0 {
        return Err(FsError::UnsafeWorkDir {
            path: dir.to_owned(),
            mode,
            uid: md.uid(),
        });
    }
    let mut components = Path::new(name).components();
    if !matches!(
        (components.next(), components.next()),
        (Some(Component::Normal(_)), None)
    ) {
        return Err(FsError::BadImageName { name: name.into() });
    }
    if size == 0 || size % 512 != 0 {
        return Err(FsError::BadImageSize { size });
    }
    let path = dir.join(name);
    let file: File = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&path)
        .map_err(|source| FsError::CreateImage {
            path: path.clone(),
            source,
        })?;
    if let Err(source) = file.set_len(size) {
        drop(file);
        let _ = std::fs::remove_file(&path);
        return Err(FsError::CreateImage { path, source });
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::fs::tests::MIB;

    #[test]
    fn creates_private_sparse_images_in_private_dirs() {
        let parent = tempfile::tempdir().expect("temp dir");
        let work = create_work_dir(parent.path()).expect("work dir");
        let md = std::fs::metadata(work.path()).expect("stat");
        assert_eq!(md.mode() & 0o7777, 0o700);

        let image = create_image_file(work.path(), "vol.img", 64 * MIB).expect("image");
        let md = std::fs::metadata(&image).expect("stat");
        assert_eq!(md.mode() & 0o7777, 0o600);
        assert_eq!(md.len(), 64 * MIB);
        assert_eq!(md.blocks(), 0, "sparse");

        let err = create_image_file(work.path(), "vol.img", 64 * MIB).expect_err("exists");
        assert!(matches!(err, FsError::CreateImage { .. }), "{err:?}");
        for name in ["", "a/b", "..", "/abs"] {
            let err = create_image_file(work.path(), name, MIB).expect_err("bad name");
            assert!(
                matches!(err, FsError::BadImageName { .. }),
                "{name:?}: {err:?}"
            );
        }
        for size in [0, 1000] {
            let err = create_image_file(work.path(), "s.img", size).expect_err("bad size");
            assert!(
                matches!(err, FsError::BadImageSize { .. }),
                "{size}: {err:?}"
            );
        }
        // A directory others can use is refused, and nothing is created in it.
        let open = parent.path().join("open");
        std::fs::create_dir(&open).expect("dir");
        std::fs::set_permissions(&open, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .expect("chmod");
        let err = create_image_file(&open, "x.img", MIB).expect_err("unsafe dir");
        assert_eq!(
            err.to_string(),
            format!(
                "the work directory {} must be a directory owned by this user that no one else can use (mode 0700; it is 0755, owner {})",
                open.display(),
                nix::unistd::geteuid()
            )
        );
        assert!(!open.join("x.img").exists());
    }
}
