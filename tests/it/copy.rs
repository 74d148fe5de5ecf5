//! `migrate-manifest` and `copy --to-region`: manifests re-wrapped for another EC2 certificate
//! (proved by decrypting the EC2 side with the matching throwaway key, using openssl itself),
//! re-signed with the user key (checked with `openssl dgst`), parts copied server-side into
//! buckets of the target regions of moto (through the recording proxy), AMIs registered, and
//! re-runs that send nothing new.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::cloud::Cloud;
use crate::support::proxy::{Action, Exchange, RequestHead};
use crate::support::*;

const ACCOUNT: &str = "123456789012";

/// A throwaway RSA-1024 key pair standing in for one region's EC2 certificate, made by the
/// openssl command line (not by the code under test).
struct Ec2Pair {
    key: PathBuf,
    cert: PathBuf,
}

fn ec2_pair(dir: &Path, name: &str) -> Ec2Pair {
    let key = dir.join(format!("{name}-key.pem"));
    let cert = dir.join(format!("{name}-cert.pem"));
    run_ok(
        Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:1024", "-nodes", "-days", "1",
            ])
            .args(["-subj", &format!("/CN=throwaway EC2 stand-in {name}")])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .stderr(std::process::Stdio::null()),
    );
    fs::set_permissions(&key, fs::Permissions::from_mode(0o600)).unwrap();
    Ec2Pair { key, cert }
}

/// `openssl pkeyutl -decrypt` of one hex field of `xml` with `key`: the plaintext, or `None` if
/// openssl refuses (a key the field was not wrapped for).
fn openssl_unwrap(xml: &str, field: &str, key: &Path, work: &Path) -> Option<String> {
    let bin = work.join(format!("{field}.bin"));
    fs::write(&bin, hex::decode(element(xml, field)).unwrap()).unwrap();
    let out = Command::new("openssl")
        .args(["pkeyutl", "-decrypt", "-pkeyopt", "rsa_padding_mode:pkcs1"])
        .arg("-inkey")
        .arg(key)
        .arg("-in")
        .arg(&bin)
        .output()
        .unwrap();
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The signature of `xml` (docs/format.md §9.5) checked by `openssl dgst -sha1 -verify` with
/// the user certificate's public key over the raw `machine_configuration` ‖ `image` bytes.
fn openssl_signature_verifies(xml: &str, user_cert: &Path, work: &Path) -> bool {
    let raw = |tag: &str| {
        let start = xml.find(&format!("<{tag}>")).unwrap();
        let end = xml.find(&format!("</{tag}>")).unwrap() + tag.len() + 3;
        &xml[start..end]
    };
    let data = work.join("signed.bin");
    fs::write(
        &data,
        format!("{}{}", raw("machine_configuration"), raw("image")),
    )
    .unwrap();
    let sig = work.join("signature.bin");
    fs::write(&sig, hex::decode(element(xml, "signature")).unwrap()).unwrap();
    let pubkey = work.join("user-pub.pem");
    let out = run_ok(
        Command::new("openssl")
            .args(["x509", "-pubkey", "-noout", "-in"])
            .arg(user_cert),
    );
    fs::write(&pubkey, out.stdout).unwrap();
    Command::new("openssl")
        .args(["dgst", "-sha1", "-verify"])
        .arg(&pubkey)
        .arg("-signature")
        .arg(&sig)
        .arg(&data)
        .output()
        .unwrap()
        .status
        .success()
}

/// Every EC2 Query call `action` seen at the proxy, as decoded form parameters plus the region
/// its SigV4 signature was scoped to.
fn ec2_calls(cloud: &Cloud, action: &str) -> Vec<(String, BTreeMap<String, String>)> {
    let needle = format!("Action={action}&");
    let decode = |s: &str| {
        let bytes = s.replace('+', " ").into_bytes();
        let mut out = Vec::new();
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i] == b'%' && i + 2 < bytes.len() {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap();
                out.push(u8::from_str_radix(hex, 16).unwrap());
                i += 3;
            } else {
                out.push(bytes[i]);
                i += 1;
            }
        }
        String::from_utf8(out).unwrap()
    };
    cloud
        .proxy
        .exchanges()
        .into_iter()
        .filter_map(|e| {
            let body = String::from_utf8_lossy(&e.body_head).into_owned();
            if !body.contains(&needle) {
                return None;
            }
            let params = body
                .split('&')
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (decode(k), decode(v)))
                .collect();
            Some((signed_region(&e), params))
        })
        .collect()
}

