//! Amazon's three EC2 certificates (§11.1): which one a region needs, and the SHA-1 and
//! SHA-256 fingerprints a file must match to be used as one of them.
//!
//! Bare § numbers in this module refer to docs/format.md.

use std::fmt;

use openssl::error::ErrorStack;
use openssl::hash::MessageDigest;
use openssl::x509::X509;

use super::CertError;

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
#[cfg(test)]
pub fn pins() -> &'static [Pin] {
    &PINS
}

/// The pin `x509` matches, comparing BOTH its SHA-1 and SHA-256 fingerprints; `None` if it
/// matches no pin (or its fingerprints cannot be computed).
#[cfg(test)]
pub fn pin_for(x509: &X509) -> Option<&'static Pin> {
    let fp = Fingerprints::of(x509).ok()?;
    pin_for_fingerprints(&fp)
}

pub(super) fn pin_for_fingerprints(fp: &Fingerprints) -> Option<&'static Pin> {
    let matches = |p: &Pin| p.sha1 == fp.sha1 && p.sha256 == fp.sha256;
    if let Some(pin) = PINS.iter().find(|p| matches(p)) {
        return Some(pin);
    }
    #[cfg(test)]
    if let Some(pin) = super::test_pins::find(matches) {
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
}

/// Formats a fingerprint like `openssl x509 -fingerprint`: uppercase hex bytes joined by `:`.
pub fn fingerprint_hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}
