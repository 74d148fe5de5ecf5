//! `bundle-image --snapshot`, the reverse of `to-ebs`, against moto's EBS direct APIs through the
//! recording proxy: an image made into a snapshot by `to-ebs` comes back as a sparse bundle that
//! unbundles to the image (and zeros up to the snapshot's whole GiB), locally and streamed to S3;
//! and every answer of EBS or EC2 that cannot be right (a block failing its checksum, a short
//! block, a listing out of order, repeating itself, reaching past the volume, or empty, a
//! pending snapshot, a refused permission) fails the run, naming the snapshot and the block,
//! with no bundle left behind.
//!
//! moto's EBS differs from AWS in ways these tests work around, each said where it matters:
//! it lists a snapshot's blocks in the order they were written, not by index (so `to-ebs` runs
//! with `--concurrency 1` here); it reports a block size of 512 (AWS: 524288); it returns no
//! `NextToken`; it reports every snapshot `completed`, even one still being written; and it
//! returns whatever checksum a block was written with, unchecked.

use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use crate::cloud::Cloud;
use crate::ebs::ebs_get;
use crate::support::proxy::{Action, RequestHead};
use crate::support::*;

const BLOCK: usize = 512 << 10;
const GIB: u64 = 1 << 30;

/// The image's blocks that hold a non-zero byte: what `to-ebs` writes into the snapshot.
const WRITTEN: [u64; 5] = [0, 6, 7, 40, 48];

/// A rule the proxy consults for each request once a test has set it (the snapshot is made
/// first, untouched); `None` forwards.
type Rule = Arc<dyn Fn(&RequestHead) -> Option<Action> + Send + Sync>;

#[derive(Clone, Default)]
struct Tamper(Arc<Mutex<Option<Rule>>>);

impl Tamper {
    fn set(&self, rule: impl Fn(&RequestHead) -> Option<Action> + Send + Sync + 'static) {
        *self.0.lock().unwrap() = Some(Arc::new(rule));
    }

    /// The rule's answer to `req` (the rule runs unlocked: it may wait while other requests
    /// go through).
    fn decide(&self, req: &RequestHead) -> Action {
        let rule = self.0.lock().unwrap().clone();
        rule.and_then(|rule| rule(req)).unwrap_or(Action::Forward)
    }
}

/// moto behind a proxy that applies the test's [`Tamper`] rule, a snapshot of
/// [`islands_image`] made by `to-ebs`, keys and a bundle directory.
struct Scene {
    cloud: Cloud,
    tamper: Tamper,
    keys: Keys,
    dir: tempfile::TempDir,
    image: Vec<u8>,
    snapshot: String,
}

impl Scene {
    fn new() -> Self {
        Self::with_image(islands_image)
    }

    /// Like [`Scene::new`], with the image `make` writes (returning its bytes).
    fn with_image(make: fn(&Path) -> Vec<u8>) -> Self {
        let tamper = Tamper::default();
        let t = tamper.clone();
        let cloud = Cloud::start_with(Box::new(move |req: &RequestHead| t.decide(req)));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk.img");
        let image = make(&path);
        let snapshot = to_ebs(&cloud, &path);
        fs::create_dir(dir.path().join("out")).unwrap();
        cloud.proxy.clear();
        Scene {
            cloud,
            tamper,
            keys: Keys::new(),
            dir,
            image,
            snapshot,
        }
    }

    fn out(&self) -> PathBuf {
        self.dir.path().join("out")
    }

    /// `bundle-image --snapshot` into `out/` with the test keys, plus `extra` flags.
    fn bundle(&self, extra: &[&str]) -> std::process::Command {
        let mut args = vec![
            "bundle-image",
            "--snapshot",
            &self.snapshot,
            "-u",
            "123456789012",
            "-r",
            "x86_64",
            "--region",
            "us-east-1",
        ];
        args.extend_from_slice(extra);
        let mut cmd = self.cloud.cmd(&args);
        cmd.args(self.keys.bundle_args());
        cmd
    }

