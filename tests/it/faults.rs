//! Fault injection: a 20-part bundle goes up to and comes down from S3 (moto behind the
//! recording proxy) while the proxy answers a seeded share of the object PUTs and GETs with 500,
//! 503 SlowDown, a connection reset before the body is read, or a response cut off halfway.
//! Transfers complete and the result is byte for byte the bundle; a part that can never be
//! stored fails the upload with a message naming it, and no manifest reaches S3. Stalls far past
//! the attempt timeout (before the head, or halfway through a GET body) are abandoned and retried.
//!
//! Bucket-level calls (the preflight) are never faulted, so the runs differ only in the object
//! transfers. Faults are chosen by hashing the seed with the request's method, path and how many
//! times that same request was seen, so which attempt fails does not depend on how the
//! concurrent transfers interleave. The SDK's retry backoff is shortened through the test-only
//! `AMIBUNDLE_RETRY_BASE_MS` (amibundle::cloud::config::RETRY_BASE_ENV).

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::cloud::Cloud;
use crate::support::proxy::{Action, FaultPlan, RequestHead};
use crate::support::*;

/// The first retry backoff the tests give amibundle, in milliseconds.
const RETRY_BASE_MS: &str = "10";

const SLOW_DOWN: &str = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message><RequestId>FAULT</RequestId></Error>";
const INTERNAL: &str = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>InternalError</Code><Message>We encountered an internal error. Please try again.</Message><RequestId>FAULT</RequestId></Error>";

/// SplitMix64: a small, well-mixed PRNG step (Steele, Lea and Flood 2014).
pub(crate) fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// FNV-1a of a string, to fold a request's identity into the seed.
fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xCBF2_9CE4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01B3)
    })
}

/// Object PUTs and GETs: a key after the bucket in the path.
fn is_object_transfer(req: &RequestHead) -> bool {
    (req.method == "PUT" || req.method == "GET") && req.path.trim_matches('/').contains('/')
}

/// Consecutive faults one request may get: one fewer than amibundle's attempts
/// (amibundle::cloud::config::MAX_ATTEMPTS), so the faults are transient, as the 10% and 30%
/// tests intend; a request that always fails is the permanent-fault test's subject.
const MAX_CONSECUTIVE_FAULTS: u64 = 5;

/// Faults `rate_percent` of the object PUTs and GETs, chosen by the seed; off until enabled.
struct RandomFaults {
    seed: u64,
    rate_percent: u64,
    enabled: Arc<AtomicBool>,
    /// Per method + path: times seen (so a retry draws a fresh number) and the current run of
    /// faults.
    seen: Mutex<HashMap<String, (u64, u64)>>,
}

impl FaultPlan for RandomFaults {
    fn decide(&self, req: &RequestHead) -> Action {
        if !self.enabled.load(Ordering::SeqCst) || !is_object_transfer(req) {
            return Action::Forward;
        }
        let id = format!("{} {}", req.method, req.path);
        let mut seen = self.seen.lock().unwrap();
        let (n, run) = seen.entry(id.clone()).or_insert((0, 0));
        *n += 1;
        let r = splitmix(self.seed ^ fnv(&id) ^ splitmix(*n));
        if r % 100 >= self.rate_percent || *run == MAX_CONSECUTIVE_FAULTS {
            *run = 0;
            return Action::Forward;
        }
        *run += 1;
        match (r >> 32) % 4 {
            0 => Action::Respond(500, INTERNAL.into()),
            1 => Action::Respond(503, SLOW_DOWN.into()),
            2 => Action::ResetConnection,
            _ => Action::TruncateResponse,
        }
    }
}

/// A cloud whose proxy faults `rate_percent` of object transfers once `enabled` is set.
pub(crate) fn faulty_cloud(seed: u64, rate_percent: u64) -> (Cloud, Arc<AtomicBool>) {
    let enabled = Arc::new(AtomicBool::new(false));
    let plan = RandomFaults {
        seed,
        rate_percent,
        enabled: enabled.clone(),
        seen: Mutex::new(HashMap::new()),
    };
    (Cloud::start_with(Box::new(plan)), enabled)
}

pub(crate) fn cmd(cloud: &Cloud, args: &[&str]) -> Command {
    let mut c = cloud.cmd(args);
    c.env("AMIBUNDLE_RETRY_BASE_MS", RETRY_BASE_MS);
    c
}

/// Faults the proxy injected so far.
pub(crate) fn faults_injected(cloud: &Cloud) -> usize {
    cloud
        .proxy
        .exchanges()
        .iter()
        .filter(|e| e.fault.is_some())
        .count()
}

