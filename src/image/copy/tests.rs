//! These tests need root (mount, mknod, chown, trusted.* xattrs), which CI has; they fail
//! loudly rather than skip without it. Source and destination live on a fresh ext4 loop
//! mount, since /tmp may be tmpfs or overlay without full xattr/ACL support.
//!
//! Documented differences between source and copy: ctime and inode numbers; directory
//! sizes and block counts (they depend on the directory's history). Atimes, directories'
//! included, are compared; the ext4 is mounted `noatime` so that the checking walker's own
//! reads cannot move them (the copy itself reads with `O_NOATIME`).

use super::attrs::CAPABILITY_XATTR;
use super::worker::copy_data;
use super::*;
use crate::image::testing::require_root;
use nix::fcntl::openat;
use nix::sys::stat::Mode;
use nix::sys::stat::{SFlag, UtimensatFlags, mkdirat, utimensat};
use nix::sys::time::TimeSpec;
use nix::unistd::symlinkat;
use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt as _;
use std::os::unix::fs::MetadataExt;
use std::process::Command;

fn run(cmd: &str, args: &[&str]) {
    let status = Command::new(cmd)
        .args(args)
        .status()
        .unwrap_or_else(|e| panic!("running {cmd}: {e}"));
    assert!(status.success(), "{cmd} {args:?} failed: {status}");
}

/// A mounted filesystem, unmounted on drop.
struct MountGuard {
    path: PathBuf,
}

impl Drop for MountGuard {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(&self.path)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = Command::new("umount").arg("-l").arg(&self.path).status();
        }
    }
}

/// A small ext4 filesystem on a loop device (user xattrs and ACLs are ext4 defaults).
fn ext4(dir: &Path) -> MountGuard {
    let image = dir.join("fs.img");
    File::create(&image)
        .and_then(|f| f.set_len(256 << 20))
        .expect("image file");
    run(
        "mkfs.ext4",
        &[
            "-q",
            "-F",
            "-E",
            "nodiscard",
            image.to_str().expect("utf-8"),
        ],
    );
    let mnt = dir.join("mnt");
    std::fs::create_dir(&mnt).expect("mount point");
    run(
        "mount",
        &[
            "-o",
            // noatime: the checking walker's own reads must not move atimes (relatime
            // would); explicit utimensat still sets them, which is what is compared.
            "loop,noatime",
            image.to_str().expect("utf-8"),
            mnt.to_str().expect("utf-8"),
        ],
    );
    MountGuard { path: mnt }
}

fn mount_fs(fstype: &str, options: &str, at: &Path) -> MountGuard {
    run(
        "mount",
        &[
            "-t",
            fstype,
            "-o",
            options,
            fstype,
            at.to_str().expect("utf-8"),
        ],
    );
    MountGuard {
        path: at.to_owned(),
    }
}

fn b(bytes: &[u8]) -> &Path {
    Path::new(OsStr::from_bytes(bytes))
}

fn set_times(path: &Path, atime: (i64, i64), mtime: (i64, i64)) {
    utimensat(
        AT_FDCWD,
        path,
        &TimeSpec::new(atime.0, atime.1),
        &TimeSpec::new(mtime.0, mtime.1),
        UtimensatFlags::NoFollowSymlink,
    )
    .expect("utimensat");
}

fn lchown(path: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::lchown(path, Some(uid), Some(gid)).expect("lchown");
}

