//! Cryptography of a bundle: the AES-128 key and IV types, the streaming AES-128-CBC/PKCS#7
//! encryptor and decryptor (docs/format.md §6), RSA wrapping and unwrapping of the key and IV
//! text (§7), the manifest signature primitive (§9.5), loading of the user key and of
//! certificates, and the generation of amibundle's own user identity.
//!
//! Secrets (key and IV bytes or their hex text, private keys) never appear in an error message,
//! a log line or a `Debug` rendering.
//!
//! Bare § numbers in this module refer to docs/format.md.

use std::fmt;
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use openssl::asn1::Asn1Time;
use openssl::bn::{BigNum, MsbOption};
use openssl::error::ErrorStack;
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::{Id, PKey, Private, Public};
use openssl::rsa::{Padding, Rsa};
use openssl::sign::{Signer, Verifier};
use openssl::symm::{Cipher, Crypter, Mode};
use openssl::x509::{X509, X509NameBuilder};

/// AES block size in bytes; also the IV length and the PKCS#7 padding unit (§6).
const AES_BLOCK_BYTES: usize = 16;

/// Largest slice of caller input the encryptor processes per `write` call, so that its output
/// buffer stays bounded however large the caller's buffer is.
const MAX_WRITE_CHUNK_BYTES: usize = 1 << 20;

/// Size of the reads the decryptor issues on its inner reader: 256 KiB keeps per-call overhead
/// (one OpenSSL call, one syscall) negligible against AES throughput.
const READ_CHUNK_BYTES: usize = 256 * 1024;

/// PKCS#1 v1.5 encryption needs 11 bytes of overhead inside the modulus (RFC 8017 §7.2.1).
const PKCS1_OVERHEAD_BYTES: usize = 11;

/// Modulus size of the identity amibundle generates for itself.
const GENERATED_KEY_BITS: u32 = 2048;

/// Validity of the generated self-signed certificate: 20 years, leap days included.
const GENERATED_CERT_DAYS: u32 = 20 * 365 + 5;

/// File names of the generated identity inside its directory.
const GENERATED_KEY_FILE: &str = "user-key.pem";
const GENERATED_CERT_FILE: &str = "user-cert.pem";

/// Errors of the cryptographic layer. Messages never contain key material.
#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    /// The CSPRNG failed.
    #[error("generating random {what}")]
    Random {
        what: &'static str,
        #[source]
        source: ErrorStack,
    },
    /// A key or IV text was not 32 hexadecimal characters.
    #[error("parsing {what}: expected 32 hexadecimal characters")]
    KeyHex { what: &'static str },
    /// Setting up or running the AES-128-CBC cipher failed.
    #[error("running AES-128-CBC {what}")]
    Cipher {
        what: &'static str,
        #[source]
        source: ErrorStack,
    },
    /// The decrypted stream did not end in valid PKCS#7 padding (§6).
    #[error("wrong key or corrupt bundle: the decrypted data does not end in valid PKCS#7 padding")]
    BadPadding,
    /// The ciphertext length is not a non-zero multiple of the AES block size (§6).
    #[error(
        "wrong key or corrupt bundle: ciphertext length {len} is not a non-zero multiple of 16 bytes"
    )]
    CiphertextLength { len: u64 },
    /// Reading a key or certificate file failed.
    #[error("reading {what} {path}")]
    ReadFile {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The private key file is readable by group or others.
    #[error(
        "private key file {path} is readable by group or others (mode {mode:04o}); \
         run `chmod 600 {path}` or explicitly allow insecure key files"
    )]
    InsecureKeyFile { path: PathBuf, mode: u32 },
    /// The private key is protected by a passphrase.
    #[error(
        "{origin} is encrypted with a passphrase; amibundle needs an unencrypted RSA key \
         (for example `openssl pkey -in KEY -out KEY.plain`, then `chmod 600 KEY.plain`)"
    )]
    EncryptedKey { origin: String },
    /// The private key could not be parsed as PEM.
    #[error("parsing {origin} as a PEM private key (PKCS#1 or PKCS#8)")]
    ParseKey {
        origin: String,
        #[source]
        source: ErrorStack,
    },
    /// The key or certificate holds something other than an RSA key.
    #[error("{origin} holds a {kind} key; only RSA keys are supported")]
    NotRsa { origin: String, kind: String },
    /// The certificate could not be parsed.
    #[error("parsing {origin} as an X.509 certificate ({format})")]
    ParseCert {
        origin: String,
        format: &'static str,
        #[source]
        source: ErrorStack,
    },
    /// Extracting key parameters or fingerprints through OpenSSL failed.
    #[error("reading the {what} of {origin}")]
    Inspect {
        what: &'static str,
        origin: String,
        #[source]
        source: ErrorStack,
    },
    /// The user private key and the user certificate do not belong together (§2).
    #[error(
        "private key {key_path} does not match the public key of certificate {cert_path}; \
         pass the certificate that belongs to this key"
    )]
    KeyCertMismatch {
        key_path: PathBuf,
        cert_path: PathBuf,
    },
    /// The plaintext is too long to be wrapped with this modulus.
    #[error("wrapping {len} bytes with RSA: at most {max} bytes fit a {bits}-bit key")]
    PlaintextTooLong { len: usize, max: usize, bits: usize },
    /// RSA public-key encryption failed.
    #[error("wrapping with the RSA public key of the certificate")]
    Wrap {
        #[source]
        source: ErrorStack,
    },
    /// A hex field (RSA ciphertext or signature) was not hexadecimal.
    #[error("decoding {what}: not a hexadecimal string of whole bytes")]
    MalformedHex { what: &'static str },
    /// An RSA ciphertext is longer than the modulus.
    #[error(
        "RSA ciphertext has {len} bytes but the {bits}-bit private key allows at most {max}: \
         wrong private key (the bundle was made for a larger key) or corrupt manifest"
    )]
    CiphertextTooLong { len: usize, max: usize, bits: usize },
    /// RSA decryption failed its padding check (§7 reader step 2).
    #[error(
        "unwrapping with the RSA private key failed the PKCS#1 padding check: wrong private key \
         or corrupt manifest"
    )]
    WrongPrivateKey,
    /// The unwrapped plaintext is neither 32 hex characters nor 16 raw bytes (§7 reader step 3).
    #[error(
        "unwrapped {what} has {len} bytes where 32 hexadecimal characters were expected: \
         wrong private key or corrupt manifest"
    )]
    UnwrappedShape { what: &'static str, len: usize },
    /// Signing failed.
    #[error("signing with the RSA private key (SHA-1, PKCS#1 v1.5)")]
    Sign {
        #[source]
        source: ErrorStack,
    },
    /// Setting up a signature verification failed.
    #[error("verifying a signature with the RSA public key of the certificate")]
    Verify {
        #[source]
        source: ErrorStack,
    },
    /// Generating the identity's key or certificate failed.
    #[error("generating the {what} of the amibundle identity")]
    Generate {
        what: &'static str,
        #[source]
        source: ErrorStack,
    },
    /// Creating the identity directory failed.
    #[error("creating directory {path}")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Writing a generated identity file failed.
    #[error("writing {path}")]
    WriteFile {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Only one of the two identity files exists; refusing to overwrite or guess.
    #[error(
        "found {present} but not {missing}; move {present} away or restore {missing} \
         (refusing to overwrite a half-existing identity)"
    )]
    IdentityIncomplete { present: PathBuf, missing: PathBuf },
}