/// A bundle of 20 parts made once per test run (bundling 200 MiB is the slow step), with the
/// SHA-1 of its image.
struct BigBundle {
    keys: Keys,
    dir: PathBuf,
    manifest: PathBuf,
    image_sha1: String,
    parts: Vec<String>,
}

/// Incompressible image bytes: one pseudo-random MiB, varied per MiB (deflate's 32 KiB window
/// cannot see the repetition).
pub(crate) fn write_image(path: &Path, mib: u64) {
    let mut f = fs::File::create(path).unwrap();
    let mut block = vec![0u8; 1 << 20];
    let mut x: u64 = 0x2545_F491_4F6C_DD1D;
    for chunk in block.chunks_mut(8) {
        x = splitmix(x);
        chunk.copy_from_slice(&x.to_le_bytes());
    }
    for i in 0..mib {
        block[..8].copy_from_slice(&splitmix(i).to_le_bytes());
        f.write_all(&block).unwrap();
    }
}

fn big_bundle() -> &'static BigBundle {
    static BUNDLE: OnceLock<BigBundle> = OnceLock::new();
    BUNDLE.get_or_init(|| {
        // Under the target directory, replaced on each run, so repeated runs do not pile up
        // 200 MiB copies in /tmp.
        let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join("faults-bundle");
        let _ = fs::remove_dir_all(&root);
        let dir = root.join("bundle");
        fs::create_dir_all(&dir).unwrap();
        let image = root.join("disk.img");
        write_image(&image, 195);
        let image_sha1 = sha1sum(&image);
        let keys = Keys::new();
        let home = root.join("home");
        fs::create_dir_all(&home).unwrap();
        run_ok(
            amibundle(&home)
                .args(["bundle-image", "-i"])
                .arg(&image)
                .args(["-u", "123456789012", "--compression-level", "1", "-d"])
                .arg(&dir)
                .args(keys.bundle_args()),
        );
        fs::remove_file(&image).unwrap();
        let manifest = dir.join("disk.img.manifest.xml");
        let parts = part_filenames(&fs::read_to_string(&manifest).unwrap());
        assert_eq!(parts.len(), 20, "a 20-part bundle: {parts:?}");
        BigBundle {
            keys,
            dir,
            manifest,
            image_sha1,
            parts,
        }
    })
}

/// Uploads the big bundle to `bucket/prefix` and checks every object in moto against the local
/// files, then `verify s3://` with the user key; returns the manifest's S3 URL.
fn upload_and_check(cloud: &Cloud, bundle: &BigBundle, bucket: &str, extra: &[&str]) -> String {
    let m = bundle.manifest.to_str().unwrap();
    let mut args = vec!["upload", "-m", m, "--region", "us-east-1", "-b", bucket];
    args.extend(extra);
    run_ok(&mut cmd(cloud, &args));
    let (b, prefix) = bucket.split_once('/').unwrap();
    for name in bundle
        .parts
        .iter()
        .map(String::as_str)
        .chain(["disk.img.manifest.xml"])
    {
        let stored = cloud
            .object(b, &format!("{prefix}/{name}"))
            .unwrap_or_else(|| panic!("{name} is in S3"));
        assert!(
            stored == fs::read(bundle.dir.join(name)).unwrap(),
            "{name} in S3 is byte for byte the local file"
        );
    }
    format!("s3://{bucket}/disk.img.manifest.xml")
}

fn verify_s3(cloud: &Cloud, bundle: &BigBundle, url: &str) {
    let (k, c) = (bundle.keys.user_key(), bundle.keys.user_cert());
    let out = run_ok(&mut cmd(
        cloud,
        &[
            "verify",
            "--json",
            "-m",
            url,
            "-k",
            k.to_str().unwrap(),
            "-c",
            c.to_str().unwrap(),
        ],
    ));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ok"], true, "{v}");
}

#[test]
fn upload_with_10_percent_faults_completes_and_the_bundle_verifies_byte_for_byte() {
    let bundle = big_bundle();
    let (cloud, enabled) = faulty_cloud(0x10, 10);
    enabled.store(true, Ordering::SeqCst);
    let url = upload_and_check(&cloud, bundle, "faults10/img", &[]);
    let injected = faults_injected(&cloud);
    assert!(injected > 0, "faults were injected during the upload");
    verify_s3(&cloud, bundle, &url);
}

