//! The bundle manifest (docs/format.md §9, §10): the 2007-10-10 data model, its exact
//! serializer (§9.2), the lenient parser (§10.1–10.3), the strict check applied to our own
//! output, signing and signature verification (§9.5), and the small naming and input rules the
//! manifest depends on (bundle name §2, account §2, part names §8.2, `-B` mappings §9.1).
//!
//! This file holds the data model and its errors; `serialize`, `parse`, `strict`, `signature`
//! and `names` hold the rest.
//!
//! Bare § numbers in this module refer to docs/format.md.

mod names;
mod parse;
mod serialize;
mod signature;
mod strict;
#[cfg(test)]
mod tests;

pub use self::names::{
    check_file_name, normalize_account, parse_block_device_mapping, validate_bundle_name,
};
pub use self::signature::verify_signature;
pub use self::strict::check_strict_bytes;

use super::crypto::CryptoError;

/// Largest manifest accepted by the parser. A 100,000-part manifest is about 15 MB; anything
/// larger is not a manifest.
pub const MAX_MANIFEST_BYTES: usize = 16 * 1024 * 1024;

/// Largest part count accepted by the parser: 100,000 parts of 10 MiB is about 1 TB, far above
/// the 10 GiB image limit of §2, so a larger count can only be garbage or an attack.
pub const MAX_PARTS: usize = 100_000;

