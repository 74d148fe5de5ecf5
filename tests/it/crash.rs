//! Crash and resume (issue 6): `upload`, `download`, `bundle-image` and `save` are killed with
//! SIGKILL at seeded moments spread over the duration of an uninterrupted run (measured first);
//! the same command run again finishes, transfers only what the killed run did not leave
//! correctly in place (counted at the recording proxy against a listing taken before the rerun),
//! and the result verifies. A killed bundling never leaves a manifest whose parts are not all
//! there. SIGINT and SIGTERM during `bundle-vol` and `save`, mid-copy and mid-upload, exit 130
//! and 143 and leave no loop device, mount or temporary file.
//!
//! Knobs: `AMIBUNDLE_CRASH_SEED` (decimal or 0x-hex) moves the kill points;
//! `AMIBUNDLE_CRASH_POINTS` (upload, download, bundling) and `AMIBUNDLE_CRASH_SAVE_POINTS` (save)
//! set how many there are. `scripts/crash-resume.sh` runs these tests with at least 20 each.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{BufRead, BufReader};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use md5::{Digest, Md5};

use crate::cloud::Cloud;
use crate::faults::{splitmix, write_image};
use crate::support::*;

/// The seed when `AMIBUNDLE_CRASH_SEED` is not set.
const DEFAULT_SEED: u64 = 0x0C0F_FEE0_2026_0006;
/// Kill points per command in the suite, where the whole of this file gets about three minutes
/// of a two-core debug build (`scripts/crash-resume.sh` runs 20 or more of each).
const UPLOAD_POINTS: usize = 8;
const DOWNLOAD_POINTS: usize = 10;
const BUNDLE_POINTS: usize = 12;
/// Kill points of `save` in the suite (each costs two snapshots of a volume).
const SAVE_POINTS: usize = 3;
/// The image the cloud and bundling tests use: 64 MiB that do not compress, 7 parts.
const IMAGE_MIB: u64 = 64;
/// How long a signalled run may take to exit.
const EXIT_WITHIN: Duration = Duration::from_secs(10);

fn seed() -> u64 {
    let Ok(text) = std::env::var("AMIBUNDLE_CRASH_SEED") else {
        return DEFAULT_SEED;
    };
    let t = text.trim();
    match t.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => t.parse(),
    }
    .unwrap_or_else(|e| panic!("AMIBUNDLE_CRASH_SEED={text}: {e}"))
}

fn points(var: &str, default: usize) -> usize {
    match std::env::var(var) {
        Ok(n) => n
            .trim()
            .parse()
            .unwrap_or_else(|e| panic!("{var}={n}: {e}")),
        Err(_) => default,
    }
}

/// The share of an uninterrupted run's time the kill points are spread over: a rerun on a
/// quieter machine may be quicker than the measured one, and a kill after the end tests little.
const SPREAD: f64 = 0.8;

/// `n` kill delays spread over [`SPREAD`] of `span`: one in each of `n` equal slots, at a place
/// in it drawn from the seed and `salt` (one salt per test, so the tests do not share points).
fn kill_delays(salt: u64, n: usize, span: Duration) -> Vec<Duration> {
    let span = span.mul_f64(SPREAD);
    (0..n)
        .map(|i| {
            let r = splitmix(seed() ^ splitmix(salt) ^ splitmix(i as u64 + 1));
            let u = (r >> 11) as f64 / (1u64 << 53) as f64;
            span.mul_f64((i as f64 + u) / n as f64)
        })
        .collect()
}

/// Starts `cmd`, sends it SIGKILL `after` its start and reaps it. True if the signal ended it;
/// false if it had finished by itself first (successfully: anything else fails the test).
fn kill_after(mut cmd: Command, after: Duration) -> bool {
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    // The kill moment is time-based by design: there is no event to wait for.
    std::thread::sleep(after);
    let _ = child.kill();
    let status = child.wait().unwrap();
    if status.signal() == Some(libc::SIGKILL) {
        return true;
    }
    assert!(
        status.success(),
        "{cmd:?} failed by itself before the kill: {status}"
    );
    false
}

/// How long an uninterrupted run takes: the shorter of two (`prepare` gives each a fresh
/// start), since the first may share the machine with other tests' set-up; a kill meant for
/// late in the run then still lands before its end on a busier machine.
fn run_time(mut prepare: impl FnMut() -> Command) -> Duration {
    (0..2)
        .map(|_| {
            let mut cmd = prepare();
            let started = Instant::now();
            run_ok(&mut cmd);
            started.elapsed()
        })
        .min()
        .unwrap()
}

