//! The names of the files in an initramfs, to tell whether it carries the drivers an instance
//! needs to find its root disk (`xen-blkfront` on the Xen hosts of instance-store instances).
//!
//! An initramfs is what the kernel unpacks at boot: cpio archives in the "newc" format
//! (`070701`, or `070702` with checksums) back to back, zero-padded between them, of which the
//! last may be compressed (Debian's and Ubuntu's put the CPU microcode in a first, uncompressed
//! archive). Supported compressions: gzip, zstd (Debian's and Ubuntu's default), xz and lzma
//! (the kernel also knows bzip2, lzo and lz4: those are reported as unreadable, and the caller
//! says the check could not be made).
//!
//! The file comes from an image, which may come from anywhere: every archive header is checked,
//! names are bounded ([`MAX_NAME_BYTES`]), the number of entries ([`MAX_ENTRIES`]) and the bytes
//! decompressed ([`MAX_DECOMPRESSED_BYTES`]) are bounded, and nothing but the names is kept. The archives are parsed as they are decompressed
//! (a push parser fed by the decoders), so memory stays small whatever the size.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};

/// The longest file name accepted in an archive header.
pub const MAX_NAME_BYTES: usize = 4096;

/// The most entries read from one initramfs (real ones have a few thousand).
pub const MAX_ENTRIES: u64 = 1 << 20;

/// The most bytes read from one initramfs, decompressed (real ones are a few hundred MiB at
/// most, with every module of the kernel).
pub const MAX_DECOMPRESSED_BYTES: u64 = 1 << 30;

/// Why an initramfs could not be read.
#[derive(Debug, thiserror::Error)]
pub enum InitramfsError {
    /// Reading the file (or decompressing it) failed.
    #[error("reading the initramfs")]
    Io(#[from] io::Error),
    /// Its content is not a cpio archive, nor one of the compressions supported.
    #[error("the initramfs is {what}, which amibundle cannot read")]
    Unsupported {
        /// What was found (`lz4-compressed`, `not a cpio archive` …).
        what: String,
    },
    /// An archive header or name is malformed, or a bound was exceeded.
    #[error("the initramfs is malformed at byte {offset} of {layer}: {why}")]
    Malformed {
        /// `the file` or `its compressed part`.
        layer: &'static str,
        /// Where, in that layer.
        offset: u64,
        /// What is wrong.
        why: String,
    },
}

/// The names (without a leading `./` or `/`) of every entry of the initramfs `file` (opened
/// by the caller, inside the image).
///
/// # Errors
/// [`InitramfsError`] when the file cannot be read, is malformed, or uses a compression that is
/// not supported.
pub fn list(file: File) -> Result<Vec<String>, InitramfsError> {
    list_with_limit(file, MAX_DECOMPRESSED_BYTES)
}

/// [`list`] with another bound on the bytes read (the fuzz target keeps each input fast).
///
/// # Errors
/// Those of [`list`].
pub fn list_with_limit(mut file: File, limit: u64) -> Result<Vec<String>, InitramfsError> {
    let mut outer = CpioSink::new("the file", true, limit);
    let mut buf = vec![0u8; 256 * 1024];
    let compressed_at = loop {
        let n = match file.read(&mut buf) {
            Ok(0) => break None,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.into()),
        };
        let taken = outer.feed(&buf[..n])?;
        if taken < n || outer.foreign_at.is_some() {
            break outer.foreign_at;
        }
    };
    let mut names = outer.finish()?;
    if let Some(offset) = compressed_at {
        file.seek(SeekFrom::Start(offset))?;
        let mut reader = BufReader::new(file);
        let magic = reader.fill_buf()?.to_vec();
        let mut inner = CpioSink::new("its compressed part", false, limit);
        decompress(&magic, &mut reader, &mut inner)?;
        names.extend(inner.finish()?);
    }
    Ok(names)
}