fn wipe(bytes: &mut [u8]) {
    bytes.fill(0);
    // Reading the wiped bytes through black_box keeps the compiler from eliding the stores as
    // dead writes (no unsafe volatile needed).
    std::hint::black_box(&*bytes);
}

fn parse_hex16(text: &str, what: &'static str) -> Result<[u8; 16], CryptoError> {
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

fn read_file(path: &Path, what: &'static str) -> Result<Vec<u8>, CryptoError> {
    fs::read(path).map_err(|source| CryptoError::ReadFile {
        what,
        path: path.to_owned(),
        source,
    })
}

fn key_kind(id: Id) -> String {
    match id {
        Id::RSA_PSS => "RSA-PSS".to_owned(),
        Id::EC => "EC".to_owned(),
        Id::DSA => "DSA".to_owned(),
        Id::DH => "DH".to_owned(),
        Id::ED25519 => "Ed25519".to_owned(),
        Id::ED448 => "Ed448".to_owned(),
        other => format!("non-RSA (OpenSSL id {})", other.as_raw()),
    }
}

/// The user's RSA private key (PEM, PKCS#1 or PKCS#8; §2). `Debug` shows only the key size.
pub struct UserKey {
    pkey: PKey<Private>,
    rsa: Rsa<Private>,
}

impl fmt::Debug for UserKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "UserKey(RSA-{}, <redacted>)", self.rsa.size() * 8)
    }
}

impl UserKey {
    /// Loads the key from `path`. Refuses a file that is readable by group or others
    /// (`mode & 0o077 != 0`) unless `allow_insecure`, a passphrase-protected key and a non-RSA
    /// key.
    pub fn load(path: &Path, allow_insecure: bool) -> Result<Self, CryptoError> {
        let meta = fs::metadata(path).map_err(|source| CryptoError::ReadFile {
            what: "private key",
            path: path.to_owned(),
            source,
        })?;
        let mode = meta.permissions().mode() & 0o7777;
        if mode & 0o077 != 0 && !allow_insecure {
            return Err(CryptoError::InsecureKeyFile {
                path: path.to_owned(),
                mode,
            });
        }
        let mut pem = read_file(path, "private key")?;
        let result = Self::parse(&pem, format!("private key {}", path.display()));
        wipe(&mut pem);
        result
    }

    /// Parses a PEM private key held in memory.
    pub fn from_pem(pem: &[u8]) -> Result<Self, CryptoError> {
        Self::parse(pem, "private key".to_owned())
    }

    fn parse(pem: &[u8], origin: String) -> Result<Self, CryptoError> {
        let mut asked_passphrase = false;
        // A callback is always supplied: without one OpenSSL would prompt for a passphrase on
        // the controlling terminal. It supplies an empty passphrase and records that one was
        // needed, which identifies encrypted keys in every PEM flavour.
        let parsed = PKey::private_key_from_pem_callback(pem, |_buf| {
            asked_passphrase = true;
            Ok(0)
        });
        let pkey = match parsed {
            Ok(pkey) => pkey,
            Err(_) if asked_passphrase => return Err(CryptoError::EncryptedKey { origin }),
            Err(source) => return Err(CryptoError::ParseKey { origin, source }),
        };
        if pkey.id() != Id::RSA {
            return Err(CryptoError::NotRsa {
                kind: key_kind(pkey.id()),
                origin,
            });
        }
        let rsa = pkey.rsa().map_err(|source| CryptoError::Inspect {
            what: "RSA parameters",
            origin,
            source,
        })?;
        Ok(Self { pkey, rsa })
    }

    /// Modulus length k in bytes (256 for RSA-2048).
    pub fn modulus_bytes(&self) -> usize {
        self.rsa.size() as usize
    }
}

/// An X.509 certificate, used only as a container for an RSA public key: no validity, chain,
/// key-usage or name checks (§7, §11.1).
pub struct Certificate {
    x509: X509,
    pkey: PKey<Public>,
    rsa: Rsa<Public>,
}

impl fmt::Debug for Certificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Certificate")
            .field("subject_cn", &self.subject_cn())
            .field("sha256", &hex::encode(self.sha256_fingerprint()))
            .finish()
    }
}

impl Certificate {
    /// Loads a certificate file, PEM or DER (detected by the `-----BEGIN` marker).
    pub fn load(path: &Path) -> Result<Self, CryptoError> {
        let bytes = read_file(path, "certificate")?;
        let origin = format!("certificate {}", path.display());
        if looks_like_pem(&bytes) {
            Self::parse_pem(&bytes, origin)
        } else {
            Self::parse_der(&bytes, origin)
        }
    }

