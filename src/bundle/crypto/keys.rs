//! The user's RSA private key and X.509 certificates (§2, §7, §11.1): loading, the checks a key
//! file must pass, and whether a key and a certificate belong together.
//!
//! Bare § numbers in this module refer to docs/format.md.

use std::fmt;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::{Id, PKey, Private, Public};
use openssl::rsa::Rsa;
use openssl::x509::X509;

use super::{CryptoError, wipe};

fn read_file(path: &Path, what: &'static str) -> Result<Vec<u8>, CryptoError> {
    fs::read(path).map_err(|source| CryptoError::ReadFile {
        what,
        path: path.to_owned(),
        source,
    })
}

fn key_kind(id: Id) -> String {
    match id {
        Id::RSA_PSS => "RSA-PSS".to_owned(),
        Id::EC => "EC".to_owned(),
        Id::DSA => "DSA".to_owned(),
        Id::DH => "DH".to_owned(),
        Id::ED25519 => "Ed25519".to_owned(),
        Id::ED448 => "Ed448".to_owned(),
        other => format!("non-RSA (OpenSSL id {})", other.as_raw()),
    }
}

/// The user's RSA private key (PEM, PKCS#1 or PKCS#8; §2). `Debug` shows only the key size.
pub struct UserKey {
    pub(super) pkey: PKey<Private>,
    pub(super) rsa: Rsa<Private>,
}

impl fmt::Debug for UserKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "UserKey(RSA-{}, <redacted>)", self.rsa.size() * 8)
    }
}

impl UserKey {
    /// Loads the key from `path`. Refuses a file that is readable by group or others
    /// (`mode & 0o077 != 0`) unless `allow_insecure`, a passphrase-protected key and a non-RSA
    /// key.
    pub fn load(path: &Path, allow_insecure: bool) -> Result<Self, CryptoError> {
        let meta = fs::metadata(path).map_err(|source| CryptoError::ReadFile {
            what: "private key",
            path: path.to_owned(),
            source,
        })?;
        let mode = meta.permissions().mode() & 0o7777;
        if mode & 0o077 != 0 {
            if !allow_insecure {
                return Err(CryptoError::InsecureKeyFile {
                    path: path.to_owned(),
                    mode,
                });
            }
            tracing::warn!(
                "private key {} is readable by group or others (mode {mode:04o}): anyone who can \
                 read it can decrypt your bundles; `chmod 600` it",
                path.display()
            );
        }
        let mut pem = read_file(path, "private key")?;
        let result = Self::parse(&pem, format!("private key {}", path.display()));
        wipe(&mut pem);
        result
    }

    /// Parses a PEM private key held in memory.
    pub fn from_pem(pem: &[u8]) -> Result<Self, CryptoError> {
        Self::parse(pem, "private key".to_owned())
    }

    fn parse(pem: &[u8], origin: String) -> Result<Self, CryptoError> {
        let mut asked_passphrase = false;
        // A callback is always supplied: without one OpenSSL would prompt for a passphrase on
        // the controlling terminal. It supplies an empty passphrase and records that one was
        // needed, which identifies encrypted keys in every PEM flavour.
        let parsed = PKey::private_key_from_pem_callback(pem, |_buf| {
            asked_passphrase = true;
            Ok(0)
        });
        let pkey = match parsed {
            Ok(pkey) => pkey,
            Err(_) if asked_passphrase => return Err(CryptoError::EncryptedKey { origin }),
            Err(source) => return Err(CryptoError::ParseKey { origin, source }),
        };
        if pkey.id() != Id::RSA {
            return Err(CryptoError::NotRsa {
                kind: key_kind(pkey.id()),
                origin,
            });
        }
        let rsa = pkey.rsa().map_err(|source| CryptoError::Inspect {
            what: "RSA parameters",
            origin,
            source,
        })?;
        Ok(Self { pkey, rsa })
    }

    /// Modulus length k in bytes (256 for RSA-2048).
    pub fn modulus_bytes(&self) -> usize {
        self.rsa.size() as usize
    }
}

/// An X.509 certificate, used only as a container for an RSA public key: no validity, chain,
/// key-usage or name checks (§7, §11.1).
pub struct Certificate {
    pub(super) x509: X509,
    pub(super) pkey: PKey<Public>,
    pub(super) rsa: Rsa<Public>,
}

