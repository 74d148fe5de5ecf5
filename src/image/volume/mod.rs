//! `bundle-vol`'s first half: a live volume (the root filesystem or any directory) → a
//! faithful loopback image file, built entirely inside the process's private mount namespace.
//!
//! Order of work, each step behind a guard that undoes it on any failure:
//!
//! 1. find the volume's filesystem and plan the image's (type, label, UUID, layout: [`fs`]);
//! 2. size it (`--size`, else used space plus headroom; root volumes capped at EC2's 10 GiB);
//! 3. create the 0600 sparse image in the 0700 work directory and make the filesystem on it;
//! 4. attach it to a loop device and mount it; bind the volume read-only (not recursively, so
//!    other mounts below it show as the directories underneath, copied empty) next to it;
//! 5. scan for secrets (`filter`) and copy the tree (`copy`), leaving out the work
//!    directory, swap files, the user's exclusions and what the filter found;
//! 6. set up `/etc/fstab` (`fstab`) and, on request, generalize (`generalize`);
//! 7. unmount and detach explicitly, so that failures there are reported, not ignored.
//!
//! The caller enters the private namespace first ([`crate::image::mount::enter_private_namespace`]) and owns
//! the work directory.
//!
//! The parts: `tree` (the mounts below the volume, its used space, the private view of it,
//! swap files) and `pattern` (`--exclude`/`--include` wildcards, [`expand_pattern`]); this
//! module holds the options, the results, the errors and the steps themselves.

use std::collections::BTreeSet;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::mount::MsFlags;

use crate::image::copy::{self, CopyOptions, CopyReport};
use crate::image::filter::{self, FilterOptions, FilterReport};
use crate::image::fs::{self as imgfs, FsType, MkfsSpec, VolumeRole};
use crate::image::fstab::{self, FstabWarning, RootFs};
use crate::image::generalize::{self, GeneralizeReport};
use crate::image::loopdev::{LoopDevice, LoopOptions};
use crate::image::mount::{Mount, PrivateNamespace};
use crate::image::partition::{
    self, Bootloader, GrubReport, PartitionChoice, PartitionStyle, TableSpec,
};
use crate::image::{bootcheck, bootrefs};
use crate::progress::Progress;

mod pattern;
mod tree;

pub use pattern::{expand_pattern, expand_patterns};
use tree::{in_view, mounts_below, read_mounts, swap_files, volume_usage};

/// Directories of a root volume whose contents are runtime state, never part of an image: they
/// are created empty with their own mode, owner and times. With the non-recursive bind these
/// are usually the empty directories under the pseudo-filesystems already; listing them also
/// covers systems where they are plain directories.
const ROOT_RUNTIME_DIRS: [&str; 5] = ["/proc", "/sys", "/dev", "/run", "/tmp"];

/// Filesystem types that are never copied, even with `--all`: kernel and runtime views, not
/// data. Their mount points become empty directories.
const PSEUDO_FS_TYPES: [&str; 23] = [
    "proc",
    "sysfs",
    "devtmpfs",
    "devpts",
    "tmpfs",
    "cgroup",
    "cgroup2",
    "securityfs",
    "debugfs",
    "tracefs",
    "pstore",
    "bpf",
    "mqueue",
    "hugetlbfs",
    "autofs",
    "ramfs",
    "fusectl",
    "configfs",
    "binfmt_misc",
    "efivarfs",
    "nsfs",
    "rpc_pipefs",
    "selinuxfs",
];

/// Room for a partition table around the filesystem: 1 MiB before it (MBR and the gap GRUB
/// embeds into; for GPT the table and the BIOS boot partition's 1 MiB), and the backup GPT at
/// the end.
const TABLE_OVERHEAD_BYTES: u64 = 3 << 20;

