//! The sensitive-file filter of `bundle-vol`: which files of the source are not copied into
//! the image because they are secrets or this machine's private state, and the report listing
//! every one of them with its reason (the filter is never silent).
//!
//! The classic tool filtered by name alone (`*.pem`, `*.gpg`, `*id_rsa*` …, reference-tools.md
//! §2.4), which removed CA bundles and package keyrings while keeping `~/.aws/credentials` and
//! most shell histories. This filter is narrow and path-aware; a name that can hold either a
//! secret or public data is only filtered after looking inside.
//!
//! Filtered (see [`classify`] and [`Reason`]):
//! * SSH private keys: any file in a `.ssh` directory except the public ones (`*.pub`,
//!   `authorized_keys`, `known_hosts`, `config` …), and `id_rsa*`, `id_dsa*`, `id_ecdsa*`,
//!   `id_ed25519*`, `id_xmss*` anywhere (never `*.pub`) — each only if its content is a
//!   private key (PEM/OpenSSH/SSH2/PuTTY/SSH1 header, see [`holds_private_key`]).
//! * AWS credentials: `.aws/credentials` in any directory (every home, `/root`), and the
//!   cached temporary credentials and SSO tokens in `.aws/cli/cache/` and `.aws/sso/cache/`.
//! * GnuPG private keys: `private-keys-v1.d/` directories and `secring.gpg` files (public
//!   keyrings such as apt's `*.gpg` are kept).
//! * Shell and tool histories ([`HISTORY_FILES`]), in any directory.
//! * amibundle's own identity: `.config/amibundle/identity/` in any home.
//! * `*.pem` and `*.key` files that hold a private key; never CA bundles or certificates.
//!   Package-managed trees (`/usr` except `/usr/local`) are exempt from this rule: whatever
//!   is there ships publicly in a package (test keys of language runtimes, for example), and
//!   removing it would only break package verification.
//! * From the classic filter, what still makes sense: editor swap, autosave and lock files
//!   (`.*.swp` … `.*.swa`, `#*#`, `.#*`), which hold unsaved copies of files being edited
//!   (possibly secrets) and are stale on a new machine; and the udev
//!   `/etc/udev/rules.d/70-persistent-net.rules`, which binds interface names to this
//!   machine's MAC addresses and leaves a clone without network (users-and-peers.md pain 10).
//! * The files the run itself was given ([`FilterOptions::tool_inputs`]: signing key,
//!   certificate, credential files), always, even with `--no-filter` and `--include`.
//!
//! Dropped from the classic filter: `*.pem`, `*.gpg`, `*.jks` and `*.priv` by name (they took
//! CA bundles, keyrings and trust stores; private keys are now found by content), `*id_rsa*`
//! and `*id_dsa*` by name (replaced by the SSH rule), `authorized_keys` (public keys: removing
//! them locked users out of the clone), `*~` (deliberate backups, not secrets). The classic
//! excludes of `/dev`, `/proc`, `/sys`, `/media`, `/mnt` are not this module's business: the
//! copy turns mount points into empty directories.
//!
//! Not filtered, deliberately: SSH host keys, `/etc/machine-id` and cloud-init state. They are
//! this machine's identity, which a backup must keep; `--generalize` removes them (see
//! `image::generalize`). Symlinks are never filtered (a symlink holds no secret, only a name;
//! `~/.bash_history -> /dev/null` stays as the user set it).
//!
//! The user's `--include` overrides the filter for a path (and everything below it); such
//! paths are listed in [`FilterReport::kept`].
//!
//! Cost: the scan reads directory listings only (the entry type comes from `readdir`), stays on
//! the source's filesystem like the copy, never follows a symlink, and opens only the files
//! whose name asks for a content check (counted in [`FilterReport::contents_checked`]).

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
/// Shells (bash, zsh, ksh/sh, tcsh, fish), interpreters and database clients whose histories
/// routinely hold passwords typed on the command line, `less` (search strings) and vim
/// (`.viminfo`: command lines, searches and registers, i.e. text yanked from edited files).
pub const HISTORY_FILES: &[&str] = &[
    ".bash_history",
    ".zsh_history",
    ".zhistory",
    ".sh_history",
    ".history",
    ".local/share/fish/fish_history",
    ".python_history",
    ".node_repl_history",
    ".irb_history",
    ".mysql_history",
    ".mariadb_history",
    ".psql_history",
    ".sqlite_history",
    ".rediscli_history",
    ".dbshell",
    ".lesshst",
    ".viminfo",
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

/// How much of a candidate file is searched for a private-key header. A PEM file may hold a
/// certificate chain before its key (a few KiB per certificate); 1 MiB covers any realistic
/// combined file while a CA bundle (about 200 KiB) is still read only once.
const CONTENT_SCAN_LIMIT_BYTES: u64 = 1 << 20;

/// Why a path is filtered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    /// An SSH private key.
    SshPrivateKey,
    /// AWS credentials or cached temporary credentials.
    AwsCredentials,
    /// GnuPG private keys.
    GnupgPrivateKeys,
    /// A shell or tool history.
    ShellHistory,
    /// amibundle's own identity (key and certificate).
    AmibundleIdentity,
    /// A `*.pem`/`*.key` file holding a private key.
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
    /// Filtered only if the file's content is a private key ([`holds_private_key`]).
    IfPrivateKey(Reason),
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
    let (&name, parents) = comps.split_last()?;
    let parent = parents.last().copied().unwrap_or_default();
    let grandparent = parents
        .len()
        .checked_sub(2)
        .map_or(&b""[..], |i| parents[i]);

    if is_dir {
        return if name == b"private-keys-v1.d" {
            Some(Verdict::Filter(Reason::GnupgPrivateKeys))
        } else if name == b"identity" && parent == b"amibundle" && grandparent == b".config" {
            Some(Verdict::Filter(Reason::AmibundleIdentity))
        } else if name == b"cache"
            && (parent == b"cli" || parent == b"sso")
            && grandparent == b".aws"
        {
            Some(Verdict::Filter(Reason::AwsCredentials))
        } else {
            None
        };
    }

    if HISTORY_FILES
        .iter()
        .any(|h| ends_with_components(&comps, h))
    {
        return Some(Verdict::Filter(Reason::ShellHistory));
    }
    if name == b"credentials" && parent == b".aws" {
        return Some(Verdict::Filter(Reason::AwsCredentials));
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
        let public =
            name.ends_with(b".pub") || SSH_PUBLIC_FILES.iter().any(|p| name == p.as_bytes());
        return (!public).then_some(Verdict::IfPrivateKey(Reason::SshPrivateKey));
    }
    if SSH_KEY_PREFIXES
        .iter()
        .any(|p| name.starts_with(p.as_bytes()))
        && !name.ends_with(b".pub")
    {
        return Some(Verdict::IfPrivateKey(Reason::SshPrivateKey));
    }
    let key_like = [&b".pem"[..], b".key"].iter().any(|ext| {
        name.len() > ext.len() && name[name.len() - ext.len()..].eq_ignore_ascii_case(ext)
    });
    if key_like && !package_managed(&comps) {
        return Some(Verdict::IfPrivateKey(Reason::PrivateKeyFile));
    }
    None
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

/// Whether `head` (the start of a file) holds a private key: a PEM-style armour line whose
/// label contains `PRIVATE KEY` (`-----BEGIN RSA PRIVATE KEY-----`, `… OPENSSH PRIVATE KEY`,
/// `… ENCRYPTED PRIVATE KEY`, `… PGP PRIVATE KEY BLOCK`, RFC 4716's `---- BEGIN SSH2 ENCRYPTED
/// PRIVATE KEY ----`) at the start of any line, or a PuTTY or SSH1 private key file. A
/// certificate or public key (`BEGIN CERTIFICATE`, `BEGIN PUBLIC KEY`) is not one; a file with
/// certificates and a key is. DER-encoded keys are not recognised.
pub fn holds_private_key(head: &[u8]) -> bool {
    if head.starts_with(b"PuTTY-User-Key-File-") || head.starts_with(b"SSH PRIVATE KEY FILE FORMAT")
    {
        return true;
    }
    head.split(|&b| b == b'\n').any(|line| {
        let line = line.trim_ascii();
        (line.starts_with(b"-----BEGIN ") || line.starts_with(b"---- BEGIN "))
            && line
                .windows(b"PRIVATE KEY".len())
                .any(|w| w == b"PRIVATE KEY")
    })
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
    /// match (the mis-anchoring bug of reference-tools.md §2.4).
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
                Some(Verdict::IfPrivateKey(reason)) => {
                    if self.check_content(&frame.dir, &name, &rel)? {
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

    /// Reads the start of a candidate file and looks for a private key.
    fn check_content(
        &mut self,
        dir: &File,
        name: &CString,
        rel: &Path,
    ) -> Result<bool, FilterError> {
        // O_NONBLOCK: should the name have become a fifo since the listing, opening must not
        // hang; the type check below then skips it.
        let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC;
        let file = match open_noatime(dir, name.as_c_str(), flags) {
            Ok(fd) => File::from(fd),
            Err(Errno::ENOENT | Errno::ELOOP) => return Ok(false),
            Err(e) => return Err(self.read_err(rel)(e.into())),
        };
        let st = fstat(&file).map_err(|e| self.read_err(rel)(e.into()))?;
        if type_of(&st) != Type::File {
            return Ok(false);
        }
        self.report.contents_checked += 1;
        self.buf.clear();
        file.take(CONTENT_SCAN_LIMIT_BYTES)
            .read_to_end(&mut self.buf)
            .map_err(self.read_err(rel))?;
        Ok(holds_private_key(&self.buf))
    }
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
        assert_eq!(verdict("root/.ssh/id_ed25519.pub"), None);
        assert_eq!(verdict("srv/backup/id_rsa.pub"), None);
        assert_eq!(verdict("root/.ssh/authorized_keys"), None);
        assert_eq!(verdict("root/.ssh/known_hosts"), None);
        assert_eq!(verdict("root/.ssh/config"), None);
        // Host keys are the machine's identity: --generalize's business, not the filter's.
        assert_eq!(verdict("etc/ssh/ssh_host_rsa_key"), None);
        assert_eq!(verdict("etc/ssh/ssh_host_ed25519_key"), None);
        // Not ssh keys at all.
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
        assert_eq!(verdict("home/bob/.aws/config"), None);
        assert_eq!(verdict("srv/app/credentials"), None);
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
        // Public keyrings stay (the classic `*.gpg` removed apt's).
        assert_eq!(
            verdict("etc/apt/trusted.gpg.d/debian-archive-bookworm.gpg"),
            None
        );
        assert_eq!(
            verdict("usr/share/keyrings/ubuntu-archive-keyring.gpg"),
            None
        );
        assert_eq!(verdict("root/.gnupg/pubring.kbx"), None);
        for h in [
            "root/.bash_history",
            "home/a/.zsh_history",
            "home/a/.python_history",
            "var/lib/postgresql/.psql_history",
            "home/a/.local/share/fish/fish_history",
            "root/.lesshst",
        ] {
            assert_eq!(verdict(h), Some(Filter(Reason::ShellHistory)), "{h}");
        }
        assert_eq!(verdict("home/a/fish_history"), None);
        assert_eq!(verdict("home/a/.bash_history_notes/x"), None);
        assert_eq!(
            classify(Path::new("home/a/.config/amibundle/identity"), true),
            Some(Filter(Reason::AmibundleIdentity))
        );
        assert_eq!(classify(Path::new("home/a/.config/amibundle"), true), None);
        assert_eq!(classify(Path::new("srv/identity"), true), None);
    }

    #[test]
    fn pem_and_key_files_are_looked_into_except_under_usr() {
        use Verdict::*;
        let check = Some(IfPrivateKey(Reason::PrivateKeyFile));
        assert_eq!(verdict("etc/ssl/certs/ISRG_Root_X1.pem"), check);
        assert_eq!(verdict("etc/ssl/private/server.key"), check);
        assert_eq!(verdict("etc/pki/tls/private/LOCALHOST.KEY"), check);
        assert_eq!(verdict("usr/local/etc/app/tls.pem"), check);
        assert_eq!(verdict("usr/lib/python3.12/test/keycert.pem"), None);
        // Not a PEM name: never opened (the CA bundle of RHEL-like systems).
        assert_eq!(verdict("etc/pki/tls/certs/ca-bundle.crt"), None);
        assert_eq!(verdict("etc/ssl/certs/ca-certificates.crt"), None);
        assert_eq!(verdict("srv/.pem"), None);
    }

    #[test]
    fn classic_leftovers_that_still_make_sense() {
        use Verdict::*;
        let editor = Some(Filter(Reason::EditorTemporary));
        assert_eq!(verdict("etc/.shadow.swp"), editor);
        assert_eq!(verdict("home/a/.notes.txt.swo"), editor);
        assert_eq!(verdict("home/a/#draft.txt#"), editor);
        assert_eq!(verdict("home/a/.#draft.txt"), editor);
        assert_eq!(verdict("home/a/notes.swp"), None);
        assert_eq!(verdict("home/a/.swp"), None);
        assert_eq!(verdict("etc/fstab~"), None);
        assert_eq!(
            verdict("etc/udev/rules.d/70-persistent-net.rules"),
            Some(Filter(Reason::PersistentNetRules))
        );
        assert_eq!(
            verdict("srv/etc/udev/rules.d/70-persistent-net.rules"),
            None
        );
        assert_eq!(verdict("etc/ssh/sshd_config"), None);
    }

    #[test]
    fn private_key_content() {
        assert!(holds_private_key(RSA_KEY.as_bytes()));
        assert!(holds_private_key(OPENSSH_KEY.as_bytes()));
        assert!(holds_private_key(b"-----BEGIN PRIVATE KEY-----\nMIIE\n"));
        assert!(holds_private_key(
            b"-----BEGIN ENCRYPTED PRIVATE KEY-----\r\nMIIE\r\n"
        ));
        assert!(holds_private_key(b"-----BEGIN EC PRIVATE KEY-----\n"));
        assert!(holds_private_key(
            b"-----BEGIN PGP PRIVATE KEY BLOCK-----\n\nlQOYBF\n"
        ));
        assert!(holds_private_key(
            b"---- BEGIN SSH2 ENCRYPTED PRIVATE KEY ----\nComment: x\n"
        ));
        assert!(holds_private_key(b"PuTTY-User-Key-File-3: ssh-ed25519\n"));
        // A certificate and a key in one file (a combined server .pem).
        let combined = format!("{CERT}{CERT}{RSA_KEY}");
        assert!(holds_private_key(combined.as_bytes()));

        assert!(!holds_private_key(CERT.as_bytes()));
        assert!(!holds_private_key(format!("{CERT}{CERT}{CERT}").as_bytes()));
        assert!(!holds_private_key(b"-----BEGIN PUBLIC KEY-----\nMFkw\n"));
        assert!(!holds_private_key(
            b"-----BEGIN PGP PUBLIC KEY BLOCK-----\n"
        ));
        assert!(!holds_private_key(SSH_PUB.as_bytes()));
        // Prose mentioning a key is not a key.
        assert!(!holds_private_key(
            b"# put your PRIVATE KEY in /etc/ssl/private\n"
        ));
        assert!(!holds_private_key(b""));
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
        // Only the candidates were opened: id_ed25519, notes (in .ssh), ISRG_Root_X1.pem,
        // server.key, fullchain-and-key.pem, cert-only.pem. Not the identity's files (the
        // directory went whole), not /usr, not the .crt bundles, not readme.txt.
        assert_eq!(report.contents_checked, 6);
        assert_eq!(
            report.excluded_paths()[0],
            root.join("etc/nginx/fullchain-and-key.pem")
        );
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
