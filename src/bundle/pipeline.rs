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
//! Bare § numbers in this module refer to docs/format.md.

use std::cell::Cell;
use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::bundle::Error;
use crate::bundle::crypto::{
    self, AesIv, AesKey, CbcDecryptReader, CbcEncryptWriter, Certificate, SignatureKey, UserKey,
};
use crate::bundle::digest::{CountingWriter, HashingReader, HashingWriter};
use crate::bundle::gzip::{self, GzipReader, ParallelGzEncoder};
use crate::bundle::lock;
use crate::bundle::manifest::{
    self, Bundler, ImageInfo, MachineConfiguration, Manifest, ManifestVersion, Mapping, PartEntry,
    SignatureForm,
};
use crate::bundle::parts::{
    self, ExpectedPart, PartInfo, PartReader, PartSink, PartWriter, StagingDir,
};
use crate::bundle::space::{self, NoSpace};
use crate::bundle::tar::{self, MemberMeta, SparseMap, TarReader};
use crate::interrupt::Interruptible;
use crate::progress::Progress;

/// EC2's limit for an instance-store root image (docs/format.md §2).
pub const MAX_IMAGE_BYTES: u64 = 10 * 1024 * 1024 * 1024;

/// Architectures accepted in `machine_configuration/architecture` (§2).
pub const ARCHITECTURES: [&str; 3] = ["i386", "x86_64", "arm64"];

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
    File { file: File, map: SparseMap },
    Stream { reader: Box<dyn Read + Send> },
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
            Source::File { map, .. } => tar::stream_len(map),
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
            tar::write_stream(&mut file, &member, &map, &mut hashing, &mut tick)?;
        }
        Source::Stream { mut reader } => {
            tar::write_stream_from_reader(&mut reader, &member, size, &mut hashing, &mut tick)?;
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
    let (_sink, encoded) =
        encode(image, spec, &key, &iv, staging.sink(), &write_err, progress).map_err(full)?;
    let width = parts::part_width(encoded.parts.len() as u64);
    let (manifest, xml) = signed_manifest(spec, identity, &key, &iv, &encoded, width)?;

    // The new bundle is complete in staging: only now retire an old one of the same name
    // (manifest first, so it is never registrable with a mix of old and new parts).
    for path in stale.iter().rev() {
        fs::remove_file(path).map_err(write_err)?;
    }
    let manifest_path = staging
        .commit(&spec.name, &encoded.parts, xml.as_bytes())
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

/// A bundle on local disk: its manifest and where its parts are.
#[derive(Debug)]
pub struct LocalBundle {
    /// Parsed manifest.
    pub manifest: Manifest,
    /// The manifest's bytes as read (signatures are checked over these).
    pub raw: Vec<u8>,
    /// Path of the manifest.
    pub manifest_path: PathBuf,
    /// Directory holding the parts.
    pub parts_dir: PathBuf,
}

/// Largest manifest we read: a 1025-part manifest is about 130 KB.
const MAX_MANIFEST_BYTES: u64 = 16 * 1024 * 1024;

/// What [`decode_ciphertext`] (and so [`LocalBundle::decode`]) found.
#[derive(Debug, Clone)]
pub struct DecodeReport {
    /// Tar member name.
    pub member_name: String,
    /// Image size.
    pub image_size: u64,
    /// Whether the member was sparse.
    pub sparse: bool,
    /// SHA-1 of the tar stream (matches the manifest).
    pub tar_digest: String,
    /// |T|.
    pub tar_bytes: u64,
    /// Where the image was written, if it was.
    pub image_path: Option<PathBuf>,
    /// Wall time.
    pub elapsed: Duration,
}

impl LocalBundle {
    /// Reads and parses the manifest; parts are looked for in `parts_dir`, else beside it.
    pub fn open(manifest_path: &Path, parts_dir: Option<&Path>) -> Result<Self, Error> {
        let read_err = |source| Error::ReadManifest {
            path: manifest_path.to_path_buf(),
            source,
        };
        // A FIFO or a device would block or be anything: a regular file only (a link to one
        // is fine for the manifest).
        use std::os::unix::fs::OpenOptionsExt as _;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(manifest_path)
            .map_err(read_err)?;
        if !file.metadata().map_err(read_err)?.file_type().is_file() {
            return Err(read_err(io::Error::other(
                "it is not a regular file (a FIFO, a device or a directory)",
            )));
        }
        let mut raw = Vec::new();
        file.take(MAX_MANIFEST_BYTES + 1)
            .read_to_end(&mut raw)
            .map_err(read_err)?;
        if raw.len() as u64 > MAX_MANIFEST_BYTES {
            return Err(Error::ManifestTooLarge(manifest_path.to_path_buf()));
        }
        let manifest = Manifest::parse(&raw).map_err(|source| Error::ParseManifest {
            path: manifest_path.to_path_buf(),
            source,
        })?;
        let parts_dir = match parts_dir {
            Some(d) => d.to_path_buf(),
            None => match manifest_path.parent() {
                Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
                _ => PathBuf::from("."),
            },
        };
        Ok(Self {
            manifest,
            raw,
            manifest_path: manifest_path.to_path_buf(),
            parts_dir,
        })
    }

    /// Checks the manifest signature with a user certificate or the public half of the user key
    /// (§9.5).
    pub fn verify_signature(&self, key: &dyn SignatureKey) -> Result<SignatureForm, Error> {
        Ok(manifest::verify_signature(&self.raw, &self.manifest, key)?)
    }

    /// The parts in index order with their paths.
    pub fn expected_parts(&self) -> Vec<ExpectedPart> {
        let mut entries: Vec<&PartEntry> = self.manifest.image.parts.iter().collect();
        entries.sort_by_key(|p| p.index);
        entries
            .into_iter()
            .map(|p| ExpectedPart {
                path: self.parts_dir.join(&p.filename),
                filename: p.filename.clone(),
                sha1: p.digest.clone(),
            })
            .collect()
    }

    /// Cheap checks before reading any part: every part exists and the sizes add up to
    /// `bundled_size`. Returns the total.
    pub fn check_part_sizes(&self) -> Result<u64, Error> {
        let mut total = 0u64;
        let expected = self.expected_parts();
        let last = expected.len().saturating_sub(1);
        for (i, part) in expected.iter().enumerate() {
            let meta = parts::open_part(&part.path)
                .and_then(|f| f.metadata())
                .map_err(|source| Error::MissingPart {
                    filename: part.filename.clone(),
                    path: part.path.clone(),
                    source,
                })?;
            if i != last && meta.len() != parts::PART_SIZE_BYTES as u64 {
                tracing::warn!(
                    "part {} is {} bytes; bundles made by ec2-ami-tools use {} bytes for every part but the last",
                    part.filename,
                    meta.len(),
                    parts::PART_SIZE_BYTES
                );
            }
            total = total.saturating_add(meta.len());
        }
        if total != self.manifest.image.bundled_size {
            return Err(Error::BundledSize {
                expected: self.manifest.image.bundled_size,
                actual: total,
            });
        }
        Ok(total)
    }

    /// Reads every part once and checks its SHA-1 (no key needed).
    pub fn check_part_digests(&self, progress: &dyn Progress) -> Result<(), Error> {
        let total = self.check_part_sizes()?;
        progress.start("checking parts", Some(total));
        let mut reader = PartReader::new(self.expected_parts());
        let failure = reader.failure();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            crate::interrupt::check().map_err(Error::Decode)?;
            let n = reader.read(&mut buf).map_err(|e| {
                match failure.lock().ok().and_then(|mut f| f.take()) {
                    Some(part) => Error::Part(part),
                    None => Error::Decode(e),
                }
            })?;
            if n == 0 {
                break;
            }
            progress.inc(n as u64);
        }
        progress.finish();
        Ok(())
    }

    /// Decrypts, decompresses and untars the bundle with the user key, checking every part, the
    /// padding, the tar-stream digest and the image size. With `out_dir`, the image is written
    /// (sparse) to a temporary file there and renamed to the tar member's name only after every
    /// check passed; without, nothing is written (verification).
    ///
    /// The parts are read by a [`PartReader`] and handed to [`decode_ciphertext`]; a bad part is
    /// reported as itself, not as the gzip or tar error it caused upstream.
    pub fn decode(
        &self,
        key: &UserKey,
        options: DecodeOptions<'_>,
        progress: &dyn Progress,
    ) -> Result<DecodeReport, Error> {
        check_declared_size(&self.manifest, options.allow_oversize)?;
        self.check_part_sizes()?;
        let parts = PartReader::new(self.expected_parts());
        let part_failure = parts.failure();
        decode_ciphertext(&self.manifest, key, parts, options, progress).map_err(|e| {
            // Once a part failed, every later error is a consequence of it.
            match part_failure.lock().ok().and_then(|mut f| f.take()) {
                Some(part) => Error::Part(part),
                None => e,
            }
        })
    }
}

