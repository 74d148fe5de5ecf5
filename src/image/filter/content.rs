//! What a file's bytes say: whether it is, or holds, a private key. Every format a key is kept
//! in is recognised, armoured or binary: PEM (PKCS#1, PKCS#8, SEC 1, encrypted PKCS#8, OpenSSH,
//! PGP, RFC 4716 SSH2), PuTTY and SSH1 key files, DER (PKCS#1, PKCS#8, SEC 1, encrypted PKCS#8),
//! PKCS#12 and the Java keystores (JKS, JCEKS), where a truststore holding only certificates is
//! told from a keystore holding keys.
//!
//! The detectors read from the start of a file and never allocate beyond what they are given;
//! the input is whatever the scanned tree holds (hostile, for all we know).

/// Armour lines: `-----BEGIN …-----` (PEM) and RFC 4716's `---- BEGIN … ----`.
fn is_armour_begin(line: &[u8]) -> bool {
    line.starts_with(b"-----BEGIN ") || line.starts_with(b"---- BEGIN ")
}

fn mentions_private_key(line: &[u8]) -> bool {
    line.windows(b"PRIVATE KEY".len())
        .any(|w| w == b"PRIVATE KEY")
}

/// Whether `head` (the start of a file) holds a private key anywhere: an armour line whose
/// label contains `PRIVATE KEY` (`-----BEGIN RSA PRIVATE KEY-----`, `… OPENSSH PRIVATE KEY`,
/// `… ENCRYPTED PRIVATE KEY`, `… PGP PRIVATE KEY BLOCK`, `---- BEGIN SSH2 ENCRYPTED PRIVATE
/// KEY ----`) at the start of any line, or a file that is a key in a binary or line format
/// ([`is_key_file`] with `file_len`). A certificate or public key is not one; a file with
/// certificates and a key is.
pub fn holds_private_key(head: &[u8], file_len: u64) -> bool {
    binary_key(head, file_len)
        || line_format_key(head)
        || head.split(|&b| b == b'\n').any(|line| {
            let line = line.trim_ascii();
            is_armour_begin(line) && mentions_private_key(line)
        })
}

/// Whether the file whose first bytes are `head` (all of it up to a bound) and whose length is
/// `file_len` *is* a key file, whatever its name: PEM text that starts with an armour line
/// (after blank lines and the `Bag Attributes` blocks `openssl pkcs12` writes) and has a
/// private-key block, or a binary key ([`binary_key`]). Stricter than [`holds_private_key`], for
/// files that no name marks as candidates: a source file or document that quotes a key does
/// not start with one.
pub fn is_key_file(head: &[u8], file_len: u64) -> bool {
    if binary_key(head, file_len) || line_format_key(head) {
        return true;
    }
    let mut lines = head.split(|&b| b == b'\n').map(<[u8]>::trim_ascii);
    let first =
        lines.find(|l| !(l.is_empty() || OPENSSL_PREAMBLE.iter().any(|p| l.starts_with(p))));
    match first {
        Some(first) if is_armour_begin(first) => {
            mentions_private_key(first)
                || lines.any(|l| is_armour_begin(l) && mentions_private_key(l))
        }
        _ => false,
    }
}

/// The lines `openssl pkcs12 -nodes` writes before each PEM block.
const OPENSSL_PREAMBLE: &[&[u8]] = &[
    b"Bag Attributes",
    b"Key Attributes",
    b"subject=",
    b"issuer=",
    b"localKeyID:",
    b"friendlyName:",
    b"<No Attributes>",
];

/// Whether a file whose first bytes are `head` could be a key file ([`is_key_file`]): it starts
/// with a binary key's first byte, an armour line or `openssl`'s preamble, or a PuTTY or SSH1
/// header. Lets a scan decide most files on their first few KiB.
pub fn may_be_key_file(head: &[u8]) -> bool {
    let text = head.trim_ascii_start();
    matches!(head.first(), Some(0x30 | 0xfe | 0xce))
        || is_armour_begin(text)
        || OPENSSL_PREAMBLE.iter().any(|p| text.starts_with(p))
        || line_format_key(head)
}

