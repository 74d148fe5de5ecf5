//! Signing a manifest and verifying its signature (§9.5), over the bytes of exactly the elements
//! the parser reads.
//!
//! Bare § numbers in this module refer to docs/format.md.

use super::parse::{manifest_text, parse_document, xml_document};
use super::{Manifest, ManifestError, ManifestVersion, SignatureForm};
use crate::bundle::crypto::{self, SignatureKey, UserKey};

impl Manifest {
    /// Computes M (§9.5), signs it with the user key (RSASSA-PKCS1-v1_5 / SHA-1) and stores
    /// the hex signature.
    pub fn sign(&mut self, key: &UserKey) -> Result<(), ManifestError> {
        let m = self.signed_bytes()?;
        self.signature = crypto::sign_sha1_hex(key, m.as_bytes())
            .map_err(|source| ManifestError::Sign { source })?;
        Ok(())
    }
}

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
