//! The bundle manifest (docs/format.md §9, §10): the 2007-10-10 data model, its exact
//! serializer (§9.2), the lenient parser (§10.1–10.3), the strict check applied to our own
//! output, signing and signature verification (§9.5), and the small naming and input rules the
//! manifest depends on (bundle name §2, account §2, part names §8.2, `-B` mappings §9.1).
//!
//! Bare § numbers in this module refer to docs/format.md.

use std::collections::{BTreeMap, BTreeSet};

use super::crypto::{self, CryptoError, SignatureKey, UserKey};
use super::parts::part_width;

/// Largest manifest accepted by the parser. A 100,000-part manifest is about 15 MB; anything
/// larger is not a manifest.
pub const MAX_MANIFEST_BYTES: usize = 16 * 1024 * 1024;

/// Largest part count accepted by the parser: 100,000 parts of 10 MiB is about 1 TB, far above
/// the 10 GiB image limit of §2, so a larger count can only be garbage or an attack.
pub const MAX_PARTS: usize = 100_000;

/// Node limit handed to the XML parser (a 100,000-part manifest has about 700,000 nodes).
const MAX_XML_NODES: u32 = 2_000_000;

/// Longest bundle name (§2).
const MAX_BUNDLE_NAME_BYTES: usize = 100;

/// The XML declaration our serializer writes (§9.2 item 1).
const XML_DECLARATION: &str = "<?xml version='1.0'?>";

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

// ---------------------------------------------------------------------------------------------
// Serializer (§9.2)

/// Appends compact XML with single-quoted attributes, refusing (never escaping) any value that
/// would need escaping.
struct XmlOut {
    out: String,
}

fn check_value(path: &str, value: &str) -> Result<(), ManifestError> {
    if value.is_empty() {
        return Err(ManifestError::EmptyValue {
            path: path.to_owned(),
        });
    }
    if let Some(found) = value
        .chars()
        .find(|&c| matches!(c, '&' | '<' | '>' | '\'' | '"') || c.is_control())
    {
        return Err(ManifestError::NeedsEscaping {
            path: path.to_owned(),
            found,
        });
    }
    Ok(())
}

impl XmlOut {
    fn new() -> Self {
        Self { out: String::new() }
    }

    fn open(&mut self, tag: &str) {
        self.out.push('<');
        self.out.push_str(tag);
        self.out.push('>');
    }

    fn open_attr(
        &mut self,
        path: &str,
        tag: &str,
        attr: &str,
        value: &str,
    ) -> Result<(), ManifestError> {
        check_value(&format!("{path}/@{attr}"), value)?;
        self.out.push('<');
        self.out.push_str(tag);
        self.out.push(' ');
        self.out.push_str(attr);
        self.out.push_str("='");
        self.out.push_str(value);
        self.out.push_str("'>");
        Ok(())
    }

    fn close(&mut self, tag: &str) {
        self.out.push_str("</");
        self.out.push_str(tag);
        self.out.push('>');
    }

    fn leaf(&mut self, path: &str, tag: &str, text: &str) -> Result<(), ManifestError> {
        check_value(path, text)?;
        self.open(tag);
        self.out.push_str(text);
        self.close(tag);
        Ok(())
    }

    fn leaf_attr(
        &mut self,
        path: &str,
        tag: &str,
        attr: &str,
        value: &str,
        text: &str,
    ) -> Result<(), ManifestError> {
        check_value(path, text)?;
        self.open_attr(path, tag, attr, value)?;
        self.out.push_str(text);
        self.close(tag);
        Ok(())
    }
}

/// Mappings sorted bytewise by virtual name (§9.1: `ephemeral10` < `ephemeral2`); duplicates
/// are an error.
fn sorted_mappings(mappings: &[Mapping]) -> Result<Vec<&Mapping>, ManifestError> {
    let mut sorted: Vec<&Mapping> = mappings.iter().collect();
    sorted.sort_by(|a, b| a.virtual_name.as_bytes().cmp(b.virtual_name.as_bytes()));
    for pair in sorted.windows(2) {
        if pair[0].virtual_name == pair[1].virtual_name {
            return Err(ManifestError::DuplicateMapping {
                virtual_name: pair[0].virtual_name.clone(),
            });
        }
    }
    Ok(sorted)
}

fn serialize_machine(mc: &MachineConfiguration, x: &mut XmlOut) -> Result<(), ManifestError> {
    const P: &str = "machine_configuration";
    x.open(P);
    x.leaf(
        "machine_configuration/architecture",
        "architecture",
        &mc.architecture,
    )?;
    // Empty lists omit their wrapper entirely (§9.1 rules: no empty elements).
    if !mc.block_device_mapping.is_empty() {
        x.open("block_device_mapping");
        for m in sorted_mappings(&mc.block_device_mapping)? {
            x.open("mapping");
            x.leaf(
                "machine_configuration/block_device_mapping/mapping/virtual",
                "virtual",
                &m.virtual_name,
            )?;
            x.leaf(
                "machine_configuration/block_device_mapping/mapping/device",
                "device",
                &m.device,
            )?;
            x.close("mapping");
        }
        x.close("block_device_mapping");
    }
    if let Some(kernel) = &mc.kernel_id {
        x.leaf("machine_configuration/kernel_id", "kernel_id", kernel)?;
    }
    if let Some(ramdisk) = &mc.ramdisk_id {
        x.leaf("machine_configuration/ramdisk_id", "ramdisk_id", ramdisk)?;
    }
    if !mc.product_codes.is_empty() {
        x.open("product_codes");
        for code in &mc.product_codes {
            x.leaf(
                "machine_configuration/product_codes/product_code",
                "product_code",
                code,
            )?;
        }
        x.close("product_codes");
    }
    x.close(P);
    Ok(())
}

fn serialize_image(img: &ImageInfo, x: &mut XmlOut) -> Result<(), ManifestError> {
    x.open("image");
    x.leaf("image/name", "name", &img.name)?;
    x.leaf("image/user", "user", &img.user)?;
    x.leaf("image/type", "type", &img.image_type)?;
    if let Some(kernel_name) = &img.kernel_name {
        x.leaf("image/kernel_name", "kernel_name", kernel_name)?;
    }
    if !img.ancestry.is_empty() {
        x.open("ancestry");
        for ami in &img.ancestry {
            x.leaf("image/ancestry/ancestor_ami_id", "ancestor_ami_id", ami)?;
        }
        x.close("ancestry");
    }
    x.leaf_attr("image/digest", "digest", "algorithm", "SHA1", &img.digest)?;
    x.leaf("image/size", "size", &img.size.to_string())?;
    x.leaf(
        "image/bundled_size",
        "bundled_size",
        &img.bundled_size.to_string(),
    )?;
    x.leaf_attr(
        "image/ec2_encrypted_key",
        "ec2_encrypted_key",
        "algorithm",
        "AES-128-CBC",
        &img.ec2_encrypted_key,
    )?;
    x.leaf_attr(
        "image/user_encrypted_key",
        "user_encrypted_key",
        "algorithm",
        "AES-128-CBC",
        &img.user_encrypted_key,
    )?;
    x.leaf(
        "image/ec2_encrypted_iv",
        "ec2_encrypted_iv",
        &img.ec2_encrypted_iv,
    )?;
    x.leaf(
        "image/user_encrypted_iv",
        "user_encrypted_iv",
        &img.user_encrypted_iv,
    )?;
    if img.parts.is_empty() {
        return Err(ManifestError::NoParts);
    }
    x.open_attr(
        "image/parts",
        "parts",
        "count",
        &img.parts.len().to_string(),
    )?;
    for (position, part) in img.parts.iter().enumerate() {
        if part.index as usize != position {
            return Err(ManifestError::PartOrder {
                position,
                index: part.index,
            });
        }
        let path = format!("image/parts/part[{position}]");
        x.open_attr(&path, "part", "index", &part.index.to_string())?;
        x.leaf(&format!("{path}/filename"), "filename", &part.filename)?;
        x.leaf_attr(
            &format!("{path}/digest"),
            "digest",
            "algorithm",
            "SHA1",
            &part.digest,
        )?;
        x.close("part");
    }
    x.close("parts");
    x.close("image");
    Ok(())
}

impl Manifest {
    /// The signed bytes M (§9.5) by the exact serializer: `<machine_configuration>…</image>`
    /// (version 3: the `image` element alone). Mappings are sorted by virtual name; duplicates
    /// are an error.
    pub fn signed_bytes(&self) -> Result<String, ManifestError> {
        let mut x = XmlOut::new();
        match (&self.version, &self.machine) {
            (ManifestVersion::V3, _) | (ManifestVersion::Unknown(_), None) => {}
            (_, Some(mc)) => serialize_machine(mc, &mut x)?,
            (version, None) => {
                return Err(ManifestError::NoMachineConfiguration {
                    version: version.text().to_owned(),
                });
            }
        }
        serialize_image(&self.image, &mut x)?;
        Ok(x.out)
    }

