//! `to-ebs` killed halfway and run again: the pending snapshot is resumed from the journal and
//! only the blocks it lacks are sent (counted at the recording proxy), including blocks whose
//! bytes changed in between; and a conversion from S3 that survives 10% injected faults on the
//! part downloads and the block uploads.
//!
//! Moto differs from EBS here: it reports a pending EBS snapshot as `completed` in
//! DescribeSnapshots and lets its blocks be listed (AWS refuses both until the snapshot is
//! complete). Resuming relies on neither: what was sent comes from the journal, and the tests
//! read the blocks back only once the command has finished.

use std::collections::BTreeSet;
use std::fs;
use std::io::{Seek, SeekFrom, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::cloud::Cloud;
use crate::ebs::{BLOCK, bundle_into, sha1_hex, snapshot_blocks, start_snapshots, upload};
use crate::faults::{faults_injected, faulty_cloud, write_image};
use crate::support::proxy::{Action, RequestHead};
use crate::support::*;

/// The block indexes of the `PutSnapshotBlock`s the proxy saw, and the snapshot they went to.
fn block_puts(cloud: &Cloud) -> (Vec<u64>, BTreeSet<String>) {
    let mut indexes = Vec::new();
    let mut snapshots = BTreeSet::new();
    for e in cloud.proxy.exchanges() {
        if e.method != "PUT" {
            continue;
        }
        let Some((snapshot, index)) = e
            .path
            .strip_prefix("/snapshots/")
            .and_then(|rest| rest.split_once("/blocks/"))
        else {
            continue;
        };
        indexes.push(index.parse().unwrap());
        snapshots.insert(snapshot.to_string());
    }
    (indexes, snapshots)
}

/// The snapshot's bytes: its blocks where it has them (all-zero ones allowed: a block a resumed
/// run overwrote with zeros), zeros elsewhere.
fn snapshot_bytes(cloud: &Cloud, snapshot: &str, size: usize) -> Vec<u8> {
    let mut image = vec![0u8; size.div_ceil(BLOCK) * BLOCK];
    for (index, bytes) in snapshot_blocks(cloud, snapshot) {
        let at = index as usize * BLOCK;
        image[at..at + BLOCK].copy_from_slice(&bytes);
    }
    image.truncate(size);
    image
}

/// Runs `to-ebs ARGS` and kills it (SIGKILL) once `ready` holds, which must happen before it
/// finishes.
fn kill_when(cloud: &Cloud, args: &[&str], what: &str, ready: impl Fn(&Cloud) -> bool) {
    let mut child = cloud
        .cmd(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while !ready(cloud) {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the first run never got to {what}"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "it finished before {what}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap();
    child.wait().unwrap();
}

fn journals(cloud: &Cloud) -> Vec<String> {
    let dir = cloud.home.path().join("state/amibundle/to-ebs");
    fs::read_dir(&dir)
        .map(|d| {
            d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn a_killed_run_resumes_its_snapshot_and_sends_only_the_blocks_it_lacks() {
    // Each block upload is held 40 ms while `slow` is set, so the kill lands mid-upload.
    let slow = Arc::new(AtomicBool::new(true));
    let stall = slow.clone();
    let plan = move |req: &RequestHead| {
        if stall.load(Ordering::SeqCst) && req.method == "PUT" && req.path.contains("/blocks/") {
            Action::Stall(Duration::from_millis(40))
        } else {
            Action::Forward
        }
    };
    let cloud = Cloud::start_with(Box::new(plan));
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("disk.img");
    write_image(&image, 40);
    let blocks = 80u64;
    let args = [
        "to-ebs",
        "-i",
        image.to_str().unwrap(),
        "--no-register",
        "--region",
        "us-east-1",
        "--json",
        "--concurrency",
        "2",
    ];
    kill_when(&cloud, &args, "30 blocks sent", |c| {
        block_puts(c).0.len() >= 30
    });
    // The killed run's last uploads, held at the proxy, reach moto and are recorded now.
    std::thread::sleep(Duration::from_millis(500));
    let (first, snapshots) = block_puts(&cloud);
    assert_eq!(snapshots.len(), 1, "{snapshots:?}");
    let snapshot = snapshots.into_iter().next().unwrap();
    assert!(first.len() < blocks as usize, "the kill came too late");
    assert_eq!(
        journals(&cloud)
            .iter()
            .filter(|n| n.ends_with(".journal"))
            .count(),
        1
    );

    // Between the runs, two blocks the killed run sent change: one gets new bytes, one becomes
    // zeros. The rerun must overwrite both.
    let sorted: BTreeSet<u64> = first.iter().copied().collect();
    let changed = *sorted.iter().next().unwrap();
    let zeroed = *sorted.iter().nth(1).unwrap();
    let mut f = fs::OpenOptions::new().write(true).open(&image).unwrap();
    f.seek(SeekFrom::Start(changed * BLOCK as u64 + 1000))
        .unwrap();
    f.write_all(b"changed between the runs").unwrap();
    f.seek(SeekFrom::Start(zeroed * BLOCK as u64)).unwrap();
    f.write_all(&vec![0u8; BLOCK]).unwrap();
    drop(f);

    slow.store(false, Ordering::SeqCst);
    cloud.proxy.clear();
    let out = run_ok(&mut cloud.cmd(&args));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["snapshot_id"], snapshot.as_str(), "{report}");
    assert_eq!(report["resumed"], true, "{report}");
    assert_eq!(start_snapshots(&cloud), 0, "the rerun started a snapshot");
    let (second, snapshots) = block_puts(&cloud);
    assert_eq!(
        snapshots.into_iter().collect::<Vec<_>>(),
        [snapshot.as_str()]
    );
    let sent = report["blocks_sent"].as_u64().unwrap();
    let resumed = report["blocks_resumed"].as_u64().unwrap();
    assert_eq!(second.len() as u64, sent, "{report}");
    assert_eq!(sent + resumed, blocks, "{report}");
    // The killed run had at least 30 uploads under way, two at a time: most were recorded.
    assert!(resumed >= 20, "only {resumed} blocks resumed: {report}");
    let second: BTreeSet<u64> = second.into_iter().collect();
    assert!(
        second.contains(&changed) && second.contains(&zeroed),
        "{second:?}"
    );
    for index in 0..blocks {
        assert!(
            sorted.contains(&index) || second.contains(&index),
            "block {index} was never sent"
        );
    }
    let expected = fs::read(&image).unwrap();
    assert!(
        snapshot_bytes(&cloud, &snapshot, expected.len()) == expected,
        "the snapshot differs from the image"
    );
    assert!(journals(&cloud).is_empty(), "{:?}", journals(&cloud));
}

#[test]
fn a_conversion_from_s3_survives_ten_percent_faults_on_parts_and_blocks() {
    let (cloud, enabled) = faulty_cloud(0x0EB5_2026_1207, 10);
    let keys = Keys::new();
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("data.img");
    write_image(&image, 48);
    let image_sha1 = sha1sum(&image);
    let manifest = bundle_into(
        &cloud,
        &keys,
        &image,
        &dir.path().join("bundle"),
        &["--compression-level", "1"],
    );
    upload(&cloud, &manifest, "faulty/in");
    enabled.store(true, Ordering::SeqCst);
    let ran = run_ok(&mut crate::faults::cmd(
        &cloud,
        &[
            "to-ebs",
            "--image-location",
            "faulty/in/data.img.manifest.xml",
            "-k",
            keys.user_key().to_str().unwrap(),
            "--no-register",
            "--region",
            "us-east-1",
            "--json",
        ],
    ));
    let report: serde_json::Value = serde_json::from_slice(&ran.stdout).unwrap();
    let faults = faults_injected(&cloud);
    let (puts, _) = block_puts(&cloud);
    // 96 blocks and 5 parts: about 10 faults expected at 10%.
    assert!(faults >= 4, "only {faults} faults were injected");
    assert!(
        puts.len() > 96,
        "no block upload was retried ({} PUTs)",
        puts.len()
    );
    assert_eq!(report["blocks_sent"], 96, "{report}");
    let snapshot = report["snapshot_id"].as_str().unwrap();
    let bytes = snapshot_bytes(&cloud, snapshot, 48 << 20);
    assert_eq!(sha1_hex(&bytes), image_sha1);
    assert!(journals(&cloud).iter().all(|n| !n.ends_with(".journal")));
}

#[test]
fn a_run_killed_after_asking_for_completion_goes_straight_to_registering_on_its_rerun() {
    // The completion is held 30 s at the proxy: the run is killed while it waits.
    let hold = Arc::new(AtomicBool::new(true));
    let held = hold.clone();
    let plan = move |req: &RequestHead| {
        if held.load(Ordering::SeqCst)
            && req.method == "POST"
            && req.path.starts_with("/snapshots/completion/")
        {
            Action::Stall(Duration::from_secs(30))
        } else {
            Action::Forward
        }
    };
    let cloud = Cloud::start_with(Box::new(plan));
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("disk.img");
    crate::ebs::disk_image(&image);
    let args = [
        "to-ebs",
        "-i",
        image.to_str().unwrap(),
        "-n",
        "resumed-ami",
        "--allow-unbootable",
        "--arch",
        "x86_64",
        "--region",
        "us-east-1",
        "--json",
    ];
    kill_when(&cloud, &args, "the completion asked for", |c| {
        crate::ebs::completes(c) > 0
    });
    let (first, snapshots) = block_puts(&cloud);
    assert_eq!(first.len(), 4);
    let snapshot = snapshots.into_iter().next().unwrap();

    hold.store(false, Ordering::SeqCst);
    cloud.proxy.clear();
    let out = run_ok(&mut cloud.cmd(&args));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["snapshot_id"], snapshot.as_str(), "{report}");
    assert_eq!(report["blocks_sent"], 0, "{report}");
    assert_eq!(report["blocks_resumed"], 4, "{report}");
    assert!(
        report["ami_id"].as_str().unwrap().starts_with("ami-"),
        "{report}"
    );
    assert_eq!(start_snapshots(&cloud), 0);
    assert!(block_puts(&cloud).0.is_empty(), "blocks were sent again");
    let register = crate::cloud::ec2_call(&cloud, "RegisterImage").expect("registered");
    assert_eq!(
        register["BlockDeviceMapping.1.Ebs.SnapshotId"], snapshot,
        "{register:?}"
    );
    assert!(journals(&cloud).is_empty(), "{:?}", journals(&cloud));
}

#[test]
fn a_describe_snapshots_answer_about_another_snapshot_is_refused_and_the_snapshot_deleted() {
    // The first EC2 request of a --no-register run is the wait's DescribeSnapshots: it is
    // answered about some other, completed snapshot, which must not count as ours.
    let forged = Arc::new(AtomicBool::new(false));
    let once = forged.clone();
    let plan = move |req: &RequestHead| {
        let ec2 = req
            .header("authorization")
            .is_some_and(|a| a.contains("/ec2/"));
        if req.method == "POST" && ec2 && !once.swap(true, Ordering::SeqCst) {
            return Action::Respond(
                200,
                b"<DescribeSnapshotsResponse xmlns=\"http://ec2.amazonaws.com/doc/2016-11-15/\">\
                  <requestId>r-1</requestId><snapshotSet><item>\
                  <snapshotId>snap-0000000000someone</snapshotId><volumeId>vol-1</volumeId>\
                  <status>completed</status><startTime>2026-01-01T00:00:00.000Z</startTime>\
                  <progress>100%</progress><ownerId>123456789012</ownerId>\
                  <volumeSize>1</volumeSize><encrypted>false</encrypted>\
                  </item></snapshotSet></DescribeSnapshotsResponse>"
                    .to_vec(),
            );
        }
        Action::Forward
    };
    let cloud = Cloud::start_with(Box::new(plan));
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("disk.img");
    crate::ebs::disk_image(&image);
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
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        forged.load(Ordering::SeqCst),
        "no DescribeSnapshots was sent"
    );
    assert!(
        err.contains("it answered about") && err.contains("snap-0000000000someone"),
        "{err}"
    );
    let deleted =
        crate::cloud::ec2_call(&cloud, "DeleteSnapshot").expect("the snapshot is deleted");
    assert!(err.contains(&deleted["SnapshotId"]), "{err}");
    assert!(journals(&cloud).iter().all(|n| !n.ends_with(".journal")));
}