fn chmod(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

/// Raw POSIX ACL xattr value (the kernel's `posix_acl_xattr` layout: version 2, then
/// sorted (tag u16, perm u16, id u32) entries).
fn acl(entries: &[(u16, u16, u32)]) -> Vec<u8> {
    let mut v = 2u32.to_le_bytes().to_vec();
    for &(tag, perm, id) in entries {
        v.extend(tag.to_le_bytes());
        v.extend(perm.to_le_bytes());
        v.extend(id.to_le_bytes());
    }
    v
}

const NO_ID: u32 = u32::MAX;

fn sample_acl() -> Vec<u8> {
    // user::rwx user:12345:r-x group::r-x mask::rwx other::r-x
    acl(&[
        (0x01, 7, NO_ID),
        (0x02, 5, 12345),
        (0x04, 5, NO_ID),
        (0x10, 7, NO_ID),
        (0x20, 5, NO_ID),
    ])
}

/// VFS_CAP_REVISION_2 value granting cap_net_raw (bit 13), permitted + effective.
fn cap_net_raw() -> Vec<u8> {
    let mut v = 0x0200_0001u32.to_le_bytes().to_vec();
    for word in [1u32 << 13, 0, 0, 0] {
        v.extend(word.to_le_bytes());
    }
    v
}

const DEEP_LEVELS: usize = 300;
const DEEP_NAME: &str = "a-rather-long-directory-name-for-depth";
const GIB: u64 = 1 << 30;
const ISLANDS: [u64; 3] = [0, 512 << 20, (1 << 30) - 4096];

/// Builds the source tree with every kind of entry and attribute.
fn build_source(src: &Path) -> MountGuard {
    std::fs::create_dir(src).expect("src");
    xattr::set(src, "user.root", b"root of the tree").expect("xattr");
    chmod(src, 0o751);

    let plain = src.join(".dotfile");
    std::fs::write(&plain, b"hello dot file").expect("write");
    xattr::set(&plain, "user.comment", b"u").expect("xattr");
    xattr::set(&plain, "trusted.overlay", b"\x00\xfft").expect("xattr");
    xattr::set(&plain, "security.selinux", b"system_u:object_r:etc_t:s0\0").expect("xattr");
    set_times(
        &plain,
        (1_111_111_111, 111_111_111),
        (1_234_567_890, 123_456_789),
    );

    std::fs::create_dir(src.join("bin")).expect("mkdir");
    let ping = src.join("bin/ping");
    std::fs::write(&ping, vec![0x7f; 5000]).expect("write");
    lchown(&ping, 0, 12);
    chmod(&ping, 0o710);
    xattr::set(&ping, CAPABILITY_XATTR, &cap_net_raw()).expect("capability");
    let suid = src.join("bin/su");
    std::fs::write(&suid, b"#!suid").expect("write");
    chmod(&suid, 0o4755);
    let sgid = src.join("bin/wall");
    std::fs::write(&sgid, b"#!sgid").expect("write");
    lchown(&sgid, 0, 5);
    chmod(&sgid, 0o2755);

    let acl_dir = src.join("shared");
    std::fs::create_dir(&acl_dir).expect("mkdir");
    xattr::set(&acl_dir, "system.posix_acl_access", &sample_acl()).expect("acl");
    xattr::set(&acl_dir, "system.posix_acl_default", &sample_acl()).expect("acl");
    // Created after the default ACL: inherits it, as on a real system.
    std::fs::write(acl_dir.join("inherited"), b"acl").expect("write");
    let sticky = src.join("tmp");
    std::fs::create_dir(&sticky).expect("mkdir");
    chmod(&sticky, 0o1777);
    let setgid_dir = src.join("srv");
    std::fs::create_dir(&setgid_dir).expect("mkdir");
    lchown(&setgid_dir, 12345, 54321);
    chmod(&setgid_dir, 0o2770);

    // Hard links across directories, one of them with a non-UTF-8 name.
    for d in ["links1", "links2"] {
        std::fs::create_dir(src.join(d)).expect("mkdir");
    }
    let first = src.join("links1/first");
    std::fs::write(&first, b"one inode, three names").expect("write");
    lchown(&first, 12345, 54321);
    xattr::set(&first, "user.linked", b"yes").expect("xattr");
    std::fs::hard_link(&first, src.join("links2/second")).expect("link");
    std::fs::hard_link(&first, src.join(b(b"links2/th\xefrd"))).expect("link");

    // 1 GiB sparse file with three 4 KiB islands.
    let sparse = File::create(src.join("sparse.img")).expect("create");
    sparse.set_len(GIB).expect("set_len");
    for (i, &off) in ISLANDS.iter().enumerate() {
        let fill = u8::try_from(i + 1).expect("small");
        sparse.write_all_at(&[fill; 4096], off).expect("island");
    }
    drop(sparse);

    std::fs::create_dir(src.join("dev")).expect("mkdir");
    let dev = |name: &str, kind: SFlag, major: u64, minor: u64| {
        let path = src.join("dev").join(name);
        nix::sys::stat::mknod(
            &path,
            kind,
            Mode::from_bits_truncate(0o620),
            nix::sys::stat::makedev(major, minor),
        )
        .expect("mknod");
        path
    };
    let null = dev("null", SFlag::S_IFCHR, 1, 3);
    lchown(&null, 0, 5);
    xattr::set(&null, "trusted.node", b"dev").expect("xattr on device");
    dev("loop0", SFlag::S_IFBLK, 7, 0);
    let fifo = dev("initctl", SFlag::S_IFIFO, 0, 0);
    chmod(&fifo, 0o600);
    let socket = src.join("dev/log");
    drop(std::os::unix::net::UnixListener::bind(&socket).expect("socket"));

    // Non-UTF-8 names and symlink targets, owners that exist nowhere.
    let latin1 = src.join(b(b"caf\xe9"));
    std::fs::create_dir(&latin1).expect("mkdir");
    std::fs::write(latin1.join(b(b"men\xfc")), b"latin-1").expect("write");
    let link = src.join("link");
    std::os::unix::fs::symlink(b(b"tar\xffget/../../etc"), &link).expect("symlink");
    lchown(&link, 12345, 54321);
    xattr::set(&link, "trusted.on_symlink", b"l").expect("xattr on symlink");
    set_times(&link, (1_000_000_000, 1), (1_000_000_001, 999_999_999));
    std::os::unix::fs::symlink("/etc/passwd", src.join("abs-link")).expect("symlink");

    // 300 levels, about 12 KB of path: beyond PATH_MAX, so built with *at calls.
    let mut dir = open_dir(AT_FDCWD, src).expect("open src");
    for level in 0..DEEP_LEVELS {
        let name = format!("{DEEP_NAME}-{level:03}");
        mkdirat(&dir, name.as_str(), Mode::from_bits_truncate(0o755)).expect("mkdirat");
        dir = open_dir(&dir, name.as_str()).expect("open deep");
    }
    let bottom = openat(
        &dir,
        "bottom",
        OFlag::O_WRONLY | OFlag::O_CREAT,
        Mode::from_bits_truncate(0o640),
    )
    .map(File::from)
    .expect("bottom");
    bottom.write_all_at(b"deep", 0).expect("write");
    bottom.set_xattr("user.deep", b"d").expect("xattr");
    let bottom_link_dir = dir;
    symlinkat("bottom", &bottom_link_dir, "bottom-link").expect("symlinkat");

    // A nested mount point: becomes an empty directory with the mount root's attributes.
    let mnt = src.join("run");
    std::fs::create_dir(&mnt).expect("mkdir");
    let guard = mount_fs("tmpfs", "mode=0750,uid=12345,gid=54321,size=1m", &mnt);
    std::fs::write(mnt.join("pid"), b"42").expect("write into tmpfs");
    guard
}

#[derive(Debug, PartialEq, Eq)]
struct Entry {
    mode: u32,
    uid: u32,
    gid: u32,
    rdev: u64,
    size: Option<u64>,
    mtime: (i64, i64),
    atime: (i64, i64),
    nlink: Option<u64>,
    xattrs: BTreeMap<OsString, Vec<u8>>,
    link: Option<OsString>,
    crc: Option<u32>,
    /// Only for the sparse file: allocated bytes must stay small.
    blocks: Option<u64>,
}

struct Tree {
    entries: BTreeMap<PathBuf, Entry>,
    /// Names of each multiply-linked inode, as sorted groups.
    link_groups: Vec<Vec<PathBuf>>,
}

/// An independent walker: std metadata through `/proc/self/fd/<dir>/<name>` (no PATH_MAX
/// limit), path-based xattr calls, recursion, and no knowledge of the copy code.
fn walk(root: &Path) -> Tree {
    let mut entries = BTreeMap::new();
    let mut inodes: BTreeMap<u64, Vec<PathBuf>> = BTreeMap::new();
    let root_md = std::fs::symlink_metadata(root).expect("lstat root");
    let root_dev = root_md.dev();
    entries.insert(PathBuf::new(), entry(root, &root_md));
    let root_dir = File::open(root).expect("open root");
    walk_dir(
        &root_dir,
        Path::new(""),
        root_dev,
        &mut entries,
        &mut inodes,
    );
    let mut link_groups: Vec<Vec<PathBuf>> = inodes.into_values().filter(|v| v.len() > 1).collect();
    for group in &mut link_groups {
        group.sort();
    }
    link_groups.sort();
    Tree {
        entries,
        link_groups,
    }
}

fn walk_dir(
    dir: &File,
    rel: &Path,
    root_dev: u64,
    entries: &mut BTreeMap<PathBuf, Entry>,
    inodes: &mut BTreeMap<u64, Vec<PathBuf>>,
) {
    let base = PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd()));
    let mut names: Vec<OsString> = std::fs::read_dir(&base)
        .expect("read_dir")
        .map(|e| e.expect("dirent").file_name())
        .collect();
    names.sort();
    let mut subdirs = Vec::new();
    for name in names {
        let path = base.join(&name);
        let md = std::fs::symlink_metadata(&path).expect("lstat");
        let child = rel.join(&name);
        if md.is_file() && md.nlink() > 1 {
            inodes.entry(md.ino()).or_default().push(child.clone());
        }
        entries.insert(child.clone(), entry(&path, &md));
        // Do not descend into other filesystems: the copy must leave them empty.
        if md.is_dir() && md.dev() == root_dev {
            subdirs.push((name, child));
        }
    }
    for (name, child) in subdirs {
        let sub = File::open(base.join(&name)).expect("open dir");
        walk_dir(&sub, &child, root_dev, entries, inodes);
    }
}

