//! EC2 certificates: which one a region needs, where to find it, and whether a found file is
//! really Amazon's.
//!
//! `ec2_encrypted_key`/`ec2_encrypted_iv` are wrapped with an Amazon certificate that depends on
//! the partition (docs/format.md §11.1). Those certificates are Amazon-licensed and MUST NOT be
//! part of this project (§11.2), so this module only pins their SHA-1 and SHA-256 fingerprints,
//! looks the files up in the places other tools install them, and can copy them out of the
//! official `ec2-ami-tools.zip` into our own cache on request. Any file that does not match its
//! pin is skipped; an explicitly given unpinned certificate (test setups, private clouds) is used
//! only with a separate acknowledgement.
//!
//! Bare § numbers in this module refer to docs/format.md.

use std::ffi::OsString;
use std::fmt;
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use openssl::error::ErrorStack;
use openssl::hash::MessageDigest;
use openssl::x509::X509;

/// Largest certificate file we read. Amazon's files are about 1–2 KiB; the limit keeps a wrong
/// path (a device, a huge file) or a zip bomb from being slurped into memory.
const MAX_CERT_FILE_BYTES: u64 = 64 * 1024;

/// Directory, relative to an ec2-ami-tools installation root, that holds the certificates
/// (docs/format.md §11.2 items 2–3; the zip has the same layout under its top directory).
const AMITOOLS_CERT_SUBDIR: &str = "etc/ec2/amitools";

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

/// Mode of the cache directories we create: the certificates are public, and a root-filled
/// system cache must be readable by unprivileged bundling runs.
const CACHE_DIR_MODE: u32 = 0o755;

/// Mode of installed certificate files (public data).
const CACHE_FILE_MODE: u32 = 0o644;

/// Errors of EC2 certificate selection, lookup and installation.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// The region has no EC2 certificate we can choose automatically.
    #[error(
        "choosing the EC2 certificate for region {region}: {reason}; pass --ec2cert PATH to choose one explicitly"
    )]
    ExplicitCertRequired {
        /// The region asked for.
        region: String,
        /// Why no certificate can be chosen.
        reason: &'static str,
    },
    /// A certificate file could not be read.
    #[error("reading EC2 certificate {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// A certificate file is larger than any certificate could be.
    #[error("reading EC2 certificate {path}: file is larger than {limit} bytes, not a certificate")]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// The size limit in bytes.
        limit: u64,
    },
    /// A certificate file is not a PEM X.509 certificate.
    #[error("parsing EC2 certificate {path} as PEM X.509")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The OpenSSL error.
        #[source]
        source: ErrorStack,
    },
    /// Computing a certificate's fingerprints failed.
    #[error("computing the fingerprints of EC2 certificate {path}")]
    Fingerprint {
        /// The file (or zip entry).
        path: PathBuf,
        /// The OpenSSL error.
        #[source]
        source: ErrorStack,
    },
    /// Encoding a verified certificate as PEM for the cache failed.
    #[error("encoding EC2 certificate {path} as PEM")]
    EncodePem {
        /// The zip entry the certificate came from.
        path: PathBuf,
        /// The OpenSSL error.
        #[source]
        source: ErrorStack,
    },
    /// An explicitly given certificate matches no pin and unpinned use was not acknowledged.
    #[error(
        "EC2 certificate {path} (SHA-256 {sha256}) is none of Amazon's pinned EC2 certificates, so EC2 would not be able to decrypt the bundle; pass --unpinned-ec2cert to use it anyway (test setups, private clouds)"
    )]
    Unpinned {
        /// The file.
        path: PathBuf,
        /// Its SHA-256 fingerprint, uppercase colon-separated.
        sha256: String,
    },
    /// No acceptable certificate was found in any search location.
    #[error(
        "EC2 certificate {file_name} not found; looked in: {}; install it with `amibundle certs install --from ec2-ami-tools.zip` (the official archive from https://s3.amazonaws.com/ec2-downloads/ec2-ami-tools.zip) or pass --ec2cert PATH",
        LookedList(looked)
    )]
    NotFound {
        /// The file name searched for.
        file_name: &'static str,
        /// Every place looked in, in search order, with what was found there.
        looked: Vec<LookedAt>,
    },
    /// The ec2-ami-tools zip could not be opened.
    #[error("opening ec2-ami-tools archive {path}")]
    OpenZip {
        /// The archive.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// The ec2-ami-tools zip could not be read as a zip archive.
    #[error("reading ec2-ami-tools archive {path} as a zip file")]
    ReadZip {
        /// The archive.
        path: PathBuf,
        /// The zip error.
        #[source]
        source: zip::result::ZipError,
    },
    /// The zip holds none of the three EC2 certificates.
    #[error(
        "ec2-ami-tools archive {path} contains none of cert-ec2.pem, cert-ec2-gov.pem, cert-ec2-cn-north-1.pem under ec2-ami-tools-<version>/etc/ec2/amitools/; is it the official ec2-ami-tools.zip?"
    )]
    NoCertsInZip {
        /// The archive.
        path: PathBuf,
    },
    /// Creating the cache directory failed.
    #[error("creating EC2 certificate cache directory {path}")]
    CreateCacheDir {
        /// The directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// Writing a certificate into the cache failed.
    #[error("writing EC2 certificate {path}")]
    WriteCache {
        /// The file being written (temporary or final).
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
}

/// Which of Amazon's three EC2 certificates (docs/format.md §11.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Ec2CertKind {
    /// `cert-ec2.pem`: every commercial region.
    Commercial,
    /// `cert-ec2-gov.pem`: `us-gov-west-1`.
    GovWest1,
    /// `cert-ec2-cn-north-1.pem`: `cn-north-1`.
    CnNorth1,
}

