//! The command line as users meet it: help, usage errors, and the errors a user can cause, each
//! with a message naming the flag or file and a non-zero exit.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use crate::support::*;

fn help_of(args: &[&str]) -> String {
    let home = tempfile::tempdir().unwrap();
    let out = run_ok(amibundle(home.path()).args(args));
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn help_fits_in_80_columns() {
    for cmd in [
        &["--help"][..],
        &["bundle-image", "--help"],
        &["unbundle", "--help"],
        &["verify", "--help"],
        &["certs", "--help"],
        &["certs", "install", "--help"],
        &["upload", "--help"],
        &["download", "--help"],
        &["delete", "--help"],
        &["register", "--help"],
    ] {
        for line in help_of(cmd).lines() {
            assert!(line.chars().count() <= 80, "{cmd:?}: {line:?}");
        }
    }
}

#[test]
fn usage_errors_exit_2() {
    let home = tempfile::tempdir().unwrap();
    let out = amibundle(home.path())
        .args(["bundle-image", "--no-such-flag"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = amibundle(home.path())
        .args(["bundle-image"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "missing -i and -u");
}

/// A small image and the test keys, ready for bundle-image runs.
struct Setup {
    keys: Keys,
    home: tempfile::TempDir,
    work: tempfile::TempDir,
}

impl Setup {
    fn new() -> Self {
        let s = Setup {
            keys: Keys::new(),
            home: tempfile::tempdir().unwrap(),
            work: tempfile::tempdir().unwrap(),
        };
        fs::write(s.work.path().join("small.img"), vec![5u8; 100_000]).unwrap();
        fs::create_dir(s.work.path().join("out")).unwrap();
        s
    }
    fn image(&self) -> std::path::PathBuf {
        self.work.path().join("small.img")
    }
    fn out(&self) -> std::path::PathBuf {
        self.work.path().join("out")
    }
    fn cmd(&self, extra: &[&str]) -> std::process::Command {
        let mut c = amibundle(self.home.path());
        c.args(["bundle-image", "-i"])
            .arg(self.image())
            .arg("-d")
            .arg(self.out())
            .args(extra);
        c
    }
    fn with_keys(&self, extra: &[&str]) -> std::process::Command {
        let mut c = self.cmd(extra);
        c.arg("-k")
            .arg(self.keys.user_key())
            .arg("-c")
            .arg(self.keys.user_cert());
        c.arg("--ec2cert")
            .arg(self.keys.ec2_cert())
            .arg("--unpinned-ec2cert");
        c
    }
    fn out_is_empty(&self) -> bool {
        fs::read_dir(self.out()).unwrap().count() == 0
    }
}

#[test]
fn bad_account_ids_are_refused() {
    let s = Setup::new();
    for bad in [
        "12345678901",
        "1234567890123",
        "12345678901a",
        "x123456789012",
    ] {
        let err = run_err(&mut s.with_keys(&["-u", bad]));
        assert!(err.contains("12 digits"), "{bad}: {err}");
    }
    assert!(s.out_is_empty());
}

#[test]
fn key_without_cert_and_mismatched_pair_are_refused() {
    let s = Setup::new();
    let err = run_err(
        s.cmd(&["-u", "123456789012"])
            .arg("-k")
            .arg(s.keys.user_key()),
    );
    assert!(
        err.contains("--privatekey") && err.contains("--cert"),
        "{err}"
    );
    let err = run_err(
        s.cmd(&["-u", "123456789012"])
            .arg("-c")
            .arg(s.keys.user_cert()),
    );
    assert!(
        err.contains("--cert") && err.contains("--privatekey"),
        "{err}"
    );
    let err = run_err(
        s.cmd(&["-u", "123456789012", "--ec2cert"])
            .arg(s.keys.ec2_cert())
            .arg("--unpinned-ec2cert")
            .arg("-k")
            .arg(s.keys.ec2_key())
            .arg("-c")
            .arg(s.keys.user_cert()),
    );
    assert!(err.contains("does not match"), "{err}");
    assert!(s.out_is_empty());
}

#[test]
fn world_readable_key_is_refused() {
    let s = Setup::new();
    fs::set_permissions(s.keys.user_key(), fs::Permissions::from_mode(0o644)).unwrap();
    let err = run_err(&mut s.with_keys(&["-u", "123456789012"]));
    assert!(err.contains(s.keys.user_key().to_str().unwrap()), "{err}");
    assert!(s.out_is_empty());
}

#[test]
fn unpinned_ec2_certificate_needs_acknowledgement() {
    let s = Setup::new();
    let err = run_err(
        s.cmd(&["-u", "123456789012", "--ec2cert"])
            .arg(s.keys.ec2_cert())
            .arg("-k")
            .arg(s.keys.user_key())
            .arg("-c")
            .arg(s.keys.user_cert()),
    );
    assert!(err.contains("--unpinned-ec2cert"), "{err}");
    assert!(s.out_is_empty());
}

#[test]
fn empty_image_and_bad_names_are_refused() {
    let s = Setup::new();
    let empty = s.work.path().join("empty.img");
    fs::write(&empty, b"").unwrap();
    let mut c = amibundle(s.home.path());
    c.args(["bundle-image", "-u", "123456789012", "-i"])
        .arg(&empty)
        .arg("-d")
        .arg(s.out());
    c.arg("-k")
        .arg(s.keys.user_key())
        .arg("-c")
        .arg(s.keys.user_cert());
    c.arg("--ec2cert")
        .arg(s.keys.ec2_cert())
        .arg("--unpinned-ec2cert");
    let err = run_err(&mut c);
    assert!(err.contains("empty") && err.contains("empty.img"), "{err}");

    for bad in ["has space", "-dash", "a/b", &"x".repeat(101)] {
        let err = run_err(&mut s.with_keys(&["-u", "123456789012", "-p", bad]));
        assert!(err.contains("--prefix"), "{bad}: {err}");
    }
    let err = run_err(&mut s.with_keys(&["-u", "123456789012", "-r", "sparc"]));
    assert!(err.contains("sparc") && err.contains("--arch"), "{err}");
    let err = run_err(&mut s.with_keys(&["-u", "123456789012", "--compression-level", "0"]));
    assert!(err.contains("--compression-level"), "{err}");
    fs::remove_file(s.image()).unwrap();
    let missing = run_err(&mut s.with_keys(&["-u", "123456789012"]));
    assert!(missing.contains("small.img"), "{missing}");
    assert!(s.out_is_empty());
}

#[test]
fn existing_bundle_is_not_replaced_without_overwrite() {
    let s = Setup::new();
    run_ok(&mut s.with_keys(&["-u", "123456789012"]));
    let manifest = s.out().join("small.img.manifest.xml");
    let before = fs::read(&manifest).unwrap();
    let err = run_err(&mut s.with_keys(&["-u", "123456789012"]));
    assert!(
        err.contains("--overwrite") && err.contains("small.img"),
        "{err}"
    );
    assert_eq!(
        fs::read(&manifest).unwrap(),
        before,
        "the existing bundle is untouched"
    );
    run_ok(&mut s.with_keys(&["-u", "123456789012", "--overwrite"]));
    assert_ne!(
        fs::read(&manifest).unwrap(),
        before,
        "a fresh key and IV make a new manifest"
    );
    let entries: Vec<_> = fs::read_dir(s.out())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(entries.len(), 2, "{entries:?}");
}

#[test]
fn outputs_are_private_and_json_is_complete() {
    let s = Setup::new();
    let out = run_ok(&mut s.with_keys(&["-u", "123456789012", "--json"]));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["version"], 1);
    assert_eq!(v["part_count"], 1);
    assert_eq!(v["image_size"], 100_000);
    let manifest = Path::new(v["manifest"].as_str().unwrap());
    for p in [manifest.to_path_buf(), s.out().join("small.img.part.0")] {
        let mode = fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", p.display());
    }
}

#[test]
fn own_identity_is_created_once_with_private_modes() {
    let s = Setup::new();
    let mut c = s.cmd(&["-u", "123456789012", "--ec2cert"]);
    c.arg(s.keys.ec2_cert()).arg("--unpinned-ec2cert");
    let out = run_ok(&mut c);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let dir = s.home.path().join(".config/amibundle/identity");
    assert!(
        stderr.contains(dir.to_str().unwrap()),
        "the run says where the new key is: {stderr}"
    );
    assert_eq!(
        fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
        0o700
    );
    assert_eq!(
        fs::metadata(dir.join("user-key.pem"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
    let key_before = fs::read(dir.join("user-key.pem")).unwrap();

    // Second run reuses it, and unbundle defaults to it.
    let mut c = s.cmd(&["-u", "123456789012", "--overwrite", "--ec2cert"]);
    c.arg(s.keys.ec2_cert()).arg("--unpinned-ec2cert");
    let out = run_ok(&mut c);
    assert!(!String::from_utf8_lossy(&out.stderr).contains("created a new"));
    assert_eq!(fs::read(dir.join("user-key.pem")).unwrap(), key_before);
    let restored = s.work.path().join("restored");
    fs::create_dir(&restored).unwrap();
    run_ok(
        amibundle(s.home.path())
            .args(["unbundle", "-m"])
            .arg(s.out().join("small.img.manifest.xml"))
            .arg("-d")
            .arg(&restored),
    );
    assert_eq!(
        fs::read(restored.join("small.img")).unwrap(),
        fs::read(s.image()).unwrap()
    );
}

#[test]
fn certs_lists_regions_and_refuses_unpinned_certificates_from_a_zip() {
    use std::io::Write;
    let keys = Keys::new();
    let home = tempfile::tempdir().unwrap();
    let out = run_ok(amibundle(home.path()).args([
        "certs",
        "--json",
        "--region",
        "us-east-1,us-gov-east-1",
    ]));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let regions = v["regions"].as_array().unwrap();
    assert_eq!(regions.len(), 2);
    assert!(
        regions[0]["error"]
            .as_str()
            .unwrap()
            .contains("certs install"),
        "{v}"
    );
    assert!(
        regions[1]["error"].as_str().unwrap().contains("--ec2cert"),
        "{v}"
    );

    // A zip laid out like ec2-ami-tools whose cert-ec2.pem is NOT Amazon's: nothing installed.
    let zip_path = home.path().join("ec2-ami-tools.zip");
    let mut zip = zip::ZipWriter::new(fs::File::create(&zip_path).unwrap());
    zip.start_file(
        "ec2-ami-tools-1.5.7/etc/ec2/amitools/cert-ec2.pem",
        zip::write::SimpleFileOptions::default(),
    )
    .unwrap();
    zip.write_all(&fs::read(keys.ec2_cert()).unwrap()).unwrap();
    zip.finish().unwrap();
    let cache = home.path().join("cache");
    let err = run_err(
        amibundle(home.path())
            .args(["certs", "install", "--from"])
            .arg(&zip_path)
            .arg("--cache-dir")
            .arg(&cache),
    );
    assert!(
        err.contains("ec2-ami-tools.zip") && err.contains("nothing was installed"),
        "{err}"
    );
    assert!(!cache.join("cert-ec2.pem").exists());

    let err = run_err(
        amibundle(home.path())
            .args(["certs", "install", "--from"])
            .arg(keys.user_cert()),
    );
    assert!(err.contains("user-cert.pem"), "{err}");
}

#[test]
fn sigterm_during_bundling_cleans_up_and_exits_143() {
    use std::io::Write;
    use std::process::Stdio;
    let s = Setup::new();
    let mut cmd = amibundle(s.home.path());
    cmd.args([
        "bundle-image",
        "-u",
        "123456789012",
        "-i",
        "-",
        "--size",
        "104857600",
        "-p",
        "sig",
        "-d",
    ]);
    cmd.arg(s.out())
        .arg("-k")
        .arg(s.keys.user_key())
        .arg("-c")
        .arg(s.keys.user_cert());
    cmd.arg("--ec2cert")
        .arg(s.keys.ec2_cert())
        .arg("--unpinned-ec2cert");
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let chunk = vec![0x5au8; 1 << 20];
    for _ in 0..5 {
        stdin.write_all(&chunk).unwrap();
    }
    std::thread::sleep(std::time::Duration::from_millis(300));
    // The staging directory (and the bundle name's lock) exist while the run is in flight.
    let staging: Vec<_> = fs::read_dir(s.out())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    assert_eq!(staging.len(), 1, "{staging:?}");
    let status = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    // More input makes the pipeline notice at its next write.
    for _ in 0..20 {
        if stdin.write_all(&chunk).is_err() {
            break;
        }
    }
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(143),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("interrupted"));
    assert!(s.out_is_empty(), "nothing is left in the destination");
}

/// Issue 13: `unbundle -d` failed on a missing directory (`writing image DIR/.NAME…partial: No
/// such file or directory`) while `download -d` created it. Every `-d` creates a missing
/// directory (with its parents, 0700), and one that is a file is an error naming the flag.
#[test]
fn every_dash_d_creates_a_missing_directory_privately() {
    let s = Setup::new();
    let bundles = s.work.path().join("new/bundles");
    let mut bundle = amibundle(s.home.path());
    bundle
        .args(["bundle-image", "-u", "123456789012", "-r", "x86_64", "-i"])
        .arg(s.image())
        .arg("-d")
        .arg(&bundles)
        .args(s.keys.bundle_args());
    run_ok(&mut bundle);
    let manifest = bundles.join("small.img.manifest.xml");
    assert!(manifest.is_file());
    let unbundle_into = |dest: &Path| {
        let mut cmd = amibundle(s.home.path());
        cmd.args(["unbundle", "-m"])
            .arg(&manifest)
            .arg("-k")
            .arg(s.keys.user_key())
            .arg("-d")
            .arg(dest);
        cmd
    };
    let images = s.work.path().join("new/images/deeper");
    run_ok(&mut unbundle_into(&images));
    assert_eq!(
        fs::read(images.join("small.img")).unwrap(),
        vec![5u8; 100_000]
    );
    for dir in [&bundles, &images, &images.parent().unwrap().to_path_buf()] {
        let mode = fs::metadata(dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700, "{}", dir.display());
    }
    let file = s.work.path().join("a-file");
    fs::write(&file, b"x").unwrap();
    let err = run_err(&mut unbundle_into(&file));
    assert!(
        err.contains("-d/--destination") && err.contains("is not a directory"),
        "{err}"
    );
}