fn entry(path: &Path, md: &std::fs::Metadata) -> Entry {
    let xattrs = xattr::list(path)
        .expect("listxattr")
        .map(|n| {
            let v = xattr::get(path, &n).expect("getxattr").expect("present");
            (n, v)
        })
        .collect();
    let is_file = md.is_file();
    let crc = is_file.then(|| {
        let f = File::open(path).expect("open file");
        let mut hasher = crc32fast::Hasher::new();
        let mut buf = vec![0; 4 << 20];
        let mut off = 0;
        loop {
            let n = f.read_at(&mut buf, off).expect("read");
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            off += n as u64;
        }
        hasher.finalize()
    });
    Entry {
        mode: md.mode(),
        uid: md.uid(),
        gid: md.gid(),
        rdev: md.rdev(),
        size: (!md.is_dir()).then(|| md.size()),
        mtime: (md.mtime(), md.mtime_nsec()),
        atime: (md.atime(), md.atime_nsec()),
        nlink: (!md.is_dir()).then(|| md.nlink()),
        xattrs,
        link: md
            .file_type()
            .is_symlink()
            .then(|| std::fs::read_link(path).expect("readlink").into_os_string()),
        crc,
        blocks: (is_file && md.size() >= GIB).then(|| md.blocks()),
    }
}

