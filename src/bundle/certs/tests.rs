//! Unit tests of the EC2 certificate pins, lookup and installer.

use std::fs::{self, File};
use std::io::Write;
use std::os::unix::fs::PermissionsExt;

use super::install::SkipReason;
use super::search::{AMITOOLS_CERT_SUBDIR, cache_dir_for};
use super::*;

fn testdata() -> PathBuf {
    crate::test_data()
}

fn stand_in_path() -> PathBuf {
    testdata().join("keys/ec2-test-cert.pem")
}

fn stand_in() -> X509 {
    X509::from_pem(&fs::read(stand_in_path()).unwrap()).unwrap()
}

/// A search with nothing configured except an (empty) cache in `root`.
fn empty_search(root: &Path) -> CertSearch {
    CertSearch {
        explicit: None,
        allow_unpinned: false,
        ec2_amitool_home: None,
        ec2_home: None,
        system_roots: Vec::new(),
        cache_dir: root.join("cache"),
    }
}

fn parse_colon_hex(s: &str) -> Vec<u8> {
    s.split(':')
        .map(|b| {
            assert_eq!(b.len(), 2, "{s}");
            u8::from_str_radix(b, 16).unwrap()
        })
        .collect()
}

#[test]
fn pins_match_spec_table() {
    // Copied verbatim from docs/format.md §11.1.
    let spec = [
        (
            "cert-ec2.pem",
            "D3:27:BA:A0:F8:D3:EE:9C:BB:3C:FB:FE:3B:52:65:A8:40:53:5D:0D",
            "F5:70:7A:ED:B5:42:51:79:8F:6B:BC:C1:A1:0A:9C:FD:1F:21:FC:69:90:9E:A1:27:63:19:AA:2F:09:8E:47:90",
            "AES Test",
            1024,
        ),
        (
            "cert-ec2-gov.pem",
            "89:D9:37:5A:6F:D0:90:DE:28:E1:63:78:6D:EE:5E:7E:19:6D:AA:B8",
            "49:56:F9:66:C8:A0:E7:5D:22:B9:B2:34:42:95:94:64:46:8F:20:A6:76:01:0C:E8:23:B4:59:92:E1:22:F7:A9",
            "EC2 AMI Authority",
            1024,
        ),
        (
            "cert-ec2-cn-north-1.pem",
            "1C:93:69:12:A3:18:42:A5:72:DD:E3:E0:B6:3B:CE:66:DF:77:20:2F",
            "84:80:E2:B6:0A:0E:51:3C:32:2E:04:60:1F:81:A5:FF:67:A9:CA:D5:53:89:92:5C:6C:B6:ED:6D:01:89:AA:09",
            "AMI Manifests",
            2048,
        ),
    ];
    assert_eq!(pins().len(), spec.len());
    for (pin, (file, sha1, sha256, cn, bits)) in pins().iter().zip(spec) {
        assert_eq!(pin.kind.file_name(), file);
        assert_eq!(pin.sha1.to_vec(), parse_colon_hex(sha1), "{file}");
        assert_eq!(pin.sha256.to_vec(), parse_colon_hex(sha256), "{file}");
        assert_eq!(fingerprint_hex(&pin.sha1), sha1);
        assert_eq!(fingerprint_hex(&pin.sha256), sha256);
        assert_eq!(pin.subject_cn, cn);
        assert_eq!(pin.key_bits, bits);
    }
    let kinds: Vec<_> = pins().iter().map(|p| p.kind).collect();
    assert_eq!(kinds, Ec2CertKind::all());
}

#[test]
fn file_names_round_trip() {
    assert_eq!(Ec2CertKind::Commercial.file_name(), "cert-ec2.pem");
    assert_eq!(Ec2CertKind::GovWest1.file_name(), "cert-ec2-gov.pem");
    assert_eq!(Ec2CertKind::CnNorth1.file_name(), "cert-ec2-cn-north-1.pem");
    for kind in Ec2CertKind::all() {
        assert_eq!(Ec2CertKind::from_file_name(kind.file_name()), Some(kind));
    }
    assert_eq!(Ec2CertKind::from_file_name("cert-ec2-foo.pem"), None);
}

