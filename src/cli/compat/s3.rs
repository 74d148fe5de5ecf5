//! `ec2-upload-bundle`, `ec2-download-bundle`, `ec2-delete-bundle`: the classic S3 flags
//! (credentials, `--region`, `--location`, `--url`, `--sigv`, `--retry`) → `upload`, `download`,
//! `delete`.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{Args, Parser};

use super::{Argv, Common, Credentials, Outcome, Refusal, Secret, Tool, parse_with, require};

/// The S3 options every classic S3 tool has.
#[derive(Debug, Args)]
pub(crate) struct S3Opts {
    /// Bucket and optional key prefix, BUCKET[/PREFIX]
    #[arg(short = 'b', long = "bucket", value_name = "BUCKET[/PREFIX]")]
    pub bucket: Option<String>,
    /// Access key id (default: the instance role's, or the usual AWS credential chain)
    #[arg(short = 'a', long = "access-key", value_name = "ID", value_parser = super::secret)]
    pub access_key: Option<Secret>,
    /// Secret access key
    #[arg(short = 's', long = "secret-key", value_name = "SECRET", value_parser = super::secret)]
    pub secret_key: Option<Secret>,
    /// Session token of temporary credentials
    #[arg(short = 't', long = "delegation-token", value_name = "TOKEN", value_parser = super::secret)]
    pub delegation_token: Option<Secret>,
    /// S3 endpoint (deprecated; also for S3-compatible stores and emulators)
    #[arg(long, value_name = "URL")]
    pub url: Option<String>,
    /// Region of the bucket
    #[arg(long, value_name = "REGION")]
    pub region: Option<String>,
    /// Bucket location: EU, US or a region name
    #[arg(long, value_name = "LOCATION")]
    pub location: Option<String>,
    /// Signature version: accepted; amibundle always signs with SigV4
    #[arg(long, value_name = "VERSION", value_parser = ["2", "4"])]
    pub sigv: Option<String>,
    /// Retry failed requests (amibundle always retries, with back-off)
    #[arg(long)]
    pub retry: bool,
}

/// The region a classic `--location` means: `EU` is eu-west-1, `US` (or empty) us-east-1 (no
/// location constraint), anything else is a region name.
pub(crate) fn location_region(location: &str) -> String {
    match location.trim() {
        l if l.eq_ignore_ascii_case("EU") => "eu-west-1".to_string(),
        l if l.eq_ignore_ascii_case("US") || l.is_empty() => "us-east-1".to_string(),
        l => l.to_ascii_lowercase(),
    }
}

/// The region a classic S3 URL names (docs/reference-behaviour.md §10): `s3.amazonaws.com` and
/// `s3-external-1` are us-east-1, `s3-REGION.…` and `s3.REGION.amazonaws.com` name theirs; any
/// other host (an emulator, another store) names none.
pub(crate) fn url_region(url: &str) -> Option<String> {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let host = rest.split(['/', ':']).next()?.to_ascii_lowercase();
    if !host.ends_with(".amazonaws.com") && !host.ends_with(".amazonaws.com.cn") {
        return None;
    }
    let labels: Vec<&str> = host.split('.').collect();
    match labels.as_slice() {
        ["s3", "amazonaws", "com"] | ["s3-external-1", ..] => Some("us-east-1".to_string()),
        [first, ..] if first.starts_with("s3-") => Some(first["s3-".len()..].to_string()),
        ["s3", region, _, ..] => Some((*region).to_string()),
        _ => None,
    }
}

