//! `to-ebs` against moto's EBS direct APIs, through the recording proxy: an image becomes a
//! snapshot that reads back equal to it block for block, with no all-zero block sent, and an
//! EBS-backed AMI booting from it; a bare filesystem is refused before anything is sent.

use std::fs;
use std::io::{Seek, SeekFrom, Write};
use std::path::Path;

use crate::cloud::{Cloud, ec2_call};
use crate::support::http::{self, Body};
use crate::support::*;

pub(crate) const BLOCK: usize = 512 << 10;

/// Moto routes a request by its signing scope; this one says EBS.
pub(crate) const EBS_AUTHORIZATION: &str = "AWS4-HMAC-SHA256 \
    Credential=testing/20260101/us-east-1/ebs/aws4_request, SignedHeaders=host, Signature=00";

/// A 24 MiB sparse disk image: an MBR with boot code and one Linux partition, data islands (one
/// spanning a block boundary, one single byte), a block of explicit zeros written as data, and
/// holes everywhere else.
pub(crate) fn disk_image(path: &Path) {
    let mut f = fs::File::create(path).unwrap();
    f.set_len(24 << 20).unwrap();
    let mut mbr = [0u8; 512];
    mbr[..440].copy_from_slice(&[0xeb; 440]);
    // Partition 1: active, type 0x83, from LBA 2048 to the end.
    mbr[446] = 0x80;
    mbr[446 + 4] = 0x83;
    mbr[446 + 8..446 + 12].copy_from_slice(&2048u32.to_le_bytes());
    mbr[446 + 12..446 + 16].copy_from_slice(&((24u32 << 11) - 2048).to_le_bytes());
    mbr[510] = 0x55;
    mbr[511] = 0xaa;
    f.write_all(&mbr).unwrap();
    let mut island = vec![0u8; 700 << 10];
    random_fill(&mut island, 7);
    f.seek(SeekFrom::Start((3 << 20) + 300_000)).unwrap();
    f.write_all(&island).unwrap();
    f.seek(SeekFrom::Start(10 << 20)).unwrap();
    f.write_all(&vec![0u8; BLOCK]).unwrap();
    f.seek(SeekFrom::Start((20 << 20) + 12345)).unwrap();
    f.write_all(&[0x42]).unwrap();
    f.sync_all().unwrap();
}