/// Decompresses `reader` (starting with `magic`) into `sink`.
fn decompress(
    magic: &[u8],
    reader: &mut BufReader<File>,
    sink: &mut CpioSink,
) -> Result<(), InitramfsError> {
    let unsupported = |what: &str| InitramfsError::Unsupported { what: what.into() };
    if magic.starts_with(&[0x1F, 0x8B]) || magic.starts_with(&[0x28, 0xB5, 0x2F, 0xFD]) {
        // gzip members or zstd frames one after another, with zero padding between or after
        // them (the kernel skips it); each is checked to its end (CRC-32, checksums), and
        // anything else after them is an error.
        let gzip = magic.starts_with(&[0x1F, 0x8B]);
        loop {
            if gzip {
                let mut decoder = flate2::bufread::GzDecoder::new(&mut *reader);
                copy_into(&mut decoder, sink)?;
            } else {
                let mut decoder = ruzstd::decoding::StreamingDecoder::new(&mut *reader)
                    .map_err(|e| InitramfsError::Io(io::Error::other(e.to_string())))?;
                copy_into(&mut decoder, sink)?;
            }
            if !skip_zeros(reader)? {
                return Ok(());
            }
            let next = reader.fill_buf()?;
            let same = if gzip {
                next.starts_with(&[0x1F, 0x8B])
            } else {
                next.starts_with(&[0x28, 0xB5, 0x2F, 0xFD])
            };
            if !same {
                return Err(InitramfsError::Malformed {
                    layer: "its compressed part",
                    offset: sink.offset,
                    why: "data after the compressed stream".into(),
                });
            }
        }
    } else if magic.starts_with(&[0xFD, b'7', b'z', b'X', b'Z', 0x00]) {
        lzma_rs::xz_decompress(reader, sink).map_err(lzma_error)
    } else if magic.first() == Some(&0x5D) && magic.get(1) == Some(&0x00) {
        lzma_rs::lzma_decompress(reader, sink).map_err(lzma_error)
    } else if magic.starts_with(&[0x02, 0x21, 0x4C, 0x18])
        || magic.starts_with(&[0x04, 0x22, 0x4D, 0x18])
    {
        Err(unsupported("lz4-compressed"))
    } else if magic.starts_with(b"BZh") {
        Err(unsupported("bzip2-compressed"))
    } else if magic.starts_with(&[0x89, b'L', b'Z', b'O']) {
        Err(unsupported("lzo-compressed"))
    } else {
        Err(unsupported(
            "not a cpio archive nor a compression the kernel knows",
        ))
    }
}

fn lzma_error(e: lzma_rs::error::Error) -> InitramfsError {
    match e {
        lzma_rs::error::Error::IoError(e) => InitramfsError::Io(e),
        other => InitramfsError::Io(io::Error::other(format!("{other:?}"))),
    }
}

/// Copies everything `reader` yields into `sink`.
fn copy_into(reader: &mut impl Read, sink: &mut CpioSink) -> Result<(), InitramfsError> {
    match io::copy(reader, sink) {
        Ok(_) => Ok(()),
        Err(e) => Err(sink.error.take().unwrap_or(InitramfsError::Io(e))),
    }
}

/// Skips zero bytes; whether anything else follows.
fn skip_zeros(reader: &mut impl BufRead) -> io::Result<bool> {
    loop {
        let buf = reader.fill_buf()?;
        if buf.is_empty() {
            return Ok(false);
        }
        let zeros = buf.iter().take_while(|&&b| b == 0).count();
        let all = zeros == buf.len();
        reader.consume(zeros);
        if !all {
            return Ok(true);
        }
    }
}

/// Where the parser is in the archive stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Between entries: zero padding, then a 110-byte header.
    Header,
    /// The name: `len` bytes, then `pad` bytes.
    Name { len: usize, pad: u64, data: u64 },
    /// Bytes to skip: the data and its padding.
    Skip { left: u64 },
}

/// A push parser of cpio "newc" archives: fed bytes in any pieces, keeps the entry names.
struct CpioSink {
    layer: &'static str,
    /// Whether a foreign magic at an entry boundary ends the archives (the compressed part of
    /// an initramfs follows) rather than being an error.
    stop_at_foreign: bool,
    state: State,
    buf: Vec<u8>,
    names: Vec<String>,
    /// Bytes consumed so far.
    offset: u64,
    /// Where a foreign magic starts, once seen.
    foreign_at: Option<u64>,
    /// An error met inside `write`, kept to be reported as itself.
    error: Option<InitramfsError>,
    /// A trailer was seen and nothing but padding followed yet.
    after_trailer: bool,
    /// The most bytes accepted.
    limit: u64,
}

