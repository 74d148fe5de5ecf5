//! A destination on a small filesystem (a tmpfs with `size=`, mounted by the test as root):
//! every writing command fails with a message naming the directory and the space (needed when
//! known up front, free), exits non-zero, and leaves nothing in the destination: no manifest, no
//! final-named part or image, no staging or work directory, no loop device or mount.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::cloud::Cloud;
use crate::support::*;

const ACCOUNT: &str = "123456789012";

fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the disk-full tests mount small filesystems (tmpfs size=) and need root; CI runs as root"
    );
}

/// A tmpfs of `mib` MiB mounted on a fresh directory, unmounted on drop.
struct SmallFs {
    dir: PathBuf,
    _parent: tempfile::TempDir,
}

impl SmallFs {
    fn new(mib: u64) -> Self {
        let parent = tempfile::tempdir().unwrap();
        let dir = parent.path().join("small");
        fs::create_dir(&dir).unwrap();
        run_ok(
            Command::new("mount")
                .args(["-t", "tmpfs", "-o"])
                .arg(format!("size={mib}m,mode=0755"))
                .arg("tmpfs")
                .arg(&dir),
        );
        Self {
            dir,
            _parent: parent,
        }
    }

    /// Nothing at all is in it, and no loop device or mount of a run is left under it.
    fn assert_empty(&self, after: &str) {
        let left: Vec<_> = fs::read_dir(&self.dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(
            left.is_empty(),
            "{after} left {left:?} in {}",
            self.dir.display()
        );
        let d = self.dir.to_string_lossy();
        let loops = run_ok(Command::new("losetup").args(["--list", "--noheadings"]));
        assert!(
            !String::from_utf8_lossy(&loops.stdout).contains(d.as_ref()),
            "{after} left a loop device on a file under {d}"
        );
        let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert_eq!(
            mounts
                .lines()
                .filter(|l| l
                    .split(' ')
                    .nth(4)
                    .is_some_and(|m| m.starts_with(d.as_ref())))
                .count(),
            1,
            "{after}: only the small filesystem itself is mounted under {d}"
        );
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.dir).status();
    }
}

/// The failure names the directory, says it is about space, and exits non-zero (checked by
/// `run_err`); with `up_front`, it says what is needed.
fn assert_no_space(err: &str, dir: &Path, up_front: bool) {
    assert!(
        err.contains(&format!("not enough space in {}", dir.display()))
            && err.contains("free")
            && err.contains("-d/--destination"),
        "the message names the directory and the space: {err}"
    );
    if up_front {
        assert!(err.contains("needs about"), "refused up front: {err}");
    } else {
        assert!(err.contains("filled up"), "found midway: {err}");
    }
}

/// A 20 MiB image that does not compress, bundled into a directory of its own.
struct Bundled {
    _t: tempfile::TempDir,
    home: PathBuf,
    keys: Keys,
    image: PathBuf,
    dir: PathBuf,
}

fn bundled() -> Bundled {
    let t = tempfile::tempdir().unwrap();
    let home = t.path().join("home");
    let dir = t.path().join("bundle");
    fs::create_dir_all(&home).unwrap();
    fs::create_dir_all(&dir).unwrap();
    let image = t.path().join("disk.img");
    random_file(&image, 20, 0x9E37_79B9_7F4A_7C15);
    let keys = Keys::new();
    Bundled {
        home,
        keys,
        image,
        dir,
        _t: t,
    }
}

fn bundle_image(b: &Bundled, dest: &Path) -> Command {
    let mut c = amibundle(&b.home);
    c.arg("bundle-image")
        .arg("-i")
        .arg(&b.image)
        .args([
            "-u",
            ACCOUNT,
            "-r",
            "x86_64",
            "--compression-level",
            "1",
            "-d",
        ])
        .arg(dest)
        .args(b.keys.bundle_args());
    c
}

#[test]
#[ignore = "needs root: loop devices, mounts, namespaces (scripts/test.sh runs it as root)"]
fn bundle_image_and_unbundle_into_a_small_filesystem_fail_naming_it_and_leave_nothing() {
    require_root();
    let b = bundled();
    let small = SmallFs::new(8);

    // bundle-image: the bound is only a worst case, so the run starts with a warning and the
    // filesystem fills up midway.
    let err = run_err(&mut bundle_image(&b, &small.dir));
    assert!(err.contains("may need up to"), "warned up front: {err}");
    assert_no_space(&err, &small.dir, false);
    assert!(err.contains("bundle disk.img"), "{err}");
    small.assert_empty("bundle-image");

    // unbundle: the image's data is known from the tar header, so it is refused before writing.
    run_ok(&mut bundle_image(&b, &b.dir));
    let err = run_err(
        amibundle(&b.home)
            .arg("unbundle")
            .arg("-m")
            .arg(b.dir.join("disk.img.manifest.xml"))
            .arg("-k")
            .arg(b.keys.user_key())
            .arg("-d")
            .arg(&small.dir),
    );
    assert_no_space(&err, &small.dir, true);
    assert!(
        err.contains("the image disk.img needs about 20.00 MiB"),
        "{err}"
    );
    small.assert_empty("unbundle");
}

