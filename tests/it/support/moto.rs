//! A real moto server (S3 + EC2 emulator, the pinned version `scripts/setup-emulator.sh`
//! installs into `.venv/`) on a free 127.0.0.1 port, one per test that needs it, killed and
//! reaped on drop.
//!
//! Behaviour worth knowing (moto 5.2.5, server mode): SigV4 signatures are not checked, but an
//! object GET without any `Authorization` header is treated as anonymous and refused with 403
//! unless the object is public, while unsigned PUTs are accepted; every response carries
//! `Connection: close`; `Expect: 100-continue` is answered with two `100 Continue` responses.

use std::fmt;
use std::fs::{self, File};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::http::{self, Body};

/// How long moto may take to answer its first request (it takes under a second).
const READY_TIMEOUT_SECS: u64 = 30;
/// Pause between readiness probes.
const READY_POLL_MILLIS: u64 = 50;
/// Attempts on a fresh port when another process took ours between probing and binding.
const PORT_ATTEMPTS: usize = 3;
/// Lines of the server log shown when it fails.
const LOG_TAIL_LINES: usize = 40;

/// A `Authorization` header moto accepts as "signed": it does not verify signatures, but it
/// refuses anonymous object reads. For raw self-test requests only; the SDK signs for real.
pub const FAKE_AUTHORIZATION: &str = "AWS4-HMAC-SHA256 \
    Credential=testing/20260101/us-east-1/s3/aws4_request, SignedHeaders=host, Signature=00";

/// A running moto server.
pub struct Moto {
    /// `http://127.0.0.1:PORT`: the endpoint for every service.
    pub endpoint: String,
    /// `127.0.0.1:PORT`.
    pub addr: String,
    child: Child,
    log: PathBuf,
    _dir: TempDir,
}

impl fmt::Debug for Moto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Moto")
            .field("endpoint", &self.endpoint)
            .field("pid", &self.child.id())
            .finish()
    }
}

/// `.venv/bin/moto_server` of this checkout.
pub fn moto_server_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/moto_server")
}

impl Moto {
    /// Starts moto and waits until it answers. Panics (with the server log) if it cannot.
    pub fn start() -> Self {
        let exe = moto_server_path();
        assert!(
            exe.exists(),
            "{} is missing: run scripts/setup-emulator.sh",
            exe.display()
        );
        let mut last_log = String::new();
        for _ in 0..PORT_ATTEMPTS {
            let port = free_port();
            let addr = format!("127.0.0.1:{port}");
            let dir = tempfile::tempdir().expect("temporary directory for the moto log");
            let log = dir.path().join("moto.log");
            let out = File::create(&log).expect("create moto log");
            let err = out.try_clone().expect("clone moto log handle");
            let child = Command::new(&exe)
                .args(["-H", "127.0.0.1", "-p", &port.to_string()])
                // Python buffers a redirected stdout; the log must be complete when we show it.
                .env("PYTHONUNBUFFERED", "1")
                .stdin(Stdio::null())
                .stdout(out)
                .stderr(err)
                .spawn()
                .unwrap_or_else(|e| panic!("spawning {}: {e}", exe.display()));
            let mut moto = Moto {
                endpoint: format!("http://{addr}"),
                addr,
                child,
                log,
                _dir: dir,
            };
            match moto.wait_ready() {
                Ok(()) => return moto,
                Err(Exit::PortTaken) => {
                    last_log = moto.log_tail();
                    continue; // dropping `moto` reaps it
                }
                Err(Exit::Failed(why)) => {
                    panic!("moto_server {why}; log tail:\n{}", moto.log_tail())
                }
            }
        }
        panic!("moto_server found no free port in {PORT_ATTEMPTS} attempts; log tail:\n{last_log}")
    }

    fn wait_ready(&mut self) -> Result<(), Exit> {
        let deadline = Instant::now() + Duration::from_secs(READY_TIMEOUT_SECS);
        loop {
            if let Some(status) = self.child.try_wait().ok().flatten() {
                let log = fs::read_to_string(&self.log).unwrap_or_default();
                if log.contains("Address already in use") {
                    return Err(Exit::PortTaken);
                }
                return Err(Exit::Failed(format!("exited early with {status}")));
            }
            if let Ok(r) = http::request(&self.endpoint, "GET", "/moto-api/", &[], Body::None) {
                if r.status == 200 {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                return Err(Exit::Failed(format!(
                    "did not answer GET /moto-api/ within {READY_TIMEOUT_SECS} s"
                )));
            }
            std::thread::sleep(Duration::from_millis(READY_POLL_MILLIS));
        }
    }

    /// Forgets every bucket, object, image… (`POST /moto-api/reset`), for reuse across tests.
    pub fn reset(&self) {
        let r = http::request(&self.endpoint, "POST", "/moto-api/reset", &[], Body::None)
            .unwrap_or_else(|e| panic!("resetting moto: {e}; log tail:\n{}", self.log_tail()));
        assert_eq!(r.status, 200, "resetting moto: {}", r.text());
    }

    /// The last lines of the server's log (requests, tracebacks).
    pub fn log_tail(&self) -> String {
        let log = fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

enum Exit {
    PortTaken,
    Failed(String),
}

/// A loopback port nobody listens on right now (the kernel's pick; moto binds it just after,
/// and a rare collision is retried).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("probe a free loopback port")
}
