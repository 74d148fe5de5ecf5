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
//!   1 MiB outside the exempt places ([`content_exempt`]: package-managed `/usr`, `/etc/ssh`
//!   whose host keys are the machine's identity, container and package stores). Files whose
//!   name marks them (`*.pem`, `*.key`, any file in `.ssh`, `id_rsa*` …) are searched more
//!   widely: a key after a certificate chain counts.
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

mod content;

use std::collections::HashSet;
use std::ffi::{CString, OsStr};
use std::fmt;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Component, Path, PathBuf};

use nix::dir::Type;
use nix::errno::Errno;
use nix::fcntl::{AT_FDCWD, AtFlags, OFlag, openat};
use nix::sys::stat::{Mode, SFlag, fstat, fstatat};

/// History files, relative to a home directory; the filter matches them in any directory.
/// Shells (bash, zsh, ksh/sh, ash/busybox, tcsh, fish), interpreters, debuggers and database
/// clients whose histories routinely hold passwords typed on the command line, `less` (search
/// strings) and vim (`.viminfo`: command lines, searches and registers, i.e. text yanked from
/// edited files).
pub const HISTORY_FILES: &[&str] = &[
    ".bash_history",
    ".zsh_history",
    ".zhistory",
    ".sh_history",
    ".ash_history",
    ".history",
    ".local/share/fish/fish_history",
    ".python_history",
    ".node_repl_history",
    ".irb_history",
    ".pry_history",
    ".php_history",
    ".Rhistory",
    ".octave_hist",
    ".scala_history",
    ".gdb_history",
    ".mysql_history",
    ".mariadb_history",
    ".psql_history",
    ".sqlite_history",
    ".rediscli_history",
    ".dbshell",
    ".mongosh/mongosh_repl_history",
    ".lesshst",
    ".viminfo",
    ".local/share/nvim/shada/main.shada",
];

/// Credential files of network services, registries and cloud CLIs, relative to a home
/// directory (matched in any directory): filtered by name.
pub const CREDENTIAL_FILES: &[&str] = &[
    ".netrc",
    ".pgpass",
    ".git-credentials",
    ".docker/config.json",
    ".kube/config",
    ".vault-token",
    ".config/gh/hosts.yml",
    ".terraform.d/credentials.tfrc.json",
    ".config/gcloud/credentials.db",
    ".config/gcloud/access_tokens.db",
    ".config/gcloud/application_default_credentials.json",
    ".azure/accessTokens.json",
    ".azure/msal_token_cache.json",
    ".azure/msal_token_cache.bin",
    ".azure/service_principal_entries.json",
    ".azure/service_principal_entries.bin",
];

/// Configuration files that often, not always, hold a secret: filtered when one of the settings
/// is present (`name = value` or `name: value` at the start of a line).
const CREDENTIAL_SETTINGS: &[(&str, Reason, &[&str])] = &[
    (
        ".aws/config",
        Reason::AwsCredentials,
        &["aws_secret_access_key", "aws_session_token"],
    ),
    (".boto", Reason::AwsCredentials, &["aws_secret_access_key"]),
    (".s3cfg", Reason::AwsCredentials, &["secret_key"]),
    (".my.cnf", Reason::Credentials, &["password"]),
    (
        ".npmrc",
        Reason::Credentials,
        &["_auth", "_authToken", "_password"],
    ),
    (".pypirc", Reason::Credentials, &["password"]),
];

/// Files of a `.ssh` directory that are public by nature and never looked into.
const SSH_PUBLIC_FILES: &[&str] = &[
    "authorized_keys",
    "authorized_keys2",
    "known_hosts",
    "known_hosts.old",
    "config",
    "environment",
    "rc",
];

/// Name prefixes of OpenSSH user keys (`ssh-keygen`'s default file names).
const SSH_KEY_PREFIXES: &[&str] = &["id_rsa", "id_dsa", "id_ecdsa", "id_ed25519", "id_xmss"];

/// Suffixes of backup copies (editors, `cp --backup`, nano, hand-made): `name.bak` is judged as
/// `name`.
const BACKUP_SUFFIXES: &[&str] = &["~", ".bak", ".old", ".orig", ".save", ".backup", ".bkp"];

/// Places whose files are not searched for keys by content alone (name rules still apply):
/// their contents come from packages or registries, or are the machine's identity.
const CONTENT_EXEMPT: &[&str] = &[
    "etc/ssh",
    "var/lib/docker",
    "var/lib/containers",
    "var/lib/containerd",
    "var/lib/dpkg",
    "var/lib/rpm",
    "var/lib/apt",
    "var/cache/apt",
    "var/cache/dnf",
    "var/cache/yum",
    "var/log/journal",
];

/// How much of a candidate file is searched for a private key. A PEM file may hold a
/// certificate chain before its key (a few KiB per certificate); 1 MiB covers any realistic
/// combined file while a CA bundle (about 200 KiB) is still read only once. Files larger than
/// this are not looked into by the any-name rule (no key file is that large).
const CONTENT_SCAN_LIMIT_BYTES: u64 = 1 << 20;

/// What the any-name rule reads first: enough to see a key file's start.
const CONTENT_HEAD_BYTES: u64 = 4096;

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

/// Decides from its path relative to the scanned root (`root/.ssh/id_ed25519`, `etc/…`)
/// whether an entry is filtered, needs a look inside, or is kept (`None`). `is_dir` tells a
/// directory from a regular file; other kinds are never filtered and not classified.
pub fn classify(rel: &Path, is_dir: bool) -> Option<Verdict> {
    let comps: Vec<&[u8]> = rel
        .components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.as_bytes()),
            _ => None,
        })
        .collect();
    if comps.is_empty() {
        return None;
    }
    if is_dir {
        return classify_dir(&comps).map(Verdict::Filter);
    }
    if let Some(verdict) = classify_file(&comps) {
        return Some(verdict);
    }
    // A backup copy is as secret as what it copies.
    let (&name, parents) = comps.split_last()?;
    for suffix in BACKUP_SUFFIXES {
        if let Some(base) = name
            .strip_suffix(suffix.as_bytes())
            .filter(|b| !b.is_empty())
        {
            let mut original = parents.to_vec();
            original.push(base);
            if let Some(verdict) = classify_file(&original) {
                return Some(verdict);
            }
        }
    }
    (!content_exempt(&comps) && !public_by_name(&comps)).then_some(Verdict::IfKeyFile)
}

