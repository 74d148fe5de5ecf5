//! The image's `/etc/fstab`: kept as copied from the source by default (and reviewed for lines
//! that would stop the clone's boot), generated with `--generate-fstab`, or taken from the
//! user with `--fstab FILE`.
//!
//! The classic `--generate-fstab` wrote `/dev/sda1 / ext3` and `/dev/sdb /mnt ext3` whatever
//! the image was, without `nofail` (docs/reference-behaviour.md §2.9 and §14, pain 14), and
//! crashed after writing on any modern Ruby. [`generate`] writes instead:
//! * the root by `UUID=` (the image's filesystem carries the source's UUID unless `--new-uuid`,
//!   which the caller passes here), else by `LABEL=`, with the image's real filesystem type;
//! * one line per instance-store volume of the block-device mapping ([`instance_store_mounts`]):
//!   `ephemeral0` on `/mnt` as before (and as cloud-init does), `ephemeralN` on
//!   `/media/ephemeralN`, `swap` as swap; type `auto` (EC2 formats some, the user others) and
//!   `nofail,x-systemd.device-timeout=10s`, so a volume missing from the launch mapping (on M3
//!   it must be in the *launch* mapping) costs ten seconds, not the boot. Instance-store AMIs
//!   run only on Xen families, whose kernels name `sdb` `xvdb`: the mapping's `sdX` names are
//!   written as `/dev/xvdX`;
//! * the classic's `devpts`, `proc` and `sysfs` lines, which systemd ignores and older init
//!   systems need.
//!
//! The previous file is kept as `/etc/fstab.old` (or `.old.1` …, never overwritten), and the
//! new one takes its owner, mode and SELinux label. Everything is written through
//! `image::root::ImageRoot`: a symlinked `/etc` in the image cannot redirect the write to
//! the host.

use std::fmt;
use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{OFlag, openat, renameat};
use nix::sys::stat::{Mode, SFlag, fstat};
use nix::unistd::{UnlinkatFlags, linkat, unlinkat};

use super::root::{ImageRoot, Lookup, kind, lstat_at, write_replacement};

/// Options of a generated instance-store mount: never stop the boot for it, and give up
/// waiting for the device after ten seconds (systemd waits 90 s by default; util-linux mount
/// ignores `x-` options).
const INSTANCE_STORE_OPTIONS: &str = "defaults,nofail,x-systemd.device-timeout=10s";

/// The largest fstab read; real ones are a few KiB.
const FSTAB_LIMIT_BYTES: u64 = 1 << 20;

/// How many `/etc/fstab.old`, `.old.1` … names are tried for the previous file.
const BACKUP_NAMES: usize = 10;

/// Filesystem types that are not devices of this machine (kernel interfaces and memory).
const VIRTUAL_TYPES: &[&str] = &[
    "proc",
    "sysfs",
    "devpts",
    "tmpfs",
    "devtmpfs",
    "ramfs",
    "securityfs",
    "cgroup",
    "cgroup2",
    "debugfs",
    "tracefs",
    "hugetlbfs",
    "mqueue",
    "configfs",
    "fusectl",
    "pstore",
    "efivarfs",
    "binfmt_misc",
    "bpf",
    "overlay",
];

/// Network filesystem types (mounted after the network; their servers are not in the image).
const NETWORK_TYPES: &[&str] = &[
    "nfs",
    "nfs4",
    "cifs",
    "smb3",
    "smbfs",
    "glusterfs",
    "ceph",
    "fuse.sshfs",
    "sshfs",
    "9p",
];

/// One mount line of an fstab, fields as written (escapes such as `\040` kept).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// 1-based line number.
    pub line: usize,
    /// What is mounted (`UUID=…`, `/dev/xvdb`, `proc` …).
    pub spec: String,
    /// Where (`/`, `/mnt`, `none` or `swap` for swap).
    pub file: String,
    /// Filesystem type.
    pub vfstype: String,
    /// Mount options (`defaults` when absent).
    pub options: String,
    /// The dump field (0 when absent).
    pub freq: u32,
    /// The fsck pass (0 when absent).
    pub passno: u32,
}

