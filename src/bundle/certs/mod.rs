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
//! The module is split along those lines: `pins` (the three certificates, which one a region
//! needs, their pinned fingerprints), `search` (the lookup order of §11.2 and the cache
//! location) and `install` (copying the certificates out of `ec2-ami-tools.zip`).
//!
//! Bare § numbers in this module refer to docs/format.md.

mod install;
mod pins;
mod search;
#[cfg(test)]
mod tests;

pub use self::install::install_from_zip;
pub use self::pins::{Ec2CertKind, Fingerprints, kind_for_region};
#[cfg(test)]
pub use self::pins::{Pin, fingerprint_hex, pin_for, pins};
pub use self::search::{
    CertSearch, Ec2Cert, LookedAt, default_cache_dir, describe, resolve_explicit_path,
    resolve_for_region,
};
#[cfg(test)]
pub use self::search::{CertSource, LookOutcome, resolve};

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use openssl::error::ErrorStack;
use openssl::x509::X509;

use self::search::LookedList;

/// Largest certificate file we read. Amazon's files are about 1–2 KiB; the limit keeps a wrong
/// path (a device, a huge file) or a zip bomb from being slurped into memory.
const MAX_CERT_FILE_BYTES: u64 = 64 * 1024;

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