    /// Runs the bundle expecting a failure with exit code `code`; returns stderr, having
    /// checked that nothing was left in `out/`.
    fn bundle_fails(&self, code: i32) -> String {
        let out = self
            .bundle(&["-d", self.out().to_str().unwrap()])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(code), "{err}");
        let left: Vec<_> = fs::read_dir(self.out())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(left.is_empty(), "a failed read left {left:?}; {err}");
        assert!(err.contains(&self.snapshot), "{err}");
        err
    }

    /// The real listing, straight from moto: (index, token) in moto's order.
    fn listing(&self) -> Vec<(u64, String)> {
        let r = ebs_get(&self.cloud, &format!("/snapshots/{}/blocks", self.snapshot));
        assert_eq!(r.status, 200, "{}", r.text());
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        v["Blocks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| {
                (
                    b["BlockIndex"].as_u64().unwrap(),
                    b["BlockToken"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    }

    /// Answers every ListSnapshotBlocks of the snapshot with `pages` (by `pageToken`: none for
    /// the first, `p1`, `p2`… for the next ones).
    fn list_with(&self, pages: Vec<serde_json::Value>) {
        let path = format!("/snapshots/{}/blocks", self.snapshot);
        self.tamper.set(move |req| {
            if req.method != "GET" || req.path != path {
                return None;
            }
            let page = query_value(&req.query, "pageToken")
                .map_or(0, |t| t.trim_start_matches('p').parse::<usize>().unwrap());
            Some(json_response(&pages[page]))
        });
    }

    /// GETs of the snapshot's blocks seen at the proxy: their indexes, sorted (several are
    /// in flight at once, so they arrive in any order).
    fn block_gets(&self) -> Vec<u64> {
        let prefix = format!("/snapshots/{}/blocks/", self.snapshot);
        let mut gets: Vec<u64> = self
            .cloud
            .proxy
            .exchanges()
            .into_iter()
            .filter(|e| e.method == "GET")
            .filter_map(|e| e.path.strip_prefix(&prefix).map(|i| i.parse().unwrap()))
            .collect();
        gets.sort();
        gets
    }
}

/// One listing page as EBS would answer it.
fn page(blocks: &[(u64, String)], next: Option<&str>, block_size: u64) -> serde_json::Value {
    let mut v = serde_json::json!({
        "Blocks": blocks
            .iter()
            .map(|(i, t)| serde_json::json!({"BlockIndex": i, "BlockToken": t}))
            .collect::<Vec<_>>(),
        "VolumeSize": 1,
        "BlockSize": block_size,
    });
    if let Some(n) = next {
        v["NextToken"] = n.into();
    }
    v
}

fn json_response(v: &serde_json::Value) -> Action {
    Action::RespondWith(
        200,
        vec![("Content-Type".into(), "application/json".into())],
        serde_json::to_vec(v).unwrap(),
    )
}

fn query_value<'a>(query: &'a str, key: &str) -> Option<&'a str> {
    query
        .split('&')
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
}

/// A 24.3 MiB image, not a whole number of 512 KiB blocks: data at its start, an island across
/// the boundary of blocks 6 and 7, a block of zeros written as data (block 10: `to-ebs` sends no
/// all-zero block, so it is a hole in the snapshot), a single byte (block 40) and data at the
/// end of its last, partial block (48); holes everywhere else. Returns its bytes.
fn islands_image(path: &Path) -> Vec<u8> {
    let size = (24 << 20) + (300 << 10);
    let mut f = fs::File::create(path).unwrap();
    f.set_len(size).unwrap();
    let mut put = |at: u64, bytes: &[u8]| {
        f.seek(SeekFrom::Start(at)).unwrap();
        f.write_all(bytes).unwrap();
    };
    put(0, &noise(4096, 1));
    put((3 << 20) + 300_000, &noise(700 << 10, 2));
    put(10 << 20, &vec![0u8; BLOCK]);
    put((20 << 20) + 12345, &[0x42]);
    put(size - 1000, &noise(1000, 3));
    f.sync_all().unwrap();
    drop(f);
    fs::read(path).unwrap()
}

/// `to-ebs -i PATH --no-register`: the snapshot id. One block at a time, so that moto, which
/// lists blocks in the order they were written, lists them by index as AWS does.
fn to_ebs(cloud: &Cloud, path: &Path) -> String {
    let out = run_ok(&mut cloud.cmd(&[
        "to-ebs",
        "-i",
        path.to_str().unwrap(),
        "--no-register",
        "--concurrency",
        "1",
        "--region",
        "us-east-1",
    ]));
    let snapshot = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(snapshot.starts_with("snap-"), "{snapshot}");
    snapshot
}