impl Entry {
    fn has_option(&self, option: &str) -> bool {
        self.options.split(',').any(|o| o == option)
    }
}

/// A parsed fstab (the mount lines; comments and blank lines are not kept: the file itself is
/// never rewritten).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fstab {
    /// The mount lines, in order.
    pub entries: Vec<Entry>,
}

/// A line that is not an fstab entry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct ParseError {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong.
    pub message: String,
}

impl Fstab {
    /// Parses fstab text (fstab(5): whitespace-separated fields, `#` comments; the options,
    /// dump and pass fields may be omitted).
    ///
    /// # Errors
    ///
    /// [`ParseError`] for a line with fewer than 3 or more than 6 fields or a dump/pass field
    /// that is not a number.
    pub fn parse(text: &str) -> Result<Self, ParseError> {
        let mut entries = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line_no = i + 1;
            let trimmed = line.trim();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            let fields: Vec<&str> = trimmed.split_whitespace().collect();
            if !(3..=6).contains(&fields.len()) {
                return Err(ParseError {
                    line: line_no,
                    message: format!(
                        "expected 3 to 6 fields (device, mount point, type, options, dump, \
                         pass), found {}",
                        fields.len()
                    ),
                });
            }
            let number = |idx: usize, what: &str| -> Result<u32, ParseError> {
                fields.get(idx).map_or(Ok(0), |f| {
                    f.parse().map_err(|_| ParseError {
                        line: line_no,
                        message: format!("the {what} field {f:?} is not a number"),
                    })
                })
            };
            entries.push(Entry {
                line: line_no,
                spec: fields[0].to_owned(),
                file: fields[1].to_owned(),
                vfstype: fields[2].to_owned(),
                options: fields.get(3).unwrap_or(&"defaults").to_string(),
                freq: number(4, "dump")?,
                passno: number(5, "pass")?,
            });
        }
        Ok(Self { entries })
    }

    /// Lines of a kept fstab that would hurt the clone: a root entry that names another
    /// filesystem than the image's or a device name that may differ on the new instance, and
    /// local mounts without `nofail` (only the root filesystem is in the image, so any other
    /// device may be missing and stop the boot).
    pub fn review(&self, root: &RootFs) -> Vec<FstabWarning> {
        let mut warnings = Vec::new();
        let mut advice = Vec::new();
        let mut warn = |entry: &Entry, message: String| {
            warnings.push(FstabWarning {
                line: entry.line,
                message,
                breaks_boot: true,
            });
        };
        for entry in &self.entries {
            let file = unescape(&entry.file);
            if file == "/" {
                let spec = &entry.spec;
                if let Some(uuid) = spec.strip_prefix("UUID=") {
                    if root
                        .uuid
                        .as_deref()
                        .is_none_or(|u| !u.eq_ignore_ascii_case(uuid))
                    {
                        warn(
                            entry,
                            format!(
                                "the root entry names {spec}, but the image's filesystem has {}: \
                                 the new instance will not find its root (use --generate-fstab)",
                                root.uuid
                                    .as_deref()
                                    .map_or("no UUID".into(), |u| format!("UUID={u}"))
                            ),
                        );
                    }
                } else if let Some(label) = spec.strip_prefix("LABEL=") {
                    if root.label.as_deref() != Some(unescape(label).as_str()) {
                        warn(
                            entry,
                            format!(
                                "the root entry names {spec}, but the image's filesystem has {}: \
                                 the new instance will not find its root (use --generate-fstab)",
                                root.label
                                    .as_deref()
                                    .map_or("no label".into(), |l| format!("LABEL={l}"))
                            ),
                        );
                    }
                } else if let Some(partuuid) = spec.strip_prefix("PARTUUID=") {
                    if root
                        .partuuid
                        .as_deref()
                        .is_none_or(|p| !p.eq_ignore_ascii_case(partuuid))
                    {
                        warn(
                            entry,
                            format!(
                                "the root entry names the partition {spec}, which the image does \
                                 not have (use --generate-fstab)"
                            ),
                        );
                    }
                } else if let Some(partlabel) = spec.strip_prefix("PARTLABEL=") {
                    if root.partlabel.as_deref() != Some(unescape(partlabel).as_str()) {
                        warn(
                            entry,
                            format!(
                                "the root entry names the partition {spec}, which the image does \
                                 not have (use --generate-fstab)"
                            ),
                        );
                    }
                } else if spec.starts_with("/dev/") {
                    // Advice, not a failure: the name may well exist on the instance.
                    advice.push(FstabWarning {
                        line: entry.line,
                        breaks_boot: false,
                        message: format!(
                            "the root entry names the device {spec}, which may have another name \
                             on the new instance (an NVMe build host and a Xen clone differ); \
                             UUID= or LABEL= is safer (use --generate-fstab)"
                        ),
                    });
                }
                continue;
            }
            let virtual_fs = VIRTUAL_TYPES.contains(&entry.vfstype.as_str())
                || ["proc", "sysfs", "devpts", "tmpfs", "none"].contains(&entry.spec.as_str());
            let network =
                NETWORK_TYPES.contains(&entry.vfstype.as_str()) || entry.has_option("_netdev");
            let optional = entry.has_option("nofail") || entry.has_option("noauto");
            if virtual_fs || network || optional || entry.has_option("bind") {
                continue;
            }
            warn(
                entry,
                format!(
                    "{} is mounted on {} at boot without nofail: only the root filesystem is in \
                     the image, so if that device is missing on the new instance the boot stops \
                     (add nofail, or use --generate-fstab)",
                    entry.spec, entry.file
                ),
            );
        }
        warnings.extend(advice);
        warnings.sort_by_key(|w| w.line);
        warnings
    }
}

