//! Our bundles of several shapes, decoded by a path made only of standard tools (openssl, gzip,
//! sha1sum, GNU tar): the extracted image equals the input and the stream digest equals the
//! manifest's. Then the same bundles round-trip through our own unbundle.

use std::fs::{self, File};
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::support::*;

const MIB: u64 = 1024 * 1024;

/// Deterministic incompressible bytes (xorshift64*).
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.max(1);
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Bundles `image` with the test keys into `dest`; returns the manifest path.
fn bundle(home: &Path, keys: &Keys, image: &Path, dest: &Path, extra: &[&str]) -> PathBuf {
    let out = run_ok(
        amibundle(home)
            .args(["bundle-image", "-u", "1234-5678-9012", "-r", "x86_64", "-i"])
            .arg(image)
            .arg("-d")
            .arg(dest)
            .args(keys.bundle_args())
            .args(extra),
    );
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

/// The checks every shape goes through; `xfl` is the gzip header's XFL byte for the level used.
fn check_shape(image: &Path, manifest: &Path, keys: &Keys, expect_parts: usize, xfl: u8) {
    let xml = fs::read_to_string(manifest).unwrap();
    assert!(xml.starts_with("<?xml version='1.0'?><manifest><version>2007-10-10</version>"));
    assert!(!xml.ends_with('\n'));
    let names = part_filenames(&xml);
    assert_eq!(
        names.len(),
        expect_parts,
        "part count for {}",
        image.display()
    );
    let width = expect_parts.to_string().len();
    let image_xml = &xml[xml.find("<image>").unwrap()..];
    let bundle_name = element(image_xml, "name");
    for (i, n) in names.iter().enumerate() {
        assert_eq!(n, &format!("{bundle_name}.part.{i:0width$}"));
    }

    // Independent decode.
    let work = tempfile::tempdir().unwrap();
    let d = decode_with_standard_tools(manifest, &keys.user_key(), work.path());
    assert_eq!(
        d.tar_sha1,
        element(&xml, "digest"),
        "manifest digest = SHA-1 of the tar stream"
    );
    assert_eq!(d.tar_len % 10240, 0, "whole tar records");
    assert_eq!(
        &d.gzip_header[..9],
        &[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, xfl][..]
    );
    assert_eq!(d.gzip_header[9], 3, "OS = Unix");
    let same = Command::new("cmp")
        .arg(image)
        .arg(&d.image)
        .status()
        .unwrap();
    assert!(
        same.success(),
        "GNU tar extracted an image different from {}",
        image.display()
    );

    // Our own unbundle gives the same image.
    let out = tempfile::tempdir().unwrap();
    let home = tempfile::tempdir().unwrap();
    run_ok(
        amibundle(home.path())
            .args(["unbundle", "-m"])
            .arg(manifest)
            .arg("-k")
            .arg(keys.user_key())
            .arg("-c")
            .arg(keys.user_cert())
            .arg("-d")
            .arg(out.path()),
    );
    let ours = out.path().join(&bundle_name);
    assert!(
        Command::new("cmp")
            .arg(image)
            .arg(&ours)
            .status()
            .unwrap()
            .success()
    );
}

#[test]
fn ext4_image_with_files() {
    let keys = Keys::new();
    let home = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let tree = work.path().join("tree");
    fs::create_dir_all(tree.join("etc/app")).unwrap();
    fs::create_dir_all(tree.join("var/lib/data")).unwrap();
    for i in 0..200u64 {
        let text = format!("line {i} of a config file\n").repeat((i as usize % 50) + 1);
        fs::write(tree.join(format!("etc/app/conf{i}.txt")), text).unwrap();
    }
    fs::write(
        tree.join("var/lib/data/blob.bin"),
        random_bytes(3 * MIB as usize, 7),
    )
    .unwrap();
    std::os::unix::fs::symlink("app/conf1.txt", tree.join("etc/link")).unwrap();
    let image = work.path().join("root.img");
    run_ok(
        Command::new("mkfs.ext4")
            .args(["-q", "-F", "-b", "4096", "-L", "testroot", "-d"])
            .arg(&tree)
            .arg(&image)
            .arg("64M"),
    );
    let dest = work.path().join("bundle");
    fs::create_dir(&dest).unwrap();
    let manifest = bundle(home.path(), &keys, &image, &dest, &[]);
    assert_eq!(manifest, dest.join("root.img.manifest.xml"));
    check_shape(&image, &manifest, &keys, 1, 0);
    // The result is still a mountable-looking ext4 filesystem with our files.
    let out = run_ok(
        Command::new("debugfs")
            .args(["-R", "cat /etc/app/conf3.txt"])
            .arg(&image)
            .stderr(Stdio::null()),
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("line 3 of a config file"));
}

#[test]
fn random_image_of_more_than_ten_parts() {
    let keys = Keys::new();
    let home = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let image = work.path().join("random.img");
    fs::write(&image, random_bytes(105 * MIB as usize, 42)).unwrap();
    let dest = work.path().join("b");
    fs::create_dir(&dest).unwrap();
    let manifest = bundle(
        home.path(),
        &keys,
        &image,
        &dest,
        &["-p", "rnd", "--compression-level", "1"],
    );
    // 105 MiB of random data + gzip/tar overhead → 11 parts, so the width is 2.
    check_shape(&image, &manifest, &keys, 11, 4);
    assert!(dest.join("rnd.part.00").exists() && dest.join("rnd.part.10").exists());
}

#[test]
fn sparse_image_with_many_islands() {
    let keys = Keys::new();
    let home = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let image = work.path().join("holes.img");
    let f = File::create(&image).unwrap();
    f.set_len(1024 * MIB).unwrap();
    // 40 islands (more than fit in the header and one extension block), one at the very end.
    for i in 0..40u64 {
        f.write_all_at(&random_bytes(8192, i + 1), i * 25 * MIB + 4096)
            .unwrap();
    }
    f.write_all_at(b"tail", 1024 * MIB - 4).unwrap();
    drop(f);
    let dest = work.path().join("b");
    fs::create_dir(&dest).unwrap();
    let manifest = bundle(home.path(), &keys, &image, &dest, &[]);
    let xml = fs::read_to_string(&manifest).unwrap();
    assert!(
        element(&xml, "bundled_size").parse::<u64>().unwrap() < MIB,
        "holes are not bundled"
    );
    check_shape(&image, &manifest, &keys, 1, 0);
}

#[test]
fn images_at_part_boundaries() {
    let keys = Keys::new();
    let home = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    for (mib, parts) in [(10u64, 2usize), (20, 3)] {
        let image = work.path().join(format!("b{mib}.img"));
        fs::write(&image, random_bytes((mib * MIB) as usize, mib)).unwrap();
        let dest = work.path().join(format!("d{mib}"));
        fs::create_dir(&dest).unwrap();
        let manifest = bundle(
            home.path(),
            &keys,
            &image,
            &dest,
            &["--compression-level", "1"],
        );
        check_shape(&image, &manifest, &keys, parts, 4);
    }
}

#[test]
fn image_from_stdin() {
    let keys = Keys::new();
    let home = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let image = work.path().join("stdin.img");
    let mut data = random_bytes(3 * MIB as usize, 9);
    data.extend(vec![0u8; 2 * MIB as usize]);
    fs::write(&image, &data).unwrap();
    let dest = work.path().join("b");
    fs::create_dir(&dest).unwrap();
    let size = data.len().to_string();
    let out = run_ok(
        amibundle(home.path())
            .args([
                "bundle-image",
                "-u",
                "123456789012",
                "-i",
                "-",
                "--size",
                &size,
                "-p",
                "stdin.img",
                "-d",
            ])
            .arg(&dest)
            .args(keys.bundle_args())
            .stdin(File::open(&image).unwrap()),
    );
    let manifest = PathBuf::from(String::from_utf8(out.stdout).unwrap().trim());
    check_shape(&image, &manifest, &keys, 1, 0);

    // A stream shorter than --size is an error and leaves nothing behind.
    let dest2 = work.path().join("b2");
    fs::create_dir(&dest2).unwrap();
    let mut short = File::open(&image).unwrap();
    short.seek(SeekFrom::Start(0)).unwrap();
    let err = run_err(
        amibundle(home.path())
            .args([
                "bundle-image",
                "-u",
                "123456789012",
                "-i",
                "-",
                "--size",
                "99999999",
                "-p",
                "x",
                "-d",
            ])
            .arg(&dest2)
            .args(keys.bundle_args())
            .stdin(short),
    );
    assert!(err.contains("99999999"), "{err}");
    assert_eq!(fs::read_dir(&dest2).unwrap().count(), 0);
    let _ = std::io::stdout().flush();
}
