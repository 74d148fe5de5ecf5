//! `--generalize`: turns the copied image (never the source) into a template for new machines
//! by removing what identifies this one, so clones do not share SSH host keys, a machine ID or
//! cloud-init's idea of which instance they are (docs/reference-behaviour.md §14, pain 13).
//!
//! On the mounted image root it:
//! * removes the SSH host keys, `/etc/ssh/ssh_host_*` (keys, public keys and certificates).
//!   New ones are created at first boot by cloud-init (`ssh_deletekeys`/`ssh_genkeytypes`) or
//!   the distribution's key generation service (`sshd-keygen`, `ssh-keygen -A`); an image
//!   without either boots without a working sshd;
//! * empties `/etc/machine-id` (kept as an empty file: systemd then generates a new ID at
//!   boot, the documented state for images) and removes `/var/lib/dbus/machine-id` when it is
//!   a file of its own (Debian links it to `/etc/machine-id`; the link is kept);
//! * clears cloud-init's instance state: the `/var/lib/cloud/instance` link and the contents
//!   of `/var/lib/cloud/instances/`, `/var/lib/cloud/data/` and `/var/lib/cloud/sem/`, so every
//!   module runs again on the clone; unlike `cloud-init clean`, user scripts under
//!   `/var/lib/cloud/scripts/` and the `seed/` directory are kept;
//! * removes `/etc/udev/rules.d/70-persistent-net.rules` (interface names bound to this
//!   machine's MAC addresses: a clone would come up without network);
//! * removes the shell and tool histories ([`super::filter::HISTORY_FILES`]) of `/root`, of
//!   every directory in `/home` and of every home directory named in the image's
//!   `/etc/passwd`.
//!
//! Only regular files are removed (and cloud-init's state, whatever it is): a symlink such as
//! `.bash_history -> /dev/null` or `70-persistent-net.rules -> /dev/null` is a deliberate
//! setting and is left, and reported. Every path is resolved inside the image
//! (`image::root::ImageRoot`), so a symlink in the image can never make this touch a host
//! file, and the host's own root directory is refused as an image root.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::fmt;
use std::fs::File;
use std::io::{self, Read, Write as _};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{OFlag, openat};
use nix::sys::stat::mkdirat;
use nix::sys::stat::{FileStat, Mode, SFlag, fstat};
use nix::unistd::{UnlinkatFlags, ftruncate, symlinkat, unlinkat};

use super::filter::HISTORY_FILES;
use super::root::{ImageRoot, Lookup, image_path, kind, list_names, lstat_at, remove_tree_at};

/// Directories of cloud-init's state whose contents are removed.
const CLOUD_STATE_DIRS: &[&str] = &[
    "var/lib/cloud/instances",
    "var/lib/cloud/data",
    "var/lib/cloud/sem",
];

/// The unit `--generalize` installs so that SSH host keys are made at first boot.
pub const SSH_KEYGEN_UNIT: &str = "amibundle-ssh-keygen.service";

const SSH_KEYGEN_UNIT_TEXT: &str = "\
# Installed by amibundle --generalize, which removed this system's SSH host keys: makes new
# ones at first boot, before the SSH server starts. Does nothing once keys exist.
[Unit]
Description=Create SSH host keys (installed by amibundle --generalize)
ConditionPathExistsGlob=!/etc/ssh/ssh_host_*_key
Before=ssh.service sshd.service
After=local-fs.target

[Service]
Type=oneshot
ExecStart=/usr/bin/ssh-keygen -A

[Install]
WantedBy=multi-user.target
";

/// The largest `/etc/passwd` read for home directories; real ones are a few KiB.
const PASSWD_LIMIT_BYTES: u64 = 4 << 20;

/// What happened to one path in the image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Done {
    /// A file or symlink was removed.
    Removed,
    /// A directory (or what stood in its place) was removed with this many entries, itself
    /// included.
    RemovedTree {
        /// Entries removed.
        entries: u64,
    },
    /// The file was truncated to zero length.
    Emptied,
    /// The file (or symlink) was created.
    Created,
    /// Left as it is, with why.
    Skipped(String),
}

