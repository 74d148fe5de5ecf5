//! Key and certificate flags shared by several subcommands, and how they are resolved.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::Args;

use crate::bundle::certs::{self, CertSearch};
use crate::bundle::crypto::{self, Certificate, SignatureKey, UserKey};
use crate::bundle::manifest::{self, Manifest, SignatureForm};

/// The user's key pair.
#[derive(Debug, Args, Clone)]
pub struct UserKeyArgs {
    /// User RSA private key (PEM, PKCS#1 or PKCS#8); default: amibundle's own generated key
    #[arg(short = 'k', long = "privatekey", value_name = "PATH")]
    pub private_key: Option<PathBuf>,
    /// User X.509 certificate matching the key (PEM)
    #[arg(short = 'c', long = "cert", value_name = "PATH")]
    pub cert: Option<PathBuf>,
    /// Accept a private key file that others can read
    #[arg(long)]
    pub allow_insecure_key: bool,
}

/// Which EC2 certificate to encrypt the key for.
#[derive(Debug, Args, Clone)]
pub struct Ec2CertArgs {
    /// EC2 certificate file (default: the pinned certificate for --region)
    #[arg(long = "ec2cert", value_name = "PATH")]
    pub ec2cert: Option<PathBuf>,
    /// Accept an --ec2cert file that matches no known EC2 certificate (test setups only: EC2
    /// itself will not be able to decrypt the bundle)
    #[arg(long)]
    pub unpinned_ec2cert: bool,
}

/// amibundle's own key pair: `$XDG_CONFIG_HOME/amibundle/identity` (else
/// `~/.config/amibundle/identity`), 0700, key 0600.
pub fn default_identity_dir() -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::var_os("XDG_CONFIG_HOME").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir).join("amibundle/identity"));
    }
    let home = std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .context("neither XDG_CONFIG_HOME nor HOME is set: pass --privatekey and --cert")?;
    Ok(PathBuf::from(home).join(".config/amibundle/identity"))
}

/// Loads the user's key and certificate, or amibundle's own pair (created on first use).
pub fn load_identity(args: &UserKeyArgs) -> anyhow::Result<(UserKey, Certificate, PathBuf)> {
    let (key_path, cert_path) = match (&args.private_key, &args.cert) {
        (Some(k), Some(c)) => (k.clone(), c.clone()),
        (Some(k), None) => bail!(
            "--privatekey {} was given without --cert: pass the certificate that matches it",
            k.display()
        ),
        (None, Some(c)) => bail!(
            "--cert {} was given without --privatekey: pass the private key that matches it",
            c.display()
        ),
        (None, None) => {
            let dir = default_identity_dir()?;
            let (key, cert, created) =
                crypto::ensure_generated_identity(&dir).with_context(|| {
                    format!("preparing amibundle's own key pair in {}", dir.display())
                })?;
            if created {
                eprintln!(
                    "amibundle: no --privatekey/--cert given; created a new RSA key pair and self-signed certificate in {} (keep it: it decrypts your bundles)",
                    dir.display()
                );
            } else {
                tracing::info!("using amibundle's own key pair in {}", dir.display());
            }
            (key, cert)
        }
    };
    let key = UserKey::load(&key_path, args.allow_insecure_key)?;
    let cert = Certificate::load(&cert_path)?;
    crypto::check_pair(&key, &cert, &key_path, &cert_path)?;
    Ok((key, cert, key_path))
}

/// Loads just the private key (unbundle), defaulting to amibundle's own.
pub fn load_private_key(path: Option<&Path>, allow_insecure: bool) -> anyhow::Result<UserKey> {
    let path = match path {
        Some(p) => p.to_path_buf(),
        None => {
            let p = default_identity_dir()?.join(crypto::GENERATED_KEY_FILE);
            if !p.exists() {
                bail!(
                    "no --privatekey given and amibundle has no key of its own at {}",
                    p.display()
                );
            }
            p
        }
    };
    Ok(UserKey::load(&path, allow_insecure)?)
}