#[test]
fn stand_in_fingerprint_matches_spec_and_no_pin() {
    let fp = Fingerprints::of(&stand_in()).unwrap();
    let hex = fp.sha256_hex();
    // docs/format.md §14.1 gives `03:DE:77:8F:…:DB:03:31`.
    assert!(hex.starts_with("03:DE:77:8F:"), "{hex}");
    assert!(hex.ends_with(":DB:03:31"), "{hex}");
    assert_eq!(hex.len(), 32 * 3 - 1);
    assert!(pin_for(&stand_in()).is_none());
}

#[test]
fn regions_map_to_kinds() {
    for region in [
        "us-east-1",
        "eu-west-1",
        "ap-south-2",
        "ap-southeast-5",
        "il-central-1",
    ] {
        assert_eq!(
            kind_for_region(region).unwrap(),
            Ec2CertKind::Commercial,
            "{region}"
        );
    }
    assert_eq!(
        kind_for_region("us-gov-west-1").unwrap(),
        Ec2CertKind::GovWest1
    );
    assert_eq!(
        kind_for_region("cn-north-1").unwrap(),
        Ec2CertKind::CnNorth1
    );
}

#[test]
fn unverified_and_unknown_regions_require_explicit_cert() {
    for region in [
        "us-gov-east-1",
        "cn-northwest-1",
        "us-gov-central-1",
        "us-iso-east-1",
        "us-isob-east-1",
        "eusc-de-east-1",
        "",
        "US-EAST-1",
        "us-east",
        "useast1",
    ] {
        let err = kind_for_region(region).unwrap_err();
        assert!(
            matches!(&err, CertError::ExplicitCertRequired { region: r, .. } if r == region),
            "{region}: {err:?}"
        );
        assert!(err.to_string().contains("--ec2cert"), "{err}");
    }
    let msg = kind_for_region("us-gov-east-1").unwrap_err().to_string();
    assert!(
        msg.contains("us-gov-east-1") && msg.contains("unverified"),
        "{msg}"
    );
}

