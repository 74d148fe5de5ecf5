//! Writer checks against the reference vectors (docs/format.md §14.4) through the library:
//! the cipher and splitter reproduce the reference parts from the reference gzip stream, and our
//! whole pipeline, given the vector's mtime and hole map, produces the reference tar digest and a
//! bundle that unbundles to the reference image.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;

use amibundle::bundle::crypto::{
    self, AesIv, AesKey, CbcDecryptReader, CbcEncryptWriter, Certificate, UserKey,
};
use amibundle::bundle::gzip::GzipReader;
use amibundle::bundle::manifest::{Bundler, Manifest};
use amibundle::bundle::parts::{self, MemorySink, PartReader, PartWriter};
use amibundle::bundle::pipeline::{
    self, BundleSpec, DecodeOptions, Identity, ImageInput, LocalBundle, Overrides,
};
use amibundle::bundle::tar::TarReader;
use amibundle::progress::NoProgress;

use crate::support::*;

fn key_iv(name: &str) -> (AesKey, AesIv) {
    let exp = expected(name);
    (
        AesKey::from_hex(exp["aes_key_hex"].as_str().unwrap()).unwrap(),
        AesIv::from_hex(exp["aes_iv_hex"].as_str().unwrap()).unwrap(),
    )
}

fn vector_bundle(name: &str) -> LocalBundle {
    let m = vector_dir(name).join(expected(name)["manifest"].as_str().unwrap());
    LocalBundle::open(&m, None).unwrap()
}

#[test]
fn cipher_and_splitter_reproduce_the_reference_parts() {
    for name in VECTORS {
        let bundle = vector_bundle(name);
        let (key, iv) = key_iv(name);
        // Decrypt the reference parts to the reference gzip stream G.
        let reader = PartReader::new(bundle.expected_parts());
        let mut gz = Vec::new();
        CbcDecryptReader::new(reader, &key, &iv)
            .unwrap()
            .read_to_end(&mut gz)
            .unwrap();
        assert_eq!(
            &gz[..10],
            &[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 2, 3],
            "{name}: reference gzip header"
        );
        // Encrypt G again and split: byte-identical parts, names and digests.
        let mut enc =
            CbcEncryptWriter::new(PartWriter::new(MemorySink::default()), &key, &iv).unwrap();
        enc.write_all(&gz).unwrap();
        let (sink, infos) = enc.finish().unwrap().finish().unwrap();
        let width = parts::part_width(infos.len() as u64);
        assert_eq!(infos.len(), bundle.manifest.image.parts.len(), "{name}");
        for ((info, data), entry) in infos
            .iter()
            .zip(&sink.parts)
            .zip(&bundle.manifest.image.parts)
        {
            assert_eq!(
                parts::part_name(&bundle.manifest.image.name, info.index, width),
                entry.filename
            );
            assert_eq!(info.sha1, entry.digest, "{name}");
            assert_eq!(
                data,
                &fs::read(bundle.parts_dir.join(&entry.filename)).unwrap(),
                "{name}"
            );
        }
    }
}

#[test]
fn our_pipeline_reproduces_the_reference_tar_digest() {
    let keys = Keys::new();
    let user_key = UserKey::load(&keys.user_key(), false).unwrap();
    for name in VECTORS {
        let exp = expected(name);
        let bundle = vector_bundle(name);
        let (key, iv) = key_iv(name);
        let work = tempfile::tempdir().unwrap();

        // Recover the image and its tar metadata (mode, mtime, hole map) from the reference.
        let reader = PartReader::new(bundle.expected_parts());
        let decrypt = CbcDecryptReader::new(reader, &key, &iv).unwrap();
        let mut tar = TarReader::new(GzipReader::new(decrypt));
        let info = tar.read_member_header().unwrap();
        let image = work.path().join(&info.name);
        let mut out = File::options()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&image)
            .unwrap();
        tar.extract_to(Some(&mut out), &mut |_| {}).unwrap();
        drop(out);
        fs::set_permissions(&image, fs::Permissions::from_mode(info.mode)).unwrap();
        assert_eq!(sha1sum(&image), exp["image_sha1"].as_str().unwrap());

        // Bundle it with our pipeline, injecting the reference's mtime, map, key and IV.
        let spec = BundleSpec {
            name: info.name.clone(),
            account: "123456789012".into(),
            arch: "x86_64".into(),
            kernel_id: bundle
                .manifest
                .machine
                .as_ref()
                .and_then(|m| m.kernel_id.clone()),
            ramdisk_id: bundle
                .manifest
                .machine
                .as_ref()
                .and_then(|m| m.ramdisk_id.clone()),
            block_device_mapping: bundle
                .manifest
                .machine
                .as_ref()
                .map(|m| m.block_device_mapping.clone())
                .unwrap_or_default(),
            product_codes: bundle
                .manifest
                .machine
                .as_ref()
                .map(|m| m.product_codes.clone())
                .unwrap_or_default(),
            ancestry: Vec::new(),
            level: 6,
            threads: 2,
            bundler: Bundler {
                name: "ec2-ami-tools".into(),
                version: "1.5".into(),
                release: "3".into(),
            },
            allow_oversize: false,
        };
        let identity = Identity {
            user_key: UserKey::load(&keys.user_key(), false).unwrap(),
            user_cert: Certificate::load(&keys.user_cert()).unwrap(),
            ec2_cert: Certificate::load(&keys.ec2_cert()).unwrap(),
        };
        let dest = work.path().join("ours");
        fs::create_dir(&dest).unwrap();
        let overrides = Overrides {
            mtime: Some(info.mtime),
            map: Some(info.map.clone()),
            key_iv: Some((key, iv)),
        };
        let report = pipeline::bundle_to_dir(
            ImageInput::File(image.clone()),
            &spec,
            &identity,
            &dest,
            false,
            overrides,
            &NoProgress,
        )
        .unwrap();
        assert_eq!(
            report.manifest.image.digest,
            exp["tar_stream_sha1"].as_str().unwrap(),
            "{name}: tar digest"
        );
        assert_eq!(report.image_size, exp["image_size"].as_u64().unwrap());

        // The manifest fields that do not depend on randomness equal the reference's.
        let ours = Manifest::parse(&fs::read(&report.manifest_path).unwrap()).unwrap();
        assert_eq!(ours.machine, bundle.manifest.machine, "{name}");
        assert_eq!(ours.image.digest, bundle.manifest.image.digest);
        assert_eq!(ours.image.size, bundle.manifest.image.size);
        // Same key and IV wrapped for the user: unwrapping gives the reference values.
        assert_eq!(
            crypto::unwrap_key(&user_key, &ours.image.user_encrypted_key)
                .unwrap()
                .to_hex(),
            exp["aes_key_hex"]
        );
        assert_eq!(
            crypto::unwrap_iv(&user_key, &ours.image.user_encrypted_iv)
                .unwrap()
                .to_hex(),
            exp["aes_iv_hex"]
        );

        // And it unbundles to the reference image.
        let restored = work.path().join("restored");
        fs::create_dir(&restored).unwrap();
        let ours = LocalBundle::open(&report.manifest_path, None).unwrap();
        ours.verify_signature(&identity.user_cert).unwrap();
        let decoded = ours
            .decode(&user_key, DecodeOptions::into_dir(&restored), &NoProgress)
            .unwrap();
        assert_eq!(
            sha1sum(decoded.image_path.as_ref().unwrap()),
            exp["image_sha1"].as_str().unwrap()
        );
    }
}