/// How a bundle is decoded.
#[derive(Debug, Clone, Copy, Default)]
pub struct DecodeOptions<'a> {
    /// Where the image is written; `None` checks everything and writes nothing.
    pub out_dir: Option<&'a Path>,
    /// Replace an existing image file of the same name.
    pub overwrite: bool,
    /// Accept a manifest declaring an image above [`MAX_IMAGE_BYTES`] (a data volume bundled
    /// with `--allow-oversize`). Without it such a manifest is refused before anything is read:
    /// a hostile bundle can claim any size, and a sparse member costs it nothing.
    pub allow_oversize: bool,
}

impl<'a> DecodeOptions<'a> {
    /// Write the image into `dir`.
    pub fn into_dir(dir: &'a Path) -> Self {
        DecodeOptions {
            out_dir: Some(dir),
            ..Self::default()
        }
    }
}

/// Refuses a manifest whose image is larger than EC2 accepts for an instance-store image
/// (§2), unless `allow_oversize`; a size of 0 is the parser's to refuse.
pub fn check_declared_size(manifest: &Manifest, allow_oversize: bool) -> Result<(), Error> {
    if manifest.image.size > MAX_IMAGE_BYTES && !allow_oversize {
        return Err(Error::DeclaredTooLarge {
            name: manifest.image.name.clone(),
            size: manifest.image.size,
        });
    }
    Ok(())
}