fn md5_hex(data: &[u8]) -> String {
    hex::encode(Md5::digest(data))
}

/// The bundle of a 64 MiB image, made once per test run, kept with the image.
struct Fixture {
    keys: Keys,
    home: PathBuf,
    image: PathBuf,
    image_sha1: String,
    dir: PathBuf,
    manifest: PathBuf,
    /// Part file names in index order.
    parts: Vec<String>,
    /// Every file of the bundle (parts and manifest) by name.
    files: BTreeMap<String, Vec<u8>>,
}

const MANIFEST: &str = "disk.img.manifest.xml";

impl Fixture {
    /// `bundle-image` of the image into `dest` at gzip level 1.
    fn bundle_cmd(&self, dest: &Path) -> Command {
        let mut c = amibundle(&self.home);
        c.args(["bundle-image", "-i"])
            .arg(&self.image)
            .args(["-u", "123456789012", "--compression-level", "1", "-d"])
            .arg(dest)
            .args(self.keys.bundle_args());
        c
    }

    /// Names of the bundle's files that `dir` holds byte for byte.
    fn intact_in(&self, dir: &Path) -> BTreeSet<String> {
        self.files
            .iter()
            .filter(|(name, data)| fs::read(dir.join(name)).is_ok_and(|d| &d == *data))
            .map(|(name, _)| name.clone())
            .collect()
    }
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        // Under the target directory, replaced on each run.
        let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join("crash-fixture");
        let _ = fs::remove_dir_all(&root);
        let dir = root.join("bundle");
        let home = root.join("home");
        fs::create_dir_all(&dir).unwrap();
        fs::create_dir_all(&home).unwrap();
        let image = root.join("disk.img");
        write_image(&image, IMAGE_MIB);
        let mut f = Fixture {
            keys: Keys::new(),
            home,
            image_sha1: sha1sum(&image),
            image,
            manifest: dir.join(MANIFEST),
            dir,
            parts: Vec::new(),
            files: BTreeMap::new(),
        };
        run_ok(&mut f.bundle_cmd(&f.dir));
        f.parts = part_filenames(&fs::read_to_string(&f.manifest).unwrap());
        assert_eq!(f.parts.len(), 7, "a 7-part bundle: {:?}", f.parts);
        for e in fs::read_dir(&f.dir).unwrap() {
            let e = e.unwrap();
            let name = e.file_name().into_string().unwrap();
            f.files.insert(name, fs::read(e.path()).unwrap());
        }
        assert_eq!(f.files.len(), 8, "{:?}", f.files.keys());
        f
    })
}

/// Size and MD5 (a single PUT's ETag) of every object under `bucket/prefix`, straight from moto.
fn listing(cloud: &Cloud, bucket: &str, prefix: &str) -> BTreeMap<String, (u64, String)> {
    let r = cloud.raw(
        "GET",
        &format!("/{bucket}?list-type=2&prefix={prefix}"),
        &[],
        b"",
    );
    if r.status == 404 {
        return BTreeMap::new();
    }
    let xml = r.text();
    assert_eq!(r.status, 200, "{xml}");
    assert!(!xml.contains("<IsTruncated>true"), "{xml}");
    xml.split("<Contents>")
        .skip(1)
        .map(|c| {
            let etag = element(c, "ETag")
                .replace("&quot;", "")
                .replace("&#34;", "")
                .replace('"', "")
                .to_ascii_lowercase();
            (
                element(c, "Key"),
                (element(c, "Size").parse().unwrap(), etag),
            )
        })
        .collect()
}

/// Marks a run's requests (the SDK puts `app/TAG` in its user agent), so that what the rerun
/// sent is told apart from what the proxy records late of the killed run's last requests.
fn tagged(mut cmd: Command, tag: &str) -> Command {
    cmd.env("AWS_SDK_UA_APP_ID", tag);
    cmd
}

/// The part objects requested with `method` by the run tagged `tag`, by path.
fn part_requests(cloud: &Cloud, method: &str, tag: &str) -> Vec<String> {
    let mark = format!("app/{tag}");
    let ours: Vec<_> = cloud
        .proxy
        .exchanges()
        .into_iter()
        .filter(|e| e.headers.iter().any(|(_, v)| v.contains(&mark)))
        .collect();
    assert!(!ours.is_empty(), "no request carries {mark}");
    let mut v: Vec<String> = ours
        .into_iter()
        .filter(|e| e.method == method && e.path.contains(".part."))
        .map(|e| e.path)
        .collect();
    v.sort();
    v
}

