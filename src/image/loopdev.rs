//! Loop devices for `bundle-vol`: attaching an image file to a kernel-assigned free loop device
//! through the kernel interface (`/dev/loop-control` and the `LOOP_*` ioctls of
//! `linux/loop.h`), with no `losetup` and no fixed device names (docs/reference-behaviour.md
//! §2.7 and §12.3: the classic tool took "the first free loop device" by name and could not run
//! twice).
//!
//! A [`LoopDevice`] is a guard: [`LoopDevice::detach`] detaches explicitly and reports
//! failures, dropping it detaches best-effort. Every device is also attached with
//! `LO_FLAGS_AUTOCLEAR`, so the kernel detaches it by itself when its last user goes away: our
//! descriptor (closed by the kernel even if the process is killed) and any mount of it (which,
//! made in the private mount namespace of [`super::mount`], dies with the process). A crash
//! therefore never leaves a loop device attached.
//!
//! This is the one module with `unsafe` code: the ioctl wrappers that nix's macros generate are
//! `unsafe fn`s. Each call passes a descriptor we own and, where the ioctl takes a pointer, a
//! reference to a live `#[repr(C)]` copy of the kernel structure, checked against the header's
//! layout in the unit tests.
#![allow(unsafe_code)]

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;

/// `LO_NAME_SIZE` of `linux/loop.h`.
const LO_NAME_SIZE: usize = 64;
/// `LO_KEY_SIZE` of `linux/loop.h`.
const LO_KEY_SIZE: usize = 32;

/// The device is read-only (`LO_FLAGS_READ_ONLY`).
const LO_FLAGS_READ_ONLY: u32 = 1;
/// Detach when the last user closes the device (`LO_FLAGS_AUTOCLEAR`).
const LO_FLAGS_AUTOCLEAR: u32 = 4;
/// Scan the device for a partition table (`LO_FLAGS_PARTSCAN`).
const LO_FLAGS_PARTSCAN: u32 = 8;

/// How many times a free device is asked for when another process takes the one we were given
/// before we could bind it (`EBUSY`). Each round is one ioctl, so racing with even a busy
/// `losetup -f` loop settles long before this.
const ATTACH_ATTEMPTS: u32 = 64;

/// How long to wait for `/dev/loopN` to appear after `LOOP_CTL_GET_FREE` created device `N`:
/// devtmpfs creates the node at once, a udev-managed static `/dev` a little later.
const DEVICE_NODE_WAIT: Duration = Duration::from_secs(2);

/// `struct loop_info64` of `linux/loop.h`.
#[repr(C)]
#[derive(Clone, Copy)]
struct LoopInfo64 {
    lo_device: u64,
    lo_inode: u64,
    lo_rdevice: u64,
    lo_offset: u64,
    lo_sizelimit: u64,
    lo_number: u32,
    lo_encrypt_type: u32,
    lo_encrypt_key_size: u32,
    lo_flags: u32,
    lo_file_name: [u8; LO_NAME_SIZE],
    lo_crypt_name: [u8; LO_NAME_SIZE],
    lo_encrypt_key: [u8; LO_KEY_SIZE],
    lo_init: [u64; 2],
}

impl LoopInfo64 {
    fn zeroed() -> Self {
        Self {
            lo_device: 0,
            lo_inode: 0,
            lo_rdevice: 0,
            lo_offset: 0,
            lo_sizelimit: 0,
            lo_number: 0,
            lo_encrypt_type: 0,
            lo_encrypt_key_size: 0,
            lo_flags: 0,
            lo_file_name: [0; LO_NAME_SIZE],
            lo_crypt_name: [0; LO_NAME_SIZE],
            lo_encrypt_key: [0; LO_KEY_SIZE],
            lo_init: [0; 2],
        }
    }
}

/// `struct loop_config` of `linux/loop.h` (the argument of `LOOP_CONFIGURE`, Linux 5.8+).
#[repr(C)]
struct LoopConfig {
    fd: u32,
    block_size: u32,
    info: LoopInfo64,
    reserved: [u64; 8],
}

/// `struct blkpg_partition` of `linux/blkpg.h`.
#[repr(C)]
struct BlkpgPartition {
    start: i64,
    length: i64,
    pno: libc::c_int,
    devname: [u8; 64],
    volname: [u8; 64],
}

