//! Orderly interruption: SIGINT/SIGTERM make long operations fail at the next read or write
//! with [`Interrupted`], so every guard on the way out (staging directories, temporary images)
//! cleans up before the process exits with 128 + the signal number. A second signal exits at
//! once.
//!
//! The library only *checks* the flag (through [`Interruptible`]); the binary installs the
//! handlers with [`install`]. Library users who install nothing are never interrupted.

use std::io::{self, Read, Write};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// The signal received, 0 for none.
static SIGNAL: AtomicUsize = AtomicUsize::new(0);
/// Set by the first signal; a second one then exits immediately.
static ARMED: AtomicBool = AtomicBool::new(false);

/// The operation was interrupted by a signal.
#[derive(Debug, thiserror::Error)]
#[error("interrupted by {}", signal_name(*.signal))]
pub struct Interrupted {
    /// The signal number.
    pub signal: i32,
}

fn signal_name(signal: i32) -> &'static str {
    match signal {
        signal_hook::consts::SIGINT => "SIGINT",
        signal_hook::consts::SIGTERM => "SIGTERM",
        _ => "a signal",
    }
}

/// Installs the SIGINT and SIGTERM handlers (binary only).
pub fn install() -> io::Result<()> {
    use signal_hook::flag;
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        // Registered first so it sees the flag as it was before this signal.
        flag::register_conditional_shutdown(sig, 128 + sig, &ARMED)?;
        flag::register_usize(sig, &SIGNAL, sig as usize)?;
        flag::register(sig, &ARMED)?;
    }
    Ok(())
}

/// The signal that interrupted us, if any.
pub fn signal() -> Option<i32> {
    match SIGNAL.load(Ordering::SeqCst) {
        0 => None,
        s => i32::try_from(s).ok(),
    }
}

/// Fails with [`Interrupted`] (inside an `io::Error` of kind `Other`, never `Interrupted`, which
/// std's loops would retry) once a signal has arrived.
pub fn check() -> io::Result<()> {
    match signal() {
        Some(signal) => Err(io::Error::other(Interrupted { signal })),
        None => Ok(()),
    }
}

/// A reader or writer that checks for a signal before every call.
#[derive(Debug)]
pub struct Interruptible<T>(pub T);

impl<T> Interruptible<T> {
    /// The wrapped reader or writer.
    pub fn into_inner(self) -> T {
        self.0
    }
}

impl<R: Read> Read for Interruptible<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        check()?;
        self.0.read(buf)
    }
}

impl<W: Write> Write for Interruptible<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        check()?;
        self.0.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}
