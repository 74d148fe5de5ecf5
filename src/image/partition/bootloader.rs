//! GRUB 2 for BIOS (i386-pc) installed into the image: the host's `grub-install` (or
//! `grub2-install`) run with `--directory` pointing at the image's own
//! `usr/lib/grub/i386-pc`, so the modules, boot.img and core image are those of the system
//! being bundled ([`install_grub`]). Every directory the installer is given is confined to the
//! image (a symlink leading out of it is refused, [`BootloaderError::OutsideImage`]). The
//! kernel command line travels with the copied `grub.cfg`; what would not work on the new
//! instance is reported as a [`BootWarning`].

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::fs::File;
use std::io;
use std::io::Read as _;
use std::os::fd::AsRawFd as _;
use std::os::unix::fs::{FileExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::process::Command;

use super::{BootloaderError, PartitionStyle};
use crate::image::cmd::{self, SearchPath};
use crate::image::root::{ImageRoot, Lookup};

/// Where an image keeps GRUB 2's BIOS modules, boot.img and kernel.img (Debian's grub-pc-bin,
/// Fedora/RHEL/Amazon Linux's grub2-pc-modules).
pub const GRUB_I386_PC_DIR: &str = "usr/lib/grub/i386-pc";

/// Host programs tried, in order, to install GRUB: the upstream and Debian name, then the
/// Fedora/RHEL/SUSE name.
const GRUB_INSTALL_PROGRAMS: [&str; 2] = ["grub-install", "grub2-install"];

/// Lines of a failed command's standard error kept in the error message.
const STDERR_TAIL_LINES: usize = 10;

/// Something about the installed image that will probably not boot as the source did; the
/// bundle is still made. Paths are relative to the image root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BootWarning {
    /// No `boot/grub/grub.cfg` nor `boot/grub2/grub.cfg`.
    NoConfig,
    /// A `root=` argument names a device node, which will differ on the instance.
    RootByDeviceName {
        /// The file with the kernel command line.
        file: PathBuf,
        /// The `root=` value.
        value: String,
    },
    /// The host's installer and the image's modules come from different GRUB packages.
    VersionMismatch {
        /// The host installer's version.
        host: String,
        /// `grub_package_version` of the image's `modinfo.sh`.
        image: String,
    },
    /// The image's configuration is in the other GRUB directory (`grub2` vs `grub`) than the
    /// host's installer uses; a one-line `grub.cfg` loading it was written.
    ConfigRedirected {
        /// The stub written.
        stub: PathBuf,
        /// The configuration it loads.
        config: PathBuf,
    },
}

impl fmt::Display for BootWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoConfig => write!(
                f,
                "the image has no boot/grub/grub.cfg or boot/grub2/grub.cfg: GRUB will stop at \
                 its prompt and the kernel command line cannot be carried over (run update-grub \
                 or grub2-mkconfig in the source system)"
            ),
            Self::RootByDeviceName { file, value } => write!(
                f,
                "{} boots with root={value}: device names differ on the instance-store instance \
                 (its root disk is /dev/xvda or /dev/sda under Xen); use root=UUID=… or \
                 root=LABEL=… in the source system",
                file.display()
            ),
            Self::VersionMismatch { host, image } => write!(
                f,
                "this host's GRUB installer is version {host} but the image's GRUB modules are \
                 {image}; if the image does not boot, bundle on a host with the image's GRUB"
            ),
            Self::ConfigRedirected { stub, config } => write!(
                f,
                "the installer uses {} but the image's configuration is {}; wrote a {} that \
                 loads it",
                stub.parent().unwrap_or(stub).display(),
                config.display(),
                stub.display()
            ),
        }
    }
}

/// What [`install_grub`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use = "the warnings should be shown to the user"]
pub struct GrubReport {
    /// The installer run.
    pub program: PathBuf,
    /// The GRUB directory in the image, relative to its root (`boot/grub` or `boot/grub2`).
    pub grub_dir: PathBuf,
    /// The GRUB configuration found, relative to the image root.
    pub config: Option<PathBuf>,
    /// Reasons the image may not boot like the source.
    pub warnings: Vec<BootWarning>,
}