impl fmt::Debug for Certificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Certificate")
            .field("subject_cn", &self.subject_cn())
            .field("sha256", &hex::encode(self.sha256_fingerprint()))
            .finish()
    }
}

impl Certificate {
    /// Loads a certificate file, PEM or DER (detected by the `-----BEGIN` marker).
    pub fn load(path: &Path) -> Result<Self, CryptoError> {
        let bytes = read_file(path, "certificate")?;
        let origin = format!("certificate {}", path.display());
        if looks_like_pem(&bytes) {
            Self::parse_pem(&bytes, origin)
        } else {
            Self::parse_der(&bytes, origin)
        }
    }

    /// Parses a PEM certificate held in memory.
    pub fn from_pem(pem: &[u8]) -> Result<Self, CryptoError> {
        Self::parse_pem(pem, "certificate".to_owned())
    }

    /// Parses a DER certificate held in memory.
    pub fn from_der(der: &[u8]) -> Result<Self, CryptoError> {
        Self::parse_der(der, "certificate".to_owned())
    }

    fn parse_pem(pem: &[u8], origin: String) -> Result<Self, CryptoError> {
        match X509::from_pem(pem) {
            Ok(x509) => Self::from_x509(x509, origin),
            Err(source) => Err(CryptoError::ParseCert {
                origin,
                format: "PEM",
                source,
            }),
        }
    }

    fn parse_der(der: &[u8], origin: String) -> Result<Self, CryptoError> {
        match X509::from_der(der) {
            Ok(x509) => Self::from_x509(x509, origin),
            Err(source) => Err(CryptoError::ParseCert {
                origin,
                format: "DER",
                source,
            }),
        }
    }

    fn from_x509(x509: X509, origin: String) -> Result<Self, CryptoError> {
        let pkey = x509.public_key().map_err(|source| CryptoError::Inspect {
            what: "public key",
            origin: origin.clone(),
            source,
        })?;
        if pkey.id() != Id::RSA {
            return Err(CryptoError::NotRsa {
                kind: key_kind(pkey.id()),
                origin,
            });
        }
        let rsa = pkey.rsa().map_err(|source| CryptoError::Inspect {
            what: "RSA public key",
            origin,
            source,
        })?;
        Ok(Self { x509, pkey, rsa })
    }

    fn fingerprint(&self, md: MessageDigest) -> Vec<u8> {
        // Hashing the DER encoding with a built-in digest only fails on allocation failure;
        // an empty fingerprint then simply matches no pin.
        self.x509.digest(md).map(|d| d.to_vec()).unwrap_or_default()
    }

    /// SHA-1 over the DER encoding (what `openssl x509 -fingerprint` prints; §11.1).
    pub fn sha1_fingerprint(&self) -> [u8; 20] {
        let mut out = [0u8; 20];
        let fp = self.fingerprint(MessageDigest::sha1());
        if fp.len() == out.len() {
            out.copy_from_slice(&fp);
        }
        out
    }

    /// SHA-256 over the DER encoding (§11.1).
    pub fn sha256_fingerprint(&self) -> [u8; 32] {
        let mut out = [0u8; 32];
        let fp = self.fingerprint(MessageDigest::sha256());
        if fp.len() == out.len() {
            out.copy_from_slice(&fp);
        }
        out
    }

    /// The subject's first common name, if any.
    pub fn subject_cn(&self) -> Option<String> {
        let entry = self
            .x509
            .subject_name()
            .entries_by_nid(Nid::COMMONNAME)
            .next()?;
        entry.data().to_string().ok()
    }

    /// Modulus length k in bytes (128 for the RSA-1024 EC2 certificates).
    pub fn modulus_bytes(&self) -> usize {
        self.rsa.size() as usize
    }
}

fn looks_like_pem(bytes: &[u8]) -> bool {
    bytes.windows(10).any(|w| w == b"-----BEGIN")
}

/// Refuses a certificate whose public key (RSA n and e) is not the public half of `key` (§2:
/// checked before bundling, unlike the reference). The paths only name the files in the error.
pub fn check_pair(
    key: &UserKey,
    cert: &Certificate,
    key_path: &Path,
    cert_path: &Path,
) -> Result<(), CryptoError> {
    if key.rsa.n() == cert.rsa.n() && key.rsa.e() == cert.rsa.e() {
        Ok(())
    } else {
        Err(CryptoError::KeyCertMismatch {
            key_path: key_path.to_owned(),
            cert_path: cert_path.to_owned(),
        })
    }
}