/// The region in an exchange's SigV4 credential scope (`Credential=AK/DATE/REGION/…`).
fn signed_region(e: &Exchange) -> String {
    let auth = crate::cloud::header(e, "authorization").unwrap_or_default();
    auth.split("Credential=")
        .nth(1)
        .and_then(|c| c.split('/').nth(2))
        .unwrap_or_default()
        .to_string()
}

/// CopyObject requests seen at the proxy (a PUT with `x-amz-copy-source`).
fn copies(cloud: &Cloud) -> Vec<Exchange> {
    cloud
        .object_puts()
        .into_iter()
        .filter(|p| crate::cloud::header(p, "x-amz-copy-source").is_some())
        .collect()
}

fn bucket_region(cloud: &Cloud, bucket: &str) -> String {
    let text = cloud
        .raw("GET", &format!("/{bucket}?location"), &[], b"")
        .text();
    let start = text.find("<LocationConstraint").unwrap();
    let body = &text[start..];
    let open = body.find('>').unwrap() + 1;
    let close = body.find("</LocationConstraint>").unwrap_or(open);
    body[open..close].to_string()
}

#[test]
fn migrate_manifest_rewraps_the_ec2_side_resigns_and_keeps_a_backup() {
    let keys = Keys::new();
    let work = tempfile::tempdir().unwrap();
    let target = ec2_pair(work.path(), "target");
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&vector_dir("v1-small-ext4"), dir.path());
    let manifest = dir.path().join("small.img.manifest.xml");
    let original = fs::read_to_string(&manifest).unwrap();
    let expected = expected("v1-small-ext4");
    let home = tempfile::tempdir().unwrap();
    let migrate = |extra: &[&str]| {
        let mut cmd = amibundle(home.path());
        cmd.arg("migrate-manifest")
            .arg("-m")
            .arg(&manifest)
            .arg("-k")
            .arg(keys.user_key())
            .arg("-c")
            .arg(keys.user_cert())
            .arg("--ec2cert")
            .arg(&target.cert)
            .args(extra);
        cmd
    };

    // An unpinned certificate is refused without the acknowledgement; nothing is written.
    let err = run_err(&mut migrate(&[]));
    assert!(err.contains("--unpinned-ec2cert"), "{err}");
    assert_eq!(fs::read_to_string(&manifest).unwrap(), original);

    let out = run_ok(&mut migrate(&[
        "--unpinned-ec2cert",
        "--kernel",
        "aki-0a1b2c3d",
        "--no-mapping",
        "--json",
    ]));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["kernel_id"], "aki-0a1b2c3d", "{v}");
    assert!(v["ramdisk_id"].is_null(), "--no-mapping removed it: {v}");
    let backup = dir.path().join("small.img.manifest.xml.bak");
    assert_eq!(v["backup"], backup.to_str().unwrap());
    assert_eq!(fs::read_to_string(&backup).unwrap(), original);

    let xml = fs::read_to_string(&manifest).unwrap();
    // The EC2 side opens with the target's key to the vector's K and V, and no longer with the
    // stand-in it was made for; the user side is untouched.
    for (field, want) in [
        ("ec2_encrypted_key", &expected["aes_key_hex"]),
        ("ec2_encrypted_iv", &expected["aes_iv_hex"]),
    ] {
        assert_eq!(
            openssl_unwrap(&xml, field, &target.key, work.path()).as_deref(),
            want.as_str(),
            "{field}"
        );
        assert_eq!(
            openssl_unwrap(&xml, field, &keys.ec2_key(), work.path()),
            None,
            "{field} still opens with the old EC2 key"
        );
    }
    for field in ["user_encrypted_key", "user_encrypted_iv", "digest", "parts"] {
        assert_eq!(element(&xml, field), element(&original, field), "{field}");
    }
    assert!(xml.contains("<kernel_id>aki-0a1b2c3d</kernel_id>"));
    assert!(!xml.contains("<ramdisk_id>"));
    assert!(openssl_signature_verifies(
        &xml,
        &keys.user_cert(),
        work.path()
    ));
    assert!(!openssl_signature_verifies(
        &original.replace(
            &element(&original, "signature"),
            &element(&xml, "signature")
        ),
        &keys.user_cert(),
        work.path()
    ));
    // The bundle is still whole: the parts decode with the migrated manifest.
    run_ok(
        amibundle(home.path())
            .args(["verify", "-m"])
            .arg(&manifest)
            .arg("-c")
            .arg(keys.user_cert())
            .arg("-k")
            .arg(keys.user_key()),
    );

    // Again: the backup of the original would be overwritten; refused, manifest untouched.
    let out = migrate(&["--unpinned-ec2cert"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("small.img.manifest.xml.bak already exists"),
        "{err}"
    );
    assert_eq!(fs::read_to_string(&manifest).unwrap(), xml);
    assert_eq!(fs::read_to_string(&backup).unwrap(), original);

    // A manifest altered after signing is refused before anything is written.
    fs::remove_file(&backup).unwrap();
    let tampered = original.replace("<size>67108864</size>", "<size>67108865</size>");
    fs::write(&manifest, &tampered).unwrap();
    let err = run_err(&mut migrate(&["--unpinned-ec2cert"]));
    assert!(err.contains("signature does not verify"), "{err}");
    assert_eq!(fs::read_to_string(&manifest).unwrap(), tampered);
    assert!(!backup.exists());
}