/// Compares two walks, printing only the differing entries.
fn assert_same(want: &BTreeMap<PathBuf, Entry>, got: &BTreeMap<PathBuf, Entry>, what: &str) {
    let mut diffs = Vec::new();
    for (path, w) in want {
        match got.get(path) {
            Some(g) if g == w => {}
            g => diffs.push(format!("{}:\n  want {w:?}\n  got  {g:?}", path.display())),
        }
    }
    for path in got.keys().filter(|p| !want.contains_key(*p)) {
        diffs.push(format!("{}: unexpected", path.display()));
    }
    assert!(diffs.is_empty(), "{what} differs:\n{}", diffs.join("\n"));
}

#[test]
#[ignore = "needs root: loop devices, mounts, namespaces (scripts/test.sh runs it as root)"]
fn copies_every_entry_and_attribute_faithfully() {
    require_root();
    let tmp = tempfile::tempdir().expect("tempdir");
    let fs = ext4(tmp.path());
    let src = fs.path.join("src");
    let dst = fs.path.join("dst");
    let run_mount = build_source(&src);
    std::fs::create_dir(&dst).expect("dst");
    // A default ACL on the destination root must not leak into the copy.
    xattr::set(&dst, "system.posix_acl_default", &sample_acl()).expect("acl");

    let before = walk(&src);
    let opts = CopyOptions {
        threads: 2,
        ..CopyOptions::default()
    };
    let report = copy_tree(&src, &dst, &opts, &crate::progress::NoProgress).expect("copy");
    let after_src = walk(&src);
    let copy = walk(&dst);
    drop(run_mount);

    assert_same(&before.entries, &after_src.entries, "source after the copy");
    let mut expected = before.entries;
    // The mount point is copied as an empty directory with the mount root's attributes
    // (the walker does not descend into it either).
    assert!(expected.contains_key(Path::new("run")));
    assert!(!copy.entries.contains_key(Path::new("run/pid")));
    // Sockets are not copied; everything else is, identically.
    assert!(expected.remove(Path::new("dev/log")).is_some());
    assert_same(&expected, &copy.entries, "copy");
    assert_eq!(copy.link_groups, before.link_groups);
    assert_eq!(copy.link_groups.len(), 1);
    assert_eq!(copy.link_groups[0].len(), 3);

    let sparse = &copy.entries[Path::new("sparse.img")];
    assert!(
        sparse.blocks.is_some_and(|blocks| blocks * 512 < (1 << 20)),
        "sparse file allocated {:?} blocks",
        sparse.blocks
    );
    let deep: PathBuf = (0..DEEP_LEVELS)
        .map(|l| format!("{DEEP_NAME}-{l:03}"))
        .chain(["bottom".to_owned()])
        .collect();
    assert!(deep.as_os_str().len() > 4096);
    assert_eq!(copy.entries[&deep].crc, Some(crc32fast::hash(b"deep")));

    assert_eq!(report.files, 9, "{report:#?}");
    assert_eq!(report.hardlinks, 2);
    assert_eq!(report.symlinks, 3);
    assert_eq!(report.devices, 2);
    assert_eq!(report.fifos, 1);
    assert_eq!(report.sockets_skipped, 1);
    assert_eq!(report.dirs, 10 + DEEP_LEVELS as u64);
    assert_eq!(report.sparse_files, 1);
    assert_eq!(report.bytes, 3 * 4096 + 5000 + 2 * 6 + 14 + 3 + 22 + 7 + 4);
    assert_eq!(report.mount_points, vec![src.join("run")]);
    assert!(report.lossy.is_empty() && report.changed.is_empty());
    assert_eq!(report.xattrs, 12, "{report:#?}");
}

