//! Terminal output: progress bars (or plain lines when stderr is not a terminal), logging set-up
//! and the JSON result on stdout.

use std::io::{self, IsTerminal, Write};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

use crate::progress::Progress;

/// The bar currently drawn, so log lines can be printed above it without tearing it.
static ACTIVE_BAR: Mutex<Option<ProgressBar>> = Mutex::new(None);

/// Minimum interval between plain progress lines.
const PLAIN_LINE_INTERVAL: Duration = Duration::from_secs(5);

/// Sets up `tracing` on stderr: our crate at info (debug with -v, trace with -vv, warn with -q),
/// dependencies at warn; `RUST_LOG` overrides.
pub fn init_logging(verbose: u8, quiet: bool) {
    let ours = match (quiet, verbose) {
        (true, _) => "warn",
        (false, 0) => "info",
        (false, 1) => "debug",
        (false, _) => "trace",
    };
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(format!("warn,amibundle={ours}")));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(LogWriter)
        .with_target(false)
        .without_time()
        .with_ansi(io::stderr().is_terminal())
        .try_init();
}

/// Writes log lines to stderr, suspending the active progress bar meanwhile.
struct LogWriter;

impl<'a> MakeWriter<'a> for LogWriter {
    type Writer = LogLine;
    fn make_writer(&'a self) -> Self::Writer {
        LogLine(Vec::new())
    }
}

/// One buffered log line, written on drop.
struct LogLine(Vec<u8>);

impl Write for LogLine {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for LogLine {
    fn drop(&mut self) {
        let bar = ACTIVE_BAR.lock().ok().and_then(|g| g.clone());
        let write = || {
            let _ = io::stderr().write_all(&self.0);
        };
        match bar {
            Some(bar) => bar.suspend(write),
            None => write(),
        }
    }
}

/// Progress on stderr: a bar on a terminal, otherwise one line when a phase starts, a line at
/// most every few seconds, and one when it ends (friendly to Packer and CI logs).
pub struct CliProgress {
    mode: Mode,
    state: Mutex<PlainState>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Bar,
    Plain,
    Quiet,
}

struct PlainState {
    phase: String,
    /// `" 3/51 parts"`, or empty.
    items: String,
    total: Option<u64>,
    done: u64,
    started: Instant,
    last_line: Instant,
    bar: Option<ProgressBar>,
}

impl CliProgress {
    /// Chooses bars when stderr is a terminal and not `quiet`.
    pub fn new(quiet: bool) -> Self {
        let mode = if quiet {
            Mode::Quiet
        } else if io::stderr().is_terminal() {
            Mode::Bar
        } else {
            Mode::Plain
        };
        Self {
            mode,
            state: Mutex::new(PlainState {
                phase: String::new(),
                items: String::new(),
                total: None,
                done: 0,
                started: Instant::now(),
                last_line: Instant::now(),
                bar: None,
            }),
        }
    }
}

fn human(bytes: u64) -> String {
    indicatif::HumanBytes(bytes).to_string()
}

fn rate(bytes: u64, elapsed: Duration) -> String {
    let secs = elapsed.as_secs_f64().max(1e-3);
    format!("{}/s", human((bytes as f64 / secs) as u64))
}

impl Progress for CliProgress {
    fn start(&self, phase: &str, total_bytes: Option<u64>) {
        let Ok(mut st) = self.state.lock() else {
            return;
        };
        st.phase = phase.to_string();
        st.items.clear();
        st.total = total_bytes;
        st.done = 0;
        st.started = Instant::now();
        st.last_line = Instant::now();
        match self.mode {
            Mode::Quiet => {}
            Mode::Plain => {
                let total = total_bytes
                    .map(|t| format!(" ({})", human(t)))
                    .unwrap_or_default();
                eprintln!("{phase}{total}...");
            }
            Mode::Bar => {
                let bar = ProgressBar::with_draw_target(total_bytes, ProgressDrawTarget::stderr());
                let style = ProgressStyle::with_template(
                    "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
                )
                .map(|s| s.progress_chars("=> "))
                .unwrap_or_else(|_| ProgressStyle::default_bar());
                bar.set_style(style);
                bar.set_message(phase.to_string());
                if let Ok(mut active) = ACTIVE_BAR.lock() {
                    *active = Some(bar.clone());
                }
                st.bar = Some(bar);
            }
        }
    }

    fn inc(&self, bytes: u64) {
        let Ok(mut st) = self.state.lock() else {
            return;
        };
        st.done += bytes;
        if let Some(bar) = &st.bar {
            bar.inc(bytes);
        } else if self.mode == Mode::Plain && st.last_line.elapsed() >= PLAIN_LINE_INTERVAL {
            st.last_line = Instant::now();
            let pct = st
                .total
                .filter(|t| *t > 0)
                .map(|t| format!(" {:.0}%", st.done as f64 * 100.0 / t as f64))
                .unwrap_or_default();
            eprintln!(
                "{}: {}{}{} at {}",
                st.phase,
                human(st.done),
                pct,
                st.items,
                rate(st.done, st.started.elapsed())
            );
        }
    }

    fn items(&self, label: &str, done: u64, total: Option<u64>) {
        let Ok(mut st) = self.state.lock() else {
            return;
        };
        st.items = match total {
            Some(t) => format!(", {done}/{t} {label}"),
            None => format!(", {done} {label}"),
        };
        if let Some(bar) = &st.bar {
            bar.set_message(format!("{}{}", st.phase, st.items));
        }
    }

    fn finish(&self) {
        let Ok(mut st) = self.state.lock() else {
            return;
        };
        let elapsed = st.started.elapsed();
        if let Some(bar) = st.bar.take() {
            bar.finish_and_clear();
            if let Ok(mut active) = ACTIVE_BAR.lock() {
                *active = None;
            }
        }
        if self.mode != Mode::Quiet {
            eprintln!(
                "{}: {}{} in {:.1} s ({})",
                st.phase,
                human(st.done),
                st.items,
                elapsed.as_secs_f64(),
                rate(st.done, elapsed)
            );
        }
    }
}

/// `base` (an object) with the fields of `extra` (an object, if any) added.
pub fn with_fields(
    mut base: serde_json::Value,
    extra: Option<serde_json::Value>,
) -> serde_json::Value {
    if let (Some(obj), Some(serde_json::Value::Object(extra))) = (base.as_object_mut(), extra) {
        obj.extend(extra);
    }
    base
}

/// Prints a JSON value on stdout as one line.
pub fn print_json(value: &serde_json::Value) -> anyhow::Result<()> {
    let mut out = io::stdout().lock();
    serde_json::to_writer(&mut out, value)?;
    writeln!(out)?;
    Ok(())
}
