//! Test support: paths to the shared test data, private copies of the insecure test keys,
//! running the binary, and an independent decoder made of standard command-line tools; in
//! submodules, the loopback cloud test doubles (moto, a recording proxy, an IMDSv2 server).

#![allow(dead_code)]

pub mod http;
pub mod imds;
pub mod moto;
pub mod proxy;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use tempfile::TempDir;

/// Deterministic incompressible-looking bytes (xorshift64), different per seed.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// SHA-256 of `b`, lowercase hex (what the recording proxy records of a request body).
pub fn sha256_hex(b: &[u8]) -> String {
    hex::encode(openssl::sha::sha256(b))
}

/// `tests/data` (see its README).
pub fn testdata() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data")
}

/// The reference-made bundles.
pub fn vector_dir(name: &str) -> PathBuf {
    testdata().join("peer-bundles").join(name)
}

/// All vector names.
pub const VECTORS: [&str; 4] = [
    "v1-small-ext4",
    "v2-three-parts",
    "v3-sparse-islands",
    "v4-prefix",
];

/// `expected.json` of a vector.
pub fn expected(name: &str) -> serde_json::Value {
    let text = fs::read_to_string(vector_dir(name).join("expected.json")).expect("expected.json");
    serde_json::from_str(&text).expect("expected.json parses")
}

/// A private directory holding 0600 copies of the insecure test keys (git does not keep modes,
/// and amibundle rightly refuses private keys others can read).
pub struct Keys {
    pub dir: TempDir,
}

impl Keys {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o700)).unwrap();
        for f in [
            "user-key.pem",
            "user-cert.pem",
            "ec2-test-key.pem",
            "ec2-test-cert.pem",
        ] {
            let dst = dir.path().join(f);
            fs::copy(testdata().join("keys").join(f), &dst).expect("copy key");
            fs::set_permissions(&dst, fs::Permissions::from_mode(0o600)).unwrap();
        }
        Self { dir }
    }
    pub fn user_key(&self) -> PathBuf {
        self.dir.path().join("user-key.pem")
    }
    pub fn user_cert(&self) -> PathBuf {
        self.dir.path().join("user-cert.pem")
    }
    pub fn ec2_key(&self) -> PathBuf {
        self.dir.path().join("ec2-test-key.pem")
    }
    pub fn ec2_cert(&self) -> PathBuf {
        self.dir.path().join("ec2-test-cert.pem")
    }
    /// `-k KEY -c CERT --ec2cert STAND-IN --unpinned-ec2cert` for bundling commands.
    pub fn bundle_args(&self) -> Vec<std::ffi::OsString> {
        vec![
            "-k".into(),
            self.user_key().into(),
            "-c".into(),
            self.user_cert().into(),
            "--ec2cert".into(),
            self.ec2_cert().into(),
            "--unpinned-ec2cert".into(),
        ]
    }
}

/// The binary under test, with a private HOME so it never touches the real user's files.
pub fn amibundle(home: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_amibundle"));
    cmd.env("HOME", home)
        .env_remove("XDG_CONFIG_HOME")
        .env_remove("XDG_CACHE_HOME")
        // to-ebs's resume journals go under the private HOME, not /var/lib/amibundle.
        .env("XDG_STATE_HOME", home.join("state"))
        .env_remove("EC2_AMITOOL_HOME")
        .env_remove("EC2_HOME")
        .env_remove("RUST_LOG")
        // Never reach for a real metadata service (169.254.169.254); tests that want metadata
        // remove this and point AWS_EC2_METADATA_SERVICE_ENDPOINT at an ImdsServer.
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .stdin(Stdio::null());
    cmd
}

