//! Cryptography of a bundle: the AES-128 key and IV types, the streaming AES-128-CBC/PKCS#7
//! encryptor and decryptor (docs/format.md §6), RSA wrapping and unwrapping of the key and IV
//! text (§7), the manifest signature primitive (§9.5), loading of the user key and of
//! certificates, and the generation of amibundle's own user identity.
//!
//! Secrets (key and IV bytes or their hex text, private keys) never appear in an error message,
//! a log line or a `Debug` rendering.
//!
//! The module is split along those lines: `aes` (key and IV types, the streaming cipher),
//! `keys` (the user key and certificates), `wrap` (RSA wrapping of the key and IV text),
//! `signature` (manifest signatures) and `identity` (amibundle's own key pair).
//!
//! Bare § numbers in this module refer to docs/format.md.

mod aes;
mod identity;
mod keys;
mod signature;
#[cfg(test)]
mod tests;
mod wrap;

pub use self::aes::{AesIv, AesKey, CbcDecryptReader, CbcEncryptWriter};
pub use self::identity::{GENERATED_CERT_FILE, GENERATED_KEY_FILE, ensure_generated_identity};
pub use self::keys::{Certificate, UserKey, check_pair};
pub use self::signature::{SignatureKey, sign_sha1_hex, verify_sha1_hex};
pub use self::wrap::{unwrap_hex, unwrap_iv, unwrap_key, wrap_hex};

use std::io;
use std::path::PathBuf;

use openssl::error::ErrorStack;

/// Errors of the cryptographic layer. Messages never contain key material.
#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    /// The CSPRNG failed.
    #[error("generating random {what}")]
    Random {
        what: &'static str,
        #[source]
        source: ErrorStack,
    },
    /// A key or IV text was not 32 hexadecimal characters.
    #[error("parsing {what}: expected 32 hexadecimal characters")]
    KeyHex { what: &'static str },
    /// Setting up or running the AES-128-CBC cipher failed.
    #[error("running AES-128-CBC {what}")]
    Cipher {
        what: &'static str,
        #[source]
        source: ErrorStack,
    },
    /// The decrypted stream did not end in valid PKCS#7 padding (§6).
    #[error("wrong key or corrupt bundle: the decrypted data does not end in valid PKCS#7 padding")]
    BadPadding,
    /// The ciphertext length is not a non-zero multiple of the AES block size (§6).
    #[error(
        "wrong key or corrupt bundle: ciphertext length {len} is not a non-zero multiple of 16 bytes"
    )]
    CiphertextLength { len: u64 },
    /// Reading a key or certificate file failed.
    #[error("reading {what} {path}")]
    ReadFile {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The private key file is readable by group or others.
    #[error(
        "private key file {path} is readable by group or others (mode {mode:04o}); \
         run `chmod 600 {path}` or explicitly allow insecure key files"
    )]
    InsecureKeyFile { path: PathBuf, mode: u32 },
    /// The private key is protected by a passphrase.
    #[error(
        "{origin} is encrypted with a passphrase; amibundle needs an unencrypted RSA key \
         (for example `openssl pkey -in KEY -out KEY.plain`, then `chmod 600 KEY.plain`)"
    )]
    EncryptedKey { origin: String },
    /// The private key could not be parsed as PEM.
    #[error("parsing {origin} as a PEM private key (PKCS#1 or PKCS#8)")]
    ParseKey {
        origin: String,
        #[source]
        source: ErrorStack,
    },
    /// The key or certificate holds something other than an RSA key.
    #[error("{origin} holds a {kind} key; only RSA keys are supported")]
    NotRsa { origin: String, kind: String },
    /// The certificate could not be parsed.
    #[error("parsing {origin} as an X.509 certificate ({format})")]
    ParseCert {
        origin: String,
        format: &'static str,
        #[source]
        source: ErrorStack,
    },
    /// Extracting key parameters or fingerprints through OpenSSL failed.
    #[error("reading the {what} of {origin}")]
    Inspect {
        what: &'static str,
        origin: String,
        #[source]
        source: ErrorStack,
    },
    /// The user private key and the user certificate do not belong together (§2).
    #[error(
        "private key {key_path} does not match the public key of certificate {cert_path}; \
         pass the certificate that belongs to this key"
    )]
    KeyCertMismatch {
        key_path: PathBuf,
        cert_path: PathBuf,
    },
    /// The plaintext is too long to be wrapped with this modulus.
    #[error("wrapping {len} bytes with RSA: at most {max} bytes fit a {bits}-bit key")]
    PlaintextTooLong { len: usize, max: usize, bits: usize },
    /// RSA public-key encryption failed.
    #[error("wrapping with the RSA public key of the certificate")]
    Wrap {
        #[source]
        source: ErrorStack,
    },
    /// A hex field (RSA ciphertext or signature) was not hexadecimal.
    #[error("decoding {what}: not a hexadecimal string of whole bytes")]
    MalformedHex { what: &'static str },
    /// An RSA ciphertext is longer than the modulus.
    #[error(
        "RSA ciphertext has {len} bytes but the {bits}-bit private key allows at most {max}: \
         wrong private key (the bundle was made for a larger key) or corrupt manifest"
    )]
    CiphertextTooLong { len: usize, max: usize, bits: usize },
    /// RSA decryption failed its padding check (§7 reader step 2).
    #[error(
        "unwrapping with the RSA private key failed the PKCS#1 padding check: wrong private key \
         or corrupt manifest"
    )]
    WrongPrivateKey,
    /// The unwrapped plaintext is neither 32 hex characters nor 16 raw bytes (§7 reader step 3).
    #[error(
        "unwrapped {what} has {len} bytes where 32 hexadecimal characters were expected: \
         wrong private key or corrupt manifest"
    )]
    UnwrappedShape { what: &'static str, len: usize },
    /// Signing failed.
    #[error("signing with the RSA private key (SHA-1, PKCS#1 v1.5)")]
    Sign {
        #[source]
        source: ErrorStack,
    },
    /// Setting up a signature verification failed.
    #[error("verifying a signature with the RSA public key of the certificate")]
    Verify {
        #[source]
        source: ErrorStack,
    },
    /// Generating the identity's key or certificate failed.
    #[error("generating the {what} of the amibundle identity")]
    Generate {
        what: &'static str,
        #[source]
        source: ErrorStack,
    },
    /// Creating the identity directory failed.
    #[error("creating directory {path}")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Writing a generated identity file failed.
    #[error("writing {path}")]
    WriteFile {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Only one of the two identity files exists; refusing to overwrite or guess.
    #[error(
        "found {present} but not {missing}; move {present} away or restore {missing} \
         (refusing to overwrite a half-existing identity)"
    )]
    IdentityIncomplete { present: PathBuf, missing: PathBuf },
}

fn wipe(bytes: &mut [u8]) {
    bytes.fill(0);
    // Reading the wiped bytes through black_box keeps the compiler from eliding the stores as
    // dead writes (no unsafe volatile needed).
    std::hint::black_box(&*bytes);
}