    /// The whole file (§9.2): `<?xml version='1.0'?>` and compact XML with single-quoted
    /// attributes and no final newline. A value that would need escaping, or an empty value
    /// (including a missing signature), is an error.
    pub fn to_xml(&self) -> Result<String, ManifestError> {
        if self.signature.is_empty() {
            return Err(ManifestError::Unsigned);
        }
        let mut x = XmlOut::new();
        x.out.push_str(XML_DECLARATION);
        x.open("manifest");
        x.leaf("version", "version", self.version.text())?;
        x.open("bundler");
        x.leaf("bundler/name", "name", &self.bundler.name)?;
        x.leaf("bundler/version", "version", &self.bundler.version)?;
        x.leaf("bundler/release", "release", &self.bundler.release)?;
        x.close("bundler");
        x.out.push_str(&self.signed_bytes()?);
        x.leaf("signature", "signature", &self.signature)?;
        x.close("manifest");
        Ok(x.out)
    }

    /// Computes M (§9.5), signs it with the user key (RSASSA-PKCS1-v1_5 / SHA-1) and stores
    /// the hex signature.
    pub fn sign(&mut self, key: &UserKey) -> Result<(), ManifestError> {
        let m = self.signed_bytes()?;
        self.signature = crypto::sign_sha1_hex(key, m.as_bytes())
            .map_err(|source| ManifestError::Sign { source })?;
        Ok(())
    }

    /// Lenient parse (§10.1): any or no XML declaration, any quote style, unknown elements
    /// ignored, text trimmed, fields located by path. Refuses DTDs, legacy encrypted manifests
    /// (§10.3), inputs over [`MAX_MANIFEST_BYTES`], unsupported algorithms, malformed numbers
    /// and digests, part lists that are not exactly indices 0..N−1, and part filenames that are
    /// not plain file names. Hex is kept exactly as written.
    pub fn parse(bytes: &[u8]) -> Result<Manifest, ManifestError> {
        if bytes.len() > MAX_MANIFEST_BYTES {
            return Err(ManifestError::TooLarge {
                len: bytes.len(),
                max: MAX_MANIFEST_BYTES,
            });
        }
        let text = manifest_text(bytes)?;
        parse_document(&xml_document(text)?)
    }

    /// Strict check of our own output and of manifests about to be uploaded or registered
    /// (§10.1 strict, §9.1, §2): version 2007-10-10, required elements present, architecture
    /// `i386`/`x86_64`/`arm64`, 12-digit account, bundle name rule, lowercase hex everywhere,
    /// parts 0..N−1 named `<name>.part.<i>` with one shared width of at least the digits of N
    /// (§8.2, §8.3), no duplicate mappings, nothing that needs escaping. Element order and
    /// quoting of a file are checked by [`check_strict_bytes`]. Whether `bundled_size` matches
    /// the part files is the caller's check.
    pub fn check_strict(&self) -> Result<(), ManifestError> {
        let fail = |problem: String| Err(ManifestError::Strict { problem });
        if self.version != ManifestVersion::V20071010 {
            return fail(format!(
                "version is {:?}, not 2007-10-10",
                self.version.text()
            ));
        }
        let Some(mc) = &self.machine else {
            return fail("machine_configuration is missing".to_owned());
        };
        if !matches!(mc.architecture.as_str(), "i386" | "x86_64" | "arm64") {
            return fail(format!(
                "architecture {:?} is not i386, x86_64 or arm64",
                mc.architecture
            ));
        }
        for m in &mc.block_device_mapping {
            check_id("block device mapping virtual name", &m.virtual_name)?;
            check_id("block device mapping device", &m.device)?;
        }
        sorted_mappings(&mc.block_device_mapping)?;
        for (what, id) in [("kernel_id", &mc.kernel_id), ("ramdisk_id", &mc.ramdisk_id)] {
            if let Some(id) = id {
                check_id(what, id)?;
            }
        }
        for code in &mc.product_codes {
            check_id("product_code", code)?;
        }
        let img = &self.image;
        validate_bundle_name(&img.name)?;
        if img.user.len() != 12 || !img.user.bytes().all(|b| b.is_ascii_digit()) {
            return fail(format!("image/user {:?} is not 12 digits", img.user));
        }
        match (img.image_type.as_str(), &img.kernel_name) {
            ("machine" | "ramdisk", None) => {}
            ("kernel", kernel_name) => {
                if let Some(k) = kernel_name {
                    check_id("kernel_name", k)?;
                }
            }
            (other, _) => {
                return fail(format!(
                    "image/type {other:?} with kernel_name is not valid"
                ));
            }
        }
        for ami in &img.ancestry {
            check_id("ancestor_ami_id", ami)?;
        }
        check_lower_hex("image/digest", &img.digest, Some(40))?;
        if img.size == 0 {
            return fail("image/size is 0".to_owned());
        }
        if img.bundled_size == 0 || img.bundled_size % 16 != 0 {
            return fail(format!(
                "image/bundled_size {} is not a non-zero multiple of 16",
                img.bundled_size
            ));
        }
        check_lower_hex("image/ec2_encrypted_key", &img.ec2_encrypted_key, None)?;
        check_lower_hex("image/user_encrypted_key", &img.user_encrypted_key, None)?;
        check_lower_hex("image/ec2_encrypted_iv", &img.ec2_encrypted_iv, None)?;
        check_lower_hex("image/user_encrypted_iv", &img.user_encrypted_iv, None)?;
        check_lower_hex("signature", &self.signature, None)?;
        // Both EC2 fields come from one certificate, and the user fields and the signature from
        // one key pair (§7, §9.5), so their lengths (2k) must agree.
        if img.ec2_encrypted_key.len() != img.ec2_encrypted_iv.len() {
            return fail("ec2_encrypted_key and ec2_encrypted_iv differ in length".to_owned());
        }
        if img.user_encrypted_key.len() != img.user_encrypted_iv.len()
            || img.user_encrypted_key.len() != self.signature.len()
        {
            return fail(
                "user_encrypted_key, user_encrypted_iv and signature differ in length".to_owned(),
            );
        }
        let count = img.parts.len();
        if count == 0 {
            return Err(ManifestError::NoParts);
        }
        if count > MAX_PARTS {
            return Err(ManifestError::TooManyParts {
                count,
                max: MAX_PARTS,
            });
        }
        let prefix = format!("{}.part.", img.name);
        let mut width = None;
        for (position, part) in img.parts.iter().enumerate() {
            if part.index as usize != position {
                return Err(ManifestError::PartOrder {
                    position,
                    index: part.index,
                });
            }
            let digits = part.filename.strip_prefix(&prefix).unwrap_or("");
            let well_formed = !digits.is_empty()
                && digits.bytes().all(|b| b.is_ascii_digit())
                && digits.parse::<u64>().ok() == Some(u64::from(part.index));
            if !well_formed {
                return fail(format!(
                    "part {} is named {:?}, not {prefix}<index>",
                    part.index, part.filename
                ));
            }
            if *width.get_or_insert(digits.len()) != digits.len() {
                return fail("part names do not share one index width".to_owned());
            }
            check_lower_hex(
                &format!("image/parts/part[{position}]/digest"),
                &part.digest,
                Some(40),
            )?;
        }
        if width.unwrap_or(0) < part_width(count as u64) {
            return fail(format!(
                "part index width {} is less than the digits of the part count {count}",
                width.unwrap_or(0)
            ));
        }
        // Finally everything must serialize (no escaping needed, nothing empty).
        self.to_xml()?;
        Ok(())
    }
}

/// Parses `raw`, runs [`Manifest::check_strict`], and requires that the file is exactly our
/// serialization of it (§9.1 element order, §9.2 bytes): the check for our own output and for
/// manifests about to be uploaded or registered.
pub fn check_strict_bytes(raw: &[u8]) -> Result<Manifest, ManifestError> {
    let manifest = Manifest::parse(raw)?;
    manifest.check_strict()?;
    if manifest.to_xml()?.as_bytes() != raw {
        return Err(ManifestError::Strict {
            problem: "the file is not in the exact 2007-10-10 form (element order, quoting or \
                      whitespace differ from the exact form, docs/format.md §9.2)"
                .to_owned(),
        });
    }
    Ok(manifest)
}

/// IDs, devices and codes: `[A-Za-z0-9._/-]` (§9.2 item 5), non-empty.
fn check_id(what: &str, value: &str) -> Result<(), ManifestError> {
    let ok = !value.is_empty()
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'/' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(ManifestError::Strict {
            problem: format!("{what} {value:?} is not made of A-Z, a-z, 0-9, '.', '_', '/', '-'"),
        })
    }
}