/// Checks that the image file at `path` is `image` followed by zeros up to 1 GiB, reading it
/// in pieces.
fn assert_image_then_zeros(path: &Path, image: &[u8]) {
    let mut f = fs::File::open(path).unwrap();
    assert_eq!(f.metadata().unwrap().len(), GIB, "{}", path.display());
    let mut got = vec![0u8; image.len()];
    f.read_exact(&mut got).unwrap();
    assert!(got == image, "the image's bytes differ");
    let mut buf = vec![0u8; 4 << 20];
    let mut at = image.len() as u64;
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        assert!(
            buf[..n].iter().all(|&b| b == 0),
            "non-zero byte after the image, near {at}"
        );
        at += n as u64;
    }
    assert_eq!(at, GIB);
}

#[test]
fn a_snapshot_becomes_a_sparse_bundle_that_unbundles_to_the_image_and_zeros_to_its_gib() {
    let scene = Scene::new();
    // moto's listing, as the bundle will see it: the written blocks, block size 512 (AWS says
    // 524288; accepted as moto's known value, see read.rs).
    let r = ebs_get(
        &scene.cloud,
        &format!("/snapshots/{}/blocks", scene.snapshot),
    );
    let listing: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(listing["BlockSize"], 512);
    assert_eq!(
        scene.listing().iter().map(|b| b.0).collect::<Vec<_>>(),
        WRITTEN
    );

    let out = run_ok(&mut scene.bundle(&["-d", scene.out().to_str().unwrap(), "--json"]));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["command"], "bundle-image");
    assert_eq!(report["name"], scene.snapshot.as_str(), "{report}");
    assert_eq!(report["snapshot_id"], scene.snapshot.as_str());
    assert_eq!(report["snapshot_region"], "us-east-1");
    assert_eq!(report["snapshot_volume_size_gib"], 1);
    assert_eq!(report["snapshot_blocks"], WRITTEN.len());
    assert_eq!(report["image_size"], GIB);
    assert_eq!(report["image_data_bytes"], WRITTEN.len() * BLOCK);
    assert_eq!(report["sparse"], true);
    // Holes are not stored: about the 705 KiB of noise the blocks hold, for a 1 GiB image.
    let bundled = report["bundled_size"].as_u64().unwrap();
    assert!(bundled < (1 << 20), "{bundled} bytes bundled");
    let on_disk: u64 = fs::read_dir(scene.out())
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    assert!(on_disk < (1 << 20) + (64 << 10), "{on_disk} bytes on disk");

    // Each written block fetched exactly once; nothing else.
    assert_eq!(scene.block_gets(), WRITTEN);
    let lists: Vec<_> = scene
        .cloud
        .proxy
        .exchanges()
        .into_iter()
        .filter(|e| e.method == "GET" && e.path.ends_with("/blocks"))
        .collect();
    assert_eq!(lists.len(), 2, "listed once to map, once to read");
    for l in &lists {
        let max: u32 = query_value(&l.query, "maxResults")
            .unwrap()
            .parse()
            .unwrap();
        assert!((100..=10_000).contains(&max), "{}", l.query);
    }

    // The same again without --overwrite: refused before any block is fetched (the blocks
    // are read only once the bundler starts).
    scene.cloud.proxy.clear();
    let err = run_err(&mut scene.bundle(&["-d", scene.out().to_str().unwrap()]));
    assert!(err.contains("--overwrite"), "{err}");
    assert!(
        scene.block_gets().is_empty(),
        "blocks were read for nothing"
    );

    let manifest = scene.out().join(format!("{}.manifest.xml", scene.snapshot));
    let xml = fs::read_to_string(&manifest).unwrap();
    assert_eq!(element(&xml, "architecture"), "x86_64");
    assert_eq!(element(&xml, "size"), GIB.to_string());
    let unbundled = scene.dir.path().join("unbundled");
    fs::create_dir(&unbundled).unwrap();
    run_ok(
        amibundle(scene.cloud.home.path())
            .args(["unbundle", "-m"])
            .arg(&manifest)
            .arg("-k")
            .arg(scene.keys.user_key())
            .arg("-d")
            .arg(&unbundled),
    );
    assert_image_then_zeros(&unbundled.join(&scene.snapshot), &scene.image);

    // Standard tools (openssl, gzip, GNU tar) decode it too: a tar stream of a few MiB at most
    // (the holes are not in it) that GNU tar extracts to the same image.
    let work = tempfile::tempdir().unwrap();
    let decoded = decode_with_standard_tools(&manifest, &scene.keys.user_key(), work.path());
    assert!(
        decoded.tar_len < 4 << 20,
        "tar stream of {} bytes",
        decoded.tar_len
    );
    assert_image_then_zeros(&decoded.image, &scene.image);
}

