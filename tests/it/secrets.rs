//! Secrets hygiene (issue 6 §6), proven on the real binary against moto:
//! - the AES key and IV of a bundle never appear in any output (stdout, stderr, log lines,
//!   error messages) of any command at the highest verbosity (`-vv` and `RUST_LOG=trace`, so
//!   the AWS SDK's own trace logging is included), nor in the argv or environment of any
//!   process on the machine while the commands run (sampled from /proc: amibundle and every
//!   child it starts, e.g. mke2fs for `save`);
//! - a secret access key given on the command line is never printed;
//! - what holds a secret or the image (images, parts, manifests, the save state and its key
//!   record, the identity key) is written 0600 in 0700 directories, whatever the umask;
//! - a private key others can read is refused unless `--allow-insecure-key`.

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use base64::Engine as _;

use crate::cloud::Cloud;
use crate::support::*;

/// A secret access key that moto accepts and that must never be printed.
const SECRET_KEY: &str = "amibundleTESTsecret/MustNeverBePrinted0001";
const ACCESS_KEY: &str = "AKIAAMIBUNDLESECRETS";

/// Every output of every command run, and every argv and environment seen in /proc meanwhile.
#[derive(Default)]
struct Sweep {
    /// (command label, stdout + stderr).
    outputs: Vec<(String, Vec<u8>)>,
    /// Distinct /proc/PID/cmdline and /proc/PID/environ contents seen during the runs.
    proc_blobs: BTreeSet<Vec<u8>>,
    /// Whether the sampler saw an amibundle process (proof that it samples the right thing).
    saw_amibundle: bool,
}