#[test]
fn copies_what_is_there_when_a_file_changed_size() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let path = tmp.path().join("live");
    let data: Vec<u8> = (0..10_000u32).map(|i| i.to_le_bytes()[0] ^ 0x5a).collect();
    std::fs::write(&path, &data).expect("write");
    let src = File::open(&path).expect("open");
    let mut buf = Vec::new();
    let progress = crate::progress::NoProgress;

    // Recorded as 20000 bytes, now only 10000: the copy is the 10000 that are there.
    let shrunk = tmp.path().join("shrunk");
    let dst = File::create(&shrunk).expect("create");
    let out = copy_data(&src, &dst, 20_000, &mut buf, &progress).expect("copy");
    assert!(out.short && !out.holes);
    assert_eq!(out.bytes, 10_000);
    assert_eq!(std::fs::read(&shrunk).expect("read"), data);

    // Recorded as 4000 bytes, now 10000: the recorded length is copied.
    let grown = tmp.path().join("grown");
    let dst = File::create(&grown).expect("create");
    let out = copy_data(&src, &dst, 4_000, &mut buf, &progress).expect("copy");
    assert!(!out.short && !out.holes);
    assert_eq!(out.bytes, 4_000);
    assert_eq!(std::fs::read(&grown).expect("read"), &data[..4_000]);
}

