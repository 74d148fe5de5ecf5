//! amibundle: save a Linux server, a directory or an image file as an EC2 instance-store AMI
//! bundle in the classic 2007-10-10 format, byte-compatible with Amazon's ec2-ami-tools.
//!
//! The library does the work: bundling ([`bundle`]), reading and checking bundles, snapshotting
//! volumes into images and checking that they boot ([`image`]), and, with the default `cli`
//! feature, S3 and EC2 ([`cloud`]). It never touches argv, the terminal or exit codes;
//! `src/main.rs` and [`cli`] do, and they call the library. The format is described in
//! `docs/format.md`; the module map is in `docs/architecture.md`.
//!
//! The types most callers need are re-exported here. Beyond them the public modules are the
//! format's building blocks (`bundle::{tar, gzip, crypto, manifest, parts, pipeline, trust, migrate}`),
//! the image workflows (`image::{snapshot, volume, mount, bootcheck, save}`) and, with the `cli`
//! feature, the cloud workflows (`cloud::{publish, unbundle, copy, ec2, s3, imds, config}`); the
//! modules they are built from (the tree copy, the filter, mkfs, loop devices, partition tables,
//! certificate pins, run locks …) are the crate's own.
//!
//! # Bundling an image
//!
//! ```
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use amibundle::{
//!     BundleSpec, Bundler, Certificate, Identity, ImageInput, LocalBundle, NoProgress,
//!     Overrides, UserKey, bundle_to_dir,
//! };
//!
//! // The insecure test keys of this repository stand in for the user's key pair and EC2's
//! // certificate (which amibundle pins per region: see `bundle::certs`).
//! let keys = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/keys");
//! let identity = Identity {
//!     user_key: UserKey::from_pem(&std::fs::read(keys.join("user-key.pem"))?)?,
//!     user_cert: Certificate::from_pem(&std::fs::read(keys.join("user-cert.pem"))?)?,
//!     ec2_cert: Certificate::from_pem(&std::fs::read(keys.join("ec2-test-cert.pem"))?)?,
//! };
//! let dir = tempfile::tempdir()?;
//! let image = dir.path().join("disk.img");
//! std::fs::write(&image, vec![7u8; 3 << 20])?;
//!
//! let spec = BundleSpec {
//!     name: "disk.img".into(),
//!     account: "1234-5678-9012".into(),
//!     arch: "x86_64".into(),
//!     kernel_id: None,
//!     ramdisk_id: None,
//!     block_device_mapping: Vec::new(),
//!     product_codes: Vec::new(),
//!     ancestry: Vec::new(),
//!     level: 6,
//!     threads: 2,
//!     bundler: Bundler::amibundle(),
//!     allow_oversize: false,
//! };
//! let report = bundle_to_dir(
//!     ImageInput::File(image),
//!     &spec,
//!     &identity,
//!     dir.path(),
//!     false,
//!     Overrides::default(),
//!     &NoProgress,
//! )?;
//! assert_eq!(report.manifest.image.size, 3 << 20);
//!
//! // Read it back as a stranger's bundle: signature, every part's SHA-1, the whole stream.
//! let bundle = LocalBundle::open(&report.manifest_path, None)?;
//! bundle.verify_signature(&identity.user_cert)?;
//! let check = bundle.decode(&identity.user_key, Default::default(), &NoProgress)?;
//! assert_eq!(check.image_size, 3 << 20);
//! # Ok(())
//! # }
//! ```
//!
//! # Uploading a bundle
//!
//! Not run here (it needs S3, or an emulator such as the test suite's moto server):
//!
//! ```no_run
//! # #[cfg(feature = "cli")]
//! # async fn upload() -> Result<(), Box<dyn std::error::Error>> {
//! use amibundle::cloud::config::{CloudConfig, CloudOptions};
//! use amibundle::cloud::s3::{self, BucketPolicy, BundleLocation, UploadOptions};
//! use amibundle::{LocalBundle, NoProgress};
//!
//! let cloud = CloudConfig::load(CloudOptions {
//!     region: Some("eu-west-1".into()),
//!     ..CloudOptions::default()
//! })
//! .await?;
//! let bundle = LocalBundle::open("/var/tmp/bundle/web.manifest.xml".as_ref(), None)?;
//! let location = BundleLocation::parse("my-bundles/web")?;
//! let client = cloud.s3_client("eu-west-1");
//! // In the region, owned by the bundle's account, with ACLs usable (EC2 reads the parts
//! // through the aws-exec-read ACL).
//! let policy = BucketPolicy { create: true, fix_ownership: false };
//! s3::ensure_bucket(&client, &location.bucket, "eu-west-1", None, policy).await?;
//! let options = UploadOptions {
//!     concurrency: s3::DEFAULT_CONCURRENCY,
//!     acl: s3::DEFAULT_ACL.into(),
//!     skip_manifest: false,
//!     from_part: 0,
//!     resume: true,
//! };
//! let report = s3::upload_bundle(&client, &location, &bundle, &options, &NoProgress).await?;
//! println!("{}", report.image_location);
//! # Ok(())
//! # }
//! ```

pub mod bundle;
#[cfg(feature = "cli")]
pub mod cli;
#[cfg(feature = "cli")]
pub mod cloud;
pub mod image;
pub mod interrupt;
pub mod progress;

pub use bundle::crypto::{Certificate, UserKey};
pub use bundle::manifest::{Bundler, Manifest};
pub use bundle::pipeline::{
    BundleReport, BundleSpec, DecodeOptions, Identity, ImageInput, LocalBundle, Overrides,
    bundle_to_dir,
};
pub use bundle::trust::SignatureCheck;
pub use progress::{NoProgress, Progress};

/// The repository's test data (`tests/data`: reference vectors and insecure test keys; see its
/// README), for the unit tests.
#[cfg(test)]
pub(crate) fn test_data() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data")
}