/// Installs GRUB 2 for BIOS into the image attached (whole) at `disk_device`, whose filesystem
/// partition is mounted at `mounted_root`: boot.img into the boot sector, the core image into
/// the gap after the MBR ([`PartitionStyle::Mbr`]) or into the BIOS boot partition
/// ([`PartitionStyle::Gpt`]), modules into `boot/grub/i386-pc`. Uses the host's `grub-install`
/// (or `grub2-install`) with the image's own modules (`--directory`), so the bootloader is the
/// image's GRUB. GRUB finds the partitions of a loop device through `udevadm`, which must be on
/// `PATH`.
///
/// The copied `grub.cfg` is kept as it is (it carries the kernel command line); what in it will
/// not work on the new instance is returned as warnings.
///
/// # Errors
/// [`BootloaderError::Unpartitioned`], [`BootloaderError::NoImageGrub`],
/// [`BootloaderError::NoHostGrub`], [`BootloaderError::Failed`] with the installer's error
/// output, [`BootloaderError::NoCoreImage`], [`BootloaderError::NoBootCode`],
/// [`BootloaderError::Io`].
pub fn install_grub(
    disk_device: &Path,
    mounted_root: &Path,
    style: PartitionStyle,
) -> Result<GrubReport, BootloaderError> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    install_grub_with_path(disk_device, mounted_root, style, &path)
}

fn install_grub_with_path(
    disk_device: &Path,
    mounted_root: &Path,
    style: PartitionStyle,
    search_path: &OsStr,
) -> Result<GrubReport, BootloaderError> {
    let partmap = match style {
        PartitionStyle::None => return Err(BootloaderError::Unpartitioned),
        PartitionStyle::Mbr => "part_msdos",
        PartitionStyle::Gpt => "part_gpt",
    };
    // Every directory the host's installer reads or writes is resolved the way the booted
    // system resolves it, inside the image; one that a symlink would take elsewhere on this
    // host is refused.
    let Some(modules_dir) = confined_dir(mounted_root, GRUB_I386_PC_DIR)? else {
        return Err(BootloaderError::NoImageGrub {
            path: mounted_root.join(GRUB_I386_PC_DIR).join("kernel.img"),
        });
    };
    let kernel_img = modules_dir.join("kernel.img");
    if !kernel_img.is_file() {
        return Err(BootloaderError::NoImageGrub { path: kernel_img });
    }
    let search = SearchPath::path(search_path);
    let program = GRUB_INSTALL_PROGRAMS
        .iter()
        .find_map(|name| search.find(name))
        .ok_or(BootloaderError::NoHostGrub)?;
    // Fedora-family builds (grub2-install) keep everything in boot/grub2.
    let grub_dir_name = if program
        .file_name()
        .is_some_and(|n| n.to_string_lossy().starts_with("grub2-"))
    {
        "grub2"
    } else {
        "grub"
    };
    let grub_dir = Path::new("boot").join(grub_dir_name);

    if confined_dir(mounted_root, "boot")?.is_none() {
        let boot = mounted_root.join("boot");
        std::fs::create_dir(&boot).map_err(|source| BootloaderError::Io { path: boot, source })?;
    }
    let boot_dir = confined_dir(mounted_root, "boot")?.ok_or_else(|| BootloaderError::Io {
        path: mounted_root.join("boot"),
        source: io::Error::from(io::ErrorKind::NotFound),
    })?;
    // What the installer writes into: checked when the copied tree already has them.
    for rel in [grub_dir.clone(), grub_dir.join("i386-pc")] {
        confined_dir(mounted_root, &rel.to_string_lossy())?;
    }
    // grub-install adds the modules for /boot's filesystem itself; naming them as well makes
    // the core image independent of that probe.
    let mut modules = vec![partmap];
    modules.extend(filesystem_module(mounted_root));
    let mut cmd = Command::new(&program);
    cmd.arg("--target=i386-pc")
        .arg(concat_os("--directory=", &modules_dir))
        .arg(concat_os("--boot-directory=", &boot_dir))
        .arg(format!("--modules={}", modules.join(" ")))
        .arg("--no-floppy")
        .arg(disk_device);
    let output = cmd::output(&mut cmd).map_err(|source| BootloaderError::Spawn {
        program: program.clone(),
        source,
    })?;
    if !output.status.success() {
        let hint = if search.find("udevadm").is_none() {
            "; GRUB finds the partitions of a loop device through udevadm, which is not on PATH: \
             install udev (systemd-udev) on this host"
                .to_owned()
        } else {
            String::new()
        };
        return Err(BootloaderError::Failed {
            command: cmd::command_line(&cmd),
            status: output.status,
            stderr: cmd::stderr_tail(&output.stderr, cmd::Tail::Lines(STDERR_TAIL_LINES)),
            hint,
        });
    }
    let core_img = mounted_root.join(&grub_dir).join("i386-pc/core.img");
    if !core_img.is_file() {
        return Err(BootloaderError::NoCoreImage {
            program,
            path: core_img,
        });
    }
    // The copied tree may hold the source's old core.img; the boot sector, zeroed by
    // write_table, shows that the installer really wrote to this disk.
    let boot_code = has_boot_code(disk_device).map_err(|source| BootloaderError::Io {
        path: disk_device.to_owned(),
        source,
    })?;
    if !boot_code {
        return Err(BootloaderError::NoBootCode {
            program,
            disk: disk_device.to_owned(),
        });
    }

    let mut warnings = Vec::new();
    let config = settle_config(mounted_root, &grub_dir, &mut warnings)?;
    if config.is_some() {
        warnings.extend(command_line_warnings(mounted_root)?);
    }
    if let (Some(host), Some(image)) = (
        installer_version(&program),
        image_grub_version(&modules_dir),
    ) {
        if host != image {
            warnings.push(BootWarning::VersionMismatch { host, image });
        }
    }
    Ok(GrubReport {
        program,
        grub_dir,
        config,
        warnings,
    })
}