/// The partition table to give the image, with what was found out about the source disk. Only
/// a root volume gets one by itself (`auto`: the table of the disk the root filesystem is on,
/// found through sysfs); a data directory gets one only when asked. A root disk whose table
/// cannot be told gets none, with a warning.
fn partition_style(
    choice: PartitionChoice,
    role: VolumeRole,
    volume: &Path,
) -> (PartitionStyle, Option<partition::Detection>) {
    if role == VolumeRole::Data {
        return (choice.resolve(None).unwrap_or(PartitionStyle::None), None);
    }
    let detected = imgfs::find_mount(volume)
        .map_err(|e| e.to_string())
        .and_then(|m| {
            partition::Sysfs::host()
                .detect_devnum(u64::from(m.major), u64::from(m.minor))
                .map_err(|e| crate::bundle::error_chain(&e))
        });
    match (detected, choice) {
        (Ok(d), PartitionChoice::Auto) => {
            tracing::info!(
                "the root filesystem is on {} (table: {}): the image gets the same",
                d.device,
                d.style
            );
            (d.style, Some(d))
        }
        (Ok(d), _) => (
            choice.resolve(None).unwrap_or(PartitionStyle::None),
            Some(d),
        ),
        (Err(e), PartitionChoice::Auto) => {
            tracing::warn!(
                "cannot tell the partition table of the root disk ({e}): making a plain filesystem image; pass --partition mbr or gpt for an HVM image"
            );
            (PartitionStyle::None, None)
        }
        (Err(_), _) => (choice.resolve(None).unwrap_or(PartitionStyle::None), None),
    }
}

/// The image's partition table: the source disk's identifiers where the image has the same
/// kind of table as the disk the volume is on (so `root=PARTUUID=`, `PARTLABEL=` and GRUB's
/// partition numbers resolve as on the source), fresh ones otherwise; what refers to the old
/// ones is then rewritten after the copy ([`bootrefs`]).
fn table_spec(
    style: PartitionStyle,
    detection: Option<&partition::Detection>,
    label: Option<&str>,
) -> Result<TableSpec, VolumeError> {
    if let Some(d) = detection.filter(|d| d.style == style) {
        if let (Some(disk), Some(number)) = (&d.disk, d.partition_number) {
            match TableSpec::from_disk(disk, d.block_size.unwrap_or(512), number) {
                Ok(spec) => {
                    tracing::info!(
                        "the image's {style} table keeps the identifiers of {} (partition {number})",
                        disk.display()
                    );
                    return Ok(spec);
                }
                Err(e) => tracing::warn!(
                    "{}: the image's partitions get new identifiers, and the references to the old ones in the image are rewritten",
                    crate::bundle::error_chain(&e)
                ),
            }
        }
    }
    Ok(TableSpec::random(style, label)?)
}

/// What to do with the image's `/etc/fstab`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum FstabChoice {
    /// Keep the volume's own (reviewed: warnings for entries that will not work).
    #[default]
    Keep,
    /// Write one naming the root by UUID/LABEL plus `nofail` instance-store entries.
    Generate,
    /// Install this file.
    File(PathBuf),
}

/// What image to make of which volume.
#[derive(Debug, Clone, Default)]
pub struct VolumeOptions {
    /// The directory to snapshot (canonical, absolute).
    pub volume: PathBuf,
    /// Image file name inside the work directory.
    pub image_name: String,
    /// `--size` in MiB.
    pub size_mib: Option<u64>,
    /// `--fs-type`.
    pub fs_type: Option<FsType>,
    /// `--new-uuid`.
    pub new_uuid: bool,
    /// `--all`: follow other filesystems mounted below the volume (except pseudo-filesystems).
    pub all: bool,
    /// Host paths under the volume to leave out, with everything below them.
    pub exclude: Vec<PathBuf>,
    /// Host paths under the volume the filter must not touch (`--include`).
    pub include: Vec<PathBuf>,
    /// Apply the sensitive-file filter.
    pub filter: bool,
    /// Files given to this run (keys, certificates): never copied.
    pub tool_inputs: Vec<PathBuf>,
    /// fstab handling.
    pub fstab: FstabChoice,
    /// Instance-store mappings (virtual name, device) for a generated fstab.
    pub ephemeral: Vec<(String, String)>,
    /// `--generalize`.
    pub generalize: bool,
    /// Where the run writes (bundle-vol's destination): when it lies inside the volume it is
    /// copied as an empty directory, so no earlier bundle, image or report lands in the image.
    pub destination: Option<PathBuf>,
    /// Accept entries that cannot be copied faithfully (listed as warnings).
    pub allow_lossy: bool,
    /// Copy threads.
    pub threads: usize,
    /// The tool's name and version, for a generated fstab's header.
    pub generator: String,
    /// `--partition`: a table for an HVM image (auto: like the root disk's).
    pub partition: PartitionChoice,
    /// `--bootloader` for a partitioned image.
    pub bootloader: Bootloader,
    /// Check that the image will boot on an instance-store (Xen) instance, for a root volume or
    /// a partitioned image (`bootcheck`); `None` skips the check.
    pub boot_check: Option<bootcheck::CheckOptions>,
    /// Keep going when the check finds errors (they are then in [`VolumeImage::boot_check`]).
    pub allow_unbootable: bool,
}

