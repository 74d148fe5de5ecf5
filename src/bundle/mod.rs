//! The bundle engine: image → tar → SHA-1 → gzip → AES-128-CBC → 10 MiB parts + signed manifest,
//! and the reverse (verify, unbundle).

pub mod certs;
pub mod crypto;
pub mod digest;
pub mod gzip;
pub mod manifest;
pub mod parts;
pub mod pipeline;
pub mod tar;
