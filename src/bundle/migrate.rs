//! Manifest migration (docs/format.md §7, §9, §10.2, §11; docs/reference-behaviour.md §9.1):
//! moving a bundle to a region whose EC2 certificate differs, or changing its kernel and
//! ramdisk.
//!
//! The parts never change: they are encrypted with the AES key K and IV V, which the manifest
//! carries wrapped twice, for the user certificate and for the EC2 certificate. Migrating unwraps
//! K and V with the user's private key, wraps them again for the target EC2 certificate, keeps
//! the user side as it is, applies the kernel/ramdisk changes, writes a 2007-10-10 manifest and
//! signs it with the user key. The reference ec2-migrate-manifest copied the old `ec2_*` values
//! unchanged, so its output never worked across partitions; ours does.
//!
//! Bare § numbers in this module refer to docs/format.md.

use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::crypto::{self, Certificate, CryptoError, UserKey};
use super::manifest::{
    Bundler, MachineConfiguration, Manifest, ManifestError, ManifestVersion, SignatureForm,
};

/// Architecture assumed for version 3 manifests, which have no `machine_configuration`
/// (docs/format.md §10.2).
const VERSION3_ARCHITECTURE: &str = "i386";

/// Errors of manifest migration.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    /// The manifest version is not one we can rewrite (§10.2: migration MUST refuse).
    #[error(
        "manifest version {version:?} is unknown: re-signing fields amibundle does not understand could produce a manifest EC2 misreads; only 2007-10-10, 2007-08-29 and 3 can be migrated"
    )]
    UnknownVersion {
        /// The version text as written.
        version: String,
    },
    /// The manifest does not verify with the user's certificate (it was altered, or belongs to
    /// another key pair).
    #[error("checking the manifest's signature with the user certificate")]
    Authenticate {
        /// Why it failed.
        #[source]
        source: ManifestError,
    },
    /// The user side could not be unwrapped with the user's private key.
    #[error(
        "unwrapping image/{field} with the user's private key (is it the key this bundle was made with?)"
    )]
    Unwrap {
        /// `user_encrypted_key` or `user_encrypted_iv`.
        field: &'static str,
        /// Why.
        #[source]
        source: CryptoError,
    },
    /// A user-side field is not a whole RSA ciphertext for the user's key.
    #[error(
        "image/{field} is not a hexadecimal RSA ciphertext of at most {bytes} bytes (the user key's modulus)"
    )]
    UserField {
        /// The field.
        field: &'static str,
        /// The user key's modulus length.
        bytes: usize,
    },
    /// Wrapping K or V for the target EC2 certificate failed.
    #[error("wrapping the AES {what} for the EC2 certificate")]
    Wrap {
        /// `key` or `IV`.
        what: &'static str,
        /// Why.
        #[source]
        source: CryptoError,
    },
    /// The manifest could not be parsed.
    #[error("parsing the manifest")]
    Parse {
        /// Why.
        #[source]
        source: ManifestError,
    },
    /// A backup of the manifest already exists; overwriting it could lose the only copy of an
    /// earlier original.
    #[error(
        "{} already exists (a backup from an earlier migration?); move it away, or pass --no-backup",
        .0.display()
    )]
    BackupExists(PathBuf),
    /// Reading, backing up or replacing the manifest file failed.
    #[error("{action} {}", path.display())]
    File {
        /// What we were doing.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// Building, signing or checking the new manifest failed.
    #[error("writing the migrated manifest")]
    Manifest {
        /// Why.
        #[source]
        source: ManifestError,
    },
}

/// What to do with the kernel or ramdisk id of the manifest.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum IdChange {
    /// Keep whatever the manifest says (including nothing).
    #[default]
    Keep,
    /// Replace (or add) the id.
    Set(String),
    /// Remove the id.
    Remove,
}

impl IdChange {
    fn apply(&self, current: &mut Option<String>) {
        match self {
            Self::Keep => {}
            Self::Set(id) => *current = Some(id.clone()),
            Self::Remove => *current = None,
        }
    }
}