#[test]
fn explicit_unpinned_refused_without_flag() {
    let dir = tempfile::tempdir().unwrap();
    let search = CertSearch {
        explicit: Some(stand_in_path()),
        ..empty_search(dir.path())
    };
    let err = resolve(&search, Ec2CertKind::Commercial).unwrap_err();
    assert!(matches!(err, CertError::Unpinned { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("--unpinned-ec2cert"), "{msg}");
    assert!(
        msg.contains(&stand_in_path().display().to_string()),
        "{msg}"
    );
    assert!(msg.contains("03:DE:77:8F:"), "{msg}");
}

#[test]
fn explicit_unpinned_accepted_with_flag() {
    let dir = tempfile::tempdir().unwrap();
    let search = CertSearch {
        explicit: Some(stand_in_path()),
        allow_unpinned: true,
        ..empty_search(dir.path())
    };
    let cert = resolve(&search, Ec2CertKind::Commercial).unwrap();
    assert_eq!(cert.kind, None);
    assert_eq!(cert.source, CertSource::Explicit);
    assert_eq!(cert.path, stand_in_path());
    assert_eq!(cert.x509.to_der().unwrap(), stand_in().to_der().unwrap());
    // An explicit certificate is the choice regions without an automatic one ask for.
    let cert = resolve_for_region(&search, "us-gov-east-1").unwrap();
    assert_eq!(cert.source, CertSource::Explicit);
}

#[test]
fn explicit_pinned_gets_its_kind() {
    let _pin = test_pins::inject(Ec2CertKind::GovWest1, &stand_in());
    let dir = tempfile::tempdir().unwrap();
    let search = CertSearch {
        explicit: Some(stand_in_path()),
        ..empty_search(dir.path())
    };
    let cert = resolve_for_region(&search, "us-gov-west-1").unwrap();
    assert_eq!(cert.kind, Some(Ec2CertKind::GovWest1));
}

#[test]
fn explicit_missing_or_garbage_names_path() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.pem");
    let search = CertSearch {
        explicit: Some(missing.clone()),
        allow_unpinned: true,
        ..empty_search(dir.path())
    };
    let err = resolve(&search, Ec2CertKind::Commercial).unwrap_err();
    assert!(matches!(err, CertError::Read { .. }), "{err:?}");
    assert!(err.to_string().contains(&missing.display().to_string()));

    let garbage = dir.path().join("garbage.pem");
    fs::write(&garbage, "not a certificate\n").unwrap();
    let search = CertSearch {
        explicit: Some(garbage.clone()),
        ..search
    };
    let err = resolve(&search, Ec2CertKind::Commercial).unwrap_err();
    assert!(matches!(err, CertError::Parse { .. }), "{err:?}");
    assert!(err.to_string().contains(&garbage.display().to_string()));
}

/// A search whose every location holds a copy of `pem` as `cert-ec2.pem`.
fn populated_search(root: &Path, pem: &[u8]) -> CertSearch {
    let file = Ec2CertKind::Commercial.file_name();
    let amitool = root.join("amitool");
    let ec2 = root.join("ec2home");
    for home in [&amitool, &ec2] {
        let d = home.join(AMITOOLS_CERT_SUBDIR);
        fs::create_dir_all(&d).unwrap();
        fs::write(d.join(file), pem).unwrap();
    }
    let mut system_roots = Vec::new();
    for (source, name) in [
        (CertSource::AmazonLinuxPackage, "opt"),
        (CertSource::DebianPackage, "etc"),
        (CertSource::Euca2ools, "euca"),
    ] {
        let d = root.join(name);
        fs::create_dir_all(&d).unwrap();
        fs::write(d.join(file), pem).unwrap();
        system_roots.push((source, d));
    }
    let cache_dir = root.join("cache");
    fs::create_dir_all(&cache_dir).unwrap();
    fs::write(cache_dir.join(file), pem).unwrap();
    CertSearch {
        explicit: None,
        allow_unpinned: false,
        ec2_amitool_home: Some(amitool),
        ec2_home: Some(ec2),
        system_roots,
        cache_dir,
    }
}

#[test]
fn lookup_order_follows_spec() {
    let _pin = test_pins::inject(Ec2CertKind::Commercial, &stand_in());
    let dir = tempfile::tempdir().unwrap();
    let pem = fs::read(stand_in_path()).unwrap();
    let search = populated_search(dir.path(), &pem);
    let expected = search.candidates(Ec2CertKind::Commercial);
    let sources: Vec<_> = expected.iter().map(|(s, _)| *s).collect();
    assert_eq!(
        sources,
        [
            CertSource::EnvAmitoolHome,
            CertSource::EnvEc2Home,
            CertSource::AmazonLinuxPackage,
            CertSource::DebianPackage,
            CertSource::Euca2ools,
            CertSource::Cache,
        ]
    );
    // Remove the winner each round: the next location in order must be chosen.
    for (source, path) in &expected {
        let cert = resolve(&search, Ec2CertKind::Commercial).unwrap();
        assert_eq!((cert.source, &cert.path), (*source, path));
        assert_eq!(cert.kind, Some(Ec2CertKind::Commercial));
        fs::remove_file(path).unwrap();
    }
    let err = resolve(&search, Ec2CertKind::Commercial).unwrap_err();
    assert!(matches!(err, CertError::NotFound { .. }), "{err:?}");
}

#[test]
fn env_homes_use_amitools_subdir() {
    let search = CertSearch {
        ec2_amitool_home: Some(PathBuf::from("/a")),
        ec2_home: Some(PathBuf::from("/b")),
        ..empty_search(Path::new("/c"))
    };
    let paths: Vec<_> = search
        .candidates(Ec2CertKind::GovWest1)
        .into_iter()
        .map(|(_, p)| p)
        .collect();
    assert_eq!(
        paths,
        [
            PathBuf::from("/a/etc/ec2/amitools/cert-ec2-gov.pem"),
            PathBuf::from("/b/etc/ec2/amitools/cert-ec2-gov.pem"),
            PathBuf::from("/c/cache/cert-ec2-gov.pem"),
        ]
    );
    let real = CertSearch::from_env(None, false);
    let dirs: Vec<_> = real.system_roots.iter().map(|(_, d)| d.clone()).collect();
    assert_eq!(
        dirs,
        [
            PathBuf::from("/opt/aws/amitools/ec2/etc/ec2/amitools"),
            PathBuf::from("/etc/ec2/amitools"),
            PathBuf::from("/usr/share/euca2ools/certs"),
        ]
    );
}

#[test]
fn mismatching_files_are_skipped() {
    let pin = test_pins::inject(Ec2CertKind::Commercial, &stand_in());
    let dir = tempfile::tempdir().unwrap();
    let pem = fs::read(stand_in_path()).unwrap();
    let search = populated_search(dir.path(), &pem);
    let candidates = search.candidates(Ec2CertKind::Commercial);
    // A valid certificate that is not the pinned one, garbage, and a certificate pinned as
    // another kind, in the five higher-priority places.
    let other = fs::read(testdata().join("keys/user-cert.pem")).unwrap();
    fs::write(&candidates[0].1, &other).unwrap();
    fs::write(&candidates[1].1, "garbage").unwrap();
    fs::remove_file(&candidates[2].1).unwrap();
    fs::remove_file(&candidates[3].1).unwrap();
    fs::remove_file(&candidates[4].1).unwrap();
    let cert = resolve(&search, Ec2CertKind::Commercial).unwrap();
    assert_eq!(cert.source, CertSource::Cache);

    // Pinned, but as GovWest1: not acceptable as cert-ec2.pem.
    drop(pin);
    let _gov = test_pins::inject(Ec2CertKind::GovWest1, &stand_in());
    let err = resolve(&search, Ec2CertKind::Commercial).unwrap_err();
    let CertError::NotFound { looked, .. } = &err else {
        panic!("{err:?}");
    };
    assert!(matches!(looked[0].outcome, LookOutcome::Mismatch { .. }));
    assert!(matches!(looked[1].outcome, LookOutcome::Unusable(_)));
    assert_eq!(looked[2].outcome, LookOutcome::Missing);
    assert!(matches!(looked[5].outcome, LookOutcome::Mismatch { .. }));
}

#[test]
fn nothing_found_lists_every_location_and_fix() {
    let dir = tempfile::tempdir().unwrap();
    let mut search = populated_search(dir.path(), b"");
    for (_, path) in search.candidates(Ec2CertKind::Commercial) {
        fs::remove_file(path).unwrap();
    }
    search.ec2_home = Some(dir.path().join("ec2home"));
    let err = resolve(&search, Ec2CertKind::Commercial).unwrap_err();
    let msg = err.to_string();
    for (_, path) in search.candidates(Ec2CertKind::Commercial) {
        assert!(msg.contains(&path.display().to_string()), "{msg}");
    }
    assert!(
        msg.contains("$EC2_AMITOOL_HOME") && msg.contains("amibundle cache"),
        "{msg}"
    );
    assert!(
        msg.contains("amibundle certs install --from ec2-ami-tools.zip"),
        "{msg}"
    );
    assert!(msg.contains("--ec2cert PATH"), "{msg}");
    let CertError::NotFound { looked, file_name } = err else {
        panic!()
    };
    assert_eq!(file_name, "cert-ec2.pem");
    assert_eq!(looked.len(), 6);
    assert!(looked.iter().all(|l| l.outcome == LookOutcome::Missing));
}

#[test]
fn describe_reports_per_region() {
    let _pin = test_pins::inject(Ec2CertKind::Commercial, &stand_in());
    let dir = tempfile::tempdir().unwrap();
    let search = empty_search(dir.path());
    fs::create_dir_all(&search.cache_dir).unwrap();
    fs::copy(stand_in_path(), search.cache_dir.join("cert-ec2.pem")).unwrap();
    let out = describe(&search, &["us-east-1", "us-gov-west-1", "cn-northwest-1"]);
    assert_eq!(out.len(), 3);
    assert_eq!(out[0].0, "us-east-1");
    assert_eq!(
        out[0].1.as_ref().unwrap().kind,
        Some(Ec2CertKind::Commercial)
    );
    assert!(matches!(
        out[1].1,
        Err(CertError::NotFound {
            file_name: "cert-ec2-gov.pem",
            ..
        })
    ));
    assert!(matches!(
        out[2].1,
        Err(CertError::ExplicitCertRequired { .. })
    ));
}

#[test]
fn cache_dir_rules() {
    let home = Some(PathBuf::from("/home/u"));
    assert_eq!(
        cache_dir_for(true, Some("/x".into()), home.clone()),
        PathBuf::from("/var/cache/amibundle/ec2-certs")
    );
    assert_eq!(
        cache_dir_for(false, Some("/x".into()), home.clone()),
        PathBuf::from("/x/amibundle/ec2-certs")
    );
    assert_eq!(
        cache_dir_for(false, Some("relative".into()), home.clone()),
        PathBuf::from("/home/u/.cache/amibundle/ec2-certs")
    );
    assert_eq!(
        cache_dir_for(false, None, home),
        PathBuf::from("/home/u/.cache/amibundle/ec2-certs")
    );
    assert!(default_cache_dir().ends_with("amibundle/ec2-certs"));
}

fn make_zip(path: &Path, entries: &[(&str, &[u8])]) {
    let mut w = zip::ZipWriter::new(File::create(path).unwrap());
    let opts = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated);
    for (name, data) in entries {
        w.start_file(*name, opts).unwrap();
        w.write_all(data).unwrap();
    }
    w.finish().unwrap();
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

#[test]
fn install_pinned_cert_from_zip() {
    let _pin = test_pins::inject(Ec2CertKind::Commercial, &stand_in());
    let dir = tempfile::tempdir().unwrap();
    let pem = fs::read(stand_in_path()).unwrap();
    let zip_path = dir.path().join("ec2-ami-tools.zip");
    make_zip(
        &zip_path,
        &[
            ("ec2-ami-tools-1.5.7/", b""),
            ("ec2-ami-tools-1.5.7/bin/ec2-bundle-image", b"#!/bin/sh\n"),
            ("ec2-ami-tools-1.5.7/etc/ec2/amitools/cert-ec2.pem", &pem),
        ],
    );
    let cache = dir.path().join("a/b/cache");
    let report = install_from_zip(&zip_path, &cache).unwrap();
    assert_eq!(report.skipped, []);
    assert_eq!(report.installed.len(), 1);
    let installed = &report.installed[0];
    assert_eq!(installed.kind, Ec2CertKind::Commercial);
    assert_eq!(installed.path, cache.join("cert-ec2.pem"));
    assert_eq!(mode(&installed.path), 0o644);
    assert_eq!(mode(&cache), 0o755);
    assert_eq!(mode(&dir.path().join("a")), 0o755);
    let stored = X509::from_pem(&fs::read(&installed.path).unwrap()).unwrap();
    assert_eq!(stored.to_der().unwrap(), stand_in().to_der().unwrap());
    // Only the certificate landed in the cache (no temporary files left).
    let names: Vec<_> = fs::read_dir(&cache)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["cert-ec2.pem"]);
    // And resolve finds it there.
    let search = CertSearch {
        cache_dir: cache,
        ..empty_search(dir.path())
    };
    assert_eq!(
        resolve(&search, Ec2CertKind::Commercial).unwrap().source,
        CertSource::Cache
    );
}