#[test]
fn a_snapshot_streams_to_s3_with_upload_and_comes_back_whole() {
    let scene = Scene::new();
    let out =
        run_ok(&mut scene.bundle(&["--upload", "s3://from-ebs/back", "-p", "web-root", "--json"]));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        report["image_location"], "from-ebs/back/web-root.manifest.xml",
        "{report}"
    );
    assert_eq!(report["snapshot_id"], scene.snapshot.as_str());
    assert_eq!(report["snapshot_blocks"], WRITTEN.len());
    assert_eq!(report["sparse"], true);
    assert_eq!(scene.block_gets(), WRITTEN);

    let dest = scene.dir.path().join("down");
    fs::create_dir(&dest).unwrap();
    run_ok(&mut scene.cloud.cmd(&[
        "download",
        "-b",
        "from-ebs/back",
        "-m",
        "web-root.manifest.xml",
        "-d",
        dest.to_str().unwrap(),
        "--unbundle",
        "-k",
        scene.keys.user_key().to_str().unwrap(),
        "--region",
        "us-east-1",
    ]));
    assert_image_then_zeros(&dest.join("web-root"), &scene.image);
}

#[test]
fn a_read_failing_after_a_part_was_uploaded_leaves_nothing_in_s3() {
    // 24 MiB of noise: the first 10 MiB part is uploaded long before the last block is due.
    let scene = Scene::with_image(|path| {
        let data = noise(24 << 20, 5);
        fs::write(path, &data).unwrap();
        data
    });
    let last = format!("/snapshots/{}/blocks/47", scene.snapshot);
    let token = scene.listing().last().unwrap().1.clone();
    let real = ebs_get(&scene.cloud, &format!("{last}?blockToken={token}"));
    let checksum = real.header("x-amz-checksum").unwrap().to_string();
    let mut data = real.body.clone();
    data[0] ^= 1;
    // Answered once a part is in S3 (the bundler waits for this block, in order, while the
    // parts cut before it upload).
    let moto = scene.cloud.moto.endpoint.clone();
    scene.tamper.set(move |req| {
        (req.method == "GET" && req.path == last).then(|| {
            let started = std::time::Instant::now();
            while !crate::support::http::request(
                &moto,
                "GET",
                "/half-read?list-type=2&prefix=x/",
                &[("Authorization", crate::support::moto::FAKE_AUTHORIZATION)],
                crate::support::http::Body::None,
            )
            .unwrap()
            .text()
            .contains(".part.")
            {
                assert!(started.elapsed().as_secs() < 120, "no part reached S3");
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            Action::RespondWith(
                200,
                vec![
                    ("x-amz-Data-Length".into(), BLOCK.to_string()),
                    ("x-amz-Checksum".into(), checksum.clone()),
                    ("x-amz-Checksum-Algorithm".into(), "SHA256".into()),
                ],
                data.clone(),
            )
        })
    });
    let out = scene
        .bundle(&["--upload", "s3://half-read/x"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("block 47 of snapshot {}", scene.snapshot)),
        "{err}"
    );
    let parts_sent = scene
        .cloud
        .object_puts()
        .iter()
        .filter(|e| e.path.contains(".part."))
        .count();
    assert!(
        parts_sent >= 1,
        "no part was uploaded before the failure: {err}"
    );
    let deletes = scene
        .cloud
        .proxy
        .exchanges()
        .iter()
        .filter(|e| e.method == "DELETE" || e.query.contains("delete"))
        .count();
    assert!(deletes >= 1, "nothing was deleted");
    let r = scene
        .cloud
        .raw("GET", "/half-read?list-type=2&prefix=x/", &[], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(!r.text().contains("<Key>"), "left in S3: {}", r.text());
}

#[test]
fn every_page_of_the_listing_is_read_including_an_empty_one() {
    let scene = Scene::new();
    let blocks = scene.listing();
    // AWS's block size this time, and three pages: two blocks, none (AWS may answer an empty
    // page with a NextToken), the rest.
    scene.list_with(vec![
        page(&blocks[..2], Some("p1"), 524_288),
        page(&[], Some("p2"), 524_288),
        page(&blocks[2..], None, 524_288),
    ]);
    let out = run_ok(&mut scene.bundle(&["-d", scene.out().to_str().unwrap(), "--json"]));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["snapshot_blocks"], WRITTEN.len(), "{report}");
    assert_eq!(scene.block_gets(), WRITTEN);
    let tokens: Vec<String> = scene
        .cloud
        .proxy
        .exchanges()
        .into_iter()
        .filter(|e| e.method == "GET" && e.path.ends_with("/blocks"))
        .map(|e| {
            query_value(&e.query, "pageToken")
                .unwrap_or("-")
                .to_string()
        })
        .collect();
    assert_eq!(tokens, ["-", "p1", "p2", "-", "p1", "p2"]);
    let unbundled = scene.dir.path().join("unbundled");
    fs::create_dir(&unbundled).unwrap();
    run_ok(
        amibundle(scene.cloud.home.path())
            .args(["unbundle", "-m"])
            .arg(scene.out().join(format!("{}.manifest.xml", scene.snapshot)))
            .arg("-k")
            .arg(scene.keys.user_key())
            .arg("-d")
            .arg(&unbundled),
    );
    assert_image_then_zeros(&unbundled.join(&scene.snapshot), &scene.image);
}

#[test]
fn a_block_whose_data_fails_its_checksum_fails_naming_the_snapshot_and_block() {
    let scene = Scene::new();
    // Block 7 as EBS serves it, one bit flipped, with its true checksum.
    let path = format!("/snapshots/{}/blocks/7", scene.snapshot);
    let token = scene.listing()[2].1.clone();
    let real = ebs_get(&scene.cloud, &format!("{path}?blockToken={token}"));
    assert_eq!(real.status, 200);
    let checksum = real.header("x-amz-checksum").unwrap().to_string();
    let mut data = real.body.clone();
    data[1000] ^= 0x10;
    scene.tamper.set(move |req| {
        (req.method == "GET" && req.path == path).then(|| {
            Action::RespondWith(
                200,
                vec![
                    ("x-amz-Data-Length".into(), BLOCK.to_string()),
                    ("x-amz-Checksum".into(), checksum.clone()),
                    ("x-amz-Checksum-Algorithm".into(), "SHA256".into()),
                    ("Content-Type".into(), "application/octet-stream".into()),
                ],
                data.clone(),
            )
        })
    });
    let err = scene.bundle_fails(1);
    assert!(
        err.contains(&format!("block 7 of snapshot {}", scene.snapshot)) && err.contains("SHA-256"),
        "{err}"
    );
}

#[test]
fn a_block_of_the_wrong_length_fails_even_with_a_matching_checksum() {
    let scene = Scene::new();
    let path = format!("/snapshots/{}/blocks/40", scene.snapshot);
    let short = vec![0x42u8; 4096];
    let checksum = base64_sha256(&short);
    scene.tamper.set(move |req| {
        (req.method == "GET" && req.path == path).then(|| {
            Action::RespondWith(
                200,
                vec![
                    ("x-amz-Data-Length".into(), "4096".into()),
                    ("x-amz-Checksum".into(), checksum.clone()),
                    ("x-amz-Checksum-Algorithm".into(), "SHA256".into()),
                ],
                short.clone(),
            )
        })
    });
    let err = scene.bundle_fails(1);
    assert!(
        err.contains(&format!("block 40 of snapshot {}", scene.snapshot))
            && err.contains("EBS gives its length as 4096 bytes"),
        "{err}"
    );

    // The same short data announced as a whole block: its length is counted, not believed.
    let path = format!("/snapshots/{}/blocks/40", scene.snapshot);
    let short = vec![0x42u8; 4096];
    let checksum = base64_sha256(&short);
    scene.tamper.set(move |req| {
        (req.method == "GET" && req.path == path).then(|| {
            Action::RespondWith(
                200,
                vec![
                    ("x-amz-Data-Length".into(), BLOCK.to_string()),
                    ("x-amz-Checksum".into(), checksum.clone()),
                    ("x-amz-Checksum-Algorithm".into(), "SHA256".into()),
                ],
                short.clone(),
            )
        })
    });
    let err = scene.bundle_fails(1);
    assert!(
        err.contains(&format!("block 40 of snapshot {}", scene.snapshot))
            && err.contains("its data is 4096 bytes long"),
        "{err}"
    );
}

fn base64_sha256(data: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(openssl::sha::sha256(data))
}

#[test]
fn hostile_listings_fail_before_any_block_is_read() {
    let scene = Scene::new();
    let blocks = scene.listing();
    let bs = 524_288;
    let mut beyond = blocks.clone();
    // A 1 GiB volume has blocks 0 to 2047.
    beyond.push((2048, "forged".into()));
    let mut duplicate = blocks.clone();
    duplicate.insert(2, blocks[1].clone());
    let mut descending = blocks.clone();
    descending.swap(3, 4);
    let cases: Vec<(&str, Vec<serde_json::Value>, &str)> = vec![
        (
            "beyond the volume",
            vec![page(&beyond, None, bs)],
            "block 2048 lies beyond the end of the 1 GiB volume",
        ),
        (
            "a duplicate",
            vec![page(&duplicate, None, bs)],
            "block 6 is listed twice",
        ),
        (
            "a duplicate across pages",
            vec![
                page(&blocks[..2], Some("p1"), bs),
                page(&blocks[1..], None, bs),
            ],
            "block 6 is listed twice",
        ),
        (
            "descending",
            vec![page(&descending, None, bs)],
            "block 40 is listed after block 48",
        ),
        ("empty", vec![page(&[], None, bs)], "holds no data"),
        (
            "another block size",
            vec![page(&blocks, None, 4096)],
            "block size Some(4096)",
        ),
        (
            "a NextToken that repeats",
            vec![
                page(&blocks[..1], Some("p1"), bs),
                page(&blocks[1..2], Some("p1"), bs),
            ],
            "the same NextToken came back again",
        ),
    ];
    for (what, pages, expected) in cases {
        scene.cloud.proxy.clear();
        scene.list_with(pages);
        let err = scene.bundle_fails(1);
        assert!(err.contains(expected), "{what}: {err}");
        assert!(scene.block_gets().is_empty(), "{what}: a block was read");
    }
}

#[test]
fn a_listing_that_changes_between_the_map_and_the_read_fails() {
    let scene = Scene::new();
    let blocks = scene.listing();
    let path = format!("/snapshots/{}/blocks", scene.snapshot);
    let lists = AtomicU32::new(0);
    // The first listing (the map) is moto's; the second (the read) lacks block 40.
    let second: Vec<_> = blocks.iter().filter(|b| b.0 != 40).cloned().collect();
    let second = page(&second, None, 512);
    scene.tamper.set(move |req| {
        if req.method != "GET" || req.path != path {
            return None;
        }
        (lists.fetch_add(1, Ordering::SeqCst) == 1).then(|| json_response(&second))
    });
    let err = scene.bundle_fails(1);
    assert!(
        err.contains("lists block 48 where the first listing had block 40"),
        "{err}"
    );
}

#[test]
fn a_pending_archived_or_missing_snapshot_is_refused_before_its_blocks_are_listed() {
    let scene = Scene::new();
    // moto reports every snapshot completed, even one whose blocks are still being written;
    // AWS says pending until CompleteSnapshot's work is done, and refuses to read it.
    let snapshot = scene.snapshot.clone();
    scene.tamper.set(move |req| {
        let ec2 = req
            .header("authorization")
            .is_some_and(|a| a.contains("/ec2/"));
        (req.method == "POST" && ec2).then(|| {
            Action::Respond(
                200,
                format!(
                    "<DescribeSnapshotsResponse xmlns=\"http://ec2.amazonaws.com/doc/2016-11-15/\">\
                     <requestId>r-1</requestId><snapshotSet><item>\
                     <snapshotId>{snapshot}</snapshotId><volumeId>vol-1</volumeId>\
                     <status>pending</status><startTime>2026-01-01T00:00:00.000Z</startTime>\
                     <progress>40%</progress><ownerId>123456789012</ownerId>\
                     <volumeSize>1</volumeSize><encrypted>false</encrypted>\
                     </item></snapshotSet></DescribeSnapshotsResponse>"
                )
                .into_bytes(),
            )
        })
    });
    let err = scene.bundle_fails(1);
    assert!(
        err.contains(&format!(
            "snapshot {} is pending: wait until it is completed",
            scene.snapshot
        )),
        "{err}"
    );
    let listed = scene
        .cloud
        .proxy
        .exchanges()
        .iter()
        .any(|e| e.path.contains("/blocks"));
    assert!(!listed, "the blocks were listed");

    // Archived (moto keeps the tier): EBS cannot read it until it is restored.
    *scene.tamper.0.lock().unwrap() = None;
    let form = format!(
        "Action=ModifySnapshotTier&Version=2016-11-15&SnapshotId={}&StorageTier=archive",
        scene.snapshot
    );
    let r = crate::support::http::request(
        &scene.cloud.moto.endpoint,
        "POST",
        "/",
        &[
            (
                "Authorization",
                "AWS4-HMAC-SHA256 Credential=testing/20260101/us-east-1/ec2/aws4_request, \
                 SignedHeaders=host, Signature=00",
            ),
            ("Content-Type", "application/x-www-form-urlencoded"),
        ],
        crate::support::http::Body::Bytes(form.as_bytes()),
    )
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let err = scene.bundle_fails(1);
    assert!(
        err.contains("is archived") && err.contains("restore-snapshot-tier"),
        "{err}"
    );

    // Not a snapshot id: refused before any request.
    scene.cloud.proxy.clear();
    let err = run_err(
        scene
            .cloud
            .cmd(&[
                "bundle-image",
                "--snapshot",
                "vol-0123456789abcdef0",
                "-u",
                "123456789012",
                "-r",
                "x86_64",
                "-d",
                scene.out().to_str().unwrap(),
                "--region",
                "us-east-1",
            ])
            .args(scene.keys.bundle_args()),
    );
    assert!(
        err.contains("\"vol-0123456789abcdef0\" is not a snapshot id"),
        "{err}"
    );
    assert!(scene.cloud.proxy.exchanges().is_empty());

    // No such snapshot.
    let out = scene
        .cloud
        .cmd(&[
            "bundle-image",
            "--snapshot",
            "snap-0123456789abcdef0",
            "-u",
            "123456789012",
            "-r",
            "x86_64",
            "-d",
            scene.out().to_str().unwrap(),
            "--region",
            "us-east-1",
        ])
        .args(scene.keys.bundle_args())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("snapshot snap-0123456789abcdef0 does not exist in us-east-1"),
        "{err}"
    );
}

