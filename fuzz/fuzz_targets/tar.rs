//! The tar reader (`TarReader`, docs/format.md §3.7) on arbitrary bytes: GNU long names, PAX
//! records, old-GNU sparse headers with extension blocks, data, end-of-archive checks. The member
//! is extracted into a reused temporary file, so the sparse writing path runs too.
//!
//! The first byte picks the mode: even, the rest is read as is; odd, the header checksums are
//! fixed first (`fix_tar_checksums`), so mutations reach the header fields and sparse maps.
//!
//! Properties: an extracted file has the member's real size; and a member our writer can
//! describe (`header_blocks`) reads back with the same name, mode, mtime and map.
#![no_main]

use std::fs::File;
use std::io::Cursor;
use std::sync::{Mutex, OnceLock};

use amibundle::bundle::tar::{self, MemberMeta, TarReader};
use amibundle_fuzz::fix_tar_checksums;
use libfuzzer_sys::fuzz_target;

/// An unlinked temporary file, reused by every run of this process.
fn out_file() -> &'static Mutex<File> {
    static FILE: OnceLock<Mutex<File>> = OnceLock::new();
    FILE.get_or_init(|| {
        let path = std::env::temp_dir().join(format!("amibundle-fuzz-tar-{}", std::process::id()));
        let file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .expect("temporary file");
        let _ = std::fs::remove_file(&path);
        Mutex::new(file)
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let mut stream = rest.to_vec();
    if mode % 2 == 1 {
        fix_tar_checksums(&mut stream);
    }
    let mut reader = TarReader::new(Cursor::new(&stream[..]));
    let Ok(info) = reader.read_member_header() else {
        return;
    };
    assert_eq!(info.map.size(), info.size);

    let mut file = out_file().lock().expect("file lock");
    if reader.extract_to(Some(&mut file), &mut |_| {}).is_ok() {
        let len = file.metadata().expect("metadata").len();
        assert_eq!(len, info.size, "extracted file length");
    }
    let _ = file.set_len(0);

    // Write the member back (headers, zero data, end blocks) and read it again.
    let meta = MemberMeta {
        name: info.name.clone(),
        mode: info.mode,
        mtime: info.mtime,
    };
    let Ok(mut written) = tar::header_blocks(&meta, &info.map) else {
        return;
    };
    let data_bytes = info.map.data_bytes();
    if data_bytes > 1 << 20 {
        return; // keep each run cheap
    }
    written.resize(
        written.len() + data_bytes.div_ceil(512) as usize * 512 + 1024,
        0,
    );
    let mut again = TarReader::new(Cursor::new(&written[..]));
    let back = again
        .read_member_header()
        .expect("our own header reads back");
    assert_eq!(
        (&back.name, back.mode, back.mtime, back.size, &back.map),
        (&info.name, info.mode, info.mtime, info.size, &info.map),
        "header_blocks round trip"
    );
    again
        .extract_to(None, &mut |_| {})
        .expect("our own stream extracts");
});
