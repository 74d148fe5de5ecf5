//! The lenient parser (§10.1–10.3): any XML declaration and quoting, unknown elements ignored,
//! fields located by path; DTDs, legacy encrypted manifests, malformed numbers and digests, and
//! part lists that are not exactly 0..N−1 of this bundle refused.
//!
//! Bare § numbers in this module refer to docs/format.md.

use std::collections::BTreeMap;

use super::{
    Bundler, ImageInfo, MAX_MANIFEST_BYTES, MAX_PARTS, MachineConfiguration, Manifest,
    ManifestError, ManifestVersion, Mapping, PartEntry,
};

/// Node limit handed to the XML parser (a 100,000-part manifest has about 700,000 nodes).
const MAX_XML_NODES: u32 = 2_000_000;

impl Manifest {
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
}

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

/// The XML text of a manifest file: a UTF-8 BOM dropped, legacy (binary) manifests and DTDs
/// refused.
pub(super) fn manifest_text(bytes: &[u8]) -> Result<&str, ManifestError> {
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
pub(super) fn xml_document(text: &str) -> Result<roxmltree::Document<'_>, ManifestError> {
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

/// §10.1: joined to a local directory or an S3 prefix, so it must be a plain file name.
fn is_plain_filename(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains(['/', '\0'])
}

pub(super) fn parse_document(doc: &roxmltree::Document<'_>) -> Result<Manifest, ManifestError> {
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
