//! upload, download and delete against a real S3 emulator (moto on 127.0.0.1) through a
//! recording proxy, so the tests see exactly what went over the wire. moto lacks some of AWS's
//! rules (it stores no EC2 grant for aws-exec-read, accepts ACLs on BucketOwnerEnforced buckets,
//! does not check Content-MD5); the tests check amibundle's own preflight for those instead.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support::http::{self, Body};
use crate::support::moto::{FAKE_AUTHORIZATION, Moto};
use crate::support::proxy::{Action, Exchange, FaultPlan, ForwardAll, RecordingProxy};
use crate::support::*;

/// moto + a recording proxy in front of it + a private HOME.
pub(crate) struct Cloud {
    pub(crate) moto: Moto,
    pub(crate) proxy: RecordingProxy,
    pub(crate) home: tempfile::TempDir,
}

impl Cloud {
    pub(crate) fn start() -> Self {
        Self::start_with(Box::new(ForwardAll))
    }

    /// Like [`Cloud::start`], with faults injected by the proxy.
    pub(crate) fn start_with(plan: Box<dyn FaultPlan>) -> Self {
        let moto = Moto::start();
        let proxy = RecordingProxy::start_with(&moto.addr, plan);
        let home = tempfile::tempdir().unwrap();
        // Empty AWS config files: nothing of this machine's own AWS setup leaks in.
        fs::write(home.path().join("aws-config"), "").unwrap();
        fs::write(home.path().join("aws-credentials"), "").unwrap();
        Cloud { moto, proxy, home }
    }

    /// The binary, pointed at the proxy with test credentials and no instance metadata.
    pub(crate) fn cmd(&self, args: &[&str]) -> Command {
        let mut c = amibundle(self.home.path());
        c.env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", "testing")
            .env_remove("AWS_SESSION_TOKEN")
            .env_remove("AWS_PROFILE")
            .env_remove("AWS_REGION")
            .env_remove("AWS_DEFAULT_REGION")
            .env("AWS_CONFIG_FILE", self.home.path().join("aws-config"))
            .env(
                "AWS_SHARED_CREDENTIALS_FILE",
                self.home.path().join("aws-credentials"),
            )
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .args(args)
            .arg("--endpoint-url")
            .arg(&self.proxy.endpoint)
            .arg("--path-style");
        c
    }

    /// Uploads a copy of the reference three-part bundle to `bucket[/prefix]` in us-east-1.
    pub(crate) fn upload_three_parts(&self, bucket: &str) -> (tempfile::TempDir, PathBuf) {
        let (dir, manifest) = three_parts();
        let m = manifest.to_str().unwrap();
        run_ok(&mut self.cmd(&["upload", "-m", m, "--region", "us-east-1", "-b", bucket]));
        (dir, manifest)
    }

    /// A raw request straight to moto (fixtures), signed with a fake header moto accepts.
    pub(crate) fn raw(
        &self,
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> http::Response {
        let mut h = vec![("Authorization", FAKE_AUTHORIZATION)];
        h.extend_from_slice(headers);
        http::request(&self.moto.endpoint, method, target, &h, Body::Bytes(body)).unwrap()
    }

    /// Creates a bucket owned by another account (moto maps AssumeRole credentials to the role's account).
    pub(crate) fn foreign_bucket(&self, bucket: &str) {
        let form = "Action=AssumeRole&Version=2011-06-15&RoleSessionName=other&RoleArn=arn%3Aaws%3Aiam%3A%3A111122223333%3Arole%2Fother";
        let sts_auth = "AWS4-HMAC-SHA256 Credential=testing/20260101/us-east-1/sts/aws4_request, SignedHeaders=host, Signature=00";
        let r = http::request(
            &self.moto.endpoint,
            "POST",
            "/",
            &[
                ("Authorization", sts_auth),
                ("Content-Type", "application/x-www-form-urlencoded"),
            ],
            Body::Bytes(form.as_bytes()),
        )
        .unwrap();
        let text = r.text();
        let key = text
            .split("<AccessKeyId>")
            .nth(1)
            .and_then(|s| s.split('<').next())
            .expect("AssumeRole key")
            .to_string();
        let auth = format!(
            "AWS4-HMAC-SHA256 Credential={key}/20260101/us-east-1/s3/aws4_request, SignedHeaders=host, Signature=00"
        );
        let r = http::request(
            &self.moto.endpoint,
            "PUT",
            &format!("/{bucket}"),
            &[("Authorization", &auth)],
            Body::None,
        )
        .unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
    }

    pub(crate) fn object(&self, bucket: &str, key: &str) -> Option<Vec<u8>> {
        let r = self.raw("GET", &format!("/{bucket}/{key}"), &[], b"");
        (r.status == 200).then_some(r.body)
    }

    /// Paths of the object GETs (a key after the bucket), sorted.
    pub(crate) fn object_gets(&self) -> Vec<String> {
        let mut gets: Vec<String> = self
            .proxy
            .exchanges()
            .into_iter()
            .filter(|e| e.method == "GET" && e.path.trim_matches('/').contains('/'))
            .map(|e| e.path)
            .collect();
        gets.sort();
        gets
    }

    pub(crate) fn object_puts(&self) -> Vec<Exchange> {
        // Object PUTs have a key after the bucket in the path.
        self.proxy
            .exchanges()
            .into_iter()
            .filter(|e| e.method == "PUT" && e.path.trim_matches('/').contains('/'))
            .collect()
    }
}

pub(crate) fn header<'a>(e: &'a Exchange, name: &str) -> Option<&'a str> {
    e.headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