#[test]
#[ignore = "needs root: loop devices, mounts, namespaces (scripts/test.sh runs it as root)"]
fn refuses_a_destination_that_drops_attributes_unless_lossy() {
    require_root();
    let tmp = tempfile::tempdir().expect("tempdir");
    let fs = ext4(tmp.path());
    let src = fs.path.join("src");
    std::fs::create_dir(&src).expect("src");
    let plain = src.join("plain");
    std::fs::write(&plain, b"no attributes").expect("write");
    let user = src.join("user");
    std::fs::write(&user, b"u").expect("write");
    xattr::set(&user, "user.x", b"1").expect("xattr");
    let ping = src.join("ping");
    std::fs::write(&ping, b"p").expect("write");
    xattr::set(&ping, CAPABILITY_XATTR, &cap_net_raw()).expect("capability");
    let acl_dir = src.join("acl");
    std::fs::create_dir(&acl_dir).expect("mkdir");
    xattr::set(&acl_dir, "system.posix_acl_access", &sample_acl()).expect("acl");
    let link = src.join("link");
    std::os::unix::fs::symlink("plain", &link).expect("symlink");
    xattr::set(&link, "trusted.t", b"t").expect("xattr");
    let lossy_paths = vec![acl_dir.clone(), link.clone(), ping.clone(), user.clone()];

    // ramfs keeps no xattrs at all (EOPNOTSUPP for every namespace).
    let dst_mnt = tmp.path().join("ramfs");
    std::fs::create_dir(&dst_mnt).expect("mkdir");
    let _ramfs = mount_fs("ramfs", "mode=0755", &dst_mnt);
    let strict = dst_mnt.join("strict");
    std::fs::create_dir(&strict).expect("mkdir");
    let opts = CopyOptions::default();
    let err = copy_tree(&src, &strict, &opts, &crate::progress::NoProgress)
        .expect_err("a lossy copy must fail");
    let CopyError::NotFaithful { entries } = &err else {
        panic!("wrong error: {err}");
    };
    let mut paths: Vec<_> = entries.iter().map(|(p, _)| p.clone()).collect();
    paths.dedup();
    assert_eq!(paths, lossy_paths);
    let message = err.to_string();
    for path in &lossy_paths {
        assert!(message.contains(&path.display().to_string()), "{message}");
    }
    assert!(message.contains("security.capability"), "{message}");

    let lossy = dst_mnt.join("lossy");
    std::fs::create_dir(&lossy).expect("mkdir");
    let opts = CopyOptions {
        allow_lossy: true,
        threads: 1,
        ..CopyOptions::default()
    };
    let report = copy_tree(&src, &lossy, &opts, &crate::progress::NoProgress).expect("lossy copy");
    let mut paths: Vec<_> = report.lossy.iter().map(|(p, _)| p.clone()).collect();
    paths.dedup();
    assert_eq!(paths, lossy_paths);
    assert_eq!(std::fs::read(lossy.join("user")).expect("read"), b"u");
    assert_eq!(report.files, 3);
    assert_eq!(report.xattrs, 0);
}

#[test]
#[ignore = "needs root: loop devices, mounts, namespaces (scripts/test.sh runs it as root)"]
fn excludes_and_empties_directories_and_checks_their_anchoring() {
    require_root();
    let tmp = tempfile::tempdir().expect("tempdir");
    let src = tmp.path().join("src");
    for dir in ["proc/1", "var/cache/apt", "var/lib"] {
        std::fs::create_dir_all(src.join(dir)).expect("mkdir");
    }
    chmod(&src.join("proc"), 0o555);
    std::fs::write(src.join("proc/1/status"), b"x").expect("write");
    std::fs::write(src.join("var/cache/apt/pkgcache.bin"), b"x").expect("write");
    std::fs::write(src.join("var/lib/keep"), b"keep").expect("write");
    std::fs::write(src.join("secret.pem"), b"key").expect("write");
    let dst = tmp.path().join("dst");
    std::fs::create_dir(&dst).expect("mkdir");
    let opts = CopyOptions {
        exclude: vec![src.join("var/cache"), src.join("secret.pem")],
        empty_dirs: vec![src.join("proc")],
        threads: 1,
        ..CopyOptions::default()
    };
    let report = copy_tree(&src, &dst, &opts, &crate::progress::NoProgress).expect("copy");
    assert_eq!(
        report.excluded,
        vec![src.join("secret.pem"), src.join("var/cache")]
    );
    let proc = std::fs::symlink_metadata(dst.join("proc")).expect("proc kept");
    assert_eq!(proc.mode() & 0o7777, 0o555);
    assert_eq!(std::fs::read_dir(dst.join("proc")).expect("ls").count(), 0);
    assert!(!dst.join("var/cache").exists());
    assert!(!dst.join("secret.pem").exists());
    assert_eq!(
        std::fs::read(dst.join("var/lib/keep")).expect("read"),
        b"keep"
    );
    assert_eq!(report.files, 1);

    // An exclusion anchored elsewhere (the classic tool's --volume bug) is an error.
    let opts = CopyOptions {
        exclude: vec![PathBuf::from("/proc")],
        ..CopyOptions::default()
    };
    let err = copy_tree(&src, &dst, &opts, &crate::progress::NoProgress)
        .expect_err("exclusion outside the source");
    assert!(matches!(err, CopyError::OutsideSource { .. }), "{err}");
}
