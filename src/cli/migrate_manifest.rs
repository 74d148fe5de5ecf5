//! `amibundle migrate-manifest`: re-wrap a local manifest for another region's EC2 certificate
//! and change its kernel/ramdisk, in place (the classic ec2-migrate-manifest,
//! docs/reference-behaviour.md §9.1, minus its defects: the EC2 side is really re-wrapped, and
//! nothing is looked up over SigV1).

use std::io::Read;
use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Args;
use serde_json::json;

use super::keys::{self, Ec2CertArgs, UserKeyArgs};
use super::output;
use crate::bundle::certs::{self, CertSearch, Ec2Cert};
use crate::bundle::crypto::Certificate;
use crate::bundle::manifest::MAX_MANIFEST_BYTES;
use crate::bundle::migrate::{self, Changes, IdChange};

/// Arguments of `migrate-manifest`.
#[derive(Debug, Args)]
pub struct MigrateManifestArgs {
    /// The manifest to migrate; rewritten in place, the original kept as PATH.bak
    #[arg(short = 'm', long = "manifest", value_name = "PATH")]
    pub manifest: PathBuf,
    #[command(flatten)]
    pub keys: UserKeyArgs,
    #[command(flatten)]
    pub ec2: Ec2CertArgs,
    /// Region the bundle moves to; picks its EC2 certificate (needed unless --ec2cert)
    #[arg(long, value_name = "REGION", required_unless_present = "ec2cert")]
    pub region: Option<String>,
    /// Kernel id to write (kernel ids differ per region)
    #[arg(long, value_name = "AKI")]
    pub kernel: Option<String>,
    /// Ramdisk id to write (ramdisk ids differ per region)
    #[arg(long, value_name = "ARI")]
    pub ramdisk: Option<String>,
    /// Remove the kernel and ramdisk ids that --kernel/--ramdisk do not replace (they are
    /// never mapped to the target region automatically)
    #[arg(long)]
    pub no_mapping: bool,
    /// Do not keep the original manifest as PATH.bak
    #[arg(long)]
    pub no_backup: bool,
    /// Print the result as JSON on stdout
    #[arg(long)]
    pub json: bool,
}

/// The change for one id: the flag's value, else removal with --no-mapping, else keep.
fn change(value: &Option<String>, no_mapping: bool) -> IdChange {
    match (value, no_mapping) {
        (Some(id), _) => IdChange::Set(id.clone()),
        (None, true) => IdChange::Remove,
        (None, false) => IdChange::Keep,
    }
}

/// The EC2 certificate for `region` (docs/format.md §11), or the explicit one.
fn ec2_cert(args: &Ec2CertArgs, region: Option<&str>) -> anyhow::Result<(Ec2Cert, Certificate)> {
    let found = match (region, &args.ec2cert) {
        (Some(region), _) => {
            let search = CertSearch::from_env(args.ec2cert.clone(), args.unpinned_ec2cert);
            certs::resolve_for_region(&search, region)?
        }
        (None, Some(path)) => certs::resolve_explicit_path(path, args.unpinned_ec2cert)?,
        (None, None) => bail!(
            "pass --region (the region the bundle moves to) or --ec2cert: the EC2 side must be wrapped for the target's certificate"
        ),
    };
    let cert = Certificate::from_der(&found.x509.to_der()?)?;
    Ok((found, cert))
}

/// Runs `migrate-manifest`.
pub fn run(args: MigrateManifestArgs) -> anyhow::Result<()> {
    let path = &args.manifest;
    let mut raw = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_MANIFEST_BYTES as u64 + 1).read_to_end(&mut raw))
        .with_context(|| format!("reading manifest {}", path.display()))?;
    let (user_key, user_cert, _) = keys::load_identity(&args.keys)?;
    let (found, ec2_cert) = ec2_cert(&args.ec2, args.region.as_deref())?;
    let changes = Changes {
        kernel: change(&args.kernel, args.no_mapping),
        ramdisk: change(&args.ramdisk, args.no_mapping),
    };
    let (manifest, xml, _) = migrate::migrate(&raw, &user_key, &user_cert, &ec2_cert, &changes)
        .with_context(|| format!("migrating manifest {}", path.display()))?;
    if let Some(machine) = &manifest.machine {
        for (what, id, flag, kept) in [
            ("kernel", &machine.kernel_id, "--kernel", &args.kernel),
            ("ramdisk", &machine.ramdisk_id, "--ramdisk", &args.ramdisk),
        ] {
            if let (Some(id), None) = (id, kept) {
                tracing::warn!(
                    "{what} {id} was kept as it is; {what} ids differ per region: pass {flag} with the id in the target region, or --no-mapping to remove it"
                );
            }
        }
    }
    let backup = migrate::replace_manifest_file(path, xml.as_bytes(), !args.no_backup)?;
    let machine = manifest.machine.as_ref();
    if args.json {
        output::print_json(&json!({
            "version": 1,
            "command": "migrate-manifest",
            "manifest": path.display().to_string(),
            "backup": backup.as_ref().map(|b| b.display().to_string()),
            "region": args.region,
            "ec2_cert": {
                "path": found.path.display().to_string(),
                "pinned": found.kind.map(|k| k.file_name()),
                "sha256": found.fingerprints.sha256_hex(),
            },
            "kernel_id": machine.and_then(|m| m.kernel_id.clone()),
            "ramdisk_id": machine.and_then(|m| m.ramdisk_id.clone()),
        }))?;
    } else {
        let kept = backup
            .as_ref()
            .map(|b| format!("; the original is kept as {}", b.display()))
            .unwrap_or_default();
        eprintln!(
            "re-wrapped the EC2 side for {} and re-signed{kept}",
            found.path.display()
        );
        println!("{}", path.display());
    }
    Ok(())
}