/// PuTTY (`PuTTY-User-Key-File-N:`) and SSH1 (`SSH PRIVATE KEY FILE FORMAT`) key files.
fn line_format_key(head: &[u8]) -> bool {
    head.starts_with(b"PuTTY-User-Key-File-") || head.starts_with(b"SSH PRIVATE KEY FILE FORMAT")
}

/// A key in a binary container that makes up the whole file: DER private keys, PKCS#12, and
/// Java keystores holding a private or secret key.
pub fn binary_key(head: &[u8], file_len: u64) -> bool {
    der_private_key(head, file_len) || java_keystore_holds_key(head) == Some(true)
}

/// A DER length at `at`: (length, bytes the length field took), definite form, at most 4 bytes.
fn der_len(bytes: &[u8], at: usize) -> Option<(u64, usize)> {
    let first = *bytes.get(at)?;
    if first < 0x80 {
        return Some((u64::from(first), 1));
    }
    let n = usize::from(first & 0x7f);
    if n == 0 || n > 4 {
        return None;
    }
    let field = bytes.get(at + 1..at + 1 + n)?;
    let len = field.iter().fold(0u64, |acc, &b| (acc << 8) | u64::from(b));
    Some((len, 1 + n))
}

/// PKCS#1 (RSA, DSA as OpenSSL writes it), PKCS#8, SEC 1 (EC) and encrypted PKCS#8 private
/// keys, and PKCS#12 files, in DER. The outer SEQUENCE must span exactly the file, which no
/// text file and few binaries satisfy by chance.
fn der_private_key(head: &[u8], file_len: u64) -> bool {
    if head.first() != Some(&0x30) {
        return false;
    }
    let Some((len, len_bytes)) = der_len(head, 1) else {
        return false;
    };
    let body = 1 + len_bytes;
    if body as u64 + len != file_len {
        return false;
    }
    let rest = &head[body.min(head.len())..];
    // PKCS#1 / DSA: INTEGER 0, then INTEGER. PKCS#8: INTEGER 0 (or 1), then SEQUENCE
    // (algorithm). SEC 1: INTEGER 1, then OCTET STRING. PKCS#12: INTEGER 3, then SEQUENCE.
    let version = |v: u8| rest.starts_with(&[0x02, 0x01, v]);
    let then = rest.get(3).copied();
    if (version(0) && matches!(then, Some(0x02 | 0x30)))
        || (version(1) && matches!(then, Some(0x04 | 0x30)))
        || (version(3) && then == Some(0x30))
    {
        return true;
    }
    // Encrypted PKCS#8: SEQUENCE { SEQUENCE { OID pkcs5 (PBES1/PBES2) or pkcs12 PBE, … }, … }.
    if rest.first() != Some(&0x30) {
        return false;
    }
    let Some((_, inner_len_bytes)) = der_len(rest, 1) else {
        return false;
    };
    let oid = &rest[(1 + inner_len_bytes).min(rest.len())..];
    const PKCS5: &[u8] = &[0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x05];
    const PKCS12_PBE: &[u8] = &[
        0x06, 0x0a, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x0c, 0x01,
    ];
    oid.starts_with(PKCS5) || oid.starts_with(PKCS12_PBE)
}

/// For a JKS (`FEEDFEED`) or JCEKS (`CECECECE`) keystore: `Some(true)` if it holds a private
/// or secret key entry, `Some(false)` if every entry is a trusted certificate (a truststore),
/// `None` if `head` is not such a keystore. A keystore cut short by the bound on `head`, or one
/// that does not parse, counts as holding a key: what cannot be shown to be public is not.
pub fn java_keystore_holds_key(head: &[u8]) -> Option<bool> {
    let magic = head.get(..4)?;
    if magic != [0xfe, 0xed, 0xfe, 0xed] && magic != [0xce, 0xce, 0xce, 0xce] {
        return None;
    }
    let mut r = Reader { bytes: head, at: 4 };
    let parsed = (|| -> Option<bool> {
        let version = r.u32()?;
        if version != 1 && version != 2 {
            return None;
        }
        let count = r.u32()?;
        for _ in 0..count {
            match r.u32()? {
                // Trusted certificate: alias, date, [type], certificate.
                2 => {
                    r.utf()?;
                    r.skip(8)?;
                    if version == 2 {
                        r.utf()?;
                    }
                    let len = r.u32()?;
                    r.skip(len as usize)?;
                }
                // 1: private key (with its chain); 3: JCEKS secret key.
                _ => return Some(true),
            }
        }
        Some(false)
    })();
    Some(parsed.unwrap_or(true))
}

