//! The bundling pipeline: an image opened and measured ([`PreparedImage`]), streamed once
//! through tar, SHA-1, gzip, AES-128-CBC and the part writer, and its manifest built, signed and
//! committed last (§3–§9), into a local directory or any [`PartSink`].
//!
//! Bare § numbers in this module refer to docs/format.md.

use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::{ARCHITECTURES, MAX_IMAGE_BYTES};
use crate::bundle::Error;
use crate::bundle::crypto::{self, AesIv, AesKey, CbcEncryptWriter, Certificate, UserKey};
use crate::bundle::digest::{CountingWriter, HashingWriter};
use crate::bundle::gzip::{self, ParallelGzEncoder};
use crate::bundle::lock;
use crate::bundle::manifest::{
    self, Bundler, ImageInfo, MachineConfiguration, Manifest, ManifestVersion, Mapping, PartEntry,
};
use crate::bundle::parts::{self, PartInfo, PartSink, PartWriter, StagingDir};
use crate::bundle::space::{self, NoSpace};
use crate::bundle::tar::{self, MemberMeta, SparseMap};
use crate::interrupt::Interruptible;
use crate::progress::Progress;

/// What goes into the manifest besides the measured values.
#[derive(Debug, Clone)]
pub struct BundleSpec {
    /// Bundle name: tar member, `image/name`, part and manifest stem (§2).
    pub name: String,
    /// 12-digit AWS account id (dashes allowed; normalized).
    pub account: String,
    /// `i386`, `x86_64` or `arm64`.
    pub arch: String,
    /// `machine_configuration/kernel_id`.
    pub kernel_id: Option<String>,
    /// `machine_configuration/ramdisk_id`.
    pub ramdisk_id: Option<String>,
    /// `machine_configuration/block_device_mapping`.
    pub block_device_mapping: Vec<Mapping>,
    /// `machine_configuration/product_codes`.
    pub product_codes: Vec<String>,
    /// `image/ancestry`, oldest first.
    pub ancestry: Vec<String>,
    /// gzip level 1–9.
    pub level: u32,
    /// Compression threads.
    pub threads: usize,
    /// `bundler` block.
    pub bundler: Bundler,
    /// Accept images above [`MAX_IMAGE_BYTES`].
    pub allow_oversize: bool,
}

/// The keys a bundle is made with. The caller has checked that the user key and certificate
/// belong together ([`crypto::check_pair`]), where it can name their files.
pub struct Identity {
    /// Signs the manifest and can unwrap the key.
    pub user_key: UserKey,
    /// Wraps the key for the user.
    pub user_cert: Certificate,
    /// Wraps the key for EC2.
    pub ec2_cert: Certificate,
}

/// The image to bundle.
pub enum ImageInput {
    /// A regular file; holes are skipped with SEEK_DATA/SEEK_HOLE.
    File(PathBuf),
    /// A non-seekable stream (stdin) of exactly `size` bytes.
    Stream {
        /// The bytes.
        reader: Box<dyn Read + Send>,
        /// Exact length.
        size: u64,
        /// How the stream is named in messages.
        label: String,
    },
    /// An image known by its data regions, whose bytes come from a stream that cannot seek
    /// (an EBS snapshot's blocks as they arrive): `reader` yields the bytes of `map`'s data
    /// regions one after the other, in order, and nothing else; the rest of the image is holes,
    /// written as a sparse member.
    Regions {
        /// The image's size and data regions.
        map: SparseMap,
        /// The regions' bytes, in order.
        reader: Box<dyn Read + Send>,
        /// How the image is named in messages.
        label: String,
    },
}

/// Injected values for golden tests (§3.6, §14.4): everything random or time-dependent.
#[derive(Default)]
pub struct Overrides {
    /// Tar mtime instead of the image's.
    pub mtime: Option<u64>,
    /// Hole map instead of SEEK_DATA/SEEK_HOLE.
    pub map: Option<SparseMap>,
    /// AES key and IV instead of random ones.
    pub key_iv: Option<(AesKey, AesIv)>,
}