/// Errors of manifest handling.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// The input is larger than [`MAX_MANIFEST_BYTES`].
    #[error("manifest is {len} bytes, more than the {max}-byte limit; refusing to parse it")]
    TooLarge { len: usize, max: usize },
    /// The input is empty or whitespace only.
    #[error("manifest is empty")]
    Empty,
    /// A pre-version-3 encrypted manifest (§10.3).
    #[error(
        "manifest does not start with '<': not an XML manifest (legacy encrypted manifests are not supported)"
    )]
    LegacyEncrypted,
    /// The input is not UTF-8 text.
    #[error("manifest is not UTF-8 text (byte offset {offset})")]
    NotUtf8 { offset: usize },
    /// The input has a document type declaration (entity expansion risk).
    #[error("manifest has a DOCTYPE; refusing")]
    Doctype,
    /// The input is not well-formed XML.
    #[error("parsing manifest XML")]
    Xml {
        #[source]
        source: roxmltree::Error,
    },
    /// The root element is not `manifest`.
    #[error("manifest root element is <{found}>, expected <manifest>")]
    WrongRoot { found: String },
    /// A required element is missing or empty.
    #[error("manifest has no {path} element (or it is empty)")]
    Missing { path: String },
    /// A required attribute is missing.
    #[error("manifest element {path} has no {attribute} attribute")]
    MissingAttribute {
        path: String,
        attribute: &'static str,
    },
    /// An `algorithm` attribute names an unsupported algorithm (§10.1).
    #[error("manifest element {path} names algorithm {found:?}; only {expected} is supported")]
    BadAlgorithm {
        path: String,
        found: String,
        expected: &'static str,
    },
    /// A number is not plain non-negative decimal or does not fit.
    #[error("manifest field {path} is not a plain decimal number in range: {text:?}")]
    BadNumber { path: String, text: String },
    /// A digest is not 40 hexadecimal characters.
    #[error("manifest field {path} is not a 40-character hexadecimal SHA-1 digest")]
    BadDigest { path: String },
    /// More parts than [`MAX_PARTS`].
    #[error("manifest lists {count} parts, more than the limit of {max}")]
    TooManyParts { count: usize, max: usize },
    /// No part at all.
    #[error("manifest lists no parts")]
    NoParts,
    /// Two parts share an index.
    #[error("manifest lists part index {index} more than once")]
    DuplicatePartIndex { index: u64 },
    /// A part index between 0 and N−1 does not occur.
    #[error(
        "manifest lists {count} parts but none with index {index} (indices must be 0..{count})"
    )]
    MissingPartIndex { index: u64, count: usize },
    /// `parts/@count` disagrees with the number of `part` elements.
    #[error("manifest parts count attribute says {declared} but {found} part elements are listed")]
    PartCountMismatch { declared: u64, found: usize },
    /// A part filename that is not a plain file name (§10.1).
    #[error(
        "manifest part {index} has filename {filename:?}, which is not a plain file name \
         (no '/', NUL, '.' or '..')"
    )]
    BadPartFilename { index: u64, filename: String },
    /// A part name that is not `<image name>.part.<index>`.
    #[error(
        "manifest part {index} has filename {filename:?}, which is not a part of bundle {name:?} \
         (parts are named {name}.part.<index>): refused, so that no other file is ever read, \
         written or deleted under its name"
    )]
    PartNotOfBundle {
        index: u32,
        filename: String,
        name: String,
    },
    /// The parts of the model are not listed with indices 0..N−1 in order.
    #[error(
        "manifest part at position {position} has index {index}; parts must be listed 0..N-1 in order"
    )]
    PartOrder { position: usize, index: u32 },
    /// A value cannot be written without XML escaping (§9.2 item 5).
    #[error("manifest field {path} contains {found:?}, which would need XML escaping; refusing")]
    NeedsEscaping { path: String, found: char },
    /// A value that must be written is empty (§9.2 item 3: no element is ever empty).
    #[error("manifest field {path} is empty")]
    EmptyValue { path: String },
    /// Two block-device mappings share a virtual name (§9.1).
    #[error("block device mapping lists virtual name {virtual_name:?} more than once")]
    DuplicateMapping { virtual_name: String },
    /// A `-B` item is malformed.
    #[error(
        "block device mapping item {item:?} is not of the form VIRTUAL=DEVICE \
         (both sides non-empty, no spaces)"
    )]
    BadMappingSpec { item: String },
    /// The manifest version does not allow the requested operation.
    #[error("manifest version {version:?} has no machine_configuration to sign")]
    NoMachineConfiguration { version: String },
    /// A strict-check failure (§10.1 strict, §9.1).
    #[error("manifest fails the strict check: {problem}")]
    Strict { problem: String },
    /// The bundle name breaks the rule of §2.
    #[error(
        "invalid bundle name {name:?}: it must be 1-100 characters of A-Z, a-z, 0-9, '.', '_' \
         and '-', starting with a letter or digit"
    )]
    InvalidBundleName { name: String },
    /// The account is not 12 digits after removing dashes (§2).
    #[error("invalid AWS account {input:?}: expected 12 digits (dashes allowed)")]
    InvalidAccount { input: String },
    /// Signing the manifest failed.
    #[error("signing the manifest")]
    Sign {
        #[source]
        source: CryptoError,
    },
    /// The signature element is malformed (not hex, or too long for the certificate).
    #[error("checking the manifest signature")]
    Verify {
        #[source]
        source: CryptoError,
    },
    /// The manifest has no signature.
    #[error("manifest has no signature")]
    Unsigned,
    /// A manifest fetched, uploaded or deleted under a name that is not its bundle's.
    #[error(
        "manifest {file} describes the bundle {image}, not {stem} (a bundle's manifest is \
         {image}.manifest.xml): refused, since it would act on another bundle's parts"
    )]
    NotItsName {
        /// The manifest's file name or key.
        file: String,
        /// The stem of that name.
        stem: String,
        /// The image it describes.
        image: String,
    },
    /// Neither signature form verified (§9.5).
    #[error(
        "manifest signature does not verify with {key} (neither the raw nor the re-serialized \
         form): the manifest was altered or signed with another key"
    )]
    SignatureMismatch { key: String },
    /// A signed manifest whose structure could let the signature vouch for other elements than
    /// those read (§9.5): comments, processing instructions, unknown, repeated or misplaced
    /// elements around the signed ones.
    #[error(
        "the manifest's structure is not that of a signed manifest ({problem}): refused, since \
         the signature could then cover other elements than those used"
    )]
    SignedStructure { problem: String },
}

/// The `bundler` block (§9.1 item 2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bundler {
    /// Producer name.
    pub name: String,
    /// Producer version.
    pub version: String,
    /// Producer release.
    pub release: String,
}