/// SSH public keys (`*.pub`) and the public files of a `.ssh` directory: never looked into.
fn public_by_name(comps: &[&[u8]]) -> bool {
    let Some((&name, parents)) = comps.split_last() else {
        return false;
    };
    name.ends_with(b".pub")
        || (parents.last() == Some(&&b".ssh"[..])
            && SSH_PUBLIC_FILES.iter().any(|p| name == p.as_bytes()))
}

fn classify_dir(comps: &[&[u8]]) -> Option<Reason> {
    let (&name, parents) = comps.split_last()?;
    let parent = parents.last().copied().unwrap_or_default();
    let grandparent = parents
        .len()
        .checked_sub(2)
        .map_or(&b""[..], |i| parents[i]);
    if name == b"private-keys-v1.d" {
        Some(Reason::GnupgPrivateKeys)
    } else if name == b"identity" && parent == b"amibundle" && grandparent == b".config" {
        Some(Reason::AmibundleIdentity)
    } else if name == b"cache" && (parent == b"cli" || parent == b"sso") && grandparent == b".aws" {
        Some(Reason::AwsCredentials)
    } else if name == b"legacy_credentials" && parent == b"gcloud" && grandparent == b".config" {
        Some(Reason::Credentials)
    } else if name == b"scripts" && cloud_instance_dir(parents) {
        Some(Reason::CloudInitUserData)
    } else {
        None
    }
}

/// `var/lib/cloud/instances/<id>`.
fn cloud_instance_dir(comps: &[&[u8]]) -> bool {
    comps.len() == 5 && comps[..4] == [&b"var"[..], b"lib", b"cloud", b"instances"]
}

/// The name rules for a regular file (everything but the backup and any-name rules).
fn classify_file(comps: &[&[u8]]) -> Option<Verdict> {
    let (&name, parents) = comps.split_last()?;
    let parent = parents.last().copied().unwrap_or_default();
    let has_ext = |exts: &[&str]| {
        exts.iter().any(|ext| {
            let ext = ext.as_bytes();
            name.len() > ext.len() && name[name.len() - ext.len()..].eq_ignore_ascii_case(ext)
        })
    };

    if HISTORY_FILES.iter().any(|h| ends_with_components(comps, h)) {
        return Some(Verdict::Filter(Reason::ShellHistory));
    }
    if name == b"credentials" && parent == b".aws" {
        return Some(Verdict::Filter(Reason::AwsCredentials));
    }
    if CREDENTIAL_FILES
        .iter()
        .any(|f| ends_with_components(comps, f))
    {
        return Some(Verdict::Filter(Reason::Credentials));
    }
    if let Some((_, reason, settings)) = CREDENTIAL_SETTINGS
        .iter()
        .find(|(f, _, _)| ends_with_components(comps, f))
    {
        return Some(Verdict::IfSetting(*reason, settings));
    }
    if cloud_instance_dir(parents)
        && (name.starts_with(b"user-data.txt")
            || name.starts_with(b"vendor-data")
            || name == b"obj.pkl")
    {
        return Some(Verdict::Filter(Reason::CloudInitUserData));
    }
    if comps.len() == 6
        && comps[..4] == [&b"var"[..], b"lib", b"cloud", b"seed"]
        && (name == b"user-data" || name == b"vendor-data")
    {
        return Some(Verdict::Filter(Reason::CloudInitUserData));
    }
    if name == b"secring.gpg" {
        return Some(Verdict::Filter(Reason::GnupgPrivateKeys));
    }
    if comps == [&b"etc"[..], b"udev", b"rules.d", b"70-persistent-net.rules"] {
        return Some(Verdict::Filter(Reason::PersistentNetRules));
    }
    if is_editor_temporary(name) {
        return Some(Verdict::Filter(Reason::EditorTemporary));
    }
    if parent == b".ssh" {
        return (!public_by_name(comps)).then_some(Verdict::IfPrivateKey(Reason::SshPrivateKey));
    }
    if SSH_KEY_PREFIXES
        .iter()
        .any(|p| name.starts_with(p.as_bytes()))
        && !name.ends_with(b".pub")
    {
        return Some(Verdict::IfPrivateKey(Reason::SshPrivateKey));
    }
    if package_managed(comps) {
        return None;
    }
    if has_ext(&[".p12", ".pfx", ".priv"]) {
        return Some(Verdict::Filter(Reason::KeyStore));
    }
    if has_ext(&[".jks", ".jceks", ".keystore"]) {
        return Some(Verdict::UnlessTrustStore);
    }
    if has_ext(&[".pem", ".key"]) {
        return Some(Verdict::IfPrivateKey(Reason::PrivateKeyFile));
    }
    None
}

/// Places the any-name content rule does not look into: package-managed trees and
/// [`CONTENT_EXEMPT`].
fn content_exempt(comps: &[&[u8]]) -> bool {
    package_managed(comps)
        || CONTENT_EXEMPT.iter().any(|place| {
            let place: Vec<&[u8]> = place.split('/').map(str::as_bytes).collect();
            comps.len() > place.len() && comps[..place.len()] == place[..]
        })
}

/// `comps` ends with the `/`-separated components of `suffix`.
fn ends_with_components(comps: &[&[u8]], suffix: &str) -> bool {
    let want: Vec<&[u8]> = suffix.split('/').map(str::as_bytes).collect();
    comps.len() >= want.len() && comps[comps.len() - want.len()..] == want[..]
}

/// vim swap files (`.name.swp`, then `.swo` … down to `.swa`), emacs autosave (`#name#`) and
/// lock files (`.#name`, usually symlinks, regular files on filesystems without them).
fn is_editor_temporary(name: &[u8]) -> bool {
    let vim = name.len() > 5
        && name.starts_with(b".")
        && name[name.len() - 4..name.len() - 1] == *b".sw"
        && (b'a'..=b'p').contains(&name[name.len() - 1]);
    let autosave = name.len() > 2 && name.starts_with(b"#") && name.ends_with(b"#");
    let lock = name.len() > 2 && name.starts_with(b".#");
    vim || autosave || lock
}

