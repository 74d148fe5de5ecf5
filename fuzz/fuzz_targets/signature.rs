//! The signature check (`manifest::verify_signature`, docs/format.md §9.5) on arbitrary
//! manifests that are *correctly signed* with the insecure test user key: the input is re-signed
//! before it is checked, so the fuzzer explores what a key holder's signature can be made to
//! vouch for, not just how signatures fail.
//!
//! The first byte picks what the key holder signed: the first text span from
//! `<machine_configuration>` to `</image>` of the input (what a signer working on the text, like
//! the reference tools, signs; version 3 signs from `<image>`), or the canonical serialization of
//! the elements the parser reads. The signature is written into every `<signature>` element of
//! the input (or a new one before `</manifest>`).
//!
//! Property (issue 12, finding 1): whenever the file verifies, what was signed *is* what is read:
//! the signed bytes, parsed as a manifest's signed elements, give exactly the machine
//! configuration and image the parser took from the file.
#![no_main]

use std::sync::OnceLock;

use amibundle::bundle::crypto::{self, UserKey};
use amibundle::bundle::manifest::{self, Manifest, ManifestVersion};
use libfuzzer_sys::fuzz_target;

fn key() -> &'static UserKey {
    static KEY: OnceLock<UserKey> = OnceLock::new();
    KEY.get_or_init(|| {
        UserKey::from_pem(include_bytes!("../../tests/data/keys/user-key.pem"))
            .expect("the test key parses")
    })
}

/// The text between the first `open` and the first `close` after it, both included.
fn span<'a>(text: &'a str, open: &str, close: &str) -> Option<&'a str> {
    let start = text.find(open)?;
    let end = start + text[start..].find(close)? + close.len();
    Some(&text[start..end])
}

/// `text` with the contents of every `<signature>` element replaced by `sig`, or a signature
/// element added before the last `</manifest>`.
fn with_signature(text: &str, sig: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    let mut replaced = false;
    while let Some(open) = rest.find("<signature>") {
        let body = open + "<signature>".len();
        let Some(close) = rest[body..].find("</signature>") else {
            break;
        };
        out.push_str(&rest[..body]);
        out.push_str(sig);
        rest = &rest[body + close..];
        replaced = true;
    }
    out.push_str(rest);
    if !replaced {
        if let Some(end) = out.rfind("</manifest>") {
            out.insert_str(end, &format!("<signature>{sig}</signature>"));
        }
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let Some((&choice, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    let signed = match choice % 2 {
        0 => match span(text, "<machine_configuration>", "</image>")
            .or_else(|| span(text, "<image>", "</image>"))
        {
            Some(s) => s.to_string(),
            None => return,
        },
        _ => match Manifest::parse(text.as_bytes()).map(|m| m.signed_bytes()) {
            Ok(Ok(s)) => s,
            _ => return,
        },
    };
    let sig = crypto::sign_sha1_hex(key(), signed.as_bytes()).expect("signing works");
    let file = with_signature(text, &sig);
    let Ok(read) = Manifest::parse(file.as_bytes()) else {
        return;
    };
    if manifest::verify_signature(file.as_bytes(), &read, key()).is_err() {
        return;
    }
    // It verified: the signed bytes, read as a signed manifest's elements, are what was read.
    let v3 = matches!(read.version, ManifestVersion::V3) || read.machine.is_none();
    let version = if v3 { "3" } else { "2007-10-10" };
    let alone = format!(
        "<?xml version='1.0'?><manifest><version>{version}</version><bundler><name>f</name>\
         <version>1</version><release>1</release></bundler>{signed}<signature>{sig}</signature>\
         </manifest>"
    );
    let vouched = Manifest::parse(alone.as_bytes())
        .unwrap_or_else(|e| panic!("signed bytes that verified do not parse alone: {e}\n{file}"));
    match (vouched.signed_bytes(), read.signed_bytes()) {
        // The canonical forms agree (the serializer sorts block-device mappings).
        (Ok(a), Ok(b)) => assert_eq!(a, b, "what was signed is not what was read\n{file}"),
        // Values our serializer refuses (they would need escaping): compare as parsed.
        _ => {
            if !v3 {
                assert_eq!(
                    vouched.machine, read.machine,
                    "machine configuration\n{file}"
                );
            }
            assert_eq!(vouched.image, read.image, "image\n{file}");
        }
    }
    manifest::verify_signature(alone.as_bytes(), &vouched, key())
        .expect("the signed bytes alone verify");
});