fn verify_s3(cloud: &Cloud, keys: &Keys, url: &str) {
    let out = run_ok(&mut cloud.cmd(&[
        "verify",
        "--json",
        "-m",
        url,
        "-k",
        keys.user_key().to_str().unwrap(),
        "-c",
        keys.user_cert().to_str().unwrap(),
        "--region",
        "us-east-1",
    ]));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ok"], true, "{v}");
}

/// What the points of one test met, for the summary and the final checks.
#[derive(Default, Debug)]
struct Tally {
    points: usize,
    /// Points where the kill ended the run (the rest had finished).
    killed: usize,
    /// Points that left part of the work done (some but not all parts in place).
    partial: usize,
    /// Parts the reruns transferred, in all.
    transferred: usize,
    /// Parts the reruns found in place and did not transfer, in all.
    reused: usize,
}

impl Tally {
    /// The points must have hit the run while it worked, not only before or after.
    fn check(&self, what: &str) {
        eprintln!("crash {what}: seed {:#x}, {self:?}", seed());
        assert!(
            self.killed * 2 >= self.points,
            "{what}: most kills must land before the run ends: {self:?}"
        );
        if self.points >= 5 {
            assert!(
                self.partial > 0,
                "{what}: some kill must land mid-transfer: {self:?}"
            );
        }
    }
}

