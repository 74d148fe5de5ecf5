//! The `ec2-*` personalities: Packer's default command templates run character for character
//! through `sh -c` with symlinks named like the classic tools, against moto; `install-compat`.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::cloud::Cloud;
use crate::support::*;

/// Packer's `bundle_vol_command` default (docs/reference-behaviour.md §13.1), verbatim.
const BUNDLE_VOL_COMMAND: &str = "sudo -i -n ec2-bundle-vol -k {{.KeyPath}} -u {{.AccountId}} -c {{.CertPath}} -r {{.Architecture}} -e {{.PrivatePath}}/* -d {{.Destination}} -p {{.Prefix}} --batch --no-filter";

/// Packer's `bundle_upload_command` default without an instance profile, verbatim.
const UPLOAD_COMMAND: &str = "sudo -i -n ec2-upload-bundle -b {{.BucketName}} -m {{.ManifestPath}} -a {{.AccessKey}} -s {{.SecretKey}} -d {{.BundleDirectory}} --batch --region {{.Region}} --retry";

/// `sudo -i -n` would reset the environment (and reach for the real instance metadata service,
/// which must never happen here) and put root's login PATH first: the tests run as root already,
/// so `sudo` is a shell function that drops its options and runs the command as is.
const SUDO_SHIM: &str = "sudo() { while [ \"${1#-}\" != \"$1\" ]; do shift; done; \"$@\"; }\n";

const NAMES: [&str; 9] = [
    "ec2-bundle-vol",
    "ec2-bundle-image",
    "ec2-upload-bundle",
    "ec2-download-bundle",
    "ec2-unbundle",
    "ec2-delete-bundle",
    "ec2-migrate-manifest",
    "ec2-migrate-bundle",
    "ec2-ami-tools-version",
];

/// A directory of `ec2-*` symlinks to the binary under test.
fn compat_bin() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for name in NAMES {
        std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_amibundle"), dir.path().join(name)).unwrap();
    }
    dir
}

/// Fills `{{.Var}}` placeholders; panics on any left over.
fn fill(template: &str, vars: &[(&str, &str)]) -> String {
    let mut s = template.to_string();
    for (k, v) in vars {
        s = s.replace(&format!("{{{{.{k}}}}}"), v);
    }
    assert!(!s.contains("{{"), "unfilled variable in {s}");
    s
}

/// Runs `script` with `sh -c` (the shim first), the symlinks on PATH, the cloud's private HOME
/// and AWS files, and no instance metadata.
fn shell(cloud: &Cloud, bin: &Path, script: &str) -> Output {
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    Command::new("sh")
        .arg("-c")
        .arg(format!("{SUDO_SHIM}{script}"))
        .env("PATH", path)
        .env("HOME", cloud.home.path())
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_CONFIG_FILE", cloud.home.path().join("aws-config"))
        .env(
            "AWS_SHARED_CREDENTIALS_FILE",
            cloud.home.path().join("aws-credentials"),
        )
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .env_remove("AWS_SESSION_TOKEN")
        .env_remove("AWS_PROFILE")
        .env_remove("AWS_REGION")
        .env_remove("AWS_DEFAULT_REGION")
        .env_remove("XDG_CONFIG_HOME")
        .env_remove("EC2_AMITOOL_HOME")
        .env_remove("EC2_HOME")
        .env_remove("RUST_LOG")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap()
}