#[test]
#[ignore = "needs root: loop devices, mounts, namespaces (scripts/test.sh runs it as root)"]
fn download_into_a_small_filesystem_is_refused_up_front_and_leaves_nothing() {
    require_root();
    let b = bundled();
    run_ok(&mut bundle_image(&b, &b.dir));
    let cloud = Cloud::start();
    let m = b.dir.join("disk.img.manifest.xml");
    run_ok(&mut cloud.cmd(&[
        "upload",
        "-m",
        m.to_str().unwrap(),
        "--region",
        "us-east-1",
        "-b",
        "full/img",
    ]));
    cloud.proxy.clear();
    let small = SmallFs::new(8);
    let d = small.dir.to_str().unwrap();
    let dl = [
        "download",
        "-b",
        "full/img",
        "-m",
        "disk.img.manifest.xml",
        "-d",
        d,
    ];

    let err = run_err(&mut cloud.cmd(&dl));
    assert_no_space(&err, &small.dir, true);
    assert!(err.contains("the bundle (parts and manifest)"), "{err}");
    small.assert_empty("download");
    assert!(
        !cloud
            .proxy
            .exchanges()
            .iter()
            .any(|e| e.method == "GET" && e.path.contains(".part.")),
        "no part was fetched"
    );

    let k = b.keys.user_key();
    let mut args = dl.to_vec();
    args.extend(["--unbundle", "-k", k.to_str().unwrap()]);
    let err = run_err(&mut cloud.cmd(&args));
    assert_no_space(&err, &small.dir, true);
    assert!(
        err.contains("the image disk.img needs about 20.00 MiB"),
        "{err}"
    );
    small.assert_empty("download --unbundle");
}

/// A volume of `mib` MiB of data that does not compress.
fn volume(root: &Path, mib: usize) -> PathBuf {
    let src = root.join("src");
    fs::create_dir_all(src.join("data")).unwrap();
    fs::write(src.join("hostname"), b"small\n").unwrap();
    random_file(&src.join("data/blob"), mib, 0x9E37_79B9_7F4A_7C15);
    src
}

#[test]
#[ignore = "needs root: loop devices, mounts, namespaces (scripts/test.sh runs it as root)"]
fn bundle_vol_and_save_with_a_small_work_directory_fail_naming_it_and_leave_nothing() {
    require_root();
    let t = tempfile::tempdir_in("/var/tmp").unwrap();
    let keys = Keys::new();
    let vol_cmd = |command: &str, src: &Path, dest: &Path| {
        let mut c = amibundle(t.path());
        c.arg(command)
            .arg("-v")
            .arg(src)
            .arg("-d")
            .arg(dest)
            .args(["-p", "small", "-u", ACCOUNT, "--no-inherit", "-r", "x86_64"])
            .args(keys.bundle_args());
        c
    };

    // More data than the work directory holds: refused before the image is made.
    let big = volume(&t.path().join("big"), 24);
    let small = SmallFs::new(16);
    let err = run_err(&mut vol_cmd("bundle-vol", &big, &small.dir));
    assert_no_space(&err, &small.dir, true);
    assert!(
        err.contains(&format!("the image of {} needs about", big.display())),
        "{err}"
    );
    small.assert_empty("bundle-vol");
    // save: the same, before any request (the endpoint is a closed port), and no state left.
    let err = run_err(vol_cmd("save", &big, &small.dir).args([
        "--region",
        "us-east-1",
        "--endpoint-url",
        "http://127.0.0.1:9",
    ]));
    assert_no_space(&err, &small.dir, true);
    small.assert_empty("save");
    drop(small);

    // The data fits, the image and its bundle together do not: the filesystem fills up midway.
    let medium = volume(&t.path().join("medium"), 12);
    let small = SmallFs::new(24);
    let err = run_err(&mut vol_cmd("bundle-vol", &medium, &small.dir));
    assert_no_space(&err, &small.dir, false);
    small.assert_empty("bundle-vol filling up midway");
}