/// Something in a kept fstab the user should look at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FstabWarning {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong and what to do.
    pub message: String,
    /// Whether the boot stops on it (an entry that cannot resolve and is not `nofail`), rather
    /// than being advice.
    pub breaks_boot: bool,
}

impl fmt::Display for FstabWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "/etc/fstab line {}: {}", self.line, self.message)
    }
}

/// The image's root filesystem, as a generated fstab names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootFs {
    /// Its UUID (preferred in the root entry).
    pub uuid: Option<String>,
    /// Its label.
    pub label: Option<String>,
    /// Its partition's PARTUUID, in a partitioned image.
    pub partuuid: Option<String>,
    /// Its partition's GPT name.
    pub partlabel: Option<String>,
    /// Its type (`ext4`, `xfs` …).
    pub fs_type: String,
}

/// An instance-store volume to mount, from the block-device mapping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceStoreMount {
    /// The mapping's virtual name (`ephemeral0`, `swap`).
    pub virtual_name: String,
    /// The device as the instance's kernel names it (`/dev/xvdb`).
    pub device: String,
    /// Where it is mounted; `None` for swap.
    pub mount_point: Option<String>,
}

/// The instance-store volumes of a block-device mapping (`virtual` → `device` pairs as in the
/// manifest: `ephemeral0` → `sdb`), in order: `ephemeral0`, `ephemeral1` …, then `swap`.
/// Other entries (`ami`, `root`) are not instance-store volumes and are ignored.
pub fn instance_store_mounts(mapping: &[(String, String)]) -> Vec<InstanceStoreMount> {
    let mut ephemeral: Vec<(u32, InstanceStoreMount)> = Vec::new();
    let mut swap = Vec::new();
    for (virtual_name, device) in mapping {
        if virtual_name == "swap" {
            swap.push(InstanceStoreMount {
                virtual_name: virtual_name.clone(),
                device: kernel_device(device),
                mount_point: None,
            });
        } else if let Some(n) = virtual_name
            .strip_prefix("ephemeral")
            .and_then(|n| n.parse::<u32>().ok())
        {
            let mount_point = if n == 0 {
                "/mnt".to_owned()
            } else {
                format!("/media/ephemeral{n}")
            };
            ephemeral.push((
                n,
                InstanceStoreMount {
                    virtual_name: virtual_name.clone(),
                    device: kernel_device(device),
                    mount_point: Some(mount_point),
                },
            ));
        }
    }
    ephemeral.sort_by_key(|(n, _)| *n);
    ephemeral.into_iter().map(|(_, m)| m).chain(swap).collect()
}