/// Resolves the EC2 certificate for the region the AMI will be registered in, per
/// docs/format.md §11.
pub fn load_ec2_cert(args: &Ec2CertArgs, region: &str) -> anyhow::Result<Certificate> {
    let search = CertSearch::from_env(args.ec2cert.clone(), args.unpinned_ec2cert);
    let found = certs::resolve_for_region(&search, region)?;
    tracing::info!("EC2 certificate: {}", found.path.display());
    Ok(Certificate::from_der(&found.x509.to_der()?)?)
}

/// How a bundle's manifest signature is checked before anything is decrypted or written
/// (issue 12: a bundle from S3 is hostile until its signature verifies).
#[derive(Debug, Args, Clone)]
pub struct SignatureArgs {
    /// User certificate to check the manifest signature with [default: the public key of the
    /// private key, which is the key that signed the user's own bundles]
    #[arg(short = 'c', long = "cert", value_name = "PATH")]
    pub cert: Option<PathBuf>,
    /// Do not check the manifest signature (warns): for a bundle signed by a key you hold no
    /// certificate for. Without the check, anyone who can write to the bucket and knows your
    /// public certificate can hand you an image.
    #[arg(long, conflicts_with = "cert")]
    pub skip_signature: bool,
}

/// The key a manifest's signature is checked with, resolved before any request or write.
pub enum SignatureCheck {
    /// `-c`: the certificate given.
    Certificate { path: PathBuf, cert: Certificate },
    /// Default: the public half of the private key that decrypts the bundle.
    PrivateKey,
    /// `--skip-signature`.
    Skip,
}

impl SignatureCheck {
    /// Resolves `-c` / `--skip-signature` (loads the certificate, so a bad file costs nothing).
    pub fn from_args(cert: Option<&Path>, skip: bool) -> anyhow::Result<Self> {
        Ok(match (cert, skip) {
            (_, true) => SignatureCheck::Skip,
            (Some(path), false) => SignatureCheck::Certificate {
                path: path.to_path_buf(),
                cert: Certificate::load(path)?,
            },
            (None, false) => SignatureCheck::PrivateKey,
        })
    }

    /// Checks the signature of the manifest `raw` (parsed as `manifest`) read from `source`;
    /// `key` is the private key that will decrypt it, if any. `Ok(None)` only for
    /// `--skip-signature`, after a warning.
    pub fn check(
        &self,
        raw: &[u8],
        manifest: &Manifest,
        source: &str,
        key: Option<&UserKey>,
    ) -> anyhow::Result<Option<SignatureForm>> {
        let (signer, named): (&dyn SignatureKey, String) = match (self, key) {
            (SignatureCheck::Skip, _) => {
                tracing::warn!(
                    "the signature of {source} was not checked (--skip-signature): its contents \
                     are trusted only as far as the bucket or directory it came from"
                );
                return Ok(None);
            }
            (SignatureCheck::Certificate { path, cert }, _) => (cert, path.display().to_string()),
            (SignatureCheck::PrivateKey, Some(key)) => {
                // A key that cannot unwrap the bundle's AES key is the wrong key, not a forger's
                // victim: say so, as decoding would.
                crypto::unwrap_key(key, &manifest.image.user_encrypted_key)
                    .with_context(|| format!("unbundling {source}"))?;
                (key, "the public key of --privatekey".into())
            }
            (SignatureCheck::PrivateKey, None) => bail!(
                "cannot check the signature of {source}: pass --cert (the certificate of the key \
                 that signed it) or --privatekey, or --skip-signature to go on without the check"
            ),
        };
        manifest::verify_signature(raw, manifest, signer)
            .with_context(|| {
                format!(
                    "verifying the signature of {source} with {named} (pass --cert if another key \
                 signed it, or --skip-signature to go on without the check)"
                )
            })
            .map(Some)
    }
}