/// One thing `--generalize` did (or deliberately did not do) in the image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Action {
    /// The path in the image (`/etc/machine-id`).
    pub path: PathBuf,
    /// What was done.
    pub done: Done,
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let path = self.path.display();
        match &self.done {
            Done::Removed => write!(f, "removed {path}"),
            Done::RemovedTree { entries } => write!(f, "removed {path} ({entries} entries)"),
            Done::Emptied => write!(f, "emptied {path}"),
            Done::Created => write!(f, "created {path}"),
            Done::Skipped(why) => write!(f, "left {path} as it is: {why}"),
        }
    }
}

/// Everything `--generalize` did, in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GeneralizeReport {
    /// The actions, step by step.
    pub actions: Vec<Action>,
}

/// A failed `--generalize`.
#[derive(Debug, thiserror::Error)]
pub enum GeneralizeError {
    /// The image root could not be opened.
    #[error("opening the image root {path}")]
    OpenRoot {
        /// The image root.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The image root is the host's own root directory: generalizing it would remove this
    /// machine's keys.
    #[error("refusing to generalize {path}: it is this machine's root directory, not an image")]
    HostRoot {
        /// The path given.
        path: PathBuf,
    },
    /// A step failed.
    #[error("{what} {path} in the image at {image}")]
    Step {
        /// What was being done (`removing`, `emptying`, `reading` …).
        what: &'static str,
        /// The path in the image.
        path: PathBuf,
        /// The image root.
        image: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

/// Generalizes the image mounted (or extracted) at `image_root`; see the module docs.
///
/// # Errors
///
/// [`GeneralizeError::HostRoot`] if `image_root` is `/`; [`GeneralizeError::OpenRoot`];
/// [`GeneralizeError::Step`] naming the path on the first I/O failure (missing paths are not
/// failures: there is nothing to do).
pub fn generalize(image_root: &Path) -> Result<GeneralizeReport, GeneralizeError> {
    let root = ImageRoot::open(image_root).map_err(|source| GeneralizeError::OpenRoot {
        path: image_root.to_owned(),
        source,
    })?;
    run(&root)
}

fn run(root: &ImageRoot) -> Result<GeneralizeReport, GeneralizeError> {
    let host_root = root
        .is_host_root()
        .map_err(|source| GeneralizeError::OpenRoot {
            path: root.path().to_owned(),
            source,
        })?;
    if host_root {
        return Err(GeneralizeError::HostRoot {
            path: root.path().to_owned(),
        });
    }
    let mut g = Generalizer {
        root,
        actions: Vec::new(),
    };
    g.ssh_host_keys()?;
    g.ssh_keygen_unit()?;
    g.machine_id()?;
    g.cloud_init()?;
    g.remove_file(Path::new("etc/udev/rules.d"), "70-persistent-net.rules")?;
    g.histories()?;
    Ok(GeneralizeReport { actions: g.actions })
}

struct Generalizer<'a> {
    root: &'a ImageRoot,
    actions: Vec<Action>,
}

impl Generalizer<'_> {
    fn step_err(
        &self,
        what: &'static str,
        rel: &Path,
    ) -> impl FnOnce(io::Error) -> GeneralizeError + use<> {
        let (path, image) = (image_path(rel), self.root.path().to_owned());
        move |source| GeneralizeError::Step {
            what,
            path,
            image,
            source,
        }
    }

    fn act(&mut self, rel: &Path, done: Done) {
        self.actions.push(Action {
            path: image_path(rel),
            done,
        });
    }

    /// Opens a directory of the image; `None` when there is nothing to do there (missing), or
    /// when it cannot be entered (reported).
    fn dir(&mut self, rel: &Path) -> Result<Option<File>, GeneralizeError> {
        match self
            .root
            .open_dir(rel)
            .map_err(self.step_err("opening", rel))?
        {
            Lookup::Dir(dir) => Ok(Some(dir)),
            Lookup::Missing => Ok(None),
            Lookup::Blocked(why) => {
                // Several steps look into the same directory (`/etc`): say it once.
                let path = image_path(rel);
                if !self.actions.iter().any(|a| a.path == path) {
                    self.act(rel, Done::Skipped(why));
                }
                Ok(None)
            }
        }
    }

    fn lstat(
        &self,
        dir: &File,
        rel: &Path,
        name: &OsStr,
    ) -> Result<Option<FileStat>, GeneralizeError> {
        lstat_at(dir, name).map_err(self.step_err("examining", rel))
    }

    /// Removes `name` in the directory `dir_rel` if it is a regular file; reports anything
    /// else that stands there.
    fn remove_file(&mut self, dir_rel: &Path, name: &str) -> Result<(), GeneralizeError> {
        let Some(dir) = self.dir(dir_rel)? else {
            return Ok(());
        };
        self.remove_file_in(&dir, dir_rel, OsStr::new(name))
    }

    fn remove_file_in(
        &mut self,
        dir: &File,
        dir_rel: &Path,
        name: &OsStr,
    ) -> Result<(), GeneralizeError> {
        let rel = dir_rel.join(name);
        let Some(st) = self.lstat(dir, &rel, name)? else {
            return Ok(());
        };
        match kind(&st) {
            SFlag::S_IFREG => match unlinkat(dir, name, UnlinkatFlags::NoRemoveDir) {
                Ok(()) => self.act(&rel, Done::Removed),
                Err(Errno::ENOENT) => {}
                Err(e) => return Err(self.step_err("removing", &rel)(e.into())),
            },
            SFlag::S_IFLNK => self.act(&rel, Done::Skipped("a symlink, not followed".into())),
            _ => self.act(&rel, Done::Skipped("not a regular file".into())),
        }
        Ok(())
    }

    fn ssh_host_keys(&mut self) -> Result<(), GeneralizeError> {
        let dir_rel = Path::new("etc/ssh");
        let Some(dir) = self.dir(dir_rel)? else {
            return Ok(());
        };
        let names = list_names(&dir).map_err(self.step_err("listing", dir_rel))?;
        for name in names {
            if name.to_bytes().starts_with(b"ssh_host_") {
                self.remove_file_in(&dir, dir_rel, OsStr::from_bytes(name.to_bytes()))?;
            }
        }
        Ok(())
    }

    /// With the host keys gone, something must make new ones at first boot, or sshd does not
    /// start and the clone cannot be reached. cloud-init and Fedora's `sshd-keygen` units do;
    /// Debian's and Ubuntu's openssh-server without cloud-init do not. So a systemd image with
    /// `ssh-keygen` gets a oneshot unit that runs `ssh-keygen -A` before sshd when no host key
    /// exists (harmless where something else makes them too: it then finds keys and does
    /// nothing).
    fn ssh_keygen_unit(&mut self) -> Result<(), GeneralizeError> {
        let removed_keys = self.actions.iter().any(|a| {
            a.done == Done::Removed && a.path.starts_with("/etc/ssh") && {
                let name = a.path.file_name().unwrap_or_default().as_bytes();
                name.starts_with(b"ssh_host_") && name.ends_with(b"_key")
            }
        });
        if !removed_keys {
            return Ok(());
        }
        let keygen = Path::new("usr/bin");
        let has_keygen = match self.dir(keygen)? {
            Some(dir) => self
                .lstat(&dir, &keygen.join("ssh-keygen"), OsStr::new("ssh-keygen"))?
                .is_some(),
            None => false,
        };
        let units = Path::new("etc/systemd/system");
        let Some(units_dir) = self.dir(units)?.filter(|_| has_keygen) else {
            self.act(
                &units.join(SSH_KEYGEN_UNIT),
                Done::Skipped(
                    "not a systemd image with /usr/bin/ssh-keygen: make sure the image creates                      SSH host keys at first boot (cloud-init or ssh-keygen -A)"
                        .into(),
                ),
            );
            return Ok(());
        };
        let rel = units.join(SSH_KEYGEN_UNIT);
        if self
            .lstat(&units_dir, &rel, OsStr::new(SSH_KEYGEN_UNIT))?
            .is_some()
        {
            return Ok(());
        }
        let file = openat(
            &units_dir,
            SSH_KEYGEN_UNIT,
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o644),
        )
        .map(File::from)
        .map_err(|e| self.step_err("creating", &rel)(e.into()))?;
        (&file)
            .write_all(SSH_KEYGEN_UNIT_TEXT.as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(self.step_err("writing", &rel))?;
        self.act(&rel, Done::Created);

        let wants = units.join("multi-user.target.wants");
        match mkdirat(
            &units_dir,
            "multi-user.target.wants",
            Mode::from_bits_truncate(0o755),
        ) {
            Ok(()) | Err(Errno::EEXIST) => {}
            Err(e) => return Err(self.step_err("creating", &wants)(e.into())),
        }
        let Some(wants_dir) = self.dir(&wants)? else {
            return Ok(());
        };
        let link = wants.join(SSH_KEYGEN_UNIT);
        match symlinkat(
            format!("/etc/systemd/system/{SSH_KEYGEN_UNIT}").as_str(),
            &wants_dir,
            SSH_KEYGEN_UNIT,
        ) {
            Ok(()) => self.act(&link, Done::Created),
            Err(Errno::EEXIST) => {}
            Err(e) => return Err(self.step_err("creating", &link)(e.into())),
        }
        Ok(())
    }

    fn machine_id(&mut self) -> Result<(), GeneralizeError> {
        let etc = Path::new("etc");
        if let Some(dir) = self.dir(etc)? {
            let rel = etc.join("machine-id");
            match self.lstat(&dir, &rel, OsStr::new("machine-id"))? {
                None => {}
                Some(st) if kind(&st) != SFlag::S_IFREG => {
                    self.act(&rel, Done::Skipped("not a regular file".into()));
                }
                Some(st) if st.st_size == 0 => {}
                Some(_) => {
                    // O_NONBLOCK and the fstat: should the name have become something else
                    // since the lstat, nothing but a regular file is ever truncated.
                    let flags =
                        OFlag::O_WRONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC;
                    let file = openat(&dir, "machine-id", flags, Mode::empty())
                        .map(File::from)
                        .map_err(|e| self.step_err("emptying", &rel)(e.into()))?;
                    let st = fstat(&file).map_err(|e| self.step_err("emptying", &rel)(e.into()))?;
                    if kind(&st) != SFlag::S_IFREG {
                        self.act(&rel, Done::Skipped("not a regular file".into()));
                    } else {
                        ftruncate(&file, 0)
                            .map_err(|e| self.step_err("emptying", &rel)(e.into()))?;
                        self.act(&rel, Done::Emptied);
                    }
                }
            }
        }
        self.remove_file(Path::new("var/lib/dbus"), "machine-id")
    }

    fn cloud_init(&mut self) -> Result<(), GeneralizeError> {
        let cloud = Path::new("var/lib/cloud");
        if let Some(dir) = self.dir(cloud)? {
            // The current instance's link (a directory on odd systems): removed as itself.
            let rel = cloud.join("instance");
            let removed = remove_tree_at(&dir, OsStr::new("instance"))
                .map_err(self.step_err("removing", &rel))?;
            self.record_removal(&rel, removed);
        }
        for state in CLOUD_STATE_DIRS {
            let dir_rel = Path::new(state);
            let Some(dir) = self.dir(dir_rel)? else {
                continue;
            };
            let names = list_names(&dir).map_err(self.step_err("listing", dir_rel))?;
            for name in names {
                let name = OsStr::from_bytes(name.to_bytes());
                let rel = dir_rel.join(name);
                let removed =
                    remove_tree_at(&dir, name).map_err(self.step_err("removing", &rel))?;
                self.record_removal(&rel, removed);
            }
        }
        Ok(())
    }

    fn record_removal(&mut self, rel: &Path, removed: u64) {
        match removed {
            0 => {}
            1 => self.act(rel, Done::Removed),
            entries => self.act(rel, Done::RemovedTree { entries }),
        }
    }

    fn histories(&mut self) -> Result<(), GeneralizeError> {
        let mut homes = vec![PathBuf::from("root")];
        let home = Path::new("home");
        if let Some(dir) = self.dir(home)? {
            for name in list_names(&dir).map_err(self.step_err("listing", home))? {
                let name = OsStr::from_bytes(name.to_bytes());
                // Files in /home are not homes; directories and symlinks (to a home elsewhere
                // in the image) are.
                let st = self.lstat(&dir, &home.join(name), name)?;
                if st.is_some_and(|st| matches!(kind(&st), SFlag::S_IFDIR | SFlag::S_IFLNK)) {
                    homes.push(home.join(name));
                }
            }
        }
        homes.extend(self.passwd_homes()?);

        let mut seen = HashSet::new();
        for home in homes {
            let Some(dir) = self.dir(&home)? else {
                continue;
            };
            let st = fstat(&dir).map_err(|e| self.step_err("examining", &home)(e.into()))?;
            if !seen.insert((st.st_dev, st.st_ino)) {
                continue;
            }
            for history in HISTORY_FILES {
                let path = home.join(history);
                let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
                    continue;
                };
                if parent == home {
                    self.remove_file_in(&dir, &home, name)?;
                } else if let Some(sub) = self.dir(parent)? {
                    self.remove_file_in(&sub, parent, name)?;
                }
            }
        }
        Ok(())
    }