/// The changes a migration makes besides re-wrapping the EC2 side.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    /// `machine_configuration/kernel_id`.
    pub kernel: IdChange,
    /// `machine_configuration/ramdisk_id`.
    pub ramdisk: IdChange,
}

/// Re-wraps `source` for `ec2_cert` (docs/format.md §7 "Consequence for cross-region work"):
///
/// * unwraps `user_encrypted_key` and `user_encrypted_iv` with `user_key`;
/// * wraps the same key and IV text for `ec2_cert` into `ec2_encrypted_key`/`ec2_encrypted_iv`;
/// * keeps the user side (only written in canonical form: lowercase, exactly 2k characters),
///   the image fields, the parts and the bundler block unchanged (a version 3 manifest's
///   possibly empty bundler block becomes amibundle's own);
/// * applies `changes` to the kernel and ramdisk;
/// * writes version 2007-10-10 (a version 3 manifest gets `machine_configuration` with the
///   architecture §10.2 tells readers to assume, `i386`), signs it with `user_key` and runs the
///   strict check.
///
/// The source signature is not checked here; [`migrate`] does that first.
///
/// # Errors
///
/// [`MigrateError::UnknownVersion`] for a version other than 2007-10-10, 2007-08-29 or 3;
/// [`MigrateError::Unwrap`] when `user_key` is not the bundle's key;
/// [`MigrateError::Manifest`] when the result fails the strict check (for example part names
/// that are not `<name>.part.<i>`).
pub fn rewrap(
    source: &Manifest,
    user_key: &UserKey,
    ec2_cert: &Certificate,
    changes: &Changes,
) -> Result<Manifest, MigrateError> {
    if let ManifestVersion::Unknown(version) = &source.version {
        return Err(MigrateError::UnknownVersion {
            version: version.clone(),
        });
    }
    let image = &source.image;
    let aes_key = crypto::unwrap_key(user_key, &image.user_encrypted_key).map_err(|source| {
        MigrateError::Unwrap {
            field: "user_encrypted_key",
            source,
        }
    })?;
    let aes_iv = crypto::unwrap_iv(user_key, &image.user_encrypted_iv).map_err(|source| {
        MigrateError::Unwrap {
            field: "user_encrypted_iv",
            source,
        }
    })?;
    // The plaintext is the 32-character hex text (§7), whatever form the source wrapped.
    let mut key_hex = aes_key.to_hex().into_bytes();
    let mut iv_hex = aes_iv.to_hex().into_bytes();
    let wrapped = crypto::wrap_hex(ec2_cert, &key_hex)
        .map_err(|source| MigrateError::Wrap {
            what: "key",
            source,
        })
        .and_then(|k| {
            crypto::wrap_hex(ec2_cert, &iv_hex)
                .map(|v| (k, v))
                .map_err(|source| MigrateError::Wrap { what: "IV", source })
        });
    key_hex.fill(0);
    iv_hex.fill(0);
    let (ec2_encrypted_key, ec2_encrypted_iv) = wrapped?;

    let k = user_key.modulus_bytes();
    let mut out = source.clone();
    out.version = ManifestVersion::V20071010;
    let bundler = &source.bundler;
    if bundler.name.is_empty() || bundler.version.is_empty() || bundler.release.is_empty() {
        out.bundler = Bundler::amibundle();
    }
    let machine = out.machine.get_or_insert_with(|| MachineConfiguration {
        architecture: VERSION3_ARCHITECTURE.to_owned(),
        block_device_mapping: Vec::new(),
        kernel_id: None,
        ramdisk_id: None,
        product_codes: Vec::new(),
    });
    changes.kernel.apply(&mut machine.kernel_id);
    changes.ramdisk.apply(&mut machine.ramdisk_id);
    out.image.ec2_encrypted_key = ec2_encrypted_key;
    out.image.ec2_encrypted_iv = ec2_encrypted_iv;
    out.image.user_encrypted_key =
        canonical_rsa_hex(&image.user_encrypted_key, k, "user_encrypted_key")?;
    out.image.user_encrypted_iv =
        canonical_rsa_hex(&image.user_encrypted_iv, k, "user_encrypted_iv")?;
    // Digests are written in lowercase (§9.2); the strict check refuses anything else.
    out.image.digest = out.image.digest.to_ascii_lowercase();
    for part in &mut out.image.parts {
        part.digest = part.digest.to_ascii_lowercase();
    }
    let manifest_err = |source| MigrateError::Manifest { source };
    out.sign(user_key).map_err(manifest_err)?;
    out.check_strict().map_err(manifest_err)?;
    Ok(out)
}

