//! Key and certificate flags shared by several subcommands, and how they are resolved.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::Args;

use crate::bundle::certs::{self, CertSearch};
use crate::bundle::crypto::{self, Certificate, UserKey};

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

pub use crate::bundle::trust::SignatureCheck;
