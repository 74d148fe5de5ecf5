//! amibundle's own user identity: the RSA key pair and self-signed certificate used when no
//! user key and certificate are given, created on first use and reused after.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use openssl::asn1::Asn1Time;
use openssl::bn::{BigNum, MsbOption};
use openssl::error::ErrorStack;
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::PKey;
use openssl::rsa::Rsa;
use openssl::x509::{X509, X509NameBuilder};

use super::{Certificate, CryptoError, UserKey, check_pair, wipe};

/// Modulus size of the identity amibundle generates for itself.
const GENERATED_KEY_BITS: u32 = 2048;

/// Validity of the generated self-signed certificate: 20 years, leap days included.
const GENERATED_CERT_DAYS: u32 = 20 * 365 + 5;

/// File names of the generated identity inside its directory.
/// The generated private key's file name in the identity directory.
pub const GENERATED_KEY_FILE: &str = "user-key.pem";
/// The generated certificate's file name in the identity directory.
pub const GENERATED_CERT_FILE: &str = "user-cert.pem";

/// Common name for the generated certificate: the host name, else the numeric uid.
fn identity_common_name() -> String {
    let host = fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default();
    // X.509 limits a CN to 64 characters; a longer host name falls back to the uid.
    let label = if !host.is_empty() && host.len() <= 40 {
        host
    } else {
        format!("uid {}", nix::unistd::getuid())
    };
    format!("amibundle user {label}")
}

fn generate_identity() -> Result<(Vec<u8>, Vec<u8>), CryptoError> {
    let gen_err = |what: &'static str| move |source| CryptoError::Generate { what, source };
    let rsa = Rsa::generate(GENERATED_KEY_BITS).map_err(gen_err("RSA key"))?;
    let pkey = PKey::from_rsa(rsa).map_err(gen_err("RSA key"))?;
    let key_pem = pkey
        .private_key_to_pem_pkcs8()
        .map_err(gen_err("RSA key"))?;

    let build = || -> Result<X509, ErrorStack> {
        let mut name = X509NameBuilder::new()?;
        name.append_entry_by_nid(Nid::COMMONNAME, &identity_common_name())?;
        let name = name.build();
        let mut serial = BigNum::new()?;
        serial.rand(127, MsbOption::MAYBE_ZERO, false)?;
        let mut builder = X509::builder()?;
        builder.set_version(2)?;
        let serial = serial.to_asn1_integer()?;
        builder.set_serial_number(&serial)?;
        builder.set_subject_name(&name)?;
        builder.set_issuer_name(&name)?;
        let not_before = Asn1Time::days_from_now(0)?;
        let not_after = Asn1Time::days_from_now(GENERATED_CERT_DAYS)?;
        builder.set_not_before(&not_before)?;
        builder.set_not_after(&not_after)?;
        builder.set_pubkey(&pkey)?;
        builder.sign(&pkey, MessageDigest::sha256())?;
        Ok(builder.build())
    };
    let cert = build().map_err(gen_err("self-signed certificate"))?;
    let cert_pem = cert.to_pem().map_err(gen_err("self-signed certificate"))?;
    Ok((key_pem, cert_pem))
}

fn write_new_file(path: &Path, contents: &[u8], mode: u32) -> Result<(), CryptoError> {
    let write = || -> io::Result<()> {
        // create_new = O_EXCL: never follow a planted symlink or clobber an existing file.
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(path)?;
        // The umask may have removed bits from `mode`; set it exactly.
        file.set_permissions(fs::Permissions::from_mode(mode))?;
        file.write_all(contents)?;
        file.sync_all()
    };
    write().map_err(|source| CryptoError::WriteFile {
        path: path.to_owned(),
        source,
    })
}

/// Creates amibundle's own user identity in `dir` (created with mode 0700 if missing): an
/// RSA-2048 key `user-key.pem` (PKCS#8, mode 0600, created exclusively) and a self-signed
/// SHA-256 certificate `user-cert.pem` (mode 0644, CN `amibundle user <hostname or uid>`,
/// valid 20 years). If both files already exist they are loaded, checked as a pair and
/// returned. Returns `(key path, cert path, created now)`.
pub fn ensure_generated_identity(dir: &Path) -> Result<(PathBuf, PathBuf, bool), CryptoError> {
    let key_path = dir.join(GENERATED_KEY_FILE);
    let cert_path = dir.join(GENERATED_CERT_FILE);
    match (key_path.exists(), cert_path.exists()) {
        (true, true) => {
            let key = UserKey::load(&key_path, false)?;
            let cert = Certificate::load(&cert_path)?;
            check_pair(&key, &cert, &key_path, &cert_path)?;
            return Ok((key_path, cert_path, false));
        }
        (true, false) => {
            return Err(CryptoError::IdentityIncomplete {
                present: key_path,
                missing: cert_path,
            });
        }
        (false, true) => {
            return Err(CryptoError::IdentityIncomplete {
                present: cert_path,
                missing: key_path,
            });
        }
        (false, false) => {}
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| CryptoError::CreateDir {
            path: dir.to_owned(),
            source,
        })?;
    let (mut key_pem, cert_pem) = generate_identity()?;
    let written = write_new_file(&key_path, &key_pem, 0o600);
    wipe(&mut key_pem);
    written?;
    if let Err(err) = write_new_file(&cert_path, &cert_pem, 0o644) {
        // Do not leave a key without its certificate behind: the next run would refuse the
        // half identity. The key file is ours (created exclusively above).
        if let Err(rm) = fs::remove_file(&key_path) {
            tracing::warn!("removing {} after a failed write: {rm}", key_path.display());
        }
        return Err(err);
    }
    tracing::info!(
        "generated a new amibundle identity: {} and {}",
        key_path.display(),
        cert_path.display()
    );
    Ok((key_path, cert_path, true))
}