#[test]
fn upload_killed_at_seeded_moments_resumes_sending_only_what_s3_lacks() {
    let f = fixture();
    let cloud = Cloud::start();
    let (bucket, prefix) = ("crash-up", "img");
    let key = |name: &str| format!("{prefix}/{name}");
    let m = f.manifest.to_str().unwrap();
    let upload = || {
        cloud.cmd(&[
            "upload",
            "-m",
            m,
            "--region",
            "us-east-1",
            "-b",
            "crash-up/img",
            "--concurrency",
            "2",
            "--json",
        ])
    };
    let span = run_time(|| {
        cloud.moto.reset();
        upload()
    });
    let n = points("AMIBUNDLE_CRASH_POINTS", UPLOAD_POINTS);
    let mut tally = Tally::default();
    for (i, delay) in kill_delays(0x01, n, span).into_iter().enumerate() {
        let ctx = format!("point {i} at {delay:?} of {span:?}");
        cloud.moto.reset();
        tally.points += 1;
        tally.killed += usize::from(kill_after(upload(), delay));

        // What the killed run left: the manifest is the commit point, stored last.
        let before = listing(&cloud, bucket, prefix);
        let intact: BTreeSet<&String> = f
            .parts
            .iter()
            .filter(|p| {
                before.get(&key(p)).is_some_and(|(size, etag)| {
                    *size == f.files[*p].len() as u64 && *etag == md5_hex(&f.files[*p])
                })
            })
            .collect();
        if before.contains_key(&key(MANIFEST)) {
            assert_eq!(intact.len(), f.parts.len(), "{ctx}: manifest before parts");
        }
        if !intact.is_empty() && intact.len() < f.parts.len() {
            tally.partial += 1;
        }

        // The rerun sends only parts that were missing or wrong.
        cloud.proxy.clear();
        let tag = format!("crash-rerun-{i}");
        let out = run_ok(&mut tagged(upload(), &tag));
        let puts = part_requests(&cloud, "PUT", &tag);
        for p in &puts {
            let name = p.rsplit('/').next().unwrap().to_string();
            assert!(
                !intact.contains(&name),
                "{ctx}: {p} was in S3 and sent again"
            );
        }
        assert!(
            puts.len() <= f.parts.len() - intact.len(),
            "{ctx}: {puts:?} for {} parts missing",
            f.parts.len() - intact.len()
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(
            v["skipped"].as_array().unwrap().len() + puts.len(),
            f.parts.len(),
            "{ctx}: {v}"
        );
        tally.transferred += puts.len();
        tally.reused += f.parts.len() - puts.len();

        // The result: every object is the local file, and the bundle verifies.
        let after = listing(&cloud, bucket, prefix);
        for (name, data) in &f.files {
            assert_eq!(
                after.get(&key(name)),
                Some(&(data.len() as u64, md5_hex(data))),
                "{ctx}: {name}"
            );
        }
        // (`verify s3://` downloads the whole bundle: every fifth point and the last.)
        if i % 5 == 4 || i + 1 == n {
            verify_s3(
                &cloud,
                &f.keys,
                &format!("s3://{bucket}/{prefix}/{MANIFEST}"),
            );
        }
    }
    tally.check("upload");
    assert!(tally.transferred > 0 && tally.reused > 0, "{tally:?}");
}

#[test]
fn download_killed_at_seeded_moments_resumes_fetching_only_what_is_missing() {
    let f = fixture();
    let cloud = Cloud::start();
    run_ok(&mut cloud.cmd(&[
        "upload",
        "-m",
        f.manifest.to_str().unwrap(),
        "--region",
        "us-east-1",
        "-b",
        "crash-dl/img",
    ]));
    let scratch = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let download = |dest: &Path| {
        cloud.cmd(&[
            "download",
            "-b",
            "crash-dl/img",
            "-m",
            MANIFEST,
            "-d",
            dest.to_str().unwrap(),
            "--concurrency",
            "2",
            "--json",
        ])
    };
    let base = scratch.path().join("base");
    let span = run_time(|| {
        let _ = fs::remove_dir_all(&base);
        fs::create_dir(&base).unwrap();
        download(&base)
    });
    fs::remove_dir_all(&base).unwrap();
    let n = points("AMIBUNDLE_CRASH_POINTS", DOWNLOAD_POINTS);
    let mut tally = Tally::default();
    for (i, delay) in kill_delays(0x02, n, span).into_iter().enumerate() {
        let ctx = format!("point {i} at {delay:?} of {span:?}");
        let dest = scratch.path().join(format!("p{i}"));
        fs::create_dir(&dest).unwrap();
        tally.points += 1;
        tally.killed += usize::from(kill_after(download(&dest), delay));

        // What the killed run left: the manifest is written last.
        let intact = f.intact_in(&dest);
        let parts_intact = f.parts.iter().filter(|p| intact.contains(*p)).count();
        if dest.join(MANIFEST).exists() {
            assert!(intact.contains(MANIFEST), "{ctx}: the manifest is whole");
            assert_eq!(parts_intact, f.parts.len(), "{ctx}: manifest before parts");
        }
        if parts_intact > 0 && parts_intact < f.parts.len() {
            tally.partial += 1;
        }

        // The rerun fetches exactly the parts that were missing or not whole.
        cloud.proxy.clear();
        let tag = format!("crash-rerun-{i}");
        let out = run_ok(&mut tagged(download(&dest), &tag));
        let gets: BTreeSet<String> = part_requests(&cloud, "GET", &tag)
            .into_iter()
            .map(|p| p.rsplit('/').next().unwrap().to_string())
            .collect();
        let missing: BTreeSet<String> = f
            .parts
            .iter()
            .filter(|p| !intact.contains(*p))
            .cloned()
            .collect();
        assert_eq!(gets, missing, "{ctx}");
        assert_eq!(
            part_requests(&cloud, "GET", &tag).len(),
            missing.len(),
            "{ctx}: one GET per missing part"
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["skipped"].as_array().unwrap().len(), parts_intact, "{v}");
        tally.transferred += missing.len();
        tally.reused += parts_intact;

        // The result: the bundle byte for byte and nothing else (no temporary file of the
        // killed run), and it verifies.
        let mut names: Vec<String> = fs::read_dir(&dest)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, f.files.keys().cloned().collect::<Vec<_>>(), "{ctx}");
        assert_eq!(f.intact_in(&dest).len(), f.files.len(), "{ctx}");
        run_ok(
            amibundle(&f.home)
                .args(["verify", "-m"])
                .arg(dest.join(MANIFEST))
                .arg("-k")
                .arg(f.keys.user_key())
                .arg("-c")
                .arg(f.keys.user_cert()),
        );
        fs::remove_dir_all(&dest).unwrap();
    }
    tally.check("download");
    assert!(tally.transferred > 0 && tally.reused > 0, "{tally:?}");
}

