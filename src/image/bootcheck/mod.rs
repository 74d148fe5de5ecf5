//! Will the image boot as an instance-store instance? Instance-store AMIs launch only on Xen
//! hosts (C1, C3, D2, I2, M1, M2, M3, R3, X1) with BIOS firmware, so a server saved from a
//! Nitro instance, or any image, must carry what Xen needs. This module reads an image's tree
//! (mounted read-only, or the image being made) and says what would stop the boot, each with
//! the fix spelled out:
//!
//! * the disk: a partition table (HVM) and boot code in the boot sector;
//! * the bootloader's configuration: GRUB 2's `grub.cfg` (or Boot Loader Specification entries
//!   with `blscfg`), its default entry, the kernel and initramfs it names present in the image;
//! * `root=` resolving in the image (UUID, LABEL, PARTUUID, PARTLABEL of its own filesystem and
//!   partition, or a device name that exists under Xen: `/dev/xvda1`, `/dev/sda1`);
//! * the drivers: `xen-blkfront` built into the kernel or in the initramfs (without it the
//!   initramfs never sees the root disk), `xen-netfront` (the network), and `ena` / `ixgbevf`
//!   when enhanced networking is asked for;
//! * `/etc/fstab`: every entry resolves in the image or is `nofail`;
//! * for an EBS-backed AMI on Nitro ([`Platform::Nitro`]) instead of Xen's drivers: `nvme`
//!   (EBS volumes are NVMe devices there; built in, or in the initramfs) and `ena` (the only
//!   network), and no `root=` or `/etc/fstab` entry naming a Xen-era device (`/dev/xvda1`,
//!   `/dev/sda1`), which Nitro's `/dev/nvme0n1p1` does not answer to;
//! * a serial console (`console=ttyS0` for HVM, `hvc0` for paravirtual), so that
//!   `get-console-output` shows the boot.
//!
//! Paths in the image are resolved inside it (symlinks never leave it), files are read with
//! bounds, and an initramfs is parsed as hostile input ([`initramfs`]).

mod file;
pub mod initramfs;

pub use file::check_image_file;

use std::fmt;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use super::bootrefs;
use super::fstab::{self, RootFs};
use super::partition::PartitionStyle;
use super::root::{ImageRoot, Lookup, list_names};

/// The largest configuration file read (grub.cfg, grubenv, BLS entries, kernel configs).
const CONFIG_LIMIT_BYTES: u64 = 4 << 20;

/// How the instance will run the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Virtualization {
    /// Hardware virtual machine: BIOS, the image's boot sector and GRUB.
    #[default]
    Hvm,
    /// Paravirtual: PV-GRUB reads the image's GRUB Legacy menu; no boot sector needed.
    Paravirtual,
}

impl Virtualization {
    /// From an AMI's virtualization type as EC2 spells it (`paravirtual`; anything else is
    /// HVM, amibundle's default).
    pub fn from_ami_type(virtualization_type: &str) -> Self {
        if virtualization_type == "paravirtual" {
            Self::Paravirtual
        } else {
            Self::Hvm
        }
    }
}

/// The hosts the image will run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Platform {
    /// Xen: instance-store AMIs (C1, C3, D2, I2, M1, M2, M3, R3, X1): `xen-blkfront`,
    /// `xen-netfront`.
    #[default]
    Xen,
    /// Nitro: every current instance type, EBS-backed AMIs only: the root volume is an NVMe
    /// device (`nvme`), the network ENA (`ena`), and Xen's device names do not exist.
    Nitro,
}

impl Platform {
    fn host(self) -> &'static str {
        match self {
            Platform::Xen => "a Xen host",
            Platform::Nitro => "a Nitro instance",
        }
    }
}

/// What to check for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CheckOptions {
    /// HVM or paravirtual.
    pub virtualization: Virtualization,
    /// Xen (instance store) or Nitro (EBS).
    pub platform: Platform,
    /// ENA networking will be enabled (`--ena-support`): the `ena` driver is needed.
    pub ena: bool,
    /// Intel 82599 VF networking will be enabled (`--sriov-net-support`): `ixgbevf` is needed.
    pub sriov: bool,
}

