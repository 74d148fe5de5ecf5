//! Finding the EC2 certificate a bundle's key is wrapped for (§11.2): an explicit file, or the
//! first of the environment homes, the fixed system directories and amibundle's cache that
//! holds a file matching the pin; and where that cache is.
//!
//! Bare § numbers in this module refer to docs/format.md.

use std::ffi::OsString;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use openssl::x509::X509;

use super::pins::pin_for_fingerprints;
use super::{CertError, Ec2CertKind, Fingerprints, kind_for_region, load_cert};

/// Directory, relative to an ec2-ami-tools installation root, that holds the certificates
/// (docs/format.md §11.2 items 2–3; the zip has the same layout under its top directory).
pub(super) const AMITOOLS_CERT_SUBDIR: &str = "etc/ec2/amitools";

/// Fixed system directories searched after the environment homes, in order
/// (docs/format.md §11.2 items 3–5).
const SYSTEM_CERT_DIRS: [(CertSource, &str); 3] = [
    (
        CertSource::AmazonLinuxPackage,
        "/opt/aws/amitools/ec2/etc/ec2/amitools",
    ),
    (CertSource::DebianPackage, "/etc/ec2/amitools"),
    (CertSource::Euca2ools, "/usr/share/euca2ools/certs"),
];

/// Cache used when running as root (docs/format.md §11.2 item 6).
const ROOT_CACHE_DIR: &str = "/var/cache/amibundle/ec2-certs";

/// Cache location below `$XDG_CACHE_HOME` (or `~/.cache`).
const USER_CACHE_SUBDIR: &str = "amibundle/ec2-certs";

/// Where a certificate was found (docs/format.md §11.2 lookup order).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CertSource {
    /// `--ec2cert PATH`.
    Explicit,
    /// `$EC2_AMITOOL_HOME/etc/ec2/amitools/`.
    EnvAmitoolHome,
    /// `$EC2_HOME/etc/ec2/amitools/`.
    EnvEc2Home,
    /// `/opt/aws/amitools/ec2/etc/ec2/amitools/` (Amazon Linux's ec2-ami-tools package).
    AmazonLinuxPackage,
    /// `/etc/ec2/amitools/` (Debian's ec2-ami-tools package).
    DebianPackage,
    /// `/usr/share/euca2ools/certs/`.
    Euca2ools,
    /// amibundle's own cache, filled by `amibundle certs install`.
    Cache,
}

impl fmt::Display for CertSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Explicit => "--ec2cert",
            Self::EnvAmitoolHome => "$EC2_AMITOOL_HOME",
            Self::EnvEc2Home => "$EC2_HOME",
            Self::AmazonLinuxPackage => "Amazon Linux ec2-ami-tools package",
            Self::DebianPackage => "Debian ec2-ami-tools package",
            Self::Euca2ools => "euca2ools",
            Self::Cache => "amibundle cache",
        })
    }
}

/// A certificate chosen for wrapping `ec2_encrypted_key`/`iv`, with where it came from.
#[derive(Debug, Clone)]
pub struct Ec2Cert {
    /// The certificate (only its public key is used, §11.1).
    pub x509: X509,
    /// The file it was read from.
    pub path: PathBuf,
    /// The pinned kind; `None` for an acknowledged unpinned explicit certificate.
    pub kind: Option<Ec2CertKind>,
    /// Which lookup step found it.
    pub source: CertSource,
    /// Its fingerprints.
    pub fingerprints: Fingerprints,
}

impl Ec2Cert {}

/// The lookup environment: explicit choice, environment variables, fixed directories and cache.
/// Built from the real environment by [`CertSearch::from_env`]; tests construct it directly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertSearch {
    /// `--ec2cert PATH`.
    pub explicit: Option<PathBuf>,
    /// `--unpinned-ec2cert`: accept an explicit certificate that matches no pin.
    pub allow_unpinned: bool,
    /// `$EC2_AMITOOL_HOME` (unset or empty → `None`).
    pub ec2_amitool_home: Option<PathBuf>,
    /// `$EC2_HOME` (unset or empty → `None`).
    pub ec2_home: Option<PathBuf>,
    /// Directories holding the certificate files directly, searched in order
    /// (docs/format.md §11.2 items 3–5), each with the source it stands for.
    pub system_roots: Vec<(CertSource, PathBuf)>,
    /// Our cache directory (docs/format.md §11.2 item 6).
    pub cache_dir: PathBuf,
}

