//! Unit tests of part naming, the writer, the staging directory, stale-file clean-up and the
//! reader.

use std::fs;
use std::io::{Read, Write};

use super::staging::{Syncer, stale_pid};
use super::*;

#[test]
fn width_follows_the_count() {
    let cases = [
        (1, 1, "x.part.0"),
        (9, 1, "x.part.8"),
        (10, 2, "x.part.09"),
        (11, 2, "x.part.10"),
        (99, 2, "x.part.98"),
        (100, 3, "x.part.099"),
        (101, 3, "x.part.100"),
        (999, 3, "x.part.998"),
        (1000, 4, "x.part.0999"),
        (1025, 4, "x.part.1024"),
    ];
    for (count, width, last) in cases {
        assert_eq!(part_width(count), width, "count {count}");
        assert_eq!(part_name("x", count - 1, part_width(count)), last);
    }
    assert_eq!(part_name("x", 0, part_width(10)), "x.part.00");
}

fn split(len: usize) -> Vec<Vec<u8>> {
    let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
    let mut w = PartWriter::new(MemorySink::default());
    // Odd write sizes so part boundaries fall inside writes.
    for chunk in data.chunks(777_777) {
        w.write_all(chunk).unwrap();
    }
    let (sink, infos) = w.finish().unwrap();
    assert_eq!(sink.parts.concat(), data);
    for (i, (info, part)) in infos.iter().zip(&sink.parts).enumerate() {
        assert_eq!(info.index, i as u64);
        assert_eq!(info.size, part.len() as u64);
        assert_eq!(info.sha1, crate::bundle::digest::sha1_hex(part));
    }
    sink.parts
}

#[test]
fn part_boundaries() {
    let p = PART_SIZE_BYTES;
    let sizes = |len| split(len).iter().map(Vec::len).collect::<Vec<_>>();
    assert_eq!(sizes(16), vec![16]);
    assert_eq!(sizes(p - 16), vec![p - 16]);
    assert_eq!(sizes(p), vec![p]);
    assert_eq!(sizes(p + 16), vec![p, 16]);
    assert_eq!(sizes(2 * p), vec![p, p]);
}