/// Decodes a bundle from its ciphertext: the parts concatenated in index order, from any
/// source (local part files, S3 downloads). Unwraps the AES key and IV with the user key, then
/// streams the ciphertext through AES-128-CBC (PKCS#7 checked at the end), the strict gzip
/// reader, the tar-stream SHA-1 and the tar reader (§12). With `out_dir`, the image is written
/// (sparse) to a 0600 temporary file there and renamed to the tar member's name only after the
/// size, the digest and the ciphertext length (`bundled_size`) all matched; without, nothing is
/// written (verification). On any error the temporary file is removed.
///
/// Checking each part's SHA-1 before its bytes are returned is the source's job. When the
/// source fails, the error returned here is the consequence (a tar or decode error); the caller
/// that knows its source replaces it with the source's own failure.
pub fn decode_ciphertext(
    manifest: &Manifest,
    key: &UserKey,
    ciphertext: impl Read,
    options: DecodeOptions<'_>,
    progress: &dyn Progress,
) -> Result<DecodeReport, Error> {
    let DecodeOptions {
        out_dir,
        overwrite,
        allow_oversize,
    } = options;
    check_declared_size(manifest, allow_oversize)?;
    let aes_key = crypto::unwrap_key(key, &manifest.image.user_encrypted_key)?;
    let aes_iv = crypto::unwrap_iv(key, &manifest.image.user_encrypted_iv)?;
    let started = Instant::now();

    progress.start(
        if out_dir.is_some() {
            "unbundling"
        } else {
            "verifying"
        },
        Some(manifest.image.bundled_size),
    );
    let ciphertext_bytes = Cell::new(0u64);
    let decrypt = CbcDecryptReader::new(
        ProgressReader {
            inner: Interruptible(ciphertext),
            progress,
            total: &ciphertext_bytes,
        },
        &aes_key,
        &aes_iv,
    )?;
    let gunzip = GzipReader::new(decrypt);
    let hashing = HashingReader::new(gunzip);
    let mut reader = TarReader::new(hashing);
    let info = reader.read_member_header()?;

    // The image is written under the manifest's name (checked by the parser and, with -c,
    // signed); a stream whose member says otherwise is not the bundle described.
    if info.name != manifest.image.name {
        return Err(Error::MemberName {
            member: info.name,
            image: manifest.image.name.clone(),
        });
    }
    if info.size != manifest.image.size {
        return Err(Error::SizeMismatch {
            expected: manifest.image.size,
            actual: info.size,
        });
    }

    let mut temp = match out_dir {
        Some(dir) => {
            let final_path = dir.join(&manifest.image.name);
            if !overwrite && fs::symlink_metadata(&final_path).is_ok() {
                return Err(Error::Exists(final_path));
            }
            // The image is written sparse: its data regions are what it takes.
            space::ensure(
                dir,
                info.map.data_bytes(),
                &format!("the image {}", info.name),
            )?;
            Some(TempImage::create(dir, &info.name)?)
        }
        None => None,
    };
    let hashing = reader
        .extract_to(temp.as_mut().map(|t| &mut t.file), &mut |_| {})
        .map_err(|e| match (out_dir, space::full_in_chain(&e)) {
            (Some(dir), Some(full)) => Error::NoSpace(NoSpace::midway(
                dir,
                format!("the image {}", info.name),
                Some(info.map.data_bytes()),
                full,
            )),
            _ => Error::from(e),
        })?;
    let (tar_digest, tar_bytes, _gunzip) = hashing.finish();
    progress.finish();
    // The tar reader reads to EOF (§3.7), so the whole ciphertext has been counted. A source
    // that checks every part's SHA-1 can still disagree with `bundled_size` when the manifest
    // itself is inconsistent; a local bundle was checked up front.
    if ciphertext_bytes.get() != manifest.image.bundled_size {
        return Err(Error::BundledSize {
            expected: manifest.image.bundled_size,
            actual: ciphertext_bytes.get(),
        });
    }
    if !tar_digest.eq_ignore_ascii_case(&manifest.image.digest) {
        return Err(Error::DigestMismatch {
            expected: manifest.image.digest.clone(),
            actual: tar_digest,
        });
    }
    let image_path = match temp {
        Some(t) => Some(t.persist(overwrite)?),
        None => None,
    };
    Ok(DecodeReport {
        member_name: info.name,
        image_size: info.size,
        sparse: info.sparse,
        tar_digest,
        tar_bytes,
        image_path,
        elapsed: started.elapsed(),
    })
}

