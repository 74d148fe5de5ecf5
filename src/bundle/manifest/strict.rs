//! The strict check (§10.1 strict, §9.1, §2) applied to our own output and to manifests about to
//! be uploaded or registered.
//!
//! Bare § numbers in this module refer to docs/format.md.

use super::names::validate_bundle_name;
use super::serialize::sorted_mappings;
use super::{MAX_PARTS, Manifest, ManifestError, ManifestVersion};
use crate::bundle::parts::part_width;

impl Manifest {
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