/// Whether the boot sector of `disk` (a disk, or an image file) holds boot code: its first 440
/// bytes, before the disk signature and the partition entries, are not all zero.
///
/// # Errors
/// When the first sector cannot be read.
pub fn has_boot_code(disk: &Path) -> io::Result<bool> {
    let mut boot_code = [0u8; 440];
    File::open(disk)?.read_exact_at(&mut boot_code, 0)?;
    Ok(boot_code.iter().any(|&b| b != 0))
}

/// Finds the image's GRUB configuration. When it is in the other GRUB directory than the one
/// the installer filled (a Fedora-family image bundled on a Debian-family host or the reverse),
/// writes a `grub.cfg` there that loads it, unless one exists.
fn settle_config(
    root: &Path,
    grub_dir: &Path,
    warnings: &mut Vec<BootWarning>,
) -> Result<Option<PathBuf>, BootloaderError> {
    let image = ImageRoot::open(root).map_err(|source| BootloaderError::Io {
        path: root.to_owned(),
        source,
    })?;
    let is_file = |rel: &Path| -> Result<bool, BootloaderError> {
        image
            .open_file(rel)
            .map(|f| f.is_some())
            .map_err(|source| BootloaderError::Io {
                path: root.join(rel),
                source,
            })
    };
    let own = grub_dir.join("grub.cfg");
    if is_file(&own)? {
        return Ok(Some(own));
    }
    let mut other = None;
    for p in ["boot/grub/grub.cfg", "boot/grub2/grub.cfg"].map(PathBuf::from) {
        if p != own && is_file(&p)? {
            other = Some(p);
            break;
        }
    }
    let Some(config) = other else {
        warnings.push(BootWarning::NoConfig);
        return Ok(None);
    };
    // `$root` is the partition the core image's prefix names, the one holding /boot.
    let stub_text = format!("configfile /{}\n", config.display());
    // Created new, never through a symlink (the grub directory itself was checked).
    let stub_path = root.join(&own);
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&stub_path)
        .and_then(|mut f| std::io::Write::write_all(&mut f, stub_text.as_bytes()))
        .map_err(|source| BootloaderError::Io {
            path: stub_path,
            source,
        })?;
    warnings.push(BootWarning::ConfigRedirected {
        stub: own,
        config: config.clone(),
    });
    Ok(Some(config))
}

/// Warnings about the `root=` arguments of every kernel command line in the image: the
/// `linux`/`linux16`/`linuxefi`/`kernel` lines of both GRUB configurations and the `options`
/// lines of Boot Loader Specification entries (`boot/loader/entries/*.conf`, Fedora family).
fn command_line_warnings(root: &Path) -> Result<Vec<BootWarning>, BootloaderError> {
    let mut files: Vec<(PathBuf, &[&str])> = Vec::new();
    const GRUB_KERNEL_COMMANDS: &[&str] = &["linux", "linux16", "linuxefi", "kernel"];
    const BLS_KERNEL_COMMANDS: &[&str] = &["options"];
    for cfg in ["boot/grub/grub.cfg", "boot/grub2/grub.cfg"] {
        files.push((PathBuf::from(cfg), GRUB_KERNEL_COMMANDS));
    }
    let entries = root.join("boot/loader/entries");
    if let Ok(dir) = std::fs::read_dir(&entries) {
        let mut names: Vec<_> = dir
            .filter_map(Result::ok)
            .map(|e| e.file_name())
            .filter(|n| n.to_string_lossy().ends_with(".conf"))
            .collect();
        names.sort();
        for name in names {
            files.push((
                Path::new("boot/loader/entries").join(name),
                BLS_KERNEL_COMMANDS,
            ));
        }
    }
    let image = ImageRoot::open(root).map_err(|source| BootloaderError::Io {
        path: root.to_owned(),
        source,
    })?;
    let mut warnings = Vec::new();
    for (file, commands) in files {
        let full = root.join(&file);
        let io = |source| BootloaderError::Io {
            path: full.clone(),
            source,
        };
        // Read inside the image only; what is not a regular file there (missing, a directory,
        // a link out of the image) has nothing to check, and GRUB would not read it either.
        let Some(f) = image.open_file(&file).map_err(io)? else {
            continue;
        };
        let mut bytes = Vec::new();
        f.take(CONFIG_READ_LIMIT)
            .read_to_end(&mut bytes)
            .map_err(io)?;
        let text = String::from_utf8_lossy(&bytes).into_owned();
        for value in root_arguments(&text, commands) {
            let warning = match classify_root(&value) {
                RootKind::Stable => continue,
                RootKind::DeviceName => BootWarning::RootByDeviceName {
                    file: file.clone(),
                    value,
                },
            };
            if !warnings.contains(&warning) {
                warnings.push(warning);
            }
        }
    }
    Ok(warnings)
}