/// Counts bytes read, for the progress display and the final length check.
struct ProgressReader<'a, R> {
    inner: R,
    progress: &'a dyn Progress,
    total: &'a Cell<u64>,
}

impl<R: Read> Read for ProgressReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.progress.inc(n as u64);
        self.total.set(self.total.get() + n as u64);
        Ok(n)
    }
}

/// The image being unbundled: a 0600 temporary file in the destination, removed unless persisted.
struct TempImage {
    file: File,
    path: PathBuf,
    final_path: PathBuf,
    persisted: bool,
}

impl TempImage {
    fn create(dir: &Path, name: &str) -> Result<Self, Error> {
        let final_path = dir.join(name);
        parts::remove_stale(dir, &format!(".{name}.amibundle-"), ".partial", true);
        let pid = std::process::id();
        for n in 0..1000u32 {
            let path = dir.join(format!(".{name}.amibundle-{pid}-{n}.partial"));
            match parts::create_private_file(&path) {
                Ok(file) => {
                    return Ok(Self {
                        file,
                        path,
                        final_path,
                        persisted: false,
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(source) => return Err(Error::WriteImage { path, source }),
            }
        }
        Err(Error::WriteImage {
            path: final_path,
            source: io::Error::new(io::ErrorKind::AlreadyExists, "too many temporary files"),
        })
    }

    fn persist(mut self, overwrite: bool) -> Result<PathBuf, Error> {
        let err = |source| Error::WriteImage {
            path: self.final_path.clone(),
            source,
        };
        self.file.sync_all().map_err(err)?;
        if !overwrite && fs::symlink_metadata(&self.final_path).is_ok() {
            return Err(Error::Exists(self.final_path.clone()));
        }
        fs::rename(&self.path, &self.final_path).map_err(err)?;
        self.persisted = true;
        Ok(self.final_path.clone())
    }
}

impl Drop for TempImage {
    fn drop(&mut self) {
        if !self.persisted {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// Verification of a local bundle without writing anything.
#[derive(Debug, Clone, Default)]
pub struct VerifyReport {
    /// Which signature form verified, when a certificate was given.
    pub signature: Option<SignatureForm>,
    /// Parts checked.
    pub parts: usize,
    /// Bytes of ciphertext checked.
    pub bundled_bytes: u64,
    /// Full decode result, when a key was given.
    pub decode: Option<DecodeReport>,
}