impl Ec2CertKind {
    /// The certificate's file name in ec2-ami-tools installations and in our cache.
    pub fn file_name(self) -> &'static str {
        match self {
            Self::Commercial => "cert-ec2.pem",
            Self::GovWest1 => "cert-ec2-gov.pem",
            Self::CnNorth1 => "cert-ec2-cn-north-1.pem",
        }
    }

    /// All three kinds, in table order.
    pub fn all() -> [Self; 3] {
        [Self::Commercial, Self::GovWest1, Self::CnNorth1]
    }

    /// The kind whose file is called `name`, if any.
    pub fn from_file_name(name: &str) -> Option<Self> {
        Self::all().into_iter().find(|k| k.file_name() == name)
    }
}

impl fmt::Display for Ec2CertKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.file_name())
    }
}

/// Chooses the EC2 certificate for `region` (docs/format.md §11.1).
///
/// Commercial regions → [`Ec2CertKind::Commercial`], `us-gov-west-1` → [`Ec2CertKind::GovWest1`],
/// `cn-north-1` → [`Ec2CertKind::CnNorth1`].
///
/// # Errors
///
/// [`CertError::ExplicitCertRequired`] for `us-gov-east-1`, `cn-northwest-1` and any other
/// GovCloud or China region (which certificate EC2 expects there is unverified, §11.1 and §13
/// item 6), for the ISO partitions (unsupported) and for names that are not shaped like a
/// commercial region (`xx-name-N`), whose partition we cannot tell.
pub fn kind_for_region(region: &str) -> Result<Ec2CertKind, CertError> {
    match region {
        "us-gov-west-1" => return Ok(Ec2CertKind::GovWest1),
        "cn-north-1" => return Ok(Ec2CertKind::CnNorth1),
        _ => {}
    }
    let refuse = |reason| {
        Err(CertError::ExplicitCertRequired {
            region: region.to_owned(),
            reason,
        })
    };
    if region.starts_with("us-gov-") || region.starts_with("cn-") {
        return refuse(
            "which certificate EC2 expects in GovCloud and China regions other than us-gov-west-1 and cn-north-1 is unverified (the same one per partition is only a guess)",
        );
    }
    let components: Vec<&str> = region.split('-').collect();
    if components.iter().any(|c| c.starts_with("iso")) {
        return refuse("the ISO partitions are not supported");
    }
    if !is_commercial_region_shape(&components) {
        return refuse(
            "it is not shaped like a commercial region name (xx-name-N), so its partition and EC2 certificate are unknown",
        );
    }
    Ok(Ec2CertKind::Commercial)
}

/// `xx-name[-name…]-N`: two-letter area, lowercase words, a number. Other partitions use other
/// shapes (for example `eusc-de-east-1`), so anything else is refused rather than guessed.
fn is_commercial_region_shape(components: &[&str]) -> bool {
    let [area, middle @ .., number] = components else {
        return false;
    };
    area.len() == 2
        && area.bytes().all(|b| b.is_ascii_lowercase())
        && !middle.is_empty()
        && middle
            .iter()
            .all(|w| !w.is_empty() && w.bytes().all(|b| b.is_ascii_lowercase()))
        && !number.is_empty()
        && number.bytes().all(|b| b.is_ascii_digit())
}

/// A pinned Amazon EC2 certificate (one row of docs/format.md §11.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pin {
    /// Which certificate.
    pub kind: Ec2CertKind,
    /// SHA-1 over the certificate's DER encoding.
    pub sha1: [u8; 20],
    /// SHA-256 over the certificate's DER encoding.
    pub sha256: [u8; 32],
    /// The subject's common name (for listings; not checked, the fingerprints cover it).
    pub subject_cn: &'static str,
    /// RSA modulus size in bits (for listings).
    pub key_bits: u32,
}

/// The pins, transcribed from docs/format.md §11.1 (a test re-parses that table's hex strings).
static PINS: [Pin; 3] = [
    Pin {
        kind: Ec2CertKind::Commercial,
        sha1: [
            0xD3, 0x27, 0xBA, 0xA0, 0xF8, 0xD3, 0xEE, 0x9C, 0xBB, 0x3C, 0xFB, 0xFE, 0x3B, 0x52,
            0x65, 0xA8, 0x40, 0x53, 0x5D, 0x0D,
        ],
        sha256: [
            0xF5, 0x70, 0x7A, 0xED, 0xB5, 0x42, 0x51, 0x79, 0x8F, 0x6B, 0xBC, 0xC1, 0xA1, 0x0A,
            0x9C, 0xFD, 0x1F, 0x21, 0xFC, 0x69, 0x90, 0x9E, 0xA1, 0x27, 0x63, 0x19, 0xAA, 0x2F,
            0x09, 0x8E, 0x47, 0x90,
        ],
        subject_cn: "AES Test",
        key_bits: 1024,
    },
    Pin {
        kind: Ec2CertKind::GovWest1,
        sha1: [
            0x89, 0xD9, 0x37, 0x5A, 0x6F, 0xD0, 0x90, 0xDE, 0x28, 0xE1, 0x63, 0x78, 0x6D, 0xEE,
            0x5E, 0x7E, 0x19, 0x6D, 0xAA, 0xB8,
        ],
        sha256: [
            0x49, 0x56, 0xF9, 0x66, 0xC8, 0xA0, 0xE7, 0x5D, 0x22, 0xB9, 0xB2, 0x34, 0x42, 0x95,
            0x94, 0x64, 0x46, 0x8F, 0x20, 0xA6, 0x76, 0x01, 0x0C, 0xE8, 0x23, 0xB4, 0x59, 0x92,
            0xE1, 0x22, 0xF7, 0xA9,
        ],
        subject_cn: "EC2 AMI Authority",
        key_bits: 1024,
    },
    Pin {
        kind: Ec2CertKind::CnNorth1,
        sha1: [
            0x1C, 0x93, 0x69, 0x12, 0xA3, 0x18, 0x42, 0xA5, 0x72, 0xDD, 0xE3, 0xE0, 0xB6, 0x3B,
            0xCE, 0x66, 0xDF, 0x77, 0x20, 0x2F,
        ],
        sha256: [
            0x84, 0x80, 0xE2, 0xB6, 0x0A, 0x0E, 0x51, 0x3C, 0x32, 0x2E, 0x04, 0x60, 0x1F, 0x81,
            0xA5, 0xFF, 0x67, 0xA9, 0xCA, 0xD5, 0x53, 0x89, 0x92, 0x5C, 0x6C, 0xB6, 0xED, 0x6D,
            0x01, 0x89, 0xAA, 0x09,
        ],
        subject_cn: "AMI Manifests",
        key_bits: 2048,
    },
];