/// The kernel's name for a mapping device on the Xen families that run instance-store AMIs:
/// `sdb`, `/dev/sdb`, `xvdb` → `/dev/xvdb`; anything else is kept, under `/dev/`.
fn kernel_device(device: &str) -> String {
    let name = device.strip_prefix("/dev/").unwrap_or(device);
    match name.strip_prefix("sd") {
        Some(rest) if !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_alphanumeric()) => {
            format!("/dev/xvd{rest}")
        }
        _ => format!("/dev/{name}"),
    }
}

/// The text of a generated fstab; `generator` names the tool and version in the header
/// (`amibundle 0.1.0`).
///
/// # Errors
///
/// [`FstabError::NoRootId`] when the root filesystem has neither a UUID nor a label (a device
/// name would be a guess).
pub fn generate(
    root: &RootFs,
    mounts: &[InstanceStoreMount],
    generator: &str,
) -> Result<String, FstabError> {
    let root_spec = match (&root.uuid, &root.label) {
        (Some(uuid), _) if !uuid.is_empty() => format!("UUID={uuid}"),
        (_, Some(label)) if !label.is_empty() => format!("LABEL={label}"),
        _ => return Err(FstabError::NoRootId),
    };
    let mut rows: Vec<[String; 6]> = vec![[
        escape(&root_spec),
        "/".into(),
        escape(&root.fs_type),
        "defaults".into(),
        "0".into(),
        "1".into(),
    ]];
    for mount in mounts {
        let (file, vfstype) = match &mount.mount_point {
            Some(point) => (escape(point), "auto"),
            None => ("none".to_owned(), "swap"),
        };
        rows.push([
            escape(&mount.device),
            file,
            vfstype.into(),
            INSTANCE_STORE_OPTIONS.into(),
            "0".into(),
            "0".into(),
        ]);
    }
    for (spec, file, options) in [
        ("devpts", "/dev/pts", "gid=5,mode=620"),
        ("proc", "/proc", "defaults"),
        ("sysfs", "/sys", "defaults"),
    ] {
        rows.push([
            spec.into(),
            file.into(),
            spec.into(),
            options.into(),
            "0".into(),
            "0".into(),
        ]);
    }
    let mut widths = [0; 6];
    for row in &rows {
        for (w, field) in widths.iter_mut().zip(row) {
            *w = (*w).max(field.len());
        }
    }
    let mut out = format!(
        "# /etc/fstab written by {generator} (--generate-fstab)\n\
         # Instance-store volumes are nofail: a volume missing at launch does not stop the boot.\n"
    );
    for row in &rows {
        let mut line = String::new();
        for (i, field) in row.iter().enumerate() {
            if i + 1 == row.len() {
                line.push_str(field);
            } else {
                line.push_str(&format!("{field:<width$}  ", width = widths[i]));
            }
        }
        out.push_str(&line);
        out.push('\n');
    }
    Ok(out)
}