/// `struct blkpg_ioctl_arg` of `linux/blkpg.h`.
#[repr(C)]
struct BlkpgIoctlArg {
    op: libc::c_int,
    flags: libc::c_int,
    datalen: libc::c_int,
    data: *mut BlkpgPartition,
}

/// `BLKPG_ADD_PARTITION` and `BLKPG_DEL_PARTITION` of `linux/blkpg.h`.
const BLKPG_ADD_PARTITION: libc::c_int = 1;
const BLKPG_DEL_PARTITION: libc::c_int = 2;

/// The ioctls. The loop driver predates the `_IOW` encoding, so every request is a "bad" one
/// (a bare number from `linux/loop.h`).
mod sys {
    use super::{LoopConfig, LoopInfo64};

    nix::ioctl_none_bad!(loop_ctl_get_free, 0x4C82);
    nix::ioctl_write_ptr_bad!(loop_configure, 0x4C0A, LoopConfig);
    nix::ioctl_write_int_bad!(loop_set_fd, 0x4C00);
    nix::ioctl_write_ptr_bad!(loop_set_status64, 0x4C04, LoopInfo64);
    nix::ioctl_none_bad!(loop_clr_fd, 0x4C01);
    // BLKPG = _IO(0x12, 105) of linux/fs.h.
    nix::ioctl_write_ptr_bad!(blkpg, 0x1269, super::BlkpgIoctlArg);
}

/// How to attach.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LoopOptions {
    /// Attach read-only (the image is opened read-only too).
    pub read_only: bool,
    /// Let the kernel scan a partition table and create `/dev/loopNpK` devices (for partitioned
    /// images; see [`LoopDevice::partition_path`]).
    pub partscan: bool,
}

