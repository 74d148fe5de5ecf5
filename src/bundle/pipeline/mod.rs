//! The bundling and unbundling pipelines, as stacks of streaming adapters.
//!
//! Bundling (one pass over the image, bounded memory):
//!
//! ```text
//! image ──tar::write_stream──► HashingWriter (image/digest, §4)
//!       ──► ParallelGzEncoder (one gzip member, all cores, §5)
//!       ──► CountingWriter (|G|) ──► CbcEncryptWriter (AES-128-CBC, §6)
//!       ──► PartWriter (10 MiB parts, SHA-1 each, §8) ──► PartSink (staging dir)
//! ```
//!
//! then the manifest is built, signed and committed last (§9). Unbundling stacks the readers
//! the other way round: a ciphertext source that checks each part's SHA-1 before its bytes are
//! used (`PartReader` for local parts, `cloud::s3::PartStream` for S3) → `CbcDecryptReader` → `GzipReader` → `HashingReader` → `TarReader`, writing the image sparse
//! into a temporary file that is renamed only after every check has passed (§12).
//!
//! Peak memory: one part buffer (10 MiB) + the compressor's in-flight chunks
//! (2 × threads × 1 MiB in and out, capped at 48 MiB) + the tar read buffer (1 MiB).
//!
//! `bundling` holds the first stack and what goes into it, `unbundling` the second and the
//! local bundle it usually reads.
//!
//! Bare § numbers in this module refer to docs/format.md.

mod bundling;
mod unbundling;

pub use self::bundling::{
    BundleReport, BundleSpec, Identity, ImageInput, Overrides, PreparedImage, StreamedBundle,
    bundle_to_dir, bundle_to_sink,
};
pub use self::unbundling::{
    DecodeOptions, DecodeReport, LocalBundle, VerifyReport, check_declared_size, decode_ciphertext,
    decode_ciphertext_into,
};

/// EC2's limit for an instance-store root image (docs/format.md §2).
pub const MAX_IMAGE_BYTES: u64 = 10 * 1024 * 1024 * 1024;

/// Architectures accepted in `machine_configuration/architecture` (§2).
pub const ARCHITECTURES: [&str; 3] = ["i386", "x86_64", "arm64"];
