//! Installing the EC2 certificates from the official `ec2-ami-tools.zip` into amibundle's cache
//! (§11.2): only the three known entries are read, each is checked against its pin, and entry
//! names are never used as output paths.
//!
//! Bare § numbers in this module refer to docs/format.md.

use std::fmt;
use std::fs::{self, DirBuilder, File};
use std::io::{self, Read};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::pins::pin_for_fingerprints;
use super::{CertError, Ec2CertKind, Fingerprints, MAX_CERT_FILE_BYTES, parse_cert};
use crate::bundle::fsutil;

/// Mode of the cache directories we create: the certificates are public, and a root-filled
/// system cache must be readable by unprivileged bundling runs.
const CACHE_DIR_MODE: u32 = 0o755;

/// Mode of installed certificate files (public data).
const CACHE_FILE_MODE: u32 = 0o644;

/// What [`install_from_zip`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InstallReport {
    /// Certificates written into the cache.
    pub installed: Vec<InstalledCert>,
    /// Zip entries that looked like certificates but were not installed.
    pub skipped: Vec<SkippedEntry>,
}

/// A certificate stored in the cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstalledCert {
    /// Which certificate.
    pub kind: Ec2CertKind,
    /// The zip entry it came from.
    pub entry: String,
    /// Where it was written.
    pub path: PathBuf,
    /// Its fingerprints (equal to the pin).
    pub fingerprints: Fingerprints,
}

/// A zip entry that was not installed, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedEntry {
    /// The entry's name in the zip.
    pub entry: String,
    /// Why it was skipped.
    pub reason: SkipReason,
}

/// Why a zip entry was not installed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SkipReason {
    /// `cert-ec2*.pem` in the certificate directory, but not one of the three known names.
    UnknownFileName,
    /// A known file name at an unexpected or unsafe place (not `<top>/etc/ec2/amitools/`, or
    /// with `..`, `.`, absolute or empty components).
    UnexpectedPath,
    /// The same certificate was already installed from an earlier entry.
    Duplicate,
    /// Could not be read or parsed (the error text, with its causes).
    Unusable(String),
    /// A certificate, but not the pinned one for its file name.
    NotPinned {
        /// SHA-256 of the entry's certificate, uppercase colon-separated.
        sha256: String,
    },
}

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnknownFileName => f.write_str("not one of the known EC2 certificate file names"),
            Self::UnexpectedPath => {
                f.write_str("not at ec2-ami-tools-<version>/etc/ec2/amitools/ in the archive")
            }
            Self::Duplicate => f.write_str("duplicate of an entry already installed"),
            Self::Unusable(why) => write!(f, "unusable: {why}"),
            Self::NotPinned { sha256 } => {
                write!(f, "fingerprint SHA-256 {sha256} does not match the pin")
            }
        }
    }
}

/// How a zip entry name relates to the certificates we extract.
enum EntryClass {
    /// Not certificate-shaped at all: ignored silently.
    Other,
    /// `<top>/etc/ec2/amitools/<known file>`.
    Candidate(Ec2CertKind),
    /// Certificate-shaped but not extracted.
    Skip(SkipReason),
}

fn classify_entry(name: &str) -> EntryClass {
    let components: Vec<&str> = name.split('/').collect();
    let Some((file, dirs)) = components.split_last() else {
        return EntryClass::Other;
    };
    let in_cert_dir = dirs.ends_with(&["etc", "ec2", "amitools"]);
    match Ec2CertKind::from_file_name(file) {
        None if in_cert_dir && file.starts_with("cert-ec2") && file.ends_with(".pem") => {
            EntryClass::Skip(SkipReason::UnknownFileName)
        }
        None => EntryClass::Other,
        Some(kind) => {
            // The official layout is exactly `ec2-ami-tools-<version>/etc/ec2/amitools/<file>`;
            // the name is only matched, never used as an output path, but anything else is
            // reported so a tampered or unexpected archive is visible.
            let top_ok =
                |top: &str| !matches!(top, "" | "." | "..") && !top.contains(['\\', '\0', ':']);
            if dirs.len() == 4 && in_cert_dir && top_ok(dirs[0]) {
                EntryClass::Candidate(kind)
            } else {
                EntryClass::Skip(SkipReason::UnexpectedPath)
            }
        }
    }
}