#[test]
fn install_skips_unpinned_cert() {
    let dir = tempfile::tempdir().unwrap();
    let pem = fs::read(stand_in_path()).unwrap();
    let zip_path = dir.path().join("ec2-ami-tools.zip");
    make_zip(
        &zip_path,
        &[
            ("ec2-ami-tools-1.5.7/etc/ec2/amitools/cert-ec2.pem", &pem),
            (
                "ec2-ami-tools-1.5.7/etc/ec2/amitools/cert-ec2-gov.pem",
                b"junk",
            ),
            (
                "ec2-ami-tools-1.5.7/etc/ec2/amitools/cert-ec2-new.pem",
                &pem,
            ),
        ],
    );
    let cache = dir.path().join("cache");
    let report = install_from_zip(&zip_path, &cache).unwrap();
    assert_eq!(report.installed, []);
    assert_eq!(report.skipped.len(), 3);
    assert_eq!(
        report.skipped[0].entry,
        "ec2-ami-tools-1.5.7/etc/ec2/amitools/cert-ec2.pem"
    );
    assert!(
        matches!(&report.skipped[0].reason, SkipReason::NotPinned { sha256 } if sha256.starts_with("03:DE:77:8F:"))
    );
    assert!(matches!(report.skipped[1].reason, SkipReason::Unusable(_)));
    assert_eq!(report.skipped[2].reason, SkipReason::UnknownFileName);
    assert!(!cache.join("cert-ec2.pem").exists());
}

