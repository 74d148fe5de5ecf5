//! The sensitive-file filter of `bundle-vol`: which files of the source are not copied into
//! the image because they are secrets or this machine's private state, and the report listing
//! every one of them with its reason (the filter is never silent).
//!
//! The classic tool filtered by name alone (`*.pem`, `*.gpg`, `*id_rsa*` …,
//! docs/reference-behaviour.md §2.4), which removed CA bundles and package keyrings while
//! keeping `~/.aws/credentials` and most shell histories. This filter is path-aware and looks
//! inside files: a name that can hold either a secret or public data is only filtered after
//! reading it, and a private key is found under any name. docs/security.md lists every rule.
//!
//! Filtered (see [`classify`] and [`Reason`]):
//! * Private keys, by content, under any name ([`content::is_key_file`]: PEM, OpenSSH, PuTTY,
//!   DER PKCS#1/PKCS#8/SEC 1, PKCS#12, Java keystores with a key), in every file of at most
//!   1 MiB outside the exempt places ([`content_exempt`](rules::content_exempt):
//!   package-managed `/usr`, `/etc/ssh` whose host keys are the machine's identity, container
//!   and package stores). Files whose name marks them (`*.pem`, `*.key`, any file in `.ssh`,
//!   `id_rsa*` …) are searched more widely: a key after a certificate chain counts.
//! * SSH private keys (reason `ssh-private-key`): such keys in a `.ssh` directory or named
//!   `id_rsa*`, `id_dsa*`, `id_ecdsa*`, `id_ed25519*`, `id_xmss*`.
//! * Keystores: `*.p12`, `*.pfx` and `*.priv` by name, `*.jks`, `*.jceks`, `*.keystore` unless
//!   they hold only trusted certificates (a truststore stays).
//! * AWS credentials: `.aws/credentials`, `.aws/config` when it holds secret keys or session
//!   tokens, and the cached credentials and SSO tokens in `.aws/cli/cache/`, `.aws/sso/cache/`.
//! * Other credentials ([`CREDENTIAL_FILES`]): `.netrc`, `.pgpass`, `.git-credentials`,
//!   `.docker/config.json`, `.kube/config`, the gcloud and Azure CLI token stores, and more;
//!   `.my.cnf`, `.npmrc`, `.pypirc`, `.s3cfg`, `.boto` when they hold a password or token.
//! * cloud-init user data: `user-data.txt*`, `vendor-data*.txt*`, the `scripts/` directory and
//!   `obj.pkl` (which keeps a copy) of every instance in `/var/lib/cloud/instances/`, and the
//!   NoCloud seeds' `user-data`.
//! * GnuPG private keys: `private-keys-v1.d/` directories and `secring.gpg` files (public
//!   keyrings such as apt's `*.gpg` are kept).
//! * Shell and tool histories ([`HISTORY_FILES`]), in any directory.
//! * amibundle's own identity: `.config/amibundle/identity/` in any home.
//! * Backups of any of the above: the same name with `~`, `.bak`, `.old`, `.orig`, `.save`,
//!   `.backup` or `.bkp` appended is judged like the name itself.
//! * From the classic filter, what still makes sense: editor swap, autosave and lock files
//!   (`.*.swp` … `.*.swa`, `#*#`, `.#*`), which hold unsaved copies of files being edited
//!   (possibly secrets) and are stale on a new machine; and the udev
//!   `/etc/udev/rules.d/70-persistent-net.rules`, which binds interface names to this
//!   machine's MAC addresses and leaves a clone without network (docs/reference-behaviour.md
//!   §14, pain 10).
//! * The files the run itself was given ([`FilterOptions::tool_inputs`]: signing key,
//!   certificate, credential files), always, even with `--no-filter` and `--include`.
//!
//! Kept, deliberately: CA bundles, certificates, public keys and public keyrings (the classic
//! `*.pem`/`*.gpg` rules took them), `authorized_keys` (removing it locked users out of the
//! clone), `*~` backups of files that are not secrets. SSH host keys, `/etc/machine-id` and
//! cloud-init's other state are this machine's identity, which a backup must keep;
//! `--generalize` removes them (see `image::generalize`). Symlinks are never filtered (a symlink
//! holds no secret, only a name; `~/.bash_history -> /dev/null` stays as the user set it). The
//! classic excludes of `/dev`, `/proc`, `/sys`, `/media`, `/mnt` are not this module's
//! business: the copy turns mount points into empty directories.
//!
//! The user's `--include` overrides the filter for a path (and everything below it); such
//! paths are listed in [`FilterReport::kept`].
//!
//! Cost: the scan reads directory listings (the entry type comes from `readdir`), stays on the
//! source's filesystem like the copy, never follows a symlink, and opens the regular files the
//! content rules apply to, reading at most 4 KiB of each unless it starts like a key
//! (counted in [`FilterReport::contents_checked`]).
//!
//! The parts: `rules` (what a path alone says: [`classify`]), `content` (what is inside a
//! file: key formats, settings), `scan` (the walk over the source that applies both:
//! [`scan`](fn@scan)). This module holds the reasons, the options, the report and the errors.