fn show(out: &Output) -> String {
    format!(
        "status {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A loop mount of an image, read-only, undone on drop.
struct LoopMount(PathBuf);

impl Drop for LoopMount {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(&self.0)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
}

#[test]
#[ignore = "needs root: loop devices, mounts, namespaces (scripts/test.sh runs it as root)"]
fn packer_default_templates_bundle_and_upload_and_the_x509_files_stay_out_of_the_image() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "ec2-bundle-vol needs root (loop devices, mounts); CI runs as root"
    );
    let cloud = Cloud::start();
    let bin = compat_bin();
    let keys = Keys::new();
    let tmp = tempfile::tempdir().unwrap();

    // The "instance": a small volume, with Packer's x509 upload directory inside it holding the
    // uploaded certificate and key and one more file the shell glob will also match.
    let vol = tmp.path().join("vol");
    fs::create_dir_all(vol.join("etc")).unwrap();
    fs::write(vol.join("etc/hostname"), "packer-build\n").unwrap();
    fs::create_dir_all(vol.join("srv/app")).unwrap();
    fs::write(vol.join("srv/app/data.txt"), "kept\n").unwrap();
    let x509 = vol.join("x509");
    fs::create_dir_all(&x509).unwrap();
    // Mode 0644, as Packer uploads them (its communicator sends `C0644`: no file mode is
    // passed), which the reference accepted.
    for (src, dst) in [(keys.user_key(), "key.pem"), (keys.user_cert(), "cert.pem")] {
        fs::copy(src, x509.join(dst)).unwrap();
        fs::set_permissions(x509.join(dst), fs::Permissions::from_mode(0o644)).unwrap();
    }
    // Not a private key, so only the loose -e path can keep it out (the filter is off anyway).
    fs::write(x509.join("extra.txt"), "uploaded by a provisioner\n").unwrap();
    let dest = tmp.path().join("dest");
    fs::create_dir(&dest).unwrap();

    let prefix = "image-1700000000";
    let (vol_s, x509_s, dest_s) = (
        vol.to_str().unwrap(),
        x509.to_str().unwrap(),
        dest.to_str().unwrap(),
    );
    let key_path = format!("{x509_s}/key.pem");
    let cert_path = format!("{x509_s}/cert.pem");
    let bundle_vol = fill(
        BUNDLE_VOL_COMMAND,
        &[
            ("KeyPath", &key_path),
            ("AccountId", "123456789012"),
            ("CertPath", &cert_path),
            ("Architecture", "x86_64"),
            ("PrivatePath", x509_s),
            ("Destination", dest_s),
            ("Prefix", prefix),
        ],
    );
    // Added, strictly needed here: the volume (the template bundles /) and the stand-in EC2
    // certificate (no real one on this machine).
    let bundle_vol = format!(
        "{bundle_vol} -v {vol_s} --ec2cert {} --unpinned-ec2cert",
        keys.ec2_cert().display()
    );
    let out = shell(&cloud, bin.path(), &bundle_vol);
    assert!(out.status.success(), "{bundle_vol}\n{}", show(&out));
    // Accepted, with a warning naming the key (the native bundle-vol refuses such a key).
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("key.pem is readable by group or others (mode 0644)"),
        "{stderr}"
    );

    // What Packer relies on: <destination>/<prefix>.manifest.xml with the parts next to it.
    let manifest = dest.join(format!("{prefix}.manifest.xml"));
    let xml =
        fs::read_to_string(&manifest).expect("manifest at <destination>/<prefix>.manifest.xml");
    let parts = part_filenames(&xml);
    assert!(!parts.is_empty());
    for p in &parts {
        assert!(dest.join(p).is_file(), "part {p} missing");
    }
    assert!(xml.contains(&format!("<name>{prefix}</name>")), "{xml}");

    let upload = fill(
        UPLOAD_COMMAND,
        &[
            ("BucketName", "packer-bundles/builds"),
            ("ManifestPath", manifest.to_str().unwrap()),
            ("AccessKey", "testing"),
            ("SecretKey", "testing"),
            ("BundleDirectory", dest_s),
            ("Region", "us-east-1"),
        ],
    );
    // Added: the emulator's endpoint, through the classic --url.
    let upload = format!("{upload} --url {}", cloud.proxy.endpoint);
    let out = shell(&cloud, bin.path(), &upload);
    assert!(out.status.success(), "{upload}\n{}", show(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("testing\n"), "{stderr}");
    // Packer registers <s3_bucket>/<prefix>.manifest.xml.
    assert_eq!(
        cloud
            .object("packer-bundles", &format!("builds/{prefix}.manifest.xml"))
            .as_deref(),
        Some(xml.as_bytes())
    );
    for p in &parts {
        assert_eq!(
            cloud.object("packer-bundles", &format!("builds/{p}")),
            Some(fs::read(dest.join(p)).unwrap()),
            "{p}"
        );
    }

    // The x509 files are not in the image; the rest is.
    let img_dir = tmp.path().join("img");
    fs::create_dir(&img_dir).unwrap();
    run_ok(
        amibundle(cloud.home.path())
            .args(["unbundle", "-m"])
            .arg(&manifest)
            .arg("-k")
            .arg(keys.user_key())
            .arg("-d")
            .arg(&img_dir),
    );
    let mnt = tmp.path().join("mnt");
    fs::create_dir(&mnt).unwrap();
    run_ok(
        Command::new("mount")
            .args(["-o", "loop,ro"])
            .arg(img_dir.join(prefix))
            .arg(&mnt),
    );
    let _mounted = LoopMount(mnt.clone());
    assert_eq!(
        fs::read_to_string(mnt.join("srv/app/data.txt")).unwrap(),
        "kept\n"
    );
    assert!(mnt.join("etc/hostname").is_file());
    for f in ["key.pem", "cert.pem", "extra.txt"] {
        assert!(
            fs::symlink_metadata(mnt.join("x509").join(f)).is_err(),
            "x509/{f} is inside the image"
        );
    }
}

