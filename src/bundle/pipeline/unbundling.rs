//! The unbundling pipeline: a bundle's ciphertext, from local parts or any other source, through
//! AES-128-CBC, the strict gzip reader, the tar-stream SHA-1 and the tar reader, every check
//! passed before the image gets its name (§12); and the local bundle it usually comes from.
//!
//! Bare § numbers in this module refer to docs/format.md.

use std::cell::Cell;
use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::MAX_IMAGE_BYTES;
use crate::bundle::Error;
use crate::bundle::crypto::{self, CbcDecryptReader, SignatureKey, UserKey};
use crate::bundle::digest::HashingReader;
use crate::bundle::gzip::GzipReader;
use crate::bundle::manifest::{self, Manifest, PartEntry, SignatureForm};
use crate::bundle::parts::{self, ExpectedPart, PartReader};
use crate::bundle::space::{self, NoSpace};
use crate::bundle::tar::{ImageSink, TarReader};
use crate::interrupt::Interruptible;
use crate::progress::Progress;

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

/// Largest manifest we read: the parser's limit (a 1025-part manifest is about 130 KB).
const MAX_MANIFEST_BYTES: u64 = manifest::MAX_MANIFEST_BYTES as u64;

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
        self.decode_with(key, options, None, progress)
    }

    /// [`LocalBundle::decode`] with the image going to `sink` ([`decode_ciphertext_into`]).
    pub fn decode_into(
        &self,
        key: &UserKey,
        options: DecodeOptions<'_>,
        sink: &mut dyn ImageSink,
        progress: &dyn Progress,
    ) -> Result<DecodeReport, Error> {
        self.decode_with(key, options, Some(sink), progress)
    }

    fn decode_with(
        &self,
        key: &UserKey,
        options: DecodeOptions<'_>,
        sink: Option<&mut dyn ImageSink>,
        progress: &dyn Progress,
    ) -> Result<DecodeReport, Error> {
        self.check_part_sizes()?;
        let parts = PartReader::new(self.expected_parts());
        let part_failure = parts.failure();
        let options = match sink {
            Some(_) => DecodeOptions {
                out_dir: None,
                ..options
            },
            None => options,
        };
        decode(&self.manifest, key, parts, options, sink, progress).map_err(|e| {
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
    decode(manifest, key, ciphertext, options, None, progress)
}

/// [`decode_ciphertext`] with the image going to `sink` (an EBS snapshot …) instead of a file;
/// `options.out_dir` is ignored. The sink sees the image's data before the digest is checked:
/// it must not make the image usable (complete a snapshot) unless this returns `Ok`.
///
/// # Errors
/// As [`decode_ciphertext`]; the sink's own are [`Error::Tar`] (`WriteOutput`).
pub fn decode_ciphertext_into(
    manifest: &Manifest,
    key: &UserKey,
    ciphertext: impl Read,
    options: DecodeOptions<'_>,
    sink: &mut dyn ImageSink,
    progress: &dyn Progress,
) -> Result<DecodeReport, Error> {
    let options = DecodeOptions {
        out_dir: None,
        ..options
    };
    decode(manifest, key, ciphertext, options, Some(sink), progress)
}

fn decode(
    manifest: &Manifest,
    key: &UserKey,
    ciphertext: impl Read,
    options: DecodeOptions<'_>,
    sink: Option<&mut dyn ImageSink>,
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
        if out_dir.is_some() || sink.is_some() {
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
    let extracted = match (temp.as_mut(), sink) {
        (Some(t), _) => reader.extract_to(Some(&mut t.file), &mut |_| {}),
        (None, Some(sink)) => reader.extract_into(Some(sink), &mut |_| {}),
        (None, None) => reader.extract_to(None, &mut |_| {}),
    };
    let hashing = extracted.map_err(|e| match (out_dir, space::full_in_chain(&e)) {
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