mod content;
mod rules;
mod scan;

use std::fmt;
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

pub use rules::{HISTORY_FILES, classify};
pub use scan::scan;

/// Why a path is filtered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    /// An SSH private key.
    SshPrivateKey,
    /// AWS credentials or cached temporary credentials.
    AwsCredentials,
    /// Credentials of another service, registry or cloud CLI.
    Credentials,
    /// A keystore (PKCS#12, Java) holding keys.
    KeyStore,
    /// cloud-init user data (often passwords and tokens).
    CloudInitUserData,
    /// GnuPG private keys.
    GnupgPrivateKeys,
    /// A shell or tool history.
    ShellHistory,
    /// amibundle's own identity (key and certificate).
    AmibundleIdentity,
    /// A file holding a private key.
    PrivateKeyFile,
    /// An editor swap, autosave or lock file.
    EditorTemporary,
    /// udev persistent network interface rules.
    PersistentNetRules,
    /// A file this run was given (signing key, certificate, credentials).
    ToolInput,
}

impl Reason {
    /// A stable kebab-case tag (first column of the report file).
    pub fn tag(self) -> &'static str {
        match self {
            Self::SshPrivateKey => "ssh-private-key",
            Self::AwsCredentials => "aws-credentials",
            Self::Credentials => "credentials",
            Self::KeyStore => "keystore",
            Self::CloudInitUserData => "cloud-init-user-data",
            Self::GnupgPrivateKeys => "gnupg-private-keys",
            Self::ShellHistory => "history",
            Self::AmibundleIdentity => "amibundle-identity",
            Self::PrivateKeyFile => "private-key-file",
            Self::EditorTemporary => "editor-temporary",
            Self::PersistentNetRules => "persistent-net-rules",
            Self::ToolInput => "tool-input",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::SshPrivateKey => "SSH private key",
            Self::AwsCredentials => "AWS credentials",
            Self::Credentials => "credentials of a service, registry or cloud CLI",
            Self::KeyStore => "keystore holding keys",
            Self::CloudInitUserData => "cloud-init user data",
            Self::GnupgPrivateKeys => "GnuPG private keys",
            Self::ShellHistory => "shell or tool history",
            Self::AmibundleIdentity => "amibundle identity",
            Self::PrivateKeyFile => "file holding a private key",
            Self::EditorTemporary => "editor swap, autosave or lock file",
            Self::PersistentNetRules => "udev rules binding interfaces to this machine's MACs",
            Self::ToolInput => "a file given to this run",
        })
    }
}

/// What [`classify`] decides from a path alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Filtered (a directory with everything below it).
    Filter(Reason),
    /// Filtered only if the file holds a private key anywhere in its first 1 MiB
    /// ([`content::holds_private_key`]): names that mark key files.
    IfPrivateKey(Reason),
    /// Filtered only if the file is a key file ([`content::is_key_file`]): any other regular
    /// file of at most 1 MiB outside the exempt places.
    IfKeyFile,
    /// Filtered unless it is a Java keystore holding only trusted certificates.
    UnlessTrustStore,
    /// Filtered only if one of the settings is present ([`content::has_setting`]).
    IfSetting(Reason, &'static [&'static str]),
}

/// What to scan and what the copy will skip anyway.
#[derive(Debug, Clone)]
pub struct FilterOptions {
    /// Apply the rules; false is `--no-filter` (only [`Self::tool_inputs`] are filtered then,
    /// and nothing is scanned).
    pub rules: bool,
    /// Stay on the source's filesystem, as the copy does (`--all` turns both off).
    pub one_file_system: bool,
    /// Absolute paths inside the source whose contents the copy does not take (its `exclude`
    /// and `empty_dirs`): not scanned, nothing under them is reported.
    pub not_copied: Vec<PathBuf>,
    /// Absolute paths inside the source the user asked to keep (`--include`): the filter does
    /// not apply to them or below them.
    pub include: Vec<PathBuf>,
    /// Files this run was given (`-k`, `-c`, credential files), absolute and canonical: always
    /// filtered when they lie inside the source, whatever the rules and `include` say. Those
    /// outside the source are ignored (the copy cannot take them).
    pub tool_inputs: Vec<PathBuf>,
}

impl Default for FilterOptions {
    fn default() -> Self {
        Self {
            rules: true,
            one_file_system: true,
            not_copied: Vec::new(),
            include: Vec::new(),
            tool_inputs: Vec::new(),
        }
    }
}

/// One path the filter took out (or would have, for [`FilterReport::kept`]).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Filtered {
    /// The absolute source path (a directory stands for itself and everything below it).
    pub path: PathBuf,
    /// Why.
    pub reason: Reason,
}