/// A failure to attach or detach a loop device.
#[derive(Debug, thiserror::Error)]
pub enum LoopError {
    /// The image file could not be opened.
    #[error("opening the image {path} for a loop device")]
    OpenImage {
        /// The image file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// `/dev/loop-control` could not be opened.
    #[error(
        "opening /dev/loop-control (loop devices need root and the loop driver: try `modprobe loop`)"
    )]
    OpenControl {
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// `LOOP_CTL_GET_FREE` failed.
    #[error("asking /dev/loop-control for a free loop device")]
    GetFree {
        /// The cause.
        #[source]
        source: Errno,
    },
    /// The device node of the free device could not be opened.
    #[error("opening the loop device {device}")]
    OpenDevice {
        /// The device node.
        device: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Every free device we were given was taken by another process first.
    #[error(
        "no free loop device could be bound to {path}: other processes took each of {attempts} free devices first"
    )]
    NoFreeDevice {
        /// The image file.
        path: PathBuf,
        /// How many devices were tried.
        attempts: u32,
    },
    /// Binding the image to the device failed.
    #[error("attaching {path} to the loop device {device}")]
    Configure {
        /// The image file.
        path: PathBuf,
        /// The device.
        device: PathBuf,
        /// The cause.
        #[source]
        source: Errno,
    },
    /// A partition could not be added to the device.
    #[error("adding partition {index} to the loop device {device}")]
    Partition {
        /// The device.
        device: PathBuf,
        /// The partition number.
        index: u32,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The kernel made a partition from the table that is not where the table we wrote says.
    #[error(
        "the kernel's partition {index} of {device} is at sector {start} with {sectors} sectors, \
         not where the image's table puts it (sector {expected_start}, {expected_sectors} \
         sectors)"
    )]
    PartitionMismatch {
        /// The device.
        device: PathBuf,
        /// The partition number.
        index: u32,
        /// Where the kernel's starts (512-byte sectors).
        start: u64,
        /// Its length.
        sectors: u64,
        /// Where ours starts.
        expected_start: u64,
        /// Our length.
        expected_sectors: u64,
    },
    /// Another program holds the device's lock (udev's protocol for programs that write to
    /// block devices) and did not let go.
    #[error(
        "the loop device {device} stayed locked by another program for {seconds} s (udev \
         holds such locks while it probes a device); try again"
    )]
    Locked {
        /// The device.
        device: PathBuf,
        /// How long we waited.
        seconds: u64,
    },
    /// The device is still in use (a filesystem on it is mounted, or another program holds it
    /// exclusively), so it cannot be detached now. It is marked to detach itself when that user
    /// goes away.
    #[error(
        "the loop device {device} is still in use (unmount it first); it will detach itself when released"
    )]
    InUse {
        /// The device.
        device: PathBuf,
    },
    /// Detaching failed.
    #[error("detaching the loop device {device}")]
    Detach {
        /// The device.
        device: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

/// An image file attached to a loop device; detached by [`LoopDevice::detach`] or, best-effort,
/// when dropped (see the module docs for why a crash cannot leak it either).
#[derive(Debug)]
pub struct LoopDevice {
    /// Our descriptor of the device: keeps it attached (with autoclear) while we live.
    device: File,
    path: PathBuf,
    number: u32,
    /// Partitions added with [`LoopDevice::add_partition`] (not those the kernel made from the
    /// table), removed again before detaching.
    partitions: Vec<u32>,
    /// Set once detached explicitly, so that drop does nothing.
    detached: bool,
}

impl LoopDevice {
    /// Attaches `image` to a free loop device with `LO_FLAGS_AUTOCLEAR` (and
    /// `LO_FLAGS_PARTSCAN` when asked). Uses `LOOP_CONFIGURE`, which binds and configures in
    /// one step; on kernels older than 5.8 falls back to `LOOP_SET_FD` + `LOOP_SET_STATUS64`.
    /// A device taken by another process between `LOOP_CTL_GET_FREE` and the bind (`EBUSY`) is
    /// skipped and a new free one asked for.
    ///
    /// # Errors
    ///
    /// [`LoopError`] naming the image or the device: not root or no loop driver
    /// ([`LoopError::OpenControl`]), an unreadable image, a device node that never appeared.
    pub fn attach(image: &Path, opts: LoopOptions) -> Result<Self, LoopError> {
        Self::attach_with(image, opts, bind)
    }

    /// [`LoopDevice::attach`] with the binding step chosen (the tests force the pre-5.8 path).
    fn attach_with(image: &Path, opts: LoopOptions, bind: BindFn) -> Result<Self, LoopError> {
        let backing = OpenOptions::new()
            .read(true)
            .write(!opts.read_only)
            .open(image)
            .map_err(|source| LoopError::OpenImage {
                path: image.to_owned(),
                source,
            })?;
        let control = OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/loop-control")
            .map_err(|source| LoopError::OpenControl { source })?;
        let mut info = LoopInfo64::zeroed();
        info.lo_flags = LO_FLAGS_AUTOCLEAR;
        if opts.partscan {
            info.lo_flags |= LO_FLAGS_PARTSCAN;
        }
        if opts.read_only {
            info.lo_flags |= LO_FLAGS_READ_ONLY;
        }
        // Informational only (what `losetup` shows on kernels without sysfs backing_file):
        // the image path, truncated, NUL-terminated.
        let name = image.as_os_str().as_bytes();
        let len = name.len().min(LO_NAME_SIZE - 1);
        info.lo_file_name[..len].copy_from_slice(&name[..len]);

        for _ in 0..ATTACH_ATTEMPTS {
            // SAFETY: `control` is an open descriptor of /dev/loop-control that outlives the
            // call; LOOP_CTL_GET_FREE takes no argument.
            let number = unsafe { sys::loop_ctl_get_free(control.as_raw_fd()) }
                .map_err(|source| LoopError::GetFree { source })?;
            let number = u32::try_from(number).map_err(|_| LoopError::GetFree {
                source: Errno::EINVAL,
            })?;
            let path = PathBuf::from(format!("/dev/loop{number}"));
            let device = open_device_node(&path, opts.read_only)?;
            // udev's protocol for programs that write to a block device: an exclusive BSD lock
            // on the whole disk for as long as they write. Taken before the bind, it covers the
            // partitions the kernel scans and those added later: udevd probes none of them, and
            // re-reads no table (which would drop and re-create the partitions under us), until
            // the device is closed. Their `by-uuid`/`by-partuuid` links, which would clash with
            // the source disk's while the image keeps its identifiers, are never made either.
            if !opts.read_only {
                lock_exclusive(&device, &path)?;
            }
            match bind(&device, &backing, &info) {
                Ok(()) => {
                    return Ok(Self {
                        device,
                        path,
                        number,
                        partitions: Vec::new(),
                        detached: false,
                    });
                }
                // Someone else bound it after the kernel handed it to us: ask again.
                Err(Errno::EBUSY) => continue,
                Err(source) => {
                    return Err(LoopError::Configure {
                        path: image.to_owned(),
                        device: path,
                        source,
                    });
                }
            }
        }
        Err(LoopError::NoFreeDevice {
            path: image.to_owned(),
            attempts: ATTACH_ATTEMPTS,
        })
    }

    /// The device node, `/dev/loopN`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The device number `N` of `/dev/loopN` (its sysfs directory is `/sys/block/loopN`).
    #[cfg(test)]
    pub fn number(&self) -> u32 {
        self.number
    }

    /// The node of partition `index` (1-based) of a device attached with
    /// [`LoopOptions::partscan`]: `/dev/loopNpK`.
    pub fn partition_path(&self, index: u32) -> PathBuf {
        PathBuf::from(format!("/dev/loop{}p{index}", self.number))
    }

    /// Makes partition `index` (1-based) covering `size` bytes from `offset` available and
    /// returns its node `/dev/loopNpK`. A kernel with table parsers has made it already from
    /// the table when the device was attached with [`LoopOptions::partscan`]: it is used when it
    /// is exactly where expected. Otherwise it is added with `BLKPG_ADD_PARTITION`, which does
    /// not depend on the kernel's parsers (some kernels are built without them); the offsets
    /// come from the table we wrote.
    ///
    /// # Errors
    ///
    /// [`LoopError::Partition`] if the kernel refuses, or the node never appears;
    /// [`LoopError::PartitionMismatch`] when the kernel's partition is elsewhere.
    pub fn add_partition(
        &mut self,
        index: u32,
        offset: u64,
        size: u64,
    ) -> Result<PathBuf, LoopError> {
        let node = self.partition_path(index);
        let fail = |source: io::Error| LoopError::Partition {
            device: self.path.clone(),
            index,
            source,
        };
        let sysfs = PathBuf::from(format!(
            "/sys/block/loop{n}/loop{n}p{index}",
            n = self.number
        ));
        if sysfs.exists() {
            let read = |name: &str| -> Result<u64, LoopError> {
                let path = sysfs.join(name);
                let text = std::fs::read_to_string(&path).map_err(fail)?;
                text.trim().parse().map_err(|_| {
                    fail(io::Error::other(format!(
                        "unexpected content {text:?} in {}",
                        path.display()
                    )))
                })
            };
            // sysfs counts 512-byte sectors whatever the block size.
            let (start, sectors) = (read("start")?, read("size")?);
            if (start, sectors) != (offset / 512, size / 512) {
                return Err(LoopError::PartitionMismatch {
                    device: self.path.clone(),
                    index,
                    start,
                    sectors,
                    expected_start: offset / 512,
                    expected_sectors: size / 512,
                });
            }
            open_device_node(&node, true).map_err(|e| match e {
                LoopError::OpenDevice { source, .. } => fail(source),
                other => other,
            })?;
            return Ok(node);
        }
        let to_i64 = |v: u64| i64::try_from(v).map_err(|_| fail(Errno::EOVERFLOW.into()));
        let mut part = BlkpgPartition {
            start: to_i64(offset)?,
            length: to_i64(size)?,
            pno: libc::c_int::try_from(index).map_err(|_| fail(Errno::EINVAL.into()))?,
            devname: [0; 64],
            volname: [0; 64],
        };
        self.blkpg(BLKPG_ADD_PARTITION, &mut part)
            .map_err(|e| fail(e.into()))?;
        self.partitions.push(index);
        open_device_node(&node, true).map_err(|e| match e {
            LoopError::OpenDevice { source, .. } => fail(source),
            other => other,
        })?;
        Ok(node)
    }

    fn blkpg(&self, op: libc::c_int, part: &mut BlkpgPartition) -> Result<(), Errno> {
        let arg = BlkpgIoctlArg {
            op,
            flags: 0,
            datalen: std::mem::size_of::<BlkpgPartition>() as libc::c_int,
            data: part,
        };
        // SAFETY: `self.device` is our open descriptor of the loop device; `arg` is a live
        // `struct blkpg_ioctl_arg` whose `data` points to a live `struct blkpg_partition` of the
        // size given (layouts checked in the tests); the kernel only reads them.
        unsafe { sys::blkpg(self.device.as_raw_fd(), &arg) }.map(drop)
    }

    /// Removes the partitions we added (they would otherwise outlive the binding on some
    /// kernels). Best effort: a partition still mounted stays until unmounted.
    fn remove_partitions(&mut self) {
        for index in std::mem::take(&mut self.partitions).into_iter().rev() {
            let mut part = BlkpgPartition {
                start: 0,
                length: 0,
                pno: libc::c_int::try_from(index).unwrap_or(0),
                devname: [0; 64],
                volname: [0; 64],
            };
            if let Err(errno) = self.blkpg(BLKPG_DEL_PARTITION, &mut part) {
                tracing::debug!(
                    "removing partition {index} of {}: {errno}",
                    self.path.display()
                );
            }
        }
    }

    /// Detaches the device.
    ///
    /// # Errors
    ///
    /// [`LoopError::InUse`] while a filesystem on it is still mounted (the device then detaches
    /// itself once unmounted: it is autoclear), [`LoopError::Detach`] if the kernel refuses.
    pub fn detach(mut self) -> Result<(), LoopError> {
        // `LOOP_CLR_FD` on a device somebody else still uses does not fail: it only sets
        // autoclear and returns 0. A mounted filesystem holds its device exclusively, so an
        // `O_EXCL` open is how to tell and report it rather than claim a detach that did not
        // happen.
        match OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_EXCL)
            .open(&self.path)
        {
            Ok(probe) => drop(probe),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                return Err(LoopError::InUse {
                    device: self.path.clone(),
                });
            }
            Err(source) => {
                return Err(LoopError::Detach {
                    device: self.path.clone(),
                    source,
                });
            }
        }
        self.remove_partitions();
        // SAFETY: `self.device` is our open descriptor of the loop device; LOOP_CLR_FD takes
        // no argument.
        match unsafe { sys::loop_clr_fd(self.device.as_raw_fd()) } {
            // ENXIO: not bound any more; nothing to do.
            Ok(_) | Err(Errno::ENXIO) => {}
            Err(errno) => {
                return Err(LoopError::Detach {
                    device: self.path.clone(),
                    source: errno.into(),
                });
            }
        }
        self.detached = true;
        // With only our descriptor open, the kernel marked the device for rundown: closing it
        // (dropping `self`, which closes `self.device`) releases the image.
        Ok(())
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        if self.detached {
            return;
        }
        self.remove_partitions();
        // Best effort: if the device is still mounted this only confirms autoclear, and the
        // device goes when the mount does; otherwise closing our descriptor right after this
        // releases it.
        // SAFETY: `self.device` is our open descriptor of the loop device; LOOP_CLR_FD takes
        // no argument.
        match unsafe { sys::loop_clr_fd(self.device.as_raw_fd()) } {
            Ok(_) | Err(Errno::ENXIO) => {}
            Err(errno) => {
                tracing::warn!(
                    "detaching the loop device {} failed ({errno}); it detaches itself when no longer used",
                    self.path.display()
                );
            }
        }
    }
}

