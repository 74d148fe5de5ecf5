//! `ec2-migrate-bundle` (deprecated by Amazon already in 1.5.3, still in scripts): a bundle
//! copied from one bucket into a bucket of another region, its manifest re-wrapped for that
//! region's EC2 certificate, not registered → `copy --image-location … --no-register`.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::Parser;

use super::local::Retarget;
use super::s3::{S3Opts, location_region};
use super::{Argv, Common, Outcome, Refusal, Tool, parse_with, require};

/// ec2-migrate-bundle: copy a bundle to a bucket in another region.
#[derive(Debug, Parser)]
#[command(disable_version_flag = true, max_term_width = 80)]
pub(crate) struct MigrateBundle {
    #[command(flatten)]
    pub common: Common,
    /// The source bucket and its prefix (-b) and the S3 options; --location (or --region) is
    /// the destination's region
    #[command(flatten)]
    pub s3: S3Opts,
    /// User X.509 certificate (checks the source manifest's signature)
    #[arg(short = 'c', long = "cert", value_name = "PATH")]
    pub cert: Option<PathBuf>,
    /// User private key (re-signs the manifest)
    #[arg(short = 'k', long = "privatekey", value_name = "PATH")]
    pub privatekey: Option<PathBuf>,
    /// Manifest name in the source bucket (NAME.manifest.xml)
    #[arg(short = 'm', long = "manifest", value_name = "NAME")]
    pub manifest: Option<String>,
    /// Destination bucket and optional prefix, BUCKET[/PREFIX]
    #[arg(
        short = 'd',
        long = "destination-bucket",
        value_name = "BUCKET[/PREFIX]"
    )]
    pub destination_bucket: Option<String>,
    /// Canned ACL of the copied objects
    #[arg(long, value_name = "ACL", default_value = "aws-exec-read")]
    pub acl: String,
    /// The kernel, ramdisk and EC2 certificate of the destination (a kernel makes the copy
    /// paravirtual)
    #[command(flatten)]
    pub target: Retarget,
}

/// Translates an `ec2-migrate-bundle` command line.
pub(crate) fn migrate_bundle(argv: Vec<OsString>) -> Result<Outcome, Refusal> {
    let tool = Tool::MigrateBundle;
    let a: MigrateBundle = parse_with(tool, argv)?;
    if let Some(text) = a.common.print(tool) {
        return Ok(Outcome::Print(text));
    }
    let cert = require(&a.cert, "-c/--cert")?;
    let key = require(&a.privatekey, "-k/--privatekey")?;
    let manifest = require(&a.manifest, "-m/--manifest")?;
    let source = require(&a.s3.bucket, "-b/--bucket")?;
    let destination = require(&a.destination_bucket, "-d/--destination-bucket")?;
    if manifest.contains('/') || !manifest.ends_with(".manifest.xml") {
        return Err(Refusal::Message(format!(
            "-m/--manifest {manifest:?} must be the manifest's name in the bucket, \
             NAME.manifest.xml (its prefix goes in -b BUCKET/PREFIX)"
        )));
    }
    let target =
        a.s3.region
            .clone()
            .or_else(|| a.s3.location.as_deref().map(location_region))
            .ok_or_else(|| {
                Refusal::Message(
                    "give the destination's region: --location (EU, US or a region name) or \
                 --region"
                        .to_string(),
                )
            })?;
    let mut notes = Vec::new();
    let mut out = Argv::new(tool, &a.common);
    out.opt(
        "--image-location",
        format!("{}/{manifest}", source.trim_end_matches('/')),
    )
    .opt("--to-region", &target)
    .opt("--bucket-template", destination)
    .opt("--cert", cert)
    .opt("--privatekey", key)
    .flag("--allow-insecure-key")
    .opt("--acl", &a.acl)
    .flag("--no-register")
    .opt_if("--kernel-id", &a.target.kernel)
    .opt_if("--ramdisk-id", &a.target.ramdisk)
    .flag_if("--unpinned-ec2cert", a.target.unpinned_ec2cert);
    if a.target.kernel.is_some() || a.target.ramdisk.is_some() {
        out.opt("--virtualization-type", "paravirtual");
    }
    if let Some(path) = &a.target.ec2cert {
        let mut spec = OsString::from(format!("{target}="));
        spec.push(path);
        out.opt("--ec2cert", spec);
    }
    let credentials = a.s3.push(&mut out, &mut notes)?;
    Ok(out.done(credentials, notes))
}
