//! Mounts for `bundle-vol`, all made inside a private mount namespace: the image filesystem the
//! copy fills, and a read-only bind of the source volume the copy reads.
//!
//! The classic tool mounted the image at the fixed `/mnt/img-mnt` in the host's namespace,
//! where every other process saw it, two runs clashed, and a crash left it mounted
//! (docs/reference-behaviour.md §2.8, §12.3). Here [`enter_private_namespace`] first moves the
//! process into a mount namespace of its own whose mounts never propagate back to the host;
//! everything mounted afterwards is invisible outside the process and disappears with it,
//! whatever way it ends. [`Mount`] is a guard on top: explicit [`Mount::unmount`], best-effort
//! lazy detach when dropped. It never removes its mount point: the caller owns that directory
//! and must not delete it unless the unmount succeeded (deleting through a live mount would
//! delete the mounted files).

use std::io;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags};
use nix::sys::statvfs::{FsFlags, statvfs};

/// Proof that the process has entered its private mount namespace: required to mount, so that
/// nothing can be mounted where the host would see it.
#[derive(Debug)]
pub struct PrivateNamespace {
    _private: (),
}

/// A failure to set up the namespace, mount or unmount.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    /// The process already runs other threads, which would stay in the host's namespace.
    #[error(
        "cannot enter a private mount namespace: the process already runs {threads} threads, and only the calling thread would move (enter it before starting any thread)"
    )]
    Threads {
        /// The threads counted in `/proc/self/task`.
        threads: usize,
    },
    /// Counting the threads failed.
    #[error("counting the threads of this process in /proc/self/task")]
    CountThreads {
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// `unshare(CLONE_NEWNS)` failed.
    #[error("creating a private mount namespace (needs root)")]
    Unshare {
        /// The cause.
        #[source]
        source: Errno,
    },
    /// Making `/` recursively private failed.
    #[error("making the mounts of the private namespace private (mount --make-rprivate /)")]
    MakePrivate {
        /// The cause.
        #[source]
        source: Errno,
    },
    /// A mount failed.
    #[error("mounting {source_path} on {target} ({what})")]
    Mount {
        /// What was mounted.
        source_path: PathBuf,
        /// The mount point.
        target: PathBuf,
        /// The kind of mount: the filesystem type, or `read-only bind`.
        what: String,
        /// The cause.
        #[source]
        source: Errno,
    },
    /// Reading the flags of a fresh bind mount failed.
    #[error("reading the mount flags of {target}")]
    Statvfs {
        /// The mount point.
        target: PathBuf,
        /// The cause.
        #[source]
        source: Errno,
    },
    /// An unmount failed; the mount is left to the lazy detach of the guard's drop.
    #[error("unmounting {target}")]
    Unmount {
        /// The mount point.
        target: PathBuf,
        /// The cause (`EBUSY`: a process still uses it).
        #[source]
        source: Errno,
    },
}

/// Moves this process into a new mount namespace in which every mount is private: nothing
/// mounted afterwards is seen by the host, and the namespace with its mounts goes away when
/// the process exits.
///
/// Must be called before the process starts any thread: `unshare` moves only the calling
/// thread (threads created later inherit its namespace, earlier ones keep the host's, and
/// would not see our mounts). Checked: with more than one thread in `/proc/self/task` it fails
/// without changing anything.
///
/// # Errors
///
/// [`MountError::Threads`] if other threads exist, [`MountError::Unshare`] without root,
/// [`MountError::MakePrivate`] if `/` is not a mount point (e.g. in a plain chroot).
pub fn enter_private_namespace() -> Result<PrivateNamespace, MountError> {
    enter(1)
}

/// For the tests' child processes: the test harness's main thread only waits for the test
/// thread and never looks at a mount, so one more thread is harmless there.
#[cfg(test)]
pub(crate) fn enter_private_namespace_in_test() -> Result<PrivateNamespace, MountError> {
    enter(2)
}

fn enter(max_threads: usize) -> Result<PrivateNamespace, MountError> {
    let threads = std::fs::read_dir("/proc/self/task")
        .and_then(|dir| dir.collect::<Result<Vec<_>, _>>())
        .map_err(|source| MountError::CountThreads { source })?
        .len();
    if threads > max_threads {
        return Err(MountError::Threads { threads });
    }
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS)
        .map_err(|source| MountError::Unshare { source })?;
    // The new namespace starts as a copy of the host's, including shared propagation: without
    // this, mounts below a shared mount would still propagate to the host.
    nix::mount::mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(|source| MountError::MakePrivate { source })?;
    Ok(PrivateNamespace { _private: () })
}

