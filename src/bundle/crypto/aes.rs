//! AES-128 of a bundle (§6): the key and IV types, and the streaming AES-128-CBC/PKCS#7
//! encryptor and decryptor.
//!
//! Bare § numbers in this module refer to docs/format.md.

use std::fmt;
use std::io::{self, Read, Write};

use openssl::symm::{Cipher, Crypter, Mode};

use super::{CryptoError, wipe};

/// AES block size in bytes; also the IV length and the PKCS#7 padding unit (§6).
const AES_BLOCK_BYTES: usize = 16;

/// Largest slice of caller input the encryptor processes per `write` call, so that its output
/// buffer stays bounded however large the caller's buffer is.
const MAX_WRITE_CHUNK_BYTES: usize = 1 << 20;

/// Size of the reads the decryptor issues on its inner reader: 256 KiB keeps per-call overhead
/// (one OpenSSL call, one syscall) negligible against AES throughput.
const READ_CHUNK_BYTES: usize = 256 * 1024;

pub(super) fn parse_hex16(text: &str, what: &'static str) -> Result<[u8; 16], CryptoError> {
    let mut out = [0u8; 16];
    // hex::decode_to_slice accepts either case and checks the exact length (2 × 16).
    match hex::decode_to_slice(text, &mut out) {
        Ok(()) => Ok(out),
        Err(_) => {
            wipe(&mut out);
            Err(CryptoError::KeyHex { what })
        }
    }
}

macro_rules! secret16 {
    ($name:ident, $what:literal, $doc:literal) => {
        #[doc = $doc]
        ///
        /// `Debug` is redacted, there is no `Display`, and the bytes are overwritten with zeros
        /// when the value is dropped.
        pub struct $name([u8; 16]);

        impl $name {
            /// Draws 16 fresh bytes from the OpenSSL CSPRNG (§6: fresh for every bundle).
            pub fn random() -> Result<Self, CryptoError> {
                let mut bytes = [0u8; 16];
                openssl::rand::rand_bytes(&mut bytes).map_err(|source| CryptoError::Random {
                    what: $what,
                    source,
                })?;
                Ok(Self(bytes))
            }

            /// Wraps 16 raw bytes.
            pub fn from_bytes(bytes: [u8; 16]) -> Self {
                Self(bytes)
            }

            /// The raw 16 bytes, as the cipher uses them.
            pub fn as_bytes(&self) -> &[u8; 16] {
                &self.0
            }

            /// The 32-character lowercase hex text: the form that gets RSA-wrapped (§6, §7).
            pub fn to_hex(&self) -> String {
                hex::encode(self.0)
            }

            /// Parses 32 hex characters (either case).
            pub fn from_hex(text: &str) -> Result<Self, CryptoError> {
                parse_hex16(text, $what).map(Self)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(concat!(stringify!($name), "(<redacted>)"))
            }
        }

        impl Drop for $name {
            fn drop(&mut self) {
                wipe(&mut self.0);
            }
        }
    };
}

secret16!(
    AesKey,
    "AES key",
    "AES-128 key K: 16 raw bytes (docs/format.md §6)."
);
secret16!(
    AesIv,
    "AES IV",
    "AES-128-CBC initialisation vector V: 16 raw bytes (§6)."
);

fn new_crypter(mode: Mode, key: &AesKey, iv: &AesIv) -> Result<Crypter, CryptoError> {
    let what = match mode {
        Mode::Encrypt => "encryption setup",
        Mode::Decrypt => "decryption setup",
    };
    Crypter::new(
        Cipher::aes_128_cbc(),
        mode,
        key.as_bytes(),
        Some(iv.as_bytes()),
    )
    .map_err(|source| CryptoError::Cipher { what, source })
}

fn io_error(err: CryptoError) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, err)
}

/// Streaming AES-128-CBC encryptor with PKCS#7 padding (§6): one continuous CBC chain over
/// everything written, no header, no salt. [`finish`](Self::finish) emits the final (padding)
/// block and returns the inner writer; dropping the writer without `finish` loses that block.
///
/// Memory: one output buffer of the caller's write size (capped at 1 MiB per call) plus one
/// block; OpenSSL itself holds back at most one partial block.
pub struct CbcEncryptWriter<W: Write> {
    inner: W,
    crypter: Crypter,
    out: Vec<u8>,
    bytes_out: u64,
    /// Set when the inner writer failed after the cipher consumed input: the CBC chain can no
    /// longer be continued consistently.
    poisoned: bool,
}

impl<W: Write> CbcEncryptWriter<W> {
    /// Starts an encryption into `inner` with key `key` and IV `iv`.
    pub fn new(inner: W, key: &AesKey, iv: &AesIv) -> Result<Self, CryptoError> {
        let crypter = new_crypter(Mode::Encrypt, key, iv)?;
        Ok(Self {
            inner,
            crypter,
            out: Vec::new(),
            bytes_out: 0,
            poisoned: false,
        })
    }

    /// Ciphertext bytes handed to the inner writer so far (after `finish`: |C|).
    pub fn bytes_out(&self) -> u64 {
        self.bytes_out
    }

    fn check_poisoned(&self) -> io::Result<()> {
        if self.poisoned {
            Err(io::Error::other(
                "AES-128-CBC encryptor unusable after an earlier write error",
            ))
        } else {
            Ok(())
        }
    }