/// What is known about the disk around the tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskFacts {
    /// The image's partition table.
    pub style: PartitionStyle,
    /// Whether the boot sector holds boot code (its first 440 bytes are not all zero).
    pub boot_code: bool,
    /// The root filesystem's and partition's identifiers.
    pub root: RootFs,
}

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    /// The boot will stop (or the instance will be unreachable).
    Error,
    /// Could not be verified, or may be a problem.
    Warning,
}

/// One finding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Error or warning.
    pub severity: Severity,
    /// A stable identifier (`no-xen-blkfront`), for `--json` and scripts.
    pub code: &'static str,
    /// What is wrong.
    pub message: String,
    /// What to do about it.
    pub fix: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {} (fix: {})", self.code, self.message, self.fix)
    }
}

/// What the check found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BootReport {
    /// The bootloader configuration read, as a path in the image.
    pub config: Option<PathBuf>,
    /// The kernel of the default entry, as GRUB names it.
    pub kernel: Option<String>,
    /// Its initramfs.
    pub initrd: Option<String>,
    /// Its kernel command line.
    pub command_line: Option<String>,
    /// The kernel's version (from its file name or `/lib/modules`).
    pub kernel_version: Option<String>,
    /// Errors and warnings, errors first.
    pub problems: Vec<Problem>,
}

impl BootReport {
    /// The errors: what will stop the boot.
    pub fn errors(&self) -> impl Iterator<Item = &Problem> {
        self.problems
            .iter()
            .filter(|p| p.severity == Severity::Error)
    }

    /// Whether nothing will stop the boot.
    pub fn bootable(&self) -> bool {
        self.errors().next().is_none()
    }
}

/// A failure to read the image.
#[derive(Debug, thiserror::Error)]
#[error("{what} {path} in the image at {image}")]
pub struct BootCheckError {
    what: &'static str,
    path: PathBuf,
    image: PathBuf,
    #[source]
    source: io::Error,
}

/// Checks the image tree at `image_root` (mounted) on `disk`; see the module docs.
///
/// # Errors
/// [`BootCheckError`] when the image cannot be read (a missing file is a finding, not an
/// error).
pub fn check_tree(
    image_root: &Path,
    disk: &DiskFacts,
    opts: &CheckOptions,
) -> Result<BootReport, BootCheckError> {
    let root = ImageRoot::open(image_root).map_err(|source| BootCheckError {
        what: "opening",
        path: "/".into(),
        image: image_root.to_owned(),
        source,
    })?;
    let mut c = Checker {
        root: &root,
        disk,
        opts,
        report: BootReport::default(),
    };
    c.disk();
    c.bootloader()?;
    c.fstab()?;
    c.report.problems.sort_by_key(|p| p.severity);
    Ok(c.report)
}

struct Checker<'a> {
    root: &'a ImageRoot,
    disk: &'a DiskFacts,
    opts: &'a CheckOptions,
    report: BootReport,
}

/// The default boot entry of a configuration.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct Entry {
    kernel: Option<String>,
    initrd: Option<String>,
    args: Vec<String>,
}