/// A copy of the reference three-part bundle.
fn three_parts() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&vector_dir("v2-three-parts"), dir.path());
    let manifest = dir.path().join("random.img.manifest.xml");
    (dir, manifest)
}

fn stdout_of(cmd: &mut Command) -> String {
    String::from_utf8(run_ok(cmd).stdout)
        .unwrap()
        .trim()
        .to_string()
}

#[test]
fn upload_creates_the_bucket_in_its_region_and_sends_acl_and_checksums_manifest_last() {
    let cloud = Cloud::start();
    let (_dir, manifest) = three_parts();
    let m = manifest.to_str().unwrap();
    let out = stdout_of(&mut cloud.cmd(&["upload", "-m", m, "--region", "eu-west-1"]));
    assert_eq!(
        out,
        "amibundle-123456789012-eu-west-1/random.img.manifest.xml"
    );

    let ex = cloud.proxy.exchanges();
    let create = ex
        .iter()
        .find(|e| {
            e.method == "PUT" && e.path.trim_end_matches('/') == "/amibundle-123456789012-eu-west-1"
        })
        .unwrap_or_else(|| {
            panic!(
                "CreateBucket in {:#?}",
                ex.iter()
                    .map(|e| (&e.method, &e.path, &e.query))
                    .collect::<Vec<_>>()
            )
        });
    assert_eq!(
        header(create, "x-amz-object-ownership"),
        Some("BucketOwnerPreferred")
    );
    assert!(create.status == 200, "{create:?}");

    let puts = cloud.object_puts();
    assert_eq!(puts.len(), 4, "three parts and the manifest");
    for p in &puts {
        assert_eq!(header(p, "x-amz-acl"), Some("aws-exec-read"), "{}", p.path);
        assert!(
            header(p, "content-md5").is_some(),
            "Content-MD5 on {}",
            p.path
        );
        assert!(
            p.headers
                .iter()
                .any(|(n, _)| n.starts_with("x-amz-checksum-") || n == "x-amz-trailer"),
            "a flexible checksum on {}: {:?}",
            p.path,
            p.headers
        );
        assert_eq!(p.status, 200);
    }
    assert!(
        puts.last()
            .unwrap()
            .path
            .ends_with("/random.img.manifest.xml"),
        "manifest last"
    );
    for part in [
        "random.img.part.0",
        "random.img.part.1",
        "random.img.part.2",
    ] {
        let stored = cloud
            .object("amibundle-123456789012-eu-west-1", part)
            .unwrap();
        assert_eq!(
            stored,
            fs::read(vector_dir("v2-three-parts").join(part)).unwrap()
        );
    }
}

#[test]
fn resumed_upload_sends_only_what_is_missing() {
    let cloud = Cloud::start();
    let (_dir, manifest) = three_parts();
    let m = manifest.to_str().unwrap();
    run_ok(&mut cloud.cmd(&[
        "upload",
        "-m",
        m,
        "--region",
        "us-west-2",
        "-b",
        "resume-test/img",
    ]));
    // Lose one part and the manifest, as an interrupted run would.
    assert_eq!(
        cloud
            .raw("DELETE", "/resume-test/img/random.img.part.1", &[], b"")
            .status,
        204
    );
    assert_eq!(
        cloud
            .raw(
                "DELETE",
                "/resume-test/img/random.img.manifest.xml",
                &[],
                b""
            )
            .status,
        204
    );
    cloud.proxy.clear();
    let out = run_ok(&mut cloud.cmd(&[
        "upload",
        "-m",
        m,
        "--region",
        "us-west-2",
        "-b",
        "resume-test/img",
        "--json",
    ]));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["uploaded"], serde_json::json!(["random.img.part.1"]));
    assert_eq!(v["skipped"].as_array().unwrap().len(), 2);
    let puts: Vec<String> = cloud.object_puts().into_iter().map(|e| e.path).collect();
    assert_eq!(
        puts,
        [
            "/resume-test/img/random.img.part.1",
            "/resume-test/img/random.img.manifest.xml"
        ]
    );
}

