//! RSA wrapping of the AES key and IV text (§7): RSAES-PKCS1-v1_5 with a certificate's public
//! key, unwrapping with the private key.
//!
//! Bare § numbers in this module refer to docs/format.md.

use openssl::rsa::Padding;

use super::aes::parse_hex16;
use super::{AesIv, AesKey, Certificate, CryptoError, UserKey, wipe};

/// PKCS#1 v1.5 encryption needs 11 bytes of overhead inside the modulus (RFC 8017 §7.2.1).
const PKCS1_OVERHEAD_BYTES: usize = 11;

/// RSAES-PKCS1-v1_5 encryption of `plaintext` with the certificate's public key (§7). Returns
/// exactly k bytes (leading zeros kept) as 2k lowercase hex characters.
pub fn wrap_hex(cert: &Certificate, plaintext: &[u8]) -> Result<String, CryptoError> {
    let k = cert.modulus_bytes();
    let max = k.saturating_sub(PKCS1_OVERHEAD_BYTES);
    if plaintext.len() > max {
        return Err(CryptoError::PlaintextTooLong {
            len: plaintext.len(),
            max,
            bits: k * 8,
        });
    }
    let mut out = vec![0u8; k];
    let n = cert
        .rsa
        .public_encrypt(plaintext, &mut out, Padding::PKCS1)
        .map_err(|source| CryptoError::Wrap { source })?;
    // OpenSSL always produces a k-byte octet string (RFC 8017 I2OSP); left-pad defensively so
    // the hex is 2k characters whatever happens.
    let mut padded = vec![0u8; k - n.min(k)];
    padded.extend_from_slice(&out[..n.min(k)]);
    Ok(hex::encode(padded))
}

/// Decodes an RSA octet string written as hex (either case): shorter than k is left-padded
/// with zeros (§7 reader step 1), longer is an error.
pub(super) fn decode_rsa_hex(
    hex_text: &str,
    k: usize,
    what: &'static str,
) -> Result<Vec<u8>, CryptoError> {
    let bytes = hex::decode(hex_text.trim()).map_err(|_| CryptoError::MalformedHex { what })?;
    if bytes.len() > k {
        return Err(CryptoError::CiphertextTooLong {
            len: bytes.len(),
            max: k,
            bits: k * 8,
        });
    }
    let mut padded = vec![0u8; k - bytes.len()];
    padded.extend_from_slice(&bytes);
    Ok(padded)
}

/// Reverses [`wrap_hex`] with the private key (§7 reader): hex in either case, shorter than k
/// left-padded, longer refused; a padding failure means the wrong private key.
///
/// Note: OpenSSL 3.2 and later answer a padding failure with a deterministic pseudo-random
/// plaintext ("implicit rejection") instead of an error; [`unwrap_key`] / [`unwrap_iv`] catch
/// that case through their shape check.
pub fn unwrap_hex(key: &UserKey, hex_text: &str) -> Result<Vec<u8>, CryptoError> {
    let k = key.modulus_bytes();
    let ciphertext = decode_rsa_hex(hex_text, k, "RSA ciphertext")?;
    let mut out = vec![0u8; k];
    match key
        .rsa
        .private_decrypt(&ciphertext, &mut out, Padding::PKCS1)
    {
        Ok(n) => {
            let plain = out[..n].to_vec();
            wipe(&mut out);
            Ok(plain)
        }
        Err(_) => {
            wipe(&mut out);
            Err(CryptoError::WrongPrivateKey)
        }
    }
}

fn unwrap16(key: &UserKey, hex_text: &str, what: &'static str) -> Result<[u8; 16], CryptoError> {
    let mut plain = unwrap_hex(key, hex_text)?;
    let result = match plain.len() {
        32 => std::str::from_utf8(&plain)
            .ok()
            .and_then(|text| parse_hex16(text, what).ok())
            .ok_or(CryptoError::UnwrappedShape { what, len: 32 }),
        16 => {
            // §7 reader step 3: some third-party writers wrapped the raw bytes.
            tracing::warn!(
                "unwrapped {what} is 16 raw bytes instead of 32 hex characters; \
                 accepting it as written by a third-party bundler"
            );
            let mut raw = [0u8; 16];
            raw.copy_from_slice(&plain);
            Ok(raw)
        }
        len => Err(CryptoError::UnwrappedShape { what, len }),
    };
    wipe(&mut plain);
    result
}

/// Unwraps `user_encrypted_key` (or, with the EC2 private key in tests, `ec2_encrypted_key`)
/// and parses the 32-character hex plaintext (§7); 16 raw bytes are accepted with a warning.
pub fn unwrap_key(key: &UserKey, hex_text: &str) -> Result<AesKey, CryptoError> {
    unwrap16(key, hex_text, "AES key").map(AesKey::from_bytes)
}

/// Unwraps an encrypted IV field like [`unwrap_key`].
pub fn unwrap_iv(key: &UserKey, hex_text: &str) -> Result<AesIv, CryptoError> {
    unwrap16(key, hex_text, "AES IV").map(AesIv::from_bytes)
}
