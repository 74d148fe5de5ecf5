//! The exact serializer (§9.2): compact XML with single-quoted attributes, in the element order
//! of §9.1, refusing (never escaping) any value that would need escaping; and the signed bytes
//! M of §9.5 it produces.
//!
//! Bare § numbers in this module refer to docs/format.md.

use super::{ImageInfo, MachineConfiguration, Manifest, ManifestError, ManifestVersion, Mapping};

/// The XML declaration our serializer writes (§9.2 item 1).
pub(super) const XML_DECLARATION: &str = "<?xml version='1.0'?>";

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
pub(super) fn sorted_mappings(mappings: &[Mapping]) -> Result<Vec<&Mapping>, ManifestError> {
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
}
