//! `amibundle check-image`: will this image (or bundle) boot on an instance-store (Xen)
//! instance, or (`--platform nitro`) as an EBS-backed AMI on Nitro? Read-only; the checks are
//! `image::bootcheck`'s.

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Args;
use serde_json::json;

use super::keys::{self, SignatureArgs, SignatureCheck};
use super::output;
use crate::bundle::pipeline::DecodeOptions;
use crate::cloud::unbundle::{BundleRef, unbundle};
use crate::image::bootcheck::{self, BootReport, CheckOptions, Platform, Severity, Virtualization};
use crate::image::fs as imgfs;
use crate::image::mount;
use crate::progress::Progress;

/// Arguments of `check-image`.
#[derive(Debug, Args)]
pub struct CheckImageArgs {
    /// A raw disk image, or a bundle's NAME.manifest.xml (decrypted with -k into --work-dir,
    /// removed afterwards)
    #[arg(value_name = "IMAGE|MANIFEST")]
    pub target: PathBuf,
    /// How the AMI will be registered: hvm or paravirtual
    #[arg(long, value_name = "TYPE", default_value = "hvm", value_parser = ["hvm", "paravirtual"])]
    pub virtualization_type: String,
    /// Where it will run: xen (an instance-store AMI: xen-blkfront, xen-netfront) or nitro (an
    /// EBS-backed AMI made by to-ebs: nvme, ena, no /dev/xvd* names)
    #[arg(long, value_name = "PLATFORM", default_value = "xen", value_parser = ["xen", "nitro"])]
    pub platform: String,
    /// ENA will be enabled: the image needs the ena driver
    #[arg(long)]
    pub ena_support: bool,
    /// SR-IOV networking will be enabled: the image needs ixgbevf
    #[arg(long)]
    pub sriov_net_support: bool,
    /// User private key, for a bundle (default: amibundle's own)
    #[arg(short = 'k', long = "privatekey", value_name = "PATH")]
    pub private_key: Option<PathBuf>,
    /// Accept a private key file that others can read
    #[arg(long)]
    pub allow_insecure_key: bool,
    #[command(flatten)]
    pub signature: SignatureArgs,
    /// Accept a manifest declaring an image above 10 GiB, EC2's instance-store limit (a data
    /// volume bundled with --allow-oversize)
    #[arg(long)]
    pub allow_oversize: bool,
    /// Where a bundle's image is decrypted and the image mounted [default: /var/tmp]
    #[arg(long, value_name = "DIR", default_value = "/var/tmp")]
    pub work_dir: PathBuf,
    /// Print the result as JSON on stdout
    #[arg(long)]
    pub json: bool,
}

/// Runs `check-image`; fails (exit 1) when the image will not boot.
pub fn run(args: CheckImageArgs, progress: &dyn Progress) -> anyhow::Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("check-image must run as root: it attaches the image to a loop device and mounts it");
    }
    let ns = mount::enter_private_namespace()?;
    let opts = CheckOptions {
        virtualization: Virtualization::from_ami_type(&args.virtualization_type),
        ena: args.ena_support,
        sriov: args.sriov_net_support,
        platform: match args.platform.as_str() {
            "nitro" => Platform::Nitro,
            _ => Platform::Xen,
        },
    };
    let target = &args.target;
    std::fs::metadata(target).with_context(|| format!("reading {}", target.display()))?;
    if !args.work_dir.is_dir() {
        bail!("--work-dir {} is not a directory", args.work_dir.display());
    }
    let work = imgfs::create_work_dir(&args.work_dir)?;
    let is_manifest = target
        .file_name()
        .is_some_and(|n| n.to_string_lossy().ends_with(".manifest.xml"));
    let image = if is_manifest {
        let key = keys::load_private_key(args.private_key.as_deref(), args.allow_insecure_key)?;
        let check = SignatureCheck::new(
            args.signature.cert.as_deref(),
            args.signature.skip_signature,
        )?;
        let bundle = BundleRef::Local {
            manifest: target.clone(),
            parts: None,
        };
        let options = DecodeOptions {
            allow_oversize: args.allow_oversize,
            ..DecodeOptions::into_dir(work.path())
        };
        unbundle(&bundle, None, &key, &check, options, progress)?
            .decode
            .image_path
            .context("the unbundled image has no path")?
    } else {
        target.clone()
    };
    let report = bootcheck::check_image_file(&ns, &image, work.path(), &opts)
        .with_context(|| format!("checking {}", target.display()))?;
    print(&args, &report)?;
    let errors = report.errors().count();
    if errors > 0 {
        bail!(
            "{} will not boot {}: {errors} problem(s) above",
            target.display(),
            where_(&args.platform)
        );
    }
    Ok(())
}

fn print(args: &CheckImageArgs, report: &BootReport) -> anyhow::Result<()> {
    if args.json {
        let problems: Vec<_> = report
            .problems
            .iter()
            .map(|p| {
                json!({
                    "severity": match p.severity {
                        Severity::Error => "error",
                        Severity::Warning => "warning",
                    },
                    "code": p.code,
                    "message": p.message,
                    "fix": p.fix,
                })
            })
            .collect();
        return output::print_json(&json!({
            "version": 1,
            "command": "check-image",
            "target": args.target,
            "bootable": report.bootable(),
            "virtualization": args.virtualization_type,
            "platform": args.platform,
            "config": report.config,
            "kernel": report.kernel,
            "kernel_version": report.kernel_version,
            "initrd": report.initrd,
            "command_line": report.command_line,
            "problems": problems,
        }));
    }
    if let Some(config) = &report.config {
        println!("configuration: {}", config.display());
    }
    if let Some(kernel) = &report.kernel {
        println!(
            "kernel: {kernel} ({})",
            report
                .kernel_version
                .as_deref()
                .unwrap_or("version unknown")
        );
    }
    if let Some(initrd) = &report.initrd {
        println!("initramfs: {initrd}");
    }
    if let Some(cmdline) = &report.command_line {
        println!("command line: {cmdline}");
    }
    for p in &report.problems {
        let what = match p.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        println!("{what}: {}: {}\n  fix: {}", p.code, p.message, p.fix);
    }
    if report.bootable() {
        println!(
            "{}: will boot {} as far as the checks can tell",
            args.target.display(),
            where_(&args.platform)
        );
    }
    Ok(())
}

/// Where the check says the image will (or will not) boot.
fn where_(platform: &str) -> &'static str {
    if platform == "nitro" {
        "as an EBS-backed AMI on a Nitro instance"
    } else {
        "on an instance-store (Xen) instance"
    }
}