#[test]
fn packer_upload_to_a_bucket_of_another_account_exits_3_and_uploads_nothing() {
    let cloud = Cloud::start();
    let bin = compat_bin();
    cloud.foreign_bucket("someone-elses");
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&vector_dir("v2-three-parts"), dir.path());
    let manifest = dir.path().join("random.img.manifest.xml");
    let upload = fill(
        UPLOAD_COMMAND,
        &[
            ("BucketName", "someone-elses"),
            ("ManifestPath", manifest.to_str().unwrap()),
            ("AccessKey", "testing"),
            ("SecretKey", "SeCrEt-not-shown"),
            ("BundleDirectory", dir.path().to_str().unwrap()),
            ("Region", "us-east-1"),
        ],
    );
    let upload = format!("{upload} --url {}", cloud.proxy.endpoint);
    let out = shell(&cloud, bin.path(), &upload);
    assert_eq!(out.status.code(), Some(3), "{}", show(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("someone-elses"), "{stderr}");
    assert!(!stderr.contains("SeCrEt-not-shown"), "{stderr}");
    assert!(cloud.object_puts().is_empty());
}

#[test]
fn classic_flags_version_and_unknown_flags() {
    let bin = compat_bin();
    let home = tempfile::tempdir().unwrap();
    let run = |name: &str, args: &[&str]| {
        classic(&bin.path().join(name), home.path())
            .args(args)
            .output()
            .unwrap()
    };
    for name in NAMES {
        let out = run(name, &["--version"]);
        assert!(out.status.success(), "{}", show(&out));
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.starts_with("1.5.3") && text.contains(name), "{text}");
        let out = run(name, &["--no-such-flag"]);
        assert_eq!(out.status.code(), Some(2), "{}", show(&out));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("--no-such-flag") && err.contains(name),
            "{err}"
        );
    }
    let out = run("ec2-bundle-vol", &["-S", "/root/customize.sh"]);
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--script"));
    // A flag the classic parser accepts, refused by the native code: a normal error, exit 1.
    let out = run(
        "ec2-unbundle",
        &["-k", "/nonexistent/key.pem", "-m", "/nonexistent/m.xml"],
    );
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
}

