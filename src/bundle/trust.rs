//! Whose signature a bundle must carry before anything of it is decrypted or written: a bundle
//! read from S3 or from a directory is hostile until its manifest's signature verifies
//! (docs/security.md). [`SignatureCheck`] is resolved from the user's choices before any
//! request, then checks each manifest as it arrives.

use std::path::{Path, PathBuf};

use crate::bundle::crypto::{self, Certificate, CryptoError, SignatureKey, UserKey};
use crate::bundle::manifest::{self, Manifest, ManifestError, SignatureForm};

/// The key a manifest's signature is checked with.
#[derive(Debug)]
pub enum SignatureCheck {
    /// A certificate the user gave (`-c`).
    Certificate {
        /// Its file, for messages.
        path: PathBuf,
        /// The certificate.
        cert: Certificate,
    },
    /// The public half of the private key that decrypts the bundle (the default: the key that
    /// signed the user's own bundles).
    PrivateKey,
    /// No check (`--skip-signature`): warned about at each manifest.
    Skip,
}

/// Why a manifest is not trusted.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    /// The certificate to check with could not be loaded.
    #[error(transparent)]
    Certificate(#[from] CryptoError),
    /// The private key cannot unwrap the bundle's AES key: the wrong key, not a forgery.
    #[error("unbundling {what}")]
    WrongKey {
        /// The manifest's file or address.
        what: String,
        /// Why.
        #[source]
        source: CryptoError,
    },
    /// The default check needs the private key, and there is none.
    #[error(
        "cannot check the signature of {0}: pass --cert (the certificate of the key that signed \
         it) or --privatekey, or --skip-signature to go on without the check"
    )]
    NoKey(String),
    /// The signature does not verify.
    #[error(
        "verifying the signature of {what} with {signer} (pass --cert if another key signed it, \
         or --skip-signature to go on without the check)"
    )]
    Signature {
        /// The manifest's file or address.
        what: String,
        /// What it was checked with.
        signer: String,
        /// Why it failed.
        #[source]
        source: Box<ManifestError>,
    },
}

impl SignatureCheck {
    /// From the user's choices: `skip` wins; else the certificate at `cert` (loaded now, so a
    /// bad file costs no request); else the private key's public half.
    pub fn new(cert: Option<&Path>, skip: bool) -> Result<Self, TrustError> {
        Ok(match (cert, skip) {
            (_, true) => SignatureCheck::Skip,
            (Some(path), false) => SignatureCheck::Certificate {
                path: path.to_path_buf(),
                cert: Certificate::load(path)?,
            },
            (None, false) => SignatureCheck::PrivateKey,
        })
    }

    /// Checks the signature of the manifest `raw` (parsed as `manifest`) read from `what`;
    /// `key` is the private key that will decrypt it, if any. `Ok(None)` only for
    /// [`SignatureCheck::Skip`], after a warning.
    pub fn check(
        &self,
        raw: &[u8],
        manifest: &Manifest,
        what: &str,
        key: Option<&UserKey>,
    ) -> Result<Option<SignatureForm>, TrustError> {
        let (signer, named): (&dyn SignatureKey, String) = match (self, key) {
            (SignatureCheck::Skip, _) => {
                tracing::warn!(
                    "the signature of {what} was not checked (--skip-signature): its contents \
                     are trusted only as far as the bucket or directory it came from"
                );
                return Ok(None);
            }
            (SignatureCheck::Certificate { path, cert }, _) => (cert, path.display().to_string()),
            (SignatureCheck::PrivateKey, Some(key)) => {
                // A key that cannot unwrap the bundle's AES key is the wrong key, not a forger's
                // victim: say so, as decoding would.
                crypto::unwrap_key(key, &manifest.image.user_encrypted_key).map_err(|source| {
                    TrustError::WrongKey {
                        what: what.to_string(),
                        source,
                    }
                })?;
                (key, "the public key of --privatekey".into())
            }
            (SignatureCheck::PrivateKey, None) => return Err(TrustError::NoKey(what.to_string())),
        };
        manifest::verify_signature(raw, manifest, signer)
            .map(Some)
            .map_err(|source| TrustError::Signature {
                what: what.to_string(),
                signer: named,
                source: Box::new(source),
            })
    }
}
