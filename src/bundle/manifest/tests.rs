//! Unit tests of the manifest: the reference vectors, the serializer, the parser, the strict
//! check, signatures and the naming rules.
//!
//! Bare § numbers in this module refer to docs/format.md.

use std::fs;
use std::path::PathBuf;

use super::serialize::XML_DECLARATION;
use super::*;
use crate::bundle::crypto::{self, Certificate, UserKey};
use crate::bundle::parts::{part_name, part_width};

const VECTORS: [&str; 4] = [
    "v1-small-ext4",
    "v2-three-parts",
    "v3-sparse-islands",
    "v4-prefix",
];

fn testdata() -> PathBuf {
    crate::test_data()
}

struct Vector {
    raw: Vec<u8>,
    expected: serde_json::Value,
}

fn vector(name: &str) -> Vector {
    let dir = testdata().join("peer-bundles").join(name);
    let expected: serde_json::Value =
        serde_json::from_slice(&fs::read(dir.join("expected.json")).unwrap()).unwrap();
    let raw = fs::read(dir.join(expected["manifest"].as_str().unwrap())).unwrap();
    Vector { raw, expected }
}

fn user_key() -> UserKey {
    UserKey::from_pem(&fs::read(testdata().join("keys/user-key.pem")).unwrap()).unwrap()
}

fn ec2_key() -> UserKey {
    UserKey::from_pem(&fs::read(testdata().join("keys/ec2-test-key.pem")).unwrap()).unwrap()
}

fn user_cert() -> Certificate {
    Certificate::load(&testdata().join("keys/user-cert.pem")).unwrap()
}

fn v1_text() -> String {
    String::from_utf8(vector("v1-small-ext4").raw).unwrap()
}

fn parse_str(s: &str) -> Result<Manifest, ManifestError> {
    Manifest::parse(s.as_bytes())
}

