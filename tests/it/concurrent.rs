//! Two runs at once on one machine: `bundle-image`, `bundle-vol` and `save` runs into one
//! destination with different prefixes both succeed and each output is its own input (no fixed
//! paths, loop devices or mount points are shared); a second run of the same bundle-image or
//! save prefix into the same destination fails at once, naming the run that holds it, and
//! changes nothing of that run.
//!
//! Where the overlap matters, it is made certain rather than left to timing: the first run is
//! held at a point where it owns its lock (reading its image from a pipe the test holds; its
//! part uploads held by the proxy) while the others run.

use std::fs;
use std::io::Write;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::cloud::Cloud;
use crate::restore::{make_tree, walk};
use crate::support::proxy::{Action, RequestHead};
use crate::support::*;

const ACCOUNT: &str = "123456789012";

/// Waits up to a minute for `cond`, failing with `what` and the child's stderr if it exits or
/// time runs out first.
fn wait_for(child: &mut Child, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !cond() {
        if Instant::now() > deadline || child.try_wait().unwrap().is_some() {
            let _ = child.kill();
            let _ = child.wait();
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut e, &mut err);
            }
            panic!("{what} did not happen: {err}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits for a spawned run and asserts it succeeded; returns its stdout.
fn finish_ok(child: Child, what: &str) -> Vec<u8> {
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{what} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// A run refused because another holds the lock: quickly, naming the holder's pid and `lock`.
fn assert_refused_for(cmd: &mut Command, holder: u32, lock: &str) {
    let started = Instant::now();
    let err = run_err(cmd);
    assert!(
        err.contains("in use by another amibundle run")
            && err.contains(&format!("(pid {holder})"))
            && err.contains(lock),
        "the message names the other run and the lock: {err}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "refused at once, not after {:?}",
        started.elapsed()
    );
}

/// Unbundles `dest/name.manifest.xml` into a fresh directory and checks the image is `image`.
fn assert_bundle_of(home: &Path, keys: &Keys, dest: &Path, name: &str, image: &Path) {
    let out = tempfile::tempdir().unwrap();
    run_ok(
        amibundle(home)
            .arg("unbundle")
            .arg("-m")
            .arg(dest.join(format!("{name}.manifest.xml")))
            .arg("-k")
            .arg(keys.user_key())
            .arg("-c")
            .arg(keys.user_cert())
            .arg("-d")
            .arg(out.path()),
    );
    assert_eq!(
        sha1sum(&out.path().join(name)),
        sha1sum(image),
        "bundle {name} holds its own image"
    );
}

/// The names in `dir` that are not files of the bundles `names`.
fn strays(dir: &Path, names: &[&str]) -> Vec<String> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| {
            !names.iter().any(|b| {
                n.strip_prefix(b)
                    .is_some_and(|rest| rest == ".manifest.xml" || rest.starts_with(".part."))
            })
        })
        .collect()
}

#[test]
fn two_bundle_image_runs_at_once_do_not_collide_and_the_same_bundle_is_refused_to_the_second() {
    let t = tempfile::tempdir().unwrap();
    let (dest, home) = (t.path().join("dest"), t.path().join("home"));
    fs::create_dir_all(&dest).unwrap();
    fs::create_dir_all(&home).unwrap();
    let (img_one, img_two) = (t.path().join("one.img"), t.path().join("two.img"));
    random_file(&img_one, 25, 1);
    random_file(&img_two, 12, 2);
    let keys = Keys::new();
    let bundle = |image: &str, name: &str| {
        let mut c = amibundle(&home);
        c.args(["bundle-image", "-i", image, "-p", name, "-u", ACCOUNT])
            .args(["--compression-level", "1", "-r", "x86_64", "-d"])
            .arg(&dest)
            .args(keys.bundle_args());
        c
    };

    // Run one reads its image from a pipe the test holds: it runs, holding bundle "one" in
    // dest, until the image is written.
    let size = fs::metadata(&img_one).unwrap().len().to_string();
    let mut one = bundle("-", "one")
        .args(["--size", &size])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lock = dest.join(".amibundle-one.lock");
    let pid = one.id();
    wait_for(&mut one, "run one taking its lock", || {
        fs::read_to_string(&lock).is_ok_and(|s| s.trim() == pid.to_string())
    });

    // Another bundle into the same destination meanwhile: completes.
    run_ok(&mut bundle(img_two.to_str().unwrap(), "two"));
    // The same bundle into the same destination: refused at once, naming run one.
    assert_refused_for(
        &mut bundle(img_two.to_str().unwrap(), "one"),
        pid,
        ".amibundle-one.lock",
    );

    let mut stdin = one.stdin.take().unwrap();
    stdin.write_all(&fs::read(&img_one).unwrap()).unwrap();
    drop(stdin);
    finish_ok(one, "run one");

    assert_bundle_of(&home, &keys, &dest, "one", &img_one);
    assert_bundle_of(&home, &keys, &dest, "two", &img_two);
    let left = strays(&dest, &["one", "two"]);
    assert!(
        left.is_empty(),
        "nothing but the two bundles (no lock, no staging): {left:?}"
    );
}

fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "bundle-vol and save need root (loop devices, mounts); CI runs as root"
    );
}

/// Two source trees that differ.
fn two_sources(root: &Path) -> [std::path::PathBuf; 2] {
    let (a, b) = (root.join("src-a"), root.join("src-b"));
    make_tree(&a);
    make_tree(&b);
    fs::write(b.join("www/only-in-b.txt"), b"b\n").unwrap();
    fs::remove_file(b.join("www/index.html")).unwrap();
    [a, b]
}