#[test]
fn refused_permissions_exit_3_naming_them() {
    let scene = Scene::new();
    let denied = || {
        Action::Respond(
            403,
            br#"{"__type":"AccessDeniedException","Message":"not allowed","Reason":"UNAUTHORIZED_ACCOUNT"}"#
                .to_vec(),
        )
    };
    scene.tamper.set(|req| {
        let ec2 = req
            .header("authorization")
            .is_some_and(|a| a.contains("/ec2/"));
        (req.method == "POST" && ec2).then(|| {
            Action::Respond(
                403,
                b"<Response><Errors><Error><Code>UnauthorizedOperation</Code>\
                  <Message>not allowed</Message></Error></Errors><RequestID>r</RequestID>\
                  </Response>"
                    .to_vec(),
            )
        })
    });
    let err = scene.bundle_fails(3);
    assert!(err.contains("ec2:DescribeSnapshots"), "{err}");

    let list = format!("/snapshots/{}/blocks", scene.snapshot);
    scene
        .tamper
        .set(move |req| (req.method == "GET" && req.path == list).then(denied));
    let err = scene.bundle_fails(3);
    assert!(err.contains("ebs:ListSnapshotBlocks"), "{err}");

    // The second block read is refused: the bundle stops there.
    let prefix = format!("/snapshots/{}/blocks/", scene.snapshot);
    let gets = AtomicU32::new(0);
    scene.tamper.set(move |req| {
        (req.method == "GET"
            && req.path.starts_with(&prefix)
            && gets.fetch_add(1, Ordering::SeqCst) == 1)
            .then(denied)
    });
    let err = scene.bundle_fails(3);
    assert!(
        err.contains("ebs:GetSnapshotBlock") && err.contains("of snapshot"),
        "{err}"
    );
}