/// The values of `root=` on the lines of `text` that start with one of `commands`.
fn root_arguments(text: &str, commands: &[&str]) -> Vec<String> {
    let mut values = Vec::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        let Some(first) = words.next() else { continue };
        if !commands.contains(&first) {
            continue;
        }
        for word in words {
            let word = word.trim_matches(|c| c == '"' || c == '\'');
            if let Some(value) = word.strip_prefix("root=") {
                if !values.iter().any(|v| v == value) {
                    values.push(value.to_owned());
                }
            }
        }
    }
    values
}

#[derive(Debug, PartialEq, Eq)]
enum RootKind {
    /// Resolves in the image: a filesystem UUID or label, a partition's PARTUUID or PARTLABEL
    /// (kept from the source or rewritten, see `image::bootrefs`), or a GRUB variable.
    Stable,
    /// A device node path (`/dev/xvda1`, `/dev/mapper/…`, `/dev/vg/lv`).
    DeviceName,
}

fn classify_root(value: &str) -> RootKind {
    if value.starts_with("/dev/") && !value.starts_with("/dev/disk/") {
        RootKind::DeviceName
    } else {
        // UUID=, LABEL=, PARTUUID=, PARTLABEL=, /dev/disk/by-*, and `${…}` expansions that
        // grub-mkconfig fills in at boot.
        RootKind::Stable
    }
}

/// The largest GRUB configuration or BLS entry read for warnings.
const CONFIG_READ_LIMIT: u64 = 4 << 20;

/// The directory `rel` of the image mounted at `root` as a host path that leads where the
/// booted system's `/rel` does, or `None` when there is none. Resolved twice: inside the image
/// (`openat2(RESOLVE_IN_ROOT)`, absolute links taken from the image's root) and on the host
/// (what a host program given the path would reach); they must agree, else a symlink in the
/// image would lead the host's program out of it, and that is an error.
fn confined_dir(root: &Path, rel: &str) -> Result<Option<PathBuf>, BootloaderError> {
    let io = |path: PathBuf| move |source| BootloaderError::Io { path, source };
    let image = ImageRoot::open(root).map_err(io(root.to_owned()))?;
    let inside = match image.open_dir(Path::new(rel)).map_err(io(root.join(rel)))? {
        Lookup::Dir(dir) => std::fs::read_link(format!("/proc/self/fd/{}", dir.as_raw_fd()))
            .map_err(io(root.join(rel)))?,
        Lookup::Missing => {
            // Nothing there in the image; but a dangling link on the host side must not be
            // created through either.
            return match std::fs::symlink_metadata(root.join(rel)) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
                _ => Err(BootloaderError::OutsideImage {
                    path: rel.to_owned(),
                    resolved: std::fs::read_link(root.join(rel)).unwrap_or_default(),
                }),
            };
        }
        Lookup::Blocked(_) => {
            return Err(BootloaderError::OutsideImage {
                path: rel.to_owned(),
                resolved: std::fs::canonicalize(root.join(rel)).unwrap_or_default(),
            });
        }
    };
    let on_host = match std::fs::canonicalize(root.join(rel)) {
        Ok(p) => p,
        Err(_) => {
            return Err(BootloaderError::OutsideImage {
                path: rel.to_owned(),
                resolved: std::fs::read_link(root.join(rel)).unwrap_or_default(),
            });
        }
    };
    if on_host != inside {
        return Err(BootloaderError::OutsideImage {
            path: rel.to_owned(),
            resolved: on_host,
        });
    }
    Ok(Some(inside))
}

/// The GRUB module for the filesystem at `root`, when it is one GRUB knows by that name.
fn filesystem_module(root: &Path) -> Option<&'static str> {
    use nix::sys::statfs::{BTRFS_SUPER_MAGIC, EXT4_SUPER_MAGIC, XFS_SUPER_MAGIC, statfs};
    let kind = statfs(root).ok()?.filesystem_type();
    // EXT2/3/4 share one magic; GRUB's ext2 module reads all three.
    if kind == EXT4_SUPER_MAGIC {
        Some("ext2")
    } else if kind == XFS_SUPER_MAGIC {
        Some("xfs")
    } else if kind == BTRFS_SUPER_MAGIC {
        Some("btrfs")
    } else {
        None
    }
}

