//! Terminal output: progress bars (or plain lines when stderr is not a terminal), logging set-up
//! and the JSON result on stdout.

use std::io::{self, IsTerminal, Write};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

use crate::progress::Progress;

/// The bars currently drawn (on a terminal), so log lines can be printed above them without
/// tearing them.
static ACTIVE_BARS: Mutex<Option<MultiProgress>> = Mutex::new(None);

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
        let bars = ACTIVE_BARS.lock().ok().and_then(|g| g.clone());
        let write = || {
            let _ = io::stderr().write_all(&self.0);
        };
        match bars {
            Some(bars) => bars.suspend(write),
            None => write(),
        }
    }
}

/// Progress on stderr: a bar on a terminal, otherwise one line when a phase starts, a line at
/// most every few seconds, and one when it ends (friendly to Packer and CI logs). A planned job
/// of several steps ([`Progress::plan`]) gets a header: on a terminal a line above the bars
/// with the step and the job's elapsed time, otherwise a line per step, and every phase line
/// is marked with its step (`[2/3] bundling ...`).
pub struct CliProgress {
    mode: Mode,
    /// On a terminal: where the header and the phase bars are drawn.
    bars: Option<MultiProgress>,
    state: Mutex<PlainState>,
    plan: Mutex<Option<Plan>>,
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

/// A job of several steps and where it is.
struct Plan {
    job: String,
    steps: Vec<String>,
    /// Index of the step under way.
    current: Option<usize>,
    started: Instant,
    /// On a terminal: the header line.
    header: Option<ProgressBar>,
}

impl Plan {
    /// `"[2/3] "` while a step is under way, else empty.
    fn tag(&self) -> String {
        self.current
            .map(|i| format!("[{}/{}] ", i + 1, self.steps.len()))
            .unwrap_or_default()
    }
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
        let bars = (mode == Mode::Bar).then(|| {
            let bars = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
            if let Ok(mut active) = ACTIVE_BARS.lock() {
                *active = Some(bars.clone());
            }
            bars
        });
        Self {
            mode,
            bars,
            state: Mutex::new(PlainState {
                phase: String::new(),
                items: String::new(),
                total: None,
                done: 0,
                started: Instant::now(),
                last_line: Instant::now(),
                bar: None,
            }),
            plan: Mutex::new(None),
        }
    }

    /// A line for the user: above the bars on a terminal, else on stderr.
    fn line(&self, text: String) {
        match (&self.bars, self.mode) {
            (_, Mode::Quiet) => {}
            (Some(bars), _) => {
                let _ = bars.println(text);
            }
            (None, _) => eprintln!("{text}"),
        }
    }

    /// The step tag of the planned job (`"[2/3] "`), or empty.
    fn tag(&self) -> String {
        self.plan
            .lock()
            .ok()
            .and_then(|p| p.as_ref().map(Plan::tag))
            .unwrap_or_default()
    }
}

fn human(bytes: u64) -> String {
    crate::progress::human_bytes(bytes)
}

fn rate(bytes: u64, elapsed: Duration) -> String {
    let secs = elapsed.as_secs_f64().max(1e-3);
    format!("{}/s", human((bytes as f64 / secs) as u64))
}

impl Progress for CliProgress {
    fn start(&self, phase: &str, total_bytes: Option<u64>) {
        let tag = self.tag();
        let Ok(mut st) = self.state.lock() else {
            return;
        };
        st.phase = format!("{tag}{phase}");
        st.items.clear();
        st.total = total_bytes;
        st.done = 0;
        st.started = Instant::now();
        st.last_line = Instant::now();
        match (self.mode, &self.bars) {
            (Mode::Bar, Some(bars)) => {
                let bar = bars.add(ProgressBar::new(total_bytes.unwrap_or(0)));
                if total_bytes.is_none() {
                    bar.unset_length();
                }
                let template = if total_bytes.is_some() {
                    "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}"
                } else {
                    "{msg} {bytes} {bytes_per_sec} {elapsed}"
                };
                let style = ProgressStyle::with_template(template)
                    .map(|s| s.progress_chars("=> "))
                    .unwrap_or_else(|_| ProgressStyle::default_bar());
                bar.set_style(style);
                bar.set_message(st.phase.clone());
                st.bar = Some(bar);
            }
            (Mode::Quiet, _) => {}
            _ => {
                let total = total_bytes
                    .map(|t| format!(" ({})", human(t)))
                    .unwrap_or_default();
                eprintln!("{}{total}...", st.phase);
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
            if let Some(bars) = &self.bars {
                bars.remove(&bar);
            }
        }
        let text = format!(
            "{}: {}{} in {:.1} s ({})",
            st.phase,
            human(st.done),
            st.items,
            elapsed.as_secs_f64(),
            rate(st.done, elapsed)
        );
        drop(st);
        self.line(text);
    }

    fn plan(&self, job: &str, steps: &[&str]) {
        let header = match (self.mode, &self.bars) {
            (Mode::Bar, Some(bars)) => {
                let header = bars.insert(0, ProgressBar::new_spinner());
                let style = ProgressStyle::with_template("{spinner} {prefix}: {msg}, {elapsed}")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner());
                header.set_style(style);
                header.set_prefix(job.to_string());
                header.set_message(format!("{} steps", steps.len()));
                header.enable_steady_tick(Duration::from_millis(200));
                Some(header)
            }
            _ => None,
        };
        if let Ok(mut plan) = self.plan.lock() {
            *plan = Some(Plan {
                job: job.to_string(),
                steps: steps.iter().map(|s| s.to_string()).collect(),
                current: None,
                started: Instant::now(),
                header,
            });
        }
        if self.mode == Mode::Plain {
            eprintln!("{job}: {} steps: {}", steps.len(), steps.join(", "));
        }
    }

    fn step(&self, name: &str) {
        let Ok(mut guard) = self.plan.lock() else {
            return;
        };
        let Some(plan) = guard.as_mut() else {
            return;
        };
        let Some(index) = plan.steps.iter().position(|s| s == name) else {
            return;
        };
        plan.current = Some(index);
        match &plan.header {
            Some(header) => {
                header.set_message(format!("step {}/{}: {name}", index + 1, plan.steps.len()));
            }
            None if self.mode == Mode::Plain => eprintln!(
                "{}{name} ({:.1} s into {})",
                plan.tag(),
                plan.started.elapsed().as_secs_f64(),
                plan.job
            ),
            None => {}
        }
    }

    fn plan_done(&self) {
        let Some(plan) = self.plan.lock().ok().and_then(|mut p| p.take()) else {
            return;
        };
        if let Some(header) = &plan.header {
            header.finish_and_clear();
            if let Some(bars) = &self.bars {
                bars.remove(header);
            }
        }
        self.line(format!(
            "{}: {} steps done in {:.1} s",
            plan.job,
            plan.steps.len(),
            plan.started.elapsed().as_secs_f64()
        ));
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

/// An output directory given by `flag` (`-d/--destination`, `-d/--directory`): an existing
/// directory as it is, else created with its missing parents, mode 0700 (what goes into it is a
/// bundle or the image it holds). Every command's `-d` behaves this way.
pub fn ensure_dir(dir: &std::path::Path, flag: &str) -> anyhow::Result<()> {
    use anyhow::Context;
    use std::os::unix::fs::DirBuilderExt;
    match std::fs::metadata(dir) {
        Ok(md) if md.is_dir() => Ok(()),
        Ok(_) => anyhow::bail!("{flag} {} is not a directory", dir.display()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("creating {flag} {}", dir.display())),
        Err(e) => Err(e).with_context(|| format!("{flag} {}", dir.display())),
    }
}