#[test]
fn bundle_image_killed_at_seeded_moments_never_leaves_an_incomplete_manifest_and_reruns() {
    let f = fixture();
    let scratch = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let base = scratch.path().join("base");
    let span = run_time(|| {
        let _ = fs::remove_dir_all(&base);
        fs::create_dir(&base).unwrap();
        f.bundle_cmd(&base)
    });
    fs::remove_dir_all(&base).unwrap();
    let n = points("AMIBUNDLE_CRASH_POINTS", BUNDLE_POINTS);
    let mut tally = Tally::default();
    for (i, delay) in kill_delays(0x03, n, span).into_iter().enumerate() {
        let ctx = format!("point {i} at {delay:?} of {span:?}");
        let dest = scratch.path().join(format!("p{i}"));
        fs::create_dir(&dest).unwrap();
        tally.points += 1;
        tally.killed += usize::from(kill_after(f.bundle_cmd(&dest), delay));

        // Either no manifest, or a complete bundle that verifies.
        let manifest = dest.join(MANIFEST);
        let left: Vec<String> = fs::read_dir(&dest)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        let committed = manifest.exists();
        if committed {
            run_ok(
                amibundle(&f.home)
                    .args(["verify", "-m"])
                    .arg(&manifest)
                    .arg("-k")
                    .arg(f.keys.user_key()),
            );
        } else if left.iter().any(|n| !n.starts_with('.')) {
            // Parts renamed into place, the manifest not yet: the commit was cut short.
            tally.partial += 1;
        } else if left.iter().any(|n| n.starts_with(".amibundle-")) {
            // Killed while staging: the work is lost, nothing looks like a bundle.
            tally.partial += 1;
        }

        // The same command again: it bundles afresh (nothing of a killed run is trusted), or,
        // when the killed run had committed, refuses to replace the complete bundle.
        let out = f.bundle_cmd(&dest).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        if committed {
            assert!(!out.status.success(), "{ctx}: {err}");
            assert!(err.contains("already exists"), "{ctx}: {err}");
            tally.reused += f.parts.len();
        } else {
            assert!(out.status.success(), "{ctx}: {err}");
            tally.transferred += f.parts.len();
        }

        // The result: the bundle and nothing else (no staging directory of the killed run),
        // and it unbundles to the image.
        let mut names: Vec<String> = fs::read_dir(&dest)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, f.files.keys().cloned().collect::<Vec<_>>(), "{ctx}");
        let img = scratch.path().join(format!("img{i}"));
        fs::create_dir(&img).unwrap();
        run_ok(
            amibundle(&f.home)
                .args(["unbundle", "-m"])
                .arg(&manifest)
                .arg("-k")
                .arg(f.keys.user_key())
                .arg("-d")
                .arg(&img),
        );
        assert_eq!(sha1sum(&img.join("disk.img")), f.image_sha1, "{ctx}");
        fs::remove_dir_all(&img).unwrap();
        fs::remove_dir_all(&dest).unwrap();
    }
    tally.check("bundle-image");
}

/// Reads a child's stderr on a thread: every line goes to the channel and is kept.
fn stderr_lines(child: &mut Child) -> (mpsc::Receiver<String>, std::thread::JoinHandle<String>) {
    let stderr = child.stderr.take().expect("stderr piped");
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut all = String::new();
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            all.push_str(&line);
            all.push('\n');
            let _ = tx.send(line);
        }
        all
    });
    (rx, reader)
}

/// Waits for a stderr line containing `needle`.
fn wait_for_line(rx: &mpsc::Receiver<String>, needle: &str, child: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(line) if line.contains(needle) => return,
            Ok(_) => {}
            Err(mpsc::RecvTimeoutError::Timeout) if Instant::now() < deadline => {}
            Err(e) => {
                let _ = child.kill();
                panic!("no stderr line with {needle:?} ({e:?})");
            }
        }
    }
}