/// The version `program --version` reports (`grub-install (GRUB) 2.06-13+deb12u2` →
/// `2.06-13+deb12u2`).
fn installer_version(program: &Path) -> Option<String> {
    let out = cmd::output(Command::new(program).arg("--version")).ok()?;
    parse_installer_version(&String::from_utf8_lossy(&out.stdout))
}

fn parse_installer_version(text: &str) -> Option<String> {
    let line = text.lines().next()?;
    line.contains("(GRUB)")
        .then(|| line.split_whitespace().last().map(str::to_owned))
        .flatten()
}

/// `grub_package_version` from the image's `modinfo.sh`, the same string the installer
/// reports for a build of the same package.
fn image_grub_version(modules_dir: &Path) -> Option<String> {
    let text = std::fs::read_to_string(modules_dir.join("modinfo.sh")).ok()?;
    parse_modinfo_version(&text)
}

fn parse_modinfo_version(text: &str) -> Option<String> {
    text.lines().find_map(|l| {
        l.strip_prefix("grub_package_version=")
            .map(|v| v.trim().trim_matches(|c| c == '"' || c == '\'').to_owned())
    })
}

fn concat_os(prefix: &str, path: &Path) -> OsString {
    let mut s = OsString::from(prefix);
    s.push(path);
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    // --- GRUB, without root ---------------------------------------------------------------

    /// An image root with GRUB's BIOS directory (only what the checks look at).
    fn grub_root(dir: &Path, version: &str) -> PathBuf {
        let root = dir.join("root");
        let mods = root.join(GRUB_I386_PC_DIR);
        std::fs::create_dir_all(&mods).unwrap();
        std::fs::write(mods.join("kernel.img"), b"not really").unwrap();
        std::fs::write(
            mods.join("modinfo.sh"),
            format!("#!/bin/sh\ngrub_version=\"2.06\"\ngrub_package_version=\"{version}\"\n"),
        )
        .unwrap();
        root
    }

    /// A directory holding an executable `name` with `script` as its body, for use as `PATH`.
    fn fake_program(dir: &Path, name: &str, script: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt as _;
        let bin = dir.join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        let path = bin.join(name);
        std::fs::write(&path, format!("#!/bin/sh\n{script}")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        bin
    }

    /// [`install_grub_with_path`] for tests whose fake installer was just written: another
    /// test thread forking at that moment can hold the script open for writing until its exec,
    /// and exec then fails with ETXTBSY (rust-lang/rust#114554). Retried; nothing else is.
    fn install_with_fake_path(
        disk: &Path,
        root: &Path,
        style: PartitionStyle,
        path: &OsStr,
    ) -> Result<GrubReport, BootloaderError> {
        for _ in 0..50 {
            match install_grub_with_path(disk, root, style, path) {
                Err(BootloaderError::Spawn { source, .. })
                    if source.raw_os_error() == Some(libc::ETXTBSY) =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                other => return other,
            }
        }
        panic!("the fake installer stayed busy (ETXTBSY)")
    }

    #[test]
    fn grub_needs_a_partitioned_image() {
        let dir = tempfile::tempdir().unwrap();
        let root = grub_root(dir.path(), "2.06");
        let err = install_grub(Path::new("/dev/null"), &root, PartitionStyle::None).unwrap_err();
        assert!(matches!(err, BootloaderError::Unpartitioned), "{err}");
        assert!(err.to_string().contains("--bootloader none"), "{err}");
    }

    #[test]
    fn an_image_without_grub_2_for_bios_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("boot/grub")).unwrap();
        let err =
            install_grub(Path::new("/dev/null"), dir.path(), PartitionStyle::Gpt).unwrap_err();
        let BootloaderError::NoImageGrub { path } = &err else {
            panic!("{err}")
        };
        assert_eq!(path, &dir.path().join("usr/lib/grub/i386-pc/kernel.img"));
        let msg = err.to_string();
        assert!(
            msg.starts_with("the image has no GRUB 2 for BIOS (i386-pc)"),
            "{msg}"
        );
        assert!(
            msg.ends_with(
                "install grub-pc-bin / grub2-pc-modules in the source system or pass \
                 --bootloader none"
            ),
            "{msg}"
        );
        // Nothing was written into the image.
        assert!(!dir.path().join("boot/grub/i386-pc").exists());
    }

    #[test]
    fn no_installer_on_the_host_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let root = grub_root(dir.path(), "2.06");
        let empty = dir.path().join("empty");
        std::fs::create_dir(&empty).unwrap();
        let err = install_with_fake_path(
            Path::new("/dev/null"),
            &root,
            PartitionStyle::Mbr,
            empty.as_os_str(),
        )
        .unwrap_err();
        assert!(matches!(err, BootloaderError::NoHostGrub), "{err}");
        assert!(err.to_string().contains("grub2-common"), "{err}");
    }

    #[test]
    fn a_failing_installer_is_reported_with_its_command_line_and_error_output() {
        let dir = tempfile::tempdir().unwrap();
        let root = grub_root(dir.path(), "2.06");
        let bin = fake_program(
            dir.path(),
            "grub-install",
            "echo 'Installing for i386-pc platform.' >&2\n\
             echo 'grub-install: error: cannot find a GRUB drive for /dev/loop9p1.' >&2\n\
             exit 1\n",
        );
        let err = install_with_fake_path(
            Path::new("/dev/loop9"),
            &root,
            PartitionStyle::Mbr,
            bin.as_os_str(),
        )
        .unwrap_err();
        assert!(matches!(err, BootloaderError::Failed { .. }), "{err}");
        let msg = err.to_string();
        let mods = root.join(GRUB_I386_PC_DIR);
        for part in [
            "--target=i386-pc",
            &format!("--directory={}", mods.display()),
            &format!("--boot-directory={}", root.join("boot").display()),
            "--no-floppy /dev/loop9 failed",
            "Installing for i386-pc platform.; grub-install: error: cannot find a GRUB drive",
            // Only the fake installer is on this PATH: the likely cause is named.
            "through udevadm, which is not on PATH",
        ] {
            assert!(msg.contains(part), "{part:?} not in {msg}");
        }
    }

    #[test]
    fn an_installer_that_leaves_no_core_image_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let root = grub_root(dir.path(), "2.06");
        let bin = fake_program(dir.path(), "grub-install", "exit 0\n");
        let err = install_with_fake_path(
            Path::new("/dev/loop9"),
            &root,
            PartitionStyle::Gpt,
            bin.as_os_str(),
        )
        .unwrap_err();
        assert!(matches!(err, BootloaderError::NoCoreImage { .. }), "{err}");
    }

    /// A stand-in for grub-install that records its arguments, creates the core image where
    /// the real one would, writes a few bytes of "boot code" to the disk (its last argument)
    /// and reports `version`.
    fn recording_installer(dir: &Path, name: &str, version: &str, grub_dir: &str) -> PathBuf {
        let args = dir.join("args");
        fake_program(
            dir,
            name,
            &format!(
                "if [ \"$1\" = --version ]; then echo '{name} (GRUB) {version}'; exit 0; fi\n\
                 printf '%s\\n' \"$@\" > '{args}'\n\
                 for a in \"$@\"; do case \"$a\" in --boot-directory=*) b=\"${{a#*=}}\";; esac; \
                 disk=\"$a\"; done\n\
                 mkdir -p \"$b/{grub_dir}/i386-pc\" && : > \"$b/{grub_dir}/i386-pc/core.img\"\n\
                 printf 'boot' | dd of=\"$disk\" conv=notrunc status=none\n",
                args = args.display()
            ),
        )
    }

    /// A zeroed 1 MiB file standing in for the loop device.
    fn fake_disk(dir: &Path) -> PathBuf {
        let disk = dir.join("fake-disk");
        std::fs::write(&disk, vec![0; 1 << 20]).unwrap();
        disk
    }

    #[test]
    fn an_installer_that_writes_no_boot_code_is_an_error() {
        // The core image may be a stale copy from the source system; the disk tells.
        let dir = tempfile::tempdir().unwrap();
        let root = grub_root(dir.path(), "2.06");
        std::fs::create_dir_all(root.join("boot/grub/i386-pc")).unwrap();
        std::fs::write(root.join("boot/grub/i386-pc/core.img"), b"old").unwrap();
        let bin = fake_program(dir.path(), "grub-install", "exit 0\n");
        let err = install_with_fake_path(
            &fake_disk(dir.path()),
            &root,
            PartitionStyle::Mbr,
            bin.as_os_str(),
        )
        .unwrap_err();
        assert!(matches!(err, BootloaderError::NoBootCode { .. }), "{err}");
    }

    /// Issue 12, finding 6: `--boot-directory=<mnt>/boot` and `--directory=<mnt>/usr/lib/grub/i386-pc`
    /// followed a `boot` symlink in the copied tree to the host. Each directory the installer
    /// uses must lead where the image's own does.
    #[test]
    fn symlinks_in_the_image_never_lead_the_installer_to_the_host() {
        let all_files = |dir: &Path| -> Vec<PathBuf> {
            let mut v: Vec<PathBuf> = walk_files(dir);
            v.sort();
            v
        };
        for (what, plant) in [
            ("boot", "boot"),
            ("boot/grub", "boot/grub"),
            ("boot/grub/i386-pc", "boot/grub/i386-pc"),
        ] {
            let dir = tempfile::tempdir().unwrap();
            let root = grub_root(dir.path(), "2.06-13+deb12u2");
            let host = dir.path().join("host");
            std::fs::create_dir_all(host.join("grub/i386-pc")).unwrap();
            std::fs::write(host.join("precious"), b"host file").unwrap();
            let link = root.join(plant);
            std::fs::create_dir_all(link.parent().unwrap()).unwrap();
            symlink(&host, &link).unwrap();
            let before = all_files(&host);
            let bin = recording_installer(dir.path(), "grub-install", "2.06-13+deb12u2", "grub");
            let disk = fake_disk(dir.path());
            let err = install_with_fake_path(&disk, &root, PartitionStyle::Mbr, bin.as_os_str())
                .unwrap_err();
            assert!(
                matches!(&err, BootloaderError::OutsideImage { path, .. } if path == what),
                "{what}: {err}"
            );
            assert_eq!(
                all_files(&host),
                before,
                "{what}: nothing written on the host"
            );
            assert!(
                !dir.path().join("args").exists(),
                "{what}: the installer never ran"
            );
        }
        // The modules too: a host directory posing as the image's GRUB.
        let dir = tempfile::tempdir().unwrap();
        let root = grub_root(dir.path(), "2.06-13+deb12u2");
        let host_mods =
            grub_root(&dir.path().join("host"), "2.06-13+deb12u2").join(GRUB_I386_PC_DIR);
        std::fs::remove_dir_all(root.join(GRUB_I386_PC_DIR)).unwrap();
        symlink(&host_mods, root.join(GRUB_I386_PC_DIR)).unwrap();
        let bin = recording_installer(dir.path(), "grub-install", "2.06-13+deb12u2", "grub");
        let err = install_with_fake_path(
            &fake_disk(dir.path()),
            &root,
            PartitionStyle::Mbr,
            bin.as_os_str(),
        )
        .unwrap_err();
        assert!(matches!(err, BootloaderError::OutsideImage { .. }), "{err}");

        // A relative link inside the image is followed as the system follows it.
        let dir = tempfile::tempdir().unwrap();
        let root = grub_root(dir.path(), "2.06-13+deb12u2");
        std::fs::create_dir_all(root.join("sysroot/boot")).unwrap();
        symlink("sysroot/boot", root.join("boot")).unwrap();
        let bin = recording_installer(dir.path(), "grub-install", "2.06-13+deb12u2", "grub");
        let _report = install_with_fake_path(
            &fake_disk(dir.path()),
            &root,
            PartitionStyle::Mbr,
            bin.as_os_str(),
        )
        .unwrap();
        assert!(root.join("sysroot/boot/grub/i386-pc/core.img").is_file());
    }

    fn walk_files(dir: &Path) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if std::fs::symlink_metadata(&p).unwrap().is_dir() {
                out.push(p.clone());
                out.extend(walk_files(&p));
            } else {
                out.push(p);
            }
        }
        out
    }

    #[test]
    fn installer_arguments_and_warnings_about_the_copied_configuration() {
        let dir = tempfile::tempdir().unwrap();
        let root = grub_root(dir.path(), "2.12-1");
        std::fs::create_dir_all(root.join("boot/grub")).unwrap();
        std::fs::write(
            root.join("boot/grub/grub.cfg"),
            "menuentry 'Debian' {\n\tlinux\t/boot/vmlinuz root=/dev/nvme0n1p1 ro quiet\n}\n",
        )
        .unwrap();
        let bin = recording_installer(dir.path(), "grub-install", "2.06-13+deb12u2", "grub");
        let disk = fake_disk(dir.path());
        let report =
            install_with_fake_path(&disk, &root, PartitionStyle::Gpt, bin.as_os_str()).unwrap();
        let args = std::fs::read_to_string(dir.path().join("args")).unwrap();
        let args: Vec<&str> = args.lines().collect();
        assert_eq!(args[0], "--target=i386-pc");
        assert!(
            args.iter().any(|a| a.starts_with("--modules=part_gpt")),
            "{args:?}"
        );
        assert_eq!(args.last().copied(), disk.to_str());
        assert_eq!(report.program, bin.join("grub-install"));
        assert_eq!(report.grub_dir, Path::new("boot/grub"));
        assert_eq!(report.config, Some(PathBuf::from("boot/grub/grub.cfg")));
        assert_eq!(
            report.warnings,
            vec![
                BootWarning::RootByDeviceName {
                    file: "boot/grub/grub.cfg".into(),
                    value: "/dev/nvme0n1p1".into()
                },
                BootWarning::VersionMismatch {
                    host: "2.06-13+deb12u2".into(),
                    image: "2.12-1".into()
                },
            ]
        );
        assert!(report.warnings[0].to_string().contains("use root=UUID="));
    }

    #[test]
    fn a_fedora_family_installer_fills_boot_grub2_and_a_debian_config_gets_a_stub() {
        let dir = tempfile::tempdir().unwrap();
        let root = grub_root(dir.path(), "2.06-13+deb12u2");
        std::fs::create_dir_all(root.join("boot/grub")).unwrap();
        std::fs::write(
            root.join("boot/grub/grub.cfg"),
            "linux /boot/vmlinuz root=UUID=0b6c4f3e-2a57-4c1d-9e8f-123456789abc ro\n",
        )
        .unwrap();
        let bin = recording_installer(dir.path(), "grub2-install", "2.06-13+deb12u2", "grub2");
        let report = install_with_fake_path(
            &fake_disk(dir.path()),
            &root,
            PartitionStyle::Mbr,
            bin.as_os_str(),
        )
        .unwrap();
        assert_eq!(report.grub_dir, Path::new("boot/grub2"));
        assert_eq!(report.config, Some(PathBuf::from("boot/grub/grub.cfg")));
        assert_eq!(
            report.warnings,
            vec![BootWarning::ConfigRedirected {
                stub: "boot/grub2/grub.cfg".into(),
                config: "boot/grub/grub.cfg".into()
            }]
        );
        assert_eq!(
            std::fs::read_to_string(root.join("boot/grub2/grub.cfg")).unwrap(),
            "configfile /boot/grub/grub.cfg\n"
        );
    }

    #[test]
    fn a_missing_configuration_is_a_warning() {
        let dir = tempfile::tempdir().unwrap();
        let mut warnings = Vec::new();
        let config = settle_config(dir.path(), Path::new("boot/grub"), &mut warnings).unwrap();
        assert_eq!(config, None);
        assert_eq!(warnings, vec![BootWarning::NoConfig]);
        assert!(
            warnings[0]
                .to_string()
                .contains("kernel command line cannot be carried over"),
            "{}",
            warnings[0]
        );
    }

    #[test]
    fn root_arguments_by_device_name_or_partition_id_are_flagged() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("boot/grub2")).unwrap();
        std::fs::create_dir_all(root.join("boot/loader/entries")).unwrap();
        std::fs::write(
            root.join("boot/grub2/grub.cfg"),
            "set root='hd0,msdos1'\n\
             echo 'root=/dev/sdz9 is not a kernel line'\n\
             menuentry 'a' {\n\
             \tlinux /boot/vmlinuz-6.1 root=UUID=0b6c4f3e ro console=ttyS0\n\
             \tlinux16 /vmlinuz root=/dev/xvda1 ro\n\
             \tlinuxefi /vmlinuz root=LABEL=cloudimg-rootfs\n\
             \tlinux /vmlinuz root=PARTUUID=885cbc11-01\n\
             \tkernel /vmlinuz \"root=/dev/disk/by-uuid/0b6c\"\n\
             \tlinux /vmlinuz root=${GRUB_DEVICE} root=/dev/xvda1\n\
             }\n",
        )
        .unwrap();
        std::fs::write(
            root.join("boot/loader/entries/abc-6.1.conf"),
            "title Fedora\nlinux /vmlinuz-6.1\noptions root=/dev/mapper/fedora-root ro\n",
        )
        .unwrap();
        std::fs::write(
            root.join("boot/loader/entries/README"),
            "options root=/dev/sda1\n",
        )
        .unwrap();
        let cfg = PathBuf::from("boot/grub2/grub.cfg");
        assert_eq!(
            command_line_warnings(root).unwrap(),
            vec![
                BootWarning::RootByDeviceName {
                    file: cfg,
                    value: "/dev/xvda1".into()
                },
                BootWarning::RootByDeviceName {
                    file: "boot/loader/entries/abc-6.1.conf".into(),
                    value: "/dev/mapper/fedora-root".into()
                },
            ]
        );
    }

    #[test]
    fn grub_versions_are_read_from_the_installer_and_modinfo() {
        assert_eq!(
            parse_installer_version("grub-install (GRUB) 2.06-13+deb12u2\n").as_deref(),
            Some("2.06-13+deb12u2")
        );
        assert_eq!(parse_installer_version("something else 1.0\n"), None);
        assert_eq!(
            parse_modinfo_version(
                "grub_version=\"2.06\"\ngrub_package_version=\"2.06-13+deb12u2\"\n"
            )
            .as_deref(),
            Some("2.06-13+deb12u2")
        );
        assert_eq!(parse_modinfo_version("grub_version=\"2.06\"\n"), None);
    }
}
