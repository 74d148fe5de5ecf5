//! Test support for the root-only image tests: the root check, sparse files, and running part
//! of a test in a child process.
//!
//! Entering a private mount namespace changes only the calling thread (and threads it creates
//! later), and the test harness runs every test on a thread of its own beside its main thread.
//! So tests that mount re-execute the test binary filtered to themselves, with
//! [`CHILD_ENV`] naming the test: in that process the test plays the child's part
//! ([`is_child`]), while the parent checks from outside, e.g. that its own
//! `/proc/self/mountinfo` never shows what the child mounted. The two talk over the child's
//! stdin and stdout, one line at a time.

use std::ffi::OsStr;
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

/// Set in a re-executed test binary to the full name of the test whose child part it runs.
pub const CHILD_ENV: &str = "AMIBUNDLE_IMAGE_TEST_CHILD";

/// Marks the lines a child sends (the harness prints its own lines on the same stdout).
const CHILD_LINE: &str = "@@child@@ ";

/// Fails the test unless running as root (loop devices, mkfs on devices, mounts, namespaces).
/// CI runs as root; these tests fail loudly rather than skip without it.
pub fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the image tests need root (loop devices, mounts, namespaces); CI runs as root"
    );
}

/// Creates a sparse file of `size` bytes.
pub fn sparse_file(dir: &Path, name: &str, size: u64) -> PathBuf {
    let path = dir.join(name);
    File::create(&path)
        .and_then(|f| f.set_len(size))
        .unwrap_or_else(|e| panic!("creating {}: {e}", path.display()));
    path
}

/// The harness's name of test `function` in the module `module_path!()` gave.
pub fn test_name(module_path: &str, function: &str) -> String {
    let module = module_path
        .split_once("::")
        .map_or(module_path, |(_crate, rest)| rest);
    format!("{module}::{function}")
}

/// Whether this process runs the child part of `test` (a full test name, see [`test_name`]).
pub fn is_child(test: &str) -> bool {
    std::env::var_os(CHILD_ENV).is_some_and(|v| v == OsStr::new(test))
}

/// In the child: sends `key value` to the parent.
pub fn child_send(key: &str, value: &str) {
    let mut out = std::io::stdout().lock();
    writeln!(out, "\n{CHILD_LINE}{key} {value}")
        .and_then(|()| out.flush())
        .expect("writing to the parent");
}

/// In the child: waits for the parent's next line.
pub fn child_receive() -> String {
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .expect("reading from the parent");
    line.trim_end().to_owned()
}

/// The child process running the child part of a test.
pub struct TestChild {
    test: String,
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
    transcript: String,
}

impl TestChild {
    /// Re-executes this test binary running only `test`, as its child, with `env` added.
    pub fn spawn(test: &str, env: &[(&str, &OsStr)]) -> Self {
        let exe = std::env::current_exe().expect("test binary path");
        let mut cmd = Command::new(exe);
        // `--include-ignored`: the tests that re-execute themselves need root and are
        // `#[ignore]`d; the child must run its part even so (the parent runs only when asked).
        cmd.args([
            test,
            "--exact",
            "--include-ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, test)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
        for (key, value) in env {
            cmd.env(key, value);
        }
        let mut child = cmd.spawn().expect("starting the child test process");
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().expect("child stdout"));
        Self {
            test: test.to_owned(),
            child,
            stdin,
            stdout,
            transcript: String::new(),
        }
    }

    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for the child to send `key` and returns its value; fails the test (showing what the
    /// child printed) if the child ends first.
    pub fn receive(&mut self, key: &str) -> String {
        loop {
            let mut line = String::new();
            let n = self
                .stdout
                .read_line(&mut line)
                .expect("reading the child's stdout");
            if n == 0 {
                let status = self.child.wait().expect("waiting for the child");
                panic!(
                    "the child of {} ended ({status}) before sending {key}; its stdout:\n{}",
                    self.test, self.transcript
                );
            }
            self.transcript.push_str(&line);
            if let Some(rest) = line.trim_end().strip_prefix(CHILD_LINE) {
                let (got, value) = rest.split_once(' ').unwrap_or((rest, ""));
                assert_eq!(got, key, "the child of {} sent {rest}", self.test);
                return value.to_owned();
            }
        }
    }

    /// Sends a line to the child.
    pub fn send(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("child stdin open");
        writeln!(stdin, "{line}")
            .and_then(|()| stdin.flush())
            .expect("writing to the child");
    }

    /// Waits for the child to end and fails the test unless it passed.
    pub fn finish(mut self) {
        drop(self.stdin.take());
        let mut rest = String::new();
        let _ = std::io::Read::read_to_string(&mut self.stdout, &mut rest);
        self.transcript.push_str(&rest);
        let status = self.child.wait().expect("waiting for the child");
        assert!(
            status.success(),
            "the child of {} failed ({status}); its stdout:\n{}",
            self.test,
            self.transcript
        );
    }
}

/// The mount points in a `/proc/<pid>/mountinfo`, unescaped. `thread-self` for the calling
/// thread: `self` is the main thread, which the private namespace of a test child does not
/// include.
pub fn mount_points(pid: &str) -> Vec<PathBuf> {
    let text = std::fs::read(format!("/proc/{pid}/mountinfo")).expect("reading mountinfo");
    crate::image::fs::parse_mountinfo(&text)
        .expect("parsing mountinfo")
        .into_iter()
        .map(|m| m.mount_point)
        .collect()
}