    /// Parses a PEM certificate held in memory.
    pub fn from_pem(pem: &[u8]) -> Result<Self, CryptoError> {
        Self::parse_pem(pem, "certificate".to_owned())
    }

    /// Parses a DER certificate held in memory.
    pub fn from_der(der: &[u8]) -> Result<Self, CryptoError> {
        Self::parse_der(der, "certificate".to_owned())
    }

    fn parse_pem(pem: &[u8], origin: String) -> Result<Self, CryptoError> {
        match X509::from_pem(pem) {
            Ok(x509) => Self::from_x509(x509, origin),
            Err(source) => Err(CryptoError::ParseCert {
                origin,
                format: "PEM",
                source,
            }),
        }
    }

    fn parse_der(der: &[u8], origin: String) -> Result<Self, CryptoError> {
        match X509::from_der(der) {
            Ok(x509) => Self::from_x509(x509, origin),
            Err(source) => Err(CryptoError::ParseCert {
                origin,
                format: "DER",
                source,
            }),
        }
    }

    fn from_x509(x509: X509, origin: String) -> Result<Self, CryptoError> {
        let pkey = x509.public_key().map_err(|source| CryptoError::Inspect {
            what: "public key",
            origin: origin.clone(),
            source,
        })?;
        if pkey.id() != Id::RSA {
            return Err(CryptoError::NotRsa {
                kind: key_kind(pkey.id()),
                origin,
            });
        }
        let rsa = pkey.rsa().map_err(|source| CryptoError::Inspect {
            what: "RSA public key",
            origin,
            source,
        })?;
        Ok(Self { x509, pkey, rsa })
    }

    fn fingerprint(&self, md: MessageDigest) -> Vec<u8> {
        // Hashing the DER encoding with a built-in digest only fails on allocation failure;
        // an empty fingerprint then simply matches no pin.
        self.x509.digest(md).map(|d| d.to_vec()).unwrap_or_default()
    }

    /// SHA-1 over the DER encoding (what `openssl x509 -fingerprint` prints; §11.1).
    pub fn sha1_fingerprint(&self) -> [u8; 20] {
        let mut out = [0u8; 20];
        let fp = self.fingerprint(MessageDigest::sha1());
        if fp.len() == out.len() {
            out.copy_from_slice(&fp);
        }
        out
    }

    /// SHA-256 over the DER encoding (§11.1).
    pub fn sha256_fingerprint(&self) -> [u8; 32] {
        let mut out = [0u8; 32];
        let fp = self.fingerprint(MessageDigest::sha256());
        if fp.len() == out.len() {
            out.copy_from_slice(&fp);
        }
        out
    }

    /// The subject's first common name, if any.
    pub fn subject_cn(&self) -> Option<String> {
        let entry = self
            .x509
            .subject_name()
            .entries_by_nid(Nid::COMMONNAME)
            .next()?;
        entry.data().to_string().ok()
    }

    /// Modulus length k in bytes (128 for the RSA-1024 EC2 certificates).
    pub fn modulus_bytes(&self) -> usize {
        self.rsa.size() as usize
    }
}

fn looks_like_pem(bytes: &[u8]) -> bool {
    bytes.windows(10).any(|w| w == b"-----BEGIN")
}

/// Refuses a certificate whose public key (RSA n and e) is not the public half of `key` (§2:
/// checked before bundling, unlike the reference). The paths only name the files in the error.
pub fn check_pair(
    key: &UserKey,
    cert: &Certificate,
    key_path: &Path,
    cert_path: &Path,
) -> Result<(), CryptoError> {
    if key.rsa.n() == cert.rsa.n() && key.rsa.e() == cert.rsa.e() {
        Ok(())
    } else {
        Err(CryptoError::KeyCertMismatch {
            key_path: key_path.to_owned(),
            cert_path: cert_path.to_owned(),
        })
    }
}

/// RSAES-PKCS1-v1_5 encryption of `plaintext` with the certificate's public key (§7). Returns
/// exactly k bytes (leading zeros kept) as 2k lowercase hex characters.
pub fn wrap_hex(cert: &Certificate, plaintext: &[u8]) -> Result<String, CryptoError> {
    let k = cert.modulus_bytes();
    let max = k.saturating_sub(PKCS1_OVERHEAD_BYTES);
    if plaintext.len() > max {
        return Err(CryptoError::PlaintextTooLong {
            len: plaintext.len(),
            max,
            bits: k * 8,
        });
    }
    let mut out = vec![0u8; k];
    let n = cert
        .rsa
        .public_encrypt(plaintext, &mut out, Padding::PKCS1)
        .map_err(|source| CryptoError::Wrap { source })?;
    // OpenSSL always produces a k-byte octet string (RFC 8017 I2OSP); left-pad defensively so
    // the hex is 2k characters whatever happens.
    let mut padded = vec![0u8; k - n.min(k)];
    padded.extend_from_slice(&out[..n.min(k)]);
    Ok(hex::encode(padded))
}

/// Decodes an RSA octet string written as hex (either case): shorter than k is left-padded
/// with zeros (§7 reader step 1), longer is an error.
fn decode_rsa_hex(hex_text: &str, k: usize, what: &'static str) -> Result<Vec<u8>, CryptoError> {
    let bytes = hex::decode(hex_text.trim()).map_err(|_| CryptoError::MalformedHex { what })?;
    if bytes.len() > k {
        return Err(CryptoError::CiphertextTooLong {
            len: bytes.len(),
            max: k,
            bits: k * 8,
        });
    }
    let mut padded = vec![0u8; k - bytes.len()];
    padded.extend_from_slice(&bytes);
    Ok(padded)
}

