//! The initramfs lister (`image::bootcheck::initramfs`, read by `check-image` and by the boot
//! check of `bundle-vol` on an image's `/boot/initrd.img`) on arbitrary bytes: cpio "newc"
//! headers back to back, zero padding, and a compressed remainder (gzip, zstd, xz, lzma).
//!
//! Properties: no panic, no hang, memory bounded whatever the input claims; every name listed
//! is at most the name bound long. Each input is read with a 64 MiB bound on decompressed bytes
//! (the bound itself is what is tested, at a size that keeps runs fast).
#![no_main]

use std::fs::File;

use amibundle::image::bootcheck::initramfs;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let path =
        std::env::temp_dir().join(format!("amibundle-fuzz-initramfs-{}", std::process::id()));
    std::fs::write(&path, data).expect("writing the input");
    let file = File::open(&path).expect("opening the input");
    if let Ok(names) = initramfs::list_with_limit(file, 64 << 20) {
        for name in names {
            assert!(name.len() < initramfs::MAX_NAME_BYTES);
        }
    }
});