    /// Home directories named in the image's `/etc/passwd` (the sixth field), as paths in the
    /// image; none if it is missing or not a regular file.
    fn passwd_homes(&mut self) -> Result<Vec<PathBuf>, GeneralizeError> {
        let etc = Path::new("etc");
        let rel = etc.join("passwd");
        let Some(dir) = self.dir(etc)? else {
            return Ok(Vec::new());
        };
        let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC;
        let file = match openat(&dir, "passwd", flags, Mode::empty()) {
            Ok(fd) => File::from(fd),
            Err(Errno::ENOENT | Errno::ELOOP) => return Ok(Vec::new()),
            Err(e) => return Err(self.step_err("reading", &rel)(e.into())),
        };
        let st = fstat(&file).map_err(|e| self.step_err("reading", &rel)(e.into()))?;
        if kind(&st) != SFlag::S_IFREG {
            return Ok(Vec::new());
        }
        let mut text = Vec::new();
        file.take(PASSWD_LIMIT_BYTES)
            .read_to_end(&mut text)
            .map_err(self.step_err("reading", &rel))?;
        Ok(homes_in_passwd(&text))
    }
}

/// The absolute home directories of a passwd file, in order, without duplicates.
fn homes_in_passwd(text: &[u8]) -> Vec<PathBuf> {
    let mut homes = Vec::new();
    for line in text.split(|&b| b == b'\n') {
        if line.starts_with(b"#") {
            continue;
        }
        let Some(home) = line.split(|&b| b == b':').nth(5) else {
            continue;
        };
        if home.starts_with(b"/") && !home.contains(&0) {
            let home = PathBuf::from(OsStr::from_bytes(home));
            if !homes.contains(&home) {
                homes.push(home);
            }
        }
    }
    homes
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::root::Resolve;
    use std::os::unix::fs::symlink;

    fn write(root: &Path, rel: &str, content: &str) {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, content).unwrap();
    }

    /// An image with everything --generalize acts on.
    fn image() -> tempfile::TempDir {
        let tmp = tempfile::tempdir().unwrap();
        let r = tmp.path();
        for key in [
            "ssh_host_rsa_key",
            "ssh_host_rsa_key.pub",
            "ssh_host_ed25519_key",
        ] {
            write(r, &format!("etc/ssh/{key}"), "key");
        }
        write(r, "etc/ssh/sshd_config", "PermitRootLogin no\n");
        write(r, "usr/bin/ssh-keygen", "#!/bin/sh\n");
        std::fs::create_dir_all(r.join("etc/systemd/system")).unwrap();
        write(r, "etc/machine-id", "0123456789abcdef0123456789abcdef\n");
        write(
            r,
            "var/lib/dbus/machine-id",
            "0123456789abcdef0123456789abcdef\n",
        );
        write(r, "var/lib/cloud/instances/i-0abc/obj.pkl", "x");
        write(r, "var/lib/cloud/instances/i-0abc/sem/config_ssh", "x");
        symlink(
            "/var/lib/cloud/instances/i-0abc",
            r.join("var/lib/cloud/instance"),
        )
        .unwrap();
        write(r, "var/lib/cloud/data/instance-id", "i-0abc\n");
        write(r, "var/lib/cloud/sem/config_scripts_per_once.once", "x");
        write(r, "var/lib/cloud/scripts/per-boot/hello.sh", "echo hi\n");
        write(r, "var/lib/cloud/seed/nocloud/user-data", "#cloud-config\n");
        write(
            r,
            "etc/udev/rules.d/70-persistent-net.rules",
            "SUBSYSTEM==\"net\"\n",
        );
        write(r, "etc/udev/rules.d/99-local.rules", "# mine\n");
        write(r, "root/.bash_history", "secret\n");
        write(r, "home/alice/.zsh_history", "secret\n");
        write(r, "home/alice/.local/share/fish/fish_history", "secret\n");
        write(r, "home/alice/.bashrc", "alias ll='ls -l'\n");
        write(r, "var/lib/postgresql/.psql_history", "secret\n");
        write(
            r,
            "etc/passwd",
            "root:x:0:0:root:/root:/bin/bash\n\
             postgres:x:110:118::/var/lib/postgresql:/bin/bash\n\
             nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n\
             alice:x:1000:1000::/home/alice:/bin/zsh\n",
        );
        tmp
    }

    fn lines(report: &GeneralizeReport) -> Vec<String> {
        report.actions.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn removes_machine_identity_and_keeps_the_rest() {
        let tmp = image();
        let r = tmp.path();
        let report = generalize(r).unwrap();
        assert_eq!(
            lines(&report),
            [
                "removed /etc/ssh/ssh_host_ed25519_key",
                "removed /etc/ssh/ssh_host_rsa_key",
                "removed /etc/ssh/ssh_host_rsa_key.pub",
                "created /etc/systemd/system/amibundle-ssh-keygen.service",
                "created /etc/systemd/system/multi-user.target.wants/amibundle-ssh-keygen.service",
                "emptied /etc/machine-id",
                "removed /var/lib/dbus/machine-id",
                "removed /var/lib/cloud/instance",
                "removed /var/lib/cloud/instances/i-0abc (4 entries)",
                "removed /var/lib/cloud/data/instance-id",
                "removed /var/lib/cloud/sem/config_scripts_per_once.once",
                "removed /etc/udev/rules.d/70-persistent-net.rules",
                "removed /root/.bash_history",
                "removed /home/alice/.zsh_history",
                "removed /home/alice/.local/share/fish/fish_history",
                "removed /var/lib/postgresql/.psql_history",
            ]
        );
        assert_eq!(std::fs::read(r.join("etc/machine-id")).unwrap(), b"");
        let unit =
            std::fs::read_to_string(r.join("etc/systemd/system").join(SSH_KEYGEN_UNIT)).unwrap();
        assert!(unit.contains("ExecStart=/usr/bin/ssh-keygen -A"), "{unit}");
        assert!(unit.contains("ConditionPathExistsGlob=!/etc/ssh/ssh_host_*_key"));
        assert!(unit.contains("Before=ssh.service sshd.service"));
        assert_eq!(
            std::fs::read_link(
                r.join("etc/systemd/system/multi-user.target.wants")
                    .join(SSH_KEYGEN_UNIT)
            )
            .unwrap(),
            Path::new("/etc/systemd/system").join(SSH_KEYGEN_UNIT)
        );
        for kept in [
            "etc/ssh/sshd_config",
            "etc/udev/rules.d/99-local.rules",
            "home/alice/.bashrc",
            "var/lib/cloud/scripts/per-boot/hello.sh",
            "var/lib/cloud/seed/nocloud/user-data",
            "etc/passwd",
        ] {
            assert!(r.join(kept).is_file(), "{kept} must be kept");
        }
        for dir in [
            "var/lib/cloud/instances",
            "var/lib/cloud/data",
            "var/lib/cloud/sem",
        ] {
            assert_eq!(std::fs::read_dir(r.join(dir)).unwrap().count(), 0, "{dir}");
        }
        // A second run has nothing left to do.
        assert_eq!(generalize(r).unwrap().actions, []);
    }

    #[test]
    fn without_systemd_the_missing_key_generation_is_reported() {
        let tmp = tempfile::tempdir().unwrap();
        let r = tmp.path();
        write(r, "etc/ssh/ssh_host_ed25519_key", "key");
        let report = generalize(r).unwrap();
        let lines = lines(&report);
        assert!(
            lines.iter().any(|l| l.starts_with(
                "left /etc/systemd/system/amibundle-ssh-keygen.service as it is: not a systemd image"
            )),
            "{lines:?}"
        );
        assert!(!r.join("etc/systemd").exists());
    }

    /// A "host" directory next to the image, reachable only through symlinks planted in the
    /// image; nothing in it may change.
    fn host_with_secrets(tmp: &Path) -> PathBuf {
        let host = tmp.join("host");
        write(&host, "etc/ssh/ssh_host_rsa_key", "host key");
        write(&host, "etc/machine-id", "host machine id\n");
        write(&host, "home/alice/.bash_history", "host history\n");
        write(&host, "cloud/keep", "host cloud state\n");
        write(&host, "bash_history", "host history\n");
        host
    }

    fn assert_host_untouched(host: &Path) {
        for (rel, content) in [
            ("etc/ssh/ssh_host_rsa_key", "host key"),
            ("etc/machine-id", "host machine id\n"),
            ("home/alice/.bash_history", "host history\n"),
            ("cloud/keep", "host cloud state\n"),
            ("bash_history", "host history\n"),
        ] {
            assert_eq!(
                std::fs::read_to_string(host.join(rel)).unwrap(),
                content,
                "host file {rel} changed"
            );
        }
    }

    fn plant_escapes(image: &Path, host: &Path) {
        std::fs::create_dir_all(image.join("var/lib/dbus")).unwrap();
        std::fs::create_dir_all(image.join("home")).unwrap();
        std::fs::create_dir_all(image.join("root")).unwrap();
        std::fs::create_dir_all(image.join("var/lib/cloud/instances")).unwrap();
        // Directories of the image that are symlinks to host directories by their host path.
        symlink(host.join("etc"), image.join("etc")).unwrap();
        symlink(host.join("home/alice"), image.join("home/alice")).unwrap();
        // Files of the image that are symlinks to host files.
        symlink(
            host.join("etc/machine-id"),
            image.join("var/lib/dbus/machine-id"),
        )
        .unwrap();
        symlink(host.join("bash_history"), image.join("root/.bash_history")).unwrap();
        // cloud-init's instance link and an instance that point at host directories.
        symlink(host.join("cloud"), image.join("var/lib/cloud/instance")).unwrap();
        symlink(
            host.join("cloud"),
            image.join("var/lib/cloud/instances/i-0abc"),
        )
        .unwrap();
    }

    #[test]
    fn symlinks_in_the_image_never_reach_the_host() {
        let tmp = tempfile::tempdir().unwrap();
        let host = host_with_secrets(tmp.path());
        let image = tmp.path().join("image");
        plant_escapes(&image, &host);
        let report = generalize(&image).unwrap();
        assert_host_untouched(&host);
        // The symlinks themselves: cloud-init's are removed (as links), the others kept.
        assert_eq!(
            lines(&report),
            [
                "left /var/lib/dbus/machine-id as it is: a symlink, not followed",
                "removed /var/lib/cloud/instance",
                "removed /var/lib/cloud/instances/i-0abc",
                "left /root/.bash_history as it is: a symlink, not followed",
            ]
        );
        assert!(image.join("root/.bash_history").is_symlink());
    }

    #[test]
    fn symlinks_in_the_image_never_reach_the_host_without_openat2() {
        let tmp = tempfile::tempdir().unwrap();
        let host = host_with_secrets(tmp.path());
        let image = tmp.path().join("image");
        plant_escapes(&image, &host);
        let root = ImageRoot::open_with(&image, Resolve::NoSymlinks).unwrap();
        let report = run(&root).unwrap();
        assert_host_untouched(&host);
        let lines = lines(&report);
        // Symlinked directories are reported, not entered.
        assert!(
            lines.contains(&"left /etc/ssh as it is: not a directory, or a symlink (not followed: this kernel has no openat2)".to_string()),
            "{lines:#?}"
        );
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with("left /home/alice as it is")),
            "{lines:#?}"
        );
    }

    #[test]
    fn in_image_symlinks_are_followed_inside_the_image() {
        // ostree-style /home -> var/home: the histories there are cleared.
        let tmp = tempfile::tempdir().unwrap();
        let r = tmp.path();
        write(r, "var/home/bob/.bash_history", "secret\n");
        symlink("/var/home", r.join("home")).unwrap();
        write(r, "etc/passwd", "bob:x:1000:1000::/home/bob:/bin/bash\n");
        let report = generalize(r).unwrap();
        assert_eq!(lines(&report), ["removed /home/bob/.bash_history"]);
        assert!(!r.join("var/home/bob/.bash_history").exists());
    }

    #[test]
    fn odd_entries_are_reported_not_touched() {
        let tmp = tempfile::tempdir().unwrap();
        let r = tmp.path();
        std::fs::create_dir_all(r.join("etc/ssh/ssh_host_keys.d")).unwrap();
        std::fs::create_dir_all(r.join("etc/udev/rules.d")).unwrap();
        symlink(
            "/dev/null",
            r.join("etc/udev/rules.d/70-persistent-net.rules"),
        )
        .unwrap();
        std::fs::write(r.join("etc/machine-id"), "").unwrap();
        let report = generalize(r).unwrap();
        assert_eq!(
            lines(&report),
            [
                "left /etc/ssh/ssh_host_keys.d as it is: not a regular file",
                "left /etc/udev/rules.d/70-persistent-net.rules as it is: a symlink, not followed",
            ]
        );
        assert!(r.join("etc/ssh/ssh_host_keys.d").is_dir());
    }

    #[test]
    fn the_host_root_is_refused() {
        let err = generalize(Path::new("/")).unwrap_err();
        assert!(matches!(err, GeneralizeError::HostRoot { .. }), "{err:?}");
    }

    #[test]
    fn passwd_homes() {
        let text = b"root:x:0:0:root:/root:/bin/bash\n# comment:x:::::/c\nbad line\n\
                     a:x:1:1::/home/a:/bin/sh\nb:x:2:2::relative:/bin/sh\nc:x:3:3::/root:/bin/sh\n";
        assert_eq!(
            homes_in_passwd(text),
            [PathBuf::from("/root"), PathBuf::from("/home/a")]
        );
    }
}
