//! The unbundle reader chain (`decode_ciphertext`, docs/format.md §12): AES-128-CBC decrypt
//! (PKCS#7 checked at EOF) → strict gzip reader → SHA-1 tee → tar reader → extraction, with the
//! key and IV of test vector v3 (tests/data/peer-bundles/v3-sparse-islands).
//!
//! Random ciphertext almost never decrypts to gzip, so the first byte picks what the rest is
//! (its value modulo 3):
//! 0. ciphertext, decoded as is;
//! 1. a gzip stream, which the target encrypts with the same key first, so the fuzzer explores
//!    the gzip stage (and what lies behind it) through the real chain;
//! 2. a tar stream, whose header checksums are fixed (`fix_tar_checksums`) and which the target
//!    compresses (the bundler's `ParallelGzEncoder`) and encrypts first.
#![no_main]

use std::io::{Read, Write};

use amibundle::bundle::crypto::{AesIv, AesKey, CbcDecryptReader, CbcEncryptWriter};
use amibundle::bundle::digest::HashingReader;
use amibundle::bundle::gzip::{GzipReader, ParallelGzEncoder};
use amibundle::bundle::tar::TarReader;
use amibundle_fuzz::fix_tar_checksums;
use libfuzzer_sys::fuzz_target;

const KEY_HEX: &str = "5fcf0e1b5178d5e325766ec3f81e114f";
const IV_HEX: &str = "5fee55ac1f3e3a0ecfa22e66d5306e32";

fn decode(ciphertext: impl Read, key: &AesKey, iv: &AesIv) {
    let decrypt = CbcDecryptReader::new(ciphertext, key, iv).expect("cipher setup");
    let hashing = HashingReader::new(GzipReader::new(decrypt));
    let mut reader = TarReader::new(hashing);
    let Ok(info) = reader.read_member_header() else {
        return;
    };
    if let Ok(hashing) = reader.extract_to(None, &mut |_| {}) {
        let (digest, len, _) = hashing.finish();
        assert_eq!(digest.len(), 40);
        // The tar reader read to EOF: at least the header and the member's data.
        assert!(len >= 512 + info.map.data_bytes());
    }
}

fn encrypt(plain: &[u8], key: &AesKey, iv: &AesIv) -> Vec<u8> {
    let mut enc = CbcEncryptWriter::new(Vec::new(), key, iv).expect("cipher setup");
    enc.write_all(plain).expect("encrypt");
    enc.finish().expect("encrypt")
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let key = AesKey::from_hex(KEY_HEX).expect("key");
    let iv = AesIv::from_hex(IV_HEX).expect("iv");
    match mode % 3 {
        0 => decode(rest, &key, &iv),
        1 => decode(&encrypt(rest, &key, &iv)[..], &key, &iv),
        _ => {
            let mut tar = rest.to_vec();
            fix_tar_checksums(&mut tar);
            // Small chunks: the default 1 MiB ones cost more to allocate than a run.
            let mut gz =
                ParallelGzEncoder::with_chunk_size(Vec::new(), 1, 1, 1 << 16).expect("gzip setup");
            gz.write_all(&tar).expect("gzip");
            let gz = gz.finish().expect("gzip");
            decode(&encrypt(&gz, &key, &iv)[..], &key, &iv);
        }
    }
});
