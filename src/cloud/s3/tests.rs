//! Unit tests of the S3 module that need no S3: locations, bucket names, error classification.

use super::*;

#[test]
fn locations_parse_like_ec2_upload_bundle() {
    let l = BundleLocation::parse("my-bucket").unwrap();
    assert_eq!((l.bucket.as_str(), l.prefix.as_str()), ("my-bucket", ""));
    let l = BundleLocation::parse("/my-bucket/a/b/").unwrap();
    assert_eq!(
        (l.bucket.as_str(), l.prefix.as_str()),
        ("my-bucket", "a/b/")
    );
    let l = BundleLocation::parse("s3://my-bucket/images").unwrap();
    assert_eq!(l.key("x.manifest.xml"), "images/x.manifest.xml");
    assert_eq!(
        l.image_location("x.manifest.xml"),
        "my-bucket/images/x.manifest.xml"
    );
    assert!(BundleLocation::parse("my-bucket/a//b").is_err());
    assert!(BundleLocation::parse("my-bucket/../b").is_err());
    assert!(BundleLocation::parse("My_Bucket").is_err());
}

#[test]
fn bucket_names_follow_s3_rules() {
    for ok in [
        "abc",
        "amibundle-123456789012-eu-west-1",
        "a.b-c",
        &"a".repeat(63),
    ] {
        assert!(validate_bucket_name(ok).is_ok(), "{ok}");
    }
    for bad in [
        "ab",
        &"a".repeat(64),
        "Abc",
        "a_b",
        "-ab",
        "ab-",
        "a..b",
        "a.-b",
        "192.168.5.4",
        "xn--abc",
        "abc-s3alias",
        "",
    ] {
        let err = validate_bucket_name(bad).unwrap_err().to_string();
        assert!(err.contains("not valid"), "{bad}: {err}");
    }
}

#[test]
fn default_bucket_is_per_account_and_region_and_valid() {
    let name = default_bucket_name("123456789012", "ap-southeast-2");
    assert_eq!(name, "amibundle-123456789012-ap-southeast-2");
    validate_bucket_name(&name).unwrap();
}

#[test]
fn legacy_locations_map_to_regions() {
    assert_eq!(crate::cloud::config::region_of_location(None), "us-east-1");
    assert_eq!(
        crate::cloud::config::region_of_location(Some("")),
        "us-east-1"
    );
    assert_eq!(
        crate::cloud::config::region_of_location(Some("US")),
        "us-east-1"
    );
    assert_eq!(
        crate::cloud::config::region_of_location(Some("EU")),
        "eu-west-1"
    );
    assert_eq!(
        crate::cloud::config::region_of_location(Some("eu-central-1")),
        "eu-central-1"
    );
}

#[test]
fn access_problems_are_classified() {
    let req = |code: Option<&str>, status| {
        S3Error::Request(Box::new(RequestFailure {
            action: "uploading",
            bucket: "b".into(),
            key: "k".into(),
            code: code.map(str::to_string),
            status,
            detail: String::new(),
            hint: String::new(),
        }))
    };
    assert!(S3Error::NotYours { bucket: "b".into() }.is_access_problem());
    assert!(S3Error::AclsDisabled { bucket: "b".into() }.is_access_problem());
    assert!(req(Some("AccessDenied"), Some(403)).is_access_problem());
    assert!(req(Some("AccessControlListNotSupported"), Some(400)).is_access_problem());
    assert!(req(None, Some(403)).is_access_problem());
    assert!(!req(Some("SlowDown"), Some(503)).is_access_problem());
    assert!(
        !S3Error::RegionMismatch {
            bucket: "b".into(),
            actual: "x".into(),
            wanted: "y".into()
        }
        .is_access_problem()
    );
}
