//! `bundle-image --upload/--register`: the bundle goes to S3 (moto through the recording proxy)
//! while it is being made, nothing of it lands on local disk, the part-name width is fixed up
//! front (docs/format.md §8.3), the manifest is the last object, a failure removes what was
//! uploaded, and the result unbundles to the original image.

use std::fs;
use std::io::Write;
use std::path::Path;

use crate::cloud::{Cloud, ec2_call, header};
use crate::support::proxy::{Action, RequestHead};
use crate::support::*;

/// 25 MiB of pseudo-random bytes then 80 MiB of written zeros (data, not holes): 105 MiB of tar
/// input, so the bound allows 11 parts (width 2) while the bundle needs 3.
fn write_image(path: &Path) {
    let mut f = fs::File::create(path).unwrap();
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut buf = vec![0u8; 1 << 20];
    for _ in 0..25 {
        for chunk in buf.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            chunk.copy_from_slice(&x.to_le_bytes());
        }
        f.write_all(&buf).unwrap();
    }
    buf.fill(0);
    for _ in 0..80 {
        f.write_all(&buf).unwrap();
    }
}

/// Keys of the objects under `prefix` in `bucket`, read straight from moto.
fn keys_under(cloud: &Cloud, bucket: &str, prefix: &str) -> Vec<String> {
    let text = cloud
        .raw(
            "GET",
            &format!("/{bucket}?list-type=2&prefix={prefix}"),
            &[],
            b"",
        )
        .text();
    text.split("<Key>")
        .skip(1)
        .filter_map(|s| s.split("</Key>").next())
        .map(str::to_string)
        .collect()
}

fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

struct Setup {
    keys: Keys,
    image_dir: tempfile::TempDir,
    cwd: tempfile::TempDir,
}

impl Setup {
    fn new() -> Self {
        let image_dir = tempfile::tempdir().unwrap();
        write_image(&image_dir.path().join("disk.img"));
        Setup {
            keys: Keys::new(),
            image_dir,
            cwd: tempfile::tempdir().unwrap(),
        }
    }

    fn bundle(&self, cloud: &Cloud, extra: &[&str]) -> std::process::Command {
        let image = self.image_dir.path().join("disk.img");
        let mut args = vec![
            "bundle-image",
            "-i",
            image.to_str().unwrap(),
            "-u",
            "123456789012",
        ];
        args.extend_from_slice(extra);
        let mut cmd = cloud.cmd(&args);
        cmd.args(self.keys.bundle_args())
            .current_dir(self.cwd.path());
        cmd
    }
}

#[test]
fn streaming_upload_keeps_nothing_local_names_parts_up_front_and_registers() {
    let cloud = Cloud::start();
    let setup = Setup::new();
    let out = run_ok(&mut setup.bundle(
        &cloud,
        &[
            "--upload",
            "s3://stream-test/images/web",
            "--register",
            "web-streamed",
            "--region",
            "eu-west-1",
            "--json",
        ],
    ));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let location = "stream-test/images/web/disk.img.manifest.xml";
    assert_eq!(v["image_location"], location, "{v}");
    assert_eq!(v["part_count"], 3, "{v}");
    assert_eq!(v["part_name_width"], 2, "{v}");
    let ami = v["ami_id"].as_str().unwrap();
    assert!(ami.starts_with("ami-"), "{v}");

    // Nothing of the bundle on local disk: not in the working directory, not beside the image.
    assert!(
        entries(setup.cwd.path()).is_empty(),
        "{:?}",
        entries(setup.cwd.path())
    );
    assert_eq!(entries(setup.image_dir.path()), ["disk.img"]);

    // Every object with the ACL and an integrity checksum; parts named with the fixed width;
    // the manifest last, after every part was confirmed.
    let puts = cloud.object_puts();
    let paths: Vec<&str> = puts.iter().map(|p| p.path.as_str()).collect();
    assert_eq!(puts.len(), 4, "{paths:?}");
    for p in &puts {
        assert_eq!(header(p, "x-amz-acl"), Some("aws-exec-read"), "{}", p.path);
        assert!(header(p, "content-md5").is_some(), "{}", p.path);
        assert_eq!(p.status, 200, "{}", p.path);
    }
    let mut part_paths: Vec<&str> = paths[..3].to_vec();
    part_paths.sort();
    assert_eq!(
        part_paths,
        [
            "/stream-test/images/web/disk.img.part.00",
            "/stream-test/images/web/disk.img.part.01",
            "/stream-test/images/web/disk.img.part.02",
        ]
    );
    assert_eq!(paths[3], format!("/{location}"));
    let manifest = String::from_utf8(
        cloud
            .object("stream-test", "images/web/disk.img.manifest.xml")
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        part_filenames(&manifest),
        ["disk.img.part.00", "disk.img.part.01", "disk.img.part.02"]
    );

    let reg = ec2_call(&cloud, "RegisterImage").expect("RegisterImage at the proxy");
    assert_eq!(reg.get("ImageLocation").map(String::as_str), Some(location));
    assert_eq!(reg.get("Name").map(String::as_str), Some("web-streamed"));
    assert_eq!(reg.get("Architecture").map(String::as_str), Some("x86_64"));

    // The bundle is whole: download it and unbundle it back to the same bytes.
    let back = tempfile::tempdir().unwrap();
    let d = back.path().to_str().unwrap();
    run_ok(&mut cloud.cmd(&[
        "download",
        "-b",
        "stream-test/images/web",
        "-m",
        "disk.img.manifest.xml",
        "-d",
        d,
    ]));
    let mut unbundle = amibundle(cloud.home.path());
    unbundle
        .args(["unbundle", "-m"])
        .arg(back.path().join("disk.img.manifest.xml"))
        .arg("-k")
        .arg(setup.keys.user_key())
        .args(["-d", d]);
    run_ok(&mut unbundle);
    assert_eq!(
        sha1sum(&back.path().join("disk.img")),
        sha1sum(&setup.image_dir.path().join("disk.img"))
    );
}

