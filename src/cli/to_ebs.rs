//! `amibundle to-ebs`: an image into an EBS snapshot through the EBS direct APIs (no volume, no
//! helper instance) and an EBS-backed AMI booting from it (`cloud::ebs` does the work).

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use serde_json::json;

use super::cloud_args::{self, CloudArgs};
use super::output;
use crate::cloud::ebs::{self, Conversion, SnapshotOptions};
use crate::cloud::ec2::{self, EbsRegistration};
use crate::progress::Progress;

/// Arguments of `to-ebs`.
#[derive(Debug, Args)]
pub struct ToEbsArgs {
    /// The raw disk image (a file or a block device) to make the AMI's root volume from
    #[arg(short = 'i', long = "image", value_name = "PATH")]
    pub image: PathBuf,
    /// AMI name (default: the image's file name)
    #[arg(short = 'n', long, value_name = "NAME", conflicts_with = "no_register")]
    pub name: Option<String>,
    /// Stop at the snapshot: print its id, register nothing (a data volume, or a bare
    /// filesystem)
    #[arg(long)]
    pub no_register: bool,
    /// Description of the snapshot and the AMI
    #[arg(long, value_name = "TEXT")]
    pub description: Option<String>,
    /// Architecture: x86_64, i386 or arm64 (default: this machine's)
    #[arg(short = 'r', long = "arch", value_name = "ARCH")]
    pub arch: Option<String>,
    /// Root device of the AMI
    #[arg(long, value_name = "DEVICE", default_value = "/dev/xvda")]
    pub root_device_name: String,
    /// Volume type of the root volume
    #[arg(long, value_name = "TYPE", default_value = "gp3",
          value_parser = ["gp3", "gp2", "io1", "io2", "st1", "sc1", "standard"])]
    pub volume_type: String,
    /// Boot mode of the AMI
    #[arg(long, value_name = "MODE", default_value = "legacy-bios",
          value_parser = ["legacy-bios", "uefi", "uefi-preferred"])]
    pub boot_mode: String,
    /// Enable ENA networking (Nitro instances need it)
    #[arg(long)]
    pub ena_support: bool,
    /// Enable SR-IOV "simple" networking
    #[arg(long)]
    pub sriov_net_support: bool,
    /// Instance-store mapping to carry, DEVICE=ephemeralN (repeatable)
    #[arg(long = "ephemeral", value_name = "DEVICE=ephemeralN")]
    pub ephemeral: Vec<String>,
    /// Encrypt the snapshot (with --kms-key-id, else the account's default EBS key)
    #[arg(long)]
    pub encrypted: bool,
    /// KMS key ARN to encrypt the snapshot with (implies --encrypted)
    #[arg(long, value_name = "ARN")]
    pub kms_key_id: Option<String>,
    /// Tag of the snapshot and the AMI, KEY=VALUE (repeatable)
    #[arg(long = "tag", value_name = "KEY=VALUE")]
    pub tags: Vec<String>,
    /// Blocks of 512 KiB sent at once (each holds 512 KiB of memory)
    #[arg(long, value_name = "N", default_value_t = ebs::DEFAULT_CONCURRENCY)]
    pub concurrency: usize,
    /// Minutes the snapshot may stay pending before EBS abandons it
    #[arg(long, value_name = "MINUTES", default_value_t = ebs::DEFAULT_TIMEOUT_MINUTES,
          value_parser = clap::value_parser!(i32).range(10..=4320))]
    pub timeout: i32,
    /// Deregister an AMI of the same name that boots from another snapshot
    #[arg(long)]
    pub force: bool,
    /// Do not wait for the AMI to be available
    #[arg(long)]
    pub no_wait: bool,
    #[command(flatten)]
    pub cloud: CloudArgs,
    /// Print the result as JSON on stdout
    #[arg(long)]
    pub json: bool,
}

/// Runs `to-ebs`.
pub fn run(args: ToEbsArgs, progress: &dyn Progress) -> anyhow::Result<()> {
    let file_name = args
        .image
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("image")
        .to_string();
    let tags = super::register::parse_tags(&args.tags)?;
    let register = if args.no_register {
        None
    } else {
        let name = args.name.clone().unwrap_or_else(|| file_name.clone());
        ec2::validate_ami_name(&name).context("checking -n/--name")?;
        let ephemeral_mappings = args
            .ephemeral
            .iter()
            .map(|m| match m.split_once('=') {
                Some((d, v)) if !d.is_empty() && v.starts_with("ephemeral") => {
                    Ok((d.to_string(), v.to_string()))
                }
                _ => anyhow::bail!("--ephemeral {m:?} is not DEVICE=ephemeralN"),
            })
            .collect::<anyhow::Result<_>>()?;
        Some(EbsRegistration {
            name,
            description: args.description.clone(),
            architecture: match &args.arch {
                Some(a) => a.clone(),
                None => super::bundling::host_arch()
                    .context("cannot tell this machine's architecture: pass --arch")?
                    .to_string(),
            },
            snapshot_id: String::new(),
            root_device_name: args.root_device_name.clone(),
            volume_type: args.volume_type.clone(),
            ena_support: args.ena_support,
            sriov_net_support: args.sriov_net_support,
            boot_mode: args.boot_mode.clone(),
            ephemeral_mappings,
            tags: tags.clone(),
        })
    };
    let conversion = Conversion {
        snapshot: SnapshotOptions {
            description: args
                .description
                .clone()
                .unwrap_or_else(|| format!("{file_name}, by amibundle to-ebs")),
            tags,
            encrypted: args.encrypted || args.kms_key_id.is_some(),
            kms_key_arn: args.kms_key_id.clone(),
            timeout_minutes: args.timeout,
            concurrency: args.concurrency.max(1),
            client_token: None,
        },
        register,
        force: args.force,
        wait: !args.no_wait,
    };
    let runtime = cloud_args::runtime()?;
    let cloud = runtime.block_on(args.cloud.load())?;
    let region = cloud.require_region()?.to_string();
    let done = ebs::convert_image_file(
        runtime.handle(),
        &cloud,
        &region,
        &args.image,
        &conversion,
        progress,
    )
    .with_context(|| format!("making {} into an EBS snapshot", args.image.display()))?;
    let s = &done.snapshot;
    if args.json {
        output::print_json(&json!({
            "version": 1,
            "command": "to-ebs",
            "region": region,
            "snapshot_id": s.snapshot_id,
            "volume_size_gib": s.volume_size_gib,
            "blocks_sent": s.blocks_sent,
            "blocks_skipped": s.blocks_skipped,
            "snapshot_seconds": s.elapsed.as_secs_f64(),
            "ami_id": done.registered.as_ref().map(|r| r.image_id.clone()),
            "ami_created": done.registered.as_ref().map(|r| r.created),
            "register_seconds": done.registered.as_ref().map(|_| done.register_time.as_secs_f64()),
        }))?;
    } else {
        eprintln!(
            "snapshot {} ({} GiB): {} block(s) of 512 KiB sent, {} empty block(s) skipped, in {:.1} s",
            s.snapshot_id,
            s.volume_size_gib,
            s.blocks_sent,
            s.blocks_skipped,
            s.elapsed.as_secs_f64()
        );
        match &done.registered {
            Some(r) => println!("{}", r.image_id),
            None => println!("{}", s.snapshot_id),
        }
    }
    Ok(())
}
