//! The reference-made bundles of tests/data verify and unbundle to their known answers,
//! and tampered copies fail with a message naming what is wrong (docs/format.md §14.3).

use std::fs;
use std::path::{Path, PathBuf};

use crate::support::*;

fn manifest_of(dir: &Path, name: &str) -> PathBuf {
    dir.join(expected(name)["manifest"].as_str().unwrap())
}

#[test]
fn every_vector_verifies_with_its_known_answers() {
    let keys = Keys::new();
    let home = tempfile::tempdir().unwrap();
    for name in VECTORS {
        let exp = expected(name);
        let out = run_ok(
            amibundle(home.path())
                .args(["verify", "--json", "-m"])
                .arg(manifest_of(&vector_dir(name), name))
                .arg("-c")
                .arg(keys.user_cert())
                .arg("-k")
                .arg(keys.user_key()),
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["ok"], true, "{name}");
        assert_eq!(
            v["signature"], "raw",
            "{name}: the reference signs the raw bytes"
        );
        assert_eq!(v["tar_sha1"], exp["tar_stream_sha1"], "{name}");
        assert_eq!(v["image_size"], exp["image_size"], "{name}");
        assert_eq!(v["parts"], exp["parts"].as_array().unwrap().len(), "{name}");
    }
}

#[test]
fn every_vector_unbundles_to_the_original_image() {
    let keys = Keys::new();
    let home = tempfile::tempdir().unwrap();
    for name in VECTORS {
        let exp = expected(name);
        let out_dir = tempfile::tempdir().unwrap();
        let out = run_ok(
            amibundle(home.path())
                .args(["unbundle", "--json", "-m"])
                .arg(manifest_of(&vector_dir(name), name))
                .arg("-k")
                .arg(keys.user_key())
                .arg("-c")
                .arg(keys.user_cert())
                .arg("-d")
                .arg(out_dir.path()),
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let image = out_dir.path().join(exp["image_name"].as_str().unwrap());
        assert_eq!(v["image"].as_str().unwrap(), image.to_str().unwrap());
        assert_eq!(
            fs::metadata(&image).unwrap().len(),
            exp["image_size"].as_u64().unwrap(),
            "{name}"
        );
        assert_eq!(
            sha1sum(&image),
            exp["image_sha1"].as_str().unwrap(),
            "{name}"
        );
        if name == "v1-small-ext4" || name == "v3-sparse-islands" {
            assert!(
                allocated(&image) < exp["image_size"].as_u64().unwrap() / 4,
                "{name}: output must stay sparse, {} bytes allocated",
                allocated(&image)
            );
        }
        // Nothing but the image is left in the destination.
        assert_eq!(fs::read_dir(out_dir.path()).unwrap().count(), 1, "{name}");
    }
}

/// A tampered copy of a vector and what verify/unbundle must say about it.
struct Tampered {
    dir: tempfile::TempDir,
    manifest: PathBuf,
}

fn tampered(name: &str, change: impl FnOnce(&Path, &Path)) -> Tampered {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&vector_dir(name), dir.path());
    fs::remove_file(dir.path().join("expected.json")).unwrap();
    let manifest = manifest_of(dir.path(), name);
    change(dir.path(), &manifest);
    Tampered { dir, manifest }
}

fn flip_byte(path: &Path, at: usize) {
    let mut bytes = fs::read(path).unwrap();
    bytes[at] ^= 0x01;
    fs::write(path, bytes).unwrap();
}

fn edit_manifest(path: &Path, f: impl FnOnce(String) -> String) {
    let xml = fs::read_to_string(path).unwrap();
    let new = f(xml.clone());
    assert_ne!(xml, new, "the edit must change the manifest");
    fs::write(path, new).unwrap();
}

fn verify_err(t: &Tampered, keys: &Keys, with_cert: bool, with_key: bool) -> String {
    let home = tempfile::tempdir().unwrap();
    let mut cmd = amibundle(home.path());
    cmd.args(["verify", "-m"]).arg(&t.manifest);
    if with_cert {
        cmd.arg("-c").arg(keys.user_cert());
    }
    if !with_cert && !with_key {
        // The parts-only check (no key to check the signature with).
        cmd.arg("--skip-signature");
    }
    if with_key {
        cmd.arg("-k").arg(keys.user_key());
    }
    run_err(&mut cmd)
}

fn unbundle_err(t: &Tampered, key: &Path) -> String {
    let home = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let err = run_err(
        amibundle(home.path())
            .args(["unbundle", "-m"])
            .arg(&t.manifest)
            .arg("-k")
            .arg(key)
            .arg("-d")
            .arg(out.path()),
    );
    assert_eq!(
        fs::read_dir(out.path()).unwrap().count(),
        0,
        "a failed unbundle leaves nothing behind: {err}"
    );
    err
}