/// Under `/usr` but not `/usr/local` (relative to the scanned root).
fn package_managed(comps: &[&[u8]]) -> bool {
    comps.first() == Some(&&b"usr"[..]) && comps.get(1) != Some(&&b"local"[..])
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

/// Scans the tree at `root` (the copy source) and returns what the filter takes out.
///
/// # Errors
///
/// [`FilterError::OutsideSource`] for an option path outside `root`; [`FilterError::OpenRoot`],
/// [`FilterError::Read`] when a directory or a candidate file cannot be read (entries that
/// vanish during the scan of a live system are skipped, as the copy skips them);
/// [`FilterError::Interrupted`] on a signal.
pub fn scan(root: &Path, opts: &FilterOptions) -> Result<FilterReport, FilterError> {
    let relative =
        |paths: &[PathBuf], option: &'static str| -> Result<HashSet<PathBuf>, FilterError> {
            paths
                .iter()
                .map(|path| match path.strip_prefix(root) {
                    Ok(rel) if !rel.as_os_str().is_empty() => Ok(rel.to_owned()),
                    _ => Err(FilterError::OutsideSource {
                        option,
                        path: path.clone(),
                        root: root.to_owned(),
                    }),
                })
                .collect()
        };
    let not_copied = relative(&opts.not_copied, "not_copied")?;
    let include = relative(&opts.include, "include")?;
    let include_ancestors = include
        .iter()
        .flat_map(|p| p.ancestors().skip(1))
        .filter(|p| !p.as_os_str().is_empty())
        .map(Path::to_owned)
        .collect();

    let mut report = FilterReport::default();
    let mut tool_inputs = HashSet::new();
    for path in &opts.tool_inputs {
        let Ok(rel) = path.strip_prefix(root) else {
            continue;
        };
        if rel.as_os_str().is_empty() {
            continue;
        }
        match std::fs::symlink_metadata(path) {
            Ok(_) => {
                tool_inputs.insert(rel.to_owned());
                report.filtered.push(Filtered {
                    path: path.clone(),
                    reason: Reason::ToolInput,
                });
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(FilterError::Read {
                    path: path.clone(),
                    source,
                });
            }
        }
    }

    if opts.rules {
        let mut scanner = Scanner {
            root,
            opts,
            not_copied,
            include,
            include_ancestors,
            tool_inputs,
            root_dev: 0,
            buf: Vec::new(),
            report,
        };
        scanner.run()?;
        report = scanner.report;
    }
    report.filtered.sort();
    report.kept.sort();
    Ok(report)
}

/// One directory being scanned.
struct Frame {
    dir: File,
    rel: PathBuf,
    /// Set inside a filtered directory entered only because an included path lies below it:
    /// everything here is filtered for this reason unless included.
    inherited: Option<Reason>,
    /// This directory is (or lies below) an `--include` path: matches are kept and listed.
    included: bool,
    /// Entries still to look at, popped from the end.
    names: Vec<(CString, Option<Type>)>,
}

struct Scanner<'a> {
    root: &'a Path,
    opts: &'a FilterOptions,
    not_copied: HashSet<PathBuf>,
    include: HashSet<PathBuf>,
    include_ancestors: HashSet<PathBuf>,
    tool_inputs: HashSet<PathBuf>,
    root_dev: u64,
    buf: Vec<u8>,
    report: FilterReport,
}