    fn emit(&mut self, len: usize) -> io::Result<()> {
        if let Err(err) = self.inner.write_all(&self.out[..len]) {
            self.poisoned = true;
            return Err(err);
        }
        self.bytes_out += len as u64;
        Ok(())
    }

    /// Writes the PKCS#7 padding block, flushes, and returns the inner writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.check_poisoned()?;
        self.out.resize(AES_BLOCK_BYTES, 0);
        let n = self.crypter.finalize(&mut self.out).map_err(|source| {
            io_error(CryptoError::Cipher {
                what: "finalisation",
                source,
            })
        })?;
        self.emit(n)?;
        self.inner.flush()?;
        Ok(self.inner)
    }
}

impl<W: Write> Write for CbcEncryptWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.check_poisoned()?;
        let input = &buf[..buf.len().min(MAX_WRITE_CHUNK_BYTES)];
        if input.is_empty() {
            return Ok(0);
        }
        // Crypter::update needs room for the input plus one block of previously held bytes.
        self.out.resize(input.len() + AES_BLOCK_BYTES, 0);
        let n = self
            .crypter
            .update(input, &mut self.out)
            .map_err(|source| {
                io_error(CryptoError::Cipher {
                    what: "encryption",
                    source,
                })
            })?;
        self.emit(n)?;
        Ok(input.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        // A partial block cannot be flushed before `finish` without breaking the CBC chain.
        self.inner.flush()
    }
}

/// Streaming AES-128-CBC decryptor as a `Read` adapter (§6 reader). The last 16 decrypted bytes
/// are held back until the inner reader reaches EOF; then the PKCS#7 padding is checked and
/// removed, so the padding bytes are never returned. A length or padding failure is an
/// `io::Error` of kind `InvalidData` wrapping a [`CryptoError`].
pub struct CbcDecryptReader<R: Read> {
    inner: R,
    crypter: Crypter,
    inbuf: Vec<u8>,
    /// Decrypted bytes not yet returned; `out[start..]` is pending.
    out: Vec<u8>,
    start: usize,
    bytes_in: u64,
    finished: bool,
    failed: bool,
}

impl<R: Read> CbcDecryptReader<R> {
    /// Starts a decryption of the ciphertext read from `inner`.
    pub fn new(inner: R, key: &AesKey, iv: &AesIv) -> Result<Self, CryptoError> {
        let mut crypter = new_crypter(Mode::Decrypt, key, iv)?;
        // Padding is checked here rather than by OpenSSL so that the check happens exactly once
        // at EOF and produces our own "wrong key or corrupt bundle" error.
        crypter.pad(false);
        Ok(Self {
            inner,
            crypter,
            inbuf: vec![0; READ_CHUNK_BYTES],
            out: Vec::new(),
            start: 0,
            bytes_in: 0,
            finished: false,
            failed: false,
        })
    }

    /// Returns the inner reader.
    pub fn into_inner(self) -> R {
        self.inner
    }

    fn fail(&mut self, err: CryptoError) -> io::Error {
        self.failed = true;
        io_error(err)
    }

    fn finish_stream(&mut self) -> io::Result<()> {
        let len = self.bytes_in;
        if len == 0 || len % AES_BLOCK_BYTES as u64 != 0 {
            return Err(self.fail(CryptoError::CiphertextLength { len }));
        }
        let mut tail = [0u8; AES_BLOCK_BYTES];
        if let Err(source) = self.crypter.finalize(&mut tail) {
            return Err(self.fail(CryptoError::Cipher {
                what: "finalisation",
                source,
            }));
        }
        // With padding off and a whole number of blocks, every block was already emitted by
        // update(), so `out` ends with the last plaintext block (held back by read()).
        let pending = &self.out[self.start..];
        let Some(&last) = pending.last() else {
            return Err(self.fail(CryptoError::BadPadding));
        };
        let p = usize::from(last);
        let valid = (1..=AES_BLOCK_BYTES).contains(&p)
            && pending.len() >= p
            && pending[pending.len() - p..].iter().all(|&b| b == last);
        if !valid {
            return Err(self.fail(CryptoError::BadPadding));
        }
        let keep = self.out.len() - p;
        self.out.truncate(keep);
        self.finished = true;
        Ok(())
    }
}

impl<R: Read> Read for CbcDecryptReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.failed {
            return Err(io::Error::other(
                "AES-128-CBC decryptor unusable after an earlier error",
            ));
        }
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            // Until EOF the final block might be padding, so it is never released early.
            let releasable = if self.finished {
                self.out.len()
            } else {
                self.out.len().saturating_sub(AES_BLOCK_BYTES)
            };
            if self.start < releasable {
                let n = buf.len().min(releasable - self.start);
                buf[..n].copy_from_slice(&self.out[self.start..self.start + n]);
                self.start += n;
                return Ok(n);
            }
            if self.finished {
                return Ok(0);
            }
            self.out.drain(..self.start);
            self.start = 0;
            let n = loop {
                match self.inner.read(&mut self.inbuf) {
                    Ok(n) => break n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e),
                }
            };
            if n == 0 {
                self.finish_stream()?;
                continue;
            }
            self.bytes_in += n as u64;
            let old = self.out.len();
            self.out.resize(old + n + AES_BLOCK_BYTES, 0);
            match self.crypter.update(&self.inbuf[..n], &mut self.out[old..]) {
                Ok(k) => self.out.truncate(old + k),
                Err(source) => {
                    return Err(self.fail(CryptoError::Cipher {
                        what: "decryption",
                        source,
                    }));
                }
            }
        }
    }
}