#[test]
fn install_never_writes_outside_cache() {
    let _pin = test_pins::inject(Ec2CertKind::Commercial, &stand_in());
    let dir = tempfile::tempdir().unwrap();
    let pem = fs::read(stand_in_path()).unwrap();
    let zip_path = dir.path().join("evil.zip");
    let evil = [
        "../etc/ec2/amitools/cert-ec2.pem",
        "../../x/etc/ec2/amitools/cert-ec2.pem",
        "/etc/ec2/amitools/cert-ec2.pem",
        "a/b/etc/ec2/amitools/cert-ec2.pem",
        "etc/ec2/amitools/cert-ec2.pem",
        "./etc/ec2/amitools/cert-ec2.pem",
    ];
    let entries: Vec<(&str, &[u8])> = evil.iter().map(|n| (*n, pem.as_slice())).collect();
    make_zip(&zip_path, &entries);
    let work = dir.path().join("work");
    let cache = work.join("cache");
    let report = install_from_zip(&zip_path, &cache).unwrap();
    assert_eq!(report.installed, []);
    assert_eq!(report.skipped.len(), evil.len());
    assert!(
        report
            .skipped
            .iter()
            .all(|s| s.reason == SkipReason::UnexpectedPath)
    );
    // Nothing was created anywhere: the temp dir holds only the zip.
    let names: Vec<_> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["evil.zip"]);
}