/// Sends `signal` (`INT`, `TERM`) and waits at most [`EXIT_WITHIN`] for the exit.
fn signal_and_wait(child: &mut Child, signal: &str) -> std::process::ExitStatus {
    let sent = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(sent.success());
    let signalled = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if signalled.elapsed() > EXIT_WITHIN {
            let _ = child.kill();
            panic!("still running {EXIT_WITHIN:?} after SIG{signal}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Loop devices whose backing file is under `dir`, from /sys/block/loop*/loop/backing_file.
fn loops_under(dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    for e in fs::read_dir("/sys/block").unwrap().flatten() {
        let name = e.file_name().into_string().unwrap_or_default();
        if !name.starts_with("loop") {
            continue;
        }
        if let Ok(file) = fs::read_to_string(e.path().join("loop/backing_file")) {
            if Path::new(file.trim()).starts_with(dir) {
                found.push(format!("/dev/{name} -> {}", file.trim()));
            }
        }
    }
    found
}

/// Mount points under `dir` in this process's view.
fn mounts_under(dir: &Path) -> Vec<String> {
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| Path::new(l.split(' ').nth(4).unwrap_or_default()).starts_with(dir))
        .map(str::to_string)
        .collect()
}

/// Waits until no loop device is backed by a file under `dir` and nothing is mounted there: the
/// kernel detaches an autoclear device once the dead process's private mounts are torn down,
/// which may finish a moment after the process is reaped.
fn assert_released(dir: &Path, ctx: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (loops, mounts) = (loops_under(dir), mounts_under(dir));
        if loops.is_empty() && mounts.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{ctx}: still attached: {loops:?}, still mounted: {mounts:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn names_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    v.sort();
    v
}

fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "bundle-vol and save need root (loop devices, mounts); CI runs as root"
    );
}

const SAVE_BUCKET: &str = "amibundle-123456789012-us-east-1";

#[test]
#[ignore = "needs root: loop devices, mounts, namespaces (scripts/test.sh runs it as root)"]
fn save_killed_at_seeded_moments_leaves_no_loop_device_or_mount_and_resumes() {
    require_root();
    let cloud = Cloud::start();
    let keys = Keys::new();
    let scratch = tempfile::tempdir_in("/var/tmp").unwrap();
    let src = scratch.path().join("data");
    crate::save::source(&src);
    let dest = scratch.path().join("out");
    let state = dest.join(".amibundle-save-web-save");
    let save = || crate::save::save_cmd(&cloud, &keys, &src, &dest);
    let span = run_time(|| {
        cloud.moto.reset();
        let _ = fs::remove_dir_all(&dest);
        fs::create_dir(&dest).unwrap();
        save()
    });
    let n = points("AMIBUNDLE_CRASH_SAVE_POINTS", SAVE_POINTS);
    let mut tally = Tally::default();
    for (i, delay) in kill_delays(0x04, n, span).into_iter().enumerate() {
        let ctx = format!("point {i} at {delay:?} of {span:?}");
        cloud.moto.reset();
        fs::remove_dir_all(&dest).unwrap();
        fs::create_dir(&dest).unwrap();
        tally.points += 1;
        tally.killed += usize::from(kill_after(save(), delay));

        // Nothing of the killed run stays attached or mounted; what it left for the rerun: the
        // record of a complete image, parts in S3.
        assert_released(scratch.path(), &ctx);
        let recorded = state.join("complete.json").exists();
        let before = listing(&cloud, SAVE_BUCKET, "web-save.");

        let tag = format!("crash-rerun-{i}");
        let out = run_ok(&mut tagged(save(), &tag));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["image_reused"], recorded, "{ctx}: {v}");
        assert!(v["ami_id"].as_str().unwrap().starts_with("ami-"), "{v}");
        let after = listing(&cloud, SAVE_BUCKET, "web-save.");
        let parts: Vec<&String> = after.keys().filter(|k| k.contains(".part.")).collect();
        assert_eq!(parts.len() as u64, v["part_count"].as_u64().unwrap(), "{v}");
        if before.contains_key("web-save.manifest.xml") {
            assert!(
                parts.iter().all(|p| before.contains_key(*p)),
                "{ctx}: a manifest was stored before all parts: {before:?}"
            );
        }
        // Parts the killed run left exactly as the rerun's bundle has them: not sent again.
        let intact: BTreeSet<&String> = parts
            .iter()
            .copied()
            .filter(|p| before.get(*p) == after.get(*p))
            .collect();
        let puts = part_requests(&cloud, "PUT", &tag);
        for p in &puts {
            let key = p.rsplit('/').next().unwrap().to_string();
            assert!(
                !intact.contains(&key),
                "{ctx}: {p} was in S3 and sent again"
            );
        }
        assert!(puts.len() <= parts.len() - intact.len(), "{ctx}: {puts:?}");
        let skipped = v["parts_skipped"].as_u64().unwrap() as usize;
        assert_eq!(skipped + puts.len(), parts.len(), "{ctx}: {v}");
        if recorded && !intact.is_empty() && intact.len() < parts.len() {
            tally.partial += 1;
        }
        tally.transferred += puts.len();
        tally.reused += skipped;

        // Done: nothing left locally, and the bundle verifies.
        assert_released(scratch.path(), &ctx);
        assert!(names_in(&dest).is_empty(), "{ctx}: {:?}", names_in(&dest));
        verify_s3(
            &cloud,
            &keys,
            &format!("s3://{SAVE_BUCKET}/web-save.manifest.xml"),
        );
    }
    tally.check("save");
}