impl Checker<'_> {
    fn problem(&mut self, severity: Severity, code: &'static str, message: String, fix: &str) {
        self.report.problems.push(Problem {
            severity,
            code,
            message,
            fix: fix.to_owned(),
        });
    }

    fn error(&mut self, code: &'static str, message: String, fix: &str) {
        self.problem(Severity::Error, code, message, fix);
    }

    fn io_err(
        &self,
        what: &'static str,
        rel: &str,
    ) -> impl FnOnce(io::Error) -> BootCheckError + use<> {
        let (path, image) = (Path::new("/").join(rel), self.root.path().to_owned());
        move |source| BootCheckError {
            what,
            path,
            image,
            source,
        }
    }

    /// The text of a regular file of the image (symlinks followed inside it), or `None`.
    fn read(&self, rel: &str) -> Result<Option<String>, BootCheckError> {
        let Some(file) = self
            .root
            .open_file(Path::new(rel))
            .map_err(self.io_err("opening", rel))?
        else {
            return Ok(None);
        };
        let mut bytes = Vec::new();
        file.take(CONFIG_LIMIT_BYTES)
            .read_to_end(&mut bytes)
            .map_err(self.io_err("reading", rel))?;
        Ok(Some(String::from_utf8_lossy(&bytes).into_owned()))
    }

    fn exists(&self, rel: &str) -> Result<bool, BootCheckError> {
        Ok(self
            .root
            .open_file(Path::new(rel))
            .map_err(self.io_err("opening", rel))?
            .is_some())
    }

    fn disk(&mut self) {
        if self.opts.virtualization == Virtualization::Paravirtual {
            return;
        }
        if self.disk.style == PartitionStyle::None {
            self.error(
                "no-partition-table",
                "the image is a bare filesystem: an HVM instance's firmware needs a partition \
                 table and a bootloader"
                    .into(),
                "bundle with --partition mbr (bundle-vol does this by itself for a root on a \
                 partitioned disk), or register the image as paravirtual",
            );
        } else if !self.disk.boot_code {
            self.error(
                "no-boot-code",
                "the image's boot sector holds no boot code: the firmware will find nothing to \
                 start"
                    .into(),
                "bundle with --bootloader grub2 (the default), with GRUB 2 for BIOS installed in \
                 the source system (grub-pc-bin / grub2-pc-modules)",
            );
        }
    }

    fn bootloader(&mut self) -> Result<(), BootCheckError> {
        let entry = match self.opts.virtualization {
            Virtualization::Hvm => self.grub2_entry()?,
            Virtualization::Paravirtual => self.menu_lst_entry()?,
        };
        let Some(entry) = entry else {
            return Ok(());
        };
        self.report.command_line = Some(entry.args.join(" "));
        self.report.kernel.clone_from(&entry.kernel);
        self.report.initrd.clone_from(&entry.initrd);
        let Some(kernel) = entry.kernel.clone() else {
            self.error(
                "no-kernel",
                format!(
                    "the default entry of {} starts no kernel",
                    self.config_name()
                ),
                "regenerate the configuration in the source system (update-grub or \
                 grub2-mkconfig -o …) and bundle again",
            );
            return Ok(());
        };
        let kernel_path = grub_path(&kernel);
        let kernel_found = match &kernel_path {
            Some(p) => self.exists(p)?,
            None => true,
        };
        if !kernel_found {
            let fix = if kernel_path
                .as_deref()
                .is_some_and(|p| !p.starts_with("boot/"))
            {
                "the kernel is on a separate /boot filesystem of the source, which is not in the \
                 image: bundle with --all, or move /boot into the root filesystem"
            } else {
                "install the kernel in the source system (or regenerate the GRUB configuration \
                 for the kernels it has) and bundle again"
            };
            self.error(
                "kernel-missing",
                format!("the default entry's kernel {kernel} is not in the image"),
                fix,
            );
        }
        if let Some(initrd) = &entry.initrd {
            if let Some(p) = grub_path(initrd) {
                if !self.exists(&p)? {
                    self.error(
                        "initrd-missing",
                        format!("the default entry's initramfs {initrd} is not in the image"),
                        "run update-initramfs -u (Debian, Ubuntu) or dracut -f (Fedora, RHEL, \
                         Amazon Linux) in the source system and bundle again",
                    );
                }
            }
        }
        self.root_argument(&entry.args);
        self.console(&entry.args);
        let version = self.kernel_version(kernel_path.as_deref())?;
        self.report.kernel_version.clone_from(&version);
        self.drivers(version.as_deref(), entry.initrd.as_deref())?;
        Ok(())
    }

    fn config_name(&self) -> String {
        self.report.config.as_ref().map_or_else(
            || "the GRUB configuration".into(),
            |p| p.display().to_string(),
        )
    }

    /// The default entry of GRUB 2's configuration (or of the BLS entries it loads).
    fn grub2_entry(&mut self) -> Result<Option<Entry>, BootCheckError> {
        let mut found = None;
        for cfg in ["boot/grub/grub.cfg", "boot/grub2/grub.cfg"] {
            if let Some(text) = self.read(cfg)? {
                found = Some((cfg, text));
                break;
            }
        }
        let Some((mut cfg, mut text)) = found else {
            self.error(
                "no-grub-config",
                "the image has no /boot/grub/grub.cfg or /boot/grub2/grub.cfg: GRUB will stop \
                 at its prompt"
                    .into(),
                "run update-grub (Debian, Ubuntu) or grub2-mkconfig -o /boot/grub2/grub.cfg \
                 in the source system and bundle again",
            );
            return Ok(None);
        };
        // A stub that only loads the other directory's configuration (bundle-vol writes one
        // when the installer and the image disagree on grub vs grub2).
        if let Some(target) = configfile_target(&text) {
            if let Some(p) = grub_path(&target) {
                if let Some(t) = self.read(&p)? {
                    text = t;
                    cfg = if p == "boot/grub2/grub.cfg" {
                        "boot/grub2/grub.cfg"
                    } else {
                        "boot/grub/grub.cfg"
                    };
                }
            }
        }
        self.report.config = Some(Path::new("/").join(cfg));
        if text
            .lines()
            .any(|l| l.split_whitespace().next() == Some("blscfg"))
        {
            return self.bls_entry(cfg);
        }
        let entry = default_menuentry(&text);
        if entry.is_none() {
            self.error(
                "no-menu-entry",
                format!("/{cfg} has no menu entry that starts a kernel"),
                "run update-grub (Debian, Ubuntu) or grub2-mkconfig -o /boot/grub2/grub.cfg in \
                 the source system and bundle again",
            );
        }
        Ok(entry)
    }

    /// The newest Boot Loader Specification entry (Fedora, RHEL 8+, Amazon Linux 2023), with
    /// `$kernelopts` taken from grubenv.
    fn bls_entry(&mut self, cfg: &str) -> Result<Option<Entry>, BootCheckError> {
        let dir = Path::new("boot/loader/entries");
        let names = match self
            .root
            .open_dir(dir)
            .map_err(self.io_err("opening", "boot/loader/entries"))?
        {
            Lookup::Dir(d) => {
                list_names(&d).map_err(self.io_err("listing", "boot/loader/entries"))?
            }
            _ => Vec::new(),
        };
        let mut names: Vec<String> = names
            .iter()
            .map(|n| String::from_utf8_lossy(n.to_bytes()).into_owned())
            .filter(|n| n.ends_with(".conf"))
            .collect();
        names.sort_by(|a, b| version_cmp(b, a));
        let Some(newest) = names.first() else {
            self.error(
                "no-menu-entry",
                format!("/{cfg} loads Boot Loader Specification entries, but /boot/loader/entries has none"),
                "reinstall the kernel in the source system (kernel-install add …) and bundle again",
            );
            return Ok(None);
        };
        let rel = format!("boot/loader/entries/{newest}");
        let text = self.read(&rel)?.unwrap_or_default();
        let grubenv = self
            .read("boot/grub2/grubenv")?
            .or(self.read("boot/grub/grubenv")?)
            .unwrap_or_default();
        let kernelopts = grubenv
            .lines()
            .find_map(|l| l.strip_prefix("kernelopts="))
            .unwrap_or_default()
            .to_owned();
        let mut entry = Entry::default();
        for line in text.lines() {
            let mut words = line.split_whitespace();
            match words.next() {
                Some("linux") => entry.kernel = words.next().map(str::to_owned),
                Some("initrd") => entry.initrd = words.next().map(str::to_owned),
                Some("options") => {
                    for w in words {
                        if w == "$kernelopts" {
                            entry
                                .args
                                .extend(kernelopts.split_whitespace().map(str::to_owned));
                        } else {
                            entry.args.push(w.to_owned());
                        }
                    }
                }
                _ => {}
            }
        }
        // BLS paths are relative to the filesystem holding /boot: the root's in an image.
        for path in [&mut entry.kernel, &mut entry.initrd].into_iter().flatten() {
            if !path.starts_with("/boot/") {
                *path = format!("/boot{path}");
            }
        }
        Ok(Some(entry))
    }

    /// PV-GRUB's default entry from GRUB Legacy's menu.lst.
    fn menu_lst_entry(&mut self) -> Result<Option<Entry>, BootCheckError> {
        for cfg in ["boot/grub/menu.lst", "boot/grub/grub.conf"] {
            let Some(text) = self.read(cfg)? else {
                continue;
            };
            self.report.config = Some(Path::new("/").join(cfg));
            let mut entry = Entry::default();
            for line in text.lines() {
                let mut words = line.split_whitespace();
                match words.next() {
                    Some("title") if entry.kernel.is_some() => break,
                    Some("kernel") => {
                        entry.kernel = words.next().map(str::to_owned);
                        entry.args = words.map(str::to_owned).collect();
                    }
                    Some("initrd") => entry.initrd = words.next().map(str::to_owned),
                    _ => {}
                }
            }
            return Ok(Some(entry));
        }
        self.error(
            "no-grub-config",
            "the image has no /boot/grub/menu.lst: PV-GRUB will find nothing to boot".into(),
            "write a GRUB Legacy menu.lst naming the kernel and initramfs (root=… \
             console=hvc0), or register the image as HVM",
        );
        Ok(None)
    }

    fn root_argument(&mut self, args: &[String]) {
        let Some(value) = args.iter().rev().find_map(|a| a.strip_prefix("root=")) else {
            self.error(
                "no-root-argument",
                "the kernel command line has no root=: the initramfs cannot tell which \
                 filesystem to mount"
                    .into(),
                "add root=UUID=<the root filesystem's UUID> to the kernel command line \
                 (GRUB_CMDLINE_LINUX in /etc/default/grub, then update-grub) and bundle again",
            );
            return;
        };
        if let Some(should) = bootrefs::fixed_root(value, &self.disk.root) {
            self.error(
                "root-unresolved",
                format!(
                    "the kernel mounts root={value}, which is not in the image (its root is {should})"
                ),
                &format!(
                    "bundle again with bundle-vol (it rewrites such references), or use \
                     root={should} in the source system's GRUB configuration"
                ),
            );
        } else if self.opts.platform == Platform::Nitro && is_xen_device_name(value) {
            let should = self
                .disk
                .root
                .uuid
                .as_ref()
                .map_or("UUID=<the root filesystem's UUID>".to_string(), |u| {
                    format!("UUID={u}")
                });
            self.error(
                "root-device-name",
                format!(
                    "the kernel mounts root={value}: on Nitro the root volume is                      /dev/nvme0n1p1, which answers to no Xen device name"
                ),
                &format!(
                    "use root={should} in the source system's GRUB configuration                      (GRUB_CMDLINE_LINUX or GRUB_DEVICE_UUID, then update-grub)"
                ),
            );
        } else if value.starts_with("/dev/")
            && !value.starts_with("/dev/disk/")
            && !value.starts_with("/dev/xvd")
            && !value.starts_with("/dev/sd")
        {
            self.problem(
                Severity::Warning,
                "root-device-name",
                format!(
                    "the kernel mounts root={value}: that name cannot be checked against the image"
                ),
                "prefer root=UUID=… in the source system's GRUB configuration",
            );
        }
    }

    fn console(&mut self, args: &[String]) {
        let want = match self.opts.virtualization {
            Virtualization::Hvm => "ttyS0",
            Virtualization::Paravirtual => "hvc0",
        };
        let has = args.iter().any(|a| {
            a.strip_prefix("console=")
                .is_some_and(|c| c.split(',').next() == Some(want))
        });
        if !has {
            self.error(
                "no-serial-console",
                format!(
                    "the kernel command line has no console={want}: get-console-output will \
                     show nothing of the boot"
                ),
                &format!(
                    "add console={want} to GRUB_CMDLINE_LINUX in /etc/default/grub, run \
                     update-grub (or grub2-mkconfig -o /boot/grub2/grub.cfg) and bundle again"
                ),
            );
        }
    }

    /// The version of the kernel `path` (`boot/vmlinuz-6.1.0-28-cloud-amd64`), or the only one
    /// under `/lib/modules`.
    fn kernel_version(&mut self, path: Option<&str>) -> Result<Option<String>, BootCheckError> {
        let from_name = path
            .and_then(|p| p.rsplit('/').next())
            .and_then(|n| {
                n.strip_prefix("vmlinuz-")
                    .or_else(|| n.strip_prefix("vmlinux-"))
            })
            .map(str::to_owned);
        if from_name.is_some() {
            return Ok(from_name);
        }
        let dir = Path::new("lib/modules");
        let versions = match self
            .root
            .open_dir(dir)
            .map_err(self.io_err("opening", "lib/modules"))?
        {
            Lookup::Dir(d) => list_names(&d).map_err(self.io_err("listing", "lib/modules"))?,
            _ => Vec::new(),
        };
        Ok(match versions.as_slice() {
            [only] => Some(String::from_utf8_lossy(only.to_bytes()).into_owned()),
            _ => None,
        })
    }

    fn drivers(
        &mut self,
        version: Option<&str>,
        initrd: Option<&str>,
    ) -> Result<(), BootCheckError> {
        let Some(version) = version else {
            self.problem(
                Severity::Warning,
                "drivers-unchecked",
                "the kernel's version could not be told (no vmlinuz-VERSION name, several \
                 /lib/modules directories): its Xen drivers were not checked"
                    .into(),
                "make sure the kernel has xen-blkfront built in or in its initramfs",
            );
            return Ok(());
        };
        let modules = format!("lib/modules/{version}");
        let builtin = self
            .read(&format!("{modules}/modules.builtin"))?
            .unwrap_or_default();
        let config = self
            .read(&format!("boot/config-{version}"))?
            .unwrap_or_default();
        let Some(order) = self.read(&format!("{modules}/modules.dep"))? else {
            // Without depmod's list (and nothing built in by the lists we have) the drivers
            // cannot be told apart from missing ones: a warning, never a false refusal.
            if !builtin.is_empty() || !config.is_empty() {
                self.problem(
                    Severity::Warning,
                    "drivers-unchecked",
                    format!("/{modules}/modules.dep is missing: the Xen drivers were not checked"),
                    "run depmod in the source system and bundle again",
                );
            } else {
                self.problem(
                    Severity::Warning,
                    "drivers-unchecked",
                    format!(
                        "the kernel {version} has no /{modules}/modules.dep, modules.builtin or \
                         /boot/config-{version}: its Xen drivers were not checked"
                    ),
                    "make sure the kernel has xen-blkfront built in or in its initramfs",
                );
            }
            return Ok(());
        };
        let is_builtin = |module: &str, option: &str| {
            builtin.lines().any(|l| ends_with_module(l, module))
                || config.lines().any(|l| l == format!("{option}=y"))
        };
        let is_module = |module: &str| {
            order.lines().any(|l| {
                l.split(':')
                    .next()
                    .is_some_and(|m| ends_with_module(m, module))
            })
        };
        let family_fix = self.initramfs_fix();

        // The root disk's driver: the initramfs must have it.
        let (disk_module, disk_option, disk_code) = match self.opts.platform {
            Platform::Xen => (
                "xen-blkfront",
                "CONFIG_XEN_BLKDEV_FRONTEND",
                "no-xen-blkfront",
            ),
            Platform::Nitro => ("nvme", "CONFIG_BLK_DEV_NVME", "no-nvme"),
        };
        let host = self.opts.platform.host();
        if !is_builtin(disk_module, disk_option) {
            if !is_module(disk_module) {
                self.error(
                    disk_code,
                    format!(
                        "the kernel {version} has no {disk_module} driver (neither built in nor \
                         a module): it cannot see its root disk on {host}"
                    ),
                    &format!(
                        "install a kernel with {disk_module} (e.g. Debian's \
                         linux-image-cloud-amd64, Amazon Linux's kernel) in the source system \
                         and bundle again"
                    ),
                );
            } else if let Some(initrd) = initrd.and_then(grub_path) {
                let file = self
                    .root
                    .open_file(Path::new(&initrd))
                    .map_err(self.io_err("opening", &initrd))?;
                match file.map(initramfs::list) {
                    Some(Ok(names)) if !names.iter().any(|n| ends_with_module(n, disk_module)) => {
                        self.error(
                            disk_code,
                            format!(
                                "the initramfs /{initrd} lacks the {disk_module} module (built \
                                 for the machine it was made on): the boot stops before the \
                                 root disk appears on {host}"
                            ),
                            &family_fix,
                        );
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => self.problem(
                        Severity::Warning,
                        "initrd-unreadable",
                        format!(
                            "/{initrd}: {}; whether it has {disk_module} was not checked",
                            crate::bundle::error_chain(&e)
                        ),
                        &family_fix,
                    ),
                    // Missing: already reported.
                    None => {}
                }
            } else {
                self.error(
                    disk_code,
                    format!(
                        "{disk_module} is a module of the kernel {version} and the default \
                         entry loads no initramfs to bring it"
                    ),
                    &family_fix,
                );
            }
        }
        // The network drivers load from the root filesystem once it is mounted.
        let mut nets = match self.opts.platform {
            Platform::Xen => vec![(
                "xen-netfront",
                "CONFIG_XEN_NETDEV_FRONTEND",
                "no-xen-netfront",
            )],
            Platform::Nitro => Vec::new(),
        };
        if self.opts.ena || self.opts.platform == Platform::Nitro {
            nets.push(("ena", "CONFIG_ENA_ETHERNET", "no-ena"));
        }
        if self.opts.sriov {
            nets.push(("ixgbevf", "CONFIG_IXGBEVF", "no-ixgbevf"));
        }
        for (module, option, code) in nets {
            if !is_builtin(module, option) && !is_module(module) {
                self.error(
                    code,
                    format!(
                        "the kernel {version} has no {module} driver: the instance will have no \
                         network"
                    ),
                    &format!(
                        "install a kernel (or driver package) with {module} in the source system \
                         and bundle again"
                    ),
                );
            }
        }
        Ok(())
    }

    /// How to put xen-blkfront into this image's initramfs.
    fn initramfs_fix(&self) -> String {
        let dracut = matches!(
            self.root.open_dir(Path::new("etc/dracut.conf.d")),
            Ok(Lookup::Dir(_))
        );
        let initramfs_tools = matches!(
            self.root.open_dir(Path::new("etc/initramfs-tools")),
            Ok(Lookup::Dir(_))
        );
        let (modules, conf) = match self.opts.platform {
            Platform::Xen => ("xen-blkfront xen-netfront", "xen"),
            Platform::Nitro => ("nvme ena", "nitro"),
        };
        let first = modules.split(' ').next().unwrap_or(modules);
        if initramfs_tools || !dracut {
            format!(
                "add {first} to /etc/initramfs-tools/modules and run update-initramfs -u in the \
                 source system, then bundle again"
            )
        } else {
            format!(
                "write add_drivers+=\" {modules} \" to /etc/dracut.conf.d/{conf}.conf and run \
                 dracut -f in the source system (dracut's host-only mode leaves out drivers the \
                 build machine does not use), then bundle again"
            )
        }
    }

    fn fstab(&mut self) -> Result<(), BootCheckError> {
        let Some(text) = self.read("etc/fstab")? else {
            self.problem(
                Severity::Warning,
                "no-fstab",
                "the image has no /etc/fstab: the root filesystem stays as the kernel mounted it \
                 (often read-only)"
                    .into(),
                "bundle with --generate-fstab",
            );
            return Ok(());
        };
        match fstab::Fstab::parse(&text) {
            Ok(table) => {
                if self.opts.platform == Platform::Nitro {
                    for e in &table.entries {
                        let optional = e.options.split(',').any(|o| o == "nofail" || o == "noauto");
                        if is_xen_device_name(&e.spec) && !optional {
                            self.error(
                                "fstab-device-name",
                                format!(
                                    "/etc/fstab line {} mounts {} on {}: on Nitro disks are \
                                     NVMe devices (/dev/nvme0n1p1, /dev/nvme1n1) and that \
                                     name does not exist, so the boot stops",
                                    e.line, e.spec, e.file
                                ),
                                "name the filesystem by UUID= or LABEL= in the source system's \
                                 /etc/fstab (or add nofail), or bundle with --generate-fstab",
                            );
                        }
                    }
                }
                for w in table.review(&self.disk.root) {
                    let severity = if w.breaks_boot {
                        Severity::Error
                    } else {
                        Severity::Warning
                    };
                    self.problem(
                        severity,
                        "fstab",
                        w.to_string(),
                        "make every entry name what the image has (UUID=, LABEL=) or add \
                         nofail; bundle-vol --generate-fstab writes one that does",
                    );
                }
            }
            Err(e) => self.error(
                "fstab",
                format!("/etc/fstab cannot be parsed: {e}"),
                "fix /etc/fstab in the source system, or bundle with --generate-fstab",
            ),
        }
        Ok(())
    }
}