/// The same RSA ciphertext as `text` (hex in either case, possibly with leading zero bytes
/// stripped by its writer, §7 reader step 1), written the way §7 requires: exactly `k` bytes,
/// lowercase.
fn canonical_rsa_hex(text: &str, k: usize, field: &'static str) -> Result<String, MigrateError> {
    let bad = || MigrateError::UserField { field, bytes: k };
    let bytes = hex::decode(text.trim()).map_err(|_| bad())?;
    if bytes.len() > k {
        return Err(bad());
    }
    let mut padded = vec![0u8; k - bytes.len()];
    padded.extend_from_slice(&bytes);
    Ok(hex::encode(padded))
}

/// Migrates the manifest file `raw`: parses it, refuses it unless its signature verifies with
/// `user_cert` (as the reference does: "Manifest fails authentication"), then [`rewrap`]s it.
/// Returns the new manifest, its exact bytes (§9.2) and the form the source signature verified
/// in.
///
/// # Errors
///
/// [`MigrateError::Parse`], [`MigrateError::Authenticate`], and those of [`rewrap`].
pub fn migrate(
    raw: &[u8],
    user_key: &UserKey,
    user_cert: &Certificate,
    ec2_cert: &Certificate,
    changes: &Changes,
) -> Result<(Manifest, String, SignatureForm), MigrateError> {
    let authenticate = |source| MigrateError::Authenticate { source };
    let source = Manifest::parse(raw).map_err(|source| MigrateError::Parse { source })?;
    let form = super::manifest::verify_signature(raw, &source, user_cert).map_err(authenticate)?;
    let migrated = rewrap(&source, user_key, ec2_cert, changes)?;
    let xml = migrated
        .to_xml()
        .map_err(|source| MigrateError::Manifest { source })?;
    Ok((migrated, xml, form))
}

/// The backup name of a manifest: `<manifest>.bak`, as the reference names it.
pub fn backup_path(manifest: &Path) -> PathBuf {
    let mut name = manifest.as_os_str().to_owned();
    name.push(".bak");
    PathBuf::from(name)
}

/// Replaces the manifest file at `path` with `xml` atomically: the new bytes go to a temporary
/// file in the same directory (same permissions as the original), are fsynced and renamed over
/// the original, so a reader sees either the old or the new manifest, never a mix. With
/// `keep_backup`, the original is first kept as [`backup_path`] (a hard link, else a copy),
/// created exclusively: an existing backup is an error before anything is written. Returns the
/// backup's path.
///
/// # Errors
///
/// [`MigrateError::BackupExists`], [`MigrateError::File`]. On failure the original is
/// untouched and nothing this call created is left behind.
pub fn replace_manifest_file(
    path: &Path,
    xml: &[u8],
    keep_backup: bool,
) -> Result<Option<PathBuf>, MigrateError> {
    let file_err = |action, path: &Path| {
        let path = path.to_path_buf();
        move |source| MigrateError::File {
            action,
            path,
            source,
        }
    };
    let mode = fs::metadata(path)
        .map_err(file_err("reading", path))?
        .permissions()
        .mode();
    let backup = if keep_backup {
        let backup = backup_path(path);
        create_backup(path, &backup)?;
        Some(backup)
    } else {
        None
    };
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{file_name}.amibundle-{}.tmp", std::process::id()));
    let write = || -> io::Result<()> {
        let mut f = super::parts::create_private_file(&tmp)?;
        f.set_permissions(fs::Permissions::from_mode(mode & 0o7777))?;
        f.write_all(xml)?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, path)?;
        // Make the rename itself durable.
        let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
        File::open(dir.unwrap_or(Path::new(".")))?.sync_all()
    };
    if let Err(source) = write() {
        let _ = fs::remove_file(&tmp);
        if let Some(backup) = &backup {
            let _ = fs::remove_file(backup);
        }
        return Err(MigrateError::File {
            action: "replacing",
            path: path.to_path_buf(),
            source,
        });
    }
    Ok(backup)
}