/// Opens `/dev/loopN`, waiting briefly for a node that udev has yet to create.
fn open_device_node(path: &Path, read_only: bool) -> Result<File, LoopError> {
    let deadline = Instant::now() + DEVICE_NODE_WAIT;
    loop {
        match OpenOptions::new().read(true).write(!read_only).open(path) {
            Ok(file) => return Ok(file),
            Err(e) if e.kind() == io::ErrorKind::NotFound && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(source) => {
                return Err(LoopError::OpenDevice {
                    device: path.to_owned(),
                    source,
                });
            }
        }
    }
}

/// How long [`lock_exclusive`] waits for another holder (udevd probing the device) to let go.
const LOCK_WAIT: Duration = Duration::from_secs(30);

/// Takes an exclusive BSD lock (`flock`) on the device, waiting up to [`LOCK_WAIT`] for another
/// holder; the lock lasts as long as `device` is open.
fn lock_exclusive(device: &File, path: &Path) -> Result<(), LoopError> {
    let deadline = Instant::now() + LOCK_WAIT;
    loop {
        // SAFETY: `device` is an open descriptor we own for the duration of the call; flock
        // takes no pointer.
        let rc = unsafe { libc::flock(device.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc == 0 {
            return Ok(());
        }
        match Errno::last() {
            Errno::EINTR => {}
            Errno::EWOULDBLOCK if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(50));
            }
            Errno::EWOULDBLOCK => {
                return Err(LoopError::Locked {
                    device: path.to_owned(),
                    seconds: LOCK_WAIT.as_secs(),
                });
            }
            errno => {
                return Err(LoopError::OpenDevice {
                    device: path.to_owned(),
                    source: errno.into(),
                });
            }
        }
    }
}