impl CertSearch {
    /// The real lookup environment: `$EC2_AMITOOL_HOME`, `$EC2_HOME`, the fixed system
    /// directories of §11.2 and [`default_cache_dir`].
    pub fn from_env(explicit: Option<PathBuf>, allow_unpinned: bool) -> Self {
        Self {
            explicit,
            allow_unpinned,
            ec2_amitool_home: non_empty_env("EC2_AMITOOL_HOME").map(PathBuf::from),
            ec2_home: non_empty_env("EC2_HOME").map(PathBuf::from),
            system_roots: SYSTEM_CERT_DIRS
                .iter()
                .map(|(source, dir)| (*source, PathBuf::from(dir)))
                .collect(),
            cache_dir: default_cache_dir(),
        }
    }

    /// The files looked at for `kind` when no explicit certificate is given, in search order.
    pub fn candidates(&self, kind: Ec2CertKind) -> Vec<(CertSource, PathBuf)> {
        let file = kind.file_name();
        let mut out = Vec::new();
        if let Some(home) = &self.ec2_amitool_home {
            out.push((
                CertSource::EnvAmitoolHome,
                home.join(AMITOOLS_CERT_SUBDIR).join(file),
            ));
        }
        if let Some(home) = &self.ec2_home {
            out.push((
                CertSource::EnvEc2Home,
                home.join(AMITOOLS_CERT_SUBDIR).join(file),
            ));
        }
        for (source, dir) in &self.system_roots {
            out.push((*source, dir.join(file)));
        }
        out.push((CertSource::Cache, self.cache_dir.join(file)));
        out
    }
}

fn non_empty_env(name: &str) -> Option<OsString> {
    std::env::var_os(name).filter(|v| !v.is_empty())
}

/// One place [`resolve`] looked in and what it found there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LookedAt {
    /// The lookup step.
    pub source: CertSource,
    /// The file looked for.
    pub path: PathBuf,
    /// What was there.
    pub outcome: LookOutcome,
}

/// What a search location held, when it did not yield the certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LookOutcome {
    /// No such file.
    Missing,
    /// The file exists but could not be read or parsed (the error text, with its causes).
    Unusable(String),
    /// The file is a certificate but not the pinned one (its SHA-256 fingerprint).
    Mismatch {
        /// SHA-256 of the file's certificate, uppercase colon-separated.
        sha256: String,
    },
}

impl fmt::Display for LookedAt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({}): ", self.path.display(), self.source)?;
        match &self.outcome {
            LookOutcome::Missing => f.write_str("not present"),
            LookOutcome::Unusable(why) => write!(f, "unusable: {why}"),
            LookOutcome::Mismatch { sha256 } => {
                write!(f, "fingerprint SHA-256 {sha256} does not match the pin")
            }
        }
    }
}

/// Displays a list of [`LookedAt`] separated by `; ` inside an error message.
pub(super) struct LookedList<'a>(pub(super) &'a [LookedAt]);

impl fmt::Display for LookedList<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, looked) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{looked}")?;
        }
        Ok(())
    }
}

/// Finds the certificate of `kind` following docs/format.md §11.2.
///
/// An explicit path wins: it must exist and parse; a pinned certificate is accepted (with a
/// warning if it is pinned as a different kind than `kind`, since the user chose it
/// deliberately); an unpinned one only with `allow_unpinned`, then with a warning that EC2 will not
/// be able to decrypt the bundle. Otherwise the locations of [`CertSearch::candidates`] are tried
/// in order; files whose fingerprints are not `kind`'s pin, or that cannot be read, are skipped
/// with a warning naming the path.
///
/// # Errors
///
/// Explicit path unreadable/unparsable ([`CertError::Read`], [`CertError::Parse`], …), explicit
/// unpinned without acknowledgement ([`CertError::Unpinned`]), nothing acceptable found
/// ([`CertError::NotFound`], listing every location and the fix).
pub fn resolve(search: &CertSearch, kind: Ec2CertKind) -> Result<Ec2Cert, CertError> {
    if let Some(path) = &search.explicit {
        return resolve_explicit(path, search.allow_unpinned, Some(kind));
    }
    let mut looked = Vec::new();
    for (source, path) in search.candidates(kind) {
        let outcome = match load_cert(&path) {
            Ok((x509, fingerprints)) => match pin_for_fingerprints(&fingerprints) {
                Some(pin) if pin.kind == kind => {
                    tracing::debug!(path = %path.display(), %source, "using EC2 certificate {kind}");
                    return Ok(Ec2Cert {
                        x509,
                        path,
                        kind: Some(kind),
                        source,
                        fingerprints,
                    });
                }
                _ => LookOutcome::Mismatch {
                    sha256: fingerprints.sha256_hex(),
                },
            },
            Err(CertError::Read { source: e, .. }) if e.kind() == io::ErrorKind::NotFound => {
                LookOutcome::Missing
            }
            Err(e) => LookOutcome::Unusable(crate::bundle::error_chain(&e)),
        };
        if outcome != LookOutcome::Missing {
            // docs/format.md §11.2: a found file that does not match is skipped with a warning
            // naming the path.
            let skipped = LookedAt {
                source,
                path: path.clone(),
                outcome: outcome.clone(),
            };
            tracing::warn!("skipping EC2 certificate candidate {skipped}");
        }
        looked.push(LookedAt {
            source,
            path,
            outcome,
        });
    }
    Err(CertError::NotFound {
        file_name: kind.file_name(),
        looked,
    })
}

