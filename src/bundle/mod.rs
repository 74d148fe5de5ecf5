//! The bundle engine: image → tar → SHA-1 → gzip → AES-128-CBC → 10 MiB parts + signed
//! manifest, and the reverse (verify, unbundle). See `docs/format.md` and `docs/architecture.md`.

#[cfg(feature = "cli")]
pub(crate) mod certs;
pub mod crypto;
pub mod digest;
#[cfg(feature = "cli")]
pub(crate) mod fsutil;
pub mod gzip;
pub(crate) mod lock;
pub mod manifest;
pub mod migrate;
pub mod parts;
pub mod pipeline;
pub(crate) mod space;
pub mod tar;
pub mod trust;

use std::io;
use std::path::PathBuf;

/// An error and its causes on one line, `a: b: c` (for messages that embed another error).
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut cause = err.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

/// Everything that can go wrong while bundling, verifying or unbundling.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Tar writing or reading.
    #[error(transparent)]
    Tar(#[from] tar::TarError),
    /// Keys, certificates, cipher.
    #[error(transparent)]
    Crypto(#[from] crypto::CryptoError),
    /// Manifest model, parser, signature.
    #[error(transparent)]
    Manifest(#[from] manifest::ManifestError),
    /// EC2 certificate lookup.
    #[cfg(feature = "cli")]
    #[error(transparent)]
    Cert(#[from] certs::CertError),
    /// A part failed its checks.
    #[error(transparent)]
    Part(#[from] parts::PartError),
    /// Another run is writing the same bundle.
    #[error(transparent)]
    Lock(#[from] lock::LockError),
    /// The destination's filesystem is too small, found up front or midway.
    #[error(transparent)]
    NoSpace(#[from] space::NoSpace),
    /// The image could not be opened.
    #[error("opening image {}", path.display())]
    OpenImage {
        /// Image path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// The image is not something we can bundle.
    #[error("image {} is {kind}; give a regular image file", path.display())]
    NotAFile {
        /// Image path.
        path: PathBuf,
        /// What it is.
        kind: &'static str,
    },
    /// A zero-byte image.
    #[error("image {0} is empty: there is nothing to bundle")]
    EmptyImage(String),
    /// Above EC2's limit.
    #[error(
        "image {image} is {size} bytes, more than the 10 GiB (10737418240 bytes) EC2 allows for an instance-store image; pass --allow-oversize to bundle it anyway"
    )]
    ImageTooLarge {
        /// Image label.
        image: String,
        /// Its size.
        size: u64,
    },
    /// A manifest declaring an image above EC2's limit, read without `--allow-oversize`.
    #[error(
        "the manifest says image {name} is {size} bytes, more than the 10 GiB (10737418240 bytes) \
         EC2 accepts for an instance-store image: refused, since a bundle can claim any size; \
         pass --allow-oversize if you expect an image this large (one bundled with \
         --allow-oversize)"
    )]
    DeclaredTooLarge {
        /// Image name.
        name: String,
        /// Declared size.
        size: u64,
    },
    /// Unknown architecture.
    #[error("architecture {0:?} is not supported: use i386, x86_64 or arm64 (--arch)")]
    Architecture(String),
    /// Compression level out of range.
    #[error(
        "compression level {0} is out of range: use 1 (fastest) to 9 (smallest) (--compression-level)"
    )]
    Level(u32),
    /// The destination directory is unusable.
    #[error("using destination directory {}", dir.display())]
    Destination {
        /// Directory.
        dir: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// Refusing to replace an existing file.
    #[error("{} already exists; pass --overwrite to replace it", .0.display())]
    Exists(PathBuf),
    /// Writing parts or the manifest failed.
    #[error("writing the bundle in {}", dir.display())]
    WriteBundle {
        /// Destination.
        dir: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// More parts than a manifest index can hold.
    #[error("the bundle would have {0} parts, more than the format allows")]
    TooManyParts(usize),
    /// The manifest file could not be read.
    #[error("reading manifest {}", path.display())]
    ReadManifest {
        /// Manifest path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// The manifest is unreasonably large.
    #[error("manifest {} is larger than 16 MiB: not a bundle manifest", .0.display())]
    ManifestTooLarge(PathBuf),
    /// The manifest could not be parsed.
    #[error("parsing manifest {}", path.display())]
    ParseManifest {
        /// Manifest path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: manifest::ManifestError,
    },
    /// A part named by the manifest is missing.
    #[error("part {filename} is missing ({})", path.display())]
    MissingPart {
        /// Manifest file name.
        filename: String,
        /// Path tried.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// The parts do not add up to `bundled_size`.
    #[error(
        "the parts add up to {actual} bytes but the manifest's bundled_size is {expected}: a part is truncated or extended"
    )]
    BundledSize {
        /// From the manifest.
        expected: u64,
        /// On disk.
        actual: u64,
    },
    /// The decoded stream does not match `image/digest`.
    #[error(
        "the decrypted tar stream has SHA-1 {actual} but the manifest's image digest is {expected}: the bundle is corrupt or the manifest was altered"
    )]
    DigestMismatch {
        /// From the manifest.
        expected: String,
        /// Computed.
        actual: String,
    },
    /// The image size does not match `image/size`.
    #[error("the bundled image is {actual} bytes but the manifest's image size is {expected}")]
    SizeMismatch {
        /// From the manifest.
        expected: u64,
        /// In the tar stream.
        actual: u64,
    },
    /// The tar member is not the image the manifest names.
    #[error(
        "the tar member is named {member:?} but the manifest's image is {image:?}: refused (the \
         image is written under the manifest's name, and a bundle whose stream disagrees with \
         it is not the one described)"
    )]
    MemberName {
        /// In the tar stream.
        member: String,
        /// `image/name` of the manifest.
        image: String,
    },
    /// Decrypting or decompressing failed.
    #[error("decoding the bundle")]
    Decode(#[source] io::Error),
    /// The output image could not be written.
    #[error("writing image {}", path.display())]
    WriteImage {
        /// Path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
}
