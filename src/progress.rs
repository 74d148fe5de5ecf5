//! Progress reporting from the library without any terminal code.
//!
//! Long operations call a [`Progress`] implementation; the CLI supplies one backed by indicatif
//! (or plain lines when stderr is not a terminal), library users and tests pass [`NoProgress`].

/// Receives progress of long operations. Implementations must be cheap: `inc` is called for
/// every megabyte or so of data.
pub trait Progress: Send + Sync {
    /// A new phase starts (`"bundling"`, `"verifying parts"` …) with a known total in bytes, if any.
    fn start(&self, phase: &str, total_bytes: Option<u64>);
    /// `bytes` more of the current phase are done.
    fn inc(&self, bytes: u64);
    /// Countable items of the current phase (`"parts"`): `done` so far of `total`, if known.
    /// Shown beside the byte count; optional.
    fn items(&self, _label: &str, _done: u64, _total: Option<u64>) {}
    /// The current phase is complete.
    fn finish(&self);
}

/// Ignores all progress.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoProgress;

impl Progress for NoProgress {
    fn start(&self, _phase: &str, _total_bytes: Option<u64>) {}
    fn inc(&self, _bytes: u64) {}
    fn finish(&self) {}
}