/// The reference three-part bundle uploaded to `src-bucket/images` in us-east-1.
fn upload_source(cloud: &Cloud) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&vector_dir("v2-three-parts"), dir.path());
    let m = dir.path().join("random.img.manifest.xml");
    run_ok(&mut cloud.cmd(&[
        "upload",
        "-m",
        m.to_str().unwrap(),
        "--region",
        "us-east-1",
        "-b",
        "src-bucket/images",
    ]));
    dir
}

fn copy_cmd(cloud: &Cloud, keys: &Keys, source: &[&str], certs: &[(&str, &Ec2Pair)]) -> Command {
    let mut cmd = cloud.cmd(&["copy", "--region", "us-east-1", "--json"]);
    cmd.args(source)
        .arg("-k")
        .arg(keys.user_key())
        .arg("-c")
        .arg(keys.user_cert())
        .arg("--unpinned-ec2cert");
    let regions: Vec<&str> = certs.iter().map(|(r, _)| *r).collect();
    cmd.arg("--to-region").arg(regions.join(","));
    for (region, pair) in certs {
        cmd.arg("--ec2cert")
            .arg(format!("{region}={}", pair.cert.display()));
    }
    cmd
}

#[test]
fn copy_to_two_regions_rewraps_per_region_registers_and_a_rerun_sends_nothing_new() {
    let cloud = Cloud::start();
    let keys = Keys::new();
    let work = tempfile::tempdir().unwrap();
    let _src = upload_source(&cloud);
    let eu = ec2_pair(work.path(), "eu");
    let ap = ec2_pair(work.path(), "ap");
    let targets = [("eu-west-1", &eu), ("ap-southeast-2", &ap)];
    let source = [
        "--image-location",
        "src-bucket/images/random.img.manifest.xml",
    ];
    let expected = expected("v2-three-parts");
    let source_xml = String::from_utf8(
        cloud
            .object("src-bucket", "images/random.img.manifest.xml")
            .unwrap(),
    )
    .unwrap();

    cloud.proxy.clear();
    let out = run_ok(&mut copy_cmd(&cloud, &keys, &source, &targets));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        v["source"]["image_location"],
        "src-bucket/images/random.img.manifest.xml"
    );
    assert_eq!(v["failed"], serde_json::json!({}), "{v}");

    // Three server-side copies per region, each with the ACL EC2 needs, from the source.
    let copied = copies(&cloud);
    assert_eq!(copied.len(), 6, "{copied:#?}");
    for c in &copied {
        assert_eq!(crate::cloud::header(c, "x-amz-acl"), Some("aws-exec-read"));
        let from = crate::cloud::header(c, "x-amz-copy-source").unwrap();
        assert!(
            from.trim_start_matches('/')
                .starts_with("src-bucket/images/random.img.part."),
            "{from}"
        );
        assert_eq!(c.body_len, 0, "a server-side copy carries no data");
        // Pinned to the listed source object (its MD5 ETag), so a replaced source cannot mix in.
        let part = from.rsplit('/').next().unwrap();
        let md5 = run_ok(Command::new("md5sum").arg(vector_dir("v2-three-parts").join(part)));
        let md5 = String::from_utf8_lossy(&md5.stdout)[..32].to_string();
        assert_eq!(
            crate::cloud::header(c, "x-amz-copy-source-if-match"),
            Some(format!("\"{md5}\"").as_str()),
            "{part}"
        );
    }

    let mut amis = Vec::new();
    for (region, pair) in &targets {
        let bucket = format!("amibundle-{ACCOUNT}-{region}");
        let location = format!("{bucket}/images/random.img.manifest.xml");
        let r = &v["regions"][*region];
        assert_eq!(r["image_location"], location.as_str(), "{v}");
        assert_eq!(r["bucket_created"], true, "{v}");
        assert_eq!(r["parts_copied"].as_array().unwrap().len(), 3, "{v}");
        assert_eq!(r["manifest_uploaded"], true, "{v}");
        amis.push(r["ami_id"].as_str().unwrap().to_string());

        // The bucket is in the region, and holds byte-identical parts.
        assert_eq!(bucket_region(&cloud, &bucket), *region);
        for part in expected["parts"].as_array().unwrap() {
            let part = part.as_str().unwrap();
            assert_eq!(
                cloud.object(&bucket, &format!("images/{part}")).unwrap(),
                fs::read(vector_dir("v2-three-parts").join(part)).unwrap(),
                "{region} {part}"
            );
        }

        // The manifest's EC2 side opens with this region's key only; user side and parts
        // unchanged; signed by the user.
        let xml = String::from_utf8(
            cloud
                .object(&bucket, "images/random.img.manifest.xml")
                .unwrap(),
        )
        .unwrap();
        let other = if *region == "eu-west-1" { &ap } else { &eu };
        for (field, want) in [
            ("ec2_encrypted_key", &expected["aes_key_hex"]),
            ("ec2_encrypted_iv", &expected["aes_iv_hex"]),
        ] {
            assert_eq!(
                openssl_unwrap(&xml, field, &pair.key, work.path()).as_deref(),
                want.as_str(),
                "{region} {field}"
            );
            assert_eq!(openssl_unwrap(&xml, field, &other.key, work.path()), None);
        }
        for field in ["user_encrypted_key", "user_encrypted_iv", "digest", "parts"] {
            assert_eq!(element(&xml, field), element(&source_xml, field), "{field}");
        }
        assert!(
            openssl_signature_verifies(&xml, &keys.user_cert(), work.path()),
            "{region}"
        );
    }

    // One registration per region, signed for that region, from that region's bucket.
    let regs = ec2_calls(&cloud, "RegisterImage");
    assert_eq!(regs.len(), 2, "{regs:#?}");
    for ((region, _), ami) in targets.iter().zip(&amis) {
        let (_, p) = regs
            .iter()
            .find(|(r, _)| r == region)
            .unwrap_or_else(|| panic!("no RegisterImage signed for {region}: {regs:#?}"));
        let get = |k: &str| p.get(k).map(String::as_str);
        assert_eq!(
            get("ImageLocation"),
            Some(format!("amibundle-{ACCOUNT}-{region}/images/random.img.manifest.xml").as_str())
        );
        assert_eq!(get("Name"), Some("random.img"));
        assert_eq!(get("Architecture"), Some("x86_64"));
        assert_eq!(get("VirtualizationType"), Some("hvm"));
        assert!(ami.starts_with("ami-"), "{ami}");
    }

    // The whole copy decodes: verify it straight from S3 with the user key.
    run_ok(
        cloud
            .cmd(&[
                "verify",
                "--region",
                "eu-west-1",
                "-m",
                &format!("s3://amibundle-{ACCOUNT}-eu-west-1/images/random.img.manifest.xml"),
            ])
            .arg("-c")
            .arg(keys.user_cert())
            .arg("-k")
            .arg(keys.user_key()),
    );

    // A second run: nothing copied, nothing uploaded, nothing registered; same AMIs.
    cloud.proxy.clear();
    let out = run_ok(&mut copy_cmd(&cloud, &keys, &source, &targets));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(cloud.object_puts().is_empty(), "{:#?}", cloud.object_puts());
    assert!(ec2_calls(&cloud, "RegisterImage").is_empty());
    for ((region, _), ami) in targets.iter().zip(&amis) {
        let r = &v["regions"][*region];
        assert_eq!(r["ami_id"], ami.as_str(), "{v}");
        assert_eq!(r["ami_created"], false, "{v}");
        assert_eq!(r["parts_skipped"].as_array().unwrap().len(), 3, "{v}");
        assert_eq!(r["manifest_uploaded"], false, "{v}");
    }

    // Another bundle's manifest at a destination is never replaced.
    let foreign = fs::read(vector_dir("v4-prefix").join("my-server-2026.manifest.xml")).unwrap();
    let key = format!("/amibundle-{ACCOUNT}-eu-west-1/images/random.img.manifest.xml");
    assert_eq!(cloud.raw("PUT", &key, &[], &foreign).status, 200);
    cloud.proxy.clear();
    let out = copy_cmd(&cloud, &keys, &source, &targets[..1])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("eu-west-1") && err.contains("already holds a different bundle"),
        "{err}"
    );
    assert!(copies(&cloud).is_empty() && cloud.object_puts().is_empty());
    assert_eq!(
        cloud
            .object(
                &format!("amibundle-{ACCOUNT}-eu-west-1"),
                "images/random.img.manifest.xml"
            )
            .unwrap(),
        foreign
    );
}

