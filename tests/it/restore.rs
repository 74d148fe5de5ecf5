//! The data-volume backup use, both ways through S3: `bundle-vol --volume DIR --upload` streams a
//! directory into S3 and `restore -m s3://…` streams it back into an empty directory; every
//! entry comes back with its type, data, mode, owner, times, xattrs and hard links. Needs root
//! (loop devices and mounts), as CI has.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};

use crate::cloud::Cloud;
use crate::support::*;

/// Everything the restore must reproduce about one entry, read with std and the xattr crate
/// (not with amibundle's own copy code).
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Entry {
    kind: &'static str,
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: (i64, i64),
    rdev: u64,
    content: Option<String>,
    link: Option<PathBuf>,
    xattrs: BTreeMap<String, Vec<u8>>,
    /// Index of the first path (in walk order) naming the same inode, for hard links.
    same_as: Option<PathBuf>,
}

pub(crate) fn walk(root: &Path) -> BTreeMap<PathBuf, Entry> {
    let mut out = BTreeMap::new();
    let mut inodes: BTreeMap<u64, PathBuf> = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(path) = stack.pop() {
        let meta = fs::symlink_metadata(&path).unwrap();
        let rel = path.strip_prefix(root).unwrap().to_path_buf();
        let ft = meta.file_type();
        let kind = if ft.is_dir() {
            "dir"
        } else if ft.is_symlink() {
            "symlink"
        } else if ft.is_file() {
            "file"
        } else {
            "special"
        };
        let same_as = if ft.is_file() && meta.nlink() > 1 {
            match inodes.get(&meta.ino()) {
                Some(first) => Some(first.clone()),
                None => {
                    inodes.insert(meta.ino(), rel.clone());
                    None
                }
            }
        } else {
            None
        };
        let xattrs = if ft.is_symlink() {
            BTreeMap::new()
        } else {
            xattr::list(&path)
                .unwrap()
                .map(|n| {
                    let v = xattr::get(&path, &n).unwrap().unwrap_or_default();
                    (n.to_string_lossy().into_owned(), v)
                })
                .collect()
        };
        out.insert(
            rel,
            Entry {
                kind,
                mode: meta.mode(),
                uid: meta.uid(),
                gid: meta.gid(),
                // A directory's times are the copy's last act; the root's are the volume's.
                mtime: (meta.mtime(), meta.mtime_nsec()),
                rdev: meta.rdev(),
                content: ft.is_file().then(|| sha1sum(&path)),
                link: ft.is_symlink().then(|| fs::read_link(&path).unwrap()),
                xattrs,
                same_as,
            },
        );
        if ft.is_dir() {
            let mut children: Vec<PathBuf> = fs::read_dir(&path)
                .unwrap()
                .map(|e| e.unwrap().path())
                .collect();
            children.sort();
            children.reverse();
            stack.extend(children);
        }
    }
    out
}

pub(crate) fn make_tree(root: &Path) {
    fs::create_dir_all(root.join("www/static")).unwrap();
    fs::create_dir_all(root.join("db")).unwrap();
    fs::write(root.join("www/index.html"), b"<h1>hello</h1>\n").unwrap();
    fs::write(root.join("db/data.bin"), vec![7u8; 3 << 20]).unwrap();
    fs::hard_link(
        root.join("db/data.bin"),
        root.join("www/static/data-link.bin"),
    )
    .unwrap();
    symlink("../db/data.bin", root.join("www/latest")).unwrap();
    fs::set_permissions(root.join("db"), fs::Permissions::from_mode(0o2750)).unwrap();
    std::os::unix::fs::chown(root.join("db/data.bin"), Some(4321), Some(8765)).unwrap();
    xattr::set(root.join("www/index.html"), "user.origin", b"backup-test").unwrap();
    xattr::set(root.join("db"), "trusted.note", b"kept").unwrap();
    nix::unistd::mkfifo(
        &root.join("db/queue"),
        nix::sys::stat::Mode::from_bits_truncate(0o640),
    )
    .unwrap();
    let name = std::ffi::OsStr::new("caf\u{e9}-\u{1F600}");
    fs::write(root.join("www").join(name), b"unicode").unwrap();
}

#[test]
#[ignore = "needs root: loop devices, mounts, namespaces (scripts/test.sh runs it as root)"]
fn a_directory_goes_to_s3_and_comes_back_identical() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "bundle-vol and restore need root (loop devices, mounts); CI runs as root"
    );
    let cloud = Cloud::start();
    let keys = Keys::new();
    let scratch = tempfile::tempdir_in("/var/tmp").unwrap();
    let src = scratch.path().join("data");
    make_tree(&src);
    let before = walk(&src);

    let mut bundle = cloud.cmd(&[
        "bundle-vol",
        "-v",
        src.to_str().unwrap(),
        "-d",
        scratch.path().to_str().unwrap(),
        "-p",
        "data-backup",
        "-u",
        "123456789012",
        "--no-inherit",
        "--upload",
        "s3://backups/host1",
        "--region",
        "us-east-1",
    ]);
    bundle.args(keys.bundle_args());
    let out = run_ok(&mut bundle);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "backups/host1/data-backup.manifest.xml"
    );
    // Nothing but the source stays in the scratch directory: no image, no parts, no work dir.
    let left: Vec<_> = fs::read_dir(scratch.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, ["data"], "{left:?}");

    let dest = scratch.path().join("restored");
    let mut restore = cloud.cmd(&[
        "restore",
        "-m",
        "s3://backups/host1/data-backup.manifest.xml",
        "-d",
        dest.to_str().unwrap(),
        "-c",
        keys.user_cert().to_str().unwrap(),
        "-k",
        keys.user_key().to_str().unwrap(),
        "--region",
        "us-east-1",
    ]);
    run_ok(&mut restore);
    let after = walk(&dest);
    assert_eq!(
        before.keys().collect::<Vec<_>>(),
        after.keys().collect::<Vec<_>>(),
        "the same entries (no lost+found added)"
    );
    for (path, entry) in &before {
        assert_eq!(entry, &after[path], "{}", path.display());
    }

    // Restoring into a directory that is not empty is refused, naming it.
    let err = run_err(&mut cloud.cmd(&[
        "restore",
        "-m",
        "s3://backups/host1/data-backup.manifest.xml",
        "-d",
        dest.to_str().unwrap(),
        "-k",
        keys.user_key().to_str().unwrap(),
        "--region",
        "us-east-1",
    ]));
    assert!(
        err.contains("not empty") && err.contains("restored"),
        "{err}"
    );
}