impl Bundler {
    /// amibundle's own identity: version `MAJOR.MINOR`, release `PATCH` of the crate (§9.1).
    pub fn amibundle() -> Self {
        Self {
            name: "amibundle".to_owned(),
            version: format!(
                "{}.{}",
                env!("CARGO_PKG_VERSION_MAJOR"),
                env!("CARGO_PKG_VERSION_MINOR")
            ),
            release: env!("CARGO_PKG_VERSION_PATCH").to_owned(),
        }
    }
}

/// One `block_device_mapping/mapping` (§9.1 item 3b).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapping {
    /// `virtual`, e.g. `ami`, `root`, `ephemeral0`, `swap`.
    pub virtual_name: String,
    /// `device`, e.g. `sda1`, `/dev/sda1`.
    pub device: String,
}

/// `machine_configuration` (§9.1 item 3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MachineConfiguration {
    /// `i386`, `x86_64` or `arm64`.
    pub architecture: String,
    /// Mappings in any order; the serializer sorts them by virtual name.
    pub block_device_mapping: Vec<Mapping>,
    /// `aki-…`.
    pub kernel_id: Option<String>,
    /// `ari-…`.
    pub ramdisk_id: Option<String>,
    /// One entry per `product_code` element.
    pub product_codes: Vec<String>,
}

/// One `image/parts/part` (§9.1 item 4m).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartEntry {
    /// `@index`.
    pub index: u32,
    /// `filename`: a plain file name (§8.2, §10.1).
    pub filename: String,
    /// `digest`: SHA-1 of the part, hex as written (lowercase for our output).
    pub digest: String,
}

/// The `image` element (§9.1 item 4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageInfo {
    /// Bundle name (§2).
    pub name: String,
    /// 12-digit account.
    pub user: String,
    /// `machine` for everything we write.
    pub image_type: String,
    /// Only for kernel images; never written by us.
    pub kernel_name: Option<String>,
    /// `ancestor_ami_id`s, oldest first.
    pub ancestry: Vec<String>,
    /// SHA-1 of the tar stream (§4), hex as written.
    pub digest: String,
    /// Apparent image size S.
    pub size: u64,
    /// Ciphertext length |C|.
    pub bundled_size: u64,
    /// Key text wrapped with the EC2 certificate (§7).
    pub ec2_encrypted_key: String,
    /// Key text wrapped with the user certificate (§7).
    pub user_encrypted_key: String,
    /// IV text wrapped with the EC2 certificate (§7).
    pub ec2_encrypted_iv: String,
    /// IV text wrapped with the user certificate (§7).
    pub user_encrypted_iv: String,
    /// Parts in index order.
    pub parts: Vec<PartEntry>,
}

/// Manifest format version (§10.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ManifestVersion {
    /// `2007-10-10`: the current version, the only one we write.
    V20071010,
    /// `2007-08-29` (or `20070829`).
    V20070829,
    /// `3`: no machine configuration; the signature covers `image` alone.
    V3,
    /// Anything else, as written.
    Unknown(String),
}

impl ManifestVersion {
    fn text(&self) -> &str {
        match self {
            Self::V20071010 => "2007-10-10",
            Self::V20070829 => "2007-08-29",
            Self::V3 => "3",
            Self::Unknown(text) => text,
        }
    }

    fn detect(text: &str) -> Self {
        match text {
            "2007-10-10" => Self::V20071010,
            "2007-08-29" | "20070829" => Self::V20070829,
            "3" => Self::V3,
            other => Self::Unknown(other.to_owned()),
        }
    }
}

/// A whole manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    /// Format version.
    pub version: ManifestVersion,
    /// Producer identity.
    pub bundler: Bundler,
    /// Absent only in version 3 manifests (§10.2: assume `i386`).
    pub machine: Option<MachineConfiguration>,
    /// The image element.
    pub image: ImageInfo,
    /// Signature hex (§9.5); empty until [`Manifest::sign`].
    pub signature: String,
}

/// Which bytes a signature verified over (§9.5 verification).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignatureForm {
    /// The element bytes exactly as they appear in the file.
    Raw,
    /// Our exact re-serialization of the parsed elements.
    Reserialized,
}