/// Amazon's three EC2 certificate pins (docs/format.md §11.1), in [`Ec2CertKind::all`] order.
pub fn pins() -> &'static [Pin] {
    &PINS
}

/// The pin `x509` matches, comparing BOTH its SHA-1 and SHA-256 fingerprints; `None` if it
/// matches no pin (or its fingerprints cannot be computed).
pub fn pin_for(x509: &X509) -> Option<&'static Pin> {
    let fp = Fingerprints::of(x509).ok()?;
    pin_for_fingerprints(&fp)
}

fn pin_for_fingerprints(fp: &Fingerprints) -> Option<&'static Pin> {
    let matches = |p: &Pin| p.sha1 == fp.sha1 && p.sha256 == fp.sha256;
    if let Some(pin) = PINS.iter().find(|p| matches(p)) {
        return Some(pin);
    }
    #[cfg(test)]
    if let Some(pin) = test_pins::find(matches) {
        return Some(pin);
    }
    None
}

/// A certificate's fingerprints over its DER encoding (what `openssl x509 -fingerprint` prints).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fingerprints {
    /// SHA-1 over DER.
    pub sha1: [u8; 20],
    /// SHA-256 over DER.
    pub sha256: [u8; 32],
}

impl Fingerprints {
    /// Computes both fingerprints of `x509`.
    ///
    /// # Errors
    ///
    /// OpenSSL failures (DER encoding or digest).
    pub fn of(x509: &X509) -> Result<Self, ErrorStack> {
        let sha1 = x509.digest(MessageDigest::sha1())?;
        let sha256 = x509.digest(MessageDigest::sha256())?;
        let mut fp = Self {
            sha1: [0; 20],
            sha256: [0; 32],
        };
        // Invariant: SHA-1 digests are 20 bytes and SHA-256 digests 32 by definition, so these
        // length-checked copies cannot panic.
        fp.sha1.copy_from_slice(&sha1);
        fp.sha256.copy_from_slice(&sha256);
        Ok(fp)
    }

    /// SHA-256 as uppercase colon-separated hex.
    pub fn sha256_hex(&self) -> String {
        fingerprint_hex(&self.sha256)
    }

    /// SHA-1 as uppercase colon-separated hex.
    pub fn sha1_hex(&self) -> String {
        fingerprint_hex(&self.sha1)
    }
}

/// Formats a fingerprint like `openssl x509 -fingerprint`: uppercase hex bytes joined by `:`.
pub fn fingerprint_hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

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

impl Ec2Cert {
    /// The certificate as PEM bytes.
    ///
    /// # Errors
    ///
    /// OpenSSL encoding failures.
    pub fn to_pem(&self) -> Result<Vec<u8>, ErrorStack> {
        self.x509.to_pem()
    }
}

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
struct LookedList<'a>(&'a [LookedAt]);

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
            Err(e) => LookOutcome::Unusable(super::error_chain(&e)),
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

/// Reads, parses and fingerprints the PEM certificate at `path`.
fn load_cert(path: &Path) -> Result<(X509, Fingerprints), CertError> {
    let read_err = |source| CertError::Read {
        path: path.to_owned(),
        source,
    };
    let file = File::open(path).map_err(read_err)?;
    let mut pem = Vec::new();
    file.take(MAX_CERT_FILE_BYTES + 1)
        .read_to_end(&mut pem)
        .map_err(read_err)?;
    parse_cert(&pem, path)
}