impl CpioSink {
    fn new(layer: &'static str, stop_at_foreign: bool, limit: u64) -> Self {
        Self {
            layer,
            stop_at_foreign,
            state: State::Header,
            buf: Vec::new(),
            names: Vec::new(),
            offset: 0,
            foreign_at: None,
            error: None,
            after_trailer: false,
            limit,
        }
    }

    fn malformed(&self, why: impl Into<String>) -> InitramfsError {
        InitramfsError::Malformed {
            layer: self.layer,
            offset: self.offset,
            why: why.into(),
        }
    }

    /// Consumes bytes; returns how many were taken (fewer than given only when a foreign magic
    /// starts at an entry boundary and `stop_at_foreign` is set).
    fn feed(&mut self, mut data: &[u8]) -> Result<usize, InitramfsError> {
        let given = data.len();
        while !data.is_empty() {
            if self.foreign_at.is_some() {
                return Ok(given - data.len());
            }
            let before = data.len();
            data = self.step(data)?;
            self.offset += (before - data.len()) as u64;
            if self.offset > self.limit {
                return Err(self.malformed(format!("more than {} MiB", self.limit >> 20)));
            }
        }
        Ok(given)
    }

    /// One step of the state machine; returns the bytes it did not consume.
    fn step<'a>(&mut self, data: &'a [u8]) -> Result<&'a [u8], InitramfsError> {
        match self.state {
            State::Header => {
                if self.buf.is_empty() {
                    // Zero padding between entries and between archives.
                    let zeros = data.iter().take_while(|&&b| b == 0).count();
                    if zeros > 0 {
                        return Ok(&data[zeros..]);
                    }
                }
                let want = 110 - self.buf.len();
                let take = want.min(data.len());
                self.buf.extend_from_slice(&data[..take]);
                let rest = &data[take..];
                let magic_known = self.buf.len() >= 6;
                if magic_known
                    && !(self.buf.starts_with(b"070701") || self.buf.starts_with(b"070702"))
                {
                    if self.stop_at_foreign {
                        // `self.offset` is where `data` starts; `buf` began that many bytes
                        // before it. Nothing more is consumed.
                        self.foreign_at = Some(self.offset - (self.buf.len() - take) as u64);
                        self.buf.clear();
                        return Ok(data);
                    }
                    return Err(self.malformed("not a cpio \"newc\" header"));
                }
                if self.buf.len() < 110 {
                    return Ok(rest);
                }
                let field = |i: usize| -> Result<u64, InitramfsError> {
                    let text = std::str::from_utf8(&self.buf[6 + 8 * i..14 + 8 * i])
                        .map_err(|_| self.malformed("a header field is not hexadecimal"))?;
                    u64::from_str_radix(text, 16)
                        .map_err(|_| self.malformed("a header field is not hexadecimal"))
                };
                let file_size = field(6)?;
                let name_size = field(11)? as usize;
                if name_size == 0 || name_size > MAX_NAME_BYTES {
                    return Err(self.malformed(format!("a name of {name_size} bytes")));
                }
                if self.names.len() as u64 >= MAX_ENTRIES {
                    return Err(self.malformed(format!("more than {MAX_ENTRIES} entries")));
                }
                self.buf.clear();
                self.after_trailer = false;
                self.state = State::Name {
                    len: name_size,
                    pad: pad4(110 + name_size as u64),
                    data: file_size,
                };
                Ok(rest)
            }
            State::Name {
                len,
                pad,
                data: size,
            } => {
                let take = (len - self.buf.len()).min(data.len());
                self.buf.extend_from_slice(&data[..take]);
                if self.buf.len() < len {
                    return Ok(&data[take..]);
                }
                let raw = &self.buf[..len - 1];
                if self.buf[len - 1] != 0 || raw.contains(&0) {
                    return Err(self.malformed("a name that is not NUL-terminated"));
                }
                let name = String::from_utf8_lossy(raw);
                if name == "TRAILER!!!" {
                    self.after_trailer = true;
                } else {
                    let clean = name.trim_start_matches("./").trim_start_matches('/');
                    self.names.push(clean.to_owned());
                }
                self.buf.clear();
                self.state = State::Skip {
                    left: pad + size + pad4(size),
                };
                Ok(&data[take..])
            }
            State::Skip { left } => {
                let take = left.min(data.len() as u64);
                let left = left - take;
                self.state = if left == 0 {
                    State::Header
                } else {
                    State::Skip { left }
                };
                Ok(&data[take as usize..])
            }
        }
    }

    /// The names, once the input has ended: it must end between entries.
    fn finish(self) -> Result<Vec<String>, InitramfsError> {
        let complete = self.state == State::Header && self.buf.is_empty();
        if !complete && self.foreign_at.is_none() {
            return Err(self.malformed("the archive ends inside an entry"));
        }
        if !self.after_trailer && self.foreign_at.is_none() && !self.names.is_empty() {
            return Err(self.malformed("the archive has no trailer"));
        }
        Ok(self.names)
    }
}

