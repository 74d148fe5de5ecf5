//! One call for every command that turns a bundle into its image (`unbundle`, `download
//! --unbundle`, `restore`, `check-image`): the manifest read from a directory or from S3, its
//! signature checked before anything is decrypted ([`SignatureCheck`]), then the parts decoded
//! into the image: read from the directory, or streamed from S3 without touching the disk
//! ([`s3::unbundle_stream`]).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::bundle::crypto::UserKey;
use crate::bundle::manifest::{Manifest, SignatureForm};
use crate::bundle::pipeline::{DecodeOptions, DecodeReport, LocalBundle};
use crate::bundle::tar::ImageSink;
use crate::bundle::trust::{SignatureCheck, TrustError};
use crate::cloud::config::CloudConfig;
use crate::cloud::s3::{self, BundleLocation, S3Error};
use crate::progress::Progress;

/// Where a bundle is.
#[derive(Debug, Clone)]
pub enum BundleRef {
    /// A manifest file; its parts in `parts` (default: beside it).
    Local {
        /// The manifest.
        manifest: PathBuf,
        /// The parts' directory.
        parts: Option<PathBuf>,
    },
    /// A manifest in S3.
    S3 {
        /// Bucket and prefix.
        location: BundleLocation,
        /// `NAME.manifest.xml`.
        manifest_name: String,
    },
}

impl BundleRef {
    /// `s3://BUCKET/[PREFIX/]NAME.manifest.xml` is in S3; anything else is a local file.
    pub fn parse(text: &str) -> Result<Self, S3Error> {
        if text.starts_with("s3://") {
            let (location, manifest_name) = BundleLocation::parse_manifest_url(text)?;
            Ok(BundleRef::S3 {
                location,
                manifest_name,
            })
        } else {
            Ok(BundleRef::Local {
                manifest: PathBuf::from(text),
                parts: None,
            })
        }
    }

    /// The manifest's path or `s3://` address, for messages.
    pub fn describe(&self) -> String {
        match self {
            BundleRef::Local { manifest, .. } => manifest.display().to_string(),
            BundleRef::S3 {
                location,
                manifest_name,
            } => format!("{location}{manifest_name}"),
        }
    }
}

/// S3 access for a bundle in S3: the runtime that runs the downloads (the decode runs on the
/// caller's thread) and the configuration.
#[derive(Clone, Copy)]
pub struct Remote<'a> {
    /// Runs the downloads; the caller is outside it.
    pub runtime: &'a tokio::runtime::Handle,
    /// Region, credentials, endpoints.
    pub cloud: &'a CloudConfig,
    /// Parts fetched at once.
    pub concurrency: usize,
}

/// What [`unbundle`] did.
#[derive(Debug)]
pub struct Unbundled {
    /// The bundle's manifest (its signature checked unless skipped).
    pub manifest: Manifest,
    /// The decode: image path, size, tar digest.
    pub decode: DecodeReport,
    /// How the manifest was signed; `None` when the check was skipped.
    pub signature: Option<SignatureForm>,
    /// Parts read.
    pub parts: usize,
    /// Part bytes downloaded (0 for a local bundle).
    pub bytes_downloaded: u64,
    /// The manifest's size.
    pub manifest_bytes: usize,
    /// Wall time, manifest to image.
    pub elapsed: Duration,
}