/// fstab(5) escapes for a field: space, tab, newline and backslash as octal.
fn escape(field: &str) -> String {
    let mut out = String::with_capacity(field.len());
    for c in field.chars() {
        match c {
            ' ' => out.push_str("\\040"),
            '\t' => out.push_str("\\011"),
            '\n' => out.push_str("\\012"),
            '\\' => out.push_str("\\134"),
            c => out.push(c),
        }
    }
    out
}

/// Undoes fstab(5) octal escapes (`\040` → space); anything else is kept.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 4 <= bytes.len()
            && bytes[i + 1..i + 4]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b))
        {
            let value = bytes[i + 1..i + 4]
                .iter()
                .fold(0u32, |acc, b| acc * 8 + u32::from(b - b'0'));
            if let Ok(b) = u8::try_from(value) {
                out.push(b);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A failed fstab step.
#[derive(Debug, thiserror::Error)]
pub enum FstabError {
    /// The `--fstab` file could not be read.
    #[error("reading the --fstab file {path}")]
    ReadUserFile {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The `--fstab` file is not an fstab.
    #[error("the --fstab file {path} is not a valid fstab")]
    InvalidUserFile {
        /// The file.
        path: PathBuf,
        /// The line at fault.
        #[source]
        source: ParseError,
    },
    /// Nothing to name the root filesystem by.
    #[error(
        "the image's root filesystem has neither a UUID nor a label for a generated fstab; \
         give the fstab with --fstab FILE"
    )]
    NoRootId,
    /// The image root is the host's own root directory.
    #[error(
        "refusing to write an fstab into {path}: it is this machine's root directory, not an image"
    )]
    HostRoot {
        /// The path given.
        path: PathBuf,
    },
    /// The image has no `/etc` directory to write into.
    #[error("the image at {image} has no /etc directory ({why})")]
    NoEtc {
        /// The image root.
        image: PathBuf,
        /// Missing, or what stands there.
        why: String,
    },
    /// Reading or writing in the image failed.
    #[error("{what} in the image at {image}")]
    Image {
        /// What was being done (`writing /etc/fstab` …).
        what: String,
        /// The image root.
        image: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

/// Reads and checks a `--fstab` file.
///
/// # Errors
///
/// [`FstabError::ReadUserFile`] (unreadable or not UTF-8 text),
/// [`FstabError::InvalidUserFile`] naming the first bad line.
pub fn read_user_fstab(path: &Path) -> Result<String, FstabError> {
    let text = std::fs::read_to_string(path).map_err(|source| FstabError::ReadUserFile {
        path: path.to_owned(),
        source,
    })?;
    Fstab::parse(&text).map_err(|source| FstabError::InvalidUserFile {
        path: path.to_owned(),
        source,
    })?;
    Ok(text)
}

/// The image's `/etc/fstab` as text (bytes that are not UTF-8 replaced), `None` when there is
/// none or it is not a regular file.
///
/// # Errors
///
/// [`FstabError::Image`] when it exists but cannot be read.
pub fn read_from_image(image_root: &Path) -> Result<Option<String>, FstabError> {
    let err = |what: &str| {
        let what = what.to_owned();
        move |source: io::Error| FstabError::Image {
            what,
            image: image_root.to_owned(),
            source,
        }
    };
    let root = ImageRoot::open(image_root).map_err(err("opening the image root"))?;
    let Lookup::Dir(etc) = root
        .open_dir(Path::new("etc"))
        .map_err(err("opening /etc"))?
    else {
        return Ok(None);
    };
    let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC;
    let file = match openat(&etc, "fstab", flags, Mode::empty()) {
        Ok(fd) => File::from(fd),
        Err(Errno::ENOENT | Errno::ELOOP) => return Ok(None),
        Err(e) => return Err(err("reading /etc/fstab")(e.into())),
    };
    let st = fstat(&file).map_err(|e| err("reading /etc/fstab")(e.into()))?;
    if kind(&st) != SFlag::S_IFREG {
        return Ok(None);
    }
    let mut text = Vec::new();
    file.take(FSTAB_LIMIT_BYTES)
        .read_to_end(&mut text)
        .map_err(err("reading /etc/fstab"))?;
    Ok(Some(String::from_utf8_lossy(&text).into_owned()))
}

/// What [`install`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Installed {
    /// Where the previous `/etc/fstab` was kept, as a path in the image, if there was one.
    pub previous: Option<PathBuf>,
}