/// The finished image.
#[derive(Debug)]
pub struct VolumeImage {
    /// The image file (in the work directory).
    pub path: PathBuf,
    /// Its size.
    pub size: u64,
    /// The filesystem made.
    pub mkfs: MkfsSpec,
    /// What the copy did.
    pub copy: CopyReport,
    /// What the filter left out.
    pub filter: FilterReport,
    /// Warnings about the image's fstab.
    pub fstab_warnings: Vec<FstabWarning>,
    /// Where a replaced fstab was kept, inside the image.
    pub fstab_previous: Option<PathBuf>,
    /// What `--generalize` did.
    pub generalize: Option<GeneralizeReport>,
    /// Other filesystems mounted below the volume that were not copied (without `--all`).
    pub skipped_mounts: Vec<(PathBuf, String)>,
    /// Wall time of each phase.
    pub timings: VolumeTimings,
    /// The partition table of the image.
    pub partition: PartitionStyle,
    /// What the GRUB 2 installation found, for a partitioned image.
    pub boot: Option<GrubReport>,
    /// References to the root filesystem rewritten because an identifier could not be kept.
    pub boot_rewrites: Vec<bootrefs::Rewrite>,
    /// What the boot check found, when it ran.
    pub boot_check: Option<bootcheck::BootReport>,
}

/// Wall time of the phases of [`make_image`].
#[derive(Debug, Clone, Copy, Default)]
pub struct VolumeTimings {
    /// Inspecting, sizing, creating the image, mkfs, loop device and mounts.
    pub prepare: Duration,
    /// The sensitive-file filter's scan.
    pub filter: Duration,
    /// The copy.
    pub copy: Duration,
    /// fstab, generalize, unmount and detach.
    pub finish: Duration,
}