#[test]
fn install_compat_links_replaces_its_own_and_refuses_anything_else() {
    let home = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // A classic tool's launcher is in the way: nothing is changed.
    fs::write(d.join("ec2-unbundle"), "#!/bin/sh\n").unwrap();
    std::os::unix::fs::symlink("/opt/old/bin/amibundle", d.join("ec2-bundle-vol")).unwrap();
    let err = run_err(amibundle(home.path()).arg("install-compat").arg(d));
    assert!(
        err.contains("ec2-unbundle") && err.contains("not a symlink"),
        "{err}"
    );
    assert!(fs::symlink_metadata(d.join("ec2-upload-bundle")).is_err());
    assert_eq!(
        fs::read_link(d.join("ec2-bundle-vol")).unwrap(),
        Path::new("/opt/old/bin/amibundle")
    );
    // A link to something else is refused too.
    fs::remove_file(d.join("ec2-unbundle")).unwrap();
    std::os::unix::fs::symlink(
        "/opt/ec2-ami-tools/bin/ec2-unbundle",
        d.join("ec2-unbundle"),
    )
    .unwrap();
    let err = run_err(amibundle(home.path()).arg("install-compat").arg(d));
    assert!(err.contains("not to amibundle"), "{err}");

    fs::remove_file(d.join("ec2-unbundle")).unwrap();
    let out = run_ok(amibundle(home.path()).arg("install-compat").arg(d));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("ec2-bundle-vol") && text.contains("(replaced)"),
        "{text}"
    );
    assert_eq!(text.matches("(created)").count(), NAMES.len() - 1, "{text}");
    let exe = fs::canonicalize(env!("CARGO_BIN_EXE_amibundle")).unwrap();
    for name in NAMES {
        assert_eq!(fs::canonicalize(d.join(name)).unwrap(), exe, "{name}");
    }
    // Again: nothing to do.
    let out = run_ok(amibundle(home.path()).arg("install-compat").arg(d));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout)
            .matches("(already there)")
            .count(),
        NAMES.len()
    );
    // The links answer as the classic tools.
    let out = run_ok(classic(&d.join("ec2-delete-bundle"), home.path()).arg("--version"));
    assert!(String::from_utf8_lossy(&out.stdout).contains("ec2-delete-bundle"));
}

/// A classic tool (a symlink to the binary) with the environment of [`amibundle`].
fn classic(program: &Path, home: &Path) -> Command {
    let mut c = Command::new(program);
    c.env("HOME", home)
        .env_remove("XDG_CONFIG_HOME")
        .env_remove("EC2_AMITOOL_HOME")
        .env_remove("EC2_HOME")
        .env_remove("RUST_LOG")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .stdin(std::process::Stdio::null());
    c
}