/// Writes `text` as the image's `/etc/fstab`, keeping the previous file under a new name (see
/// the module docs). The new file replaces the old one atomically.
///
/// # Errors
///
/// [`FstabError::NoEtc`], [`FstabError::Image`] naming the step; a failed write leaves the
/// previous fstab in place.
pub fn install(image_root: &Path, text: &str) -> Result<Installed, FstabError> {
    let image = image_root.to_owned();
    let err = |what: String| {
        let image = image.clone();
        move |source: io::Error| FstabError::Image {
            what,
            image,
            source,
        }
    };
    let root = ImageRoot::open(image_root).map_err(err("opening the image root".into()))?;
    if root
        .is_host_root()
        .map_err(err("opening the image root".into()))?
    {
        return Err(FstabError::HostRoot { path: image });
    }
    let etc = match root
        .open_dir(Path::new("etc"))
        .map_err(err("opening /etc".into()))?
    {
        Lookup::Dir(etc) => etc,
        Lookup::Missing => {
            return Err(FstabError::NoEtc {
                image,
                why: "missing".into(),
            });
        }
        Lookup::Blocked(why) => return Err(FstabError::NoEtc { image, why }),
    };

    let old = lstat_at(&etc, "fstab".as_ref()).map_err(err("examining /etc/fstab".into()))?;
    if old.is_some_and(|st| kind(&st) == SFlag::S_IFDIR) {
        return Err(err("replacing /etc/fstab".into())(io::Error::other(
            "it is a directory",
        )));
    }
    let tmp_name = write_replacement(&etc, "fstab", text.as_bytes())
        .map_err(err("writing the new /etc/fstab".into()))?;
    let cleanup = |e: io::Error| {
        let _ = unlinkat(&etc, tmp_name.as_str(), UnlinkatFlags::NoRemoveDir);
        e
    };

    // Keep the previous file under a free name: a hard link, so /etc/fstab itself is only
    // ever replaced atomically by the rename below.
    let mut previous = None;
    if old.is_some() {
        for i in 0..BACKUP_NAMES {
            let name = if i == 0 {
                "fstab.old".to_owned()
            } else {
                format!("fstab.old.{i}")
            };
            match linkat(
                &etc,
                "fstab",
                &etc,
                name.as_str(),
                nix::fcntl::AtFlags::empty(),
            ) {
                Ok(()) => {
                    previous = Some(PathBuf::from("/etc").join(name));
                    break;
                }
                Err(Errno::EEXIST) => {}
                Err(e) => {
                    return Err(err("keeping the previous /etc/fstab".into())(cleanup(
                        e.into(),
                    )));
                }
            }
        }
        if previous.is_none() {
            return Err(err("keeping the previous /etc/fstab".into())(cleanup(
                io::Error::other(format!(
                    "/etc/fstab.old and /etc/fstab.old.1 to .{} all exist",
                    BACKUP_NAMES - 1
                )),
            )));
        }
    }
    if let Err(e) = renameat(&etc, tmp_name.as_str(), &etc, "fstab") {
        // Nothing changed: drop the extra name of the previous file too.
        if let Some(previous) = &previous {
            if let Some(name) = previous.file_name() {
                let _ = unlinkat(&etc, name, UnlinkatFlags::NoRemoveDir);
            }
        }
        return Err(err("replacing /etc/fstab".into())(cleanup(e.into())));
    }
    etc.sync_all()
        .map_err(err("syncing /etc after replacing /etc/fstab".into()))?;
    Ok(Installed { previous })
}

#[cfg(test)]
mod tests;