/// Whether `name` is a Xen-era disk name (`/dev/xvda1`, `/dev/sda1`, `/dev/hda1`), which a
/// Nitro instance's NVMe devices do not answer to.
fn is_xen_device_name(name: &str) -> bool {
    ["/dev/xvd", "/dev/sd", "/dev/hd"]
        .iter()
        .any(|p| name.starts_with(p))
}

/// Whether `path` (`kernel/drivers/block/xen-blkfront.ko.zst`) is the module `name`.
fn ends_with_module(path: &str, name: &str) -> bool {
    let file = path.rsplit('/').next().unwrap_or(path);
    let stem = ["", ".xz", ".zst", ".gz"]
        .iter()
        .find_map(|c| file.strip_suffix(&format!(".ko{c}")));
    // Module names treat - and _ alike.
    stem.is_some_and(|s| s.replace('_', "-") == name.replace('_', "-"))
}

/// A GRUB file name as a path relative to the image root: `($root)/boot/vmlinuz` →
/// `boot/vmlinuz`; `None` when it depends on a variable GRUB fills in at boot.
fn grub_path(name: &str) -> Option<String> {
    let name = name.trim_matches(|c| c == '"' || c == '\'');
    let name = match name.strip_prefix('(') {
        Some(rest) => rest.split_once(')')?.1,
        None => name,
    };
    if name.contains('$') || !name.starts_with('/') {
        return None;
    }
    Some(name.trim_start_matches('/').to_owned())
}