impl Sweep {
    /// Runs `cmd` at maximum verbosity (the caller put `-vv` in it; `RUST_LOG=trace` is set
    /// here) while sampling /proc; `ok` says whether it must succeed or fail.
    fn run(&mut self, label: &str, cmd: &mut Command, ok: bool) -> Output {
        cmd.env("RUST_LOG", "trace");
        let stop = Arc::new(AtomicBool::new(false));
        let sampler = {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || sample_proc(&stop))
        };
        let out = cmd.output().expect("spawn amibundle");
        stop.store(true, Ordering::Relaxed);
        let (blobs, saw) = sampler.join().unwrap();
        self.proc_blobs.extend(blobs);
        self.saw_amibundle |= saw;
        let mut all = out.stdout.clone();
        all.extend_from_slice(&out.stderr);
        assert_eq!(
            out.status.success(),
            ok,
            "{label}: {cmd:?} exited {}\n{}",
            out.status,
            String::from_utf8_lossy(&all)
        );
        self.outputs.push((label.to_string(), all));
        out
    }

    /// Panics if any output contains `needle`.
    fn assert_never_printed(&self, what: &str, needle: &[u8]) {
        for (label, bytes) in &self.outputs {
            assert!(
                !contains(bytes, needle),
                "{what} appears in the output of {label}"
            );
        }
    }

    /// Panics if any output or any sampled argv/environment contains `needle`.
    fn assert_never_seen(&self, what: &str, needle: &[u8]) {
        self.assert_never_printed(what, needle);
        for blob in &self.proc_blobs {
            assert!(
                !contains(blob, needle),
                "{what} appears in a process's argv or environment: {}",
                String::from_utf8_lossy(blob)
            );
        }
    }

    /// The key and IV of a bundle in every form they could leak in: hex in both cases, raw
    /// bytes, base64.
    fn assert_key_never_seen(&self, secrets: &BundleSecrets) {
        assert!(self.saw_amibundle, "the /proc sampler saw the runs");
        for (what, hex_text) in [("AES key", &secrets.key_hex), ("AES IV", &secrets.iv_hex)] {
            let raw = hex::decode(hex_text).unwrap();
            self.assert_never_seen(what, hex_text.to_lowercase().as_bytes());
            self.assert_never_seen(what, hex_text.to_uppercase().as_bytes());
            self.assert_never_seen(what, &raw);
            self.assert_never_seen(
                what,
                base64::engine::general_purpose::STANDARD
                    .encode(&raw)
                    .trim_end_matches('=')
                    .as_bytes(),
            );
        }
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

/// Reads every process's cmdline and environ until `stop`, as fast as it can (children such
/// as mke2fs live for milliseconds).
fn sample_proc(stop: &AtomicBool) -> (BTreeSet<Vec<u8>>, bool) {
    let me = std::process::id().to_string();
    let mut blobs = BTreeSet::new();
    let mut saw_amibundle = false;
    loop {
        let last = stop.load(Ordering::Relaxed);
        if let Ok(entries) = fs::read_dir("/proc") {
            for e in entries.flatten() {
                let name = e.file_name();
                let name = name.to_string_lossy();
                if !name.bytes().all(|b| b.is_ascii_digit()) || name == me {
                    continue;
                }
                for file in ["cmdline", "environ"] {
                    if let Ok(bytes) = fs::read(e.path().join(file)) {
                        if file == "cmdline" && contains(&bytes, b"amibundle") {
                            saw_amibundle = true;
                        }
                        blobs.insert(bytes);
                    }
                }
            }
        }
        if last {
            return (blobs, saw_amibundle);
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// The key and IV of a bundle, unwrapped from its manifest with the user key by openssl.
struct BundleSecrets {
    key_hex: String,
    iv_hex: String,
}

fn secrets_of(manifest_xml: &str, user_key: &Path, work: &Path) -> BundleSecrets {
    let unwrap = |field: &str| -> String {
        let wrapped = work.join(format!("{field}.bin"));
        fs::write(&wrapped, hex::decode(element(manifest_xml, field)).unwrap()).unwrap();
        let out = run_ok(
            Command::new("openssl")
                .args(["pkeyutl", "-decrypt", "-pkeyopt", "rsa_padding_mode:pkcs1"])
                .arg("-inkey")
                .arg(user_key)
                .arg("-in")
                .arg(&wrapped),
        );
        fs::remove_file(&wrapped).unwrap();
        let text = String::from_utf8(out.stdout).unwrap();
        assert_eq!(text.len(), 32, "{field} unwraps to 32 hex characters");
        text
    };
    BundleSecrets {
        key_hex: unwrap("user_encrypted_key"),
        iv_hex: unwrap("user_encrypted_iv"),
    }
}

/// The binary for a command that never talks to S3 (no endpoint flags), in `cloud`'s HOME.
fn local(cloud: &Cloud, args: &[&str]) -> Command {
    let mut cmd = amibundle(cloud.home.path());
    cmd.args(args);
    cmd
}

/// The key and IV of the bundle whose manifest is `s3://bucket/key`.
fn s3_secrets(cloud: &Cloud, bucket: &str, key: &str, keys: &Keys, work: &Path) -> BundleSecrets {
    let xml = cloud
        .object(bucket, key)
        .unwrap_or_else(|| panic!("s3://{bucket}/{key} is stored"));
    secrets_of(&String::from_utf8(xml).unwrap(), &keys.user_key(), work)
}

/// `cloud.cmd` with the credentials on the command line instead of the environment.
fn with_cli_credentials(cloud: &Cloud, args: &[&str]) -> Command {
    let mut cmd = cloud.cmd(args);
    cmd.env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY]);
    cmd
}

/// A small image of non-repeating bytes (one part).
fn small_image(dir: &Path) -> PathBuf {
    let path = dir.join("sec.img");
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let bytes: Vec<u8> = (0..300_000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    fs::write(&path, bytes).unwrap();
    path
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn key_iv_and_secret_key_never_appear_in_output_argv_or_environment_at_maximum_verbosity() {
    let cloud = Cloud::start();
    let keys = Keys::new();
    let work = tempfile::tempdir().unwrap();
    let image = small_image(work.path());
    let out = work.path().join("out");
    let mut sweep = Sweep::default();

    // Bundle locally, verify and unbundle with the key.
    let mut c = cloud.cmd(&["-vv", "bundle-image", "-i", s(&image), "-d", s(&out)]);
    c.args(["-u", "123456789012"]).args(keys.bundle_args());
    fs::create_dir(&out).unwrap();
    sweep.run("bundle-image", &mut c, true);
    let manifest = out.join("sec.img.manifest.xml");
    let local_bundle = secrets_of(
        &fs::read_to_string(&manifest).unwrap(),
        &keys.user_key(),
        work.path(),
    );
    let user_key = keys.user_key();
    let unbundle = |key: &Path, dest: &Path| {
        local(
            &cloud,
            &[
                "-vv",
                "unbundle",
                "-m",
                s(&manifest),
                "-k",
                s(key),
                "-d",
                s(dest),
            ],
        )
    };
    sweep.run(
        "verify -k",
        &mut cloud.cmd(&["-vv", "verify", "-m", s(&manifest), "-k", s(&user_key)]),
        true,
    );
    let restored = work.path().join("restored");
    fs::create_dir(&restored).unwrap();
    sweep.run("unbundle", &mut unbundle(&user_key, &restored), true);
    assert_eq!(
        fs::read(restored.join("sec.img")).unwrap(),
        fs::read(&image).unwrap()
    );

    // Re-wrap the manifest (the key is decrypted and encrypted again in memory).
    let migrated_dir = work.path().join("migrated");
    fs::create_dir(&migrated_dir).unwrap();
    fs::copy(&manifest, migrated_dir.join("sec.img.manifest.xml")).unwrap();
    let mut c = local(&cloud, &["-vv", "migrate-manifest", "-m"]);
    c.arg(migrated_dir.join("sec.img.manifest.xml"))
        .args(["-k", s(&user_key), "-c", s(&keys.user_cert())])
        .args(["--ec2cert", s(&keys.ec2_cert()), "--unpinned-ec2cert"])
        .args(["--kernel", "aki-12345678"]);
    sweep.run("migrate-manifest", &mut c, true);

    // Upload, verify in S3, download, delete, with the secret access key on the command line.
    let bucket = "secrets-sweep";
    sweep.run(
        "upload",
        &mut with_cli_credentials(
            &cloud,
            &[
                "-vv",
                "upload",
                "-m",
                s(&manifest),
                "-b",
                bucket,
                "--region",
                "us-east-1",
            ],
        ),
        true,
    );
    let s3_manifest = format!("s3://{bucket}/sec.img.manifest.xml");
    sweep.run(
        "verify s3://",
        &mut with_cli_credentials(
            &cloud,
            &[
                "-vv",
                "verify",
                "-m",
                &s3_manifest,
                "-k",
                s(&user_key),
                "--region",
                "us-east-1",
            ],
        ),
        true,
    );
    let downloaded = work.path().join("downloaded");
    sweep.run(
        "download --unbundle",
        &mut with_cli_credentials(
            &cloud,
            &[
                "-vv",
                "download",
                "-b",
                bucket,
                "-m",
                "sec.img.manifest.xml",
                "-d",
                s(&downloaded),
                "--unbundle",
                "-k",
                s(&user_key),
                "--region",
                "us-east-1",
            ],
        ),
        true,
    );
    sweep.run(
        "delete",
        &mut with_cli_credentials(
            &cloud,
            &[
                "-vv",
                "delete",
                "-b",
                bucket,
                "-m",
                "sec.img.manifest.xml",
                "--region",
                "us-east-1",
            ],
        ),
        true,
    );

    // Errors print no secret either: a wrong key, a tampered part.
    let other_key = work.path().join("other-key.pem");
    run_ok(
        Command::new("openssl")
            .args(["genrsa", "-out", s(&other_key), "2048"])
            .stderr(std::process::Stdio::null()),
    );
    fs::set_permissions(&other_key, fs::Permissions::from_mode(0o600)).unwrap();
    let wrong = work.path().join("wrong");
    fs::create_dir(&wrong).unwrap();
    sweep.run(
        "unbundle with a wrong key",
        &mut unbundle(&other_key, &wrong),
        false,
    );
    let part = out.join("sec.img.part.0");
    let mut bytes = fs::read(&part).unwrap();
    bytes[1000] ^= 0x55;
    fs::write(&part, bytes).unwrap();
    sweep.run(
        "verify -k of a tampered part",
        &mut cloud.cmd(&["-vv", "verify", "-m", s(&manifest), "-k", s(&user_key)]),
        false,
    );

    // A streamed bundle, registered: its key lives only in memory and in the S3 manifest.
    let mut c = with_cli_credentials(
        &cloud,
        &[
            "-vv",
            "bundle-image",
            "-i",
            s(&image),
            "-p",
            "streamed",
            "-u",
            "123456789012",
            "--upload",
            "s3://secrets-streamed",
            "--register",
            "secrets-streamed",
            "--region",
            "us-east-1",
        ],
    );
    c.args(keys.bundle_args());
    sweep.run("bundle-image --upload --register", &mut c, true);
    let streamed = s3_secrets(
        &cloud,
        "secrets-streamed",
        "streamed.manifest.xml",
        &keys,
        work.path(),
    );

    sweep.assert_key_never_seen(&local_bundle);
    sweep.assert_key_never_seen(&streamed);
    sweep.assert_never_printed("the secret access key", SECRET_KEY.as_bytes());
    // On the machine, the secret is only where the user put it: amibundle's own argv, right
    // after --secret-key (no environment, no child's argv). The sampler saw it there, which
    // also proves that it watched the runs.
    let mut seen_in_own_argv = false;
    for blob in &sweep.proc_blobs {
        if contains(blob, SECRET_KEY.as_bytes()) {
            let mut flag = b"--secret-key\0".to_vec();
            flag.extend_from_slice(SECRET_KEY.as_bytes());
            assert!(
                contains(blob, &flag) && contains(blob, b"amibundle"),
                "the secret access key appears in a process's argv or environment: {}",
                String::from_utf8_lossy(blob)
            );
            seen_in_own_argv = true;
        }
    }
    assert!(seen_in_own_argv, "the sampler saw amibundle's own argv");
}

/// `amibundle ARGS` under umask 000, so every mode checked below is set by amibundle itself.
fn under_umask_0(inner: Command) -> Command {
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg("umask 000; exec \"$0\" \"$@\"")
        .arg(inner.get_program())
        .args(inner.get_args())
        .stdin(std::process::Stdio::null());
    for (k, v) in inner.get_envs() {
        match v {
            Some(v) => cmd.env(k, v),
            None => cmd.env_remove(k),
        };
    }
    cmd
}

fn mode(path: &Path) -> u32 {
    fs::symlink_metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o7777
}

/// Every file below `dir` (recursively) is 0600 and every directory 0700.
fn assert_private_tree(dir: &Path) {
    assert_eq!(mode(dir), 0o700, "{}", dir.display());
    for e in fs::read_dir(dir).unwrap() {
        let path = e.unwrap().path();
        if path.is_dir() {
            assert_private_tree(&path);
        } else if path.file_name().is_some_and(|n| n == "user-cert.pem") {
            // The identity's certificate is public (it goes into every manifest's signer
            // field's stead and is handed to others to verify): 0644 is right for it.
            assert_eq!(mode(&path) & 0o022, 0, "{}", path.display());
        } else {
            assert_eq!(mode(&path), 0o600, "{}", path.display());
        }
    }
}

#[test]
fn images_parts_manifests_and_keys_are_0600_in_0700_directories_whatever_the_umask() {
    let cloud = Cloud::start();
    let keys = Keys::new();
    let work = tempfile::tempdir().unwrap();
    let image = small_image(work.path());

    // bundle-image with amibundle's own identity (created on first use) into a directory it
    // makes.
    let out = work.path().join("out");
    fs::create_dir(&out).unwrap();
    fs::set_permissions(&out, fs::Permissions::from_mode(0o700)).unwrap();
    let mut c = local(
        &cloud,
        &[
            "bundle-image",
            "-i",
            s(&image),
            "-d",
            s(&out),
            "-u",
            "123456789012",
        ],
    );
    c.args(["--ec2cert", s(&keys.ec2_cert()), "--unpinned-ec2cert"]);
    run_ok(&mut under_umask_0(c));
    assert_private_tree(&out);
    assert_private_tree(&cloud.home.path().join(".config/amibundle"));
    let manifest = out.join("sec.img.manifest.xml");

    // unbundle's image.
    let restored = work.path().join("restored");
    fs::create_dir(&restored).unwrap();
    fs::set_permissions(&restored, fs::Permissions::from_mode(0o700)).unwrap();
    run_ok(&mut under_umask_0(local(
        &cloud,
        &["unbundle", "-m", s(&manifest), "-d", s(&restored)],
    )));
    assert_private_tree(&restored);

    // migrate-manifest's new manifest and its backup.
    run_ok(&mut under_umask_0(local(
        &cloud,
        &[
            "migrate-manifest",
            "-m",
            s(&manifest),
            "--ec2cert",
            s(&keys.ec2_cert()),
            "--unpinned-ec2cert",
            "--kernel",
            "aki-12345678",
        ],
    )));
    assert_private_tree(&out);

    // download's parts and manifest, into a directory download creates.
    run_ok(&mut cloud.cmd(&[
        "upload",
        "-m",
        s(&manifest),
        "-b",
        "modes",
        "--region",
        "us-east-1",
    ]));
    let downloaded = work.path().join("downloaded");
    run_ok(&mut under_umask_0(cloud.cmd(&[
        "download",
        "-b",
        "modes",
        "-m",
        "sec.img.manifest.xml",
        "-d",
        s(&downloaded),
        "--region",
        "us-east-1",
    ])));
    assert_private_tree(&downloaded);
    let restored_from_s3 = work.path().join("restored-from-s3");
    run_ok(&mut under_umask_0(cloud.cmd(&[
        "download",
        "-b",
        "modes",
        "-m",
        "sec.img.manifest.xml",
        "-d",
        s(&restored_from_s3),
        "--unbundle",
        "--region",
        "us-east-1",
    ])));
    assert_private_tree(&restored_from_s3);
}

#[test]
fn a_private_key_others_can_read_is_refused_unless_allowed() {
    let keys = Keys::new();
    let work = tempfile::tempdir().unwrap();
    let home = tempfile::tempdir().unwrap();
    let image = small_image(work.path());
    let out = work.path().join("out");
    fs::create_dir(&out).unwrap();
    let bundle = |extra: &[&str]| {
        let mut c = amibundle(home.path());
        c.args(["bundle-image", "-i", s(&image), "-d", s(&out)])
            .args(["-u", "123456789012", "--overwrite"])
            .args(keys.bundle_args())
            .args(extra);
        c
    };
    for readable in [0o640, 0o604, 0o644] {
        fs::set_permissions(keys.user_key(), fs::Permissions::from_mode(readable)).unwrap();
        let err = run_err(&mut bundle(&[]));
        assert!(
            err.contains(s(&keys.user_key())) && err.contains("chmod 600"),
            "mode {readable:o}: {err}"
        );
        assert!(
            fs::read_dir(&out).unwrap().next().is_none(),
            "nothing written for mode {readable:o}"
        );
    }
    run_ok(&mut bundle(&["--allow-insecure-key"]));
    let manifest = out.join("sec.img.manifest.xml");
    let restored = work.path().join("restored");
    fs::create_dir(&restored).unwrap();
    let unbundle = |extra: &[&str]| {
        let mut c = amibundle(home.path());
        c.args(["unbundle", "-m", s(&manifest), "-d", s(&restored)])
            .args(["-k", s(&keys.user_key())])
            .args(extra);
        c
    };
    let err = run_err(&mut unbundle(&[]));
    assert!(err.contains("chmod 600"), "{err}");
    run_ok(&mut unbundle(&["--allow-insecure-key"]));
    assert_eq!(
        fs::read(restored.join("sec.img")).unwrap(),
        fs::read(&image).unwrap()
    );
}

#[test]
#[ignore = "needs root: loop devices, mounts, namespaces (scripts/test.sh runs it as root)"]
fn save_keeps_its_key_and_iv_out_of_output_and_out_of_every_child_process() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "save needs root (loop devices, mounts); CI runs as root"
    );
    let cloud = Cloud::start();
    let keys = Keys::new();
    let scratch = tempfile::tempdir_in("/var/tmp").unwrap();
    let src = scratch.path().join("data");
    crate::restore::make_tree(&src);
    let dest = scratch.path().join("out");
    fs::create_dir(&dest).unwrap();
    let mut sweep = Sweep::default();
    // --debug twice is -vv, and works after the subcommand.
    let mut c = cloud.cmd(&[
        "save",
        "--debug",
        "--debug",
        "-v",
        s(&src),
        "-d",
        s(&dest),
        "-p",
        "secret-save",
        "-u",
        "123456789012",
        "--no-inherit",
        "--region",
        "us-east-1",
    ]);
    c.args(keys.bundle_args());
    sweep.run("save", &mut c, true);
    let secrets = s3_secrets(
        &cloud,
        "amibundle-123456789012-us-east-1",
        "secret-save.manifest.xml",
        &keys,
        scratch.path(),
    );
    sweep.assert_key_never_seen(&secrets);
    // The children save runs (mke2fs and friends) were sampled too.
    assert!(
        sweep
            .proc_blobs
            .iter()
            .any(|b| contains(b, b"mke2fs") || contains(b, b"mkfs")),
        "the sampler saw save's mkfs"
    );
}