impl Scanner<'_> {
    fn read_err(&self, rel: &Path) -> impl FnOnce(io::Error) -> FilterError + use<> {
        let path = self.root.join(rel);
        move |source| FilterError::Read { path, source }
    }

    fn run(&mut self) -> Result<(), FilterError> {
        let root = open_noatime(AT_FDCWD, self.root, dir_flags())
            .map(File::from)
            .map_err(|e| FilterError::OpenRoot {
                path: self.root.to_owned(),
                source: e.into(),
            })?;
        self.root_dev = fstat(&root)
            .map_err(|e| FilterError::OpenRoot {
                path: self.root.to_owned(),
                source: e.into(),
            })?
            .st_dev;
        let names = list(&root).map_err(self.read_err(Path::new("")))?;
        let mut stack = vec![Frame {
            dir: root,
            rel: PathBuf::new(),
            inherited: None,
            included: false,
            names,
        }];
        while let Some(frame) = stack.last_mut() {
            let Some((name, dtype)) = frame.names.pop() else {
                stack.pop();
                continue;
            };
            let rel = frame.rel.join(OsStr::from_bytes(name.to_bytes()));
            self.report.entries_scanned += 1;
            if self.not_copied.contains(&rel) || self.tool_inputs.contains(&rel) {
                continue;
            }
            let kind = match dtype {
                Some(t) => t,
                // The filesystem does not report types in its listings.
                None => match fstatat(&frame.dir, name.as_c_str(), AtFlags::AT_SYMLINK_NOFOLLOW) {
                    Ok(st) => type_of(&st),
                    Err(Errno::ENOENT) => continue,
                    Err(e) => return Err(self.read_err(&rel)(e.into())),
                },
            };
            let is_dir = kind == Type::Directory;
            // `--include` of this path or of a directory above it.
            let included = frame.included || self.include.contains(&rel);
            let verdict = match frame.inherited {
                Some(reason) => Some(Verdict::Filter(reason)),
                None if is_dir || kind == Type::File => classify(&rel, is_dir),
                None => None,
            };
            // Some((inherited reason, included)) for a directory to scan.
            let descend = match verdict {
                Some(Verdict::Filter(reason)) => {
                    if included {
                        self.keep(&rel, reason);
                        None
                    } else if is_dir && self.include_ancestors.contains(&rel) {
                        Some((Some(reason), false))
                    } else {
                        self.filter(&rel, reason);
                        None
                    }
                }
                // Under --include, a file of any name is kept without being read.
                Some(Verdict::IfKeyFile) if included => None,
                Some(rule) => {
                    if let Some(reason) = self.check_content(&frame.dir, &name, &rel, rule)? {
                        if included {
                            self.keep(&rel, reason);
                        } else {
                            self.filter(&rel, reason);
                        }
                    }
                    None
                }
                None => is_dir.then_some((None, included)),
            };
            if let Some((inherited, included)) = descend {
                crate::interrupt::check().map_err(|source| FilterError::Interrupted {
                    path: self.root.join(&rel),
                    source,
                })?;
                if let Some(mut child) = self.open_child(&frame.dir, &name, &rel, inherited)? {
                    child.included = included;
                    stack.push(child);
                }
            }
        }
        Ok(())
    }

    fn filter(&mut self, rel: &Path, reason: Reason) {
        self.report.filtered.push(Filtered {
            path: self.root.join(rel),
            reason,
        });
    }

    fn keep(&mut self, rel: &Path, reason: Reason) {
        self.report.kept.push(Filtered {
            path: self.root.join(rel),
            reason,
        });
    }

    /// Opens a subdirectory to scan, unless it vanished, was replaced by a non-directory, or
    /// is another filesystem the copy will not enter.
    fn open_child(
        &self,
        parent: &File,
        name: &CString,
        rel: &Path,
        inherited: Option<Reason>,
    ) -> Result<Option<Frame>, FilterError> {
        let dir = match open_noatime(parent, name.as_c_str(), dir_flags() | OFlag::O_NOFOLLOW) {
            Ok(fd) => File::from(fd),
            Err(Errno::ENOENT | Errno::ENOTDIR | Errno::ELOOP) => return Ok(None),
            Err(e) => return Err(self.read_err(rel)(e.into())),
        };
        let st = fstat(&dir).map_err(|e| self.read_err(rel)(e.into()))?;
        if self.opts.one_file_system && st.st_dev != self.root_dev {
            return Ok(None);
        }
        let names = list(&dir).map_err(self.read_err(rel))?;
        Ok(Some(Frame {
            dir,
            rel: rel.to_owned(),
            inherited,
            included: false,
            names,
        }))
    }

    /// Reads a candidate file as `rule` asks; `Some(reason)` if it is to be filtered.
    fn check_content(
        &mut self,
        dir: &File,
        name: &CString,
        rel: &Path,
        rule: Verdict,
    ) -> Result<Option<Reason>, FilterError> {
        // O_NONBLOCK: should the name have become a fifo since the listing, opening must not
        // hang; the type check below then skips it.
        let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC;
        let file = match open_noatime(dir, name.as_c_str(), flags) {
            Ok(fd) => File::from(fd),
            Err(Errno::ENOENT | Errno::ELOOP) => return Ok(None),
            Err(e) => return Err(self.read_err(rel)(e.into())),
        };
        let st = fstat(&file).map_err(|e| self.read_err(rel)(e.into()))?;
        if type_of(&st) != Type::File {
            return Ok(None);
        }
        let len = u64::try_from(st.st_size).unwrap_or(0);
        if rule == Verdict::IfKeyFile && (len == 0 || len > CONTENT_SCAN_LIMIT_BYTES) {
            return Ok(None);
        }
        self.report.contents_checked += 1;
        self.buf.clear();
        let mut file = file.take(CONTENT_SCAN_LIMIT_BYTES);
        let read_err = self.read_err(rel);
        let verdict = match rule {
            Verdict::IfKeyFile => {
                // The head first: most files are plainly not keys and cost no more than that.
                (&mut file)
                    .take(CONTENT_HEAD_BYTES)
                    .read_to_end(&mut self.buf)
                    .map_err(self.read_err(rel))?;
                if may_be_key_file(&self.buf) {
                    file.read_to_end(&mut self.buf).map_err(read_err)?;
                    content::is_key_file(&self.buf, len).then_some(Reason::PrivateKeyFile)
                } else {
                    None
                }
            }
            Verdict::IfPrivateKey(reason) => {
                file.read_to_end(&mut self.buf).map_err(read_err)?;
                content::holds_private_key(&self.buf, len).then_some(reason)
            }
            Verdict::UnlessTrustStore => {
                file.read_to_end(&mut self.buf).map_err(read_err)?;
                let truststore = content::java_keystore_holds_key(&self.buf) == Some(false);
                (!truststore).then_some(Reason::KeyStore)
            }
            Verdict::IfSetting(reason, settings) => {
                file.read_to_end(&mut self.buf).map_err(read_err)?;
                content::has_setting(&self.buf, settings).then_some(reason)
            }
            Verdict::Filter(reason) => Some(reason),
        };
        Ok(verdict)
    }
}

/// Whether a file starting with `head` could be a key file: it starts with a binary key's
/// first byte, a PEM armour or the text `openssl` writes before one, or a PuTTY or SSH1
/// header. Anything else is decided on its first 4 KiB alone.
fn may_be_key_file(head: &[u8]) -> bool {
    let text = head.trim_ascii_start();
    matches!(head.first(), Some(0x30 | 0xfe | 0xce))
        || [
            &b"-----BEGIN "[..],
            b"---- BEGIN ",
            b"Bag Attributes",
            b"Key Attributes",
        ]
        .iter()
        .any(|p| text.starts_with(p))
        || head.starts_with(b"PuTTY-User-Key-File-")
        || head.starts_with(b"SSH PRIVATE KEY FILE FORMAT")
}

fn dir_flags() -> OFlag {
    OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC
}

/// `openat` with `O_NOATIME` (scanning must not change the source's atimes, like the copy),
/// retried without it where the kernel refuses (not the owner and no CAP_FOWNER).
fn open_noatime<Fd: std::os::fd::AsFd, P: ?Sized + nix::NixPath>(
    dir: Fd,
    path: &P,
    flags: OFlag,
) -> nix::Result<OwnedFd> {
    match openat(&dir, path, flags | OFlag::O_NOATIME, Mode::empty()) {
        Err(Errno::EPERM) => openat(&dir, path, flags, Mode::empty()),
        r => r,
    }
}