/// Reverses [`wrap_hex`] with the private key (§7 reader): hex in either case, shorter than k
/// left-padded, longer refused; a padding failure means the wrong private key.
///
/// Note: OpenSSL 3.2 and later answer a padding failure with a deterministic pseudo-random
/// plaintext ("implicit rejection") instead of an error; [`unwrap_key`] / [`unwrap_iv`] catch
/// that case through their shape check.
pub fn unwrap_hex(key: &UserKey, hex_text: &str) -> Result<Vec<u8>, CryptoError> {
    let k = key.modulus_bytes();
    let ciphertext = decode_rsa_hex(hex_text, k, "RSA ciphertext")?;
    let mut out = vec![0u8; k];
    match key
        .rsa
        .private_decrypt(&ciphertext, &mut out, Padding::PKCS1)
    {
        Ok(n) => {
            let plain = out[..n].to_vec();
            wipe(&mut out);
            Ok(plain)
        }
        Err(_) => {
            wipe(&mut out);
            Err(CryptoError::WrongPrivateKey)
        }
    }
}

fn unwrap16(key: &UserKey, hex_text: &str, what: &'static str) -> Result<[u8; 16], CryptoError> {
    let mut plain = unwrap_hex(key, hex_text)?;
    let result = match plain.len() {
        32 => std::str::from_utf8(&plain)
            .ok()
            .and_then(|text| parse_hex16(text, what).ok())
            .ok_or(CryptoError::UnwrappedShape { what, len: 32 }),
        16 => {
            // §7 reader step 3: some third-party writers wrapped the raw bytes.
            tracing::warn!(
                "unwrapped {what} is 16 raw bytes instead of 32 hex characters; \
                 accepting it as written by a third-party bundler"
            );
            let mut raw = [0u8; 16];
            raw.copy_from_slice(&plain);
            Ok(raw)
        }
        len => Err(CryptoError::UnwrappedShape { what, len }),
    };
    wipe(&mut plain);
    result
}

/// Unwraps `user_encrypted_key` (or, with the EC2 private key in tests, `ec2_encrypted_key`)
/// and parses the 32-character hex plaintext (§7); 16 raw bytes are accepted with a warning.
pub fn unwrap_key(key: &UserKey, hex_text: &str) -> Result<AesKey, CryptoError> {
    unwrap16(key, hex_text, "AES key").map(AesKey)
}

/// Unwraps an encrypted IV field like [`unwrap_key`].
pub fn unwrap_iv(key: &UserKey, hex_text: &str) -> Result<AesIv, CryptoError> {
    unwrap16(key, hex_text, "AES IV").map(AesIv)
}

/// RSASSA-PKCS1-v1_5 signature with SHA-1 (§9.5) over `data`, as 2k lowercase hex characters.
/// Deterministic for a given key and data.
pub fn sign_sha1_hex(key: &UserKey, data: &[u8]) -> Result<String, CryptoError> {
    let sign = || -> Result<Vec<u8>, ErrorStack> {
        let mut signer = Signer::new(MessageDigest::sha1(), &key.pkey)?;
        signer.set_rsa_padding(Padding::PKCS1)?;
        signer.update(data)?;
        signer.sign_to_vec()
    };
    let sig = sign().map_err(|source| CryptoError::Sign { source })?;
    let k = key.modulus_bytes();
    let mut padded = vec![0u8; k.saturating_sub(sig.len())];
    padded.extend_from_slice(&sig);
    Ok(hex::encode(padded))
}

/// A public RSA key that checks manifest signatures: a user certificate's, or the public half
/// of the user's private key (the key that decrypts a bundle also tells whether its owner signed
/// it, so a signature can be checked with nothing more than what unbundling needs).
pub trait SignatureKey {
    /// What the key is, for messages: `certificate CN "…"`, `the public key of the private key`.
    fn describe(&self) -> String;
    /// Checks a [`sign_sha1_hex`] signature. `Ok(false)` for a signature that does not match; an
    /// error for hex that is not hex or longer than the modulus.
    fn verify_sha1_hex(&self, data: &[u8], sig_hex: &str) -> Result<bool, CryptoError>;
}

impl SignatureKey for Certificate {
    fn describe(&self) -> String {
        match self.subject_cn() {
            Some(cn) => format!("certificate CN {cn:?}"),
            None => format!("certificate SHA-1 {}", hex::encode(self.sha1_fingerprint())),
        }
    }

    fn verify_sha1_hex(&self, data: &[u8], sig_hex: &str) -> Result<bool, CryptoError> {
        verify_with(&self.pkey, self.modulus_bytes(), data, sig_hex)
    }
}

impl SignatureKey for UserKey {
    fn describe(&self) -> String {
        format!(
            "the public key of the private key (RSA-{})",
            self.modulus_bytes() * 8
        )
    }

    fn verify_sha1_hex(&self, data: &[u8], sig_hex: &str) -> Result<bool, CryptoError> {
        verify_with(&self.pkey, self.modulus_bytes(), data, sig_hex)
    }
}

/// Verifies a [`sign_sha1_hex`] signature with the certificate's public key. `Ok(false)` for a
/// signature that does not match; an error for hex that is not hex or longer than k bytes.
pub fn verify_sha1_hex(
    cert: &Certificate,
    data: &[u8],
    sig_hex: &str,
) -> Result<bool, CryptoError> {
    cert.verify_sha1_hex(data, sig_hex)
}

fn verify_with<T: openssl::pkey::HasPublic>(
    pkey: &PKey<T>,
    modulus_bytes: usize,
    data: &[u8],
    sig_hex: &str,
) -> Result<bool, CryptoError> {
    let sig = decode_rsa_hex(sig_hex, modulus_bytes, "signature")?;
    let mut verifier = Verifier::new(MessageDigest::sha1(), pkey)
        .map_err(|source| CryptoError::Verify { source })?;
    verifier
        .set_rsa_padding(Padding::PKCS1)
        .map_err(|source| CryptoError::Verify { source })?;
    verifier
        .update(data)
        .map_err(|source| CryptoError::Verify { source })?;
    // OpenSSL reports some malformed signatures as errors rather than as a mismatch; either way
    // the signature does not verify, so fail closed with `false`.
    Ok(verifier.verify(&sig).unwrap_or(false))
}

