//! `amibundle certs`: which EC2 certificate each region would use; `certs install --from ZIP`.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};
use serde_json::json;

use super::output;
use crate::bundle::certs::{self, CertSearch};

/// Regions shown by default: one of each partition and the regions whose certificate is unknown.
const DEFAULT_REGIONS: [&str; 6] = [
    "us-east-1",
    "eu-west-1",
    "us-gov-west-1",
    "cn-north-1",
    "us-gov-east-1",
    "cn-northwest-1",
];

/// Arguments of `certs`.
#[derive(Debug, Args)]
pub struct CertsArgs {
    /// What to do (default: show)
    #[command(subcommand)]
    pub action: Option<CertsAction>,
    /// Regions to show (default: one per partition plus the unknown ones)
    #[arg(long, value_name = "REGION", value_delimiter = ',')]
    pub region: Vec<String>,
    /// Print the result as JSON on stdout
    #[arg(long)]
    pub json: bool,
}

/// `certs` subcommands.
#[derive(Debug, Subcommand)]
pub enum CertsAction {
    /// Install the EC2 certificates from Amazon's official ec2-ami-tools zip into the cache
    Install(InstallArgs),
}

/// Arguments of `certs install`.
#[derive(Debug, Args)]
pub struct InstallArgs {
    /// The ec2-ami-tools zip from AWS: s3.amazonaws.com/ec2-downloads/ec2-ami-tools.zip
    #[arg(long = "from", value_name = "ZIP")]
    pub from: PathBuf,
    /// Cache directory (default: /var/cache/amibundle/ec2-certs as root, else
    /// ~/.cache/amibundle/ec2-certs)
    #[arg(long, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Print the result as JSON on stdout
    #[arg(long)]
    pub json: bool,
}

/// Runs `certs`.
pub fn run(args: CertsArgs) -> anyhow::Result<()> {
    match args.action {
        Some(CertsAction::Install(install)) => run_install(install),
        None => show(&args.region, args.json),
    }
}

fn show(regions: &[String], json_out: bool) -> anyhow::Result<()> {
    let search = CertSearch::from_env(None, false);
    let regions: Vec<&str> = if regions.is_empty() {
        DEFAULT_REGIONS.to_vec()
    } else {
        regions.iter().map(String::as_str).collect()
    };
    let rows = certs::describe(&search, &regions);
    if json_out {
        let items: Vec<_> = rows
            .iter()
            .map(|(region, found)| match found {
                Ok(c) => json!({
                    "region": region,
                    "certificate": c.kind.map(|k| k.file_name()),
                    "path": c.path,
                    "source": c.source.to_string(),
                    "sha256": c.fingerprints.sha256_hex(),
                }),
                Err(e) => json!({"region": region, "error": crate::bundle::error_chain(e)}),
            })
            .collect();
        output::print_json(&json!({"version": 1, "command": "certs", "regions": items}))?;
        return Ok(());
    }
    println!("cache: {}", search.cache_dir.display());
    for (region, found) in rows {
        match found {
            Ok(c) => println!(
                "{region:<16} {} from {} ({})",
                c.kind
                    .map(|k| k.file_name())
                    .unwrap_or("unpinned certificate"),
                c.path.display(),
                c.source
            ),
            Err(e) => println!("{region:<16} none: {}", crate::bundle::error_chain(&e)),
        }
    }
    Ok(())
}

fn run_install(args: InstallArgs) -> anyhow::Result<()> {
    let cache = args.cache_dir.unwrap_or_else(certs::default_cache_dir);
    let report = certs::install_from_zip(&args.from, &cache)
        .with_context(|| format!("installing EC2 certificates from {}", args.from.display()))?;
    if args.json {
        let installed: Vec<_> = report
            .installed
            .iter()
            .map(|c| json!({"certificate": c.kind.file_name(), "path": c.path, "entry": c.entry}))
            .collect();
        let skipped: Vec<_> = report
            .skipped
            .iter()
            .map(|s| json!({"entry": s.entry, "reason": s.reason.to_string()}))
            .collect();
        output::print_json(
            &json!({"version": 1, "command": "certs install", "installed": installed, "skipped": skipped}),
        )?;
    } else {
        for c in &report.installed {
            println!("installed {} ({})", c.path.display(), c.kind.file_name());
        }
        for s in &report.skipped {
            eprintln!("skipped {}: {}", s.entry, s.reason);
        }
    }
    if report.installed.is_empty() {
        anyhow::bail!(
            "{} holds no EC2 certificate matching the pinned fingerprints; nothing was installed",
            args.from.display()
        );
    }
    Ok(())
}