/// A mount in the private namespace; unmounted by [`Mount::unmount`] or, lazily and
/// best-effort, when dropped.
#[derive(Debug)]
pub struct Mount {
    target: PathBuf,
    /// Cleared once unmounted explicitly, so that drop does nothing.
    mounted: bool,
}

impl Mount {
    /// Mounts `source` (a device, or anything `fstype` accepts) on the existing directory
    /// `target` with `flags` and filesystem-specific `data` (e.g. `nouuid` for XFS).
    ///
    /// # Errors
    ///
    /// [`MountError::Mount`] naming the source, target and type.
    pub fn new(
        _ns: &PrivateNamespace,
        source: &Path,
        target: &Path,
        fstype: &str,
        flags: MsFlags,
        data: Option<&str>,
    ) -> Result<Self, MountError> {
        nix::mount::mount(Some(source), target, Some(fstype), flags, data).map_err(|errno| {
            MountError::Mount {
                source_path: source.to_owned(),
                target: target.to_owned(),
                what: fstype.to_owned(),
                source: errno,
            }
        })?;
        Ok(Self {
            target: target.to_owned(),
            mounted: true,
        })
    }

    /// Binds the directory `source` read-only on the existing directory `target`, for the copy
    /// to read the volume from. Not recursive: mounts below `source` are not carried along, so
    /// their mount points show as the directories underneath them (which the copy recreates
    /// empty) rather than their contents. The bind keeps the source mount's `nosuid`, `nodev`
    /// and `noexec` flags (required when they are locked, harmless otherwise) and is `noatime`.
    ///
    /// # Errors
    ///
    /// [`MountError::Mount`] if binding or making it read-only fails (nothing stays mounted).
    pub fn bind_read_only(
        _ns: &PrivateNamespace,
        source: &Path,
        target: &Path,
    ) -> Result<Self, MountError> {
        let fail = |errno| MountError::Mount {
            source_path: source.to_owned(),
            target: target.to_owned(),
            what: "read-only bind".to_owned(),
            source: errno,
        };
        nix::mount::mount(
            Some(source),
            target,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(fail)?;
        let bind = Self {
            target: target.to_owned(),
            mounted: true,
        };
        // A bind mount takes the read-only flag only through a remount of the bind itself.
        let kept = statvfs(target)
            .map(|st| carried_flags(st.flags()))
            .map_err(|source| MountError::Statvfs {
                target: target.to_owned(),
                source,
            })?;
        // noatime as well: the copy opens files with O_NOATIME, but reading a symlink or
        // listing a directory would still move the live volume's atimes (which the copy then
        // copies). Where the source's atime flags are locked (EPERM), keep them as they are.
        let remount = |atime: MsFlags| {
            nix::mount::mount(
                None::<&str>,
                target,
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | atime,
                None::<&str>,
            )
        };
        let atime_flags = MsFlags::MS_NOATIME | MsFlags::MS_RELATIME | MsFlags::MS_NODIRATIME;
        match remount((kept - atime_flags) | MsFlags::MS_NOATIME) {
            Ok(()) => {}
            Err(Errno::EPERM) => remount(kept).map_err(fail)?,
            Err(errno) => return Err(fail(errno)),
        }
        Ok(bind)
    }

    /// The mount point.
    pub fn target(&self) -> &Path {
        &self.target
    }

    /// Unmounts.
    ///
    /// # Errors
    ///
    /// [`MountError::Unmount`], e.g. `EBUSY` while a process still has a file open there; the
    /// mount is then detached lazily (it goes when no longer used).
    pub fn unmount(mut self) -> Result<(), MountError> {
        nix::mount::umount2(&self.target, MntFlags::empty()).map_err(|source| {
            MountError::Unmount {
                target: self.target.clone(),
                source,
            }
        })?;
        self.mounted = false;
        Ok(())
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if !self.mounted {
            return;
        }
        // Lazy: detach it from the tree now even if busy; the kernel finishes when the last
        // user lets go. The namespace dies with the process anyway.
        if let Err(errno) = nix::mount::umount2(&self.target, MntFlags::MNT_DETACH) {
            tracing::error!("unmounting {} failed: {errno}", self.target.display());
        }
    }
}

/// The mount flags a read-only remount of a bind must keep from the mount it copies.
fn carried_flags(flags: FsFlags) -> MsFlags {
    let pairs = [
        (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
        (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
        (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
        (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
        (FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
        (FsFlags::ST_RELATIME, MsFlags::MS_RELATIME),
    ];
    pairs
        .into_iter()
        .filter(|(st, _)| flags.contains(*st))
        .fold(MsFlags::empty(), |acc, (_, ms)| acc | ms)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::fs::{
        FsType, MkfsSpec, create_image_file, create_work_dir, mkfs, probe_device,
    };
    use crate::image::loopdev::{LoopDevice, LoopError, LoopOptions, devices_backed_by};
    use crate::image::testing::{
        TestChild, child_receive, child_send, is_child, mount_points, require_root, test_name,
    };
    use std::ffi::OsStr;
    use std::fs::File;

    fn name(function: &str) -> String {
        test_name(module_path!(), function)
    }

    #[test]
    fn refuses_to_enter_with_other_threads_running() {
        // The harness runs this test on a thread of its own, so there are at least two.
        let before = std::fs::read_link("/proc/thread-self/ns/mnt").expect("mount namespace");
        let err = enter_private_namespace().expect_err("more than one thread");
        assert!(
            matches!(err, MountError::Threads { threads } if threads >= 2),
            "{err:?}"
        );
        assert!(
            err.to_string().contains("before starting any thread"),
            "{err}"
        );
        let after = std::fs::read_link("/proc/thread-self/ns/mnt").expect("mount namespace");
        assert_eq!(before, after, "the namespace must not change on refusal");
    }

    const LABEL: &str = "amibundle-t";
    const UUID: &str = "0b6c4f3e-2a57-4c1d-9e8f-123456789abc";
    const CONTENT: &[u8] = b"written inside the private namespace\n";

    /// The whole bundle-vol image path: a sparse image, mkfs with a label and UUID, attached,
    /// mounted in a private namespace (in a child process), written, unmounted, detached; the
    /// parent never sees the mount, and finds the label, UUID and file in the image after.
    #[test]
    #[ignore = "needs root: loop devices, mounts, namespaces (scripts/test.sh runs it as root)"]
    fn image_mounted_in_a_private_namespace_stays_invisible_and_is_cleaned_up() {
        let me = name("image_mounted_in_a_private_namespace_stays_invisible_and_is_cleaned_up");
        if is_child(&me) {
            let image = std::env::var_os("TEST_IMAGE").expect("TEST_IMAGE");
            let mnt = PathBuf::from(std::env::var_os("TEST_MNT").expect("TEST_MNT"));
            let ns = enter_private_namespace_in_test().expect("private namespace");
            let dev =
                LoopDevice::attach(Path::new(&image), LoopOptions::default()).expect("attach");
            let mount =
                Mount::new(&ns, dev.path(), &mnt, "ext4", MsFlags::empty(), None).expect("mount");
            std::fs::write(mnt.join("hello"), CONTENT).expect("write");
            assert!(mount_points("thread-self").contains(&mnt), "visible inside");
            // Our thread's namespace, not the main thread's (/proc/<pid> is the main thread).
            child_send("tid", &nix::unistd::gettid().to_string());
            child_send("mounted", &dev.path().display().to_string());
            assert_eq!(child_receive(), "unmount");
            mount.unmount().expect("unmount");
            assert!(!mount_points("thread-self").contains(&mnt), "gone inside");
            dev.detach().expect("detach");
            child_send("done", "");
            return;
        }
        require_root();
        let dir = tempfile::tempdir().expect("temp dir");
        let dir = create_work_dir(dir.path()).expect("work dir");
        let image = create_image_file(dir.path(), "root.img", 64 << 20).expect("image");
        let spec = MkfsSpec {
            label: Some(LABEL.into()),
            uuid: Some(UUID.parse().expect("uuid")),
            ..MkfsSpec::new(FsType::Ext4)
        };
        mkfs(&image, &spec).expect("mkfs");
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&mnt).expect("mount point");

        let mut child = TestChild::spawn(
            &me,
            &[
                ("TEST_IMAGE", image.as_os_str()),
                ("TEST_MNT", mnt.as_os_str()),
            ],
        );
        let tid = child.receive("tid");
        let device = PathBuf::from(child.receive("mounted"));
        // The child's namespace has the mount; ours never does.
        assert!(mount_points(&format!("{}/task/{tid}", child.pid())).contains(&mnt));
        assert!(!mount_points("thread-self").contains(&mnt));
        assert!(!mount_points("self").contains(&mnt));
        assert!(!mount_points("1").contains(&mnt), "init's namespace");
        assert_eq!(devices_backed_by(&image).expect("scan"), vec![device]);
        child.send("unmount");
        child.receive("done");
        child.finish();

        assert!(devices_backed_by(&image).expect("scan").is_empty());
        let probe = probe_device(&image).expect("blkid");
        assert_eq!(probe.fs_type.as_deref(), Some("ext4"));
        assert_eq!(probe.label.as_deref(), Some(OsStr::new(LABEL)));
        assert_eq!(probe.uuid.as_deref(), Some(UUID));
        let out = std::process::Command::new("debugfs")
            .args([
                OsStr::new("-R"),
                OsStr::new("cat /hello"),
                image.as_os_str(),
            ])
            .output()
            .expect("debugfs");
        assert!(out.status.success(), "debugfs: {out:?}");
        assert_eq!(out.stdout, CONTENT);
    }

    /// A mount guard dropped without unmounting (error path) still takes the mount away, and
    /// the autoclear loop device under it goes with it; a loop device detached while mounted is
    /// refused as in use and released by the unmount.
    #[test]
    #[ignore = "needs root: loop devices, mounts, namespaces (scripts/test.sh runs it as root)"]
    fn dropped_guards_and_busy_detach_leave_nothing_behind() {
        let me = name("dropped_guards_and_busy_detach_leave_nothing_behind");
        if is_child(&me) {
            let image = PathBuf::from(std::env::var_os("TEST_IMAGE").expect("TEST_IMAGE"));
            let mnt = PathBuf::from(std::env::var_os("TEST_MNT").expect("TEST_MNT"));
            let ns = enter_private_namespace_in_test().expect("private namespace");

            // Both guards dropped on an early-return path.
            let early = || -> Result<(), String> {
                let dev = LoopDevice::attach(&image, LoopOptions::default())
                    .map_err(|e| e.to_string())?;
                let _mount = Mount::new(&ns, dev.path(), &mnt, "ext4", MsFlags::empty(), None)
                    .map_err(|e| e.to_string())?;
                assert!(mount_points("thread-self").contains(&mnt));
                Err("a later step failed".to_owned())
            };
            assert!(early().is_err());
            assert!(!mount_points("thread-self").contains(&mnt), "mount dropped");
            assert!(
                devices_backed_by(&image).expect("scan").is_empty(),
                "loop dropped"
            );

            // Detaching while mounted: refused, then released by the unmount.
            let dev = LoopDevice::attach(&image, LoopOptions::default()).expect("attach");
            let mount =
                Mount::new(&ns, dev.path(), &mnt, "ext4", MsFlags::empty(), None).expect("mount");
            let err = dev.detach().expect_err("mounted");
            assert!(matches!(err, LoopError::InUse { .. }), "{err:?}");
            assert_eq!(devices_backed_by(&image).expect("scan").len(), 1);
            mount.unmount().expect("unmount");
            assert!(
                devices_backed_by(&image).expect("scan").is_empty(),
                "autoclear"
            );

            // A busy mount: the explicit unmount fails, the drop detaches it lazily.
            let dev = LoopDevice::attach(&image, LoopOptions::default()).expect("attach");
            let mount =
                Mount::new(&ns, dev.path(), &mnt, "ext4", MsFlags::empty(), None).expect("mount");
            drop(dev);
            let open = File::open(mnt.join("lost+found")).expect("open a directory");
            let err = mount.unmount().expect_err("busy");
            assert!(
                matches!(
                    err,
                    MountError::Unmount {
                        source: Errno::EBUSY,
                        ..
                    }
                ),
                "{err:?}"
            );
            assert!(
                !mount_points("thread-self").contains(&mnt),
                "lazily detached"
            );
            assert_eq!(
                devices_backed_by(&image).expect("scan").len(),
                1,
                "still held"
            );
            drop(open);
            assert!(
                devices_backed_by(&image).expect("scan").is_empty(),
                "released"
            );
            child_send("done", "");
            return;
        }
        require_root();
        let dir = tempfile::tempdir().expect("temp dir");
        let dir = create_work_dir(dir.path()).expect("work dir");
        let image = create_image_file(dir.path(), "drop.img", 64 << 20).expect("image");
        mkfs(&image, &MkfsSpec::new(FsType::Ext4)).expect("mkfs");
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&mnt).expect("mount point");
        let mut child = TestChild::spawn(
            &me,
            &[
                ("TEST_IMAGE", image.as_os_str()),
                ("TEST_MNT", mnt.as_os_str()),
            ],
        );
        child.receive("done");
        child.finish();
        assert!(devices_backed_by(&image).expect("scan").is_empty());
    }

    /// The read-only bind shows the source's files, refuses writes, and does not carry the
    /// mounts below the source along.
    #[test]
    #[ignore = "needs root: loop devices, mounts, namespaces (scripts/test.sh runs it as root)"]
    fn read_only_bind_is_read_only_and_not_recursive() {
        let me = name("read_only_bind_is_read_only_and_not_recursive");
        if is_child(&me) {
            let src = PathBuf::from(std::env::var_os("TEST_SRC").expect("TEST_SRC"));
            let dst = PathBuf::from(std::env::var_os("TEST_DST").expect("TEST_DST"));
            let ns = enter_private_namespace_in_test().expect("private namespace");
            let nested = Mount::new(
                &ns,
                Path::new("tmpfs"),
                &src.join("nested"),
                "tmpfs",
                MsFlags::MS_NOSUID,
                Some("size=1m,mode=0700"),
            )
            .expect("nested tmpfs");
            std::fs::write(src.join("nested/on-tmpfs"), b"x").expect("write nested");

            let bind = Mount::bind_read_only(&ns, &src, &dst).expect("bind");
            assert_eq!(
                std::fs::read(dst.join("file")).expect("read"),
                b"source file"
            );
            let err = File::create(dst.join("new")).expect_err("read-only");
            assert_eq!(err.raw_os_error(), Some(libc::EROFS), "{err}");
            let err = File::create(dst.join("file")).expect_err("read-only");
            assert_eq!(err.raw_os_error(), Some(libc::EROFS), "{err}");
            // The directory under the nested mount, not the tmpfs.
            assert_eq!(
                std::fs::read_dir(dst.join("nested")).expect("list").count(),
                1,
                "the underlying directory's one file"
            );
            assert!(dst.join("nested/under-the-mount").exists());
            assert!(!dst.join("nested/on-tmpfs").exists());
            // The source itself stays writable.
            std::fs::write(src.join("still-writable"), b"y").expect("source writable");
            bind.unmount().expect("unmount bind");
            nested.unmount().expect("unmount nested");
            child_send("done", "");
            return;
        }
        require_root();
        let dir = tempfile::tempdir().expect("temp dir");
        let src = dir.path().join("src");
        let dst = dir.path().join("dst");
        std::fs::create_dir_all(src.join("nested")).expect("source");
        std::fs::create_dir(&dst).expect("target");
        std::fs::write(src.join("file"), b"source file").expect("file");
        std::fs::write(src.join("nested/under-the-mount"), b"z").expect("file");
        let mut child = TestChild::spawn(
            &me,
            &[("TEST_SRC", src.as_os_str()), ("TEST_DST", dst.as_os_str())],
        );
        child.receive("done");
        child.finish();
        assert!(src.join("still-writable").exists());
        assert!(!mount_points("thread-self").contains(&dst));
    }

    #[test]
    fn carried_flags_map_statvfs_to_mount_flags() {
        assert_eq!(carried_flags(FsFlags::empty()), MsFlags::empty());
        assert_eq!(
            carried_flags(FsFlags::ST_NOSUID | FsFlags::ST_NODEV | FsFlags::ST_RDONLY),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV
        );
        assert_eq!(
            carried_flags(FsFlags::ST_NOEXEC | FsFlags::ST_RELATIME),
            MsFlags::MS_NOEXEC | MsFlags::MS_RELATIME
        );
    }
}