#[test]
fn staging_commit_renames_and_cleans_up() {
    let dest = tempfile::tempdir().unwrap();
    let staging = StagingDir::create(dest.path(), "img").unwrap();
    let staging_path = staging.path().to_path_buf();
    let mut w = PartWriter::new(staging.sink());
    w.write_all(&vec![7u8; PART_SIZE_BYTES + 5]).unwrap();
    let (sink, parts) = w.finish().unwrap();
    let manifest = staging
        .commit(sink, "img", &parts, b"<?xml version='1.0'?>")
        .unwrap();
    assert_eq!(manifest, dest.path().join("img.manifest.xml"));
    assert!(!staging_path.exists());
    let mut names: Vec<_> = fs::read_dir(dest.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["img.manifest.xml", "img.part.0", "img.part.1"]);
    use std::os::unix::fs::PermissionsExt;
    let mode = fs::metadata(dest.path().join("img.part.1"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[test]
fn parts_are_made_durable_in_the_background_before_the_commit() {
    let dest = tempfile::tempdir().unwrap();
    let staging = StagingDir::create(dest.path(), "img").unwrap();
    let mut w = PartWriter::new(staging.sink());
    w.write_all(&vec![3u8; 2 * PART_SIZE_BYTES + 1]).unwrap();
    let (mut sink, parts) = w.finish().unwrap();
    assert_eq!(parts.len(), 3);
    // Every finished part went to the fsync thread; the commit has none left to sync.
    assert_eq!(sink.finish_syncing().unwrap(), [0, 1, 2]);
    staging.commit(sink, "img", &parts, b"<m/>").unwrap();
    for i in 0..3 {
        assert!(dest.path().join(format!("img.part.{i}")).is_file());
    }
}

#[test]
fn a_failed_background_fsync_fails_the_next_part_and_the_commit() {
    // fsync of /dev/null fails with EINVAL: a stand-in for a disk error or a full filesystem
    // (delayed allocation reports ENOSPC only at write-back).
    let dev_null = || {
        fs::OpenOptions::new()
            .write(true)
            .open("/dev/null")
            .unwrap()
    };
    let tmp = tempfile::tempdir().unwrap();
    let mut syncer = Syncer::start().unwrap();
    syncer.sync(0, dev_null()).unwrap();
    // Once the thread has failed, handing over the next part reports its error.
    let mut err = None;
    for index in 1..1000 {
        let part = fs::File::create(tmp.path().join(format!("p{index}"))).unwrap();
        if let Err(e) = syncer.sync(index, part) {
            err = Some(e);
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let err = err.expect("the failed fsync was never reported");
    assert_eq!(err.raw_os_error(), Some(libc::EINVAL), "{err}");

    // The commit reports it too, and leaves no bundle: no manifest, no part, no staging.
    let dest = tempfile::tempdir().unwrap();
    let staging = StagingDir::create(dest.path(), "img").unwrap();
    let mut w = PartWriter::new(staging.sink());
    w.write_all(b"data").unwrap();
    let (mut sink, mut parts) = w.finish().unwrap();
    sink.sync_in_background(1, dev_null()).unwrap();
    parts.push(PartInfo {
        index: 1,
        size: 0,
        sha1: String::new(),
    });
    let err = staging
        .commit(sink, "img", &parts, b"<m/>")
        .expect_err("failed fsync not reported");
    assert_eq!(err.raw_os_error(), Some(libc::EINVAL), "{err}");
    assert_eq!(fs::read_dir(dest.path()).unwrap().count(), 0);
}

#[test]
fn commit_refuses_the_sink_of_another_staging_directory() {
    let dest = tempfile::tempdir().unwrap();
    let a = StagingDir::create(dest.path(), "a").unwrap();
    let b = StagingDir::create(dest.path(), "b").unwrap();
    let mut w = PartWriter::new(b.sink());
    w.write_all(b"x").unwrap();
    let (sink, parts) = w.finish().unwrap();
    let err = a.commit(sink, "a", &parts, b"<m/>").unwrap_err();
    assert!(err.to_string().contains("part sink of"), "{err}");
    assert!(!dest.path().join("a.manifest.xml").exists());
}

#[test]
fn dropped_staging_leaves_nothing() {
    let dest = tempfile::tempdir().unwrap();
    {
        let staging = StagingDir::create(dest.path(), "img").unwrap();
        let mut w = PartWriter::new(staging.sink());
        w.write_all(&[1, 2, 3]).unwrap();
        w.finish().unwrap();
    }
    assert_eq!(fs::read_dir(dest.path()).unwrap().count(), 0);
}

#[test]
fn reader_checks_each_part() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a");
    let b = dir.path().join("b");
    fs::write(&a, b"hello ").unwrap();
    fs::write(&b, b"world").unwrap();
    let good = vec![
        ExpectedPart {
            path: a.clone(),
            filename: "a".into(),
            sha1: crate::bundle::digest::sha1_hex(b"hello ").to_uppercase(),
        },
        ExpectedPart {
            path: b.clone(),
            filename: "b".into(),
            sha1: crate::bundle::digest::sha1_hex(b"world"),
        },
    ];
    let mut out = String::new();
    PartReader::new(good.clone())
        .read_to_string(&mut out)
        .unwrap();
    assert_eq!(out, "hello world");

    fs::write(&b, b"World").unwrap();
    let err = PartReader::new(good.clone())
        .read_to_end(&mut Vec::new())
        .unwrap_err();
    assert!(err.to_string().contains("part b is corrupt"), "{err}");

    fs::remove_file(&b).unwrap();
    let err = PartReader::new(good)
        .read_to_end(&mut Vec::new())
        .unwrap_err();
    assert!(err.to_string().contains("reading part b"), "{err}");
}

#[test]
fn stale_names_are_matched_exactly() {
    let p = ".amibundle-disk-";
    assert_eq!(stale_pid(".amibundle-disk-123-0", p, "", true), Some(123));
    // Another bundle's staging directory ("disk-5"), or other shapes, are not ours.
    assert_eq!(stale_pid(".amibundle-disk-5-123-0", p, "", true), None);
    assert_eq!(stale_pid(".amibundle-disk-123", p, "", true), None);
    assert_eq!(stale_pid(".amibundle-disk--0", p, "", true), None);
    assert_eq!(stale_pid(".amibundle-disk-12a-0", p, "", true), None);
    let q = ".x.part.1.amibundle-";
    assert_eq!(
        stale_pid(".x.part.1.amibundle-77.partial", q, ".partial", false),
        Some(77)
    );
    assert_eq!(
        stale_pid(".x.part.1.amibundle-77-0.partial", q, ".partial", false),
        None
    );
    assert_eq!(
        stale_pid(".x.part.10.amibundle-77.partial", q, ".partial", false),
        None
    );
    assert_eq!(
        stale_pid(".x.part.1.amibundle-77", q, ".partial", false),
        None
    );
}

#[test]
fn only_entries_of_processes_that_are_gone_are_removed() {
    let dir = tempfile::tempdir().unwrap();
    // pid_max is at most 2^22: this process cannot exist.
    let gone = 4_000_000_000u32;
    let me = std::process::id();
    let names = [
        format!(".amibundle-d-{gone}-0"),
        format!(".amibundle-d-{me}-0"),
        ".amibundle-d-1-0".to_string(),
        format!(".amibundle-d-5-{gone}-0"),
    ];
    for n in &names {
        fs::create_dir(dir.path().join(n)).unwrap();
        fs::write(dir.path().join(n).join("part.0"), b"x").unwrap();
    }
    let file = format!(".d.part.0.amibundle-{gone}.partial");
    fs::write(dir.path().join(&file), b"x").unwrap();
    remove_stale(dir.path(), ".amibundle-d-", "", true);
    remove_stale(dir.path(), ".d.part.0.amibundle-", ".partial", false);
    let mut left: Vec<String> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    left.sort();
    let mut want = names[1..].to_vec();
    want.sort();
    assert_eq!(left, want);
}