#[test]
fn delete_by_prefix_clears_parts_left_without_a_manifest_and_nothing_else() {
    let cloud = Cloud::start();
    let bin = compat_bin();
    let _bundle = cloud.upload_three_parts("orphans/x");
    // A failed upload's leftovers: the manifest is gone, the parts (and one more) remain.
    assert_eq!(
        cloud
            .raw("DELETE", "/orphans/x/random.img.manifest.xml", &[], b"")
            .status,
        204
    );
    let decoys = [
        "x/random.img-2.part.0",
        "x/random.img.partial",
        "x/random.img.part.1/not-a-part",
        "x/other/random.img.part.0",
        "x/random.img.part.",
    ];
    for key in ["x/random.img.part.11"].iter().chain(&decoys) {
        assert_eq!(
            cloud
                .raw("PUT", &format!("/orphans/{key}"), &[], b"x")
                .status,
            200,
            "{key}"
        );
    }
    // By manifest, nothing can be found: that is what -p is for.
    let err =
        run_err(&mut cloud.cmd(&["delete", "-b", "orphans/x", "-m", "random.img.manifest.xml"]));
    assert!(err.contains("random.img.manifest.xml"), "{err}");

    // The native command lists what it would delete and asks; "n" deletes nothing.
    let mut child = cloud
        .cmd(&["delete", "-b", "orphans/x", "-p", "random.img"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(b"n\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("s3://orphans/x/random.img.part.11")
            && err.contains("Continue [y/N]")
            && err.contains("nothing deleted"),
        "{err}"
    );
    assert!(cloud.object("orphans", "x/random.img.part.0").is_some());

    // ec2-delete-bundle -p with --batch (no question), as the reference: every part goes.
    let script = format!(
        "ec2-delete-bundle -b orphans/x -p random.img --batch -a testing -s testing --url {}",
        cloud.proxy.endpoint
    );
    let out = shell(&cloud, bin.path(), &script);
    assert!(out.status.success(), "{script}\n{}", show(&out));
    for i in [0, 1, 2, 11] {
        assert!(
            cloud
                .object("orphans", &format!("x/random.img.part.{i}"))
                .is_none(),
            "part {i} is still there"
        );
    }
    for key in decoys {
        assert!(cloud.object("orphans", key).is_some(), "{key} was deleted");
    }
    // Nothing left of it: said, not "done".
    let out = shell(&cloud, bin.path(), &script);
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("holds no object of bundle random.img"),
        "{}",
        show(&out)
    );
}

#[test]
fn migrate_bundle_copies_into_the_destination_bucket_and_registers_nothing() {
    let cloud = Cloud::start();
    let bin = compat_bin();
    let keys = Keys::new();
    let _bundle = cloud.upload_three_parts("mig-src/builds");
    let script = format!(
        "ec2-migrate-bundle -c {} -k {} -m random.img.manifest.xml -b mig-src/builds \
         -d mig-dst/moved --location EU -a testing -s testing --url {} --ec2cert {} \
         --unpinned-ec2cert",
        keys.user_cert().display(),
        keys.user_key().display(),
        cloud.proxy.endpoint,
        keys.ec2_cert().display()
    );
    let out = shell(&cloud, bin.path(), &script);
    assert!(out.status.success(), "{script}\n{}", show(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "eu-west-1\tmig-dst/moved/random.img.manifest.xml"
    );
    for i in 0..3 {
        let name = format!("random.img.part.{i}");
        assert_eq!(
            cloud.object("mig-dst", &format!("moved/{name}")),
            Some(fs::read(vector_dir("v2-three-parts").join(&name)).unwrap()),
            "{name}"
        );
    }
    // The manifest is re-wrapped (for the destination's certificate) and still the user's.
    let moved = cloud
        .object("mig-dst", "moved/random.img.manifest.xml")
        .expect("manifest copied");
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&vector_dir("v2-three-parts"), dir.path());
    let manifest = dir.path().join("random.img.manifest.xml");
    let source = fs::read_to_string(&manifest).unwrap();
    let moved = String::from_utf8(moved).unwrap();
    assert_eq!(
        element(&moved, "user_encrypted_key"),
        element(&source, "user_encrypted_key")
    );
    assert_ne!(
        element(&moved, "ec2_encrypted_key"),
        element(&source, "ec2_encrypted_key")
    );
    fs::write(&manifest, &moved).unwrap();
    run_ok(
        amibundle(cloud.home.path())
            .args(["verify", "-m"])
            .arg(&manifest)
            .arg("-c")
            .arg(keys.user_cert()),
    );
    let r = cloud.raw("GET", "/mig-dst?location", &[], b"");
    assert!(r.text().contains("eu-west-1"), "{}", r.text());
    // Nothing registered: no EC2 request at all.
    assert!(
        !cloud
            .proxy
            .exchanges()
            .iter()
            .any(|e| e.method == "POST" && e.path == "/"),
        "an EC2 request was made"
    );
}

#[test]
fn ami_tools_version_answers_like_the_reference() {
    let bin = compat_bin();
    let home = tempfile::tempdir().unwrap();
    let out = run_ok(&mut classic(
        &bin.path().join("ec2-ami-tools-version"),
        home.path(),
    ));
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        text.split_whitespace().take(2).collect::<Vec<_>>(),
        ["1.5.3", "20071010"]
    );
}

#[test]
fn a_hint_naming_a_native_flag_says_where_that_flag_is_under_a_personality() {
    let cloud = Cloud::start();
    let bin = compat_bin();
    let r = cloud.raw(
        "PUT",
        "/enforced-acls",
        &[("x-amz-object-ownership", "BucketOwnerEnforced")],
        b"",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&vector_dir("v2-three-parts"), dir.path());
    let script = format!(
        "ec2-upload-bundle -b enforced-acls -m {}/random.img.manifest.xml -a testing -s testing \
         --region us-east-1 --url {}",
        dir.path().display(),
        cloud.proxy.endpoint
    );
    let out = shell(&cloud, bin.path(), &script);
    assert_eq!(out.status.code(), Some(3), "{}", show(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("ec2-upload-bundle: note: --fix-ownership is not an ec2-upload-bundle flag")
            && err.contains("amibundle upload"),
        "{err}"
    );
}
