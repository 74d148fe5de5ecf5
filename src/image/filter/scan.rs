//! The scan of the source tree ([`scan`]): directory listings only, on the source's
//! filesystem like the copy, never following a symlink; the path rules decide, and the regular
//! files they ask about are opened and read (at most 4 KiB of each unless it starts like a
//! key).

use std::collections::HashSet;
use std::ffi::{CString, OsStr};
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::dir::Type;
use nix::errno::Errno;
use nix::fcntl::{AT_FDCWD, AtFlags, OFlag};
use nix::sys::stat::{SFlag, fstat, fstatat};

use super::{
    FilterError, FilterOptions, FilterReport, Filtered, Reason, Verdict, classify, content,
};
use crate::image::root::open_noatime;

/// How much of a candidate file is searched for a private key. A PEM file may hold a
/// certificate chain before its key (a few KiB per certificate); 1 MiB covers any realistic
/// combined file while a CA bundle (about 200 KiB) is still read only once. Files larger than
/// this are not looked into by the any-name rule (no key file is that large).
const CONTENT_SCAN_LIMIT_BYTES: u64 = 1 << 20;

/// What the any-name rule reads first: enough to see a key file's start.
const CONTENT_HEAD_BYTES: u64 = 4096;

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
                if content::may_be_key_file(&self.buf) {
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

fn dir_flags() -> OFlag {
    OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC
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
    let mut names: Vec<(CString, Option<Type>)> = crate::image::root::read_dir_entries(dir)?
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

    use crate::image::filter::content::tests::{CERT, RSA_KEY};
    const OPENSSH_KEY: &str = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n-----END OPENSSH PRIVATE KEY-----\n";
    const SSH_PUB: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI user@host\n";

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