/// Parses and fingerprints PEM bytes; `path` names them in errors.
fn parse_cert(pem: &[u8], path: &Path) -> Result<(X509, Fingerprints), CertError> {
    if pem.len() as u64 > MAX_CERT_FILE_BYTES {
        return Err(CertError::TooLarge {
            path: path.to_owned(),
            limit: MAX_CERT_FILE_BYTES,
        });
    }
    let x509 = X509::from_pem(pem).map_err(|source| CertError::Parse {
        path: path.to_owned(),
        source,
    })?;
    let fingerprints = Fingerprints::of(&x509).map_err(|source| CertError::Fingerprint {
        path: path.to_owned(),
        source,
    })?;
    Ok((x509, fingerprints))
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

fn cache_dir_for(
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
                    SkipReason::Unusable(super::error_chain(&e)),
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
        write_atomically(&path, &pem)?;
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

/// Writes `bytes` to `path` with mode 0644 via a temporary file in the same directory and a
/// rename, so readers never see a partial certificate.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), CertError> {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(CertError::WriteCache {
            path: path.to_owned(),
            source: io::Error::new(io::ErrorKind::InvalidInput, "not a file path"),
        });
    };
    let mut tmp_name = OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".tmp.{}", std::process::id()));
    let tmp = dir.join(tmp_name);
    let tmp_err = |source| CertError::WriteCache {
        path: tmp.clone(),
        source,
    };

    let open = || OpenOptions::new().write(true).create_new(true).open(&tmp);
    let mut file = match open() {
        // Left over from a crashed run that had our pid: it is ours to replace.
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            fs::remove_file(&tmp).map_err(tmp_err)?;
            open()
        }
        other => other,
    }
    .map_err(tmp_err)?;
    let written = file
        .write_all(bytes)
        .and_then(|()| file.set_permissions(fs::Permissions::from_mode(CACHE_FILE_MODE)))
        .and_then(|()| file.sync_all())
        .map_err(tmp_err)
        .and_then(|()| {
            fs::rename(&tmp, path).map_err(|source| CertError::WriteCache {
                path: path.to_owned(),
                source,
            })
        });
    if written.is_err() {
        // Best effort: the original error is what matters.
        let _ = fs::remove_file(&tmp);
    }
    written
}

/// Test-only pin injection (docs/format.md §14.1: library tests inject the stand-in EC2
/// certificate directly). Compiled only under `cfg(test)`, so production code cannot add pins.
/// Pins are per thread (each test runs on its own thread) and removed when the guard drops.
#[cfg(test)]
pub(crate) mod test_pins {
    use std::cell::RefCell;

    use openssl::x509::X509;

    use super::{Ec2CertKind, Fingerprints, Pin};

    thread_local! {
        static INJECTED: RefCell<Vec<&'static Pin>> = const { RefCell::new(Vec::new()) };
    }

