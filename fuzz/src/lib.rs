//! Helpers shared by the fuzz targets.

/// Rewrites the checksum of every 512-byte block that carries a tar magic (`ustar  \0` or
/// `ustar\0` `00`), so that mutated headers get past the checksum check and the fuzzer explores
/// what comes after it. The targets apply it to half of the inputs (by the first byte).
pub fn fix_tar_checksums(stream: &mut [u8]) {
    for block in stream.chunks_exact_mut(512) {
        let magic = &block[257..265];
        if magic != b"ustar  \0" && magic != b"ustar\x0000" {
            continue;
        }
        block[148..156].fill(b' ');
        let sum: u32 = block.iter().map(|&b| u32::from(b)).sum();
        block[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    }
}