/// What the filter found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FilterReport {
    /// Paths not to copy, sorted by path; see [`Self::excluded_paths`].
    pub filtered: Vec<Filtered>,
    /// Paths the rules matched but `--include` kept, sorted by path.
    pub kept: Vec<Filtered>,
    /// Directory entries looked at.
    pub entries_scanned: u64,
    /// Files opened to look for a private key (only names that ask for it are opened).
    pub contents_checked: u64,
}

impl FilterReport {
    /// The filtered paths, for the copy's exclusion list.
    pub fn excluded_paths(&self) -> Vec<PathBuf> {
        self.filtered.iter().map(|f| f.path.clone()).collect()
    }

    /// The report file's text: a comment header, then one `tag<TAB>path` line per filtered
    /// path, then the paths kept by `--include` as comments. Paths are written with `\`,
    /// control characters and bytes that are not UTF-8 escaped (`\\`, `\xNN`), so one line is
    /// always one path.
    pub fn render(&self) -> String {
        let mut out = format!(
            "# amibundle sensitive-file filter: {} path(s) not copied into the image.\n\
             # Keep one with --include PATH, or turn the filter off with --no-filter.\n\
             # tag\tpath (a directory stands for everything below it)\n",
            self.filtered.len()
        );
        for f in &self.filtered {
            out.push_str(&format!("{}\t{}\n", f.reason.tag(), escape_path(&f.path)));
        }
        if !self.kept.is_empty() {
            out.push_str("# matched by the filter but kept because of --include:\n");
            for f in &self.kept {
                out.push_str(&format!("# {}\t{}\n", f.reason.tag(), escape_path(&f.path)));
            }
        }
        out
    }

    /// Writes [`Self::render`] to a new file at `path`, mode 0600 (it names secrets' paths).
    ///
    /// # Errors
    ///
    /// [`FilterError::WriteReport`] if the file exists or cannot be written.
    pub fn write_to(&self, path: &Path) -> Result<(), FilterError> {
        let write = || -> io::Result<()> {
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                .open(path)?;
            file.write_all(self.render().as_bytes())?;
            file.sync_all()
        };
        write().map_err(|source| FilterError::WriteReport {
            path: path.to_owned(),
            source,
        })
    }
}

/// A path as one line of text: valid UTF-8 kept, `\` doubled, control characters and invalid
/// bytes as `\xNN`.
fn escape_path(path: &Path) -> String {
    let mut out = String::new();
    for chunk in path.as_os_str().as_bytes().utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                c if c.is_control() => {
                    let mut buf = [0; 4];
                    for b in c.encode_utf8(&mut buf).bytes() {
                        out.push_str(&format!("\\x{b:02x}"));
                    }
                }
                c => out.push(c),
            }
        }
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}

/// A failed scan.
#[derive(Debug, thiserror::Error)]
pub enum FilterError {
    /// The source root could not be opened as a directory.
    #[error("opening {path} to look for sensitive files")]
    OpenRoot {
        /// The source root.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// An `include` or `not_copied` path does not lie inside the source, so it could never
    /// match (the mis-anchoring bug of docs/reference-behaviour.md §2.4).
    #[error("{option} path {path} is not inside the source {root}")]
    OutsideSource {
        /// `include` or `not_copied`.
        option: &'static str,
        /// The offending path.
        path: PathBuf,
        /// The source root.
        root: PathBuf,
    },
    /// A directory could not be listed or a candidate file could not be read: the filter
    /// cannot tell whether it holds a secret, so it does not guess.
    #[error("reading {path} to look for sensitive files")]
    Read {
        /// The source path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A signal arrived.
    #[error("looking for sensitive files in {path}")]
    Interrupted {
        /// The directory being scanned.
        path: PathBuf,
        /// The [`crate::interrupt::Interrupted`] error.
        #[source]
        source: io::Error,
    },
    /// The report file could not be written.
    #[error("writing the filter report {path}")]
    WriteReport {
        /// The report path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsStr;

    #[test]
    fn report_lines_escape_paths() {
        let report = FilterReport {
            filtered: vec![
                Filtered {
                    path: PathBuf::from("/root/.ssh/id_ed25519"),
                    reason: Reason::SshPrivateKey,
                },
                Filtered {
                    path: PathBuf::from(OsStr::from_bytes(b"/srv/a\nb\\c\xff.key")),
                    reason: Reason::PrivateKeyFile,
                },
            ],
            kept: vec![Filtered {
                path: PathBuf::from("/etc/ssl/private/snakeoil.key"),
                reason: Reason::PrivateKeyFile,
            }],
            entries_scanned: 0,
            contents_checked: 0,
        };
        let text = report.render();
        let lines: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(
            lines,
            [
                "ssh-private-key\t/root/.ssh/id_ed25519",
                "private-key-file\t/srv/a\\x0ab\\\\c\\xff.key",
            ]
        );
        assert!(text.starts_with("# amibundle sensitive-file filter: 2 path(s) not copied"));
        assert!(text.contains("# private-key-file\t/etc/ssl/private/snakeoil.key\n"));
    }
}