/// A big-endian cursor that returns `None` past the end.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn skip(&mut self, n: usize) -> Option<()> {
        let end = self.at.checked_add(n)?;
        if end > self.bytes.len() {
            return None;
        }
        self.at = end;
        Some(())
    }

    fn u32(&mut self) -> Option<u32> {
        let b = self.bytes.get(self.at..self.at + 4)?;
        self.at += 4;
        Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// Java's modified UTF-8 string: a 16-bit length, then the bytes.
    fn utf(&mut self) -> Option<()> {
        let b = self.bytes.get(self.at..self.at + 2)?;
        let len = usize::from(u16::from_be_bytes([b[0], b[1]]));
        self.at += 2;
        self.skip(len)
    }
}

/// Whether one of `needles` is set in `head`: a line `name = value` or `name: value` (blanks
/// around the name allowed, `#`/`;` comments skipped), the name matched ASCII-case-insensitively,
/// or npm's scoped form `//registry/:name=value`. As `aws_secret_access_key` is set in
/// `.aws/config` or `password` in `.my.cnf`; a comment or prose mentioning the name is not a
/// setting.
pub fn has_setting(head: &[u8], needles: &[&str]) -> bool {
    head.split(|&b| b == b'\n').any(|line| {
        let line = line.trim_ascii();
        if line.starts_with(b"#") || line.starts_with(b";") {
            return false;
        }
        let split = line
            .iter()
            .position(|&b| b == b'=')
            .or_else(|| line.iter().position(|&b| b == b':'));
        let Some(at) = split else {
            return false;
        };
        let name = line[..at].trim_ascii();
        needles.iter().any(|n| {
            let n = n.as_bytes();
            name.eq_ignore_ascii_case(n)
                || (name.len() > n.len()
                    && name[name.len() - n.len()..].eq_ignore_ascii_case(n)
                    && name[name.len() - n.len() - 1] == b':')
        })
    })
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// A certificate's armour (not a real certificate: the detectors read armour lines).
    pub(in crate::image::filter) const CERT: &str =
        "-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIU\n-----END CERTIFICATE-----\n";
    /// A private key's armour.
    pub(in crate::image::filter) const RSA_KEY: &str =
        "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA\n-----END RSA PRIVATE KEY-----\n";

    fn holds(bytes: &[u8]) -> bool {
        holds_private_key(bytes, bytes.len() as u64)
    }

    fn openssl(args: &[&str], input: Option<&[u8]>) -> Vec<u8> {
        use std::io::Write;
        let mut child = std::process::Command::new("openssl")
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        if let Some(input) = input {
            stdin.write_all(input).unwrap();
        }
        drop(stdin);
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "openssl {args:?}");
        out.stdout
    }

    #[test]
    fn armoured_keys_anywhere_in_a_candidate() {
        assert!(holds(RSA_KEY.as_bytes()));
        assert!(holds(b"-----BEGIN PRIVATE KEY-----\nMIIE\n"));
        assert!(holds(b"-----BEGIN ENCRYPTED PRIVATE KEY-----\r\nMIIE\r\n"));
        assert!(holds(b"-----BEGIN EC PRIVATE KEY-----\n"));
        assert!(holds(b"-----BEGIN PGP PRIVATE KEY BLOCK-----\n\nlQOYBF\n"));
        assert!(holds(
            b"---- BEGIN SSH2 ENCRYPTED PRIVATE KEY ----\nComment: x\n"
        ));
        assert!(holds(b"PuTTY-User-Key-File-3: ssh-ed25519\n"));
        assert!(holds(format!("{CERT}{CERT}{RSA_KEY}").as_bytes()));
        assert!(!holds(CERT.as_bytes()));
        assert!(!holds(b"-----BEGIN PUBLIC KEY-----\nMFkw\n"));
        assert!(!holds(b"-----BEGIN PGP PUBLIC KEY BLOCK-----\n"));
        assert!(!holds(b"# put your PRIVATE KEY in /etc/ssl/private\n"));
        assert!(!holds(b""));
    }

    #[test]
    fn a_file_of_any_name_is_a_key_file_only_if_it_starts_as_one() {
        let is = |b: &[u8]| is_key_file(b, b.len() as u64);
        assert!(is(RSA_KEY.as_bytes()));
        assert!(is(format!("{CERT}{RSA_KEY}").as_bytes()));
        assert!(is(format!("\n{RSA_KEY}").as_bytes()));
        // What `openssl pkcs12 -nodes` writes.
        assert!(is(format!(
            "Bag Attributes\n    localKeyID: 01 02\n    friendlyName: web\nKey Attributes: <No Attributes>\n{RSA_KEY}"
        )
        .as_bytes()));
        // Source code or documentation quoting a key does not start with one.
        assert!(!is(format!("const KEY = `\n{RSA_KEY}`\n").as_bytes()));
        assert!(!is(format!("Put this in the file:\n{RSA_KEY}").as_bytes()));
        assert!(!is(CERT.as_bytes()));
        assert!(!is(b"hello\n"));
    }

    #[test]
    fn der_keys_made_by_openssl_and_nothing_else() {
        let rsa_pem = openssl(&["genrsa", "1024"], None);
        let ec_pem = openssl(
            &["ecparam", "-name", "prime256v1", "-genkey", "-noout"],
            None,
        );
        let der = |input: &[u8], args: &[&str]| openssl(args, Some(input));
        let cases = [
            (
                "PKCS#1 RSA",
                der(&rsa_pem, &["rsa", "-outform", "DER", "-traditional"]),
            ),
            (
                "PKCS#8",
                der(
                    &rsa_pem,
                    &["pkcs8", "-topk8", "-nocrypt", "-outform", "DER"],
                ),
            ),
            ("SEC 1 EC", der(&ec_pem, &["ec", "-outform", "DER"])),
            (
                "encrypted PKCS#8",
                der(
                    &rsa_pem,
                    &["pkcs8", "-topk8", "-outform", "DER", "-passout", "pass:x"],
                ),
            ),
        ];
        for (what, bytes) in &cases {
            assert!(holds(bytes), "{what}");
            assert!(is_key_file(bytes, bytes.len() as u64), "{what}");
            // The whole file or nothing: a key inside a bigger file is not one by this rule.
            assert!(!is_key_file(bytes, bytes.len() as u64 + 1), "{what}");
        }
        // Public material in DER is not a key.
        let pubkey = openssl(&["rsa", "-pubout", "-outform", "DER"], Some(&rsa_pem));
        assert!(!holds(&pubkey));
        let cert = openssl(
            &[
                "req",
                "-new",
                "-x509",
                "-key",
                "/dev/stdin",
                "-subj",
                "/CN=t",
                "-outform",
                "DER",
            ],
            Some(&rsa_pem),
        );
        assert!(!holds(&cert));
    }

    #[test]
    fn pkcs12_files_are_keys() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("k.pem");
        std::fs::write(&key, openssl(&["genrsa", "1024"], None)).unwrap();
        let cert = dir.path().join("c.pem");
        let k = key.to_str().unwrap();
        let c = cert.to_str().unwrap();
        openssl(
            &[
                "req", "-new", "-x509", "-key", k, "-subj", "/CN=t", "-out", c,
            ],
            None,
        );
        let p12 = openssl(
            &[
                "pkcs12", "-export", "-inkey", k, "-in", c, "-passout", "pass:x",
            ],
            None,
        );
        assert!(holds(&p12));
        assert!(is_key_file(&p12, p12.len() as u64));
    }

    /// A JKS file with the given entries (tag 1: private key, 2: trusted certificate).
    fn jks(tags: &[u32], version: u32) -> Vec<u8> {
        let mut out = vec![0xfe, 0xed, 0xfe, 0xed];
        out.extend(version.to_be_bytes());
        out.extend((tags.len() as u32).to_be_bytes());
        for &tag in tags {
            out.extend(tag.to_be_bytes());
            out.extend(5u16.to_be_bytes());
            out.extend(b"alias");
            out.extend([0; 8]);
            if tag == 2 {
                if version == 2 {
                    out.extend(5u16.to_be_bytes());
                    out.extend(b"X.509");
                }
                out.extend(3u32.to_be_bytes());
                out.extend([1, 2, 3]);
            } else {
                out.extend(4u32.to_be_bytes());
                out.extend([9; 4]);
            }
        }
        out.extend([0; 20]);
        out
    }

    #[test]
    fn java_keystores_are_told_from_truststores() {
        assert_eq!(java_keystore_holds_key(&jks(&[2, 2, 2], 2)), Some(false));
        assert_eq!(java_keystore_holds_key(&jks(&[2, 2], 1)), Some(false));
        assert_eq!(java_keystore_holds_key(&jks(&[2, 1], 2)), Some(true));
        assert_eq!(java_keystore_holds_key(&jks(&[1], 2)), Some(true));
        // Cut short or garbled: not shown to be public, so treated as a keystore.
        let full = jks(&[2, 2, 2], 2);
        assert_eq!(java_keystore_holds_key(&full[..30]), Some(true));
        let mut huge = jks(&[2], 2);
        huge[8..12].copy_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(java_keystore_holds_key(&huge), Some(true));
        assert_eq!(java_keystore_holds_key(b"PK\x03\x04"), None);
        assert!(binary_key(&jks(&[1], 2), 0));
        assert!(!binary_key(&full, full.len() as u64));
    }

    /// The scan reads 4 KiB of most files and decides on [`may_be_key_file`]: it must never
    /// turn away a file [`is_key_file`] would call a key. Checked on keys in every format and on
    /// seeded edits of them (truncated, bytes changed, preambles added), which also feeds the
    /// detectors hostile input: none may panic or read past what it is given.
    #[test]
    fn the_quick_look_never_hides_a_key_and_nothing_panics() {
        let rsa_pem = openssl(&["genrsa", "1024"], None);
        let der = openssl(&["rsa", "-outform", "DER", "-traditional"], Some(&rsa_pem));
        let pkcs8 = openssl(
            &["pkcs8", "-topk8", "-nocrypt", "-outform", "DER"],
            Some(&rsa_pem),
        );
        let bag = [b"Bag Attributes\n    localKeyID: 01\n".as_slice(), &rsa_pem].concat();
        let mut inputs = vec![
            rsa_pem.clone(),
            der,
            pkcs8,
            bag,
            b"PuTTY-User-Key-File-3: ssh-rsa\n".to_vec(),
            [CERT.as_bytes(), RSA_KEY.as_bytes()].concat(),
            jks(&[2, 1], 2),
            jks(&[2, 2], 1),
        ];
        let mut rng: u64 = 0x2545_F491_4F6C_DD1D;
        let mut next = move |n: usize| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            (rng % n.max(1) as u64) as usize
        };
        for base in inputs.clone() {
            for _ in 0..200 {
                let mut b = base.clone();
                match next(3) {
                    0 => b.truncate(next(b.len())),
                    1 => {
                        let i = next(b.len());
                        b[i] = next(256) as u8;
                    }
                    _ => b.splice(0..0, b"\n  \n".iter().copied()).for_each(drop),
                }
                inputs.push(b);
            }
        }
        for b in &inputs {
            for len in [b.len() as u64, b.len() as u64 + 7, 0, u64::MAX] {
                let key = is_key_file(b, len);
                let _ = holds_private_key(b, len);
                let _ = java_keystore_holds_key(b);
                if key {
                    let head = &b[..b.len().min(4096)];
                    assert!(may_be_key_file(head), "the quick look hides {b:?}");
                }
            }
        }
    }

    #[test]
    fn settings_are_matched_as_keys_not_as_words() {
        let aws = &["aws_secret_access_key", "aws_session_token"];
        assert!(has_setting(b"[default]\naws_secret_access_key = x\n", aws));
        assert!(has_setting(b"[p]\n  AWS_SESSION_TOKEN=abc\n", aws));
        assert!(!has_setting(b"[default]\nregion = eu-west-1\n", aws));
        assert!(!has_setting(
            b"# set aws_secret_access_key in credentials\n",
            aws
        ));
        assert!(!has_setting(b"aws_secret_access_key_id_note\n", aws));
        assert!(has_setting(b"[client]\npassword: s3cret\n", &["password"]));
        let npm = &["_auth", "_authToken", "_password"];
        assert!(has_setting(
            b"//registry.npmjs.org/:_authToken=npm_x\n",
            npm
        ));
        assert!(!has_setting(b"registry=https://registry.npmjs.org/\n", npm));
    }
}