/// Installs the EC2 certificates from the official `ec2-ami-tools.zip` into `cache_dir`
/// (docs/format.md §11.2).
///
/// Only entries `<top>/etc/ec2/amitools/{cert-ec2.pem,cert-ec2-gov.pem,cert-ec2-cn-north-1.pem}`
/// are read, each is checked against its pin, and pinned ones are written to
/// `cache_dir/<fixed file name>` (directories created 0755, files 0644, via a temporary file and
/// rename). Entry names are never used as output paths. Entries that do not match their pin are
/// skipped, logged and reported.
///
/// # Errors
///
/// The archive cannot be opened or read as a zip ([`CertError::OpenZip`], [`CertError::ReadZip`]),
/// holds no certificate entry at all ([`CertError::NoCertsInZip`]), or the cache cannot be
/// written ([`CertError::CreateCacheDir`], [`CertError::WriteCache`]).
pub fn install_from_zip(zip_path: &Path, cache_dir: &Path) -> Result<InstallReport, CertError> {
    let file = File::open(zip_path).map_err(|source| CertError::OpenZip {
        path: zip_path.to_owned(),
        source,
    })?;
    let zip_err = |source| CertError::ReadZip {
        path: zip_path.to_owned(),
        source,
    };
    let mut archive = zip::ZipArchive::new(io::BufReader::new(file)).map_err(zip_err)?;

    let mut report = InstallReport::default();
    let mut saw_certificate_entry = false;
    for index in 0..archive.len() {
        // Classify by name first and open only candidates, so an encrypted or oddly compressed
        // unrelated entry cannot stop the installation.
        let Some(name) = archive.name_for_index(index).map(str::to_owned) else {
            continue;
        };
        let kind = match classify_entry(&name) {
            EntryClass::Other => continue,
            EntryClass::Skip(reason) => {
                saw_certificate_entry = true;
                skip(&mut report, zip_path, name, reason);
                continue;
            }
            EntryClass::Candidate(kind) => kind,
        };
        saw_certificate_entry = true;
        if report.installed.iter().any(|i| i.kind == kind) {
            skip(&mut report, zip_path, name, SkipReason::Duplicate);
            continue;
        }
        let entry_path = zip_path.join(&name);
        let parsed = read_zip_entry(&mut archive, index, &entry_path)
            .and_then(|pem| parse_cert(&pem, &entry_path));
        let (x509, fingerprints) = match parsed {
            Ok(parsed) => parsed,
            Err(e) => {
                skip(
                    &mut report,
                    zip_path,
                    name,
                    SkipReason::Unusable(crate::bundle::error_chain(&e)),
                );
                continue;
            }
        };
        if pin_for_fingerprints(&fingerprints).is_none_or(|pin| pin.kind != kind) {
            let reason = SkipReason::NotPinned {
                sha256: fingerprints.sha256_hex(),
            };
            skip(&mut report, zip_path, name, reason);
            continue;
        }
        // Store the canonical PEM of the verified certificate, not the entry's raw bytes, so
        // nothing but the pinned certificate (no trailing data) lands in the cache.
        let pem = x509.to_pem().map_err(|source| CertError::EncodePem {
            path: entry_path.clone(),
            source,
        })?;
        create_dirs(cache_dir)?;
        let path = cache_dir.join(kind.file_name());
        // Via a temporary file and a rename, so readers never see a partial certificate.
        let tmp_suffix = format!(".tmp.{}", std::process::id());
        fsutil::write_atomically(&path, &pem, CACHE_FILE_MODE, &tmp_suffix).map_err(|e| {
            CertError::WriteCache {
                path: e.path,
                source: e.source,
            }
        })?;
        tracing::info!("installed EC2 certificate {} from {name}", path.display());
        report.installed.push(InstalledCert {
            kind,
            entry: name,
            path,
            fingerprints,
        });
    }
    if !saw_certificate_entry {
        return Err(CertError::NoCertsInZip {
            path: zip_path.to_owned(),
        });
    }
    Ok(report)
}

/// Reads entry `index` (at most [`MAX_CERT_FILE_BYTES`] + 1 bytes, so [`parse_cert`] can
/// reject oversized entries); `entry_path` names it in errors.
fn read_zip_entry<R: io::Read + io::Seek>(
    archive: &mut zip::ZipArchive<R>,
    index: usize,
    entry_path: &Path,
) -> Result<Vec<u8>, CertError> {
    let read_err = |source| CertError::Read {
        path: entry_path.to_owned(),
        source,
    };
    let entry = archive
        .by_index(index)
        .map_err(|e| read_err(io::Error::other(e)))?;
    let mut pem = Vec::new();
    entry
        .take(MAX_CERT_FILE_BYTES + 1)
        .read_to_end(&mut pem)
        .map_err(read_err)?;
    Ok(pem)
}

fn skip(report: &mut InstallReport, zip_path: &Path, entry: String, reason: SkipReason) {
    tracing::warn!(
        "not installing {entry} from {}: {reason}",
        zip_path.display()
    );
    report.skipped.push(SkippedEntry { entry, reason });
}

/// Creates `dir` and missing ancestors with mode 0755 regardless of the umask (a root-filled
/// system cache must be readable by unprivileged runs); existing directories are left alone.
fn create_dirs(dir: &Path) -> Result<(), CertError> {
    let mut missing = Vec::new();
    let mut cursor = Some(dir);
    while let Some(d) = cursor {
        if d.as_os_str().is_empty() || d.is_dir() {
            break;
        }
        missing.push(d);
        cursor = d.parent();
    }
    for d in missing.into_iter().rev() {
        let err = |source| CertError::CreateCacheDir {
            path: d.to_owned(),
            source,
        };
        match DirBuilder::new().mode(CACHE_DIR_MODE).create(d) {
            Ok(()) => {
                fs::set_permissions(d, fs::Permissions::from_mode(CACHE_DIR_MODE)).map_err(err)?
            }
            // Created concurrently by another run: fine, it is not ours to chmod.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && d.is_dir() => {}
            Err(e) => return Err(err(e)),
        }
    }
    Ok(())
}