#[test]
fn flipped_byte_in_a_part_is_named_before_decryption() {
    let keys = Keys::new();
    let t = tampered("v2-three-parts", |dir, _| {
        flip_byte(&dir.join("random.img.part.1"), 4096)
    });
    for err in [
        verify_err(&t, &keys, false, false),
        unbundle_err(&t, &keys.user_key()),
    ] {
        assert!(err.contains("part random.img.part.1 is corrupt"), "{err}");
    }
}

#[test]
fn missing_and_truncated_parts_are_named() {
    let keys = Keys::new();
    let t = tampered("v2-three-parts", |dir, _| {
        fs::remove_file(dir.join("random.img.part.2")).unwrap()
    });
    let err = unbundle_err(&t, &keys.user_key());
    assert!(err.contains("part random.img.part.2 is missing"), "{err}");

    let t = tampered("v2-three-parts", |dir, _| {
        let p = dir.join("random.img.part.2");
        let bytes = fs::read(&p).unwrap();
        fs::write(&p, &bytes[..bytes.len() - 16]).unwrap();
    });
    let err = verify_err(&t, &keys, false, false);
    assert!(err.contains("bundled_size"), "{err}");
}

#[test]
fn tampered_signature_and_fields_fail_the_signature_check() {
    let keys = Keys::new();
    let t = tampered("v4-prefix", |_, m| {
        edit_manifest(m, |x| {
            let sig = element(&x, "signature");
            let mut bad = sig.clone().into_bytes();
            bad[10] = if bad[10] == b'0' { b'1' } else { b'0' };
            x.replace(&sig, std::str::from_utf8(&bad).unwrap())
        })
    });
    let err = verify_err(&t, &keys, true, false);
    assert!(err.to_lowercase().contains("signature"), "{err}");

    let t = tampered("v4-prefix", |_, m| {
        edit_manifest(m, |x| x.replace("<size>3000</size>", "<size>3001</size>"))
    });
    let err = verify_err(&t, &keys, true, false);
    assert!(err.to_lowercase().contains("signature"), "{err}");
}

#[test]
fn tampered_digest_is_a_digest_mismatch() {
    let keys = Keys::new();
    let exp = expected("v1-small-ext4");
    let digest = exp["tar_stream_sha1"].as_str().unwrap().to_string();
    let t = tampered("v1-small-ext4", |_, m| {
        edit_manifest(m, |x| x.replace(&digest, &"0".repeat(40)))
    });
    // The edit breaks the signature, which is checked first...
    let err = unbundle_err(&t, &keys.user_key());
    assert!(err.contains("manifest signature does not verify"), "{err}");
    // ...and signed again by the user's key, the stream's digest is what tells.
    edit_manifest(&t.manifest, |x| signed_with(&x, &keys.user_key()));
    let err = unbundle_err(&t, &keys.user_key());
    assert!(
        err.contains("tar stream has SHA-1") && err.contains(&digest),
        "{err}"
    );
}

#[test]
fn uppercase_digest_is_still_accepted() {
    let keys = Keys::new();
    let exp = expected("v1-small-ext4");
    let digest = exp["tar_stream_sha1"].as_str().unwrap().to_string();
    let t = tampered("v1-small-ext4", |_, m| {
        edit_manifest(m, |x| x.replace(&digest, &digest.to_uppercase()))
    });
    edit_manifest(&t.manifest, |x| signed_with(&x, &keys.user_key()));
    let home = tempfile::tempdir().unwrap();
    run_ok(
        amibundle(home.path())
            .args(["verify", "-m"])
            .arg(&t.manifest)
            .arg("-k")
            .arg(keys.user_key()),
    );
}

#[test]
fn wrong_private_key_is_reported_as_such() {
    let keys = Keys::new();
    let t = tampered("v4-prefix", |_, _| {});
    // A smaller key than the bundle's, and another key of the same size.
    let err = unbundle_err(&t, &keys.ec2_key());
    assert!(err.to_lowercase().contains("wrong private key"), "{err}");
    let other = keys.dir.path().join("other-key.pem");
    run_ok(
        std::process::Command::new("openssl")
            .args(["genrsa", "-out"])
            .arg(&other)
            .arg("2048")
            .stderr(std::process::Stdio::null()),
    );
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&other, fs::Permissions::from_mode(0o600)).unwrap();
    }
    let err = unbundle_err(&t, &other);
    assert!(err.to_lowercase().contains("wrong private key"), "{err}");
}

#[test]
fn group_readable_key_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let keys = Keys::new();
    fs::set_permissions(keys.user_key(), fs::Permissions::from_mode(0o640)).unwrap();
    let t = tampered("v4-prefix", |_, _| {});
    let err = unbundle_err(&t, &keys.user_key());
    assert!(
        err.contains(keys.user_key().to_str().unwrap()) && err.contains("chmod"),
        "{err}"
    );
    let _ = t.dir;
}