/// A failure while making the image; each names the step.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    /// The volume is not a usable directory.
    #[error("volume {path} is not a directory")]
    NotADirectory {
        /// The volume.
        path: PathBuf,
    },
    /// Filesystem inspection, mkfs, the image file.
    #[error(transparent)]
    Fs(#[from] imgfs::FsError),
    /// The work directory's filesystem cannot hold the image's data.
    #[error(transparent)]
    NoSpace(#[from] crate::bundle::space::NoSpace),
    /// Loop device.
    #[error(transparent)]
    Loop(#[from] crate::image::loopdev::LoopError),
    /// Mounting.
    #[error(transparent)]
    Mount(#[from] crate::image::mount::MountError),
    /// The sensitive-file filter.
    #[error(transparent)]
    Filter(#[from] filter::FilterError),
    /// The copy.
    #[error(transparent)]
    Copy(#[from] copy::CopyError),
    /// fstab.
    #[error(transparent)]
    Fstab(#[from] fstab::FstabError),
    /// `--generalize`.
    #[error(transparent)]
    Generalize(#[from] generalize::GeneralizeError),
    /// The partition table.
    #[error(transparent)]
    Partition(#[from] partition::PartitionError),
    /// GRUB.
    #[error(transparent)]
    Bootloader(#[from] partition::BootloaderError),
    /// The image's references to its root filesystem could not be fixed.
    #[error(transparent)]
    BootRefs(#[from] bootrefs::BootRefsError),
    /// The boot check could not read the image.
    #[error(transparent)]
    BootCheck(#[from] bootcheck::BootCheckError),
    /// The boot check found what would stop the image's boot.
    #[error("{}", unbootable(report))]
    Unbootable {
        /// What the check found.
        report: Box<bootcheck::BootReport>,
    },
    /// Local file trouble in the work directory or the volume.
    #[error("{action} {}", path.display())]
    Io {
        /// What was being done.
        action: &'static str,
        /// Where.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
}

fn io_err(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> VolumeError + use<> {
    let path = path.to_owned();
    move |source| VolumeError::Io {
        action,
        path,
        source,
    }
}

/// Makes the image of `opts.volume` in `work_dir` (see the module docs).
pub fn make_image(
    ns: &PrivateNamespace,
    opts: &VolumeOptions,
    work_dir: &Path,
    progress: &dyn Progress,
) -> Result<VolumeImage, VolumeError> {
    let started = Instant::now();
    let mut timings = VolumeTimings::default();
    let volume = &opts.volume;
    let meta = fs::metadata(volume).map_err(io_err("reading volume", volume))?;
    if !meta.is_dir() {
        return Err(VolumeError::NotADirectory {
            path: volume.clone(),
        });
    }
    let role = if volume == Path::new("/") {
        VolumeRole::Root
    } else {
        VolumeRole::Data
    };

    // 1. The filesystem to make.
    let mounts = read_mounts()?;
    let is_mount_point = mounts.iter().any(|(mp, _)| mp == volume);
    let mut spec = plan_filesystem(volume, is_mount_point, opts.fs_type, opts.new_uuid)?;
    // A fresh filesystem gets its UUID drawn here, not by mkfs: a generated fstab names the
    // root by it (a directory or an unreadable device has no UUID to carry over).
    if spec.uuid.is_none() {
        spec.uuid = Some(imgfs::FsUuid::random()?);
    }
    tracing::info!(
        "image filesystem: {} label {:?} uuid {}",
        spec.fs_type,
        spec.label.as_deref().unwrap_or_default(),
        spec.uuid
            .map(|u| u.to_string())
            .unwrap_or_else(|| "(new)".into())
    );

    // 2. Its size.
    // Runtime directories of a root volume are copied empty: their contents take no space.
    let mut runtime_dirs: Vec<PathBuf> = match role {
        VolumeRole::Root => ROOT_RUNTIME_DIRS.iter().map(PathBuf::from).collect(),
        VolumeRole::Data => Vec::new(),
    };
    // The destination's contents are not copied either (see `VolumeOptions::destination`).
    runtime_dirs.extend(
        opts.destination
            .iter()
            .filter(|d| d.starts_with(volume) && *d != volume)
            .cloned(),
    );
    let usage = volume_usage(volume, &mounts, opts.all, &opts.exclude, &runtime_dirs)?;
    let plan = imgfs::plan_image(opts.size_mib, usage, role)?;
    spec.inodes = plan.inodes;
    // The image file is sparse: what it takes is about the data copied into it.
    crate::bundle::space::ensure(
        opts.destination.as_deref().unwrap_or(work_dir),
        usage.used_bytes,
        &format!("the image of {}", volume.display()),
    )?;

    // 3. The image file, its partition table (HVM) and its filesystem.
    let (style, detection) = partition_style(opts.partition, role, volume);
    let table_bytes = if style == PartitionStyle::None {
        0
    } else {
        TABLE_OVERHEAD_BYTES
    };
    let image =
        imgfs::create_image_file(work_dir, &opts.image_name, plan.size_bytes + table_bytes)?;
    let layout = if style == PartitionStyle::None {
        None
    } else {
        let label = spec
            .label
            .as_ref()
            .map(|l| String::from_utf8_lossy(l.as_bytes()).into_owned());
        let table = table_spec(style, detection.as_ref(), label.as_deref())?;
        Some(partition::write_table(&image, &table)?)
    };
    // ext is made on the image file itself (with an offset inside a table), where mke2fs
    // knows the inode tables are already zero and the image stays sparse; XFS on a partition
    // is made on the partition's device below.
    if let Some(l) = &layout {
        spec.region = Some((l.root.offset_bytes, l.root.size_bytes));
    }
    if layout.is_none() || spec.fs_type.is_ext() {
        imgfs::mkfs(&image, &spec)?;
    }

    // 4. Loop device, mounts.
    let target = work_dir.join("image");
    let source_view = work_dir.join("volume");
    for dir in [&target, &source_view] {
        fs::create_dir(dir).map_err(io_err("creating", dir))?;
    }
    // Attached locked (udev's protocol, see `LoopDevice::attach`) and, for a table, with
    // partscan: a kernel with table parsers makes the partitions itself, and they are used
    // where they match the table; the others are added from the table we wrote.
    let mut loopdev = LoopDevice::attach(
        &image,
        LoopOptions {
            read_only: false,
            partscan: layout.is_some(),
        },
    )?;
    let fs_device = match &layout {
        None => loopdev.path().to_path_buf(),
        Some(l) => {
            let mut root_node = None;
            for (index, extent) in l.partitions() {
                let node = loopdev.add_partition(index, extent.offset_bytes, extent.size_bytes)?;
                if index == l.root_number {
                    root_node = Some(node);
                }
            }
            let node = root_node.unwrap_or_else(|| loopdev.partition_path(l.root_number));
            if !spec.fs_type.is_ext() {
                spec.region = None;
                imgfs::mkfs(&node, &spec)?;
            }
            node
        }
    };
    // noatime: the copy sets every atime from the source, and the steps after it (fstab review,
    // --generalize) read files and directories in the image, which under relatime would move
    // those atimes (their ctime is the copy's time, later than any copied atime).
    let image_mount = Mount::new(
        ns,
        &fs_device,
        &target,
        spec.fs_type.as_str(),
        MsFlags::MS_NOATIME,
        spec.fs_type.mount_data(),
    )?;
    // Without --all the copy reads a read-only, non-recursive bind of the volume: nothing can
    // be written to the source by mistake, and other mounts below it are not in the view.
    // With --all it walks the live tree and crosses into other filesystems.
    let (src_mount, copy_root) = if opts.all {
        (None, volume.clone())
    } else {
        let bind = Mount::bind_read_only(ns, volume, &source_view)?;
        (Some(bind), source_view.clone())
    };

    // 5. What to leave out, then the filter and the copy.
    let skipped_mounts = if opts.all {
        Vec::new()
    } else {
        mounts_below(&mounts, volume)
            .into_iter()
            .filter(|(_, t)| !PSEUDO_FS_TYPES.contains(&t.as_str()))
            .collect()
    };
    let view = |host: &Path| -> Option<PathBuf> { in_view(volume, &copy_root, host) };
    let mut exclude: BTreeSet<PathBuf> = BTreeSet::new();
    for p in &opts.exclude {
        exclude.extend(view(p));
    }
    exclude.extend(view(work_dir));
    for swap in swap_files() {
        exclude.extend(view(&swap));
    }
    let mut empty_dirs: BTreeSet<PathBuf> = BTreeSet::new();
    if role == VolumeRole::Root {
        for d in ROOT_RUNTIME_DIRS {
            let p = copy_root.join(d.trim_start_matches('/'));
            if fs::symlink_metadata(&p).is_ok_and(|m| m.is_dir()) {
                empty_dirs.insert(p);
            }
        }
    }
    if opts.all {
        for (mp, fs_type) in mounts_below(&mounts, volume) {
            if PSEUDO_FS_TYPES.contains(&fs_type.as_str()) {
                empty_dirs.extend(view(&mp));
            }
        }
    }
    if let Some(dest) = &opts.destination {
        if let Some(d) = view(dest).filter(|d| *d != copy_root) {
            empty_dirs.insert(d);
        }
    }
    // A directory emptied by the runtime rule may still be excluded by the user: exclusion wins.
    empty_dirs.retain(|d| !exclude.contains(d));

    let filter_opts = FilterOptions {
        rules: opts.filter,
        one_file_system: !opts.all,
        not_copied: exclude.iter().chain(&empty_dirs).cloned().collect(),
        include: opts.include.iter().filter_map(|p| view(p)).collect(),
        tool_inputs: opts.tool_inputs.iter().filter_map(|p| view(p)).collect(),
    };
    timings.prepare = started.elapsed();
    let phase = Instant::now();
    // Errors name the volume's own paths, not the private view's.
    let mut filter_report = filter::scan(&copy_root, &filter_opts).map_err(|mut e| {
        if let filter::FilterError::Read { path, .. } = &mut e {
            if let Some(host) = in_view(&copy_root, volume, path) {
                *path = host;
            }
        }
        e
    })?;
    timings.filter = phase.elapsed();
    exclude.extend(filter_report.excluded_paths());
    // Report host paths, not the private view's.
    for f in filter_report
        .filtered
        .iter_mut()
        .chain(filter_report.kept.iter_mut())
    {
        if let Some(host) = in_view(&copy_root, volume, &f.path) {
            f.path = host;
        }
    }

    let copy_opts = CopyOptions {
        one_file_system: !opts.all,
        exclude: exclude.into_iter().collect(),
        empty_dirs: empty_dirs.into_iter().collect(),
        allow_lossy: opts.allow_lossy,
        threads: opts.threads,
    };
    let phase = Instant::now();
    let copy_report =
        copy::copy_tree(&copy_root, &target, &copy_opts, progress).map_err(|mut e| {
            if let copy::CopyError::ReadSource { path, .. } = &mut e {
                if let Some(host) = in_view(&copy_root, volume, path) {
                    *path = host;
                }
            }
            e
        })?;
    timings.copy = phase.elapsed();
    let phase = Instant::now();

    // 6. The image's references to its root, its fstab and generalization, inside the image
    // only.
    let root_fs = RootFs {
        uuid: spec.uuid.map(|u| u.to_string()),
        label: spec
            .label
            .as_ref()
            .map(|l| String::from_utf8_lossy(l.as_bytes()).into_owned()),
        partuuid: layout.as_ref().and_then(|l| l.root_partuuid.clone()),
        partlabel: layout.as_ref().and_then(|l| l.root_partlabel.clone()),
        fs_type: spec.fs_type.as_str().to_string(),
    };
    let boot_rewrites = bootrefs::fix_references(&target, &root_fs)?;
    let (fstab_warnings, fstab_previous) = match &opts.fstab {
        FstabChoice::Keep => {
            let warnings = match fstab::read_from_image(&target)? {
                Some(text) => match fstab::Fstab::parse(&text) {
                    Ok(table) => table.review(&root_fs),
                    Err(e) => vec![FstabWarning {
                        line: e.line,
                        message: format!("cannot be parsed ({e}); left as it is"),
                        breaks_boot: true,
                    }],
                },
                None if role == VolumeRole::Root => vec![FstabWarning {
                    line: 0,
                    message: "the image has no /etc/fstab: pass --generate-fstab".into(),
                    breaks_boot: false,
                }],
                None => Vec::new(),
            };
            (warnings, None)
        }
        FstabChoice::Generate => {
            let mounts = fstab::instance_store_mounts(&opts.ephemeral);
            let text = fstab::generate(&root_fs, &mounts, &opts.generator)?;
            (Vec::new(), fstab::install(&target, &text)?.previous)
        }
        FstabChoice::File(path) => {
            let text = fstab::read_user_fstab(path)?;
            (Vec::new(), fstab::install(&target, &text)?.previous)
        }
    };
    let generalized = if opts.generalize {
        Some(generalize::generalize(&target)?)
    } else {
        None
    };
    let boot = match (&layout, opts.bootloader) {
        (Some(l), Bootloader::Grub2) => {
            Some(partition::install_grub(loopdev.path(), &target, l.style)?)
        }
        _ => None,
    };
    let boot_check = match &opts.boot_check {
        Some(check) if role == VolumeRole::Root || layout.is_some() => {
            let boot_code = partition::has_boot_code(loopdev.path())
                .map_err(io_err("reading the boot sector of", loopdev.path()))?;
            let disk = bootcheck::DiskFacts {
                style,
                boot_code,
                root: root_fs.clone(),
            };
            Some(bootcheck::check_tree(&target, &disk, check)?)
        }
        _ => None,
    };

    // 7. Tear down explicitly: a failure to unmount or detach is an error, not a leak.
    if let Some(bind) = src_mount {
        bind.unmount()?;
    }
    image_mount.unmount()?;
    loopdev.detach()?;
    for dir in [&target, &source_view] {
        fs::remove_dir(dir).map_err(io_err("removing", dir))?;
    }
    timings.finish = phase.elapsed();
    if let Some(report) = &boot_check {
        if !report.bootable() && !opts.allow_unbootable {
            return Err(VolumeError::Unbootable {
                report: Box::new(report.clone()),
            });
        }
    }

    Ok(VolumeImage {
        path: image,
        size: plan.size_bytes,
        mkfs: spec,
        copy: copy_report,
        filter: filter_report,
        fstab_warnings,
        fstab_previous,
        generalize: generalized,
        skipped_mounts,
        timings,
        partition: style,
        boot,
        boot_rewrites,
        boot_check,
    })
}

/// The message of [`VolumeError::Unbootable`]: each error with its fix, and the override.
fn unbootable(report: &bootcheck::BootReport) -> String {
    let mut text = String::from(
        "the image will not boot on an instance-store (Xen) instance, so it is not bundled:",
    );
    for p in report.errors() {
        text.push_str(&format!(
            "\n  - {}: {}\n    fix: {}",
            p.code, p.message, p.fix
        ));
    }
    text.push_str(
        "\n(amibundle check-image explains the check; --allow-unbootable bundles the image anyway)",
    );
    text
}

/// Copies the tree inside an image file (a bundle of a volume, unbundled) into `target`, with
/// every attribute `bundle-vol` keeps: the data-volume restore. The image is attached read-only
/// and mounted read-only in the private namespace; a partitioned image is read from its first
/// partition. An empty `lost+found` at the image's root (made by mkfs, not by the user) is left
/// out.
pub fn restore_image(
    ns: &PrivateNamespace,
    image: &Path,
    work_dir: &Path,
    target: &Path,
    allow_lossy: bool,
    threads: usize,
    progress: &dyn Progress,
) -> Result<CopyReport, VolumeError> {
    let opened = ReadOnlyImage::open(ns, image, work_dir, "restore")?;
    let lost_found = opened.dir.join("lost+found");
    let empty = fs::read_dir(&lost_found).is_ok_and(|mut entries| entries.next().is_none());
    let exclude = if empty { vec![lost_found] } else { Vec::new() };
    let opts = CopyOptions {
        one_file_system: true,
        exclude,
        empty_dirs: Vec::new(),
        allow_lossy,
        threads,
    };
    let report = copy::copy_tree(&opened.dir, target, &opts, progress)?;
    opened.close()?;
    Ok(report)
}

/// An image file attached read-only, its root filesystem (the partition its own table names,
/// or the whole image) mounted read-only in the private namespace: what `restore` copies from
/// and `check-image` checks. Dropped, its guards undo it; [`ReadOnlyImage::close`] reports
/// failures.
pub(crate) struct ReadOnlyImage {
    mount: Mount,
    loopdev: LoopDevice,
    /// The mount point, a new directory in the work directory.
    pub(crate) dir: PathBuf,
    /// The filesystem's type.
    pub(crate) fs_type: FsType,
    /// Its label and UUID.
    pub(crate) probe: imgfs::BlkidProbe,
    /// The root partition's number and extent, for a partitioned image.
    pub(crate) root_partition: Option<(u32, partition::Extent)>,
}

impl ReadOnlyImage {
    /// Attaches and mounts `image` at `work_dir/name`.
    pub(crate) fn open(
        ns: &PrivateNamespace,
        image: &Path,
        work_dir: &Path,
        name: &str,
    ) -> Result<Self, VolumeError> {
        let mut loopdev = LoopDevice::attach(
            image,
            LoopOptions {
                read_only: true,
                partscan: false,
            },
        )?;
        let root_partition = partition::root_partition(image)?;
        let device = match root_partition {
            Some((number, extent)) => {
                loopdev.add_partition(number, extent.offset_bytes, extent.size_bytes)?
            }
            None => loopdev.path().to_path_buf(),
        };
        let probe = imgfs::probe_device(&device)?;
        let fs_type: FsType = probe
            .fs_type
            .as_deref()
            .and_then(|t| t.parse().ok())
            .ok_or_else(|| imgfs::FsError::Unsupported {
                fs_type: probe
                    .fs_type
                    .clone()
                    .unwrap_or_else(|| "nothing recognisable".into()),
                mount_point: image.to_path_buf(),
            })?;
        let dir = work_dir.join(name);
        fs::create_dir(&dir).map_err(io_err("creating", &dir))?;
        let mount = Mount::new(
            ns,
            &device,
            &dir,
            fs_type.as_str(),
            MsFlags::MS_RDONLY,
            fs_type.mount_data(),
        )?;
        Ok(Self {
            mount,
            loopdev,
            dir,
            fs_type,
            probe,
            root_partition,
        })
    }

    /// Unmounts, detaches and removes the mount point, reporting any failure.
    pub(crate) fn close(self) -> Result<(), VolumeError> {
        self.mount.unmount()?;
        self.loopdev.detach()?;
        fs::remove_dir(&self.dir).map_err(io_err("removing", &self.dir))?;
        Ok(())
    }
}

/// The image's filesystem. For a volume that is a mount point: its type, label and UUID when
/// they can be read; when its device cannot be probed (no permission, no device) the image gets
/// the mount's type (or `--fs-type`) and a fresh UUID, with a warning. A directory that is only
/// part of a filesystem gets that filesystem's type and a fresh UUID and no label: two
/// filesystems with one UUID would confuse every `UUID=` lookup.
fn plan_filesystem(
    volume: &Path,
    is_mount_point: bool,
    override_type: Option<FsType>,
    new_uuid: bool,
) -> Result<MkfsSpec, VolumeError> {
    if !is_mount_point {
        let mount = imgfs::find_mount(volume)?;
        let fs_type = match override_type {
            Some(t) => t,
            None => mount
                .fs_type
                .parse()
                .map_err(|_| imgfs::FsError::Unsupported {
                    fs_type: mount.fs_type.clone(),
                    mount_point: mount.mount_point.clone(),
                })?,
        };
        return Ok(MkfsSpec::new(fs_type));
    }
    match imgfs::inspect_source(volume) {
        Ok(source) => Ok(imgfs::plan_mkfs(&source, override_type, new_uuid)?),
        Err(e) => {
            let mount = imgfs::find_mount(volume)?;
            let fs_type = match override_type.or_else(|| mount.fs_type.parse().ok()) {
                Some(t) => t,
                None => return Err(e.into()),
            };
            tracing::warn!(
                "cannot read the label and UUID of the filesystem at {} ({}): the image gets a new UUID and no label; /etc/fstab entries by UUID= or LABEL= will not match (use --generate-fstab)",
                mount.mount_point.display(),
                crate::bundle::error_chain(&e)
            );
            let mut spec = MkfsSpec::new(fs_type);
            if new_uuid {
                spec.uuid = Some(imgfs::FsUuid::random()?);
            }
            Ok(spec)
        }
    }
}