/// A source whose copy takes a while: `save::source`'s tree and 96 MiB that do not compress.
fn big_source(root: &Path) {
    crate::save::source(root);
    write_image(&root.join("db/big.bin"), 96);
}

/// A cloud whose proxy holds the PUT of part 1 for a minute, reporting when it arrives, while
/// the flag is set.
fn stalling_cloud() -> (Cloud, mpsc::Receiver<()>, Arc<AtomicBool>) {
    let (tx, rx) = mpsc::channel();
    let tx = std::sync::Mutex::new(tx);
    let stall = Arc::new(AtomicBool::new(true));
    let on = Arc::clone(&stall);
    let cloud = Cloud::start_with(Box::new(move |req: &crate::support::proxy::RequestHead| {
        if on.load(Ordering::SeqCst) && req.method == "PUT" && req.path.ends_with(".part.1") {
            let _ = tx.lock().unwrap().send(());
            crate::support::proxy::Action::Stall(Duration::from_secs(60))
        } else {
            crate::support::proxy::Action::Forward
        }
    }));
    (cloud, rx, stall)
}

/// Spawns `cmd` with stderr read line by line.
fn spawn_watched(
    mut cmd: Command,
) -> (
    Child,
    mpsc::Receiver<String>,
    std::thread::JoinHandle<String>,
) {
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (rx, reader) = stderr_lines(&mut child);
    (child, rx, reader)
}

/// The signal landed in the copy: its start line is printed, and no line of a later phase
/// (the image is bundled right after the copy and the image's teardown).
fn assert_mid_copy(stderr: &str) {
    assert!(stderr.contains("copying files..."), "{stderr}");
    assert!(
        !stderr.lines().any(|l| l.starts_with("bundling")),
        "the signal was to land mid-copy: {stderr}"
    );
}

fn bundle_vol_cmd(cloud: &Cloud, keys: &Keys, src: &Path, dest: &Path, upload: bool) -> Command {
    let mut c = cloud.cmd(&[
        "bundle-vol",
        "-v",
        src.to_str().unwrap(),
        "-d",
        dest.to_str().unwrap(),
        "-p",
        "vol",
        "-u",
        "123456789012",
        "--no-inherit",
        "--batch",
        "--region",
        "us-east-1",
        "--concurrency",
        "2",
    ]);
    if upload {
        c.args(["--upload", "s3://crash-vol/img"]);
    }
    c.args(keys.bundle_args());
    c
}

#[test]
#[ignore = "needs root: loop devices, mounts, namespaces (scripts/test.sh runs it as root)"]
fn bundle_vol_interrupted_mid_copy_or_mid_upload_exits_130_or_143_and_leaves_nothing() {
    require_root();
    let keys = Keys::new();
    let scratch = tempfile::tempdir_in("/var/tmp").unwrap();

    // SIGINT while files are copied into the image.
    let cloud = Cloud::start();
    let src = scratch.path().join("big");
    big_source(&src);
    let dest = scratch.path().join("out-copy");
    fs::create_dir(&dest).unwrap();
    let (mut child, rx, reader) = spawn_watched(bundle_vol_cmd(&cloud, &keys, &src, &dest, false));
    wait_for_line(&rx, "copying files...", &mut child);
    let status = signal_and_wait(&mut child, "INT");
    let err = reader.join().unwrap();
    assert_eq!(status.code(), Some(130), "{err}");
    assert!(err.contains("interrupted"), "{err}");
    assert_mid_copy(&err);
    assert_released(scratch.path(), "bundle-vol, SIGINT mid-copy");
    assert!(names_in(&dest).is_empty(), "{:?}", names_in(&dest));
    drop(cloud);

    // SIGTERM while a part upload is outstanding.
    let (cloud, stalled, _stall) = stalling_cloud();
    let src = scratch.path().join("small");
    crate::save::source(&src);
    let dest = scratch.path().join("out-upload");
    fs::create_dir(&dest).unwrap();
    let (mut child, _rx, reader) = spawn_watched(bundle_vol_cmd(&cloud, &keys, &src, &dest, true));
    stalled
        .recv_timeout(Duration::from_secs(120))
        .expect("the PUT of part 1 arrives");
    let status = signal_and_wait(&mut child, "TERM");
    let err = reader.join().unwrap();
    assert_eq!(status.code(), Some(143), "{err}");
    assert!(err.contains("interrupted"), "{err}");
    assert_released(scratch.path(), "bundle-vol --upload, SIGTERM mid-upload");
    assert!(names_in(&dest).is_empty(), "{:?}", names_in(&dest));
    let left = listing(&cloud, "crash-vol", "img/");
    assert!(
        !left.contains_key("img/vol.manifest.xml"),
        "no manifest: {left:?}"
    );
}