impl Write for CpioSink {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        match self.feed(data) {
            Ok(n) if n == data.len() => Ok(n),
            Ok(_) => {
                let e = self.malformed("compressed data inside compressed data");
                self.error = Some(e);
                Err(io::Error::other("malformed initramfs"))
            }
            Err(e) => {
                let text = e.to_string();
                self.error = Some(e);
                Err(io::Error::other(text))
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn pad4(n: u64) -> u64 {
    (4 - n % 4) % 4
}

#[cfg(test)]
pub(super) mod tests {
    //! Archives are made by the real tools (GNU cpio's `-H newc`, gzip, zstd, xz) the way
    //! initramfs-tools and dracut make them, microcode archive first.

    use super::*;
    use std::path::Path;
    use std::process::{Command, Stdio};

    fn tool_exists(name: &str) -> bool {
        Command::new("sh")
            .args(["-c", &format!("command -v {name}")])
            .output()
            .is_ok_and(|o| o.status.success())
    }

    /// A cpio archive of `files` (relative paths) made by GNU cpio in `dir`.
    pub(in crate::image::bootcheck) fn cpio(dir: &Path, files: &[&str]) -> Vec<u8> {
        for f in files {
            let p = dir.join(f);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            if !p.exists() {
                std::fs::write(&p, format!("contents of {f}")).unwrap();
            }
        }
        let mut child = Command::new("cpio")
            .args(["--quiet", "-o", "-H", "newc"])
            .current_dir(dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("cpio (Debian package cpio)");
        let list: String = files.iter().map(|f| format!("{f}\n")).collect();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(list.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success());
        out.stdout
    }

    pub(in crate::image::bootcheck) fn compress(tool: &[&str], data: &[u8]) -> Vec<u8> {
        let mut child = Command::new(tool[0])
            .args(&tool[1..])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let data = data.to_vec();
        let writer = std::thread::spawn(move || stdin.write_all(&data).unwrap());
        let out = child.wait_with_output().unwrap();
        writer.join().unwrap();
        assert!(out.status.success());
        out.stdout
    }

    const MODULES: [&str; 3] = [
        "usr/lib/modules/6.1.0-28-cloud-amd64/kernel/drivers/block/xen-blkfront.ko",
        "usr/lib/modules/6.1.0-28-cloud-amd64/kernel/drivers/net/xen-netfront.ko",
        "scripts/local",
    ];

    fn initramfs(dir: &Path, compressor: &[&str]) -> std::path::PathBuf {
        let early = cpio(
            &dir.join("early"),
            &["kernel/x86/microcode/GenuineIntel.bin"],
        );
        let main = cpio(&dir.join("main"), &MODULES);
        let mut bytes = early;
        // initramfs-tools pads the early archive to 512 bytes.
        bytes.resize(bytes.len().div_ceil(512) * 512, 0);
        bytes.extend(compress(compressor, &main));
        let path = dir.join(format!("initrd-{}", compressor[0]));
        std::fs::write(&path, bytes).unwrap();
        path
    }

    #[test]
    fn names_come_out_of_each_compression_after_a_microcode_archive() {
        let mut tried = 0;
        for compressor in [
            &["gzip", "-9"][..],
            &["zstd", "-q", "-19", "-c"][..],
            &["xz", "--check=crc32", "-c"][..],
            &["xz", "--format=lzma", "-c"][..],
        ] {
            assert!(
                tool_exists(compressor[0]),
                "{} is needed (scripts/install-deps.sh installs it)",
                compressor[0]
            );
            let dir = tempfile::tempdir().unwrap();
            let path = initramfs(dir.path(), compressor);
            let names =
                list(File::open(&path).unwrap()).unwrap_or_else(|e| panic!("{compressor:?}: {e}"));
            assert!(names.contains(&"kernel/x86/microcode/GenuineIntel.bin".to_owned()));
            for m in MODULES {
                assert!(
                    names.contains(&m.to_owned()),
                    "{compressor:?}: {m} in {names:?}"
                );
            }
            tried += 1;
        }
        assert_eq!(tried, 4);
    }

    #[test]
    fn an_uncompressed_archive_and_lz4_are_told_apart() {
        let dir = tempfile::tempdir().unwrap();
        let plain = dir.path().join("plain");
        std::fs::write(&plain, cpio(&dir.path().join("m"), &MODULES)).unwrap();
        assert_eq!(list(File::open(&plain).unwrap()).unwrap(), MODULES);
        let lz4 = dir.path().join("lz4");
        let mut bytes = vec![0x02, 0x21, 0x4C, 0x18];
        bytes.extend([0u8; 64]);
        std::fs::write(&lz4, bytes).unwrap();
        let e = list(File::open(&lz4).unwrap()).unwrap_err().to_string();
        assert!(e.contains("lz4-compressed"), "{e}");
    }

    #[test]
    fn hostile_archives_are_refused_not_trusted() {
        let dir = tempfile::tempdir().unwrap();
        let good = cpio(&dir.path().join("m"), &MODULES);
        let write = |name: &str, bytes: &[u8]| {
            let p = dir.path().join(name);
            std::fs::write(&p, bytes).unwrap();
            File::open(p).unwrap()
        };
        // A name size beyond the bound.
        let mut huge_name = good.clone();
        huge_name[94..102].copy_from_slice(b"00100000");
        let e = list(write("huge", &huge_name)).unwrap_err().to_string();
        assert!(e.contains("a name of 1048576 bytes"), "{e}");
        // Cut in the middle of an entry.
        let e = list(write("cut", &good[..150])).unwrap_err().to_string();
        assert!(
            e.contains("ends inside an entry") || e.contains("not a cpio"),
            "{e}"
        );
        // Garbage that is neither cpio nor a compression.
        let e = list(write("junk", b"MZ\x90\x00 not an initramfs"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a cpio archive"), "{e}");
        // A gzip stream that is corrupt.
        let mut gz = compress(&["gzip"], &good);
        let mid = gz.len() / 2;
        gz[mid] ^= 0xFF;
        assert!(list(write("badgz", &gz)).is_err());
        // A decompression bomb: 8 MiB of zeros in one entry, a few KiB of gzip; the bound stops
        // it.
        let big = dir.path().join("big");
        std::fs::create_dir_all(big.join("d")).unwrap();
        std::fs::write(big.join("d/zeros"), vec![0u8; 8 << 20]).unwrap();
        let bomb = compress(&["gzip", "-9"], &cpio(&big, &["d/zeros"]));
        assert!(bomb.len() < 64 << 10);
        let e = list_with_limit(write("bomb", &bomb), 1 << 20)
            .unwrap_err()
            .to_string();
        assert!(e.contains("more than 1 MiB"), "{e}");
        // Zero padding after the compressed stream is what the kernel skips; anything else
        // after it is refused.
        let mut padded = compress(&["gzip"], &good);
        padded.extend([0u8; 4096]);
        assert_eq!(list(write("padded", &padded)).unwrap(), MODULES);
        padded.extend(b"junk");
        let e = list(write("junk-after", &padded)).unwrap_err().to_string();
        assert!(e.contains("data after the compressed stream"), "{e}");
        // A header whose fields are not hexadecimal.
        let mut bad_hex = good;
        bad_hex[54..62].copy_from_slice(b"zzzzzzzz");
        let e = list(write("hex", &bad_hex)).unwrap_err().to_string();
        assert!(e.contains("not hexadecimal"), "{e}");
    }
}