/// Why a bundle was not unbundled. Each names the bundle.
#[derive(Debug, thiserror::Error)]
pub enum UnbundleError {
    /// The bundle's manifest could not be read or parsed.
    #[error("reading {what}")]
    Read {
        /// The bundle.
        what: String,
        /// Why.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A bundle in S3 and no S3 access was given.
    #[error("{0} is in S3: no S3 configuration was given")]
    NoRemote(String),
    /// The signature check refused it.
    #[error(transparent)]
    Trust(#[from] TrustError),
    /// Decrypting, decompressing, untarring, or a download during the decode.
    #[error("unbundling {what}")]
    Decode {
        /// The bundle.
        what: String,
        /// Why.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// Reads the manifest of `bundle`, checks its signature with `check` (and `key`, the private
/// key that decrypts it), and decodes it with `options` (into `options.out_dir`, or only
/// checked). A bundle in S3 needs `remote`; its parts stream into the image.
pub fn unbundle(
    bundle: &BundleRef,
    remote: Option<Remote<'_>>,
    key: &UserKey,
    check: &SignatureCheck,
    options: DecodeOptions<'_>,
    progress: &dyn Progress,
) -> Result<Unbundled, UnbundleError> {
    unbundle_to(bundle, remote, key, check, options, None, progress)
}

/// [`unbundle`] with the image going to `sink` (an EBS snapshot …) instead of a file: the
/// sink sees the image before its digest is checked and must not make it usable unless this
/// returns `Ok`.
pub fn unbundle_into(
    bundle: &BundleRef,
    remote: Option<Remote<'_>>,
    key: &UserKey,
    check: &SignatureCheck,
    options: DecodeOptions<'_>,
    sink: &mut dyn ImageSink,
    progress: &dyn Progress,
) -> Result<Unbundled, UnbundleError> {
    unbundle_to(bundle, remote, key, check, options, Some(sink), progress)
}

fn unbundle_to(
    bundle: &BundleRef,
    remote: Option<Remote<'_>>,
    key: &UserKey,
    check: &SignatureCheck,
    options: DecodeOptions<'_>,
    sink: Option<&mut dyn ImageSink>,
    progress: &dyn Progress,
) -> Result<Unbundled, UnbundleError> {
    open(bundle, remote, key, check)?.decode(key, options, sink, progress)
}

/// A bundle whose manifest was read and whose signature was checked, not yet decoded.
pub struct OpenedBundle<'a> {
    what: String,
    started: Instant,
    source: Opened<'a>,
    /// Its manifest.
    pub manifest: Manifest,
    /// How the manifest was signed; `None` when the check was skipped.
    pub signature: Option<SignatureForm>,
    manifest_bytes: usize,
}

enum Opened<'a> {
    Local(Box<LocalBundle>),
    S3 {
        remote: Remote<'a>,
        client: aws_sdk_s3::Client,
        location: BundleLocation,
    },
}

/// Reads the manifest of `bundle` and checks its signature with `check` (and `key`, the
/// private key that decrypts it); nothing is decrypted yet. A bundle in S3 needs `remote`.
pub fn open<'a>(
    bundle: &BundleRef,
    remote: Option<Remote<'a>>,
    key: &UserKey,
    check: &SignatureCheck,
) -> Result<OpenedBundle<'a>, UnbundleError> {
    let started = Instant::now();
    let what = bundle.describe();
    let read_err = |source: Box<dyn std::error::Error + Send + Sync>| UnbundleError::Read {
        what: what.clone(),
        source,
    };
    match bundle {
        BundleRef::Local { manifest, parts } => {
            let local =
                LocalBundle::open(manifest, parts.as_deref()).map_err(|e| read_err(e.into()))?;
            let signature = check.check(&local.raw, &local.manifest, &what, Some(key))?;
            Ok(OpenedBundle {
                manifest: local.manifest.clone(),
                signature,
                manifest_bytes: local.raw.len(),
                source: Opened::Local(Box::new(local)),
                what,
                started,
            })
        }
        BundleRef::S3 {
            location,
            manifest_name,
        } => {
            let remote = remote.ok_or_else(|| UnbundleError::NoRemote(what.clone()))?;
            let (client, manifest, raw) = remote
                .runtime
                .block_on(async {
                    let client = s3::client_for_bucket(remote.cloud, &location.bucket).await?;
                    let (manifest, raw) =
                        s3::fetch_manifest(&client, location, manifest_name).await?;
                    Ok::<_, S3Error>((client, manifest, raw))
                })
                .map_err(|e| read_err(e.into()))?;
            let signature = check.check(&raw, &manifest, &what, Some(key))?;
            Ok(OpenedBundle {
                manifest,
                signature,
                manifest_bytes: raw.len(),
                source: Opened::S3 {
                    remote,
                    client,
                    location: location.clone(),
                },
                what,
                started,
            })
        }
    }
}

impl OpenedBundle<'_> {
    /// Decodes the bundle with `options` (into `options.out_dir`, or only checked), the image
    /// going to `sink` when given (which sees it before its digest is checked and must not
    /// make it usable unless this returns `Ok`). A bundle in S3 streams its parts.
    pub fn decode(
        self,
        key: &UserKey,
        options: DecodeOptions<'_>,
        sink: Option<&mut dyn ImageSink>,
        progress: &dyn Progress,
    ) -> Result<Unbundled, UnbundleError> {
        let what = self.what;
        let decode_err = |source: Box<dyn std::error::Error + Send + Sync>| UnbundleError::Decode {
            what: what.clone(),
            source,
        };
        let (decode, parts, bytes_downloaded) = match self.source {
            Opened::Local(local) => {
                let decoded = match sink {
                    Some(sink) => local.decode_into(key, options, sink, progress),
                    None => local.decode(key, options, progress),
                };
                let decode = decoded.map_err(|e| decode_err(e.into()))?;
                (decode, self.manifest.image.parts.len(), 0)
            }
            Opened::S3 {
                remote,
                client,
                location,
            } => {
                let report = s3::unbundle_stream(
                    remote.runtime,
                    &client,
                    &location,
                    &self.manifest,
                    key,
                    options,
                    sink,
                    remote.concurrency,
                    progress,
                )
                .map_err(|e| decode_err(e.into()))?;
                (report.decode, report.parts, report.bytes)
            }
        };
        Ok(Unbundled {
            manifest: self.manifest,
            decode,
            signature: self.signature,
            parts,
            bytes_downloaded,
            manifest_bytes: self.manifest_bytes,
            elapsed: self.started.elapsed(),
        })
    }
}