impl S3Opts {
    /// Adds region and endpoint flags; returns the credentials (kept out of the argv).
    pub(super) fn push(
        &self,
        out: &mut Argv,
        notes: &mut Vec<String>,
    ) -> Result<Credentials, Refusal> {
        let from_location = self.location.as_deref().map(location_region);
        let region = match (&self.region, &from_location) {
            (Some(r), Some(l)) if !r.eq_ignore_ascii_case(l) => {
                return Err(Refusal::Message(format!(
                    "--region {r} and --location {} name different regions: give one",
                    self.location.as_deref().unwrap_or_default()
                )));
            }
            (Some(r), _) => Some(r.clone()),
            (None, Some(l)) => Some(l.clone()),
            (None, None) => self.url.as_deref().and_then(url_region),
        };
        out.opt_if("--region", &region);
        if let Some(url) = &self.url {
            // Path-style: the classic tools addressed a custom endpoint that way, and an IP
            // endpoint (an emulator) cannot take the bucket as a host name.
            out.opt("--s3-endpoint-url", url).flag("--path-style");
        }
        if self.sigv.as_deref() == Some("2") {
            notes.push(
                "--sigv 2 accepted: amibundle signs every request with Signature Version 4 (S3 \
                 no longer accepts version 2)"
                    .to_string(),
            );
        }
        let credentials = Credentials {
            access_key: self.access_key.clone(),
            secret_key: self.secret_key.clone(),
            session_token: self.delegation_token.clone(),
        };
        match (&credentials.access_key, &credentials.secret_key) {
            (Some(_), None) => {
                return Err(Refusal::Message(
                    "-a/--access-key was given without -s/--secret-key: pass both, or neither to \
                     use the instance role"
                        .to_string(),
                ));
            }
            (None, Some(_)) => {
                return Err(Refusal::Message(
                    "-s/--secret-key was given without -a/--access-key: pass both, or neither to \
                     use the instance role"
                        .to_string(),
                ));
            }
            (None, None) if credentials.session_token.is_some() => {
                return Err(Refusal::Message(
                    "-t/--delegation-token was given without -a and -s: pass the access key and \
                     secret key it belongs to"
                        .to_string(),
                ));
            }
            _ => {}
        }
        if let Some(key) = &credentials.access_key
            && key.expose().starts_with("ASIA")
            && credentials.session_token.is_none()
        {
            // Never echo the key: say only what kind it is.
            return Err(Refusal::Message(
                "the access key given with -a is a temporary one (ASIA...: an assumed role or \
                 SSO) and needs its session token: add -t TOKEN (in Packer's \
                 bundle_upload_command: -t {{.Token}}), or leave out -a/-s to use the instance \
                 role"
                    .to_string(),
            ));
        }
        Ok(credentials)
    }
}

/// ec2-upload-bundle: upload a bundle to S3.
#[derive(Debug, Parser)]
#[command(disable_version_flag = true, max_term_width = 80)]
pub(crate) struct Upload {
    #[command(flatten)]
    pub common: Common,
    #[command(flatten)]
    pub s3: S3Opts,
    /// The local manifest
    #[arg(short = 'm', long = "manifest", value_name = "PATH")]
    pub manifest: Option<PathBuf>,
    /// Directory holding the parts (default: the manifest's)
    #[arg(short = 'd', long = "directory", value_name = "DIR")]
    pub directory: Option<PathBuf>,
    /// Canned ACL of every object
    #[arg(long, value_name = "ACL", default_value = crate::cloud::s3::DEFAULT_ACL,
          value_parser = crate::cloud::s3::ACLS)]
    pub acl: String,
    /// Upload only the parts from this index on
    #[arg(long, value_name = "N")]
    pub part: Option<u32>,
    /// Do not upload the manifest
    #[arg(long)]
    pub skipmanifest: bool,
}

/// Translates an `ec2-upload-bundle` command line.
pub(crate) fn upload(argv: Vec<OsString>) -> Result<Outcome, Refusal> {
    let tool = Tool::UploadBundle;
    let a: Upload = parse_with(tool, argv)?;
    if let Some(text) = a.common.print(tool) {
        return Ok(Outcome::Print(text));
    }
    let bucket = require(&a.s3.bucket, "-b/--bucket")?;
    let manifest = require(&a.manifest, "-m/--manifest")?;
    let mut notes = Vec::new();
    let mut out = Argv::new(tool, &a.common);
    out.opt("--manifest", manifest)
        .opt("--bucket", bucket)
        .opt_if("--directory", &a.directory)
        .opt("--acl", &a.acl)
        .opt_if("--part", &a.part.map(|p| p.to_string()))
        .flag_if("--skip-manifest", a.skipmanifest);
    let credentials = a.s3.push(&mut out, &mut notes)?;
    Ok(out.done(credentials, notes))
}