fn create_backup(original: &Path, backup: &Path) -> Result<(), MigrateError> {
    let err = |source| MigrateError::File {
        action: "keeping a backup as",
        path: backup.to_path_buf(),
        source,
    };
    match fs::hard_link(original, backup) {
        Ok(()) => return Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            return Err(MigrateError::BackupExists(backup.to_path_buf()));
        }
        // Filesystems without hard links: an exclusive copy instead.
        Err(_) => {}
    }
    let bytes = fs::read(original).map_err(err)?;
    let copy = || -> io::Result<()> {
        let mut f = super::parts::create_private_file(backup)?;
        f.write_all(&bytes)?;
        f.sync_all()
    };
    copy().map_err(|e| {
        if e.kind() == io::ErrorKind::AlreadyExists {
            MigrateError::BackupExists(backup.to_path_buf())
        } else {
            let _ = fs::remove_file(backup);
            err(e)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bundle::manifest::{check_strict_bytes, verify_signature};
    use openssl::asn1::Asn1Time;
    use openssl::bn::{BigNum, MsbOption};
    use openssl::hash::MessageDigest;
    use openssl::nid::Nid;
    use openssl::pkey::PKey;
    use openssl::rsa::Rsa;
    use openssl::x509::{X509, X509NameBuilder};
    use std::fs;
    use std::path::PathBuf;

    const VECTORS: [&str; 4] = [
        "v1-small-ext4",
        "v2-three-parts",
        "v3-sparse-islands",
        "v4-prefix",
    ];

    fn testdata() -> PathBuf {
        crate::test_data()
    }

    fn user_key() -> UserKey {
        UserKey::from_pem(&fs::read(testdata().join("keys/user-key.pem")).unwrap()).unwrap()
    }

    fn user_cert() -> Certificate {
        Certificate::load(&testdata().join("keys/user-cert.pem")).unwrap()
    }

    struct Vector {
        raw: Vec<u8>,
        key_hex: String,
        iv_hex: String,
    }

    fn vector(name: &str) -> Vector {
        let dir = testdata().join("peer-bundles").join(name);
        let expected: serde_json::Value =
            serde_json::from_slice(&fs::read(dir.join("expected.json")).unwrap()).unwrap();
        Vector {
            raw: fs::read(dir.join(expected["manifest"].as_str().unwrap())).unwrap(),
            key_hex: expected["aes_key_hex"].as_str().unwrap().to_owned(),
            iv_hex: expected["aes_iv_hex"].as_str().unwrap().to_owned(),
        }
    }

    /// A throwaway "EC2" key pair that is not the vectors' stand-in: RSA of `bits`, with a
    /// self-signed certificate, made with OpenSSL here so nothing about it is on disk.
    fn second_ec2_pair(bits: u32) -> (UserKey, Certificate) {
        let pkey = PKey::from_rsa(Rsa::generate(bits).unwrap()).unwrap();
        let mut name = X509NameBuilder::new().unwrap();
        name.append_entry_by_nid(Nid::COMMONNAME, "throwaway EC2 stand-in")
            .unwrap();
        let name = name.build();
        let mut serial = BigNum::new().unwrap();
        serial.rand(64, MsbOption::MAYBE_ZERO, false).unwrap();
        let mut b = X509::builder().unwrap();
        b.set_version(2).unwrap();
        b.set_serial_number(&serial.to_asn1_integer().unwrap())
            .unwrap();
        b.set_subject_name(&name).unwrap();
        b.set_issuer_name(&name).unwrap();
        b.set_not_before(&Asn1Time::days_from_now(0).unwrap())
            .unwrap();
        b.set_not_after(&Asn1Time::days_from_now(1).unwrap())
            .unwrap();
        b.set_pubkey(&pkey).unwrap();
        b.sign(&pkey, MessageDigest::sha256()).unwrap();
        let cert = Certificate::from_pem(&b.build().to_pem().unwrap()).unwrap();
        let key = UserKey::from_pem(&pkey.private_key_to_pem_pkcs8().unwrap()).unwrap();
        (key, cert)
    }

    #[test]
    fn rewrapped_ec2_side_opens_with_the_new_key_and_everything_else_is_kept() {
        let (ec2_key, ec2_cert) = second_ec2_pair(1024);
        let (user_key, user_cert) = (user_key(), user_cert());
        for name in VECTORS {
            let v = vector(name);
            let source = Manifest::parse(&v.raw).unwrap();
            let (migrated, xml, form) = migrate(
                &v.raw,
                &user_key,
                &user_cert,
                &ec2_cert,
                &Changes::default(),
            )
            .unwrap();
            assert_eq!(form, SignatureForm::Raw, "{name}");

            // The EC2 side now opens with the second key, to the vector's K and V.
            let k = crypto::unwrap_key(&ec2_key, &migrated.image.ec2_encrypted_key).unwrap();
            let iv = crypto::unwrap_iv(&ec2_key, &migrated.image.ec2_encrypted_iv).unwrap();
            assert_eq!(k.to_hex(), v.key_hex, "{name}");
            assert_eq!(iv.to_hex(), v.iv_hex, "{name}");
            assert_eq!(
                migrated.image.ec2_encrypted_key.len(),
                256,
                "RSA-1024: 2k hex"
            );
            assert_ne!(
                migrated.image.ec2_encrypted_key,
                source.image.ec2_encrypted_key
            );
            // ... and no longer with the vectors' stand-in key.
            let stand_in =
                UserKey::from_pem(&fs::read(testdata().join("keys/ec2-test-key.pem")).unwrap())
                    .unwrap();
            assert!(
                crypto::unwrap_key(&stand_in, &migrated.image.ec2_encrypted_key).is_err(),
                "{name}"
            );

            // The signature verifies with the user certificate, over the exact bytes written,
            // and the file is in the strict 2007-10-10 form.
            assert_eq!(
                verify_signature(xml.as_bytes(), &migrated, &user_cert).unwrap(),
                SignatureForm::Raw
            );
            assert_eq!(check_strict_bytes(xml.as_bytes()).unwrap(), migrated);

            // Everything but the EC2 side and the signature is exactly the source: putting the
            // source's EC2 fields and signature back gives the source file byte for byte.
            let mut back = migrated.clone();
            back.image.ec2_encrypted_key = source.image.ec2_encrypted_key.clone();
            back.image.ec2_encrypted_iv = source.image.ec2_encrypted_iv.clone();
            back.signature = source.signature.clone();
            assert_eq!(back, source, "{name}");
            assert_eq!(
                back.to_xml().unwrap().as_bytes(),
                v.raw.as_slice(),
                "{name}"
            );
        }
    }

    #[test]
    fn a_larger_ec2_certificate_gives_longer_ec2_fields() {
        // cn-north-1's EC2 certificate is RSA-2048 (§11.1): the EC2 side grows to 512 hex.
        let (ec2_key, ec2_cert) = second_ec2_pair(2048);
        let v = vector("v4-prefix");
        let (m, _, _) = migrate(
            &v.raw,
            &user_key(),
            &user_cert(),
            &ec2_cert,
            &Changes::default(),
        )
        .unwrap();
        assert_eq!(m.image.ec2_encrypted_key.len(), 512);
        assert_eq!(m.image.ec2_encrypted_iv.len(), 512);
        let iv = crypto::unwrap_iv(&ec2_key, &m.image.ec2_encrypted_iv).unwrap();
        assert_eq!(iv.to_hex(), v.iv_hex);
    }

    #[test]
    fn kernel_and_ramdisk_changes_are_applied_and_signed() {
        let (_, ec2_cert) = second_ec2_pair(1024);
        let v = vector("v1-small-ext4");
        let source = Manifest::parse(&v.raw).unwrap();
        let mc = source.machine.as_ref().unwrap();
        assert!(mc.kernel_id.is_some() && mc.ramdisk_id.is_some());

        let changes = Changes {
            kernel: IdChange::Set("aki-0123abcd".into()),
            ramdisk: IdChange::Remove,
        };
        let (m, xml, _) = migrate(&v.raw, &user_key(), &user_cert(), &ec2_cert, &changes).unwrap();
        let mc2 = m.machine.as_ref().unwrap();
        assert_eq!(mc2.kernel_id.as_deref(), Some("aki-0123abcd"));
        assert_eq!(mc2.ramdisk_id, None);
        assert!(xml.contains("<kernel_id>aki-0123abcd</kernel_id>"));
        assert!(!xml.contains("<ramdisk_id>"));
        // Mappings and product codes are untouched.
        assert_eq!(mc2.block_device_mapping, mc.block_device_mapping);
        assert_eq!(mc2.product_codes, mc.product_codes);
        verify_signature(xml.as_bytes(), &m, &user_cert()).unwrap();

        // Keep leaves them as they were.
        let (kept, _, _) = migrate(
            &v.raw,
            &user_key(),
            &user_cert(),
            &ec2_cert,
            &Changes::default(),
        )
        .unwrap();
        assert_eq!(kept.machine.as_ref().unwrap().kernel_id, mc.kernel_id);
        assert_eq!(kept.machine.as_ref().unwrap().ramdisk_id, mc.ramdisk_id);

        // An id that would need escaping is refused by the strict check, not written.
        let bad = Changes {
            kernel: IdChange::Set("aki-<x>".into()),
            ..Changes::default()
        };
        assert!(matches!(
            migrate(&v.raw, &user_key(), &user_cert(), &ec2_cert, &bad).unwrap_err(),
            MigrateError::Manifest { .. }
        ));
    }

    #[test]
    fn a_tampered_manifest_or_a_foreign_key_is_refused() {
        let (other_key, other_cert) = second_ec2_pair(2048);
        let v = vector("v4-prefix");
        let text = String::from_utf8(v.raw.clone()).unwrap();
        let tampered = text.replace("<size>3000</size>", "<size>3001</size>");
        let err = migrate(
            tampered.as_bytes(),
            &user_key(),
            &user_cert(),
            &other_cert,
            &Changes::default(),
        )
        .unwrap_err();
        assert!(matches!(err, MigrateError::Authenticate { .. }), "{err}");

        // A key pair the bundle was not made for: the signature does not verify with it...
        let err = migrate(
            &v.raw,
            &other_key,
            &other_cert,
            &other_cert,
            &Changes::default(),
        )
        .unwrap_err();
        assert!(matches!(err, MigrateError::Authenticate { .. }), "{err}");
        // ... and, asked to re-wrap directly, its key cannot open the user side.
        let source = Manifest::parse(&v.raw).unwrap();
        let err = rewrap(&source, &other_key, &other_cert, &Changes::default()).unwrap_err();
        assert!(
            matches!(
                err,
                MigrateError::Unwrap {
                    field: "user_encrypted_key",
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn unknown_versions_are_refused_and_old_ones_become_2007_10_10() {
        let (_, ec2_cert) = second_ec2_pair(1024);
        let v = vector("v4-prefix");
        let text = String::from_utf8(v.raw.clone()).unwrap();
        let unknown = text.replace(
            "<version>2007-10-10</version>",
            "<version>2099-01-01</version>",
        );
        let err = migrate(
            unknown.as_bytes(),
            &user_key(),
            &user_cert(),
            &ec2_cert,
            &Changes::default(),
        )
        .unwrap_err();
        assert!(matches!(err, MigrateError::UnknownVersion { .. }), "{err}");
        assert!(err.to_string().contains("2099-01-01"), "{err}");

        // A version-3 manifest (no machine_configuration, signature over image alone, empty
        // bundler fields), signed the way its writer would have.
        let start = text.find("<machine_configuration>").unwrap();
        let end = text.find("</machine_configuration>").unwrap() + "</machine_configuration>".len();
        let bundler_start = text.find("<bundler>").unwrap();
        let bundler_end = text.find("</bundler>").unwrap() + "</bundler>".len();
        let mut v3 = format!(
            "{}<bundler><name></name><version></version><release></release></bundler>{}{}",
            &text[..bundler_start],
            &text[bundler_end..start],
            &text[end..]
        )
        .replace("<version>2007-10-10</version>", "<version>3</version>")
        .replace("<type>machine</type>", "");
        let image = &v3[v3.find("<image>").unwrap()..v3.find("</image>").unwrap() + 8];
        let sig = crypto::sign_sha1_hex(&user_key(), image.as_bytes()).unwrap();
        let old_sig = Manifest::parse(v3.as_bytes()).unwrap().signature;
        v3 = v3.replace(&old_sig, &sig);

        let (m, xml, _) = migrate(
            v3.as_bytes(),
            &user_key(),
            &user_cert(),
            &ec2_cert,
            &Changes::default(),
        )
        .unwrap();
        assert_eq!(m.version, ManifestVersion::V20071010);
        assert_eq!(m.machine.as_ref().unwrap().architecture, "i386");
        assert_eq!(m.image.image_type, "machine");
        assert_eq!(m.bundler, Bundler::amibundle());
        check_strict_bytes(xml.as_bytes()).unwrap();
        verify_signature(xml.as_bytes(), &m, &user_cert()).unwrap();
    }

    #[test]
    fn manifest_file_is_replaced_atomically_with_an_exclusive_backup() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.manifest.xml");
        fs::write(&path, b"old").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();

        let backup = replace_manifest_file(&path, b"new", true).unwrap().unwrap();
        assert_eq!(backup, dir.path().join("x.manifest.xml.bak"));
        assert_eq!(fs::read(&path).unwrap(), b"new");
        assert_eq!(fs::read(&backup).unwrap(), b"old");
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o644
        );

        // A second migration would overwrite the only copy of the original: refused, and the
        // manifest is left alone.
        let err = replace_manifest_file(&path, b"newer", true).unwrap_err();
        assert!(matches!(err, MigrateError::BackupExists(_)), "{err}");
        assert_eq!(fs::read(&path).unwrap(), b"new");
        assert_eq!(fs::read(&backup).unwrap(), b"old");

        assert_eq!(replace_manifest_file(&path, b"newer", false).unwrap(), None);
        assert_eq!(fs::read(&path).unwrap(), b"newer");
        let mut names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        assert_eq!(names, ["x.manifest.xml", "x.manifest.xml.bak"]);

        // A missing manifest is an error naming it, and no backup appears.
        let missing = dir.path().join("gone.manifest.xml");
        let err = replace_manifest_file(&missing, b"x", true).unwrap_err();
        assert!(err.to_string().contains("gone.manifest.xml"), "{err}");
        assert!(!backup_path(&missing).exists());
    }

    #[test]
    fn user_side_is_written_canonically() {
        let (_, ec2_cert) = second_ec2_pair(1024);
        let v = vector("v2-three-parts");
        let mut source = Manifest::parse(&v.raw).unwrap();
        let original = source.image.user_encrypted_iv.clone();
        // A writer that used uppercase hex (§7 reader step 1 accepts either case): the same
        // ciphertext, so it still unwraps, and it comes out lowercase. Stripped leading zero
        // bytes are restored (checked on the helper directly below).
        source.image.user_encrypted_iv = original.to_ascii_uppercase();
        source.image.digest = source.image.digest.to_ascii_uppercase();
        let m = rewrap(&source, &user_key(), &ec2_cert, &Changes::default()).unwrap();
        assert_eq!(m.image.user_encrypted_iv, original);
        assert_eq!(m.image.digest, source.image.digest.to_ascii_lowercase());
        assert_eq!(
            canonical_rsa_hex("0abc", 4, "user_encrypted_key").unwrap(),
            "00000abc"
        );
        assert!(canonical_rsa_hex("0abcdef012", 4, "user_encrypted_key").is_err());
        assert!(canonical_rsa_hex("zz", 4, "user_encrypted_key").is_err());
    }
}