/// Common name for the generated certificate: the host name, else the numeric uid.
fn identity_common_name() -> String {
    let host = fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default();
    // X.509 limits a CN to 64 characters; a longer host name falls back to the uid.
    let label = if !host.is_empty() && host.len() <= 40 {
        host
    } else {
        format!("uid {}", nix::unistd::getuid())
    };
    format!("amibundle user {label}")
}

fn generate_identity() -> Result<(Vec<u8>, Vec<u8>), CryptoError> {
    let gen_err = |what: &'static str| move |source| CryptoError::Generate { what, source };
    let rsa = Rsa::generate(GENERATED_KEY_BITS).map_err(gen_err("RSA key"))?;
    let pkey = PKey::from_rsa(rsa).map_err(gen_err("RSA key"))?;
    let key_pem = pkey
        .private_key_to_pem_pkcs8()
        .map_err(gen_err("RSA key"))?;

    let build = || -> Result<X509, ErrorStack> {
        let mut name = X509NameBuilder::new()?;
        name.append_entry_by_nid(Nid::COMMONNAME, &identity_common_name())?;
        let name = name.build();
        let mut serial = BigNum::new()?;
        serial.rand(127, MsbOption::MAYBE_ZERO, false)?;
        let mut builder = X509::builder()?;
        builder.set_version(2)?;
        let serial = serial.to_asn1_integer()?;
        builder.set_serial_number(&serial)?;
        builder.set_subject_name(&name)?;
        builder.set_issuer_name(&name)?;
        let not_before = Asn1Time::days_from_now(0)?;
        let not_after = Asn1Time::days_from_now(GENERATED_CERT_DAYS)?;
        builder.set_not_before(&not_before)?;
        builder.set_not_after(&not_after)?;
        builder.set_pubkey(&pkey)?;
        builder.sign(&pkey, MessageDigest::sha256())?;
        Ok(builder.build())
    };
    let cert = build().map_err(gen_err("self-signed certificate"))?;
    let cert_pem = cert.to_pem().map_err(gen_err("self-signed certificate"))?;
    Ok((key_pem, cert_pem))
}

fn write_new_file(path: &Path, contents: &[u8], mode: u32) -> Result<(), CryptoError> {
    let write = || -> io::Result<()> {
        // create_new = O_EXCL: never follow a planted symlink or clobber an existing file.
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(path)?;
        // The umask may have removed bits from `mode`; set it exactly.
        file.set_permissions(fs::Permissions::from_mode(mode))?;
        file.write_all(contents)?;
        file.sync_all()
    };
    write().map_err(|source| CryptoError::WriteFile {
        path: path.to_owned(),
        source,
    })
}