/// What a bundling run produced.
#[derive(Debug, Clone)]
pub struct BundleReport {
    /// The manifest written.
    pub manifest: Manifest,
    /// Its path.
    pub manifest_path: PathBuf,
    /// Part files in index order.
    pub part_paths: Vec<PathBuf>,
    /// Image size S.
    pub image_size: u64,
    /// Bytes of image data actually read (holes are not read).
    pub data_bytes: u64,
    /// Whether the member is sparse (type `S`).
    pub sparse: bool,
    /// |T|.
    pub tar_bytes: u64,
    /// |G|.
    pub gzip_bytes: u64,
    /// |C| = bundled_size.
    pub bundled_bytes: u64,
    /// Wall time of the streaming pass.
    pub elapsed: Duration,
}

fn check_spec(spec: &BundleSpec) -> Result<String, Error> {
    manifest::validate_bundle_name(&spec.name)?;
    let account = manifest::normalize_account(&spec.account)?;
    if !ARCHITECTURES.contains(&spec.arch.as_str()) {
        return Err(Error::Architecture(spec.arch.clone()));
    }
    if spec.arch == "arm64" {
        tracing::warn!(
            "architecture arm64 is written as given, but no instance-store instance family runs arm64"
        );
    }
    if !(1..=9).contains(&spec.level) {
        return Err(Error::Level(spec.level));
    }
    Ok(account)
}

fn check_size(label: &str, size: u64, allow_oversize: bool) -> Result<(), Error> {
    if size == 0 {
        return Err(Error::EmptyImage(label.to_string()));
    }
    if size > MAX_IMAGE_BYTES && !allow_oversize {
        return Err(Error::ImageTooLarge {
            image: label.to_string(),
            size,
        });
    }
    Ok(())
}

/// Refuses to replace an existing bundle of the same name in `dest` unless `overwrite`; with
/// `overwrite`, returns the files of the old bundle to remove once the new one is complete.
fn existing_bundle_files(dest: &Path, name: &str, overwrite: bool) -> Result<Vec<PathBuf>, Error> {
    let part_prefix = format!("{name}.part.");
    let manifest_name = format!("{name}.manifest.xml");
    let mut found = Vec::new();
    let entries = fs::read_dir(dest).map_err(|source| Error::Destination {
        dir: dest.to_path_buf(),
        source,
    })?;
    for entry in entries {
        let entry = entry.map_err(|source| Error::Destination {
            dir: dest.to_path_buf(),
            source,
        })?;
        let file_name = entry.file_name();
        let Some(file_name) = file_name.to_str() else {
            continue;
        };
        let is_part = file_name
            .strip_prefix(&part_prefix)
            .is_some_and(|idx| !idx.is_empty() && idx.bytes().all(|b| b.is_ascii_digit()));
        if is_part || file_name == manifest_name {
            found.push(entry.path());
        }
    }
    found.sort();
    if !found.is_empty() && !overwrite {
        return Err(Error::Exists(found.swap_remove(0)));
    }
    Ok(found)
}