#[test]
fn copy_of_a_registered_ami_registers_it_alike() {
    let cloud = Cloud::start();
    let keys = Keys::new();
    let work = tempfile::tempdir().unwrap();
    let src = upload_source(&cloud);
    let m = src.path().join("random.img.manifest.xml");
    let out = run_ok(&mut cloud.cmd(&[
        "register",
        "-m",
        m.to_str().unwrap(),
        "--region",
        "us-east-1",
        "-b",
        "src-bucket/images",
        "--name",
        "web-2026",
        "--description",
        "web server",
        "--json",
    ]));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let source_ami = v["ami_id"].as_str().unwrap().to_string();
    let eu = ec2_pair(work.path(), "eu");

    cloud.proxy.clear();
    let out = run_ok(&mut copy_cmd(
        &cloud,
        &keys,
        &["--ami", &source_ami],
        &[("eu-west-1", &eu)],
    ));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["source"]["ami_id"], source_ami.as_str());
    assert_eq!(
        v["source"]["image_location"],
        "src-bucket/images/random.img.manifest.xml"
    );
    let copy_ami = v["regions"]["eu-west-1"]["ami_id"].as_str().unwrap();
    assert_ne!(copy_ami, source_ami);

    // The attributes come from what DescribeImages said of the source AMI.
    let described = cloud
        .proxy
        .exchanges()
        .into_iter()
        .find(|e| String::from_utf8_lossy(&e.body_head).contains("Action=DescribeImages&"))
        .expect("DescribeImages of the source");
    assert_eq!(signed_region(&described), "us-east-1");
    let regs = ec2_calls(&cloud, "RegisterImage");
    assert_eq!(regs.len(), 1, "{regs:#?}");
    let (region, p) = &regs[0];
    assert_eq!(region, "eu-west-1");
    let get = |k: &str| p.get(k).map(String::as_str);
    assert_eq!(get("Name"), Some("web-2026"));
    assert_eq!(get("Description"), Some("web server"));
    assert_eq!(
        get("ImageLocation"),
        Some(format!("amibundle-{ACCOUNT}-eu-west-1/images/random.img.manifest.xml").as_str())
    );
    // moto's own view of the source AMI, asked directly (not through amibundle).
    let ec2_auth = "AWS4-HMAC-SHA256 Credential=testing/20260101/us-east-1/ec2/aws4_request, \
                    SignedHeaders=host, Signature=00";
    let query = format!("Action=DescribeImages&Version=2016-11-15&ImageId.1={source_ami}");
    let source_view = crate::support::http::request(
        &cloud.moto.endpoint,
        "POST",
        "/",
        &[
            ("Authorization", ec2_auth),
            ("Content-Type", "application/x-www-form-urlencoded"),
        ],
        crate::support::http::Body::Bytes(query.as_bytes()),
    )
    .unwrap()
    .text();
    // What the source says is copied; what moto leaves out of its description (it stores only
    // Name and Description) falls back to the manifest's architecture and amibundle's hvm.
    for (param, tag, fallback) in [
        ("Architecture", "architecture", "x86_64"),
        ("VirtualizationType", "virtualizationType", "hvm"),
        ("RootDeviceName", "rootDeviceName", "/dev/sda1"),
    ] {
        let want = if source_view.contains(&format!("<{tag}>")) {
            element(&source_view, tag)
        } else {
            fallback.to_string()
        };
        assert_eq!(get(param), Some(want.as_str()), "{param}: {source_view}");
    }
    // (moto describes too little to tell the rest apart from defaults; the mapping from a
    // full description is unit-tested in cloud::ec2.)
}

