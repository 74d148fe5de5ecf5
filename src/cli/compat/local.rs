//! `ec2-unbundle` and `ec2-migrate-manifest`: the classic flags → `unbundle`,
//! `migrate-manifest`.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::Parser;

use super::{Argv, Common, Credentials, Outcome, Refusal, Secret, Tool, parse_with, require};

/// ec2-unbundle: rebuild the image from a bundle.
#[derive(Debug, Parser)]
#[command(disable_version_flag = true, max_term_width = 80)]
pub(crate) struct Unbundle {
    #[command(flatten)]
    pub common: Common,
    /// User private key
    #[arg(short = 'k', long = "privatekey", value_name = "PATH")]
    pub privatekey: Option<PathBuf>,
    /// The manifest
    #[arg(short = 'm', long = "manifest", value_name = "PATH")]
    pub manifest: Option<PathBuf>,
    /// Directory holding the parts
    #[arg(short = 's', long = "source", value_name = "DIR", default_value = ".")]
    pub source: PathBuf,
    /// Directory to write the image to
    #[arg(
        short = 'd',
        long = "destination",
        value_name = "DIR",
        default_value = "."
    )]
    pub destination: PathBuf,
}

/// Translates an `ec2-unbundle` command line.
pub(crate) fn unbundle(argv: Vec<OsString>) -> Result<Outcome, Refusal> {
    let tool = Tool::Unbundle;
    let a: Unbundle = parse_with(tool, argv)?;
    if let Some(text) = a.common.print(tool) {
        return Ok(Outcome::Print(text));
    }
    let key = require(&a.privatekey, "-k/--privatekey")?;
    let manifest = require(&a.manifest, "-m/--manifest")?;
    let mut out = Argv::new(tool, &a.common);
    out.opt("--manifest", manifest)
        .opt("--privatekey", key)
        .flag("--allow-insecure-key")
        .opt("--source", &a.source)
        .opt("--destination", &a.destination);
    Ok(out.done(Credentials::default(), Vec::new()))
}

/// ec2-migrate-manifest: re-wrap and re-sign a manifest for another region.
#[derive(Debug, Parser)]
#[command(disable_version_flag = true, max_term_width = 80)]
pub(crate) struct MigrateManifest {
    #[command(flatten)]
    pub common: Common,
    /// User X.509 certificate
    #[arg(short = 'c', long = "cert", value_name = "PATH")]
    pub cert: Option<PathBuf>,
    /// User private key
    #[arg(short = 'k', long = "privatekey", value_name = "PATH")]
    pub privatekey: Option<PathBuf>,
    /// The manifest
    #[arg(short = 'm', long = "manifest", value_name = "PATH")]
    pub manifest: Option<PathBuf>,
    /// Access key id: accepted, not needed (no EC2 request is made)
    #[arg(short = 'a', long = "access-key", value_name = "ID", value_parser = super::secret)]
    pub access_key: Option<Secret>,
    /// Secret access key: accepted, not needed
    #[arg(short = 's', long = "secret-key", value_name = "SECRET", value_parser = super::secret)]
    pub secret_key: Option<Secret>,
    /// The region the bundle moves to
    #[arg(long, value_name = "REGION")]
    pub region: Option<String>,
    #[command(flatten)]
    pub target: Retarget,
}

/// How ec2-migrate-manifest and ec2-migrate-bundle retarget a manifest to another region.
#[derive(Debug, clap::Args)]
pub(crate) struct Retarget {
    /// Kernel id in the target region (the manifest's is never mapped)
    #[arg(long, value_name = "ID")]
    pub kernel: Option<String>,
    /// Ramdisk id in the target region
    #[arg(long, value_name = "ID")]
    pub ramdisk: Option<String>,
    /// Do not map kernel and ramdisk (amibundle never maps them: those not given are removed)
    #[arg(long)]
    pub no_mapping: bool,
    /// EC2 certificate of the target region (default: its pinned one)
    #[arg(long, value_name = "PATH")]
    pub ec2cert: Option<PathBuf>,
    /// amibundle: accept an --ec2cert that is none of Amazon's (test setups only)
    #[arg(long)]
    pub unpinned_ec2cert: bool,
}

/// Translates an `ec2-migrate-manifest` command line.
pub(crate) fn migrate_manifest(argv: Vec<OsString>) -> Result<Outcome, Refusal> {
    let tool = Tool::MigrateManifest;
    let a: MigrateManifest = parse_with(tool, argv)?;
    if let Some(text) = a.common.print(tool) {
        return Ok(Outcome::Print(text));
    }
    let manifest = require(&a.manifest, "-m/--manifest")?;
    let mut notes = Vec::new();
    if a.access_key.is_some() || a.secret_key.is_some() {
        notes.push(
            "-a/-s are not needed: amibundle maps nothing through the EC2 API (give --kernel and \
             --ramdisk yourself)"
                .to_string(),
        );
    }
    let mut out = Argv::new(tool, &a.common);
    out.opt("--manifest", manifest)
        .opt_if("--cert", &a.cert)
        .opt_if("--privatekey", &a.privatekey)
        .flag_if("--allow-insecure-key", a.privatekey.is_some())
        .opt_if("--region", &a.region)
        .opt_if("--kernel", &a.target.kernel)
        .opt_if("--ramdisk", &a.target.ramdisk)
        .flag_if("--no-mapping", a.target.no_mapping)
        .opt_if("--ec2cert", &a.target.ec2cert)
        .flag_if("--unpinned-ec2cert", a.target.unpinned_ec2cert);
    Ok(out.done(Credentials::default(), notes))
}