/// The file a configuration made only of `configfile FILE` loads.
fn configfile_target(text: &str) -> Option<String> {
    let mut lines = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'));
    let first = lines.next()?;
    if lines.next().is_some() {
        return None;
    }
    first
        .strip_prefix("configfile ")
        .map(|t| t.trim().to_owned())
}

/// The default entry of a GRUB 2 configuration: the `set default` entry when it is a number,
/// else the first `menuentry` (submenus are entered: their first entry is what `0` means in
/// them); a configuration without menu entries may still boot a kernel at its top level.
fn default_menuentry(text: &str) -> Option<Entry> {
    let default: usize = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("set default="))
        .filter_map(|v| v.trim_matches(|c| c == '"' || c == '\'').parse().ok())
        .next_back()
        .unwrap_or(0);
    let mut entries: Vec<Entry> = Vec::new();
    let mut top = Entry::default();
    let mut depth_of_entry: Option<usize> = None;
    let mut depth = 0usize;
    for line in text.lines() {
        let line = line.trim();
        let first = line.split_whitespace().next().unwrap_or("");
        if first == "menuentry" && depth_of_entry.is_none() {
            depth_of_entry = Some(depth);
            entries.push(Entry::default());
        }
        let target = match depth_of_entry {
            Some(_) => entries.last_mut(),
            None => Some(&mut top),
        };
        if let Some(entry) = target {
            let mut words = line.split_whitespace();
            match words.next() {
                Some("linux" | "linux16" | "linuxefi" | "kernel") if entry.kernel.is_none() => {
                    entry.kernel = words.next().map(str::to_owned);
                    entry.args = words
                        .map(|w| w.trim_matches(|c| c == '"' || c == '\'').to_owned())
                        .collect();
                }
                Some("initrd" | "initrd16" | "initrdefi") if entry.initrd.is_none() => {
                    entry.initrd = words.next().map(str::to_owned);
                }
                _ => {}
            }
        }
        depth += line.matches('{').count();
        depth = depth.saturating_sub(line.matches('}').count());
        if depth_of_entry.is_some_and(|d| depth <= d) && line.contains('}') {
            depth_of_entry = None;
        }
    }
    let chosen = entries
        .into_iter()
        .filter(|e| e.kernel.is_some())
        .nth(default)
        .or_else(|| top.kernel.is_some().then_some(top))?;
    Some(chosen)
}

/// Orders file names with embedded version numbers as versions (`5.10` before `5.9` is wrong).
fn version_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    let split = |s: &str| -> Vec<Result<u64, String>> {
        let mut parts = Vec::new();
        let mut cur = String::new();
        let mut digits = false;
        for c in s.chars() {
            if c.is_ascii_digit() != digits && !cur.is_empty() {
                parts.push(if digits {
                    cur.parse().map_err(|_| cur.clone())
                } else {
                    Err(cur.clone())
                });
                cur.clear();
            }
            digits = c.is_ascii_digit();
            cur.push(c);
        }
        if !cur.is_empty() {
            parts.push(if digits {
                cur.parse().map_err(|_| cur.clone())
            } else {
                Err(cur)
            });
        }
        parts
    };
    split(a).cmp(&split(b))
}

#[cfg(test)]
mod tests;