/// Runs a command, returning its output; panics with both streams if it failed.
pub fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd.output().expect("spawn");
    assert!(
        out.status.success(),
        "{cmd:?} failed with {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Runs a command that must fail; returns its stderr.
pub fn run_err(cmd: &mut Command) -> String {
    let out = cmd.output().expect("spawn");
    assert!(
        !out.status.success(),
        "{cmd:?} unexpectedly succeeded\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// SHA-1 of a file, by the system's sha1sum (independent of our code).
pub fn sha1sum(path: &Path) -> String {
    let out = run_ok(Command::new("sha1sum").arg(path));
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// Copies a bundle directory (manifest + parts) so a test can tamper with it.
pub fn copy_dir(src: &Path, dst: &Path) {
    fs::create_dir_all(dst).unwrap();
    for e in fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        fs::copy(e.path(), dst.join(e.file_name())).unwrap();
    }
}

/// Text of one element of a manifest (first occurrence), by plain string search.
pub fn element(xml: &str, tag: &str) -> String {
    let open = format!("<{tag}");
    let start = xml
        .find(&open)
        .unwrap_or_else(|| panic!("no <{tag}> in manifest"));
    let body = start + xml[start..].find('>').unwrap() + 1;
    let end = body + xml[body..].find(&format!("</{tag}>")).unwrap();
    xml[body..end].to_string()
}

/// Every `<filename>` of a manifest, in document order.
pub fn part_filenames(xml: &str) -> Vec<String> {
    xml.split("<filename>")
        .skip(1)
        .map(|s| s[..s.find("</filename>").unwrap()].to_string())
        .collect()
}

/// The result of decoding a bundle with openssl, gzip and GNU tar only.
pub struct Decoded {
    pub tar_sha1: String,
    pub tar_len: u64,
    pub gzip_header: Vec<u8>,
    pub image: PathBuf,
}

/// Decodes a bundle with standard tools only: `openssl pkeyutl -decrypt` of the user-wrapped
/// key and IV, `openssl enc -d -aes-128-cbc`, `gzip -d`, `sha1sum`, GNU `tar -x`.
pub fn decode_with_standard_tools(manifest: &Path, user_key: &Path, work: &Path) -> Decoded {
    let xml = fs::read_to_string(manifest).unwrap();
    let unwrap = |field: &str| -> String {
        let wrapped = hex::decode(element(&xml, field)).unwrap();
        let wrapped_path = work.join(format!("{field}.bin"));
        fs::write(&wrapped_path, wrapped).unwrap();
        let out = run_ok(
            Command::new("openssl")
                .args([
                    "pkeyutl",
                    "-decrypt",
                    "-pkeyopt",
                    "rsa_padding_mode:pkcs1",
                    "-inkey",
                ])
                .arg(user_key)
                .arg("-in")
                .arg(&wrapped_path),
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let key_hex = unwrap("user_encrypted_key");
    let iv_hex = unwrap("user_encrypted_iv");
    assert_eq!(key_hex.len(), 32, "wrapped key is 32 hex characters");
    assert_eq!(iv_hex.len(), 32, "wrapped IV is 32 hex characters");

    let dir = manifest.parent().unwrap();
    let enc = work.join("bundle.enc");
    let mut all = Vec::new();
    for name in part_filenames(&xml) {
        all.extend(fs::read(dir.join(name)).unwrap());
    }
    fs::write(&enc, all).unwrap();
    let gz = work.join("bundle.tar.gz");
    run_ok(
        Command::new("openssl")
            .args([
                "enc",
                "-d",
                "-aes-128-cbc",
                "-K",
                &key_hex,
                "-iv",
                &iv_hex,
                "-in",
            ])
            .arg(&enc)
            .arg("-out")
            .arg(&gz),
    );
    let gzip_header = fs::read(&gz).unwrap()[..10].to_vec();
    let tar = work.join("bundle.tar");
    let out = run_ok(Command::new("gzip").arg("-dc").arg(&gz));
    fs::write(&tar, &out.stdout).unwrap();
    let tar_sha1 = sha1sum(&tar);
    let extract = work.join("extracted");
    fs::create_dir_all(&extract).unwrap();
    run_ok(
        Command::new("tar")
            .arg("-xf")
            .arg(&tar)
            .arg("-C")
            .arg(&extract),
    );
    let name = element(&xml, "name");
    // The first <name> is the bundler's; the image name is inside <image>.
    let image_xml = &xml[xml.find("<image>").unwrap()..];
    let image_name = element(image_xml, "name");
    let _ = name;
    Decoded {
        tar_sha1,
        tar_len: fs::metadata(&tar).unwrap().len(),
        gzip_header,
        image: extract.join(image_name),
    }
}

/// Bytes allocated on disk for a file (st_blocks × 512).
pub fn allocated(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    fs::metadata(path).unwrap().blocks() * 512
}

/// `mib` MiB that do not compress (xorshift), varied by `seed`.
pub fn random_file(path: &Path, mib: usize, seed: u64) {
    let mut x = seed | 1;
    let mut data = vec![0u8; mib << 20];
    for chunk in data.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes());
    }
    fs::write(path, data).unwrap();
}

/// `xml` with its signature replaced by openssl's over machine_configuration ‖ image as they
/// stand in the file (docs/format.md §9), made with the private key at `key`.
pub fn signed_with(xml: &str, key: &Path) -> String {
    let scratch = tempfile::tempdir().unwrap();
    let signed = &xml[xml.find("<machine_configuration>").unwrap()
        ..xml.find("</image>").unwrap() + "</image>".len()];
    let data = scratch.path().join("signed");
    fs::write(&data, signed).unwrap();
    let signature = run_ok(
        Command::new("openssl")
            .args(["dgst", "-sha1", "-sign"])
            .arg(key)
            .arg(&data),
    )
    .stdout;
    let old_signature = element(xml, "signature");
    xml.replace(&old_signature, &hex::encode(signature))
}