fn type_of(st: &nix::sys::stat::FileStat) -> Type {
    match SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits()) {
        SFlag::S_IFDIR => Type::Directory,
        SFlag::S_IFREG => Type::File,
        SFlag::S_IFLNK => Type::Symlink,
        SFlag::S_IFCHR => Type::CharacterDevice,
        SFlag::S_IFBLK => Type::BlockDevice,
        SFlag::S_IFIFO => Type::Fifo,
        _ => Type::Socket,
    }
}

/// A directory's entries with the types `readdir` reports (`None` where it does not), in
/// reverse byte order (popped from the end, so the scan goes in byte order).
fn list(dir: &File) -> io::Result<Vec<(CString, Option<Type>)>> {
    use rustix::fs::FileType as F;
    let mut names: Vec<(CString, Option<Type>)> = super::root::read_dir_entries(dir)?
        .into_iter()
        .map(|(name, kind)| {
            let kind = match kind {
                F::Directory => Some(Type::Directory),
                F::RegularFile => Some(Type::File),
                F::Symlink => Some(Type::Symlink),
                F::CharacterDevice => Some(Type::CharacterDevice),
                F::BlockDevice => Some(Type::BlockDevice),
                F::Fifo => Some(Type::Fifo),
                F::Socket => Some(Type::Socket),
                _ => None,
            };
            (name, kind)
        })
        .collect();
    names.sort_unstable_by(|a, b| b.0.cmp(&a.0));
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    const CERT: &str =
        "-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIU\n-----END CERTIFICATE-----\n";
    const RSA_KEY: &str =
        "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA\n-----END RSA PRIVATE KEY-----\n";
    const OPENSSH_KEY: &str = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n-----END OPENSSH PRIVATE KEY-----\n";
    const SSH_PUB: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI user@host\n";

    fn verdict(path: &str) -> Option<Verdict> {
        classify(Path::new(path), false)
    }

    /// A regular file no name rule matched: read only to see whether it is a key file.
    const ANY_NAME: Option<Verdict> = Some(Verdict::IfKeyFile);

    #[test]
    fn ssh_keys_by_name_and_place() {
        use Verdict::*;
        let key = Some(IfPrivateKey(Reason::SshPrivateKey));
        assert_eq!(verdict("root/.ssh/id_ed25519"), key);
        assert_eq!(verdict("home/a/.ssh/id_rsa"), key);
        // Any name in .ssh is looked into: keys are often named after their use.
        assert_eq!(verdict("home/a/.ssh/github-deploy"), key);
        assert_eq!(verdict("home/a/.ssh/aws.pem"), key);
        // id_* outside .ssh too (keys copied around), never the public halves.
        assert_eq!(verdict("srv/backup/id_ecdsa"), key);
        // Backups of keys are keys.
        assert_eq!(verdict("srv/backup/id_ecdsa.bak"), key);
        assert_eq!(verdict("srv/backup/id_ecdsa~"), key);
        assert_eq!(verdict("root/.ssh/id_ed25519.pub"), None);
        assert_eq!(verdict("srv/backup/id_rsa.pub"), None);
        assert_eq!(verdict("root/.ssh/authorized_keys"), None);
        assert_eq!(verdict("root/.ssh/known_hosts"), None);
        assert_eq!(verdict("root/.ssh/config"), None);
        // Host keys are the machine's identity: --generalize's business, not the filter's,
        // and /etc/ssh is not searched by content either.
        assert_eq!(verdict("etc/ssh/ssh_host_rsa_key"), None);
        assert_eq!(verdict("etc/ssh/ssh_host_ed25519_key"), None);
        assert_eq!(verdict("etc/ssh/sshd_config"), None);
        // Not ssh keys at all, and package-managed.
        assert_eq!(verdict("usr/lib/python3/id_map.py"), None);
    }

    #[test]
    fn credentials_keyrings_histories_identity() {
        use Verdict::*;
        assert_eq!(
            verdict("root/.aws/credentials"),
            Some(Filter(Reason::AwsCredentials))
        );
        assert_eq!(
            verdict("home/bob/.aws/credentials"),
            Some(Filter(Reason::AwsCredentials))
        );
        assert_eq!(
            verdict("home/bob/.aws/credentials.bak"),
            Some(Filter(Reason::AwsCredentials))
        );
        assert!(matches!(
            verdict("home/bob/.aws/config"),
            Some(IfSetting(Reason::AwsCredentials, _))
        ));
        assert_eq!(verdict("srv/app/credentials"), ANY_NAME);
        assert_eq!(
            classify(Path::new("root/.aws/sso/cache"), true),
            Some(Filter(Reason::AwsCredentials))
        );
        assert_eq!(
            classify(Path::new("root/.aws/cli/cache"), true),
            Some(Filter(Reason::AwsCredentials))
        );
        assert_eq!(classify(Path::new("var/cache"), true), None);
        assert_eq!(
            classify(Path::new("root/.gnupg/private-keys-v1.d"), true),
            Some(Filter(Reason::GnupgPrivateKeys))
        );
        assert_eq!(
            verdict("root/.gnupg/secring.gpg"),
            Some(Filter(Reason::GnupgPrivateKeys))
        );
        // Public keyrings stay (the classic `*.gpg` removed apt's); they are read, not taken.
        assert_eq!(
            verdict("etc/apt/trusted.gpg.d/debian-archive-bookworm.gpg"),
            ANY_NAME
        );
        assert_eq!(
            verdict("usr/share/keyrings/ubuntu-archive-keyring.gpg"),
            None
        );
        assert_eq!(verdict("root/.gnupg/pubring.kbx"), ANY_NAME);
        for h in [
            "root/.bash_history",
            "home/a/.zsh_history",
            "home/a/.python_history",
            "var/lib/postgresql/.psql_history",
            "home/a/.local/share/fish/fish_history",
            "root/.lesshst",
            "root/.ash_history",
            "home/a/.Rhistory",
            "home/a/.gdb_history",
            "root/.viminfo",
            "root/.bash_history.old",
        ] {
            assert_eq!(verdict(h), Some(Filter(Reason::ShellHistory)), "{h}");
        }
        assert_eq!(verdict("home/a/fish_history"), ANY_NAME);
        assert_eq!(verdict("home/a/.bash_history_notes/x"), ANY_NAME);
        assert_eq!(
            classify(Path::new("home/a/.config/amibundle/identity"), true),
            Some(Filter(Reason::AmibundleIdentity))
        );
        assert_eq!(classify(Path::new("home/a/.config/amibundle"), true), None);
        assert_eq!(classify(Path::new("srv/identity"), true), None);
    }

    #[test]
    fn credentials_of_other_services_and_cloud_init_user_data() {
        use Verdict::*;
        let cred = Some(Filter(Reason::Credentials));
        for f in [
            "root/.netrc",
            "home/a/.pgpass",
            "home/a/.git-credentials",
            "home/a/.docker/config.json",
            "root/.kube/config",
            "home/a/.config/gcloud/credentials.db",
            "home/a/.config/gcloud/application_default_credentials.json",
            "home/a/.azure/msal_token_cache.json",
            "home/a/.vault-token",
            "home/a/.netrc~",
        ] {
            assert_eq!(verdict(f), cred, "{f}");
        }
        assert_eq!(
            classify(Path::new("home/a/.config/gcloud/legacy_credentials"), true),
            cred.map(|_| Filter(Reason::Credentials))
        );
        // Not credentials by these names elsewhere.
        assert_eq!(verdict("srv/app/config.json"), ANY_NAME);
        assert_eq!(verdict("home/a/.kube/cache/discovery.json"), ANY_NAME);
        for f in [
            "root/.my.cnf",
            "home/a/.npmrc",
            "home/a/.pypirc",
            "root/.s3cfg",
        ] {
            assert!(matches!(verdict(f), Some(IfSetting(..))), "{f}");
        }
        let user_data = Some(Filter(Reason::CloudInitUserData));
        for f in [
            "var/lib/cloud/instances/i-0abc/user-data.txt",
            "var/lib/cloud/instances/i-0abc/user-data.txt.i",
            "var/lib/cloud/instances/i-0abc/vendor-data.txt",
            "var/lib/cloud/instances/i-0abc/obj.pkl",
            "var/lib/cloud/seed/nocloud-net/user-data",
        ] {
            assert_eq!(verdict(f), user_data, "{f}");
        }
        assert_eq!(
            classify(Path::new("var/lib/cloud/instances/i-0abc/scripts"), true),
            Some(Filter(Reason::CloudInitUserData))
        );
        assert_eq!(
            verdict("var/lib/cloud/instances/i-0abc/datasource"),
            ANY_NAME
        );
        assert_eq!(
            verdict("srv/var/lib/cloud/instances/i-0abc/user-data.txt"),
            ANY_NAME
        );
    }

    #[test]
    fn key_files_are_looked_into_except_in_package_trees() {
        use Verdict::*;
        let check = Some(IfPrivateKey(Reason::PrivateKeyFile));
        assert_eq!(verdict("etc/ssl/certs/ISRG_Root_X1.pem"), check);
        assert_eq!(verdict("etc/ssl/private/server.key"), check);
        assert_eq!(verdict("etc/ssl/private/server.key.orig"), check);
        assert_eq!(verdict("etc/pki/tls/private/LOCALHOST.KEY"), check);
        assert_eq!(verdict("usr/local/etc/app/tls.pem"), check);
        assert_eq!(verdict("usr/lib/python3.12/test/keycert.pem"), None);
        // Keystores: PKCS#12 and .priv by name, Java keystores unless only certificates.
        assert_eq!(verdict("opt/app/tls.p12"), Some(Filter(Reason::KeyStore)));
        assert_eq!(verdict("opt/app/TLS.PFX"), Some(Filter(Reason::KeyStore)));
        assert_eq!(verdict("root/ec2.priv"), Some(Filter(Reason::KeyStore)));
        assert_eq!(verdict("opt/app/server.jks"), Some(UnlessTrustStore));
        assert_eq!(verdict("opt/app/.keystore"), ANY_NAME);
        assert_eq!(verdict("opt/app/release.keystore"), Some(UnlessTrustStore));
        assert_eq!(verdict("usr/lib/jvm/x/lib/security/cacerts.jks"), None);
        // Other names are read only to see whether they are key files.
        assert_eq!(verdict("etc/pki/tls/certs/ca-bundle.crt"), ANY_NAME);
        assert_eq!(verdict("srv/.pem"), ANY_NAME);
        assert_eq!(verdict("var/lib/docker/overlay2/x/diff/etc/key"), None);
        assert_eq!(verdict("var/lib/dpkg/info/openssh-server.list"), None);
    }

    #[test]
    fn classic_leftovers_that_still_make_sense() {
        use Verdict::*;
        let editor = Some(Filter(Reason::EditorTemporary));
        assert_eq!(verdict("etc/.shadow.swp"), editor);
        assert_eq!(verdict("home/a/.notes.txt.swo"), editor);
        assert_eq!(verdict("home/a/#draft.txt#"), editor);
        assert_eq!(verdict("home/a/.#draft.txt"), editor);
        assert_eq!(verdict("home/a/notes.swp"), ANY_NAME);
        assert_eq!(verdict("home/a/.swp"), ANY_NAME);
        // A backup of a file that is no secret is not one either.
        assert_eq!(verdict("etc/fstab~"), ANY_NAME);
        assert_eq!(
            verdict("etc/udev/rules.d/70-persistent-net.rules"),
            Some(Filter(Reason::PersistentNetRules))
        );
        assert_eq!(
            verdict("srv/etc/udev/rules.d/70-persistent-net.rules"),
            ANY_NAME
        );
    }

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

    /// A source tree with secrets and look-alikes, and what the scan must say about it.
    fn source_tree() -> tempfile::TempDir {
        let tmp = tempfile::tempdir().unwrap();
        let r = tmp.path();
        let write = |rel: &str, content: &str| {
            let p = r.join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, content).unwrap();
        };
        write("root/.ssh/id_ed25519", OPENSSH_KEY);
        write("root/.ssh/id_ed25519.pub", SSH_PUB);
        write("root/.ssh/authorized_keys", SSH_PUB);
        // Named like a key but not one (a script, say): kept, the content decides.
        write("root/.ssh/notes", "remember to rotate keys\n");
        write("root/.bash_history", "mysql -p hunter2\n");
        write(
            "root/.aws/credentials",
            "[default]\naws_secret_access_key = x\n",
        );
        write("root/.aws/config", "[default]\nregion = eu-west-1\n");
        write("root/.aws/sso/cache/abc.json", "{\"accessToken\": \"x\"}\n");
        write(
            "home/alice/.gnupg/private-keys-v1.d/A1.key",
            "(private-key ...)\n",
        );
        write("home/alice/.gnupg/pubring.kbx", "kbx");
        write(
            "home/alice/.config/amibundle/identity/user-key.pem",
            RSA_KEY,
        );
        write("home/alice/.config/amibundle/identity/user-cert.pem", CERT);
        write("etc/ssl/certs/ca-certificates.crt", &CERT.repeat(3));
        write("etc/ssl/certs/ISRG_Root_X1.pem", CERT);
        write("etc/pki/tls/certs/ca-bundle.crt", &CERT.repeat(3));
        write("etc/ssl/private/server.key", RSA_KEY);
        write(
            "etc/nginx/fullchain-and-key.pem",
            &format!("{CERT}{CERT}{RSA_KEY}"),
        );
        write("etc/nginx/cert-only.pem", CERT);
        write("etc/ssh/ssh_host_ed25519_key", OPENSSH_KEY);
        write("etc/apt/trusted.gpg.d/debian.gpg", "binary keyring");
        write(
            "usr/lib/python3/test/keycert.pem",
            &format!("{CERT}{RSA_KEY}"),
        );
        write("srv/data/readme.txt", "hello\n");
        tmp
    }

    fn rel_paths(root: &Path, list: &[Filtered]) -> Vec<(String, Reason)> {
        list.iter()
            .map(|f| {
                (
                    f.path.strip_prefix(root).unwrap().display().to_string(),
                    f.reason,
                )
            })
            .collect()
    }

    #[test]
    fn scan_filters_secrets_and_keeps_public_material() {
        let tmp = source_tree();
        let root = tmp.path();
        let report = scan(root, &FilterOptions::default()).unwrap();
        assert_eq!(
            rel_paths(root, &report.filtered),
            [
                (
                    "etc/nginx/fullchain-and-key.pem".into(),
                    Reason::PrivateKeyFile
                ),
                ("etc/ssl/private/server.key".into(), Reason::PrivateKeyFile),
                (
                    "home/alice/.config/amibundle/identity".into(),
                    Reason::AmibundleIdentity
                ),
                (
                    "home/alice/.gnupg/private-keys-v1.d".into(),
                    Reason::GnupgPrivateKeys
                ),
                ("root/.aws/credentials".into(), Reason::AwsCredentials),
                ("root/.aws/sso/cache".into(), Reason::AwsCredentials),
                ("root/.bash_history".into(), Reason::ShellHistory),
                ("root/.ssh/id_ed25519".into(), Reason::SshPrivateKey),
            ]
        );
        assert!(report.kept.is_empty());
        // Opened: id_ed25519 and notes (in .ssh), .aws/config (for secret keys), the .pem and
        // .key files (4), and the other regular files of any name (pubring.kbx, the two .crt
        // bundles, debian.gpg, readme.txt). Not the filtered directories' files, not /usr, not
        // /etc/ssh, not the public .ssh files, not what a name rule filters outright.
        assert_eq!(report.contents_checked, 12);
        assert_eq!(
            report.excluded_paths()[0],
            root.join("etc/nginx/fullchain-and-key.pem")
        );
    }

    /// Issue 12, finding 9: credentials the filter kept before, each next to a look-alike that
    /// must stay.
    #[test]
    fn scan_finds_keys_under_any_name_and_the_credentials_it_missed() {
        let tmp = tempfile::tempdir().unwrap();
        let r = tmp.path();
        let write = |rel: &str, content: &[u8]| {
            let p = r.join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, content).unwrap();
        };
        let der_key: &[u8] = &[0x30, 0x0a, 0x02, 0x01, 0x00, 0x02, 0x05, 1, 2, 3, 4, 5];
        write("srv/app/signing-material", RSA_KEY.as_bytes());
        write("srv/app/signing.der", der_key);
        write(
            "srv/app/README.md",
            format!("Install it:\n{RSA_KEY}").as_bytes(),
        );
        write("srv/app/tls.p12", b"\x30\x82");
        write(
            "srv/app/keys.jks",
            &[0xfe, 0xed, 0xfe, 0xed, 0, 0, 0, 2, 0, 0, 0, 1, 0, 0, 0, 1],
        );
        write(
            "srv/app/trust.jks",
            &[0xfe, 0xed, 0xfe, 0xed, 0, 0, 0, 2, 0, 0, 0, 0, 1, 2, 3, 4],
        );
        write("etc/ssl/private/server.key.bak", RSA_KEY.as_bytes());
        write("etc/ssl/private/server.key~", CERT.as_bytes());
        write("root/.netrc", b"machine example.com login a password b\n");
        write("home/bob/.pgpass", b"db:5432:*:app:secret\n");
        write(
            "home/bob/.git-credentials",
            b"https://bob:tok@example.com\n",
        );
        write("home/bob/.docker/config.json", b"{\"auths\":{}}\n");
        write("home/bob/.kube/config", b"users: []\n");
        write("home/bob/.aws/config", b"[p]\naws_secret_access_key = x\n");
        write("home/carol/.aws/config", b"[default]\nregion = eu-west-1\n");
        write("root/.my.cnf", b"[client]\npassword=hunter2\n");
        write("home/carol/.my.cnf", b"[mysql]\nauto-rehash\n");
        write(
            "var/lib/cloud/instances/i-1/user-data.txt",
            b"#cloud-config\n",
        );
        write(
            "var/lib/cloud/instances/i-1/scripts/part-001",
            b"#!/bin/sh\n",
        );
        write("var/lib/cloud/instances/i-1/datasource", b"DataSourceEc2\n");
        write("root/.ash_history", b"passwd\n");
        write("etc/ssh/ssh_host_rsa_key", RSA_KEY.as_bytes());
        write("usr/share/doc/x/test-key", RSA_KEY.as_bytes());
        let report = scan(r, &FilterOptions::default()).unwrap();
        let got = rel_paths(r, &report.filtered);
        let want: Vec<(String, Reason)> = [
            ("etc/ssl/private/server.key.bak", Reason::PrivateKeyFile),
            ("home/bob/.aws/config", Reason::AwsCredentials),
            ("home/bob/.docker/config.json", Reason::Credentials),
            ("home/bob/.git-credentials", Reason::Credentials),
            ("home/bob/.kube/config", Reason::Credentials),
            ("home/bob/.pgpass", Reason::Credentials),
            ("root/.ash_history", Reason::ShellHistory),
            ("root/.my.cnf", Reason::Credentials),
            ("root/.netrc", Reason::Credentials),
            ("srv/app/keys.jks", Reason::KeyStore),
            ("srv/app/signing-material", Reason::PrivateKeyFile),
            ("srv/app/signing.der", Reason::PrivateKeyFile),
            ("srv/app/tls.p12", Reason::KeyStore),
            (
                "var/lib/cloud/instances/i-1/scripts",
                Reason::CloudInitUserData,
            ),
            (
                "var/lib/cloud/instances/i-1/user-data.txt",
                Reason::CloudInitUserData,
            ),
        ]
        .iter()
        .map(|(p, r)| (p.to_string(), *r))
        .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn include_overrides_and_tool_inputs_always_go() {
        let tmp = source_tree();
        let root = tmp.path();
        let opts = FilterOptions {
            include: vec![
                root.join("etc/ssl/private"),
                // Below a filtered directory: the directory is entered, the rest of it
                // still filtered.
                root.join("home/alice/.config/amibundle/identity/user-cert.pem"),
                // Tool inputs win over --include.
                root.join("root/.aws/credentials"),
            ],
            not_copied: vec![root.join("root/.aws/sso")],
            tool_inputs: vec![
                root.join("root/.aws/credentials"),
                root.join("srv/data/readme.txt"),
                // Outside the source, or missing: nothing to filter.
                PathBuf::from("/nonexistent/key.pem"),
                root.join("srv/data/gone.pem"),
            ],
            ..FilterOptions::default()
        };
        let report = scan(root, &opts).unwrap();
        assert_eq!(
            rel_paths(root, &report.filtered),
            [
                (
                    "etc/nginx/fullchain-and-key.pem".into(),
                    Reason::PrivateKeyFile
                ),
                (
                    "home/alice/.config/amibundle/identity/user-key.pem".into(),
                    Reason::AmibundleIdentity
                ),
                (
                    "home/alice/.gnupg/private-keys-v1.d".into(),
                    Reason::GnupgPrivateKeys
                ),
                ("root/.aws/credentials".into(), Reason::ToolInput),
                ("root/.bash_history".into(), Reason::ShellHistory),
                ("root/.ssh/id_ed25519".into(), Reason::SshPrivateKey),
                ("srv/data/readme.txt".into(), Reason::ToolInput),
            ]
        );
        assert_eq!(
            rel_paths(root, &report.kept),
            [
                ("etc/ssl/private/server.key".into(), Reason::PrivateKeyFile),
                (
                    "home/alice/.config/amibundle/identity/user-cert.pem".into(),
                    Reason::AmibundleIdentity
                ),
            ]
        );
    }

    #[test]
    fn no_filter_keeps_everything_but_tool_inputs() {
        let tmp = source_tree();
        let root = tmp.path();
        let opts = FilterOptions {
            rules: false,
            tool_inputs: vec![root.join("etc/ssl/private/server.key")],
            ..FilterOptions::default()
        };
        let report = scan(root, &opts).unwrap();
        assert_eq!(
            rel_paths(root, &report.filtered),
            [("etc/ssl/private/server.key".into(), Reason::ToolInput)]
        );
        assert_eq!((report.entries_scanned, report.contents_checked), (0, 0));
    }

    #[test]
    fn symlinks_are_neither_followed_nor_filtered() {
        let tmp = tempfile::tempdir().unwrap();
        let (root, outside) = (tmp.path().join("src"), tmp.path().join("outside"));
        std::fs::create_dir_all(root.join("root/.ssh")).unwrap();
        std::fs::create_dir_all(outside.join(".ssh")).unwrap();
        std::fs::write(outside.join(".ssh/id_rsa"), RSA_KEY).unwrap();
        std::fs::write(outside.join("server.key"), RSA_KEY).unwrap();
        // A directory symlink leading out of the source, a key-named symlink to a key, and a
        // history hardened to /dev/null.
        symlink(&outside, root.join("home")).unwrap();
        symlink(outside.join("server.key"), root.join("root/.ssh/id_rsa")).unwrap();
        symlink("/dev/null", root.join("root/.bash_history")).unwrap();
        let report = scan(&root, &FilterOptions::default()).unwrap();
        assert_eq!(report.filtered, []);
        assert_eq!(report.contents_checked, 0);
    }

    #[test]
    fn options_outside_the_source_are_refused() {
        let tmp = source_tree();
        let root = tmp.path();
        for opts in [
            FilterOptions {
                include: vec![PathBuf::from("/etc/ssl/private")],
                ..FilterOptions::default()
            },
            FilterOptions {
                not_copied: vec![root.to_owned()],
                ..FilterOptions::default()
            },
        ] {
            let err = scan(root, &opts).unwrap_err();
            assert!(matches!(err, FilterError::OutsideSource { .. }), "{err:?}");
        }
    }

    #[test]
    fn report_file_is_private_and_never_overwritten() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = source_tree();
        let report = scan(tmp.path(), &FilterOptions::default()).unwrap();
        let out = tempfile::tempdir().unwrap();
        let path = out.path().join("filtered.txt");
        report.write_to(&path).unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), report.render());
        let err = report.write_to(&path).unwrap_err();
        assert!(matches!(err, FilterError::WriteReport { .. }), "{err:?}");
    }
}