fn mtime_secs(meta: &fs::Metadata) -> u64 {
    u64::try_from(meta.mtime()).unwrap_or(0)
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// An image opened, checked and measured, ready to stream: its tar-stream length is known
/// before a byte of data is read, which fixes the part-name width of a streaming upload (§8.3).
pub struct PreparedImage {
    source: Source,
    member: MemberMeta,
    label: String,
    size: u64,
    data_bytes: u64,
    sparse: bool,
}

enum Source {
    File {
        file: File,
        map: SparseMap,
    },
    Stream {
        reader: Box<dyn Read + Send>,
    },
    Regions {
        reader: Box<dyn Read + Send>,
        map: SparseMap,
    },
}

impl PreparedImage {
    /// Opens `input` and checks it against `spec` (size limits, name, architecture, level).
    /// `overrides.key_iv` is not used here.
    pub fn open(
        input: ImageInput,
        spec: &BundleSpec,
        overrides: &Overrides,
    ) -> Result<Self, Error> {
        check_spec(spec)?;
        match input {
            ImageInput::File(path) => {
                let label = path.display().to_string();
                let file = File::open(&path).map_err(|source| Error::OpenImage {
                    path: path.clone(),
                    source,
                })?;
                let meta = file.metadata().map_err(|source| Error::OpenImage {
                    path: path.clone(),
                    source,
                })?;
                if !meta.file_type().is_file() {
                    let kind = if meta.file_type().is_block_device() {
                        "a block device"
                    } else {
                        "not a regular file"
                    };
                    return Err(Error::NotAFile { path, kind });
                }
                check_size(&label, meta.len(), spec.allow_oversize)?;
                let map = match &overrides.map {
                    Some(map) => map.clone(),
                    None => SparseMap::from_file(&file)?,
                };
                let member = MemberMeta {
                    name: spec.name.clone(),
                    mode: meta.mode() & 0o7777,
                    mtime: overrides.mtime.unwrap_or_else(|| mtime_secs(&meta)),
                };
                Ok(Self {
                    size: map.size(),
                    data_bytes: map.data_bytes(),
                    sparse: map.is_sparse(),
                    source: Source::File { file, map },
                    member,
                    label,
                })
            }
            ImageInput::Stream {
                reader,
                size,
                label,
            } => {
                check_size(&label, size, spec.allow_oversize)?;
                let member = MemberMeta {
                    name: spec.name.clone(),
                    mode: 0o644,
                    mtime: overrides.mtime.unwrap_or_else(now_secs),
                };
                Ok(Self {
                    source: Source::Stream { reader },
                    member,
                    label,
                    size,
                    data_bytes: size,
                    sparse: false,
                })
            }
            ImageInput::Regions { map, reader, label } => {
                check_size(&label, map.size(), spec.allow_oversize)?;
                // Like a stream: nothing on disk to take a mode or a time from.
                let member = MemberMeta {
                    name: spec.name.clone(),
                    mode: 0o644,
                    mtime: overrides.mtime.unwrap_or_else(now_secs),
                };
                Ok(Self {
                    size: map.size(),
                    data_bytes: map.data_bytes(),
                    sparse: map.is_sparse(),
                    source: Source::Regions { reader, map },
                    member,
                    label,
                })
            }
        }
    }

    /// Image size S.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// How the image is named in messages.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// Exact length T of the tar stream (§3.1).
    pub fn tar_len(&self) -> u64 {
        match &self.source {
            Source::File { map, .. } | Source::Regions { map, .. } => tar::stream_len(map),
            Source::Stream { .. } => tar::stream_len(&SparseMap::dense(self.size)),
        }
    }

    /// The largest number of parts this image can produce at any level: ⌈(G_max + 16) / P⌉
    /// with G_max the encoder's bound (§8.3). Its digit count is the part-name width of a
    /// streaming upload.
    pub fn max_parts(&self) -> u64 {
        let g_max = gzip::compressed_bound(self.tar_len(), gzip::DEFAULT_CHUNK_BYTES);
        g_max
            .saturating_add(16)
            .div_ceil(parts::PART_SIZE_BYTES as u64)
    }
}

/// What one streaming pass produced, before the manifest is made.
struct Encoded {
    digest: String,
    image_size: u64,
    data_bytes: u64,
    sparse: bool,
    tar_bytes: u64,
    gzip_bytes: u64,
    bundled_bytes: u64,
    parts: Vec<PartInfo>,
    elapsed: Duration,
}

/// The one streaming pass: image → tar → SHA-1 → gzip → AES-128-CBC → parts into `sink`.
/// `write_err` turns a failure of the writer stack (the sink included) into the caller's error.
fn encode<S: PartSink>(
    image: PreparedImage,
    spec: &BundleSpec,
    key: &AesKey,
    iv: &AesIv,
    sink: S,
    write_err: &dyn Fn(io::Error) -> Error,
    progress: &dyn Progress,
) -> Result<(S, Encoded), Error> {
    let started = Instant::now();
    let part_writer = PartWriter::new(sink);
    let encrypt = CbcEncryptWriter::new(part_writer, key, iv)?;
    let counted = CountingWriter::new(encrypt);
    let gzip =
        ParallelGzEncoder::new(counted, spec.level, spec.threads.max(1)).map_err(write_err)?;
    let mut hashing = Interruptible(HashingWriter::new(gzip));

    let PreparedImage {
        source,
        member,
        size,
        data_bytes,
        sparse,
        ..
    } = image;
    progress.start("bundling", Some(data_bytes));
    let mut last = 0;
    let mut tick = |done: u64| {
        progress.inc(done - last);
        last = done;
    };
    match source {
        Source::File { mut file, map } => {
            tar::write_stream_direct(&mut file, &member, &map, &mut hashing, &mut tick)?;
        }
        Source::Stream { mut reader } => {
            tar::write_stream_from_reader_direct(
                &mut reader,
                &member,
                size,
                &mut hashing,
                &mut tick,
            )?;
        }
        Source::Regions { mut reader, map } => {
            tar::write_stream_from_regions(&mut reader, &member, &map, &mut hashing, &mut tick)?;
        }
    }

    let (digest, tar_bytes, gzip) = hashing.into_inner().finish();
    let counted = gzip.finish().map_err(write_err)?;
    let (gzip_bytes, encrypt) = counted.finish();
    let part_writer = encrypt.finish().map_err(write_err)?;
    let bundled_bytes = part_writer.total();
    let (sink, parts) = part_writer.finish().map_err(write_err)?;
    progress.finish();
    Ok((
        sink,
        Encoded {
            digest,
            image_size: size,
            data_bytes,
            sparse,
            tar_bytes,
            gzip_bytes,
            bundled_bytes,
            parts,
            elapsed: started.elapsed(),
        },
    ))
}

/// Builds, signs and strictly checks the manifest of an encoded bundle whose parts are named
/// with `width` digits.
fn signed_manifest(
    spec: &BundleSpec,
    identity: &Identity,
    key: &AesKey,
    iv: &AesIv,
    encoded: &Encoded,
    width: usize,
) -> Result<(Manifest, String), Error> {
    let account = check_spec(spec)?;
    let mut manifest = build_manifest(
        spec,
        account,
        identity,
        key,
        iv,
        &encoded.digest,
        encoded.image_size,
        encoded.bundled_bytes,
        &encoded.parts,
        width,
    )?;
    manifest.sign(&identity.user_key)?;
    manifest.check_strict()?;
    let xml = manifest.to_xml()?;
    Ok((manifest, xml))
}

fn report(
    manifest: Manifest,
    manifest_path: PathBuf,
    part_paths: Vec<PathBuf>,
    e: &Encoded,
) -> BundleReport {
    BundleReport {
        manifest,
        manifest_path,
        part_paths,
        image_size: e.image_size,
        data_bytes: e.data_bytes,
        sparse: e.sparse,
        tar_bytes: e.tar_bytes,
        gzip_bytes: e.gzip_bytes,
        bundled_bytes: e.bundled_bytes,
        elapsed: e.elapsed,
    }
}

/// The injected key and IV, or fresh random ones (§6).
fn key_iv(injected: Option<(AesKey, AesIv)>) -> Result<(AesKey, AesIv), Error> {
    match injected {
        Some(pair) => Ok(pair),
        None => Ok((AesKey::random()?, AesIv::random()?)),
    }
}

/// Bundles `input` into `<dest>/<name>.part.*` and `<dest>/<name>.manifest.xml` in one pass.
///
/// Parts are staged in a private directory and renamed into place only when the stream is
/// complete; the manifest is renamed last. On any error nothing that looks like a bundle is left.
pub fn bundle_to_dir(
    input: ImageInput,
    spec: &BundleSpec,
    identity: &Identity,
    dest: &Path,
    overwrite: bool,
    mut overrides: Overrides,
    progress: &dyn Progress,
) -> Result<BundleReport, Error> {
    check_spec(spec)?;
    let dest_meta = fs::metadata(dest).map_err(|source| Error::Destination {
        dir: dest.to_path_buf(),
        source,
    })?;
    if !dest_meta.is_dir() {
        return Err(Error::Destination {
            dir: dest.to_path_buf(),
            source: io::Error::new(io::ErrorKind::NotADirectory, "not a directory"),
        });
    }
    // One run at a time per bundle name and destination: two would rename their parts over
    // each other's and could leave one run's manifest with the other's parts.
    let _lock = lock::RunLock::file(
        &dest.join(format!(".amibundle-{}.lock", spec.name)),
        &format!("bundle {} in {}", spec.name, dest.display()),
    )?;
    let stale = existing_bundle_files(dest, &spec.name, overwrite)?;
    let (key, iv) = key_iv(overrides.key_iv.take())?;
    let image = PreparedImage::open(input, spec, &overrides)?;

    // The bundle is at most the encoder's bound (incompressible data) plus the padding. That is
    // only a worst case: data that compresses needs far less, so a shortfall is a warning, and
    // a filesystem that really fills up is reported as such below.
    let bound = gzip::compressed_bound(image.tar_len(), gzip::DEFAULT_CHUNK_BYTES) + 16;
    if let Some(free) = space::free_bytes(dest).filter(|&free| free < bound) {
        tracing::warn!(
            "{} has {} free; the bundle may need up to {} (as much if the data does not compress)",
            dest.display(),
            crate::progress::human_bytes(free),
            crate::progress::human_bytes(bound)
        );
    }
    let staging = StagingDir::create(dest, &spec.name).map_err(|source| Error::Destination {
        dir: dest.to_path_buf(),
        source,
    })?;
    let write_err = |source: io::Error| {
        if space::is_full(&source) {
            return Error::NoSpace(NoSpace::midway(
                dest,
                format!("bundle {}", spec.name),
                None,
                &source,
            ));
        }
        Error::WriteBundle {
            dir: dest.to_path_buf(),
            source,
        }
    };
    // A full filesystem anywhere in the stack (the tar writer reports it too) is said as such,
    // measured while the staged parts still hold their space.
    let full = |e: Error| match space::full_in_chain(&e) {
        Some(io) if !matches!(e, Error::NoSpace(_)) => Error::NoSpace(NoSpace::midway(
            dest,
            format!("bundle {}", spec.name),
            None,
            io,
        )),
        _ => e,
    };
    let (sink, encoded) =
        encode(image, spec, &key, &iv, staging.sink(), &write_err, progress).map_err(full)?;
    let width = parts::part_width(encoded.parts.len() as u64);
    let (manifest, xml) = signed_manifest(spec, identity, &key, &iv, &encoded, width)?;

    // The new bundle is complete in staging: only now retire an old one of the same name
    // (manifest first, so it is never registrable with a mix of old and new parts).
    for path in stale.iter().rev() {
        fs::remove_file(path).map_err(write_err)?;
    }
    let manifest_path = staging
        .commit(sink, &spec.name, &encoded.parts, xml.as_bytes())
        .map_err(write_err)?;
    let part_paths = encoded
        .parts
        .iter()
        .map(|p| dest.join(parts::part_name(&spec.name, p.index, width)))
        .collect();
    Ok(report(manifest, manifest_path, part_paths, &encoded))
}

/// A bundle streamed into a [`PartSink`]: the manifest (not stored anywhere yet) and the figures.
#[derive(Debug)]
pub struct StreamedBundle {
    /// The signed manifest.
    pub manifest: Manifest,
    /// Its exact bytes (§9.2), to be stored last.
    pub xml: String,
    /// Digits of the part indices, fixed before streaming (§8.3).
    pub width: usize,
    /// Figures (`manifest_path` and `part_paths` are empty: nothing is on local disk).
    pub report: BundleReport,
}

/// Bundles an already opened image into a sink that stores parts as they are produced
/// (streaming upload mode, §8.3): `make_sink` is given the part-name width, fixed up front as
/// the digit count of [`PreparedImage::max_parts`], so the sink can name parts before their
/// count is known. The manifest lists the names actually used; storing it last is the caller's
/// job. A failure of the sink is reported through `sink_err`. `key_iv` injects the key and IV
/// (tests); `None` draws fresh ones.
#[allow(clippy::too_many_arguments)]
pub fn bundle_to_sink<S: PartSink>(
    image: PreparedImage,
    spec: &BundleSpec,
    identity: &Identity,
    key_iv: Option<(AesKey, AesIv)>,
    sink: S,
    width: usize,
    sink_err: &dyn Fn(io::Error) -> Error,
    progress: &dyn Progress,
) -> Result<(S, StreamedBundle), Error> {
    let (key, iv) = self::key_iv(key_iv)?;
    let (sink, encoded) = encode(image, spec, &key, &iv, sink, sink_err, progress)?;
    if parts::part_width(encoded.parts.len() as u64) > width {
        // Cannot happen while the bound holds; checked because a wrong name would break the
        // bundle silently.
        return Err(Error::TooManyParts(encoded.parts.len()));
    }
    let (manifest, xml) = signed_manifest(spec, identity, &key, &iv, &encoded, width)?;
    let report = report(manifest.clone(), PathBuf::new(), Vec::new(), &encoded);
    Ok((
        sink,
        StreamedBundle {
            manifest,
            xml,
            width,
            report,
        },
    ))
}

#[allow(clippy::too_many_arguments)]
fn build_manifest(
    spec: &BundleSpec,
    account: String,
    identity: &Identity,
    key: &AesKey,
    iv: &AesIv,
    digest: &str,
    image_size: u64,
    bundled_size: u64,
    part_infos: &[PartInfo],
    width: usize,
) -> Result<Manifest, Error> {
    let key_hex = key.to_hex();
    let iv_hex = iv.to_hex();
    let parts = part_infos
        .iter()
        .map(|p| {
            Ok(PartEntry {
                index: u32::try_from(p.index).map_err(|_| Error::TooManyParts(part_infos.len()))?,
                filename: parts::part_name(&spec.name, p.index, width),
                digest: p.sha1.clone(),
            })
        })
        .collect::<Result<Vec<_>, Error>>()?;
    let mut mappings = spec.block_device_mapping.clone();
    mappings.sort_by(|a, b| a.virtual_name.as_bytes().cmp(b.virtual_name.as_bytes()));
    Ok(Manifest {
        version: ManifestVersion::V20071010,
        bundler: spec.bundler.clone(),
        machine: Some(MachineConfiguration {
            architecture: spec.arch.clone(),
            block_device_mapping: mappings,
            kernel_id: spec.kernel_id.clone(),
            ramdisk_id: spec.ramdisk_id.clone(),
            product_codes: spec.product_codes.clone(),
        }),
        image: ImageInfo {
            name: spec.name.clone(),
            user: account,
            image_type: "machine".to_string(),
            kernel_name: None,
            ancestry: spec.ancestry.clone(),
            digest: digest.to_string(),
            size: image_size,
            bundled_size,
            ec2_encrypted_key: crypto::wrap_hex(&identity.ec2_cert, key_hex.as_bytes())?,
            user_encrypted_key: crypto::wrap_hex(&identity.user_cert, key_hex.as_bytes())?,
            ec2_encrypted_iv: crypto::wrap_hex(&identity.ec2_cert, iv_hex.as_bytes())?,
            user_encrypted_iv: crypto::wrap_hex(&identity.user_cert, iv_hex.as_bytes())?,
            parts,
        },
        signature: String::new(),
    })
}