#[test]
fn streaming_upload_refuses_to_replace_a_bundle_unless_told() {
    let cloud = Cloud::start();
    let setup = Setup::new();
    let target = ["--upload", "s3://stream-test", "--region", "us-east-1"];
    run_ok(&mut setup.bundle(&cloud, &target));
    let first = cloud
        .object("stream-test", "disk.img.manifest.xml")
        .unwrap();

    cloud.proxy.clear();
    let err = run_err(&mut setup.bundle(&cloud, &target));
    assert!(
        err.contains("s3://stream-test/disk.img.manifest.xml already exists")
            && err.contains("--overwrite"),
        "{err}"
    );
    assert!(cloud.object_puts().is_empty(), "nothing was sent");

    let mut args = target.to_vec();
    args.push("--overwrite");
    run_ok(&mut setup.bundle(&cloud, &args));
    let second = cloud
        .object("stream-test", "disk.img.manifest.xml")
        .unwrap();
    assert_ne!(
        first, second,
        "a new bundle (fresh key) replaced the old one"
    );
    let mut keys = keys_under(&cloud, "stream-test", "");
    keys.sort();
    assert_eq!(
        keys,
        [
            "disk.img.manifest.xml",
            "disk.img.part.00",
            "disk.img.part.01",
            "disk.img.part.02"
        ]
    );
}

#[test]
fn failed_part_upload_exits_3_and_leaves_no_parts_behind() {
    // S3 refuses one part as if the credentials lacked s3:PutObject on it.
    let denied = b"<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>AccessDenied</Code><Message>Access Denied</Message></Error>".to_vec();
    let cloud = Cloud::start_with(Box::new(move |req: &RequestHead| {
        if req.method == "PUT" && req.path.ends_with("/disk.img.part.01") {
            Action::Respond(403, denied.clone())
        } else {
            Action::Forward
        }
    }));
    let setup = Setup::new();
    let out = setup
        .bundle(
            &cloud,
            &["--upload", "s3://stream-fail/x", "--region", "us-east-1"],
        )
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(
        err.contains("s3://stream-fail/x/disk.img.part.01") && err.contains("AccessDenied"),
        "{err}"
    );
    assert!(
        !cloud
            .object_puts()
            .iter()
            .any(|p| p.path.ends_with(".manifest.xml")),
        "no manifest: the bundle was never committed"
    );
    assert!(
        keys_under(&cloud, "stream-fail", "x/").is_empty(),
        "parts already uploaded were removed: {:?}",
        keys_under(&cloud, "stream-fail", "x/")
    );
    assert!(entries(setup.cwd.path()).is_empty());
}
