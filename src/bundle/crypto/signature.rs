//! The manifest signature primitive (§9.5): RSASSA-PKCS1-v1_5 with SHA-1, as hex.
//!
//! Bare § numbers in this module refer to docs/format.md.

use openssl::error::ErrorStack;
use openssl::hash::MessageDigest;
use openssl::pkey::PKey;
use openssl::rsa::Padding;
use openssl::sign::{Signer, Verifier};

use super::wrap::decode_rsa_hex;
use super::{Certificate, CryptoError, UserKey};

/// RSASSA-PKCS1-v1_5 signature with SHA-1 (§9.5) over `data`, as 2k lowercase hex characters.
/// Deterministic for a given key and data.
pub fn sign_sha1_hex(key: &UserKey, data: &[u8]) -> Result<String, CryptoError> {
    let sign = || -> Result<Vec<u8>, ErrorStack> {
        let mut signer = Signer::new(MessageDigest::sha1(), &key.pkey)?;
        signer.set_rsa_padding(Padding::PKCS1)?;
        signer.update(data)?;
        signer.sign_to_vec()
    };
    let sig = sign().map_err(|source| CryptoError::Sign { source })?;
    let k = key.modulus_bytes();
    let mut padded = vec![0u8; k.saturating_sub(sig.len())];
    padded.extend_from_slice(&sig);
    Ok(hex::encode(padded))
}

/// A public RSA key that checks manifest signatures: a user certificate's, or the public half
/// of the user's private key (the key that decrypts a bundle also tells whether its owner signed
/// it, so a signature can be checked with nothing more than what unbundling needs).
pub trait SignatureKey {
    /// What the key is, for messages: `certificate CN "…"`, `the public key of the private key`.
    fn describe(&self) -> String;
    /// Checks a [`sign_sha1_hex`] signature. `Ok(false)` for a signature that does not match; an
    /// error for hex that is not hex or longer than the modulus.
    fn verify_sha1_hex(&self, data: &[u8], sig_hex: &str) -> Result<bool, CryptoError>;
}

impl SignatureKey for Certificate {
    fn describe(&self) -> String {
        match self.subject_cn() {
            Some(cn) => format!("certificate CN {cn:?}"),
            None => format!("certificate SHA-1 {}", hex::encode(self.sha1_fingerprint())),
        }
    }

    fn verify_sha1_hex(&self, data: &[u8], sig_hex: &str) -> Result<bool, CryptoError> {
        verify_with(&self.pkey, self.modulus_bytes(), data, sig_hex)
    }
}

impl SignatureKey for UserKey {
    fn describe(&self) -> String {
        format!(
            "the public key of the private key (RSA-{})",
            self.modulus_bytes() * 8
        )
    }

    fn verify_sha1_hex(&self, data: &[u8], sig_hex: &str) -> Result<bool, CryptoError> {
        verify_with(&self.pkey, self.modulus_bytes(), data, sig_hex)
    }
}

/// Verifies a [`sign_sha1_hex`] signature with the certificate's public key. `Ok(false)` for a
/// signature that does not match; an error for hex that is not hex or longer than k bytes.
pub fn verify_sha1_hex(
    cert: &Certificate,
    data: &[u8],
    sig_hex: &str,
) -> Result<bool, CryptoError> {
    cert.verify_sha1_hex(data, sig_hex)
}

fn verify_with<T: openssl::pkey::HasPublic>(
    pkey: &PKey<T>,
    modulus_bytes: usize,
    data: &[u8],
    sig_hex: &str,
) -> Result<bool, CryptoError> {
    let sig = decode_rsa_hex(sig_hex, modulus_bytes, "signature")?;
    let mut verifier = Verifier::new(MessageDigest::sha1(), pkey)
        .map_err(|source| CryptoError::Verify { source })?;
    verifier
        .set_rsa_padding(Padding::PKCS1)
        .map_err(|source| CryptoError::Verify { source })?;
    verifier
        .update(data)
        .map_err(|source| CryptoError::Verify { source })?;
    // OpenSSL reports some malformed signatures as errors rather than as a mismatch; either way
    // the signature does not verify, so fail closed with `false`.
    Ok(verifier.verify(&sig).unwrap_or(false))
}