/// ec2-download-bundle: download a bundle from S3.
#[derive(Debug, Parser)]
#[command(disable_version_flag = true, max_term_width = 80)]
pub(crate) struct Download {
    #[command(flatten)]
    pub common: Common,
    #[command(flatten)]
    pub s3: S3Opts,
    /// User private key: accepted, not needed (manifests are not encrypted)
    #[arg(short = 'k', long = "privatekey", value_name = "PATH")]
    pub privatekey: Option<PathBuf>,
    /// Manifest name in the bucket
    #[arg(
        short = 'm',
        long = "manifest",
        value_name = "NAME",
        conflicts_with = "prefix"
    )]
    pub manifest: Option<String>,
    /// Bundle name: downloads PREFIX.manifest.xml
    #[arg(short = 'p', long = "prefix", value_name = "NAME")]
    pub prefix: Option<String>,
    /// Directory to download into
    #[arg(
        short = 'd',
        long = "directory",
        value_name = "DIR",
        default_value = "."
    )]
    pub directory: PathBuf,
}

/// Translates an `ec2-download-bundle` command line.
pub(crate) fn download(argv: Vec<OsString>) -> Result<Outcome, Refusal> {
    let tool = Tool::DownloadBundle;
    let a: Download = parse_with(tool, argv)?;
    if let Some(text) = a.common.print(tool) {
        return Ok(Outcome::Print(text));
    }
    let bucket = require(&a.s3.bucket, "-b/--bucket")?;
    let mut notes = Vec::new();
    if a.privatekey.is_some() {
        notes.push(
            "-k is not needed to download (amibundle reads only unencrypted manifests); use it \
             with ec2-unbundle"
                .to_string(),
        );
    }
    let manifest = manifest_name(a.manifest.as_deref(), a.prefix.as_deref());
    let mut out = Argv::new(tool, &a.common);
    out.opt("--bucket", bucket)
        .opt("--manifest", manifest)
        .opt("--directory", &a.directory);
    let credentials = a.s3.push(&mut out, &mut notes)?;
    Ok(out.done(credentials, notes))
}

/// `-m NAME`, else `PREFIX.manifest.xml` (prefix default `image`).
fn manifest_name(manifest: Option<&str>, prefix: Option<&str>) -> String {
    match manifest {
        Some(m) => m.to_string(),
        None => format!("{}.manifest.xml", prefix.unwrap_or("image")),
    }
}

/// ec2-delete-bundle: delete a bundle from S3.
#[derive(Debug, Parser)]
#[command(disable_version_flag = true, max_term_width = 80)]
pub(crate) struct Delete {
    #[command(flatten)]
    pub common: Common,
    #[command(flatten)]
    pub s3: S3Opts,
    /// The manifest (a local file, or its name in the bucket)
    #[arg(
        short = 'm',
        long = "manifest",
        value_name = "PATH",
        conflicts_with = "prefix"
    )]
    pub manifest: Option<String>,
    /// Bundle name: deletes PREFIX.manifest.xml and every PREFIX.part.N the bucket holds
    /// (parts without a manifest too), after listing them and asking
    #[arg(short = 'p', long = "prefix", value_name = "NAME")]
    pub prefix: Option<String>,
    /// Then delete the bucket if it is empty
    #[arg(long)]
    pub clear: bool,
    /// Delete without asking (-p)
    #[arg(short = 'y', long = "yes")]
    pub yes: bool,
}

/// Translates an `ec2-delete-bundle` command line.
pub(crate) fn delete(argv: Vec<OsString>) -> Result<Outcome, Refusal> {
    let tool = Tool::DeleteBundle;
    let a: Delete = parse_with(tool, argv)?;
    if let Some(text) = a.common.print(tool) {
        return Ok(Outcome::Print(text));
    }
    let bucket = require(&a.s3.bucket, "-b/--bucket")?;
    if a.manifest.is_none() && a.prefix.is_none() {
        return Err(Refusal::Message(
            "give the bundle to delete: -m MANIFEST or -p PREFIX".to_string(),
        ));
    }
    let mut notes = Vec::new();
    let mut out = Argv::new(tool, &a.common);
    out.opt("--bucket", bucket);
    match (&a.manifest, &a.prefix) {
        (Some(manifest), _) => out.opt("--manifest", manifest),
        // As the reference: the bucket is listed and NAME.manifest.xml and every NAME.part.N
        // deleted, parts without a manifest too; asked first unless --yes or --batch.
        (None, Some(prefix)) => out
            .opt("--prefix", prefix)
            .flag_if("--yes", a.yes || a.common.batch),
        (None, None) => unreachable!("checked above"),
    };
    out.flag_if("--clear", a.clear);
    let credentials = a.s3.push(&mut out, &mut notes)?;
    Ok(out.done(credentials, notes))
}