#[test]
fn copy_of_a_source_that_does_not_exist_fails_clearly_and_creates_nothing() {
    let cloud = Cloud::start();
    let keys = Keys::new();
    let work = tempfile::tempdir().unwrap();
    let eu = ec2_pair(work.path(), "eu");
    let targets = [("eu-west-1", &eu)];
    let _src = upload_source(&cloud);

    let cases: [(&[&str], &str); 3] = [
        (
            &["--image-location", "no-such-bucket/x/web.manifest.xml"],
            "bucket no-such-bucket does not exist",
        ),
        (
            &["--image-location", "src-bucket/images/gone.manifest.xml"],
            "src-bucket/images/gone.manifest.xml",
        ),
        (&["--ami", "ami-0123456789abcdef0"], "ami-0123456789abcdef0"),
    ];
    for (source, needle) in cases {
        cloud.proxy.clear();
        let out = copy_cmd(&cloud, &keys, source, &targets).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{source:?}: {err}");
        assert!(err.contains(needle), "{source:?}: {err}");
        assert!(out.stdout.is_empty(), "{source:?}");
        // Nothing was created or copied anywhere.
        let writes: Vec<(String, String)> = cloud
            .proxy
            .exchanges()
            .into_iter()
            .filter(|e| e.method == "PUT")
            .map(|e| (e.method, e.path))
            .collect();
        assert!(writes.is_empty(), "{source:?}: {writes:?}");
        assert!(ec2_calls(&cloud, "RegisterImage").is_empty());
    }
}