#[test]
fn bucket_in_another_region_is_refused_before_any_part() {
    let cloud = Cloud::start();
    let body = b"<CreateBucketConfiguration><LocationConstraint>eu-west-1</LocationConstraint></CreateBucketConfiguration>";
    assert_eq!(cloud.raw("PUT", "/elsewhere", &[], body).status, 200);
    let (_dir, manifest) = three_parts();
    let err = run_err(&mut cloud.cmd(&[
        "upload",
        "-m",
        manifest.to_str().unwrap(),
        "--region",
        "us-west-2",
        "-b",
        "elsewhere",
    ]));
    assert!(
        err.contains("elsewhere") && err.contains("eu-west-1") && err.contains("us-west-2"),
        "{err}"
    );
    assert!(cloud.object_puts().is_empty());
}

#[test]
fn bucket_with_acls_disabled_is_refused_with_exit_3_unless_fixed() {
    let cloud = Cloud::start();
    let r = cloud.raw(
        "PUT",
        "/enforced",
        &[("x-amz-object-ownership", "BucketOwnerEnforced")],
        b"",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let (_dir, manifest) = three_parts();
    let m = manifest.to_str().unwrap();
    let out = cloud
        .cmd(&["upload", "-m", m, "--region", "us-east-1", "-b", "enforced"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(
        err.contains("ACLs disabled") && err.contains("--fix-ownership"),
        "{err}"
    );
    assert!(
        cloud.object_puts().is_empty(),
        "nothing is sent to a bucket EC2 could not read"
    );

    run_ok(&mut cloud.cmd(&[
        "upload",
        "-m",
        m,
        "--region",
        "us-east-1",
        "-b",
        "enforced",
        "--fix-ownership",
    ]));
    let fixed = cloud
        .raw("GET", "/enforced?ownershipControls", &[], b"")
        .text();
    assert!(fixed.contains("BucketOwnerPreferred"), "{fixed}");
}

#[test]
fn bucket_of_another_account_exits_3() {
    let cloud = Cloud::start();
    cloud.foreign_bucket("taken-bucket");

    let (_dir, manifest) = three_parts();
    let out = cloud
        .cmd(&[
            "upload",
            "-m",
            manifest.to_str().unwrap(),
            "--region",
            "us-east-1",
            "-b",
            "taken-bucket",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains("taken-bucket"), "{err}");
    assert!(cloud.object_puts().is_empty());
}

#[test]
fn download_checks_every_part_and_delete_removes_exactly_the_bundle() {
    let cloud = Cloud::start();
    let _bundle = cloud.upload_three_parts("dl-test/x");
    // An unrelated object under the same prefix must survive the delete.
    assert_eq!(
        cloud
            .raw("PUT", "/dl-test/x/notes.txt", &[], b"keep me")
            .status,
        200
    );

    let dest = tempfile::tempdir().unwrap();
    let d = dest.path().to_str().unwrap();
    let got = stdout_of(&mut cloud.cmd(&[
        "download",
        "-b",
        "dl-test/x",
        "-m",
        "random.img.manifest.xml",
        "-d",
        d,
    ]));
    assert_eq!(Path::new(&got), dest.path().join("random.img.manifest.xml"));
    for f in [
        "random.img.manifest.xml",
        "random.img.part.0",
        "random.img.part.1",
        "random.img.part.2",
    ] {
        assert_eq!(
            fs::read(dest.path().join(f)).unwrap(),
            fs::read(vector_dir("v2-three-parts").join(f)).unwrap(),
            "{f}"
        );
    }
    // The downloaded bundle verifies.
    let keys = Keys::new();
    run_ok(
        amibundle(cloud.home.path())
            .args(["verify", "-m", &got, "-k"])
            .arg(keys.user_key()),
    );

    // Issue 12, finding 2: a manifest whose bundled_size the parts do not add up to (every
    // part's SHA-1 still matching) is refused, and no manifest is written.
    let manifest = fs::read_to_string(vector_dir("v2-three-parts").join("random.img.manifest.xml"))
        .unwrap()
        .replace(
            "<bundled_size>26218640</bundled_size>",
            "<bundled_size>26218641</bundled_size>",
        );
    assert_eq!(
        cloud
            .raw(
                "PUT",
                "/dl-test/y/random.img.manifest.xml",
                &[],
                manifest.as_bytes()
            )
            .status,
        200
    );
    for i in 0..3 {
        let part =
            fs::read(vector_dir("v2-three-parts").join(format!("random.img.part.{i}"))).unwrap();
        assert_eq!(
            cloud
                .raw(
                    "PUT",
                    &format!("/dl-test/y/random.img.part.{i}"),
                    &[],
                    &part
                )
                .status,
            200
        );
    }
    let dest3 = tempfile::tempdir().unwrap();
    let err = run_err(&mut cloud.cmd(&[
        "download",
        "-b",
        "dl-test/y",
        "-m",
        "random.img.manifest.xml",
        "-d",
        dest3.path().to_str().unwrap(),
    ]));
    assert!(
        err.contains(
            "the parts add up to 26218640 bytes but the manifest's bundled_size is 26218641"
        ),
        "{err}"
    );
    assert!(!dest3.path().join("random.img.manifest.xml").exists());

    // A corrupted object is detected and named.
    assert_eq!(
        cloud
            .raw("PUT", "/dl-test/x/random.img.part.2", &[], b"garbage")
            .status,
        200
    );
    let dest2 = tempfile::tempdir().unwrap();
    let err = run_err(&mut cloud.cmd(&[
        "download",
        "-b",
        "dl-test/x",
        "-m",
        "random.img.manifest.xml",
        "-d",
        dest2.path().to_str().unwrap(),
    ]));
    assert!(
        err.contains("random.img.part.2") && err.contains("corrupt"),
        "{err}"
    );
    assert!(
        !dest2.path().join("random.img.manifest.xml").exists(),
        "no manifest for an incomplete download"
    );

    cloud.proxy.clear();
    run_ok(&mut cloud.cmd(&[
        "delete",
        "-b",
        "dl-test/x",
        "-m",
        "random.img.manifest.xml",
        "--clear",
    ]));
    let deletes: Vec<Exchange> = cloud
        .proxy
        .exchanges()
        .into_iter()
        .filter(|e| e.method == "DELETE" || e.query.contains("delete"))
        .collect();
    assert!(
        deletes[0].path.ends_with("random.img.manifest.xml"),
        "manifest first: {:?}",
        deletes[0]
    );
    for f in [
        "random.img.manifest.xml",
        "random.img.part.0",
        "random.img.part.1",
        "random.img.part.2",
    ] {
        assert!(
            cloud.object("dl-test", &format!("x/{f}")).is_none(),
            "{f} deleted"
        );
    }
    assert_eq!(
        cloud.object("dl-test", "x/notes.txt").as_deref(),
        Some(&b"keep me"[..]),
        "other objects kept, so the bucket too"
    );
}

/// The form parameters of the EC2 Query call `action` seen at the proxy (the last one).
pub(crate) fn ec2_call(
    cloud: &Cloud,
    action: &str,
) -> Option<std::collections::BTreeMap<String, String>> {
    let needle = format!("Action={action}&");
    let ex = cloud.proxy.exchanges();
    let body = ex
        .iter()
        .rev()
        .map(|e| String::from_utf8_lossy(&e.body_head).into_owned())
        .find(|b| b.contains(&needle))?;
    let decode = |s: &str| {
        let bytes = s.replace('+', " ").into_bytes();
        let mut out = Vec::new();
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i] == b'%' && i + 2 < bytes.len() {
                out.push(
                    u8::from_str_radix(std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap(), 16)
                        .unwrap(),
                );
                i += 3;
            } else {
                out.push(bytes[i]);
                i += 1;
            }
        }
        String::from_utf8(out).unwrap()
    };
    Some(
        body.split('&')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (decode(k), decode(v)))
            .collect(),
    )
}

#[test]
fn register_sends_instance_store_parameters_and_is_idempotent() {
    let cloud = Cloud::start();
    let (_dir, manifest) = three_parts();
    let m = manifest.to_str().unwrap();
    run_ok(&mut cloud.cmd(&["upload", "-m", m, "--region", "us-east-1"]));

    // Refused before any request: options that cannot apply, and names EC2 would reject.
    cloud.proxy.clear();
    let err = run_err(&mut cloud.cmd(&[
        "register",
        "-m",
        m,
        "--region",
        "us-east-1",
        "--tpm-support",
        "v2.0",
    ]));
    assert!(
        err.contains("--tpm-support") && err.contains("instance-store"),
        "{err}"
    );
    let err =
        run_err(&mut cloud.cmd(&["register", "-m", m, "--region", "us-east-1", "--name", "x"]));
    assert!(err.contains("--name"), "{err}");
    assert!(cloud.proxy.exchanges().is_empty(), "nothing was sent");

    let out = run_ok(&mut cloud.cmd(&[
        "register",
        "-m",
        m,
        "--region",
        "us-east-1",
        "--name",
        "web (2026)",
        "--json",
    ]));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let ami = v["ami_id"].as_str().unwrap().to_string();
    assert!(ami.starts_with("ami-"), "{v}");
    assert_eq!(v["created"], true);
    let p = ec2_call(&cloud, "RegisterImage").expect("RegisterImage at the proxy");
    let get = |k: &str| p.get(k).map(String::as_str);
    assert_eq!(
        get("ImageLocation"),
        Some("amibundle-123456789012-us-east-1/random.img.manifest.xml")
    );
    assert_eq!(get("Name"), Some("web (2026)"));
    assert_eq!(get("VirtualizationType"), Some("hvm"));
    assert_eq!(get("Architecture"), Some("x86_64"));
    assert_eq!(get("RootDeviceName"), Some("/dev/sda1"));
    for (i, (dev, virt)) in [
        ("/dev/sdb", "ephemeral0"),
        ("/dev/sdc", "ephemeral1"),
        ("/dev/sdd", "ephemeral2"),
        ("/dev/sde", "ephemeral3"),
    ]
    .iter()
    .enumerate()
    {
        assert_eq!(
            get(&format!("BlockDeviceMapping.{}.DeviceName", i + 1)),
            Some(*dev),
            "{p:?}"
        );
        assert_eq!(
            get(&format!("BlockDeviceMapping.{}.VirtualName", i + 1)),
            Some(*virt),
            "{p:?}"
        );
    }
    assert!(get("KernelId").is_none() && get("EnaSupport").is_none());

    // Same name, same location: the AMI is reused, no second RegisterImage.
    cloud.proxy.clear();
    let out = run_ok(&mut cloud.cmd(&[
        "register",
        "-m",
        m,
        "--region",
        "us-east-1",
        "--name",
        "web (2026)",
        "--json",
    ]));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ami_id"], ami.as_str());
    assert_eq!(v["created"], false);
    assert!(ec2_call(&cloud, "RegisterImage").is_none());

    // Same name, another location: refused unless --force.
    run_ok(&mut cloud.cmd(&[
        "upload",
        "-m",
        m,
        "--region",
        "us-east-1",
        "-b",
        "amibundle-123456789012-us-east-1/v2",
    ]));
    let other = "amibundle-123456789012-us-east-1/v2/random.img.manifest.xml";
    let err = run_err(&mut cloud.cmd(&[
        "register",
        "--image-location",
        other,
        "--region",
        "us-east-1",
        "--name",
        "web (2026)",
    ]));
    assert!(err.contains(&ami) && err.contains("--force"), "{err}");
    let out = run_ok(&mut cloud.cmd(&[
        "register",
        "--image-location",
        other,
        "--region",
        "us-east-1",
        "--name",
        "web (2026)",
        "--force",
        "--json",
    ]));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_ne!(v["ami_id"], ami.as_str());
    assert_eq!(v["created"], true);
    assert_eq!(
        ec2_call(&cloud, "DeregisterImage")
            .and_then(|p| p.get("ImageId").cloned())
            .as_deref(),
        Some(ami.as_str())
    );
    assert_eq!(
        ec2_call(&cloud, "RegisterImage")
            .and_then(|p| p.get("ImageLocation").cloned())
            .as_deref(),
        Some(other)
    );
}

#[test]
fn on_ec2_region_and_instance_role_credentials_come_from_imdsv2() {
    use crate::support::imds::ImdsServer;
    let cloud = Cloud::start();
    let creds = r#"{"Code":"Success","LastUpdated":"2026-11-25T00:00:00Z","Type":"AWS-HMAC","AccessKeyId":"AKIAROLEROLEROLEROLE","SecretAccessKey":"role-secret","Token":"role-token","Expiration":"2099-01-01T00:00:00Z"}"#;
    let imds = ImdsServer::start(
        [
            ("meta-data/placement/region", "ap-southeast-2"),
            ("meta-data/iam/security-credentials/", "builder-role"),
            ("meta-data/iam/security-credentials/builder-role", creds),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect(),
    );
    let (_dir, manifest) = three_parts();
    let mut cmd = cloud.cmd(&["upload", "-m", manifest.to_str().unwrap()]);
    cmd.env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .env_remove("AWS_EC2_METADATA_DISABLED")
        .env("AWS_EC2_METADATA_SERVICE_ENDPOINT", &imds.endpoint);
    let out = stdout_of(&mut cmd);
    assert_eq!(
        out, "amibundle-123456789012-ap-southeast-2/random.img.manifest.xml",
        "region from IMDS"
    );
    // Every metadata read carried an IMDSv2 token (the test server refuses IMDSv1).
    let reqs = imds.requests();
    assert!(
        reqs.iter()
            .any(|r| r.method == "PUT" && r.path == "/latest/api/token"),
        "{reqs:?}"
    );
    assert!(reqs.iter().all(|r| r.status != 401), "{reqs:?}");
    // The instance role's credentials signed the requests.
    let puts = cloud.object_puts();
    assert!(!puts.is_empty());
    for p in &puts {
        let auth = header(p, "authorization").unwrap_or_default();
        assert!(auth.contains("Credential=AKIAROLEROLEROLEROLE/"), "{auth}");
        assert_eq!(header(p, "x-amz-security-token"), Some("role-token"));
    }
}

#[test]
fn verify_accepts_an_s3_manifest_and_names_a_corrupt_object() {
    let cloud = Cloud::start();
    let _bundle = cloud.upload_three_parts("vbucket/p");
    let keys = Keys::new();
    let url = "s3://vbucket/p/random.img.manifest.xml";
    let (k, c) = (keys.user_key(), keys.user_cert());
    let (k, c) = (k.to_str().unwrap(), c.to_str().unwrap());
    let out = run_ok(&mut cloud.cmd(&["verify", "--json", "-m", url, "-k", k, "-c", c]));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ok"], true);
    assert_eq!(v["tar_sha1"], expected("v2-three-parts")["tar_stream_sha1"]);
    assert_eq!(v["signature"], "raw");

    assert_eq!(
        cloud
            .raw("PUT", "/vbucket/p/random.img.part.0", &[], b"tampered")
            .status,
        200
    );
    let err = run_err(&mut cloud.cmd(&["verify", "-m", url, "-c", c]));
    assert!(
        err.contains("random.img.part.0") && err.contains("corrupt"),
        "{err}"
    );
}

/// Names in a directory, sorted (hidden temporary files included).
fn dir_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// `download -b stream/img -m random.img.manifest.xml -d DEST --unbundle` plus `extra`.
fn download_unbundle(cloud: &Cloud, dest: &Path, extra: &[&std::ffi::OsStr]) -> Command {
    let mut cmd = cloud.cmd(&[
        "download",
        "-b",
        "stream/img",
        "-m",
        "random.img.manifest.xml",
        "-d",
        dest.to_str().unwrap(),
        "--unbundle",
    ]);
    cmd.args(extra);
    cmd
}

#[test]
fn download_unbundle_streams_each_part_once_into_the_image_and_keeps_nothing_else() {
    // Part 0 answers last, so parts 1 and 2 arrive first: the decode only succeeds if the
    // parts are handed on in index order, not in arrival order.
    let plan = |req: &crate::support::proxy::RequestHead| {
        if req.method == "GET" && req.path.ends_with("/random.img.part.0") {
            Action::Stall(std::time::Duration::from_millis(1500))
        } else {
            Action::Forward
        }
    };
    let cloud = Cloud::start_with(Box::new(plan));
    let _bundle = cloud.upload_three_parts("stream/img");
    cloud.proxy.clear();
    let keys = Keys::new();
    let dest = tempfile::tempdir().unwrap();
    let (k, c) = (keys.user_key(), keys.user_cert());
    let out = run_ok(&mut download_unbundle(
        &cloud,
        dest.path(),
        &[
            "-k".as_ref(),
            k.as_ref(),
            "-c".as_ref(),
            c.as_ref(),
            "--json".as_ref(),
        ],
    ));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let exp = expected("v2-three-parts");
    let image = dest.path().join("random.img");
    assert_eq!(v["image"], image.to_str().unwrap());
    assert_eq!(sha1sum(&image), exp["image_sha1"].as_str().unwrap());
    assert_eq!(v["tar_sha1"], exp["tar_stream_sha1"]);
    assert_eq!(v["image_size"], exp["image_size"]);
    assert_eq!(v["signature"], "raw");
    assert_eq!(v["parts"], 3);
    let part_bytes: u64 = [
        "random.img.part.0",
        "random.img.part.1",
        "random.img.part.2",
    ]
    .iter()
    .map(|p| {
        fs::metadata(vector_dir("v2-three-parts").join(p))
            .unwrap()
            .len()
    })
    .sum();
    assert_eq!(v["bytes"], part_bytes);
    assert!(v["seconds"].as_f64().is_some(), "{v}");
    assert_eq!(
        dir_names(dest.path()),
        ["random.img"],
        "only the image: no part, manifest or temporary file"
    );
    assert_eq!(
        cloud.object_gets(),
        [
            "/stream/img/random.img.manifest.xml",
            "/stream/img/random.img.part.0",
            "/stream/img/random.img.part.1",
            "/stream/img/random.img.part.2",
        ],
        "the manifest and each part fetched exactly once"
    );

    // The image is not replaced without --overwrite, and that is known before any part GET.
    cloud.proxy.clear();
    let err = run_err(&mut download_unbundle(
        &cloud,
        dest.path(),
        &["-k".as_ref(), k.as_ref()],
    ));
    assert!(
        err.contains("random.img") && err.contains("--overwrite"),
        "{err}"
    );
    assert_eq!(cloud.object_gets(), ["/stream/img/random.img.manifest.xml"]);
    run_ok(&mut download_unbundle(
        &cloud,
        dest.path(),
        &[
            "-k".as_ref(),
            k.as_ref(),
            "--overwrite".as_ref(),
            // One part at a time must not deadlock on the memory bound.
            "--concurrency".as_ref(),
            "1".as_ref(),
        ],
    ));
    assert_eq!(sha1sum(&image), exp["image_sha1"].as_str().unwrap());
    assert_eq!(dir_names(dest.path()), ["random.img"]);
}

#[test]
fn download_unbundle_names_a_corrupt_or_oversized_object_and_leaves_nothing() {
    let cloud = Cloud::start();
    let _bundle = cloud.upload_three_parts("stream/img");
    let keys = Keys::new();
    let k = keys.user_key();
    let dest = tempfile::tempdir().unwrap();
    // Part 1, not 0: part 0 decodes first, so the temporary image exists when the bad part
    // arrives and must be removed.
    for (body, what) in [
        (b"garbage".to_vec(), "corrupt"),
        (
            vec![0u8; 10 * 1024 * 1024 + 1],
            "more than the largest part",
        ),
    ] {
        assert_eq!(
            cloud
                .raw("PUT", "/stream/img/random.img.part.1", &[], &body)
                .status,
            200
        );
        let out = download_unbundle(&cloud, dest.path(), &["-k".as_ref(), k.as_ref()])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(
            err.contains("s3://stream/img/random.img.part.1") && err.contains(what),
            "{err}"
        );
        assert!(
            !err.contains("gzip") && !err.contains("tar") && !err.contains("EOF"),
            "the download failure is reported as itself: {err}"
        );
        assert!(
            dir_names(dest.path()).is_empty(),
            "no image and no temporary file: {:?}",
            dir_names(dest.path())
        );
    }
}

#[test]
fn download_unbundle_with_a_wrong_key_or_certificate_fetches_no_part_and_writes_nothing() {
    use std::os::unix::fs::PermissionsExt;
    let cloud = Cloud::start();
    let _bundle = cloud.upload_three_parts("stream/img");
    let keys = Keys::new();
    let dest = tempfile::tempdir().unwrap();

    // Another 2048-bit key, like the right one: only the unwrapping can tell them apart.
    let wrong_key = keys.dir.path().join("other-key.pem");
    run_ok(
        Command::new("openssl")
            .args(["genpkey", "-algorithm", "RSA", "-pkeyopt"])
            .args(["rsa_keygen_bits:2048", "-out", wrong_key.to_str().unwrap()]),
    );
    fs::set_permissions(&wrong_key, fs::Permissions::from_mode(0o600)).unwrap();
    cloud.proxy.clear();
    let err = run_err(&mut download_unbundle(
        &cloud,
        dest.path(),
        &["-k".as_ref(), wrong_key.as_ref()],
    ));
    assert!(err.contains("wrong private key"), "{err}");
    assert!(dir_names(dest.path()).is_empty());
    assert_eq!(
        cloud.object_gets(),
        ["/stream/img/random.img.manifest.xml"],
        "the key is unwrapped before any part is requested"
    );

    cloud.proxy.clear();
    let (k, wrong_cert) = (keys.user_key(), keys.ec2_cert());
    let err = run_err(&mut download_unbundle(
        &cloud,
        dest.path(),
        &[
            "-k".as_ref(),
            k.as_ref(),
            "-c".as_ref(),
            wrong_cert.as_ref(),
        ],
    ));
    assert!(
        err.contains("verifying the signature") && err.contains("ec2-test-cert.pem"),
        "{err}"
    );
    assert!(dir_names(dest.path()).is_empty());
    assert_eq!(cloud.object_gets(), ["/stream/img/random.img.manifest.xml"]);

    // Key flags belong to --unbundle.
    let err = run_err(&mut cloud.cmd(&[
        "download",
        "-b",
        "stream/img",
        "-m",
        "random.img.manifest.xml",
        "-k",
        k.to_str().unwrap(),
    ]));
    assert!(err.contains("--unbundle"), "{err}");
}

#[test]
fn sigint_while_a_part_is_still_downloading_removes_the_partial_image_and_exits_130() {
    use std::time::{Duration, Instant};
    // Part 2's GET hangs (until the proxy stops), so the decode waits for it with parts 0 and
    // 1 already written into the temporary image.
    let plan = |req: &crate::support::proxy::RequestHead| {
        if req.method == "GET" && req.path.ends_with("/random.img.part.2") {
            Action::Stall(Duration::from_secs(300))
        } else {
            Action::Forward
        }
    };
    let cloud = Cloud::start_with(Box::new(plan));
    let _bundle = cloud.upload_three_parts("stream/img");
    let keys = Keys::new();
    let k = keys.user_key();
    let dest = tempfile::tempdir().unwrap();
    let mut child = download_unbundle(&cloud, dest.path(), &["-k".as_ref(), k.as_ref()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !dir_names(dest.path())
        .iter()
        .any(|n| n.starts_with(".random.img.amibundle-"))
    {
        if Instant::now() > deadline || child.try_wait().unwrap().is_some() {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "no temporary image appeared: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    // The stalled GET would hold the run for minutes: the reader must notice the signal while
    // it waits.
    let signalled = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if signalled.elapsed() > Duration::from_secs(10) {
            let _ = child.kill();
            panic!("still running 10 s after SIGINT");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{err}");
    assert!(err.contains("interrupted"), "{err}");
    assert!(
        dir_names(dest.path()).is_empty(),
        "{:?}",
        dir_names(dest.path())
    );
}

/// Adversarial pass of issue 12: a manifest stored under another bundle's name. A manifest is
/// always `<image name>.manifest.xml`; one named `evil.manifest.xml` that describes the bundle
/// `random.img` (the genuine manifest, copied by anyone who can write to the bucket) made
/// `delete -m evil.manifest.xml` delete random.img's parts, and `download` write them. The name
/// it is fetched by must be the name of the bundle it describes.
#[test]
fn a_manifest_stored_under_another_name_cannot_act_on_the_bundle_it_describes() {
    let cloud = Cloud::start();
    let _bundle = cloud.upload_three_parts("alias/p");
    let genuine = fs::read(vector_dir("v2-three-parts").join("random.img.manifest.xml")).unwrap();
    assert_eq!(
        cloud
            .raw("PUT", "/alias/p/evil.manifest.xml", &[], &genuine)
            .status,
        200
    );
    let dest = tempfile::tempdir().unwrap();
    let d = dest.path().to_str().unwrap();
    let want = "describes the bundle random.img, not evil";
    for args in [
        &["delete", "-b", "alias/p", "-m", "evil.manifest.xml"][..],
        &[
            "download",
            "-b",
            "alias/p",
            "-m",
            "evil.manifest.xml",
            "-d",
            d,
        ][..],
    ] {
        let err = run_err(&mut cloud.cmd(args));
        assert!(err.contains(want), "{args:?}: {err}");
    }
    assert!(dir_names(dest.path()).is_empty());
    // random.img is whole: it still downloads and verifies.
    let got = stdout_of(&mut cloud.cmd(&[
        "download",
        "-b",
        "alias/p",
        "-m",
        "random.img.manifest.xml",
        "-d",
        d,
    ]));
    run_ok(
        amibundle(cloud.home.path())
            .args(["verify", "-m", &got, "-k"])
            .arg(Keys::new().user_key()),
    );
}