#[test]
fn vectors_round_trip_byte_identical_and_pass_strict() {
    for name in VECTORS {
        let v = vector(name);
        assert_ne!(v.raw.last(), Some(&b'\n'));
        let m = Manifest::parse(&v.raw).unwrap();
        assert_eq!(m.version, ManifestVersion::V20071010);
        assert_eq!(m.to_xml().unwrap().as_bytes(), &v.raw[..], "{name}");
        m.check_strict().unwrap();
        check_strict_bytes(&v.raw).unwrap();
        assert_eq!(m.image.name, v.expected["image_name"].as_str().unwrap());
        assert_eq!(m.image.size, v.expected["image_size"].as_u64().unwrap());
        assert_eq!(
            m.image.digest,
            v.expected["tar_stream_sha1"].as_str().unwrap()
        );
        let names: Vec<&str> = m.image.parts.iter().map(|p| p.filename.as_str()).collect();
        let expected: Vec<&str> = v.expected["parts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p.as_str().unwrap())
            .collect();
        assert_eq!(names, expected, "{name}");
    }
}

#[test]
fn vectors_signatures_verify_raw_and_resign_identically() {
    let key = user_key();
    let cert = user_cert();
    for name in VECTORS {
        let v = vector(name);
        let m = Manifest::parse(&v.raw).unwrap();
        assert_eq!(
            verify_signature(&v.raw, &m, &cert).unwrap(),
            SignatureForm::Raw,
            "{name}"
        );
        let mut resigned = m.clone();
        resigned.signature.clear();
        resigned.sign(&key).unwrap();
        assert_eq!(resigned.signature, m.signature, "{name}");
    }
}

#[test]
fn vectors_keys_unwrap_with_user_and_ec2_keys() {
    let user = user_key();
    let ec2 = ec2_key();
    for name in VECTORS {
        let v = vector(name);
        let m = Manifest::parse(&v.raw).unwrap();
        let key_hex = v.expected["aes_key_hex"].as_str().unwrap();
        let iv_hex = v.expected["aes_iv_hex"].as_str().unwrap();
        let img = &m.image;
        assert_eq!(img.user_encrypted_key.len(), 512);
        assert_eq!(img.ec2_encrypted_key.len(), 256);
        for (priv_key, key_field, iv_field) in [
            (&user, &img.user_encrypted_key, &img.user_encrypted_iv),
            (&ec2, &img.ec2_encrypted_key, &img.ec2_encrypted_iv),
        ] {
            assert_eq!(
                crypto::unwrap_hex(priv_key, key_field).unwrap(),
                key_hex.as_bytes()
            );
            assert_eq!(
                crypto::unwrap_key(priv_key, key_field).unwrap().to_hex(),
                key_hex
            );
            assert_eq!(
                crypto::unwrap_iv(priv_key, iv_field).unwrap().to_hex(),
                iv_hex
            );
        }
    }
}

fn v1_built() -> Manifest {
    let v1 = Manifest::parse(vector("v1-small-ext4").raw.as_slice()).unwrap();
    let src = &v1.image;
    // Mappings deliberately in the -B order of the reference command line (§14.2).
    Manifest {
        version: ManifestVersion::V20071010,
        bundler: Bundler {
            name: "ec2-ami-tools".to_owned(),
            version: "1.5".to_owned(),
            release: "3".to_owned(),
        },
        machine: Some(MachineConfiguration {
            architecture: "x86_64".to_owned(),
            block_device_mapping: parse_block_device_mapping(
                "ami=sda1,root=/dev/sda1,ephemeral0=sdb,swap=sda3",
            )
            .unwrap(),
            kernel_id: Some("aki-1a2b3c4d".to_owned()),
            ramdisk_id: Some("ari-5e6f7a8b".to_owned()),
            product_codes: vec!["8ABCDEF1".to_owned()],
        }),
        image: ImageInfo {
            name: "small.img".to_owned(),
            user: normalize_account("1234-5678-9012").unwrap(),
            image_type: "machine".to_owned(),
            kernel_name: None,
            ancestry: Vec::new(),
            digest: "186243d96a480f19787c1937467909c943fa00da".to_owned(),
            size: 67_108_864,
            bundled_size: 251_472,
            ec2_encrypted_key: src.ec2_encrypted_key.clone(),
            user_encrypted_key: src.user_encrypted_key.clone(),
            ec2_encrypted_iv: src.ec2_encrypted_iv.clone(),
            user_encrypted_iv: src.user_encrypted_iv.clone(),
            parts: vec![PartEntry {
                index: 0,
                filename: part_name("small.img", 0, part_width(1)),
                digest: "c6bfc8f9ef86fd43be2b411fd862cb012f89c9a9".to_owned(),
            }],
        },
        signature: String::new(),
    }
}

#[test]
fn golden_v1_manifest_from_values() {
    let mut m = v1_built();
    // Account typed with dashes normalizes to the vector's account.
    assert_eq!(m.image.user, "123456789012");
    assert!(matches!(m.to_xml().unwrap_err(), ManifestError::Unsigned));
    m.sign(&user_key()).unwrap();
    assert_eq!(m.to_xml().unwrap(), v1_text());
    m.check_strict().unwrap();
}

#[test]
fn signed_bytes_cover_machine_configuration_through_image() {
    let v1 = v1_text();
    let m = Manifest::parse(v1.as_bytes()).unwrap();
    let signed = m.signed_bytes().unwrap();
    assert!(signed.starts_with("<machine_configuration><architecture>"));
    assert!(signed.ends_with("</parts></image>"));
    let start = v1.find("<machine_configuration>").unwrap();
    let end = v1.find("</image>").unwrap() + "</image>".len();
    assert_eq!(signed, &v1[start..end]);
    // Version 3 signs the image element alone.
    let mut v3 = m.clone();
    v3.version = ManifestVersion::V3;
    assert!(v3.signed_bytes().unwrap().starts_with("<image><name>"));
}

#[test]
fn mappings_sort_bytewise_and_refuse_duplicates() {
    let mut m = v1_built();
    let names = [
        "swap",
        "ephemeral2",
        "root",
        "ephemeral10",
        "ami",
        "ephemeral1",
        "ephemeral0",
    ];
    let mc = m.machine.as_mut().unwrap();
    mc.block_device_mapping = names
        .iter()
        .map(|n| Mapping {
            virtual_name: (*n).to_owned(),
            device: "sdb".to_owned(),
        })
        .collect();
    let signed = m.signed_bytes().unwrap();
    let order: Vec<usize> = [
        "ami",
        "ephemeral0",
        "ephemeral1",
        "ephemeral10",
        "ephemeral2",
        "root",
        "swap",
    ]
    .iter()
    .map(|n| signed.find(&format!("<virtual>{n}</virtual>")).unwrap())
    .collect();
    assert!(order.windows(2).all(|w| w[0] < w[1]), "{order:?}");
    let mc = m.machine.as_mut().unwrap();
    mc.block_device_mapping.push(Mapping {
        virtual_name: "root".to_owned(),
        device: "sdc".to_owned(),
    });
    assert!(matches!(
        m.signed_bytes().unwrap_err(),
        ManifestError::DuplicateMapping { .. }
    ));
}

#[test]
fn serializer_refuses_values_needing_escaping() {
    for bad in [
        "a&b",
        "a<b",
        "a>b",
        "it's",
        "say \"x\"",
        "tab\there",
        "nl\n",
    ] {
        let mut m = v1_built();
        m.signature = "00".to_owned();
        m.machine.as_mut().unwrap().product_codes = vec![bad.to_owned()];
        let err = m.to_xml().unwrap_err();
        assert!(
            matches!(err, ManifestError::NeedsEscaping { .. }),
            "{bad}: {err}"
        );
    }
    let mut m = v1_built();
    m.signature = "00".to_owned();
    m.machine.as_mut().unwrap().kernel_id = Some(String::new());
    assert!(matches!(
        m.to_xml().unwrap_err(),
        ManifestError::EmptyValue { .. }
    ));
}

#[test]
fn parse_refuses_doctype_and_entities() {
    let v1 = v1_text();
    let body = v1.strip_prefix(XML_DECLARATION).unwrap();
    let laughs = format!(
        "{XML_DECLARATION}<!DOCTYPE manifest [<!ENTITY a \"aaaaaaaa\"><!ENTITY b \"&a;&a;&a;\">]>{}",
        body.replace("x86_64", "&b;")
    );
    let err = parse_str(&laughs).unwrap_err();
    assert!(matches!(err, ManifestError::Doctype), "{err}");
    assert_eq!(err.to_string(), "manifest has a DOCTYPE; refusing");
    let empty_dtd = format!("{XML_DECLARATION}<!DOCTYPE manifest>{body}");
    assert!(matches!(
        parse_str(&empty_dtd).unwrap_err(),
        ManifestError::Doctype
    ));
    // An undeclared entity is a plain XML error.
    let undeclared = v1.replace("x86_64", "&b;");
    assert!(matches!(
        parse_str(&undeclared).unwrap_err(),
        ManifestError::Xml { .. }
    ));
}

fn set_parts(parts_xml: &str) -> String {
    let v1 = v1_text();
    let start = v1.find("<parts").unwrap();
    let end = v1.find("</parts>").unwrap() + "</parts>".len();
    format!("{}{parts_xml}{}", &v1[..start], &v1[end..])
}

fn part(index: &str, filename: &str) -> String {
    format!(
        "<part index='{index}'><filename>{filename}</filename>\
             <digest algorithm='SHA1'>c6bfc8f9ef86fd43be2b411fd862cb012f89c9a9</digest></part>"
    )
}

#[test]
fn parse_checks_part_indices_count_and_names() {
    let ok = set_parts(&format!(
        "<parts count='2'>{}{}</parts>",
        part("1", "small.img.part.1"),
        part("0", "small.img.part.0")
    ));
    let m = parse_str(&ok).unwrap();
    assert_eq!(m.image.parts[0].filename, "small.img.part.0");
    assert_eq!(m.image.parts[1].index, 1);

    let missing = set_parts(&format!(
        "<parts count='2'>{}{}</parts>",
        part("0", "small.img.part.0"),
        part("2", "small.img.part.2")
    ));
    assert!(matches!(
        parse_str(&missing).unwrap_err(),
        ManifestError::MissingPartIndex { index: 1, count: 2 }
    ));
    let duplicate = set_parts(&format!(
        "<parts count='2'>{}{}</parts>",
        part("0", "small.img.part.0"),
        part("0", "small.img.part.1")
    ));
    assert!(matches!(
        parse_str(&duplicate).unwrap_err(),
        ManifestError::DuplicatePartIndex { index: 0 }
    ));
    let mismatch = set_parts(&format!(
        "<parts count='2'>{}</parts>",
        part("0", "small.img.part.0")
    ));
    assert!(matches!(
        parse_str(&mismatch).unwrap_err(),
        ManifestError::PartCountMismatch {
            declared: 2,
            found: 1
        }
    ));
    let no_count = set_parts(&format!("<parts>{}</parts>", part("0", "small.img.part.0")));
    assert_eq!(parse_str(&no_count).unwrap().image.parts.len(), 1);
    for bad_name in ["../small.img.part.0", "a/b", "..", "."] {
        let doc = set_parts(&format!("<parts count='1'>{}</parts>", part("0", bad_name)));
        assert!(
            matches!(
                parse_str(&doc).unwrap_err(),
                ManifestError::BadPartFilename { .. }
            ),
            "{bad_name}"
        );
    }
    for foreign in [
        ".bashrc",
        "x.part.0",
        "small.img.part.1",
        "small.img.part.0x",
    ] {
        let doc = set_parts(&format!("<parts count='1'>{}</parts>", part("0", foreign)));
        assert!(
            matches!(
                parse_str(&doc).unwrap_err(),
                ManifestError::PartNotOfBundle { .. }
            ),
            "{foreign}"
        );
    }
    // Any width of the index is a part of the bundle.
    let wide = set_parts(&format!(
        "<parts count='1'>{}</parts>",
        part("0", "small.img.part.000")
    ));
    assert_eq!(
        parse_str(&wide).unwrap().image.parts[0].filename,
        "small.img.part.000"
    );
    let empty_name = set_parts(&format!("<parts count='1'>{}</parts>", part("0", "")));
    assert!(matches!(
        parse_str(&empty_name).unwrap_err(),
        ManifestError::Missing { .. }
    ));
    for bad_index in ["-1", "+0", "x", "99999999999999999999999"] {
        let doc = set_parts(&format!(
            "<parts count='1'>{}</parts>",
            part(bad_index, "a")
        ));
        assert!(
            matches!(
                parse_str(&doc).unwrap_err(),
                ManifestError::BadNumber { .. }
            ),
            "{bad_index}"
        );
    }
    let many: String = (0..=MAX_PARTS).map(|_| "<part/>").collect();
    let doc = set_parts(&format!("<parts>{many}</parts>"));
    assert!(matches!(
        parse_str(&doc).unwrap_err(),
        ManifestError::TooManyParts { .. }
    ));
}

#[test]
fn parse_refuses_bad_algorithms_numbers_and_digests() {
    let v1 = v1_text();
    let bad_alg = v1.replacen("algorithm='SHA1'", "algorithm='MD5'", 1);
    assert!(matches!(
        parse_str(&bad_alg).unwrap_err(),
        ManifestError::BadAlgorithm { .. }
    ));
    let bad_cipher = v1.replacen("'AES-128-CBC'", "'AES-256-CBC'", 1);
    assert!(matches!(
        parse_str(&bad_cipher).unwrap_err(),
        ManifestError::BadAlgorithm { .. }
    ));
    let part_alg = v1.replace(
        "<digest algorithm='SHA1'>c6bf",
        "<digest algorithm='SHA256'>c6bf",
    );
    assert!(matches!(
        parse_str(&part_alg).unwrap_err(),
        ManifestError::BadAlgorithm { .. }
    ));
    // Absent algorithm attributes mean the default.
    assert!(parse_str(&v1.replace(" algorithm='SHA1'", "")).is_ok());
    let negative = v1.replace("<size>67108864</size>", "<size>-1</size>");
    assert!(matches!(
        parse_str(&negative).unwrap_err(),
        ManifestError::BadNumber { .. }
    ));
    let overflow = v1.replace("<size>67108864</size>", "<size>18446744073709551616</size>");
    assert!(matches!(
        parse_str(&overflow).unwrap_err(),
        ManifestError::BadNumber { .. }
    ));
    let short_digest = v1.replace("186243d96a480f19787c", "186243d96a48");
    assert!(matches!(
        parse_str(&short_digest).unwrap_err(),
        ManifestError::BadDigest { .. }
    ));
    let no_digest = v1.replace(
        "<digest algorithm='SHA1'>186243d96a480f19787c1937467909c943fa00da</digest>",
        "",
    );
    assert!(matches!(
        parse_str(&no_digest).unwrap_err(),
        ManifestError::Missing { .. }
    ));
}

#[test]
fn uppercase_digest_parses_but_fails_strict() {
    let v1 = v1_text();
    let upper = v1.replace(
        "186243d96a480f19787c1937467909c943fa00da",
        "186243D96A480F19787C1937467909C943FA00DA",
    );
    let m = parse_str(&upper).unwrap();
    assert_eq!(m.image.digest, "186243D96A480F19787C1937467909C943FA00DA");
    // Kept as written, so re-serialization is still byte-identical.
    assert_eq!(m.to_xml().unwrap(), upper);
    assert!(matches!(
        m.check_strict().unwrap_err(),
        ManifestError::Strict { .. }
    ));
}

#[test]
fn legacy_empty_oversized_and_lenient_inputs() {
    let err = Manifest::parse(b"\x01\x80\x12\x34binary").unwrap_err();
    assert!(matches!(err, ManifestError::LegacyEncrypted));
    assert_eq!(
        err.to_string(),
        "manifest does not start with '<': not an XML manifest (legacy encrypted manifests are not supported)"
    );
    assert!(matches!(
        Manifest::parse(b"\x02\x01\x00garbage").unwrap_err(),
        ManifestError::LegacyEncrypted
    ));
    assert!(matches!(
        Manifest::parse(b"  \n").unwrap_err(),
        ManifestError::Empty
    ));
    let huge = vec![b' '; MAX_MANIFEST_BYTES + 1];
    assert!(matches!(
        Manifest::parse(&huge).unwrap_err(),
        ManifestError::TooLarge { .. }
    ));
    // No declaration, double quotes, whitespace, unknown elements, comments: all accepted.
    let v1 = v1_text();
    let reference = Manifest::parse(v1.as_bytes()).unwrap();
    let loose = v1
        .strip_prefix(XML_DECLARATION)
        .unwrap()
        .replace('\'', "\"")
        .replace(
            "<image>",
            "\n  <image>\n    <extra>ignored</extra><!-- c -->",
        )
        .replace("<size>67108864</size>", "<size>  67108864\n</size>");
    let m = Manifest::parse(format!("\u{feff}\n{loose}\n").as_bytes()).unwrap();
    assert_eq!(m, reference);
    assert!(matches!(
        check_strict_bytes(loose.as_bytes()).unwrap_err(),
        ManifestError::Strict { .. }
    ));
    assert!(matches!(
        parse_str("<?xml version='1.0'?><other/>").unwrap_err(),
        ManifestError::WrongRoot { .. }
    ));
}

#[test]
fn version_detection() {
    let v1 = v1_text();
    for (text, version) in [
        ("2007-08-29", ManifestVersion::V20070829),
        ("20070829", ManifestVersion::V20070829),
        ("1999", ManifestVersion::Unknown("1999".to_owned())),
    ] {
        let doc = v1.replace(
            "<version>2007-10-10</version>",
            &format!("<version>{text}</version>"),
        );
        assert_eq!(parse_str(&doc).unwrap().version, version);
    }
    // Version 3: no machine_configuration, no image/type; signature over image alone.
    let start = v1.find("<machine_configuration>").unwrap();
    let end = v1.find("</machine_configuration>").unwrap() + "</machine_configuration>".len();
    let v3_doc = format!("{}{}", &v1[..start], &v1[end..])
        .replace("<version>2007-10-10</version>", "<version>3</version>")
        .replace("<type>machine</type>", "");
    let mut m = parse_str(&v3_doc).unwrap();
    assert_eq!(m.version, ManifestVersion::V3);
    assert!(m.machine.is_none());
    assert_eq!(m.image.image_type, "machine");
    // A 2007-10-10 manifest without machine_configuration is refused.
    let no_mc = format!("{}{}", &v1[..start], &v1[end..]);
    assert!(matches!(
        parse_str(&no_mc).unwrap_err(),
        ManifestError::Missing { .. }
    ));
    // Sign the raw image bytes of the v3 document the way a version-3 writer would.
    let image_start = v3_doc.find("<image>").unwrap();
    let image_end = v3_doc.find("</image>").unwrap() + "</image>".len();
    let sig =
        crypto::sign_sha1_hex(&user_key(), &v3_doc.as_bytes()[image_start..image_end]).unwrap();
    let signed_doc = v3_doc.replace(&m.signature, &sig);
    m.signature = sig;
    assert_eq!(
        verify_signature(signed_doc.as_bytes(), &m, &user_cert()).unwrap(),
        SignatureForm::Raw
    );
}

#[test]
fn tampered_size_fails_and_requoted_verifies_reserialized() {
    let cert = user_cert();
    let v1 = v1_text();
    let tampered = v1.replace("<size>67108864</size>", "<size>67108865</size>");
    let m = parse_str(&tampered).unwrap();
    let err = verify_signature(tampered.as_bytes(), &m, &cert).unwrap_err();
    assert!(
        matches!(err, ManifestError::SignatureMismatch { .. }),
        "{err}"
    );
    let requoted = v1.replace('\'', "\"");
    let m = parse_str(&requoted).unwrap();
    assert_eq!(
        verify_signature(requoted.as_bytes(), &m, &cert).unwrap(),
        SignatureForm::Reserialized
    );
    // Another certificate does not verify.
    let ec2_cert = Certificate::load(&testdata().join("keys/ec2-test-cert.pem")).unwrap();
    let m = parse_str(&v1).unwrap();
    assert!(verify_signature(v1.as_bytes(), &m, &ec2_cert).is_err());
    // A signature that is not hex is an error, not a mismatch.
    let zz = v1.replace(&m.signature, "zz");
    let bad = parse_str(&zz).unwrap();
    assert!(matches!(
        verify_signature(zz.as_bytes(), &bad, &cert).unwrap_err(),
        ManifestError::Verify { .. }
    ));
}

#[test]
fn strict_check_catches_bad_fields() {
    let mut base = v1_built();
    base.sign(&user_key()).unwrap();
    base.check_strict().unwrap();
    type Mutation = Box<dyn Fn(&mut Manifest)>;
    let cases: Vec<(&str, Mutation)> = vec![
        (
            "arch",
            Box::new(|m| m.machine.as_mut().unwrap().architecture = "sparc".into()),
        ),
        ("user", Box::new(|m| m.image.user = "12345678901".into())),
        ("name", Box::new(|m| m.image.name = "-bad".into())),
        ("digest", Box::new(|m| m.image.digest.truncate(39))),
        ("bundled", Box::new(|m| m.image.bundled_size = 251_470)),
        ("hex", Box::new(|m| m.image.ec2_encrypted_iv.push_str("0G"))),
        (
            "partname",
            Box::new(|m| m.image.parts[0].filename = "other.part.0".into()),
        ),
        (
            "version",
            Box::new(|m| m.version = ManifestVersion::V20070829),
        ),
    ];
    for (what, mutate) in cases {
        let mut m = base.clone();
        mutate(&mut m);
        assert!(m.check_strict().is_err(), "{what} not caught");
    }
    // arm64 is accepted, and so is a wider streaming-mode index width (§8.3).
    let mut m = base.clone();
    m.machine.as_mut().unwrap().architecture = "arm64".into();
    m.image.parts[0].filename = "small.img.part.000".into();
    m.check_strict().unwrap();
}

#[test]
fn bundle_name_rule() {
    for ok in [
        "a",
        "small.img",
        "my-server-2026",
        "A_b.c-9",
        &"x".repeat(100),
    ] {
        validate_bundle_name(ok).unwrap();
    }
    for bad in [
        "",
        ".hidden",
        "-x",
        "_x",
        "a/b",
        "a b",
        "ä",
        &"x".repeat(101),
        "a&b",
    ] {
        let err = validate_bundle_name(bad).unwrap_err();
        assert!(err.to_string().contains("1-100 characters"), "{bad}");
    }
}

#[test]
fn account_normalization() {
    assert_eq!(normalize_account("1234-5678-9012").unwrap(), "123456789012");
    assert_eq!(normalize_account("123456789012").unwrap(), "123456789012");
    for bad in [
        "12345678901",
        "1234567890123",
        "12345678901a",
        "abcd-efgh-ijkl",
        "",
    ] {
        assert!(matches!(
            normalize_account(bad).unwrap_err(),
            ManifestError::InvalidAccount { .. }
        ));
    }
}

#[test]
fn block_device_mapping_spec() {
    let m = parse_block_device_mapping(" ami=sda1 , root = /dev/sda1,swap=sda3").unwrap();
    assert_eq!(
        m,
        vec![
            Mapping {
                virtual_name: "ami".into(),
                device: "sda1".into()
            },
            Mapping {
                virtual_name: "root".into(),
                device: "/dev/sda1".into()
            },
            Mapping {
                virtual_name: "swap".into(),
                device: "sda3".into()
            },
        ]
    );
    for bad in [
        "",
        "ami",
        "ami=",
        "=sda1",
        "ami=sda1,",
        "a b=sda1",
        "ami=sd a1",
        "a=b=c",
    ] {
        assert!(
            matches!(
                parse_block_device_mapping(bad).unwrap_err(),
                ManifestError::BadMappingSpec { .. }
            ),
            "{bad:?}"
        );
    }
    assert!(matches!(
        parse_block_device_mapping("ami=sda1,ami=sdb").unwrap_err(),
        ManifestError::DuplicateMapping { .. }
    ));
}

/// The parts of a signed file around its signed pair: what comes before
/// `<machine_configuration>`, the machine configuration, the image, and what follows.
fn split_signed(raw: &str) -> (&str, &str, &str, &str) {
    let mc = raw.find("<machine_configuration>").unwrap();
    let img = raw.find("<image>").unwrap();
    let end = raw.find("</image>").unwrap() + "</image>".len();
    (&raw[..mc], &raw[mc..img], &raw[img..end], &raw[end..])
}

/// Hostile forms of a genuine signed manifest, as an attacker with the file (and the
/// user's public certificate) makes them: the genuine signed pair kept somewhere the
/// parser does not read (a comment, a processing instruction, an unknown element, second
/// place) with the attacker's own elements where it does, and other structures a signed
/// manifest never has.
fn hostile_variants(raw: &str) -> Vec<(String, &'static str)> {
    let (head, mc, image, tail) = split_signed(raw);
    let genuine = format!("{mc}{image}");
    // The attacker's image: another size (a stand-in for any field: a fresh key wrapped
    // to the user's public certificate, another digest), same signature.
    let forged_image = image.replacen("<size>", "<size>1", 1);
    let forged = format!("{mc}{forged_image}");
    let (sig_start, sig_end) = (
        tail.find("<signature>").unwrap(),
        tail.find("</signature>").unwrap() + "</signature>".len(),
    );
    let signature = &tail[sig_start..sig_end];
    vec![
        (
            format!("{head}<!--{genuine}-->{forged}{tail}"),
            "genuine pair in a comment before",
        ),
        (
            format!("{head}<?keep {genuine}?>{forged}{tail}"),
            "genuine pair in a PI before",
        ),
        (
            format!("{head}<junk>{genuine}</junk>{forged}{tail}"),
            "genuine pair in an unknown element",
        ),
        (
            format!("{head}{forged}<!--{genuine}-->{tail}"),
            "genuine pair in a comment after",
        ),
        (
            format!("{head}{forged}{genuine}{tail}"),
            "genuine pair second",
        ),
        (
            format!("{head}{genuine}{forged}{tail}"),
            "attacker's pair second",
        ),
        (
            format!("{head}{mc}{mc}{image}{tail}"),
            "machine_configuration twice",
        ),
        (
            format!("{head}{image}{mc}{tail}"),
            "image before machine_configuration",
        ),
        (
            format!("{head}{mc}<extra/>{image}{tail}"),
            "an unknown element between",
        ),
        (
            format!("{head}{genuine}<!-- note -->{tail}"),
            "a harmless-looking comment",
        ),
        (
            format!("{head}{genuine}{}</manifest>", signature).replacen(
                "<version>",
                "<?pi x?><version>",
                1,
            ),
            "a processing instruction at the top",
        ),
        (
            format!("{}{signature}{genuine}</manifest>", head),
            "signature before the signed elements",
        ),
        (
            format!("{head}{genuine}text{tail}"),
            "text between the elements",
        ),
    ]
}

#[test]
fn a_genuine_signed_pair_hidden_where_the_parser_does_not_read_vouches_for_nothing() {
    let cert = user_cert();
    for name in VECTORS {
        let raw = String::from_utf8(vector(name).raw).unwrap();
        for (text, what) in hostile_variants(&raw) {
            // Each one is a manifest the lenient parser reads: the refusal below is the
            // signature check's, not the parser's.
            let m = Manifest::parse(text.as_bytes())
                .unwrap_or_else(|e| panic!("{name}: {what}: the parser refused it: {e}"));
            let verdict = verify_signature(text.as_bytes(), &m, &cert);
            assert!(
                matches!(verdict, Err(ManifestError::SignedStructure { .. })),
                "{name}: {what}: {verdict:?}"
            );
        }
    }
}

#[test]
fn a_manifest_that_verifies_is_exactly_what_was_signed() {
    // Differential property: whatever the file, if its signature verifies, the elements
    // the parser read re-serialize to the bytes the key holder signed. Tried on the
    // reference vectors, their hostile forms, and seeded random edits of both (a byte
    // removed, doubled or changed; a span moved).
    let cert = user_cert();
    let mut rng: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move |n: usize| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        (rng % n as u64) as usize
    };
    let mut verified = 0;
    let mut tried = 0;
    for name in VECTORS {
        let raw = String::from_utf8(vector(name).raw).unwrap();
        let genuine = Manifest::parse(raw.as_bytes())
            .unwrap()
            .signed_bytes()
            .unwrap();
        let mut inputs: Vec<String> = vec![raw.clone()];
        inputs.extend(hostile_variants(&raw).into_iter().map(|(t, _)| t));
        for base in inputs.clone() {
            for _ in 0..150 {
                let mut b = base.clone().into_bytes();
                match next(4) {
                    0 => {
                        b.remove(next(b.len()));
                    }
                    1 => {
                        let i = next(b.len());
                        b.insert(i, b[i]);
                    }
                    2 => {
                        let i = next(b.len());
                        b[i] = b"<>/!-?abc 0'\"="[next(14)];
                    }
                    _ => {
                        let (i, len) = (next(b.len()), 1 + next(64));
                        let span: Vec<u8> = b.drain(i..(i + len).min(b.len())).collect();
                        let j = next(b.len() + 1);
                        b.splice(j..j, span);
                    }
                }
                if let Ok(t) = String::from_utf8(b) {
                    inputs.push(t);
                }
            }
        }
        for text in inputs {
            tried += 1;
            let Ok(m) = Manifest::parse(text.as_bytes()) else {
                continue;
            };
            if verify_signature(text.as_bytes(), &m, &cert).is_ok() {
                verified += 1;
                assert_eq!(m.signed_bytes().unwrap(), genuine, "{name}: {text}");
            }
        }
    }
    // The genuine files verify; most edits break the XML, the structure or the signature.
    assert!(verified >= VECTORS.len(), "{verified} of {tried}");
}

#[test]
fn the_manifest_checked_must_be_the_one_in_the_file() {
    let cert = user_cert();
    let raw = vector("v1-small-ext4").raw;
    let mut other = Manifest::parse(&raw).unwrap();
    other.image.name = "other.img".into();
    assert!(matches!(
        verify_signature(&raw, &other, &cert),
        Err(ManifestError::SignedStructure { .. })
    ));
}

#[test]
fn bundler_identity_follows_crate_version() {
    let b = Bundler::amibundle();
    assert_eq!(b.name, "amibundle");
    assert_eq!(
        format!("{}.{}", b.version, b.release),
        env!("CARGO_PKG_VERSION")
    );
}