#[test]
fn copy_refused_by_s3_exits_3_naming_the_region_and_commits_nothing_there() {
    // The credentials may not write into the target bucket: every CopyObject is denied.
    let denied = b"<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>AccessDenied</Code><Message>Access Denied</Message></Error>".to_vec();
    let cloud = Cloud::start_with(Box::new(move |req: &RequestHead| {
        if req.method == "PUT" && req.header("x-amz-copy-source").is_some() {
            Action::Respond(403, denied.clone())
        } else {
            Action::Forward
        }
    }));
    let keys = Keys::new();
    let work = tempfile::tempdir().unwrap();
    let eu = ec2_pair(work.path(), "eu");
    let _src = upload_source(&cloud);
    cloud.proxy.clear();
    let out = copy_cmd(
        &cloud,
        &keys,
        &[
            "--image-location",
            "src-bucket/images/random.img.manifest.xml",
        ],
        &[("eu-west-1", &eu)],
    )
    .output()
    .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(
        err.contains("to eu-west-1") && err.contains("AccessDenied"),
        "{err}"
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        v["failed"]["eu-west-1"]
            .as_str()
            .unwrap()
            .contains("AccessDenied"),
        "{v}"
    );
    // No manifest in the target region: the copy was never committed, nor registered.
    assert!(
        cloud
            .object(
                &format!("amibundle-{ACCOUNT}-eu-west-1"),
                "images/random.img.manifest.xml"
            )
            .is_none()
    );
    assert!(ec2_calls(&cloud, "RegisterImage").is_empty());
}