#[test]
fn install_duplicate_entries_install_once() {
    let _pin = test_pins::inject(Ec2CertKind::Commercial, &stand_in());
    let dir = tempfile::tempdir().unwrap();
    let pem = fs::read(stand_in_path()).unwrap();
    let zip_path = dir.path().join("dup.zip");
    make_zip(
        &zip_path,
        &[
            ("ec2-ami-tools-1.5.7/etc/ec2/amitools/cert-ec2.pem", &pem),
            ("ec2-ami-tools-1.5.8/etc/ec2/amitools/cert-ec2.pem", &pem),
        ],
    );
    let report = install_from_zip(&zip_path, &dir.path().join("c")).unwrap();
    assert_eq!(report.installed.len(), 1);
    assert_eq!(report.skipped[0].reason, SkipReason::Duplicate);
}

#[test]
fn install_errors_name_the_archive() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");

    let missing = dir.path().join("missing.zip");
    let err = install_from_zip(&missing, &cache).unwrap_err();
    assert!(matches!(err, CertError::OpenZip { .. }), "{err:?}");
    assert!(err.to_string().contains(&missing.display().to_string()));

    let not_zip = dir.path().join("not.zip");
    fs::write(&not_zip, "this is not a zip archive").unwrap();
    let err = install_from_zip(&not_zip, &cache).unwrap_err();
    assert!(matches!(err, CertError::ReadZip { .. }), "{err:?}");
    assert!(err.to_string().contains(&not_zip.display().to_string()));

    let no_certs = dir.path().join("empty.zip");
    make_zip(&no_certs, &[("ec2-ami-tools-1.5.7/bin/x", b"x")]);
    let err = install_from_zip(&no_certs, &cache).unwrap_err();
    assert!(matches!(err, CertError::NoCertsInZip { .. }), "{err:?}");
    assert!(err.to_string().contains(&no_certs.display().to_string()));
    assert!(!cache.exists());
}