/// `src` and `back` hold the same entries.
fn assert_same_tree(src: &Path, back: &Path) {
    let (want, got) = (walk(src), walk(back));
    assert_eq!(
        want.keys().collect::<Vec<_>>(),
        got.keys().collect::<Vec<_>>(),
        "{} came back as {}",
        src.display(),
        back.display()
    );
    for (path, entry) in &want {
        assert_eq!(entry, &got[path], "{}", path.display());
    }
}

#[test]
#[ignore = "needs root: loop devices, mounts, namespaces (scripts/test.sh runs it as root)"]
fn two_bundle_vol_runs_at_once_into_one_destination_each_bundle_their_own_volume() {
    require_root();
    let scratch = tempfile::tempdir_in("/var/tmp").unwrap();
    let s = scratch.path();
    let srcs = two_sources(s);
    let dest = s.join("dest");
    fs::create_dir(&dest).unwrap();
    let keys = Keys::new();
    let runs: Vec<Child> = srcs
        .iter()
        .zip(["vol-a", "vol-b"])
        .map(|(src, name)| {
            amibundle(s)
                .arg("bundle-vol")
                .arg("-v")
                .arg(src)
                .arg("-d")
                .arg(&dest)
                .args(["-p", name, "-u", ACCOUNT, "--no-inherit", "-r", "x86_64"])
                .args(keys.bundle_args())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for (run, name) in runs.into_iter().zip(["vol-a", "vol-b"]) {
        finish_ok(run, name);
    }
    let left = strays(&dest, &["vol-a", "vol-b"]);
    assert!(left.is_empty(), "nothing but the two bundles: {left:?}");
    for (src, name) in srcs.iter().zip(["vol-a", "vol-b"]) {
        let back = s.join(format!("back-{name}"));
        run_ok(
            amibundle(s)
                .arg("restore")
                .arg("-m")
                .arg(dest.join(format!("{name}.manifest.xml")))
                .arg("-d")
                .arg(&back)
                .arg("-k")
                .arg(keys.user_key()),
        );
        assert_same_tree(src, &back);
    }
}

fn save_cmd(cloud: &Cloud, keys: &Keys, src: &Path, dest: &Path, prefix: &str) -> Command {
    let mut cmd = cloud.cmd(&[
        "save",
        "-v",
        src.to_str().unwrap(),
        "-d",
        dest.to_str().unwrap(),
        "-p",
        prefix,
        "-u",
        ACCOUNT,
        "--no-inherit",
        "--region",
        "us-east-1",
        "--json",
    ]);
    cmd.args(keys.bundle_args());
    cmd
}

#[test]
#[ignore = "needs root: loop devices, mounts, namespaces (scripts/test.sh runs it as root)"]
fn two_saves_at_once_both_register_and_the_same_prefix_is_refused_to_the_second() {
    require_root();
    // Save "vol-a"'s part uploads are held at the proxy until the gate opens: it is then
    // certainly running, with its state directory locked, while the others run.
    let gate = Arc::new(AtomicBool::new(false));
    let held = Arc::new(AtomicU64::new(0));
    let (g, h) = (Arc::clone(&gate), Arc::clone(&held));
    let cloud = Cloud::start_with(Box::new(move |req: &RequestHead| {
        if req.method == "PUT" && req.path.contains("/vol-a.part.") {
            h.fetch_add(1, Ordering::SeqCst);
            let deadline = Instant::now() + Duration::from_secs(120);
            while !g.load(Ordering::SeqCst) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Action::Forward
    }));
    let keys = Keys::new();
    let scratch = tempfile::tempdir_in("/var/tmp").unwrap();
    let s = scratch.path();
    let [src_a, src_b] = two_sources(s);
    let dest = s.join("dest");
    fs::create_dir(&dest).unwrap();

    let mut a = save_cmd(&cloud, &keys, &src_a, &dest, "vol-a")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = a.id();
    wait_for(&mut a, "save vol-a uploading a part", || {
        held.load(Ordering::SeqCst) > 0
    });
    let state = dest.join(".amibundle-save-vol-a");
    let record = fs::read(state.join("complete.json")).expect("vol-a recorded its image");

    // Another prefix into the same destination meanwhile: saves and registers.
    let out = run_ok(&mut save_cmd(&cloud, &keys, &src_b, &dest, "vol-b"));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["ami_id"].as_str().unwrap().starts_with("ami-"), "{v}");
    // The same prefix and destination: refused at once, naming save vol-a, its state intact.
    assert_refused_for(
        &mut save_cmd(&cloud, &keys, &src_b, &dest, "vol-a"),
        pid,
        ".amibundle-save-vol-a",
    );
    assert_eq!(
        fs::read(state.join("complete.json")).unwrap(),
        record,
        "vol-a's record is untouched"
    );

    gate.store(true, Ordering::SeqCst);
    let v: serde_json::Value = serde_json::from_slice(&finish_ok(a, "save vol-a")).unwrap();
    assert!(v["ami_id"].as_str().unwrap().starts_with("ami-"), "{v}");
    assert_eq!(v["image_reused"], false, "{v}");
    let left: Vec<_> = fs::read_dir(&dest).unwrap().collect();
    assert!(left.is_empty(), "both saves cleaned up: {left:?}");

    for (src, name) in [(&src_a, "vol-a"), (&src_b, "vol-b")] {
        let back = s.join(format!("back-{name}"));
        run_ok(&mut cloud.cmd(&[
            "restore",
            "-m",
            &format!("s3://amibundle-{ACCOUNT}-us-east-1/{name}.manifest.xml"),
            "-d",
            back.to_str().unwrap(),
            "-k",
            keys.user_key().to_str().unwrap(),
            "--region",
            "us-east-1",
        ]));
        assert_same_tree(src, &back);
    }
}