#[test]
#[ignore = "needs root: loop devices, mounts, namespaces (scripts/test.sh runs it as root)"]
fn save_interrupted_mid_copy_starts_over_and_mid_upload_keeps_its_image_for_the_rerun() {
    require_root();
    let keys = Keys::new();
    let scratch = tempfile::tempdir_in("/var/tmp").unwrap();

    // SIGTERM mid-copy: the image is not complete, nothing of it can be reused, so the state
    // directory goes with it.
    let cloud = Cloud::start();
    let src = scratch.path().join("big");
    big_source(&src);
    let dest = scratch.path().join("out-copy");
    fs::create_dir(&dest).unwrap();
    let (mut child, rx, reader) = spawn_watched(crate::save::save_cmd(&cloud, &keys, &src, &dest));
    wait_for_line(&rx, "copying files...", &mut child);
    let status = signal_and_wait(&mut child, "TERM");
    let err = reader.join().unwrap();
    assert_eq!(status.code(), Some(143), "{err}");
    assert!(err.contains("interrupted"), "{err}");
    assert_mid_copy(&err);
    assert_released(scratch.path(), "save, SIGTERM mid-copy");
    assert!(names_in(&dest).is_empty(), "{:?}", names_in(&dest));
    drop(cloud);

    // SIGINT mid-upload: the image is complete and recorded; it is kept (the message says
    // where and how to start over instead), and the rerun resumes with it.
    let (cloud, stalled, stall) = stalling_cloud();
    let src = scratch.path().join("small");
    crate::save::source(&src);
    let dest = scratch.path().join("out-upload");
    fs::create_dir(&dest).unwrap();
    let (mut child, _rx, reader) = spawn_watched(crate::save::save_cmd(&cloud, &keys, &src, &dest));
    stalled
        .recv_timeout(Duration::from_secs(120))
        .expect("the PUT of part 1 arrives");
    let status = signal_and_wait(&mut child, "INT");
    let err = reader.join().unwrap();
    assert_eq!(status.code(), Some(130), "{err}");
    assert!(err.contains("interrupted"), "{err}");
    assert!(err.contains(".amibundle-save-web-save"), "{err}");
    assert_released(scratch.path(), "save, SIGINT mid-upload");
    assert_eq!(names_in(&dest), [".amibundle-save-web-save"]);
    let state = dest.join(".amibundle-save-web-save");
    assert_eq!(names_in(&state), ["complete.json", "web-save"]);
    let before = listing(&cloud, SAVE_BUCKET, "web-save.");
    assert!(!before.contains_key("web-save.manifest.xml"), "{before:?}");

    // The rerun, with part 1 forwarded at once.
    stall.store(false, Ordering::SeqCst);
    let tag = "crash-after-sigint";
    cloud.proxy.clear();
    let out = run_ok(&mut tagged(
        crate::save::save_cmd(&cloud, &keys, &src, &dest),
        tag,
    ));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["image_reused"], true, "{v}");
    let puts = part_requests(&cloud, "PUT", tag);
    for p in &puts {
        let key = p.rsplit('/').next().unwrap();
        assert!(!before.contains_key(key), "{p} was in S3 and sent again");
    }
    assert_eq!(
        v["parts_skipped"].as_u64().unwrap() as usize + puts.len(),
        v["part_count"].as_u64().unwrap() as usize,
        "{v}"
    );
    assert!(names_in(&dest).is_empty(), "{:?}", names_in(&dest));
    verify_s3(
        &cloud,
        &keys,
        &format!("s3://{SAVE_BUCKET}/web-save.manifest.xml"),
    );
}
