//! Where a bundle lives: [`BundleLocation`] (a bucket and key prefix, parsed as
//! ec2-upload-bundle does), S3's bucket naming rules and the default bucket name.

use super::S3Error;

/// A bucket and key prefix (`""` or ending in `/`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BundleLocation {
    /// Bucket name.
    pub bucket: String,
    /// Key prefix, empty or ending with `/`.
    pub prefix: String,
}

impl BundleLocation {
    /// Parses `bucket`, `bucket/some/prefix` or `s3://bucket/some/prefix` (leading and trailing
    /// slashes ignored, as ec2-upload-bundle does).
    pub fn parse(text: &str) -> Result<Self, S3Error> {
        let rest = text.strip_prefix("s3://").unwrap_or(text).trim_matches('/');
        let (bucket, prefix) = match rest.split_once('/') {
            Some((b, p)) => (b, p.trim_matches('/')),
            None => (rest, ""),
        };
        validate_bucket_name(bucket)?;
        if prefix
            .split('/')
            .any(|seg| seg.is_empty() && !prefix.is_empty() || seg == "." || seg == "..")
        {
            return Err(S3Error::BadPrefix(prefix.to_string()));
        }
        let prefix = if prefix.is_empty() {
            String::new()
        } else {
            format!("{prefix}/")
        };
        Ok(Self {
            bucket: bucket.to_string(),
            prefix,
        })
    }

    /// Parses the manifest's address `[s3://]BUCKET/[PREFIX/]NAME.manifest.xml` into its
    /// location and file name.
    pub fn parse_manifest_url(url: &str) -> Result<(Self, String), S3Error> {
        let rest = url.strip_prefix("s3://").unwrap_or(url);
        match rest.rsplit_once('/') {
            Some((dir, file))
                if file.len() > ".manifest.xml".len() && file.ends_with(".manifest.xml") =>
            {
                Ok((Self::parse(dir)?, file.to_string()))
            }
            _ => Err(S3Error::BadManifestUrl(url.to_string())),
        }
    }

    /// The key of a file of the bundle.
    pub fn key(&self, file_name: &str) -> String {
        format!("{}{}", self.prefix, file_name)
    }

    /// RegisterImage's `ImageLocation`: `bucket/prefix/name.manifest.xml`, no scheme.
    pub fn image_location(&self, manifest_name: &str) -> String {
        format!("{}/{}", self.bucket, self.key(manifest_name))
    }
}

impl std::fmt::Display for BundleLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "s3://{}/{}", self.bucket, self.prefix)
    }
}

/// S3's bucket naming rules for new buckets (general purpose buckets), so a bad name is refused
/// before any request: 3–63 characters of `[a-z0-9.-]`, starting and ending with a letter or
/// digit, no `..`, not shaped like an IP address, none of the reserved prefixes and suffixes.
pub fn validate_bucket_name(name: &str) -> Result<(), S3Error> {
    let bad = |why: &str| {
        Err(S3Error::BadBucketName {
            name: name.to_string(),
            why: why.to_string(),
        })
    };
    if !(3..=63).contains(&name.len()) {
        return bad("it must be 3 to 63 characters long");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-')
    {
        return bad("only lowercase letters, digits, '.' and '-' are allowed");
    }
    let first = name.as_bytes()[0];
    let last = name.as_bytes()[name.len() - 1];
    if !first.is_ascii_alphanumeric() || !last.is_ascii_alphanumeric() {
        return bad("it must start and end with a letter or digit");
    }
    if name.contains("..") || name.contains(".-") || name.contains("-.") {
        return bad("'..', '.-' and '-.' are not allowed");
    }
    if name.split('.').count() == 4 && name.split('.').all(|p| p.parse::<u8>().is_ok()) {
        return bad("it must not look like an IP address");
    }
    for prefix in ["xn--", "sthree-", "amzn-s3-demo-"] {
        if name.starts_with(prefix) {
            return bad("that prefix is reserved by AWS");
        }
    }
    for suffix in ["-s3alias", "--ol-s3", ".mrap", "--x-s3", "--table-s3"] {
        if name.ends_with(suffix) {
            return bad("that suffix is reserved by AWS");
        }
    }
    Ok(())
}

/// The bucket amibundle uses when none is given: unique per account and region, and stable so
/// re-runs find it again.
pub fn default_bucket_name(account: &str, region: &str) -> String {
    format!("amibundle-{account}-{region}")
}