#[test]
fn upload_and_downloads_with_30_percent_faults_complete_and_match() {
    let bundle = big_bundle();
    let (cloud, enabled) = faulty_cloud(0x30, 30);
    enabled.store(true, Ordering::SeqCst);
    // (`verify s3://` is the 10% test's; the streamed download below decodes the same way.)
    upload_and_check(&cloud, bundle, "faults30/img", &[]);
    let upload_faults = faults_injected(&cloud);
    assert!(upload_faults > 0, "faults were injected during the upload");
    cloud.proxy.clear();

    // Plain download: every file byte for byte.
    let dest = tempfile::tempdir().unwrap();
    let d = dest.path().to_str().unwrap();
    let dl = [
        "download",
        "-b",
        "faults30/img",
        "-m",
        "disk.img.manifest.xml",
    ];
    let mut args = dl.to_vec();
    args.extend(["-d", d]);
    run_ok(&mut cmd(&cloud, &args));
    assert!(faults_injected(&cloud) > 0, "faults during the download");
    for name in bundle
        .parts
        .iter()
        .map(String::as_str)
        .chain(["disk.img.manifest.xml"])
    {
        assert!(
            fs::read(dest.path().join(name)).unwrap() == fs::read(bundle.dir.join(name)).unwrap(),
            "downloaded {name} is byte for byte the bundle's"
        );
    }
    cloud.proxy.clear();

    // Streamed download into the image.
    let out_dir = tempfile::tempdir().unwrap();
    let o = out_dir.path().to_str().unwrap();
    let (k, c) = (bundle.keys.user_key(), bundle.keys.user_cert());
    let mut args = dl.to_vec();
    args.extend([
        "-d",
        o,
        "--unbundle",
        "-k",
        k.to_str().unwrap(),
        "-c",
        c.to_str().unwrap(),
    ]);
    run_ok(&mut cmd(&cloud, &args));
    assert!(
        faults_injected(&cloud) > 0,
        "faults during the streamed download"
    );
    assert_eq!(
        sha1sum(&out_dir.path().join("disk.img")),
        bundle.image_sha1,
        "the unbundled image is the original"
    );
}

#[test]
fn a_part_that_always_fails_fails_the_upload_naming_it_and_no_manifest_is_stored() {
    let plan = |req: &RequestHead| {
        if req.method == "PUT" && req.path.ends_with("/random.img.part.1") {
            Action::Respond(503, SLOW_DOWN.into())
        } else {
            Action::Forward
        }
    };
    let cloud = Cloud::start_with(Box::new(plan));
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&vector_dir("v2-three-parts"), dir.path());
    let manifest = dir.path().join("random.img.manifest.xml");
    let m = manifest.to_str().unwrap();
    let out = cmd(
        &cloud,
        &["upload", "-m", m, "--region", "us-east-1", "-b", "perm/x"],
    )
    .output()
    .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the upload fails: {err}");
    assert!(
        err.contains("s3://perm/x/random.img.part.1") && err.contains("SlowDown"),
        "the message names the part and the cause: {err}"
    );
    let attempts = cloud
        .proxy
        .exchanges()
        .iter()
        .filter(|e| e.method == "PUT" && e.path.ends_with("/random.img.part.1"))
        .count();
    assert_eq!(attempts, 6, "the SDK tried MAX_ATTEMPTS times");
    assert_eq!(
        cloud.object("perm", "x/random.img.manifest.xml"),
        None,
        "no manifest in S3"
    );
    assert!(
        cloud
            .object_puts()
            .iter()
            .all(|p| !p.path.ends_with(".manifest.xml")),
        "the manifest was never sent"
    );
}

/// The attempt timeout the stall test gives amibundle (`--attempt-timeout`), in seconds.
const ATTEMPT_TIMEOUT: &str = "3";
/// How long a stalled request stalls: far past the attempt timeout, and longer than any of the
/// test's commands may take, so a command that waited a stall out instead of abandoning it
/// fails the test by its duration.
const STALL: Duration = Duration::from_secs(90);

/// Stalls `rate_percent` of the part PUTs and GETs for [`STALL`], chosen by the seed like
/// [`RandomFaults`]: a PUT stalls before it is forwarded (the SDK's attempt timeout must
/// abandon it); a GET stalls either before its response head (likewise) or halfway through its
/// body, after the head (amibundle's own body deadline must abandon it). At most two stalls in a
/// row per request.
struct RandomStalls {
    seed: u64,
    rate_percent: u64,
    seen: Mutex<HashMap<String, (u64, u64)>>,
}