/// A way to bind a backing file to a loop device with the flags of a `loop_info64`.
type BindFn = fn(&File, &File, &LoopInfo64) -> Result<(), Errno>;

/// Binds `backing` to `device` with `info`'s flags: `LOOP_CONFIGURE`, or on kernels without it
/// [`bind_legacy`].
fn bind(device: &File, backing: &File, info: &LoopInfo64) -> Result<(), Errno> {
    let fd = u32::try_from(backing.as_raw_fd()).map_err(|_| Errno::EBADF)?;
    let config = LoopConfig {
        fd,
        block_size: 0,
        info: *info,
        reserved: [0; 8],
    };
    // SAFETY: `device` is an open descriptor of a loop device and `config` a live
    // `struct loop_config` (layout checked in the tests) that the kernel only reads.
    match unsafe { sys::loop_configure(device.as_raw_fd(), &config) } {
        Ok(_) => Ok(()),
        // Kernels before 5.8 do not know the request: the loop driver answers EINVAL, the
        // block layer ENOTTY.
        Err(Errno::EINVAL | Errno::ENOTTY) => bind_legacy(device, backing, info),
        Err(errno) => Err(errno),
    }
}

/// Binds with `LOOP_SET_FD` then sets the flags with `LOOP_SET_STATUS64` (kernels before 5.8).
/// Not atomic: a crash between the two leaves a device without autoclear.
fn bind_legacy(device: &File, backing: &File, info: &LoopInfo64) -> Result<(), Errno> {
    // SAFETY: `device` and `backing` are open descriptors that outlive the call; LOOP_SET_FD
    // takes the backing descriptor as its integer argument. Read-only follows the modes the
    // two files were opened with.
    unsafe { sys::loop_set_fd(device.as_raw_fd(), backing.as_raw_fd()) }?;
    let mut status = *info;
    // Not settable through LOOP_SET_STATUS64 (it follows the open modes above).
    status.lo_flags &= !LO_FLAGS_READ_ONLY;
    // SAFETY: `device` is open and bound; `status` is a live `struct loop_info64` (layout
    // checked in the tests) that the kernel only reads.
    if let Err(errno) = unsafe { sys::loop_set_status64(device.as_raw_fd(), &status) } {
        // Do not leave the device bound without autoclear.
        // SAFETY: as above; LOOP_CLR_FD takes no argument.
        let _ = unsafe { sys::loop_clr_fd(device.as_raw_fd()) };
        return Err(errno);
    }
    Ok(())
}