#[test]
fn a_block_body_cut_midway_is_fetched_again() {
    let scene = Scene::new();
    let path = format!("/snapshots/{}/blocks/6", scene.snapshot);
    let cuts = AtomicU32::new(0);
    scene.tamper.set(move |req| {
        (req.method == "GET" && req.path == path && cuts.fetch_add(1, Ordering::SeqCst) == 0)
            .then_some(Action::TruncateResponse)
    });
    let out = run_ok(&mut scene.bundle(&["-d", scene.out().to_str().unwrap(), "--json"]));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["snapshot_blocks"], WRITTEN.len());
    assert_eq!(scene.block_gets(), [0, 6, 6, 7, 40, 48]);
}

/// Runs `cmd` to its end; returns its exit status, its stderr and its peak RSS in KiB: the
/// kernel's high-water mark (VmHWM), read from /proc every few milliseconds until the process
/// exits (the mark only grows, so the last reading misses at most its last milliseconds).
fn run_with_peak_rss(cmd: &mut std::process::Command, log: &Path) -> (bool, String, u64) {
    let mut child = cmd
        .stdout(std::process::Stdio::null())
        .stderr(fs::File::create(log).unwrap())
        .spawn()
        .unwrap();
    let status = format!("/proc/{}/status", child.id());
    let mut peak = 0u64;
    let exit = loop {
        if let Ok(text) = fs::read_to_string(&status) {
            if let Some(kib) = text
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            {
                peak = peak.max(kib);
            }
        }
        if let Some(exit) = child.try_wait().unwrap() {
            break exit;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    };
    (exit.success(), fs::read_to_string(log).unwrap(), peak)
}

#[test]
fn reading_a_snapshot_larger_than_the_memory_bound_keeps_memory_bounded() {
    // 192 MiB of data in a 256 MiB image: more than the 128 MiB bound, so a read that held the
    // snapshot, or ran ahead of the bundler, would show.
    let cloud = Cloud::start();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.img");
    let mut f = fs::File::create(&path).unwrap();
    f.set_len(256 << 20).unwrap();
    for (i, at) in [0u64, 64 << 20, 160 << 20].into_iter().enumerate() {
        f.seek(SeekFrom::Start(at)).unwrap();
        f.write_all(&noise(64 << 20, 10 + i as u64)).unwrap();
    }
    drop(f);
    let snapshot = to_ebs(&cloud, &path);
    let out = dir.path().join("out");
    let keys = Keys::new();
    let mut cmd = cloud.cmd(&[
        "bundle-image",
        "--snapshot",
        &snapshot,
        "-u",
        "123456789012",
        "-r",
        "x86_64",
        "-d",
        out.to_str().unwrap(),
        "--region",
        "us-east-1",
        "--json",
    ]);
    cmd.args(keys.bundle_args());
    let (ok, err, peak_kib) = run_with_peak_rss(&mut cmd, &dir.path().join("log"));
    assert!(ok, "{err}");
    assert_eq!(
        cloud
            .proxy
            .exchanges()
            .iter()
            .filter(|e| e.method == "GET"
                && e.path
                    .starts_with(&format!("/snapshots/{snapshot}/blocks/")))
            .count(),
        384
    );
    eprintln!("bundle-image --snapshot of 192 MiB of data: peak RSS {peak_kib} KiB");
    assert!(peak_kib > 0, "no reading of the peak RSS");
    assert!(peak_kib < 96 << 10, "peak RSS {peak_kib} KiB");
}

#[test]
fn snapshot_and_image_exclude_each_other_and_one_is_needed() {
    let home = tempfile::tempdir().unwrap();
    for args in [
        &[
            "bundle-image",
            "--snapshot",
            "snap-01234567",
            "-i",
            "disk.img",
        ][..],
        &[
            "bundle-image",
            "--snapshot",
            "snap-01234567",
            "--size",
            "1024",
        ],
        &["bundle-image", "-u", "123456789012"],
    ] {
        let out = amibundle(home.path()).args(args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains("--snapshot"), "{args:?}: {err}");
    }
}