/// Creates amibundle's own user identity in `dir` (created with mode 0700 if missing): an
/// RSA-2048 key `user-key.pem` (PKCS#8, mode 0600, created exclusively) and a self-signed
/// SHA-256 certificate `user-cert.pem` (mode 0644, CN `amibundle user <hostname or uid>`,
/// valid 20 years). If both files already exist they are loaded, checked as a pair and
/// returned. Returns `(key path, cert path, created now)`.
pub fn ensure_generated_identity(dir: &Path) -> Result<(PathBuf, PathBuf, bool), CryptoError> {
    let key_path = dir.join(GENERATED_KEY_FILE);
    let cert_path = dir.join(GENERATED_CERT_FILE);
    match (key_path.exists(), cert_path.exists()) {
        (true, true) => {
            let key = UserKey::load(&key_path, false)?;
            let cert = Certificate::load(&cert_path)?;
            check_pair(&key, &cert, &key_path, &cert_path)?;
            return Ok((key_path, cert_path, false));
        }
        (true, false) => {
            return Err(CryptoError::IdentityIncomplete {
                present: key_path,
                missing: cert_path,
            });
        }
        (false, true) => {
            return Err(CryptoError::IdentityIncomplete {
                present: cert_path,
                missing: key_path,
            });
        }
        (false, false) => {}
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| CryptoError::CreateDir {
            path: dir.to_owned(),
            source,
        })?;
    let (mut key_pem, cert_pem) = generate_identity()?;
    let written = write_new_file(&key_path, &key_pem, 0o600);
    wipe(&mut key_pem);
    written?;
    if let Err(err) = write_new_file(&cert_path, &cert_pem, 0o644) {
        // Do not leave a key without its certificate behind: the next run would refuse the
        // half identity. The key file is ours (created exclusively above).
        if let Err(rm) = fs::remove_file(&key_path) {
            tracing::warn!("removing {} after a failed write: {rm}", key_path.display());
        }
        return Err(err);
    }
    tracing::info!(
        "generated a new amibundle identity: {} and {}",
        key_path.display(),
        cert_path.display()
    );
    Ok((key_path, cert_path, true))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn testdata() -> PathBuf {
        crate::test_data()
    }

    fn keys(file: &str) -> PathBuf {
        testdata().join("keys").join(file)
    }

    fn user_key() -> UserKey {
        UserKey::from_pem(&fs::read(keys("user-key.pem")).unwrap()).unwrap()
    }

    fn ec2_key() -> UserKey {
        UserKey::from_pem(&fs::read(keys("ec2-test-key.pem")).unwrap()).unwrap()
    }

    fn user_cert() -> Certificate {
        Certificate::load(&keys("user-cert.pem")).unwrap()
    }

    fn ec2_cert() -> Certificate {
        Certificate::load(&keys("ec2-test-cert.pem")).unwrap()
    }

    fn test_key() -> AesKey {
        AesKey::from_hex("11fef51d9dd287a9ab3b747ccc327f62").unwrap()
    }

    fn test_iv() -> AesIv {
        AesIv::from_hex("53a4849f8dcc9901fb3f36735106960d").unwrap()
    }

    fn encrypt(data: &[u8], key: &AesKey, iv: &AesIv) -> Vec<u8> {
        let mut w = CbcEncryptWriter::new(Vec::new(), key, iv).unwrap();
        // Uneven write sizes exercise the held-back partial block.
        for chunk in data.chunks(7777) {
            w.write_all(chunk).unwrap();
        }
        let n = w.bytes_out();
        let out = w.finish().unwrap();
        assert!(out.len() as u64 >= n);
        out
    }

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 + i / 251) as u8).collect()
    }

    #[test]
    fn debug_is_redacted_and_hex_round_trips() {
        let key = test_key();
        let iv = test_iv();
        assert_eq!(format!("{key:?}"), "AesKey(<redacted>)");
        assert_eq!(format!("{iv:?}"), "AesIv(<redacted>)");
        assert_eq!(key.to_hex(), "11fef51d9dd287a9ab3b747ccc327f62");
        assert_eq!(
            AesKey::from_hex("11FEF51D9DD287A9AB3B747CCC327F62")
                .unwrap()
                .as_bytes(),
            key.as_bytes()
        );
        assert!(AesKey::from_hex("11fef51d").is_err());
        assert!(AesIv::from_hex("zz4849f8dcc9901fb3f36735106960d0").is_err());
        let err = AesKey::from_hex("11fef51d9dd287a9ab3b747ccc327f6").unwrap_err();
        assert!(!err.to_string().contains("11fef51d"));
        let a = AesKey::random().unwrap();
        let b = AesKey::random().unwrap();
        assert_ne!(a.as_bytes(), b.as_bytes());
        assert_eq!(AesIv::random().unwrap().to_hex().len(), 32);
        let user = user_key();
        assert!(!format!("{user:?}").contains("MII"));
    }

    #[test]
    fn encryption_matches_openssl_cli() {
        let key = test_key();
        let iv = test_iv();
        for len in [0usize, 1, 15, 16, 17, (1 << 20) + 3] {
            let data = pattern(len);
            let ours = encrypt(&data, &key, &iv);
            assert_eq!(ours.len(), 16 * (len / 16 + 1), "length {len}");
            let dir = tempfile::tempdir().unwrap();
            let input = dir.path().join("in");
            fs::write(&input, &data).unwrap();
            // Key on the command line is acceptable in tests only (insecure test values).
            let out = Command::new("openssl")
                .args([
                    "enc",
                    "-aes-128-cbc",
                    "-K",
                    &key.to_hex(),
                    "-iv",
                    &iv.to_hex(),
                ])
                .arg("-in")
                .arg(&input)
                .output()
                .unwrap();
            assert!(out.status.success(), "openssl enc failed for length {len}");
            assert_eq!(ours, out.stdout, "ciphertext differs for length {len}");
        }
    }

    #[test]
    fn decryption_round_trips_and_strips_padding() {
        let key = test_key();
        let iv = test_iv();
        for len in [0usize, 1, 15, 16, 17, 300_001] {
            let data = pattern(len);
            let ct = encrypt(&data, &key, &iv);
            let mut r = CbcDecryptReader::new(&ct[..], &key, &iv).unwrap();
            let mut back = Vec::new();
            // Small reads to cross the held-back block boundary many times.
            let mut buf = [0u8; 5];
            loop {
                let n = r.read(&mut buf).unwrap();
                if n == 0 {
                    break;
                }
                back.extend_from_slice(&buf[..n]);
            }
            assert_eq!(back, data, "length {len}");
            let mut all = Vec::new();
            CbcDecryptReader::new(&ct[..], &key, &iv)
                .unwrap()
                .read_to_end(&mut all)
                .unwrap();
            assert_eq!(all, data);
        }
    }

    fn decrypt_err(ct: &[u8], key: &AesKey, iv: &AesIv) -> String {
        let mut out = Vec::new();
        let err = CbcDecryptReader::new(ct, key, iv)
            .unwrap()
            .read_to_end(&mut out)
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        let inner = err
            .get_ref()
            .unwrap()
            .downcast_ref::<CryptoError>()
            .unwrap();
        inner.to_string()
    }

    #[test]
    fn decryption_with_wrong_key_fails_padding_check() {
        let iv = test_iv();
        let ct = encrypt(&pattern(1000), &test_key(), &iv);
        // With a wrong key the padding check fails except with probability about 1/256 per
        // key; these fixed keys were checked to fail, so the test is deterministic.
        let mut failures = 0;
        for b in 1..=8u8 {
            let wrong = AesKey::from_bytes([b; 16]);
            let mut out = Vec::new();
            if let Err(err) = CbcDecryptReader::new(&ct[..], &wrong, &iv)
                .unwrap()
                .read_to_end(&mut out)
            {
                assert!(err.to_string().contains("wrong key or corrupt bundle"));
                failures += 1;
            }
        }
        assert!(
            failures >= 7,
            "only {failures} of 8 wrong keys were detected"
        );
        let msg = decrypt_err(&ct, &AesKey::from_bytes([1; 16]), &iv);
        assert!(msg.contains("wrong key or corrupt bundle"), "{msg}");
        // Truncated and empty ciphertexts are refused by length.
        let msg = decrypt_err(&ct[..ct.len() - 3], &test_key(), &iv);
        assert!(msg.contains("not a non-zero multiple of 16"), "{msg}");
        let msg = decrypt_err(&[], &test_key(), &iv);
        assert!(msg.contains("length 0"), "{msg}");
        // A last block whose padding byte is 0 is refused.
        let mut bad = Vec::new();
        {
            let mut c = Crypter::new(
                Cipher::aes_128_cbc(),
                Mode::Encrypt,
                test_key().as_bytes(),
                Some(iv.as_bytes()),
            )
            .unwrap();
            c.pad(false);
            let mut out = vec![0u8; 48];
            let n = c.update(&[0u8; 32], &mut out).unwrap();
            bad.extend_from_slice(&out[..n]);
        }
        let msg = decrypt_err(&bad, &test_key(), &iv);
        assert!(msg.contains("PKCS#7"), "{msg}");
    }

    #[test]
    fn unwraps_vector_keys_with_both_private_keys() {
        let user = user_key();
        let ec2 = ec2_key();
        let manifest = fs::read_to_string(
            testdata().join("peer-bundles/v4-prefix/my-server-2026.manifest.xml"),
        )
        .unwrap();
        let field = |tag: &str| {
            let open = manifest.find(&format!("<{tag}")).unwrap();
            let start = manifest[open..].find('>').unwrap() + open + 1;
            let end = manifest.find(&format!("</{tag}>")).unwrap();
            manifest[start..end].to_owned()
        };
        let k = unwrap_key(&user, &field("user_encrypted_key")).unwrap();
        assert_eq!(k.to_hex(), "0b6d4c54cee9231cd24eff37a7df2f62");
        let v = unwrap_iv(&user, &field("user_encrypted_iv")).unwrap();
        assert_eq!(v.to_hex(), "4a457afc8c1df8f75b323da74493b592");
        let k = unwrap_key(&ec2, &field("ec2_encrypted_key")).unwrap();
        assert_eq!(k.to_hex(), "0b6d4c54cee9231cd24eff37a7df2f62");
        // Upper-case hex is accepted.
        let v = unwrap_iv(&ec2, &field("ec2_encrypted_iv").to_uppercase()).unwrap();
        assert_eq!(v.to_hex(), "4a457afc8c1df8f75b323da74493b592");
        // The wrong private key is reported as such.
        let err = unwrap_key(&ec2, &field("user_encrypted_key")).unwrap_err();
        assert!(
            matches!(err, CryptoError::CiphertextTooLong { .. }),
            "{err}"
        );
        let err = unwrap_key(&user, &field("ec2_encrypted_key")).unwrap_err();
        assert!(
            matches!(
                err,
                CryptoError::WrongPrivateKey | CryptoError::UnwrappedShape { .. }
            ),
            "{err}"
        );
        assert!(matches!(
            unwrap_hex(&user, "xyz").unwrap_err(),
            CryptoError::MalformedHex { .. }
        ));
    }

    #[test]
    fn wrap_hex_has_modulus_length_and_round_trips() {
        let key = test_key();
        for (cert, priv_key, k) in [(user_cert(), user_key(), 256), (ec2_cert(), ec2_key(), 128)] {
            assert_eq!(cert.modulus_bytes(), k);
            assert_eq!(priv_key.modulus_bytes(), k);
            let wrapped = wrap_hex(&cert, key.to_hex().as_bytes()).unwrap();
            assert_eq!(wrapped.len(), 2 * k);
            assert!(
                wrapped
                    .bytes()
                    .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
            );
            assert_eq!(
                unwrap_key(&priv_key, &wrapped).unwrap().as_bytes(),
                key.as_bytes()
            );
            // Random padding: two wraps differ.
            assert_ne!(wrapped, wrap_hex(&cert, key.to_hex().as_bytes()).unwrap());
        }
        // A 16-byte raw plaintext is accepted (with a warning).
        let wrapped = wrap_hex(&user_cert(), key.as_bytes()).unwrap();
        assert_eq!(
            unwrap_key(&user_key(), &wrapped).unwrap().as_bytes(),
            key.as_bytes()
        );
        // Any other plaintext shape is refused.
        let wrapped = wrap_hex(&user_cert(), b"not a key").unwrap();
        assert!(matches!(
            unwrap_iv(&user_key(), &wrapped).unwrap_err(),
            CryptoError::UnwrappedShape { len: 9, .. }
        ));
        assert!(matches!(
            wrap_hex(&ec2_cert(), &[0u8; 118]).unwrap_err(),
            CryptoError::PlaintextTooLong { max: 117, .. }
        ));
    }

    #[test]
    fn short_ciphertext_hex_is_left_padded() {
        // Build PKCS#1 v1.5 encodings EM = 00 02 PS 00 M with a deterministic padding string
        // and encrypt them raw, until a ciphertext starts with a zero byte (about 1 in 200);
        // then strip that byte and unwrap the shorter hex.
        let cert = ec2_cert();
        let key = ec2_key();
        let plain = test_key().to_hex();
        let k = cert.modulus_bytes();
        for counter in 0u32..100_000 {
            let mut em = vec![0u8, 2];
            let ps_len = k - 3 - plain.len();
            // The first three PS bytes spell the counter in base 255 (digits 1..=255, never 0).
            em.extend((0..ps_len).map(|i| match i {
                0..=2 => (counter / 255u32.pow(i as u32) % 255 + 1) as u8,
                _ => 0x5a,
            }));
            em.push(0);
            em.extend_from_slice(plain.as_bytes());
            let mut ct = vec![0u8; k];
            cert.rsa
                .public_encrypt(&em, &mut ct, Padding::NONE)
                .unwrap();
            if ct[0] == 0 {
                let full = hex::encode(&ct);
                assert_eq!(unwrap_hex(&key, &full).unwrap(), plain.as_bytes());
                assert_eq!(unwrap_hex(&key, &full[2..]).unwrap(), plain.as_bytes());
                return;
            }
        }
        panic!("no ciphertext with a leading zero byte found");
    }

    #[test]
    fn signatures_are_deterministic_and_verify() {
        let key = user_key();
        let cert = user_cert();
        let sig = sign_sha1_hex(&key, b"hello").unwrap();
        assert_eq!(sig.len(), 512);
        assert_eq!(sig, sign_sha1_hex(&key, b"hello").unwrap());
        assert!(verify_sha1_hex(&cert, b"hello", &sig).unwrap());
        assert!(verify_sha1_hex(&cert, b"hello", &sig.to_uppercase()).unwrap());
        assert!(!verify_sha1_hex(&cert, b"hellp", &sig).unwrap());
        assert!(!verify_sha1_hex(&ec2_cert(), b"hello", &sig[256..]).unwrap());
        assert!(verify_sha1_hex(&cert, b"hello", "not hex").is_err());
        assert!(verify_sha1_hex(&cert, b"hello", &format!("{sig}00")).is_err());
    }

    fn copy_key(dir: &Path, mode: u32) -> PathBuf {
        let path = dir.join("key.pem");
        fs::copy(keys("user-key.pem"), &path).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    #[test]
    fn key_file_mode_is_enforced() {
        let dir = tempfile::tempdir().unwrap();
        let path = copy_key(dir.path(), 0o644);
        let err = UserKey::load(&path, false).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(
            err,
            CryptoError::InsecureKeyFile { mode: 0o644, .. }
        ));
        assert!(msg.contains("0644") && msg.contains(&format!("chmod 600 {}", path.display())));
        assert_eq!(UserKey::load(&path, true).unwrap().modulus_bytes(), 256);
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(UserKey::load(&path, false).unwrap().modulus_bytes(), 256);
        fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
        assert!(UserKey::load(&path, false).is_err());
    }

    #[test]
    fn refuses_encrypted_non_rsa_and_garbage_keys() {
        let rsa = Rsa::generate(1024).unwrap();
        let encrypted = rsa
            .private_key_to_pem_passphrase(Cipher::aes_128_cbc(), b"secret")
            .unwrap();
        let err = UserKey::from_pem(&encrypted).unwrap_err();
        assert!(matches!(err, CryptoError::EncryptedKey { .. }), "{err}");
        let pkcs8 = PKey::from_rsa(rsa)
            .unwrap()
            .private_key_to_pem_pkcs8_passphrase(Cipher::aes_128_cbc(), b"secret")
            .unwrap();
        let err = UserKey::from_pem(&pkcs8).unwrap_err();
        assert!(matches!(err, CryptoError::EncryptedKey { .. }), "{err}");
        let ec = openssl::ec::EcKey::generate(
            &openssl::ec::EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap(),
        )
        .unwrap();
        let ec_pem = PKey::from_ec_key(ec)
            .unwrap()
            .private_key_to_pem_pkcs8()
            .unwrap();
        let err = UserKey::from_pem(&ec_pem).unwrap_err();
        assert!(matches!(err, CryptoError::NotRsa { .. }), "{err}");
        assert!(matches!(
            UserKey::from_pem(b"garbage").unwrap_err(),
            CryptoError::ParseKey { .. }
        ));
        // PKCS#1 ("BEGIN RSA PRIVATE KEY") is accepted as well as PKCS#8.
        let pkcs1 = user_key().rsa.private_key_to_pem().unwrap();
        assert!(String::from_utf8_lossy(&pkcs1).contains("BEGIN RSA PRIVATE KEY"));
        assert_eq!(UserKey::from_pem(&pkcs1).unwrap().modulus_bytes(), 256);
    }

    #[test]
    fn certificate_details_and_pairing() {
        let cert = user_cert();
        assert_eq!(
            cert.subject_cn().as_deref(),
            Some("amibundle insecure test user")
        );
        let pem = fs::read(keys("user-cert.pem")).unwrap();
        let der = X509::from_pem(&pem).unwrap().to_der().unwrap();
        let from_der = Certificate::from_der(&der).unwrap();
        assert_eq!(from_der.sha1_fingerprint(), cert.sha1_fingerprint());
        let sha1 = openssl::sha::sha1(&der);
        assert_eq!(cert.sha1_fingerprint(), sha1);
        assert_eq!(cert.sha256_fingerprint(), openssl::sha::sha256(&der));
        // The stand-in EC2 certificate's documented fingerprint (§14.1) starts 03:DE:77:8F.
        assert_eq!(
            &ec2_cert().sha256_fingerprint()[..4],
            &[0x03, 0xde, 0x77, 0x8f]
        );
        let (kp, cp) = (Path::new("user-key.pem"), Path::new("user-cert.pem"));
        check_pair(&user_key(), &cert, kp, cp).unwrap();
        check_pair(&ec2_key(), &ec2_cert(), kp, cp).unwrap();
        let err = check_pair(&ec2_key(), &cert, Path::new("ec2-test-key.pem"), cp).unwrap_err();
        assert!(err.to_string().contains("ec2-test-key.pem"), "{err}");
        assert!(Certificate::from_pem(b"-----BEGIN CERTIFICATE-----\nAAAA\n").is_err());
    }

    #[test]
    fn generated_identity_files_and_modes() {
        let base = tempfile::tempdir().unwrap();
        let dir = base.path().join("id");
        let (kp, cp, created) = ensure_generated_identity(&dir).unwrap();
        assert!(created);
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&kp), 0o600);
        assert_eq!(mode(&cp), 0o644);
        let key = UserKey::load(&kp, false).unwrap();
        let cert = Certificate::load(&cp).unwrap();
        assert_eq!(key.modulus_bytes(), 256);
        check_pair(&key, &cert, &kp, &cp).unwrap();
        assert!(cert.subject_cn().unwrap().starts_with("amibundle user "));
        let x509 = &cert.x509;
        assert_eq!(
            x509.signature_algorithm().object().nid(),
            Nid::SHA256WITHRSAENCRYPTION
        );
        let in_19y = Asn1Time::days_from_now(19 * 365).unwrap();
        assert!(x509.not_after() > in_19y);
        // Second call: reuses the files.
        let key_pem = fs::read(&kp).unwrap();
        let (kp2, cp2, created2) = ensure_generated_identity(&dir).unwrap();
        assert!(!created2);
        assert_eq!((kp2, cp2), (kp.clone(), cp.clone()));
        assert_eq!(fs::read(&kp).unwrap(), key_pem);
        // A half identity is refused, never overwritten.
        fs::remove_file(&cp).unwrap();
        let err = ensure_generated_identity(&dir).unwrap_err();
        assert!(
            matches!(err, CryptoError::IdentityIncomplete { .. }),
            "{err}"
        );
        assert_eq!(fs::read(&kp).unwrap(), key_pem);
    }
}