/// The loop devices (`/dev/loopN`) whose backing file is `image`, from
/// `/sys/block/loop*/loop/backing_file`. For checks and diagnostics.
///
/// # Errors
///
/// Reading `/sys/block` or canonicalizing `image` failed.
#[cfg(test)]
pub fn devices_backed_by(image: &Path) -> io::Result<Vec<PathBuf>> {
    let image = std::fs::canonicalize(image)?;
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/sys/block")? {
        let entry = entry?;
        let name = entry.file_name();
        if !name.as_bytes().starts_with(b"loop") {
            continue;
        }
        // Absent when the device is not bound.
        let Ok(backing) = std::fs::read(entry.path().join("loop/backing_file")) else {
            continue;
        };
        let backing = backing.strip_suffix(b"\n").unwrap_or(&backing);
        if Path::new(std::ffi::OsStr::from_bytes(backing)) == image {
            found.push(Path::new("/dev").join(name));
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::testing::{require_root, sparse_file};
    use std::mem::{offset_of, size_of};
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn structures_match_linux_loop_h() {
        // struct loop_info64: five __u64, four __u32, three byte arrays (64 + 64 + 32) and
        // __u64 lo_init[2]; no padding anywhere.
        assert_eq!(size_of::<LoopInfo64>(), 232);
        assert_eq!(offset_of!(LoopInfo64, lo_number), 40);
        assert_eq!(offset_of!(LoopInfo64, lo_flags), 52);
        assert_eq!(offset_of!(LoopInfo64, lo_file_name), 56);
        assert_eq!(offset_of!(LoopInfo64, lo_crypt_name), 120);
        assert_eq!(offset_of!(LoopInfo64, lo_encrypt_key), 184);
        assert_eq!(offset_of!(LoopInfo64, lo_init), 216);
        // struct loop_config: __u32 fd, __u32 block_size, the info, __u64 __reserved[8].
        assert_eq!(size_of::<LoopConfig>(), 304);
        assert_eq!(offset_of!(LoopConfig, block_size), 4);
        assert_eq!(offset_of!(LoopConfig, info), 8);
        assert_eq!(offset_of!(LoopConfig, reserved), 240);
        // struct blkpg_partition: long long start, length; int pno; char devname[64],
        // volname[64]; padded to 8. struct blkpg_ioctl_arg: three ints and a pointer (64-bit).
        assert_eq!(offset_of!(BlkpgPartition, pno), 16);
        assert_eq!(offset_of!(BlkpgPartition, devname), 20);
        assert_eq!(size_of::<BlkpgPartition>(), 152);
        assert_eq!(offset_of!(BlkpgIoctlArg, data), 16);
        assert_eq!(size_of::<BlkpgIoctlArg>(), 24);
    }

    fn backing_file(number: u32) -> Option<Vec<u8>> {
        std::fs::read(format!("/sys/block/loop{number}/loop/backing_file")).ok()
    }

    fn sysfs_flag(number: u32, name: &str) -> String {
        std::fs::read_to_string(format!("/sys/block/loop{number}/loop/{name}"))
            .unwrap_or_else(|e| panic!("reading loop{number} {name}: {e}"))
            .trim()
            .to_owned()
    }

    #[test]
    #[ignore = "needs root: loop devices, mounts, namespaces (scripts/test.sh runs it as root)"]
    fn attaches_with_autoclear_and_detaches() {
        require_root();
        let dir = tempfile::tempdir().expect("temp dir");
        let image = sparse_file(dir.path(), "a.img", 64 << 20);
        let canonical = std::fs::canonicalize(&image).expect("canonical");

        let dev = LoopDevice::attach(&image, LoopOptions::default()).expect("attach");
        assert_eq!(dev.path(), Path::new(&format!("/dev/loop{}", dev.number())));
        let backing = backing_file(dev.number()).expect("bound");
        assert_eq!(
            backing.strip_suffix(b"\n").unwrap_or(&backing),
            canonical.as_os_str().as_bytes()
        );
        assert_eq!(sysfs_flag(dev.number(), "autoclear"), "1");
        assert_eq!(sysfs_flag(dev.number(), "partscan"), "0");
        assert_eq!(
            std::fs::read_to_string(format!("/sys/block/loop{}/ro", dev.number()))
                .expect("ro")
                .trim(),
            "0"
        );
        // The device reads the image's bytes.
        std::fs::write(&image, b"loop device contents").expect("write image");
        let mut head = [0u8; 20];
        use std::os::unix::fs::FileExt;
        File::open(dev.path())
            .and_then(|f| f.read_exact_at(&mut head, 0))
            .expect("read device");
        assert_eq!(&head, b"loop device contents");
        assert_eq!(devices_backed_by(&image).expect("scan"), vec![dev.path()]);

        dev.detach().expect("detach");
        assert_eq!(
            devices_backed_by(&image).expect("scan"),
            Vec::<PathBuf>::new()
        );
    }

    #[test]
    #[ignore = "needs root: loop devices, mounts, namespaces (scripts/test.sh runs it as root)"]
    fn read_only_and_partscan_are_applied() {
        require_root();
        let dir = tempfile::tempdir().expect("temp dir");
        let image = sparse_file(dir.path(), "ro.img", 64 << 20);
        let opts = LoopOptions {
            read_only: true,
            partscan: true,
        };
        let dev = LoopDevice::attach(&image, opts).expect("attach");
        let n = dev.number();
        assert_eq!(sysfs_flag(n, "partscan"), "1");
        assert_eq!(sysfs_flag(n, "autoclear"), "1");
        assert_eq!(
            std::fs::read_to_string(format!("/sys/block/loop{n}/ro"))
                .expect("ro")
                .trim(),
            "1"
        );
        // The kernel lets a read-only device be opened for writing, but refuses the write.
        use std::os::unix::fs::FileExt;
        let written = OpenOptions::new()
            .write(true)
            .open(dev.path())
            .and_then(|f| f.write_all_at(&[1u8; 4096], 0).and_then(|()| f.sync_all()));
        assert!(
            written.is_err(),
            "a read-only loop device must refuse writes"
        );
        assert_eq!(
            std::fs::metadata(&image).expect("stat").blocks(),
            0,
            "image untouched"
        );
        assert_eq!(
            dev.partition_path(1),
            PathBuf::from(format!("/dev/loop{n}p1"))
        );
        dev.detach().expect("detach");
        assert!(devices_backed_by(&image).expect("scan").is_empty());
    }

    #[test]
    #[ignore = "needs root: loop devices, mounts, namespaces (scripts/test.sh runs it as root)"]
    fn dropping_the_guard_on_an_error_or_panic_path_detaches() {
        require_root();
        let dir = tempfile::tempdir().expect("temp dir");
        let image = sparse_file(dir.path(), "drop.img", 64 << 20);

        // An early return through `?` after attaching.
        fn attach_then_fail(image: &Path) -> Result<(), String> {
            let _dev =
                LoopDevice::attach(image, LoopOptions::default()).map_err(|e| e.to_string())?;
            assert_eq!(devices_backed_by(image).expect("scan").len(), 1);
            Err("a later step failed".to_owned())
        }
        assert!(attach_then_fail(&image).is_err());
        assert!(devices_backed_by(&image).expect("scan").is_empty());

        // A panic while attached.
        let result = std::panic::catch_unwind(|| {
            let _dev = LoopDevice::attach(&image, LoopOptions::default()).expect("attach");
            assert_eq!(devices_backed_by(&image).expect("scan").len(), 1);
            panic!("a later step panicked");
        });
        assert!(result.is_err());
        assert!(devices_backed_by(&image).expect("scan").is_empty());
    }

    #[test]
    #[ignore = "needs root: loop devices, mounts, namespaces (scripts/test.sh runs it as root)"]
    fn the_pre_5_8_binding_sets_the_same_flags() {
        require_root();
        let dir = tempfile::tempdir().expect("temp dir");
        let image = sparse_file(dir.path(), "legacy.img", 64 << 20);
        let opts = LoopOptions {
            read_only: true,
            partscan: true,
        };
        let dev = LoopDevice::attach_with(&image, opts, bind_legacy).expect("attach");
        let n = dev.number();
        assert_eq!(sysfs_flag(n, "autoclear"), "1");
        assert_eq!(sysfs_flag(n, "partscan"), "1");
        assert_eq!(
            std::fs::read_to_string(format!("/sys/block/loop{n}/ro"))
                .expect("ro")
                .trim(),
            "1"
        );
        assert_eq!(devices_backed_by(&image).expect("scan"), vec![dev.path()]);
        drop(dev);
        assert!(devices_backed_by(&image).expect("scan").is_empty());
    }

    #[test]
    #[ignore = "needs root: loop devices, mounts, namespaces (scripts/test.sh runs it as root)"]
    fn attaching_two_images_gives_two_devices() {
        require_root();
        let dir = tempfile::tempdir().expect("temp dir");
        let a = sparse_file(dir.path(), "a.img", 1 << 20);
        let b = sparse_file(dir.path(), "b.img", 1 << 20);
        let da = LoopDevice::attach(&a, LoopOptions::default()).expect("attach a");
        let db = LoopDevice::attach(&b, LoopOptions::default()).expect("attach b");
        assert_ne!(da.number(), db.number());
        assert_eq!(devices_backed_by(&a).expect("scan"), vec![da.path()]);
        assert_eq!(devices_backed_by(&b).expect("scan"), vec![db.path()]);
        db.detach().expect("detach b");
        da.detach().expect("detach a");
    }

    #[test]
    fn a_missing_image_is_named() {
        let err = LoopDevice::attach(Path::new("/nonexistent/x.img"), LoopOptions::default())
            .expect_err("no image");
        assert!(matches!(err, LoopError::OpenImage { .. }), "{err:?}");
        assert_eq!(
            err.to_string(),
            "opening the image /nonexistent/x.img for a loop device"
        );
    }
}