fn check_lower_hex(path: &str, value: &str, len: Option<usize>) -> Result<(), ManifestError> {
    let hex_ok = !value.is_empty()
        && value.len() % 2 == 0
        && value
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if !hex_ok {
        return Err(ManifestError::Strict {
            problem: format!("{path} is not lowercase hexadecimal of whole bytes"),
        });
    }
    if len.is_some_and(|len| value.len() != len) {
        return Err(ManifestError::Strict {
            problem: format!(
                "{path} has {} characters, expected {}",
                value.len(),
                len.unwrap_or(0)
            ),
        });
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Parser (§10)

type Node<'a> = roxmltree::Node<'a, 'a>;

fn child<'a>(node: Node<'a>, name: &str) -> Option<Node<'a>> {
    node.children()
        .find(|n| n.is_element() && n.tag_name().name() == name)
}

fn children<'a>(node: Node<'a>, name: &'a str) -> impl Iterator<Item = Node<'a>> + 'a {
    node.children()
        .filter(move |n| n.is_element() && n.tag_name().name() == name)
}

/// Text content of an element (its direct text and CDATA children), trimmed (§10.1).
fn text_of(node: Node<'_>) -> String {
    let mut text = String::new();
    for t in node.children().filter(|n| n.is_text()) {
        text.push_str(t.text().unwrap_or(""));
    }
    text.trim().to_owned()
}

/// Text of an optional child; an empty element counts as absent.
fn opt_text(node: Node<'_>, name: &str) -> Option<String> {
    child(node, name)
        .map(text_of)
        .filter(|text| !text.is_empty())
}

fn req_text(node: Node<'_>, name: &str, path: &str) -> Result<String, ManifestError> {
    opt_text(node, name).ok_or_else(|| ManifestError::Missing {
        path: path.to_owned(),
    })
}

fn req_child<'a>(node: Node<'a>, name: &str, path: &str) -> Result<Node<'a>, ManifestError> {
    child(node, name).ok_or_else(|| ManifestError::Missing {
        path: path.to_owned(),
    })
}

/// §10.1: an `algorithm` attribute other than the expected one is an error; absent means the
/// default.
fn check_algorithm(
    node: Node<'_>,
    path: &str,
    expected: &'static str,
) -> Result<(), ManifestError> {
    match node.attribute("algorithm") {
        Some(found) if found.trim() != expected => Err(ManifestError::BadAlgorithm {
            path: path.to_owned(),
            found: found.to_owned(),
            expected,
        }),
        _ => Ok(()),
    }
}

/// Plain non-negative decimal (leading zeros tolerated on input).
fn parse_decimal(text: &str, path: &str) -> Result<u64, ManifestError> {
    let text = text.trim();
    let bad = || ManifestError::BadNumber {
        path: path.to_owned(),
        text: text.chars().take(40).collect(),
    };
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    text.parse::<u64>().map_err(|_| bad())
}

fn check_digest(text: &str, path: &str) -> Result<(), ManifestError> {
    if text.len() == 40 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(())
    } else {
        Err(ManifestError::BadDigest {
            path: path.to_owned(),
        })
    }
}

/// §10.1: joined to a local directory or an S3 prefix, so it must be a plain file name.
/// The XML text of a manifest file: a UTF-8 BOM dropped, legacy (binary) manifests and DTDs
/// refused.
fn manifest_text(bytes: &[u8]) -> Result<&str, ManifestError> {
    let body = bytes.strip_prefix(b"\xef\xbb\xbf").unwrap_or(bytes);
    // §10.3 detects legacy manifests by a first non-whitespace pair other than `<?`; §10.1
    // also accepts XML without a declaration, so anything starting with `<` is parsed as XML
    // and only a non-`<` start means a legacy (binary) manifest.
    match body.iter().find(|b| !b.is_ascii_whitespace()) {
        None => return Err(ManifestError::Empty),
        Some(b'<') => {}
        Some(_) => return Err(ManifestError::LegacyEncrypted),
    }
    let text = std::str::from_utf8(body).map_err(|e| ManifestError::NotUtf8 {
        offset: e.valid_up_to(),
    })?;
    // roxmltree accepts an empty `<!DOCTYPE x>` even with DTDs disabled; refuse any.
    if text.contains("<!DOCTYPE") {
        return Err(ManifestError::Doctype);
    }
    Ok(text)
}

/// The XML document of a manifest's text: no DTD, a bounded node count.
fn xml_document(text: &str) -> Result<roxmltree::Document<'_>, ManifestError> {
    let options = roxmltree::ParsingOptions {
        allow_dtd: false,
        nodes_limit: MAX_XML_NODES,
        ..roxmltree::ParsingOptions::default()
    };
    roxmltree::Document::parse_with_options(text, options).map_err(|e| match e {
        roxmltree::Error::DtdDetected => ManifestError::Doctype,
        source => ManifestError::Xml { source },
    })
}

fn is_plain_filename(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains(['/', '\0'])
}

fn parse_document(doc: &roxmltree::Document<'_>) -> Result<Manifest, ManifestError> {
    let root = doc.root_element();
    if root.tag_name().name() != "manifest" {
        return Err(ManifestError::WrongRoot {
            found: root.tag_name().name().chars().take(64).collect(),
        });
    }
    let version_text = opt_text(root, "version").unwrap_or_default();
    let version = ManifestVersion::detect(&version_text);
    if let ManifestVersion::Unknown(v) = &version {
        tracing::warn!(
            "unknown manifest version {v:?}; only the fields common to all versions are reliable"
        );
    }
    let bundler = match child(root, "bundler") {
        Some(b) => Bundler {
            name: opt_text(b, "name").unwrap_or_default(),
            version: opt_text(b, "version").unwrap_or_default(),
            release: opt_text(b, "release").unwrap_or_default(),
        },
        None => Bundler {
            name: String::new(),
            version: String::new(),
            release: String::new(),
        },
    };
    let machine = match child(root, "machine_configuration") {
        Some(mc) => Some(parse_machine(mc)?),
        None if matches!(
            version,
            ManifestVersion::V20071010 | ManifestVersion::V20070829
        ) =>
        {
            return Err(ManifestError::Missing {
                path: "machine_configuration".to_owned(),
            });
        }
        None => None,
    };
    let image = parse_image(req_child(root, "image", "image")?)?;
    let signature = opt_text(root, "signature").unwrap_or_default();
    Ok(Manifest {
        version,
        bundler,
        machine,
        image,
        signature,
    })
}

fn parse_machine(mc: Node<'_>) -> Result<MachineConfiguration, ManifestError> {
    let architecture = req_text(mc, "architecture", "machine_configuration/architecture")?;
    let mut block_device_mapping = Vec::new();
    if let Some(bdm) = child(mc, "block_device_mapping") {
        for m in children(bdm, "mapping") {
            block_device_mapping.push(Mapping {
                virtual_name: req_text(
                    m,
                    "virtual",
                    "machine_configuration/block_device_mapping/mapping/virtual",
                )?,
                device: req_text(
                    m,
                    "device",
                    "machine_configuration/block_device_mapping/mapping/device",
                )?,
            });
        }
    }
    let product_codes = child(mc, "product_codes")
        .map(|pc| {
            children(pc, "product_code")
                .map(text_of)
                .filter(|t| !t.is_empty())
                .collect()
        })
        .unwrap_or_default();
    Ok(MachineConfiguration {
        architecture,
        block_device_mapping,
        kernel_id: opt_text(mc, "kernel_id"),
        ramdisk_id: opt_text(mc, "ramdisk_id"),
        product_codes,
    })
}

fn parse_image(img: Node<'_>) -> Result<ImageInfo, ManifestError> {
    let digest_node = req_child(img, "digest", "image/digest")?;
    check_algorithm(digest_node, "image/digest", "SHA1")?;
    let digest = req_text(img, "digest", "image/digest")?;
    check_digest(&digest, "image/digest")?;
    let size = parse_decimal(&req_text(img, "size", "image/size")?, "image/size")?;
    let bundled_size = parse_decimal(
        &req_text(img, "bundled_size", "image/bundled_size")?,
        "image/bundled_size",
    )?;
    for name in [
        "ec2_encrypted_key",
        "user_encrypted_key",
        "ec2_encrypted_iv",
        "user_encrypted_iv",
    ] {
        if let Some(node) = child(img, name) {
            check_algorithm(node, &format!("image/{name}"), "AES-128-CBC")?;
        }
    }
    Ok(ImageInfo {
        name: opt_text(img, "name").unwrap_or_default(),
        user: opt_text(img, "user").unwrap_or_default(),
        // §10.2: versions without image/type mean `machine`.
        image_type: opt_text(img, "type").unwrap_or_else(|| "machine".to_owned()),
        kernel_name: opt_text(img, "kernel_name"),
        ancestry: child(img, "ancestry")
            .map(|a| {
                children(a, "ancestor_ami_id")
                    .map(text_of)
                    .filter(|t| !t.is_empty())
                    .collect()
            })
            .unwrap_or_default(),
        digest,
        size,
        bundled_size,
        ec2_encrypted_key: opt_text(img, "ec2_encrypted_key").unwrap_or_default(),
        user_encrypted_key: req_text(img, "user_encrypted_key", "image/user_encrypted_key")?,
        ec2_encrypted_iv: opt_text(img, "ec2_encrypted_iv").unwrap_or_default(),
        user_encrypted_iv: req_text(img, "user_encrypted_iv", "image/user_encrypted_iv")?,
        parts: parse_parts(req_child(img, "parts", "image/parts")?)?,
    })
    .and_then(check_part_names)
}

