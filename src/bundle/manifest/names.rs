//! The naming and input rules the manifest depends on: a manifest's file name (§2), the bundle
//! name (§2), the account (§2) and `-B` block-device mappings (§9.1).
//!
//! Bare § numbers in this module refer to docs/format.md.

use std::collections::BTreeSet;

use super::{Manifest, ManifestError, Mapping};

/// Longest bundle name (§2).
const MAX_BUNDLE_NAME_BYTES: usize = 100;

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
