//! Progress reporting from the library without any terminal code.
//!
//! Long operations call a [`Progress`] implementation; the CLI supplies one backed by indicatif
//! (or plain lines when stderr is not a terminal), library users and tests pass [`NoProgress`].
//!
//! A job of several steps (`save`: snapshot, bundle and upload, register) announces them with
//! [`Progress::plan`] and moves through them with [`Progress::step`]; the phases of each step
//! (`"copying files"`, `"bundling"` …) are shown under it, so the user sees one display for
//! the whole job: which step of how many, and the time since the job began.

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
    /// A job of several steps begins: `job` names it (`"save"`), `steps` are the names that
    /// [`step`](Progress::step) will be called with, in order. Optional.
    fn plan(&self, _job: &str, _steps: &[&str]) {}
    /// The step `name` of the plan begins (ignored without a plan or for a name not in it).
    fn step(&self, _name: &str) {}
    /// The planned job is complete (every step succeeded).
    fn plan_done(&self) {}
}

/// Ignores all progress.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoProgress;

impl Progress for NoProgress {
    fn start(&self, _phase: &str, _total_bytes: Option<u64>) {}
    fn inc(&self, _bytes: u64) {}
    fn finish(&self) {}
}

/// The step names of the multi-step jobs (`save`, `bundle-vol`, `bundle-image --upload
/// --register`), announced with [`Progress::plan`] and entered with [`Progress::step`].
pub mod steps {
    /// Copying a volume into its image.
    pub const SNAPSHOT: &str = "snapshot";
    /// Bundling into a local directory.
    pub const BUNDLE: &str = "bundle";
    /// Bundling straight into S3.
    pub const BUNDLE_UPLOAD: &str = "bundle and upload";
    /// Registering the AMI.
    pub const REGISTER: &str = "register";
}

/// A byte count for people, in binary units with two decimals (`512 B`, `3.12 KiB`,
/// `1.50 GiB`), as the progress bars show them.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.2} {}", UNITS[unit])
}

#[cfg(test)]
mod human_bytes_tests {
    use super::human_bytes;

    #[test]
    fn binary_units_with_two_decimals() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1024), "1.00 KiB");
        assert_eq!(human_bytes(3200), "3.12 KiB");
        assert_eq!(human_bytes(10 << 30), "10.00 GiB");
        assert_eq!(human_bytes(u64::MAX), "16.00 EiB");
    }
}