/// Every part is named `<image name>.part.<index>` (the index in decimal, any width), as every
/// bundler writes them: the names are used as file names by download, verify, unbundle, delete
/// and copy, and a manifest must not be able to make them touch any other file (`.bashrc`,
/// another bundle's parts).
fn check_part_names(image: ImageInfo) -> Result<ImageInfo, ManifestError> {
    let prefix = format!("{}.part.", image.name);
    for part in &image.parts {
        let digits = part.filename.strip_prefix(&prefix).unwrap_or("");
        let ok = !digits.is_empty()
            && digits.bytes().all(|b| b.is_ascii_digit())
            && digits.parse::<u64>().ok() == Some(u64::from(part.index));
        if !ok {
            return Err(ManifestError::PartNotOfBundle {
                index: part.index,
                filename: part.filename.chars().take(200).collect(),
                name: image.name.chars().take(200).collect(),
            });
        }
    }
    Ok(image)
}

fn parse_parts(parts: Node<'_>) -> Result<Vec<PartEntry>, ManifestError> {
    let count = children(parts, "part").count();
    if count > MAX_PARTS {
        return Err(ManifestError::TooManyParts {
            count,
            max: MAX_PARTS,
        });
    }
    if count == 0 {
        return Err(ManifestError::NoParts);
    }
    if let Some(declared) = parts.attribute("count") {
        let declared = parse_decimal(declared, "image/parts/@count")?;
        if declared != count as u64 {
            return Err(ManifestError::PartCountMismatch {
                declared,
                found: count,
            });
        }
    }
    let mut by_index = BTreeMap::new();
    for (position, part) in children(parts, "part").enumerate() {
        let path = format!("image/parts/part[{position}]");
        let index_text =
            part.attribute("index")
                .ok_or_else(|| ManifestError::MissingAttribute {
                    path: path.clone(),
                    attribute: "index",
                })?;
        let index = parse_decimal(index_text, &format!("{path}/@index"))?;
        let filename = req_text(part, "filename", &format!("{path}/filename"))?;
        if !is_plain_filename(&filename) {
            return Err(ManifestError::BadPartFilename {
                index,
                filename: filename.chars().take(200).collect(),
            });
        }
        let digest_path = format!("{path}/digest");
        let digest_node = req_child(part, "digest", &digest_path)?;
        check_algorithm(digest_node, &digest_path, "SHA1")?;
        let digest = req_text(part, "digest", &digest_path)?;
        check_digest(&digest, &digest_path)?;
        if by_index.insert(index, (filename, digest)).is_some() {
            return Err(ManifestError::DuplicatePartIndex { index });
        }
    }
    // N distinct indices, so they are exactly 0..N-1 iff each of 0..N-1 occurs.
    let mut entries = Vec::with_capacity(count);
    for expected in 0..count as u64 {
        let Some((filename, digest)) = by_index.remove(&expected) else {
            return Err(ManifestError::MissingPartIndex {
                index: expected,
                count,
            });
        };
        entries.push(PartEntry {
            // count ≤ MAX_PARTS, so every index below it fits in u32.
            index: expected as u32,
            filename,
            digest,
        });
    }
    Ok(entries)
}

// ---------------------------------------------------------------------------------------------
// Signature verification (§9.5)

/// The bytes a signature covers, taken from exactly the elements the parser reads (§9.5): the
/// `machine_configuration` element's bytes followed by the `image` element's (version 3: the
/// `image` element alone), after checking that the file has the structure of a signed manifest,
/// so that no other copy of them can be what the signature vouches for:
///
/// * no comment and no processing instruction anywhere (a genuine pair hidden in one would
///   otherwise be found by a text search while the parser reads the elements after it);
/// * the root's children are elements only, each at most once and in the order the format
///   writes them: `version`, `bundler`, `machine_configuration`, `image`, `signature` (nothing
///   unknown, repeated or misplaced; text between them is whitespace).
fn signed_element_bytes(
    text: &str,
    doc: &roxmltree::Document<'_>,
    version: &ManifestVersion,
) -> Result<Vec<u8>, ManifestError> {
    let refuse = |problem: String| Err(ManifestError::SignedStructure { problem });
    if let Some(n) = doc.descendants().find(|n| n.is_comment() || n.is_pi()) {
        let what = if n.is_comment() {
            "a comment"
        } else {
            "a processing instruction"
        };
        return refuse(format!("{what} at byte {}", n.range().start));
    }
    const ORDER: [&str; 5] = [
        "version",
        "bundler",
        "machine_configuration",
        "image",
        "signature",
    ];
    let root = doc.root_element();
    let mut next = 0;
    let mut machine = None;
    let mut image = None;
    for node in root.children() {
        if node.is_text() {
            if node.text().is_some_and(|t| !t.trim().is_empty()) {
                return refuse(format!(
                    "text between the elements at byte {}",
                    node.range().start
                ));
            }
            continue;
        }
        let name = node.tag_name().name();
        let Some(at) = ORDER.iter().position(|&o| o == name) else {
            return refuse(format!(
                "an unknown element <{}> at byte {}",
                name.chars().take(64).collect::<String>(),
                node.range().start
            ));
        };
        if at < next {
            return refuse(format!(
                "<{name}> repeated or out of order at byte {}",
                node.range().start
            ));
        }
        next = at + 1;
        match name {
            "machine_configuration" => machine = Some(node),
            "image" => image = Some(node),
            _ => {}
        }
    }
    let Some(image) = image else {
        return refuse("no <image> element".into());
    };
    let mut m = Vec::with_capacity(text.len());
    if *version != ManifestVersion::V3 {
        if let Some(mc) = machine {
            m.extend_from_slice(&text.as_bytes()[mc.range()]);
        }
    }
    m.extend_from_slice(&text.as_bytes()[image.range()]);
    Ok(m)
}

/// Verifies the manifest signature with the user certificate (§9.5), over the bytes of exactly
/// the elements the parser reads (see `signed_element_bytes`: a file with comments, processing
/// instructions, unknown, repeated or misplaced elements is refused), then, if those bytes do
/// not verify, over our re-serialization of the parsed elements; version 3 signs the `image`
/// element alone. `manifest` must be what `raw` parses to. Returns the form that verified.
pub fn verify_signature(
    raw: &[u8],
    manifest: &Manifest,
    key: &dyn SignatureKey,
) -> Result<SignatureForm, ManifestError> {
    if manifest.signature.is_empty() {
        return Err(ManifestError::Unsigned);
    }
    let text = manifest_text(raw)?;
    let doc = xml_document(text)?;
    if parse_document(&doc)? != *manifest {
        return Err(ManifestError::SignedStructure {
            problem: "the manifest checked is not the one the file holds".into(),
        });
    }
    let signed = signed_element_bytes(text, &doc, &manifest.version)?;
    let verify = |data: &[u8]| {
        key.verify_sha1_hex(data, &manifest.signature)
            .map_err(|source| ManifestError::Verify { source })
    };
    if verify(&signed)? {
        return Ok(SignatureForm::Raw);
    }
    // A manifest our serializer cannot reproduce simply has no re-serialized form.
    if let Ok(m) = manifest.signed_bytes() {
        if verify(m.as_bytes())? {
            return Ok(SignatureForm::Reserialized);
        }
    }
    Err(ManifestError::SignatureMismatch {
        key: key.describe(),
    })
}

// ---------------------------------------------------------------------------------------------
// Naming and input rules

/// A manifest stored, fetched or deleted as `file_name` (a file name or the last component of
/// an S3 key) must be `<image name>.manifest.xml` (§2): the commands that act on a bundle in S3
/// (download, delete, upload, copy) take the parts' names from the manifest, so one under
/// any other name could make them write or delete another bundle's parts.
pub fn check_file_name(manifest: &Manifest, file_name: &str) -> Result<(), ManifestError> {
    let base = file_name.rsplit('/').next().unwrap_or(file_name);
    if base.strip_suffix(".manifest.xml") == Some(manifest.image.name.as_str()) {
        return Ok(());
    }
    Err(ManifestError::NotItsName {
        file: file_name.chars().take(200).collect(),
        stem: base
            .strip_suffix(".manifest.xml")
            .unwrap_or(base)
            .chars()
            .take(200)
            .collect(),
        image: manifest.image.name.chars().take(200).collect(),
    })
}