fn random_fill(buf: &mut [u8], seed: u64) {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    for b in buf {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
}

/// A GET of the EBS direct APIs straight to moto.
pub(crate) fn ebs_get(cloud: &Cloud, target: &str) -> http::Response {
    http::request(
        &cloud.moto.endpoint,
        "GET",
        target,
        &[("Authorization", EBS_AUTHORIZATION)],
        Body::None,
    )
    .unwrap()
}

/// The snapshot's blocks as EBS serves them: index → bytes.
pub(crate) fn snapshot_blocks(
    cloud: &Cloud,
    snapshot: &str,
) -> std::collections::BTreeMap<u64, Vec<u8>> {
    let r = ebs_get(cloud, &format!("/snapshots/{snapshot}/blocks"));
    assert_eq!(r.status, 200, "{}", r.text());
    let listing: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    let mut blocks = std::collections::BTreeMap::new();
    for b in listing["Blocks"].as_array().unwrap() {
        let index = b["BlockIndex"].as_u64().unwrap();
        let token = b["BlockToken"].as_str().unwrap();
        let r = ebs_get(
            cloud,
            &format!("/snapshots/{snapshot}/blocks/{index}?blockToken={token}"),
        );
        assert_eq!(r.status, 200, "block {index}: {}", r.text());
        blocks.insert(index, r.body);
    }
    blocks
}

#[test]
fn an_image_becomes_a_snapshot_equal_to_it_and_an_ebs_ami_booting_from_it() {
    let cloud = Cloud::start();
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("disk.img");
    disk_image(&image);
    let out = run_ok(&mut cloud.cmd(&[
        "to-ebs",
        "-i",
        image.to_str().unwrap(),
        "--name",
        "web-ebs",
        "--arch",
        "x86_64",
        "--ena-support",
        // Random bytes in a partition: no filesystem for the Nitro check (tests/it/ebs_boot.rs
        // has the real one).
        "--allow-unbootable",
        "--tag",
        "team=web",
        "--region",
        "us-east-1",
        "--json",
    ]));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let snapshot = report["snapshot_id"].as_str().unwrap().to_string();
    assert_eq!(report["volume_size_gib"], 1);

    // Read back: every block the snapshot holds equals the image's, none is all zeros, and
    // every block it does not hold is all zeros in the image.
    let data = fs::read(&image).unwrap();
    let blocks = snapshot_blocks(&cloud, &snapshot);
    for (index, bytes) in &blocks {
        let at = *index as usize * BLOCK;
        assert_eq!(bytes.len(), BLOCK);
        assert_eq!(bytes[..], data[at..at + BLOCK], "block {index}");
        assert!(bytes.iter().any(|&b| b != 0), "block {index} is all zeros");
    }
    for (index, chunk) in data.chunks(BLOCK).enumerate() {
        if !blocks.contains_key(&(index as u64)) {
            assert!(chunk.iter().all(|&b| b == 0), "block {index} was not sent");
        }
    }
    // The MBR, the island across blocks 6 and 7, and the single byte: 4 blocks, each once.
    assert_eq!(
        blocks.keys().copied().collect::<Vec<_>>(),
        [0, 6, 7, 40],
        "{report}"
    );
    let puts = cloud
        .proxy
        .exchanges()
        .into_iter()
        .filter(|e| {
            e.method == "PUT"
                && e.path
                    .starts_with(&format!("/snapshots/{snapshot}/blocks/"))
        })
        .count();
    assert_eq!(puts, 4);
    assert_eq!(report["blocks_sent"], 4);
    assert_eq!(report["blocks_skipped"], 48 - 4);

    // The AMI: HVM, root /dev/xvda on a gp3 volume from the snapshot, ENA, tagged.
    let ami = report["ami_id"].as_str().unwrap().to_string();
    let reg = ec2_call(&cloud, "RegisterImage").expect("RegisterImage");
    assert_eq!(reg["Name"], "web-ebs");
    assert_eq!(reg["VirtualizationType"], "hvm");
    assert_eq!(reg["RootDeviceName"], "/dev/xvda");
    assert_eq!(reg["Architecture"], "x86_64");
    assert_eq!(reg["BootMode"], "legacy-bios");
    assert_eq!(reg["EnaSupport"], "true");
    assert_eq!(reg["BlockDeviceMapping.1.DeviceName"], "/dev/xvda");
    assert_eq!(reg["BlockDeviceMapping.1.Ebs.SnapshotId"], snapshot);
    assert_eq!(reg["BlockDeviceMapping.1.Ebs.VolumeType"], "gp3");
    assert_eq!(reg["BlockDeviceMapping.1.Ebs.DeleteOnTermination"], "true");
    assert!(!reg.contains_key("ImageLocation"), "{reg:?}");

    // The name is taken now: a second run is refused before any snapshot is started.
    let starts_before = start_snapshots(&cloud);
    assert_eq!(starts_before, 1);
    let err = run_err(&mut cloud.cmd(&[
        "to-ebs",
        "-i",
        image.to_str().unwrap(),
        "--name",
        "web-ebs",
        "--allow-unbootable",
        "--region",
        "us-east-1",
    ]));
    assert!(err.contains(&ami) && err.contains("--force"), "{err}");
    assert_eq!(start_snapshots(&cloud), starts_before);
}

/// StartSnapshot requests seen at the proxy.
pub(crate) fn start_snapshots(cloud: &Cloud) -> usize {
    cloud
        .proxy
        .exchanges()
        .into_iter()
        .filter(|e| e.method == "POST" && e.path == "/snapshots")
        .count()
}

#[test]
fn a_bare_filesystem_is_refused_before_anything_is_sent_unless_only_a_snapshot_is_asked() {
    let cloud = Cloud::start();
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("rootfs.img");
    let mut f = fs::File::create(&image).unwrap();
    f.set_len(4 << 20).unwrap();
    // An ext4 superblock's magic at 1080, no partition table.
    f.seek(SeekFrom::Start(1080)).unwrap();
    f.write_all(&[0x53, 0xef]).unwrap();
    drop(f);
    let err = run_err(&mut cloud.cmd(&[
        "to-ebs",
        "-i",
        image.to_str().unwrap(),
        "--region",
        "us-east-1",
    ]));
    assert!(
        err.contains("bare filesystem") && err.contains("--no-register"),
        "{err}"
    );
    assert!(cloud.proxy.exchanges().is_empty(), "a request was sent");

    let out = run_ok(&mut cloud.cmd(&[
        "to-ebs",
        "-i",
        image.to_str().unwrap(),
        "--no-register",
        "--region",
        "us-east-1",
    ]));
    let snapshot = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(snapshot.starts_with("snap-"), "{snapshot}");
    let blocks = snapshot_blocks(&cloud, &snapshot);
    assert_eq!(blocks.keys().copied().collect::<Vec<_>>(), [0]);
    assert!(ec2_call(&cloud, "RegisterImage").is_none());
}

#[test]
fn a_block_ebs_refuses_fails_with_exit_3_naming_the_permission_and_deletes_the_snapshot() {
    use crate::support::proxy::{Action, RequestHead};
    use std::sync::atomic::{AtomicU32, Ordering};
    // The second block sent is refused as a missing permission would be (not retried).
    let puts = AtomicU32::new(0);
    let plan = move |req: &RequestHead| {
        if req.method == "PUT"
            && req.path.contains("/blocks/")
            && puts.fetch_add(1, Ordering::SeqCst) == 1
        {
            return Action::Respond(
                403,
                br#"{"__type":"AccessDeniedException","Message":"not allowed","Reason":"UNAUTHORIZED_ACCOUNT"}"#
                    .to_vec(),
            );
        }
        Action::Forward
    };
    let cloud = Cloud::start_with(Box::new(plan));
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("disk.img");
    disk_image(&image);
    let out = cloud
        .cmd(&[
            "to-ebs",
            "-i",
            image.to_str().unwrap(),
            "--no-register",
            "--region",
            "us-east-1",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains("ebs:PutSnapshotBlock"), "{err}");
    let deleted = ec2_call(&cloud, "DeleteSnapshot").expect("the failed snapshot is deleted");
    let snapshot = deleted["SnapshotId"].clone();
    assert!(snapshot.starts_with("snap-"), "{deleted:?}");
    assert!(err.contains(&snapshot), "{err}");
}

/// The image the snapshot holds: its blocks where it has them, zeros elsewhere.
pub(crate) fn snapshot_image(cloud: &Cloud, snapshot: &str, size: usize) -> Vec<u8> {
    let mut image = vec![0u8; size.div_ceil(BLOCK) * BLOCK];
    for (index, bytes) in snapshot_blocks(cloud, snapshot) {
        assert!(bytes.iter().any(|&b| b != 0), "block {index} is all zeros");
        let at = index as usize * BLOCK;
        image[at..at + BLOCK].copy_from_slice(&bytes);
    }
    assert!(image[size..].iter().all(|&b| b == 0));
    image.truncate(size);
    image
}

pub(crate) fn sha1_hex(data: &[u8]) -> String {
    use sha1::{Digest, Sha1};
    hex::encode(Sha1::digest(data))
}

#[test]
fn reference_bundles_local_and_in_s3_become_snapshots_equal_to_their_images() {
    let cloud = Cloud::start();
    let keys = Keys::new();
    for (i, vector) in [
        "v1-small-ext4",
        "v2-three-parts",
        "v3-sparse-islands",
        "v4-prefix",
    ]
    .into_iter()
    .enumerate()
    {
        let expected = expected(vector);
        let name = expected["image_name"].as_str().unwrap();
        let size = expected["image_size"].as_u64().unwrap() as usize;
        let manifest = vector_dir(vector).join(expected["manifest"].as_str().unwrap());
        // Even vectors from a local manifest, odd ones from S3.
        let source: Vec<String> = if i % 2 == 0 {
            vec!["-m".into(), manifest.display().to_string()]
        } else {
            let bucket = format!("vectors-{i}/in");
            upload(&cloud, &manifest, &bucket);
            vec![
                "--image-location".into(),
                format!("{bucket}/{}", expected["manifest"].as_str().unwrap()),
            ]
        };
        let mut args: Vec<&str> =
            vec!["to-ebs", "--no-register", "--region", "us-east-1", "--json"];
        args.extend(source.iter().map(String::as_str));
        let key = keys.user_key();
        args.extend(["-k", key.to_str().unwrap()]);
        let out = run_ok(&mut cloud.cmd(&args));
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let snapshot = report["snapshot_id"].as_str().unwrap();
        let image = snapshot_image(&cloud, snapshot, size);
        assert_eq!(
            sha1_hex(&image),
            expected["image_sha1"].as_str().unwrap(),
            "{vector} ({name})"
        );
        let non_zero = image
            .chunks(BLOCK)
            .filter(|b| b.iter().any(|&x| x != 0))
            .count();
        assert_eq!(report["blocks_sent"], non_zero as u64, "{vector}");
    }
}

#[test]
fn a_bundled_disk_becomes_an_ami_with_the_manifests_architecture_and_a_corrupt_one_leaves_nothing()
{
    let cloud = Cloud::start();
    let keys = Keys::new();
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("disk.img");
    disk_image(&image);
    let manifest = bundle_into(
        &cloud,
        &keys,
        &image,
        &dir.path().join("bundle"),
        &["-r", "arm64"],
    );
    let out = run_ok(&mut cloud.cmd(&[
        "to-ebs",
        "-m",
        manifest.to_str().unwrap(),
        "-k",
        keys.user_key().to_str().unwrap(),
        "--name",
        "disk-from-bundle",
        "--region",
        "us-east-1",
        "--json",
    ]));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let data = fs::read(&image).unwrap();
    assert_eq!(
        snapshot_image(&cloud, report["snapshot_id"].as_str().unwrap(), data.len()),
        data
    );
    let reg = ec2_call(&cloud, "RegisterImage").expect("RegisterImage");
    assert_eq!(reg["Architecture"], "arm64");
    assert_eq!(reg["Name"], "disk-from-bundle");

    // A part corrupted in S3 (its SHA-1 no longer matches): checked before any byte of it is
    // decrypted, so no snapshot is even started (a bundle's only part here).
    upload(&cloud, &manifest, "corrupt/x");
    let part = cloud.object("corrupt", "x/disk.img.part.0").unwrap();
    let mut bad = part.clone();
    let last = bad.len() - 1;
    bad[last] ^= 1;
    assert_eq!(
        cloud
            .raw("PUT", "/corrupt/x/disk.img.part.0", &[], &bad)
            .status,
        200
    );
    let completes_before = completes(&cloud);
    let starts_before = start_snapshots(&cloud);
    assert_eq!((completes_before, starts_before), (1, 1));
    let err = run_err(&mut cloud.cmd(&[
        "to-ebs",
        "--image-location",
        "corrupt/x/disk.img.manifest.xml",
        "-k",
        keys.user_key().to_str().unwrap(),
        "--no-register",
        "--region",
        "us-east-1",
    ]));
    assert!(err.contains("disk.img.part.0"), "{err}");
    assert_eq!(
        completes(&cloud),
        completes_before,
        "a snapshot was completed"
    );
    assert_eq!(
        start_snapshots(&cloud),
        starts_before,
        "a snapshot was started"
    );
}

/// CompleteSnapshot requests seen at the proxy.
pub(crate) fn completes(cloud: &Cloud) -> usize {
    cloud
        .proxy
        .exchanges()
        .into_iter()
        .filter(|e| e.method == "POST" && e.path.starts_with("/snapshots/completion/"))
        .count()
}

/// Bundles `image` for account 123456789012 into the new directory `out` with `keys` (and
/// `extra` flags); returns the manifest's path.
pub(crate) fn bundle_into(
    cloud: &Cloud,
    keys: &Keys,
    image: &Path,
    out: &Path,
    extra: &[&str],
) -> std::path::PathBuf {
    fs::create_dir(out).unwrap();
    run_ok(
        amibundle(cloud.home.path())
            .args(["bundle-image", "-i"])
            .arg(image)
            .args(["-u", "123456789012", "-d"])
            .arg(out)
            .args(extra)
            .args(keys.bundle_args()),
    );
    out.join(format!(
        "{}.manifest.xml",
        image.file_name().unwrap().to_str().unwrap()
    ))
}

/// Uploads the bundle of `manifest` to `bucket[/prefix]` in us-east-1.
pub(crate) fn upload(cloud: &Cloud, manifest: &Path, bucket: &str) {
    run_ok(&mut cloud.cmd(&[
        "upload",
        "-m",
        manifest.to_str().unwrap(),
        "--region",
        "us-east-1",
        "-b",
        bucket,
    ]));
}

#[test]
fn a_bundle_signed_by_another_key_or_holding_a_bare_filesystem_starts_no_snapshot() {
    let cloud = Cloud::start();
    let keys = Keys::new();
    let dir = tempfile::tempdir().unwrap();
    let bundle = |image: &Path, name: &str| {
        bundle_into(
            &cloud,
            &keys,
            image,
            &dir.path().join(name),
            &["-r", "x86_64"],
        )
    };
    let to_ebs = |manifest: &Path| {
        run_err(&mut cloud.cmd(&[
            "to-ebs",
            "-m",
            manifest.to_str().unwrap(),
            "-k",
            keys.user_key().to_str().unwrap(),
            "--region",
            "us-east-1",
        ]))
    };

    // Signed by another key (the EC2 stand-in's): refused by the signature check.
    let image = dir.path().join("disk.img");
    disk_image(&image);
    let manifest = bundle(&image, "signed");
    let xml = fs::read_to_string(&manifest).unwrap();
    fs::write(&manifest, signed_with(&xml, &keys.ec2_key())).unwrap();
    let err = to_ebs(&manifest);
    assert!(err.contains("signature"), "{err}");
    assert_eq!(start_snapshots(&cloud), 0, "a snapshot was started");

    // A bare filesystem inside a correctly signed bundle: refused at its first block, before
    // the snapshot is started.
    let bare = dir.path().join("rootfs.img");
    let mut f = fs::File::create(&bare).unwrap();
    f.set_len(4 << 20).unwrap();
    f.seek(SeekFrom::Start(1080)).unwrap();
    f.write_all(&[0x53, 0xef]).unwrap();
    drop(f);
    let err = to_ebs(&bundle(&bare, "bare"));
    assert!(
        err.contains("bare filesystem") && err.contains("--no-register"),
        "{err}"
    );
    assert_eq!(start_snapshots(&cloud), 0, "a snapshot was started");
    // Nothing is left to resume: no journal stays behind.
    let state = cloud.home.path().join("state/amibundle/to-ebs");
    let left: Vec<_> = fs::read_dir(&state)
        .map(|d| d.map(|e| e.unwrap().file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "{left:?}");
}