impl FaultPlan for RandomStalls {
    fn decide(&self, req: &RequestHead) -> Action {
        if !is_object_transfer(req) || !req.path.contains(".part.") {
            return Action::Forward;
        }
        let id = format!("{} {}", req.method, req.path);
        let mut seen = self.seen.lock().unwrap();
        let (n, run) = seen.entry(id.clone()).or_insert((0, 0));
        *n += 1;
        let r = splitmix(self.seed ^ fnv(&id) ^ splitmix(*n));
        if r % 100 >= self.rate_percent || *run == 2 {
            *run = 0;
            return Action::Forward;
        }
        *run += 1;
        if req.method == "GET" && (r >> 32) % 2 == 0 {
            Action::StallBody(STALL)
        } else {
            Action::Stall(STALL)
        }
    }
}

/// The stalls since the last clear, by kind (`stall` before the head, `stall body` midway),
/// each checked to have been followed by a successful retry of the same request.
fn stalls_retried(cloud: &Cloud) -> (usize, usize) {
    let ex = cloud.proxy.exchanges();
    let (mut head, mut body) = (0, 0);
    for e in ex.iter().filter(|e| e.fault.is_some()) {
        let fault = e.fault.as_deref().unwrap();
        assert!(fault.starts_with("stall"), "only stalls: {fault}");
        if fault.starts_with("stall body") {
            body += 1;
        } else {
            head += 1;
        }
        assert!(
            ex.iter().any(|later| later.seq > e.seq
                && later.method == e.method
                && later.path == e.path
                && later.fault.is_none()
                && later.status == 200),
            "the stalled {} {} was retried and succeeded",
            e.method,
            e.path
        );
    }
    (head, body)
}

/// Runs `c`, asserting it succeeds in less than a stall.
fn run_within_a_stall(c: &mut Command) {
    let started = Instant::now();
    run_ok(c);
    let took = started.elapsed();
    assert!(
        took < STALL,
        "finished in {took:?}, less than one stall: stalled attempts were abandoned, not waited out"
    );
}

#[test]
fn uploads_and_downloads_with_requests_stalled_past_the_attempt_timeout_complete_and_match() {
    let bundle = big_bundle();
    let plan = RandomStalls {
        seed: 0x57A1,
        rate_percent: 15,
        seen: Mutex::new(HashMap::new()),
    };
    let cloud = Cloud::start_with(Box::new(plan));
    let timeout = ["--attempt-timeout", ATTEMPT_TIMEOUT];

    let started = Instant::now();
    upload_and_check(&cloud, bundle, "stalls/img", &timeout);
    assert!(started.elapsed() < STALL, "the upload waited no stall out");
    let (head, _) = stalls_retried(&cloud);
    assert!(head > 0, "part PUTs stalled during the upload");
    cloud.proxy.clear();

    let dest = tempfile::tempdir().unwrap();
    let d = dest.path().to_str().unwrap();
    let mut dl = vec![
        "download",
        "-b",
        "stalls/img",
        "-m",
        "disk.img.manifest.xml",
    ];
    dl.extend(timeout);
    let mut args = dl.clone();
    args.extend(["-d", d]);
    run_within_a_stall(&mut cmd(&cloud, &args));
    for name in bundle
        .parts
        .iter()
        .map(String::as_str)
        .chain(["disk.img.manifest.xml"])
    {
        assert!(
            fs::read(dest.path().join(name)).unwrap() == fs::read(bundle.dir.join(name)).unwrap(),
            "downloaded {name} is byte for byte the bundle's"
        );
    }
    let (head1, body1) = stalls_retried(&cloud);
    cloud.proxy.clear();

    let out_dir = tempfile::tempdir().unwrap();
    let o = out_dir.path().to_str().unwrap();
    let (k, c) = (bundle.keys.user_key(), bundle.keys.user_cert());
    let mut args = dl.clone();
    args.extend([
        "-d",
        o,
        "--unbundle",
        "-k",
        k.to_str().unwrap(),
        "-c",
        c.to_str().unwrap(),
    ]);
    run_within_a_stall(&mut cmd(&cloud, &args));
    assert_eq!(
        sha1sum(&out_dir.path().join("disk.img")),
        bundle.image_sha1,
        "the unbundled image is the original"
    );
    let (head2, body2) = stalls_retried(&cloud);
    assert!(
        head1 > 0 && body1 > 0 && head2 + body2 > 0,
        "GETs stalled before the head and midway through the body in the download ({head1}, {body1}) and some in the streamed download ({head2}, {body2})"
    );
}