/// Bundle name rule (§2): 1–100 bytes of `[A-Za-z0-9._-]`, first character alphanumeric.
pub fn validate_bundle_name(name: &str) -> Result<(), ManifestError> {
    let bytes = name.as_bytes();
    let ok = !bytes.is_empty()
        && bytes.len() <= MAX_BUNDLE_NAME_BYTES
        && bytes[0].is_ascii_alphanumeric()
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(ManifestError::InvalidBundleName {
            name: name.chars().take(120).collect(),
        })
    }
}

/// Account (§2): remove `-`, then exactly 12 ASCII digits. Returns the digits.
pub fn normalize_account(user: &str) -> Result<String, ManifestError> {
    let digits: String = user.chars().filter(|&c| c != '-').collect();
    if digits.len() == 12 && digits.bytes().all(|b| b.is_ascii_digit()) {
        Ok(digits)
    } else {
        Err(ManifestError::InvalidAccount {
            input: user.chars().take(40).collect(),
        })
    }
}

/// Parses a `-B` value `virtual=device,virtual=device` (§9.1 item 3b): items and both sides
/// trimmed, each side non-empty without whitespace; a repeated virtual name is an error. The
/// order is kept (the serializer sorts).
pub fn parse_block_device_mapping(spec: &str) -> Result<Vec<Mapping>, ManifestError> {
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for item in spec.split(',') {
        let item = item.trim();
        let bad = || ManifestError::BadMappingSpec {
            item: item.to_owned(),
        };
        let (virtual_name, device) = item.split_once('=').ok_or_else(bad)?;
        let (virtual_name, device) = (virtual_name.trim(), device.trim());
        let well_formed = |s: &str| !s.is_empty() && !s.contains(char::is_whitespace);
        if !well_formed(virtual_name) || !well_formed(device) || device.contains('=') {
            return Err(bad());
        }
        if !seen.insert(virtual_name.to_owned()) {
            return Err(ManifestError::DuplicateMapping {
                virtual_name: virtual_name.to_owned(),
            });
        }
        out.push(Mapping {
            virtual_name: virtual_name.to_owned(),
            device: device.to_owned(),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bundle::crypto::Certificate;
    use crate::bundle::parts::part_name;
    use std::fs;
    use std::path::PathBuf;

    const VECTORS: [&str; 4] = [
        "v1-small-ext4",
        "v2-three-parts",
        "v3-sparse-islands",
        "v4-prefix",
    ];

    fn testdata() -> PathBuf {
        crate::test_data()
    }

    struct Vector {
        raw: Vec<u8>,
        expected: serde_json::Value,
    }

    fn vector(name: &str) -> Vector {
        let dir = testdata().join("peer-bundles").join(name);
        let expected: serde_json::Value =
            serde_json::from_slice(&fs::read(dir.join("expected.json")).unwrap()).unwrap();
        let raw = fs::read(dir.join(expected["manifest"].as_str().unwrap())).unwrap();
        Vector { raw, expected }
    }

    fn user_key() -> UserKey {
        UserKey::from_pem(&fs::read(testdata().join("keys/user-key.pem")).unwrap()).unwrap()
    }

    fn ec2_key() -> UserKey {
        UserKey::from_pem(&fs::read(testdata().join("keys/ec2-test-key.pem")).unwrap()).unwrap()
    }

    fn user_cert() -> Certificate {
        Certificate::load(&testdata().join("keys/user-cert.pem")).unwrap()
    }

    fn v1_text() -> String {
        String::from_utf8(vector("v1-small-ext4").raw).unwrap()
    }

    fn parse_str(s: &str) -> Result<Manifest, ManifestError> {
        Manifest::parse(s.as_bytes())
    }

    #[test]
    fn vectors_round_trip_byte_identical_and_pass_strict() {
        for name in VECTORS {
            let v = vector(name);
            assert_ne!(v.raw.last(), Some(&b'\n'));
            let m = Manifest::parse(&v.raw).unwrap();
            assert_eq!(m.version, ManifestVersion::V20071010);
            assert_eq!(m.to_xml().unwrap().as_bytes(), &v.raw[..], "{name}");
            m.check_strict().unwrap();
            check_strict_bytes(&v.raw).unwrap();
            assert_eq!(m.image.name, v.expected["image_name"].as_str().unwrap());
            assert_eq!(m.image.size, v.expected["image_size"].as_u64().unwrap());
            assert_eq!(
                m.image.digest,
                v.expected["tar_stream_sha1"].as_str().unwrap()
            );
            let names: Vec<&str> = m.image.parts.iter().map(|p| p.filename.as_str()).collect();
            let expected: Vec<&str> = v.expected["parts"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p.as_str().unwrap())
                .collect();
            assert_eq!(names, expected, "{name}");
        }
    }

    #[test]
    fn vectors_signatures_verify_raw_and_resign_identically() {
        let key = user_key();
        let cert = user_cert();
        for name in VECTORS {
            let v = vector(name);
            let m = Manifest::parse(&v.raw).unwrap();
            assert_eq!(
                verify_signature(&v.raw, &m, &cert).unwrap(),
                SignatureForm::Raw,
                "{name}"
            );
            let mut resigned = m.clone();
            resigned.signature.clear();
            resigned.sign(&key).unwrap();
            assert_eq!(resigned.signature, m.signature, "{name}");
        }
    }

    #[test]
    fn vectors_keys_unwrap_with_user_and_ec2_keys() {
        let user = user_key();
        let ec2 = ec2_key();
        for name in VECTORS {
            let v = vector(name);
            let m = Manifest::parse(&v.raw).unwrap();
            let key_hex = v.expected["aes_key_hex"].as_str().unwrap();
            let iv_hex = v.expected["aes_iv_hex"].as_str().unwrap();
            let img = &m.image;
            assert_eq!(img.user_encrypted_key.len(), 512);
            assert_eq!(img.ec2_encrypted_key.len(), 256);
            for (priv_key, key_field, iv_field) in [
                (&user, &img.user_encrypted_key, &img.user_encrypted_iv),
                (&ec2, &img.ec2_encrypted_key, &img.ec2_encrypted_iv),
            ] {
                assert_eq!(
                    crypto::unwrap_hex(priv_key, key_field).unwrap(),
                    key_hex.as_bytes()
                );
                assert_eq!(
                    crypto::unwrap_key(priv_key, key_field).unwrap().to_hex(),
                    key_hex
                );
                assert_eq!(
                    crypto::unwrap_iv(priv_key, iv_field).unwrap().to_hex(),
                    iv_hex
                );
            }
        }
    }

    fn v1_built() -> Manifest {
        let v1 = Manifest::parse(vector("v1-small-ext4").raw.as_slice()).unwrap();
        let src = &v1.image;
        // Mappings deliberately in the -B order of the reference command line (§14.2).
        Manifest {
            version: ManifestVersion::V20071010,
            bundler: Bundler {
                name: "ec2-ami-tools".to_owned(),
                version: "1.5".to_owned(),
                release: "3".to_owned(),
            },
            machine: Some(MachineConfiguration {
                architecture: "x86_64".to_owned(),
                block_device_mapping: parse_block_device_mapping(
                    "ami=sda1,root=/dev/sda1,ephemeral0=sdb,swap=sda3",
                )
                .unwrap(),
                kernel_id: Some("aki-1a2b3c4d".to_owned()),
                ramdisk_id: Some("ari-5e6f7a8b".to_owned()),
                product_codes: vec!["8ABCDEF1".to_owned()],
            }),
            image: ImageInfo {
                name: "small.img".to_owned(),
                user: normalize_account("1234-5678-9012").unwrap(),
                image_type: "machine".to_owned(),
                kernel_name: None,
                ancestry: Vec::new(),
                digest: "186243d96a480f19787c1937467909c943fa00da".to_owned(),
                size: 67_108_864,
                bundled_size: 251_472,
                ec2_encrypted_key: src.ec2_encrypted_key.clone(),
                user_encrypted_key: src.user_encrypted_key.clone(),
                ec2_encrypted_iv: src.ec2_encrypted_iv.clone(),
                user_encrypted_iv: src.user_encrypted_iv.clone(),
                parts: vec![PartEntry {
                    index: 0,
                    filename: part_name("small.img", 0, part_width(1)),
                    digest: "c6bfc8f9ef86fd43be2b411fd862cb012f89c9a9".to_owned(),
                }],
            },
            signature: String::new(),
        }
    }

    #[test]
    fn golden_v1_manifest_from_values() {
        let mut m = v1_built();
        // Account typed with dashes normalizes to the vector's account.
        assert_eq!(m.image.user, "123456789012");
        assert!(matches!(m.to_xml().unwrap_err(), ManifestError::Unsigned));
        m.sign(&user_key()).unwrap();
        assert_eq!(m.to_xml().unwrap(), v1_text());
        m.check_strict().unwrap();
    }

    #[test]
    fn signed_bytes_cover_machine_configuration_through_image() {
        let v1 = v1_text();
        let m = Manifest::parse(v1.as_bytes()).unwrap();
        let signed = m.signed_bytes().unwrap();
        assert!(signed.starts_with("<machine_configuration><architecture>"));
        assert!(signed.ends_with("</parts></image>"));
        let start = v1.find("<machine_configuration>").unwrap();
        let end = v1.find("</image>").unwrap() + "</image>".len();
        assert_eq!(signed, &v1[start..end]);
        // Version 3 signs the image element alone.
        let mut v3 = m.clone();
        v3.version = ManifestVersion::V3;
        assert!(v3.signed_bytes().unwrap().starts_with("<image><name>"));
    }

    #[test]
    fn mappings_sort_bytewise_and_refuse_duplicates() {
        let mut m = v1_built();
        let names = [
            "swap",
            "ephemeral2",
            "root",
            "ephemeral10",
            "ami",
            "ephemeral1",
            "ephemeral0",
        ];
        let mc = m.machine.as_mut().unwrap();
        mc.block_device_mapping = names
            .iter()
            .map(|n| Mapping {
                virtual_name: (*n).to_owned(),
                device: "sdb".to_owned(),
            })
            .collect();
        let signed = m.signed_bytes().unwrap();
        let order: Vec<usize> = [
            "ami",
            "ephemeral0",
            "ephemeral1",
            "ephemeral10",
            "ephemeral2",
            "root",
            "swap",
        ]
        .iter()
        .map(|n| signed.find(&format!("<virtual>{n}</virtual>")).unwrap())
        .collect();
        assert!(order.windows(2).all(|w| w[0] < w[1]), "{order:?}");
        let mc = m.machine.as_mut().unwrap();
        mc.block_device_mapping.push(Mapping {
            virtual_name: "root".to_owned(),
            device: "sdc".to_owned(),
        });
        assert!(matches!(
            m.signed_bytes().unwrap_err(),
            ManifestError::DuplicateMapping { .. }
        ));
    }

    #[test]
    fn serializer_refuses_values_needing_escaping() {
        for bad in [
            "a&b",
            "a<b",
            "a>b",
            "it's",
            "say \"x\"",
            "tab\there",
            "nl\n",
        ] {
            let mut m = v1_built();
            m.signature = "00".to_owned();
            m.machine.as_mut().unwrap().product_codes = vec![bad.to_owned()];
            let err = m.to_xml().unwrap_err();
            assert!(
                matches!(err, ManifestError::NeedsEscaping { .. }),
                "{bad}: {err}"
            );
        }
        let mut m = v1_built();
        m.signature = "00".to_owned();
        m.machine.as_mut().unwrap().kernel_id = Some(String::new());
        assert!(matches!(
            m.to_xml().unwrap_err(),
            ManifestError::EmptyValue { .. }
        ));
    }

    #[test]
    fn parse_refuses_doctype_and_entities() {
        let v1 = v1_text();
        let body = v1.strip_prefix(XML_DECLARATION).unwrap();
        let laughs = format!(
            "{XML_DECLARATION}<!DOCTYPE manifest [<!ENTITY a \"aaaaaaaa\"><!ENTITY b \"&a;&a;&a;\">]>{}",
            body.replace("x86_64", "&b;")
        );
        let err = parse_str(&laughs).unwrap_err();
        assert!(matches!(err, ManifestError::Doctype), "{err}");
        assert_eq!(err.to_string(), "manifest has a DOCTYPE; refusing");
        let empty_dtd = format!("{XML_DECLARATION}<!DOCTYPE manifest>{body}");
        assert!(matches!(
            parse_str(&empty_dtd).unwrap_err(),
            ManifestError::Doctype
        ));
        // An undeclared entity is a plain XML error.
        let undeclared = v1.replace("x86_64", "&b;");
        assert!(matches!(
            parse_str(&undeclared).unwrap_err(),
            ManifestError::Xml { .. }
        ));
    }

    fn set_parts(parts_xml: &str) -> String {
        let v1 = v1_text();
        let start = v1.find("<parts").unwrap();
        let end = v1.find("</parts>").unwrap() + "</parts>".len();
        format!("{}{parts_xml}{}", &v1[..start], &v1[end..])
    }

    fn part(index: &str, filename: &str) -> String {
        format!(
            "<part index='{index}'><filename>{filename}</filename>\
             <digest algorithm='SHA1'>c6bfc8f9ef86fd43be2b411fd862cb012f89c9a9</digest></part>"
        )
    }

    #[test]
    fn parse_checks_part_indices_count_and_names() {
        let ok = set_parts(&format!(
            "<parts count='2'>{}{}</parts>",
            part("1", "small.img.part.1"),
            part("0", "small.img.part.0")
        ));
        let m = parse_str(&ok).unwrap();
        assert_eq!(m.image.parts[0].filename, "small.img.part.0");
        assert_eq!(m.image.parts[1].index, 1);

        let missing = set_parts(&format!(
            "<parts count='2'>{}{}</parts>",
            part("0", "small.img.part.0"),
            part("2", "small.img.part.2")
        ));
        assert!(matches!(
            parse_str(&missing).unwrap_err(),
            ManifestError::MissingPartIndex { index: 1, count: 2 }
        ));
        let duplicate = set_parts(&format!(
            "<parts count='2'>{}{}</parts>",
            part("0", "small.img.part.0"),
            part("0", "small.img.part.1")
        ));
        assert!(matches!(
            parse_str(&duplicate).unwrap_err(),
            ManifestError::DuplicatePartIndex { index: 0 }
        ));
        let mismatch = set_parts(&format!(
            "<parts count='2'>{}</parts>",
            part("0", "small.img.part.0")
        ));
        assert!(matches!(
            parse_str(&mismatch).unwrap_err(),
            ManifestError::PartCountMismatch {
                declared: 2,
                found: 1
            }
        ));
        let no_count = set_parts(&format!("<parts>{}</parts>", part("0", "small.img.part.0")));
        assert_eq!(parse_str(&no_count).unwrap().image.parts.len(), 1);
        for bad_name in ["../small.img.part.0", "a/b", "..", "."] {
            let doc = set_parts(&format!("<parts count='1'>{}</parts>", part("0", bad_name)));
            assert!(
                matches!(
                    parse_str(&doc).unwrap_err(),
                    ManifestError::BadPartFilename { .. }
                ),
                "{bad_name}"
            );
        }
        for foreign in [
            ".bashrc",
            "x.part.0",
            "small.img.part.1",
            "small.img.part.0x",
        ] {
            let doc = set_parts(&format!("<parts count='1'>{}</parts>", part("0", foreign)));
            assert!(
                matches!(
                    parse_str(&doc).unwrap_err(),
                    ManifestError::PartNotOfBundle { .. }
                ),
                "{foreign}"
            );
        }
        // Any width of the index is a part of the bundle.
        let wide = set_parts(&format!(
            "<parts count='1'>{}</parts>",
            part("0", "small.img.part.000")
        ));
        assert_eq!(
            parse_str(&wide).unwrap().image.parts[0].filename,
            "small.img.part.000"
        );
        let empty_name = set_parts(&format!("<parts count='1'>{}</parts>", part("0", "")));
        assert!(matches!(
            parse_str(&empty_name).unwrap_err(),
            ManifestError::Missing { .. }
        ));
        for bad_index in ["-1", "+0", "x", "99999999999999999999999"] {
            let doc = set_parts(&format!(
                "<parts count='1'>{}</parts>",
                part(bad_index, "a")
            ));
            assert!(
                matches!(
                    parse_str(&doc).unwrap_err(),
                    ManifestError::BadNumber { .. }
                ),
                "{bad_index}"
            );
        }
        let many: String = (0..=MAX_PARTS).map(|_| "<part/>").collect();
        let doc = set_parts(&format!("<parts>{many}</parts>"));
        assert!(matches!(
            parse_str(&doc).unwrap_err(),
            ManifestError::TooManyParts { .. }
        ));
    }

    #[test]
    fn parse_refuses_bad_algorithms_numbers_and_digests() {
        let v1 = v1_text();
        let bad_alg = v1.replacen("algorithm='SHA1'", "algorithm='MD5'", 1);
        assert!(matches!(
            parse_str(&bad_alg).unwrap_err(),
            ManifestError::BadAlgorithm { .. }
        ));
        let bad_cipher = v1.replacen("'AES-128-CBC'", "'AES-256-CBC'", 1);
        assert!(matches!(
            parse_str(&bad_cipher).unwrap_err(),
            ManifestError::BadAlgorithm { .. }
        ));
        let part_alg = v1.replace(
            "<digest algorithm='SHA1'>c6bf",
            "<digest algorithm='SHA256'>c6bf",
        );
        assert!(matches!(
            parse_str(&part_alg).unwrap_err(),
            ManifestError::BadAlgorithm { .. }
        ));
        // Absent algorithm attributes mean the default.
        assert!(parse_str(&v1.replace(" algorithm='SHA1'", "")).is_ok());
        let negative = v1.replace("<size>67108864</size>", "<size>-1</size>");
        assert!(matches!(
            parse_str(&negative).unwrap_err(),
            ManifestError::BadNumber { .. }
        ));
        let overflow = v1.replace("<size>67108864</size>", "<size>18446744073709551616</size>");
        assert!(matches!(
            parse_str(&overflow).unwrap_err(),
            ManifestError::BadNumber { .. }
        ));
        let short_digest = v1.replace("186243d96a480f19787c", "186243d96a48");
        assert!(matches!(
            parse_str(&short_digest).unwrap_err(),
            ManifestError::BadDigest { .. }
        ));
        let no_digest = v1.replace(
            "<digest algorithm='SHA1'>186243d96a480f19787c1937467909c943fa00da</digest>",
            "",
        );
        assert!(matches!(
            parse_str(&no_digest).unwrap_err(),
            ManifestError::Missing { .. }
        ));
    }

    #[test]
    fn uppercase_digest_parses_but_fails_strict() {
        let v1 = v1_text();
        let upper = v1.replace(
            "186243d96a480f19787c1937467909c943fa00da",
            "186243D96A480F19787C1937467909C943FA00DA",
        );
        let m = parse_str(&upper).unwrap();
        assert_eq!(m.image.digest, "186243D96A480F19787C1937467909C943FA00DA");
        // Kept as written, so re-serialization is still byte-identical.
        assert_eq!(m.to_xml().unwrap(), upper);
        assert!(matches!(
            m.check_strict().unwrap_err(),
            ManifestError::Strict { .. }
        ));
    }

    #[test]
    fn legacy_empty_oversized_and_lenient_inputs() {
        let err = Manifest::parse(b"\x01\x80\x12\x34binary").unwrap_err();
        assert!(matches!(err, ManifestError::LegacyEncrypted));
        assert_eq!(
            err.to_string(),
            "manifest does not start with '<': not an XML manifest (legacy encrypted manifests are not supported)"
        );
        assert!(matches!(
            Manifest::parse(b"\x02\x01\x00garbage").unwrap_err(),
            ManifestError::LegacyEncrypted
        ));
        assert!(matches!(
            Manifest::parse(b"  \n").unwrap_err(),
            ManifestError::Empty
        ));
        let huge = vec![b' '; MAX_MANIFEST_BYTES + 1];
        assert!(matches!(
            Manifest::parse(&huge).unwrap_err(),
            ManifestError::TooLarge { .. }
        ));
        // No declaration, double quotes, whitespace, unknown elements, comments: all accepted.
        let v1 = v1_text();
        let reference = Manifest::parse(v1.as_bytes()).unwrap();
        let loose = v1
            .strip_prefix(XML_DECLARATION)
            .unwrap()
            .replace('\'', "\"")
            .replace(
                "<image>",
                "\n  <image>\n    <extra>ignored</extra><!-- c -->",
            )
            .replace("<size>67108864</size>", "<size>  67108864\n</size>");
        let m = Manifest::parse(format!("\u{feff}\n{loose}\n").as_bytes()).unwrap();
        assert_eq!(m, reference);
        assert!(matches!(
            check_strict_bytes(loose.as_bytes()).unwrap_err(),
            ManifestError::Strict { .. }
        ));
        assert!(matches!(
            parse_str("<?xml version='1.0'?><other/>").unwrap_err(),
            ManifestError::WrongRoot { .. }
        ));
    }

    #[test]
    fn version_detection() {
        let v1 = v1_text();
        for (text, version) in [
            ("2007-08-29", ManifestVersion::V20070829),
            ("20070829", ManifestVersion::V20070829),
            ("1999", ManifestVersion::Unknown("1999".to_owned())),
        ] {
            let doc = v1.replace(
                "<version>2007-10-10</version>",
                &format!("<version>{text}</version>"),
            );
            assert_eq!(parse_str(&doc).unwrap().version, version);
        }
        // Version 3: no machine_configuration, no image/type; signature over image alone.
        let start = v1.find("<machine_configuration>").unwrap();
        let end = v1.find("</machine_configuration>").unwrap() + "</machine_configuration>".len();
        let v3_doc = format!("{}{}", &v1[..start], &v1[end..])
            .replace("<version>2007-10-10</version>", "<version>3</version>")
            .replace("<type>machine</type>", "");
        let mut m = parse_str(&v3_doc).unwrap();
        assert_eq!(m.version, ManifestVersion::V3);
        assert!(m.machine.is_none());
        assert_eq!(m.image.image_type, "machine");
        // A 2007-10-10 manifest without machine_configuration is refused.
        let no_mc = format!("{}{}", &v1[..start], &v1[end..]);
        assert!(matches!(
            parse_str(&no_mc).unwrap_err(),
            ManifestError::Missing { .. }
        ));
        // Sign the raw image bytes of the v3 document the way a version-3 writer would.
        let image_start = v3_doc.find("<image>").unwrap();
        let image_end = v3_doc.find("</image>").unwrap() + "</image>".len();
        let sig =
            crypto::sign_sha1_hex(&user_key(), &v3_doc.as_bytes()[image_start..image_end]).unwrap();
        let signed_doc = v3_doc.replace(&m.signature, &sig);
        m.signature = sig;
        assert_eq!(
            verify_signature(signed_doc.as_bytes(), &m, &user_cert()).unwrap(),
            SignatureForm::Raw
        );
    }

    #[test]
    fn tampered_size_fails_and_requoted_verifies_reserialized() {
        let cert = user_cert();
        let v1 = v1_text();
        let tampered = v1.replace("<size>67108864</size>", "<size>67108865</size>");
        let m = parse_str(&tampered).unwrap();
        let err = verify_signature(tampered.as_bytes(), &m, &cert).unwrap_err();
        assert!(
            matches!(err, ManifestError::SignatureMismatch { .. }),
            "{err}"
        );
        let requoted = v1.replace('\'', "\"");
        let m = parse_str(&requoted).unwrap();
        assert_eq!(
            verify_signature(requoted.as_bytes(), &m, &cert).unwrap(),
            SignatureForm::Reserialized
        );
        // Another certificate does not verify.
        let ec2_cert = Certificate::load(&testdata().join("keys/ec2-test-cert.pem")).unwrap();
        let m = parse_str(&v1).unwrap();
        assert!(verify_signature(v1.as_bytes(), &m, &ec2_cert).is_err());
        // A signature that is not hex is an error, not a mismatch.
        let zz = v1.replace(&m.signature, "zz");
        let bad = parse_str(&zz).unwrap();
        assert!(matches!(
            verify_signature(zz.as_bytes(), &bad, &cert).unwrap_err(),
            ManifestError::Verify { .. }
        ));
    }

    #[test]
    fn strict_check_catches_bad_fields() {
        let mut base = v1_built();
        base.sign(&user_key()).unwrap();
        base.check_strict().unwrap();
        type Mutation = Box<dyn Fn(&mut Manifest)>;
        let cases: Vec<(&str, Mutation)> = vec![
            (
                "arch",
                Box::new(|m| m.machine.as_mut().unwrap().architecture = "sparc".into()),
            ),
            ("user", Box::new(|m| m.image.user = "12345678901".into())),
            ("name", Box::new(|m| m.image.name = "-bad".into())),
            ("digest", Box::new(|m| m.image.digest.truncate(39))),
            ("bundled", Box::new(|m| m.image.bundled_size = 251_470)),
            ("hex", Box::new(|m| m.image.ec2_encrypted_iv.push_str("0G"))),
            (
                "partname",
                Box::new(|m| m.image.parts[0].filename = "other.part.0".into()),
            ),
            (
                "version",
                Box::new(|m| m.version = ManifestVersion::V20070829),
            ),
        ];
        for (what, mutate) in cases {
            let mut m = base.clone();
            mutate(&mut m);
            assert!(m.check_strict().is_err(), "{what} not caught");
        }
        // arm64 is accepted, and so is a wider streaming-mode index width (§8.3).
        let mut m = base.clone();
        m.machine.as_mut().unwrap().architecture = "arm64".into();
        m.image.parts[0].filename = "small.img.part.000".into();
        m.check_strict().unwrap();
    }

    #[test]
    fn bundle_name_rule() {
        for ok in [
            "a",
            "small.img",
            "my-server-2026",
            "A_b.c-9",
            &"x".repeat(100),
        ] {
            validate_bundle_name(ok).unwrap();
        }
        for bad in [
            "",
            ".hidden",
            "-x",
            "_x",
            "a/b",
            "a b",
            "ä",
            &"x".repeat(101),
            "a&b",
        ] {
            let err = validate_bundle_name(bad).unwrap_err();
            assert!(err.to_string().contains("1-100 characters"), "{bad}");
        }
    }

    #[test]
    fn account_normalization() {
        assert_eq!(normalize_account("1234-5678-9012").unwrap(), "123456789012");
        assert_eq!(normalize_account("123456789012").unwrap(), "123456789012");
        for bad in [
            "12345678901",
            "1234567890123",
            "12345678901a",
            "abcd-efgh-ijkl",
            "",
        ] {
            assert!(matches!(
                normalize_account(bad).unwrap_err(),
                ManifestError::InvalidAccount { .. }
            ));
        }
    }

    #[test]
    fn block_device_mapping_spec() {
        let m = parse_block_device_mapping(" ami=sda1 , root = /dev/sda1,swap=sda3").unwrap();
        assert_eq!(
            m,
            vec![
                Mapping {
                    virtual_name: "ami".into(),
                    device: "sda1".into()
                },
                Mapping {
                    virtual_name: "root".into(),
                    device: "/dev/sda1".into()
                },
                Mapping {
                    virtual_name: "swap".into(),
                    device: "sda3".into()
                },
            ]
        );
        for bad in [
            "",
            "ami",
            "ami=",
            "=sda1",
            "ami=sda1,",
            "a b=sda1",
            "ami=sd a1",
            "a=b=c",
        ] {
            assert!(
                matches!(
                    parse_block_device_mapping(bad).unwrap_err(),
                    ManifestError::BadMappingSpec { .. }
                ),
                "{bad:?}"
            );
        }
        assert!(matches!(
            parse_block_device_mapping("ami=sda1,ami=sdb").unwrap_err(),
            ManifestError::DuplicateMapping { .. }
        ));
    }

    /// The parts of a signed file around its signed pair: what comes before
    /// `<machine_configuration>`, the machine configuration, the image, and what follows.
    fn split_signed(raw: &str) -> (&str, &str, &str, &str) {
        let mc = raw.find("<machine_configuration>").unwrap();
        let img = raw.find("<image>").unwrap();
        let end = raw.find("</image>").unwrap() + "</image>".len();
        (&raw[..mc], &raw[mc..img], &raw[img..end], &raw[end..])
    }

    /// Hostile forms of a genuine signed manifest, as an attacker with the file (and the
    /// user's public certificate) makes them: the genuine signed pair kept somewhere the
    /// parser does not read (a comment, a processing instruction, an unknown element, second
    /// place) with the attacker's own elements where it does, and other structures a signed
    /// manifest never has.
    fn hostile_variants(raw: &str) -> Vec<(String, &'static str)> {
        let (head, mc, image, tail) = split_signed(raw);
        let genuine = format!("{mc}{image}");
        // The attacker's image: another size (a stand-in for any field: a fresh key wrapped
        // to the user's public certificate, another digest), same signature.
        let forged_image = image.replacen("<size>", "<size>1", 1);
        let forged = format!("{mc}{forged_image}");
        let (sig_start, sig_end) = (
            tail.find("<signature>").unwrap(),
            tail.find("</signature>").unwrap() + "</signature>".len(),
        );
        let signature = &tail[sig_start..sig_end];
        vec![
            (
                format!("{head}<!--{genuine}-->{forged}{tail}"),
                "genuine pair in a comment before",
            ),
            (
                format!("{head}<?keep {genuine}?>{forged}{tail}"),
                "genuine pair in a PI before",
            ),
            (
                format!("{head}<junk>{genuine}</junk>{forged}{tail}"),
                "genuine pair in an unknown element",
            ),
            (
                format!("{head}{forged}<!--{genuine}-->{tail}"),
                "genuine pair in a comment after",
            ),
            (
                format!("{head}{forged}{genuine}{tail}"),
                "genuine pair second",
            ),
            (
                format!("{head}{genuine}{forged}{tail}"),
                "attacker's pair second",
            ),
            (
                format!("{head}{mc}{mc}{image}{tail}"),
                "machine_configuration twice",
            ),
            (
                format!("{head}{image}{mc}{tail}"),
                "image before machine_configuration",
            ),
            (
                format!("{head}{mc}<extra/>{image}{tail}"),
                "an unknown element between",
            ),
            (
                format!("{head}{genuine}<!-- note -->{tail}"),
                "a harmless-looking comment",
            ),
            (
                format!("{head}{genuine}{}</manifest>", signature).replacen(
                    "<version>",
                    "<?pi x?><version>",
                    1,
                ),
                "a processing instruction at the top",
            ),
            (
                format!("{}{signature}{genuine}</manifest>", head),
                "signature before the signed elements",
            ),
            (
                format!("{head}{genuine}text{tail}"),
                "text between the elements",
            ),
        ]
    }

    #[test]
    fn a_genuine_signed_pair_hidden_where_the_parser_does_not_read_vouches_for_nothing() {
        let cert = user_cert();
        for name in VECTORS {
            let raw = String::from_utf8(vector(name).raw).unwrap();
            for (text, what) in hostile_variants(&raw) {
                // Each one is a manifest the lenient parser reads: the refusal below is the
                // signature check's, not the parser's.
                let m = Manifest::parse(text.as_bytes())
                    .unwrap_or_else(|e| panic!("{name}: {what}: the parser refused it: {e}"));
                let verdict = verify_signature(text.as_bytes(), &m, &cert);
                assert!(
                    matches!(verdict, Err(ManifestError::SignedStructure { .. })),
                    "{name}: {what}: {verdict:?}"
                );
            }
        }
    }

    #[test]
    fn a_manifest_that_verifies_is_exactly_what_was_signed() {
        // Differential property: whatever the file, if its signature verifies, the elements
        // the parser read re-serialize to the bytes the key holder signed. Tried on the
        // reference vectors, their hostile forms, and seeded random edits of both (a byte
        // removed, doubled or changed; a span moved).
        let cert = user_cert();
        let mut rng: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = move |n: usize| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            (rng % n as u64) as usize
        };
        let mut verified = 0;
        let mut tried = 0;
        for name in VECTORS {
            let raw = String::from_utf8(vector(name).raw).unwrap();
            let genuine = Manifest::parse(raw.as_bytes())
                .unwrap()
                .signed_bytes()
                .unwrap();
            let mut inputs: Vec<String> = vec![raw.clone()];
            inputs.extend(hostile_variants(&raw).into_iter().map(|(t, _)| t));
            for base in inputs.clone() {
                for _ in 0..150 {
                    let mut b = base.clone().into_bytes();
                    match next(4) {
                        0 => {
                            b.remove(next(b.len()));
                        }
                        1 => {
                            let i = next(b.len());
                            b.insert(i, b[i]);
                        }
                        2 => {
                            let i = next(b.len());
                            b[i] = b"<>/!-?abc 0'\"="[next(14)];
                        }
                        _ => {
                            let (i, len) = (next(b.len()), 1 + next(64));
                            let span: Vec<u8> = b.drain(i..(i + len).min(b.len())).collect();
                            let j = next(b.len() + 1);
                            b.splice(j..j, span);
                        }
                    }
                    if let Ok(t) = String::from_utf8(b) {
                        inputs.push(t);
                    }
                }
            }
            for text in inputs {
                tried += 1;
                let Ok(m) = Manifest::parse(text.as_bytes()) else {
                    continue;
                };
                if verify_signature(text.as_bytes(), &m, &cert).is_ok() {
                    verified += 1;
                    assert_eq!(m.signed_bytes().unwrap(), genuine, "{name}: {text}");
                }
            }
        }
        // The genuine files verify; most edits break the XML, the structure or the signature.
        assert!(verified >= VECTORS.len(), "{verified} of {tried}");
    }

    #[test]
    fn the_manifest_checked_must_be_the_one_in_the_file() {
        let cert = user_cert();
        let raw = vector("v1-small-ext4").raw;
        let mut other = Manifest::parse(&raw).unwrap();
        other.image.name = "other.img".into();
        assert!(matches!(
            verify_signature(&raw, &other, &cert),
            Err(ManifestError::SignedStructure { .. })
        ));
    }

    #[test]
    fn bundler_identity_follows_crate_version() {
        let b = Bundler::amibundle();
        assert_eq!(b.name, "amibundle");
        assert_eq!(
            format!("{}.{}", b.version, b.release),
            env!("CARGO_PKG_VERSION")
        );
    }
}
