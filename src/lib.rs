//! amibundle: save a Linux server, a directory or an image file as an EC2 instance-store AMI
//! bundle in the classic 2007-10-10 format, byte-compatible with Amazon's ec2-ami-tools.
//!
//! The library never touches argv, the terminal or exit codes; `src/main.rs` and [`cli`] do.
//! The normative format is described in `docs/format.md`.

pub mod bundle;
#[cfg(feature = "cli")]
pub mod cli;
#[cfg(feature = "cli")]
pub mod cloud;
pub mod image;
pub mod interrupt;
pub mod progress;

/// The repository's test data (`tests/data`: reference vectors and insecure test keys; see its
/// README), for the unit tests.
#[cfg(test)]
pub(crate) fn test_data() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data")
}