/// Like [`resolve`], choosing the kind from `region` with [`kind_for_region`]. When the region
/// has no automatic choice but an explicit certificate is given, the explicit one is used: that
/// is exactly the choice [`CertError::ExplicitCertRequired`] asks for.
///
/// # Errors
///
/// As [`kind_for_region`] (without an explicit certificate) and [`resolve`].
pub fn resolve_for_region(search: &CertSearch, region: &str) -> Result<Ec2Cert, CertError> {
    match (kind_for_region(region), &search.explicit) {
        (Ok(kind), _) => resolve(search, kind),
        (Err(_), Some(path)) => resolve_explicit(path, search.allow_unpinned, None),
        (Err(e), None) => Err(e),
    }
}

/// An explicitly given certificate (`--ec2cert PATH`) when no region says which of Amazon's
/// certificates to expect: accepted if it is any pinned certificate, or unpinned with
/// `allow_unpinned` (with the warning of [`resolve`]).
///
/// # Errors
///
/// As [`resolve`] for an explicit path.
pub fn resolve_explicit_path(path: &Path, allow_unpinned: bool) -> Result<Ec2Cert, CertError> {
    resolve_explicit(path, allow_unpinned, None)
}

/// For `amibundle certs`: the certificate each region would use, or why there is none.
pub fn describe(
    search: &CertSearch,
    regions: &[&str],
) -> Vec<(String, Result<Ec2Cert, CertError>)> {
    regions
        .iter()
        .map(|region| ((*region).to_owned(), resolve_for_region(search, region)))
        .collect()
}

fn resolve_explicit(
    path: &Path,
    allow_unpinned: bool,
    expected: Option<Ec2CertKind>,
) -> Result<Ec2Cert, CertError> {
    let (x509, fingerprints) = load_cert(path)?;
    let kind = match pin_for_fingerprints(&fingerprints) {
        Some(pin) => {
            if let Some(expected) = expected.filter(|e| *e != pin.kind) {
                tracing::warn!(
                    "EC2 certificate {} is Amazon's {}, but {expected} is the one for this region; using it because it was given explicitly",
                    path.display(),
                    pin.kind,
                );
            }
            Some(pin.kind)
        }
        None if allow_unpinned => {
            // docs/format.md §11.2: unpinned only with an explicit acknowledgement, and a
            // warning, because EC2 cannot unwrap a key wrapped for another certificate.
            tracing::warn!(
                "EC2 certificate {} (SHA-256 {}) is not one of Amazon's; EC2 will not be able to decrypt this bundle",
                path.display(),
                fingerprints.sha256_hex(),
            );
            None
        }
        None => {
            return Err(CertError::Unpinned {
                path: path.to_owned(),
                sha256: fingerprints.sha256_hex(),
            });
        }
    };
    Ok(Ec2Cert {
        x509,
        path: path.to_owned(),
        kind,
        source: CertSource::Explicit,
        fingerprints,
    })
}

/// The default cache directory (docs/format.md §11.2 item 6): `/var/cache/amibundle/ec2-certs`
/// for root (euid 0); otherwise `$XDG_CACHE_HOME/amibundle/ec2-certs` or
/// `~/.cache/amibundle/ec2-certs`.
pub fn default_cache_dir() -> PathBuf {
    let is_root = nix::unistd::geteuid().is_root();
    let home = non_empty_env("HOME").map(PathBuf::from).or_else(|| {
        // No $HOME (cron, some service managers): fall back to the passwd entry.
        nix::unistd::User::from_uid(nix::unistd::getuid())
            .ok()
            .flatten()
            .map(|u| u.dir)
    });
    cache_dir_for(is_root, non_empty_env("XDG_CACHE_HOME"), home)
}

pub(super) fn cache_dir_for(
    is_root: bool,
    xdg_cache_home: Option<OsString>,
    home: Option<PathBuf>,
) -> PathBuf {
    if is_root {
        return PathBuf::from(ROOT_CACHE_DIR);
    }
    // The XDG base directory spec says relative values are invalid and must be ignored.
    if let Some(xdg) = xdg_cache_home
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
    {
        return xdg.join(USER_CACHE_SUBDIR);
    }
    match home {
        Some(home) => home.join(".cache").join(USER_CACHE_SUBDIR),
        // Without any home directory the system cache is the only sensible place; reading it
        // works for everyone, and installing there fails with an error naming the path.
        None => PathBuf::from(ROOT_CACHE_DIR),
    }
}