    /// Removes the injected pin when dropped.
    #[must_use = "the pin is removed when the guard is dropped"]
    pub(crate) struct TestPinGuard(&'static Pin);

    impl Drop for TestPinGuard {
        fn drop(&mut self) {
            INJECTED.with(|pins| pins.borrow_mut().retain(|p| !std::ptr::eq(*p, self.0)));
        }
    }

    /// Treats `x509` as the pinned certificate of `kind` on this thread until the guard drops.
    pub(crate) fn inject(kind: Ec2CertKind, x509: &X509) -> TestPinGuard {
        let fp = Fingerprints::of(x509).expect("fingerprinting the test certificate");
        let bits = x509
            .public_key()
            .expect("test certificate public key")
            .bits();
        // Leaked so pin_for can hand out `&'static Pin` like for the real pins; tests only.
        let pin: &'static Pin = Box::leak(Box::new(Pin {
            kind,
            sha1: fp.sha1,
            sha256: fp.sha256,
            subject_cn: "injected test pin",
            key_bits: bits,
        }));
        INJECTED.with(|pins| pins.borrow_mut().push(pin));
        TestPinGuard(pin)
    }

    pub(super) fn find(matches: impl Fn(&Pin) -> bool) -> Option<&'static Pin> {
        INJECTED.with(|pins| pins.borrow().iter().copied().find(|p| matches(p)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn testdata() -> PathBuf {
        crate::test_data()
    }

    fn stand_in_path() -> PathBuf {
        testdata().join("keys/ec2-test-cert.pem")
    }

    fn stand_in() -> X509 {
        X509::from_pem(&fs::read(stand_in_path()).unwrap()).unwrap()
    }

    /// A search with nothing configured except an (empty) cache in `root`.
    fn empty_search(root: &Path) -> CertSearch {
        CertSearch {
            explicit: None,
            allow_unpinned: false,
            ec2_amitool_home: None,
            ec2_home: None,
            system_roots: Vec::new(),
            cache_dir: root.join("cache"),
        }
    }

    fn parse_colon_hex(s: &str) -> Vec<u8> {
        s.split(':')
            .map(|b| {
                assert_eq!(b.len(), 2, "{s}");
                u8::from_str_radix(b, 16).unwrap()
            })
            .collect()
    }

    #[test]
    fn pins_match_spec_table() {
        // Copied verbatim from docs/format.md §11.1.
        let spec = [
            (
                "cert-ec2.pem",
                "D3:27:BA:A0:F8:D3:EE:9C:BB:3C:FB:FE:3B:52:65:A8:40:53:5D:0D",
                "F5:70:7A:ED:B5:42:51:79:8F:6B:BC:C1:A1:0A:9C:FD:1F:21:FC:69:90:9E:A1:27:63:19:AA:2F:09:8E:47:90",
                "AES Test",
                1024,
            ),
            (
                "cert-ec2-gov.pem",
                "89:D9:37:5A:6F:D0:90:DE:28:E1:63:78:6D:EE:5E:7E:19:6D:AA:B8",
                "49:56:F9:66:C8:A0:E7:5D:22:B9:B2:34:42:95:94:64:46:8F:20:A6:76:01:0C:E8:23:B4:59:92:E1:22:F7:A9",
                "EC2 AMI Authority",
                1024,
            ),
            (
                "cert-ec2-cn-north-1.pem",
                "1C:93:69:12:A3:18:42:A5:72:DD:E3:E0:B6:3B:CE:66:DF:77:20:2F",
                "84:80:E2:B6:0A:0E:51:3C:32:2E:04:60:1F:81:A5:FF:67:A9:CA:D5:53:89:92:5C:6C:B6:ED:6D:01:89:AA:09",
                "AMI Manifests",
                2048,
            ),
        ];
        assert_eq!(pins().len(), spec.len());
        for (pin, (file, sha1, sha256, cn, bits)) in pins().iter().zip(spec) {
            assert_eq!(pin.kind.file_name(), file);
            assert_eq!(pin.sha1.to_vec(), parse_colon_hex(sha1), "{file}");
            assert_eq!(pin.sha256.to_vec(), parse_colon_hex(sha256), "{file}");
            assert_eq!(fingerprint_hex(&pin.sha1), sha1);
            assert_eq!(fingerprint_hex(&pin.sha256), sha256);
            assert_eq!(pin.subject_cn, cn);
            assert_eq!(pin.key_bits, bits);
        }
        let kinds: Vec<_> = pins().iter().map(|p| p.kind).collect();
        assert_eq!(kinds, Ec2CertKind::all());
    }

    #[test]
    fn file_names_round_trip() {
        assert_eq!(Ec2CertKind::Commercial.file_name(), "cert-ec2.pem");
        assert_eq!(Ec2CertKind::GovWest1.file_name(), "cert-ec2-gov.pem");
        assert_eq!(Ec2CertKind::CnNorth1.file_name(), "cert-ec2-cn-north-1.pem");
        for kind in Ec2CertKind::all() {
            assert_eq!(Ec2CertKind::from_file_name(kind.file_name()), Some(kind));
        }
        assert_eq!(Ec2CertKind::from_file_name("cert-ec2-foo.pem"), None);
    }

    #[test]
    fn stand_in_fingerprint_matches_spec_and_no_pin() {
        let fp = Fingerprints::of(&stand_in()).unwrap();
        let hex = fp.sha256_hex();
        // docs/format.md §14.1 gives `03:DE:77:8F:…:DB:03:31`.
        assert!(hex.starts_with("03:DE:77:8F:"), "{hex}");
        assert!(hex.ends_with(":DB:03:31"), "{hex}");
        assert_eq!(hex.len(), 32 * 3 - 1);
        assert!(pin_for(&stand_in()).is_none());
    }

    #[test]
    fn regions_map_to_kinds() {
        for region in [
            "us-east-1",
            "eu-west-1",
            "ap-south-2",
            "ap-southeast-5",
            "il-central-1",
        ] {
            assert_eq!(
                kind_for_region(region).unwrap(),
                Ec2CertKind::Commercial,
                "{region}"
            );
        }
        assert_eq!(
            kind_for_region("us-gov-west-1").unwrap(),
            Ec2CertKind::GovWest1
        );
        assert_eq!(
            kind_for_region("cn-north-1").unwrap(),
            Ec2CertKind::CnNorth1
        );
    }

    #[test]
    fn unverified_and_unknown_regions_require_explicit_cert() {
        for region in [
            "us-gov-east-1",
            "cn-northwest-1",
            "us-gov-central-1",
            "us-iso-east-1",
            "us-isob-east-1",
            "eusc-de-east-1",
            "",
            "US-EAST-1",
            "us-east",
            "useast1",
        ] {
            let err = kind_for_region(region).unwrap_err();
            assert!(
                matches!(&err, CertError::ExplicitCertRequired { region: r, .. } if r == region),
                "{region}: {err:?}"
            );
            assert!(err.to_string().contains("--ec2cert"), "{err}");
        }
        let msg = kind_for_region("us-gov-east-1").unwrap_err().to_string();
        assert!(
            msg.contains("us-gov-east-1") && msg.contains("unverified"),
            "{msg}"
        );
    }

    #[test]
    fn explicit_unpinned_refused_without_flag() {
        let dir = tempfile::tempdir().unwrap();
        let search = CertSearch {
            explicit: Some(stand_in_path()),
            ..empty_search(dir.path())
        };
        let err = resolve(&search, Ec2CertKind::Commercial).unwrap_err();
        assert!(matches!(err, CertError::Unpinned { .. }), "{err:?}");
        let msg = err.to_string();
        assert!(msg.contains("--unpinned-ec2cert"), "{msg}");
        assert!(
            msg.contains(&stand_in_path().display().to_string()),
            "{msg}"
        );
        assert!(msg.contains("03:DE:77:8F:"), "{msg}");
    }

    #[test]
    fn explicit_unpinned_accepted_with_flag() {
        let dir = tempfile::tempdir().unwrap();
        let search = CertSearch {
            explicit: Some(stand_in_path()),
            allow_unpinned: true,
            ..empty_search(dir.path())
        };
        let cert = resolve(&search, Ec2CertKind::Commercial).unwrap();
        assert_eq!(cert.kind, None);
        assert_eq!(cert.source, CertSource::Explicit);
        assert_eq!(cert.path, stand_in_path());
        assert_eq!(cert.x509.to_der().unwrap(), stand_in().to_der().unwrap());
        // An explicit certificate is the choice regions without an automatic one ask for.
        let cert = resolve_for_region(&search, "us-gov-east-1").unwrap();
        assert_eq!(cert.source, CertSource::Explicit);
    }

    #[test]
    fn explicit_pinned_gets_its_kind() {
        let _pin = test_pins::inject(Ec2CertKind::GovWest1, &stand_in());
        let dir = tempfile::tempdir().unwrap();
        let search = CertSearch {
            explicit: Some(stand_in_path()),
            ..empty_search(dir.path())
        };
        let cert = resolve_for_region(&search, "us-gov-west-1").unwrap();
        assert_eq!(cert.kind, Some(Ec2CertKind::GovWest1));
    }

    #[test]
    fn explicit_missing_or_garbage_names_path() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.pem");
        let search = CertSearch {
            explicit: Some(missing.clone()),
            allow_unpinned: true,
            ..empty_search(dir.path())
        };
        let err = resolve(&search, Ec2CertKind::Commercial).unwrap_err();
        assert!(matches!(err, CertError::Read { .. }), "{err:?}");
        assert!(err.to_string().contains(&missing.display().to_string()));

        let garbage = dir.path().join("garbage.pem");
        fs::write(&garbage, "not a certificate\n").unwrap();
        let search = CertSearch {
            explicit: Some(garbage.clone()),
            ..search
        };
        let err = resolve(&search, Ec2CertKind::Commercial).unwrap_err();
        assert!(matches!(err, CertError::Parse { .. }), "{err:?}");
        assert!(err.to_string().contains(&garbage.display().to_string()));
    }

    /// A search whose every location holds a copy of `pem` as `cert-ec2.pem`.
    fn populated_search(root: &Path, pem: &[u8]) -> CertSearch {
        let file = Ec2CertKind::Commercial.file_name();
        let amitool = root.join("amitool");
        let ec2 = root.join("ec2home");
        for home in [&amitool, &ec2] {
            let d = home.join(AMITOOLS_CERT_SUBDIR);
            fs::create_dir_all(&d).unwrap();
            fs::write(d.join(file), pem).unwrap();
        }
        let mut system_roots = Vec::new();
        for (source, name) in [
            (CertSource::AmazonLinuxPackage, "opt"),
            (CertSource::DebianPackage, "etc"),
            (CertSource::Euca2ools, "euca"),
        ] {
            let d = root.join(name);
            fs::create_dir_all(&d).unwrap();
            fs::write(d.join(file), pem).unwrap();
            system_roots.push((source, d));
        }
        let cache_dir = root.join("cache");
        fs::create_dir_all(&cache_dir).unwrap();
        fs::write(cache_dir.join(file), pem).unwrap();
        CertSearch {
            explicit: None,
            allow_unpinned: false,
            ec2_amitool_home: Some(amitool),
            ec2_home: Some(ec2),
            system_roots,
            cache_dir,
        }
    }

    #[test]
    fn lookup_order_follows_spec() {
        let _pin = test_pins::inject(Ec2CertKind::Commercial, &stand_in());
        let dir = tempfile::tempdir().unwrap();
        let pem = fs::read(stand_in_path()).unwrap();
        let search = populated_search(dir.path(), &pem);
        let expected = search.candidates(Ec2CertKind::Commercial);
        let sources: Vec<_> = expected.iter().map(|(s, _)| *s).collect();
        assert_eq!(
            sources,
            [
                CertSource::EnvAmitoolHome,
                CertSource::EnvEc2Home,
                CertSource::AmazonLinuxPackage,
                CertSource::DebianPackage,
                CertSource::Euca2ools,
                CertSource::Cache,
            ]
        );
        // Remove the winner each round: the next location in order must be chosen.
        for (source, path) in &expected {
            let cert = resolve(&search, Ec2CertKind::Commercial).unwrap();
            assert_eq!((cert.source, &cert.path), (*source, path));
            assert_eq!(cert.kind, Some(Ec2CertKind::Commercial));
            fs::remove_file(path).unwrap();
        }
        let err = resolve(&search, Ec2CertKind::Commercial).unwrap_err();
        assert!(matches!(err, CertError::NotFound { .. }), "{err:?}");
    }

    #[test]
    fn env_homes_use_amitools_subdir() {
        let search = CertSearch {
            ec2_amitool_home: Some(PathBuf::from("/a")),
            ec2_home: Some(PathBuf::from("/b")),
            ..empty_search(Path::new("/c"))
        };
        let paths: Vec<_> = search
            .candidates(Ec2CertKind::GovWest1)
            .into_iter()
            .map(|(_, p)| p)
            .collect();
        assert_eq!(
            paths,
            [
                PathBuf::from("/a/etc/ec2/amitools/cert-ec2-gov.pem"),
                PathBuf::from("/b/etc/ec2/amitools/cert-ec2-gov.pem"),
                PathBuf::from("/c/cache/cert-ec2-gov.pem"),
            ]
        );
        let real = CertSearch::from_env(None, false);
        let dirs: Vec<_> = real.system_roots.iter().map(|(_, d)| d.clone()).collect();
        assert_eq!(
            dirs,
            [
                PathBuf::from("/opt/aws/amitools/ec2/etc/ec2/amitools"),
                PathBuf::from("/etc/ec2/amitools"),
                PathBuf::from("/usr/share/euca2ools/certs"),
            ]
        );
    }

    #[test]
    fn mismatching_files_are_skipped() {
        let pin = test_pins::inject(Ec2CertKind::Commercial, &stand_in());
        let dir = tempfile::tempdir().unwrap();
        let pem = fs::read(stand_in_path()).unwrap();
        let search = populated_search(dir.path(), &pem);
        let candidates = search.candidates(Ec2CertKind::Commercial);
        // A valid certificate that is not the pinned one, garbage, and a certificate pinned as
        // another kind, in the five higher-priority places.
        let other = fs::read(testdata().join("keys/user-cert.pem")).unwrap();
        fs::write(&candidates[0].1, &other).unwrap();
        fs::write(&candidates[1].1, "garbage").unwrap();
        fs::remove_file(&candidates[2].1).unwrap();
        fs::remove_file(&candidates[3].1).unwrap();
        fs::remove_file(&candidates[4].1).unwrap();
        let cert = resolve(&search, Ec2CertKind::Commercial).unwrap();
        assert_eq!(cert.source, CertSource::Cache);

        // Pinned, but as GovWest1: not acceptable as cert-ec2.pem.
        drop(pin);
        let _gov = test_pins::inject(Ec2CertKind::GovWest1, &stand_in());
        let err = resolve(&search, Ec2CertKind::Commercial).unwrap_err();
        let CertError::NotFound { looked, .. } = &err else {
            panic!("{err:?}");
        };
        assert!(matches!(looked[0].outcome, LookOutcome::Mismatch { .. }));
        assert!(matches!(looked[1].outcome, LookOutcome::Unusable(_)));
        assert_eq!(looked[2].outcome, LookOutcome::Missing);
        assert!(matches!(looked[5].outcome, LookOutcome::Mismatch { .. }));
    }

    #[test]
    fn nothing_found_lists_every_location_and_fix() {
        let dir = tempfile::tempdir().unwrap();
        let mut search = populated_search(dir.path(), b"");
        for (_, path) in search.candidates(Ec2CertKind::Commercial) {
            fs::remove_file(path).unwrap();
        }
        search.ec2_home = Some(dir.path().join("ec2home"));
        let err = resolve(&search, Ec2CertKind::Commercial).unwrap_err();
        let msg = err.to_string();
        for (_, path) in search.candidates(Ec2CertKind::Commercial) {
            assert!(msg.contains(&path.display().to_string()), "{msg}");
        }
        assert!(
            msg.contains("$EC2_AMITOOL_HOME") && msg.contains("amibundle cache"),
            "{msg}"
        );
        assert!(
            msg.contains("amibundle certs install --from ec2-ami-tools.zip"),
            "{msg}"
        );
        assert!(msg.contains("--ec2cert PATH"), "{msg}");
        let CertError::NotFound { looked, file_name } = err else {
            panic!()
        };
        assert_eq!(file_name, "cert-ec2.pem");
        assert_eq!(looked.len(), 6);
        assert!(looked.iter().all(|l| l.outcome == LookOutcome::Missing));
    }

    #[test]
    fn describe_reports_per_region() {
        let _pin = test_pins::inject(Ec2CertKind::Commercial, &stand_in());
        let dir = tempfile::tempdir().unwrap();
        let search = empty_search(dir.path());
        fs::create_dir_all(&search.cache_dir).unwrap();
        fs::copy(stand_in_path(), search.cache_dir.join("cert-ec2.pem")).unwrap();
        let out = describe(&search, &["us-east-1", "us-gov-west-1", "cn-northwest-1"]);
        assert_eq!(out.len(), 3);
        assert_eq!(out[0].0, "us-east-1");
        assert_eq!(
            out[0].1.as_ref().unwrap().kind,
            Some(Ec2CertKind::Commercial)
        );
        assert!(matches!(
            out[1].1,
            Err(CertError::NotFound {
                file_name: "cert-ec2-gov.pem",
                ..
            })
        ));
        assert!(matches!(
            out[2].1,
            Err(CertError::ExplicitCertRequired { .. })
        ));
    }

    #[test]
    fn cache_dir_rules() {
        let home = Some(PathBuf::from("/home/u"));
        assert_eq!(
            cache_dir_for(true, Some("/x".into()), home.clone()),
            PathBuf::from("/var/cache/amibundle/ec2-certs")
        );
        assert_eq!(
            cache_dir_for(false, Some("/x".into()), home.clone()),
            PathBuf::from("/x/amibundle/ec2-certs")
        );
        assert_eq!(
            cache_dir_for(false, Some("relative".into()), home.clone()),
            PathBuf::from("/home/u/.cache/amibundle/ec2-certs")
        );
        assert_eq!(
            cache_dir_for(false, None, home),
            PathBuf::from("/home/u/.cache/amibundle/ec2-certs")
        );
        assert!(default_cache_dir().ends_with("amibundle/ec2-certs"));
    }

    fn make_zip(path: &Path, entries: &[(&str, &[u8])]) {
        let mut w = zip::ZipWriter::new(File::create(path).unwrap());
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated);
        for (name, data) in entries {
            w.start_file(*name, opts).unwrap();
            w.write_all(data).unwrap();
        }
        w.finish().unwrap();
    }

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn install_pinned_cert_from_zip() {
        let _pin = test_pins::inject(Ec2CertKind::Commercial, &stand_in());
        let dir = tempfile::tempdir().unwrap();
        let pem = fs::read(stand_in_path()).unwrap();
        let zip_path = dir.path().join("ec2-ami-tools.zip");
        make_zip(
            &zip_path,
            &[
                ("ec2-ami-tools-1.5.7/", b""),
                ("ec2-ami-tools-1.5.7/bin/ec2-bundle-image", b"#!/bin/sh\n"),
                ("ec2-ami-tools-1.5.7/etc/ec2/amitools/cert-ec2.pem", &pem),
            ],
        );
        let cache = dir.path().join("a/b/cache");
        let report = install_from_zip(&zip_path, &cache).unwrap();
        assert_eq!(report.skipped, []);
        assert_eq!(report.installed.len(), 1);
        let installed = &report.installed[0];
        assert_eq!(installed.kind, Ec2CertKind::Commercial);
        assert_eq!(installed.path, cache.join("cert-ec2.pem"));
        assert_eq!(mode(&installed.path), 0o644);
        assert_eq!(mode(&cache), 0o755);
        assert_eq!(mode(&dir.path().join("a")), 0o755);
        let stored = X509::from_pem(&fs::read(&installed.path).unwrap()).unwrap();
        assert_eq!(stored.to_der().unwrap(), stand_in().to_der().unwrap());
        // Only the certificate landed in the cache (no temporary files left).
        let names: Vec<_> = fs::read_dir(&cache)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["cert-ec2.pem"]);
        // And resolve finds it there.
        let search = CertSearch {
            cache_dir: cache,
            ..empty_search(dir.path())
        };
        assert_eq!(
            resolve(&search, Ec2CertKind::Commercial).unwrap().source,
            CertSource::Cache
        );
    }

    #[test]
    fn install_skips_unpinned_cert() {
        let dir = tempfile::tempdir().unwrap();
        let pem = fs::read(stand_in_path()).unwrap();
        let zip_path = dir.path().join("ec2-ami-tools.zip");
        make_zip(
            &zip_path,
            &[
                ("ec2-ami-tools-1.5.7/etc/ec2/amitools/cert-ec2.pem", &pem),
                (
                    "ec2-ami-tools-1.5.7/etc/ec2/amitools/cert-ec2-gov.pem",
                    b"junk",
                ),
                (
                    "ec2-ami-tools-1.5.7/etc/ec2/amitools/cert-ec2-new.pem",
                    &pem,
                ),
            ],
        );
        let cache = dir.path().join("cache");
        let report = install_from_zip(&zip_path, &cache).unwrap();
        assert_eq!(report.installed, []);
        assert_eq!(report.skipped.len(), 3);
        assert_eq!(
            report.skipped[0].entry,
            "ec2-ami-tools-1.5.7/etc/ec2/amitools/cert-ec2.pem"
        );
        assert!(
            matches!(&report.skipped[0].reason, SkipReason::NotPinned { sha256 } if sha256.starts_with("03:DE:77:8F:"))
        );
        assert!(matches!(report.skipped[1].reason, SkipReason::Unusable(_)));
        assert_eq!(report.skipped[2].reason, SkipReason::UnknownFileName);
        assert!(!cache.join("cert-ec2.pem").exists());
    }

    #[test]
    fn install_never_writes_outside_cache() {
        let _pin = test_pins::inject(Ec2CertKind::Commercial, &stand_in());
        let dir = tempfile::tempdir().unwrap();
        let pem = fs::read(stand_in_path()).unwrap();
        let zip_path = dir.path().join("evil.zip");
        let evil = [
            "../etc/ec2/amitools/cert-ec2.pem",
            "../../x/etc/ec2/amitools/cert-ec2.pem",
            "/etc/ec2/amitools/cert-ec2.pem",
            "a/b/etc/ec2/amitools/cert-ec2.pem",
            "etc/ec2/amitools/cert-ec2.pem",
            "./etc/ec2/amitools/cert-ec2.pem",
        ];
        let entries: Vec<(&str, &[u8])> = evil.iter().map(|n| (*n, pem.as_slice())).collect();
        make_zip(&zip_path, &entries);
        let work = dir.path().join("work");
        let cache = work.join("cache");
        let report = install_from_zip(&zip_path, &cache).unwrap();
        assert_eq!(report.installed, []);
        assert_eq!(report.skipped.len(), evil.len());
        assert!(
            report
                .skipped
                .iter()
                .all(|s| s.reason == SkipReason::UnexpectedPath)
        );
        // Nothing was created anywhere: the temp dir holds only the zip.
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["evil.zip"]);
    }

    #[test]
    fn install_duplicate_entries_install_once() {
        let _pin = test_pins::inject(Ec2CertKind::Commercial, &stand_in());
        let dir = tempfile::tempdir().unwrap();
        let pem = fs::read(stand_in_path()).unwrap();
        let zip_path = dir.path().join("dup.zip");
        make_zip(
            &zip_path,
            &[
                ("ec2-ami-tools-1.5.7/etc/ec2/amitools/cert-ec2.pem", &pem),
                ("ec2-ami-tools-1.5.8/etc/ec2/amitools/cert-ec2.pem", &pem),
            ],
        );
        let report = install_from_zip(&zip_path, &dir.path().join("c")).unwrap();
        assert_eq!(report.installed.len(), 1);
        assert_eq!(report.skipped[0].reason, SkipReason::Duplicate);
    }

    #[test]
    fn install_errors_name_the_archive() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("cache");

        let missing = dir.path().join("missing.zip");
        let err = install_from_zip(&missing, &cache).unwrap_err();
        assert!(matches!(err, CertError::OpenZip { .. }), "{err:?}");
        assert!(err.to_string().contains(&missing.display().to_string()));

        let not_zip = dir.path().join("not.zip");
        fs::write(&not_zip, "this is not a zip archive").unwrap();
        let err = install_from_zip(&not_zip, &cache).unwrap_err();
        assert!(matches!(err, CertError::ReadZip { .. }), "{err:?}");
        assert!(err.to_string().contains(&not_zip.display().to_string()));

        let no_certs = dir.path().join("empty.zip");
        make_zip(&no_certs, &[("ec2-ami-tools-1.5.7/bin/x", b"x")]);
        let err = install_from_zip(&no_certs, &cache).unwrap_err();
        assert!(matches!(err, CertError::NoCertsInZip { .. }), "{err:?}");
        assert!(err.to_string().contains(&no_certs.display().to_string()));
        assert!(!cache.exists());
    }
}
