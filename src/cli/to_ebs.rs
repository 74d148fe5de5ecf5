//! `amibundle to-ebs`: an image, a bundle or an instance-store AMI into an EBS snapshot through
//! the EBS direct APIs (no volume, no helper instance, nothing written locally) and an
//! EBS-backed AMI booting from it (`cloud::ebs` does the work).

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use serde_json::json;

use super::cloud_args::{self, CloudArgs};
use super::{keys, output, to_ebs_local};
use crate::cloud::ebs::{self, Conversion, SnapshotOptions};
use crate::cloud::ec2::{self, EbsRegistration};
use crate::cloud::unbundle::{BundleRef, Remote};
use crate::image::mount;
use crate::progress::Progress;

/// Parts of a bundle in S3 downloaded ahead of the decode, each held whole (10 MiB) until
/// decoded. The snapshot side is what limits a conversion (a part decodes into about three
/// times its size of image), so a few keep it fed; at the download default (12) they made
/// to-ebs's peak RSS 165 MiB (scripts/bench-ebs.sh).
const PARTS_AHEAD: usize = 4;

/// Arguments of `to-ebs`.
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("source").required(true)
    .args(["image", "manifest", "image_location", "ami"])))]
pub struct ToEbsArgs {
    /// The raw disk image (a file or a block device) to make the AMI's root volume from
    #[arg(short = 'i', long = "image", value_name = "PATH")]
    pub image: Option<PathBuf>,
    /// A local bundle: its manifest (the parts beside it), decoded straight into the snapshot
    #[arg(short = 'm', long = "manifest", value_name = "PATH")]
    pub manifest: Option<PathBuf>,
    /// A bundle in S3, BUCKET/[PREFIX/]NAME.manifest.xml: its parts streamed into the snapshot
    #[arg(long, value_name = "LOCATION")]
    pub image_location: Option<String>,
    /// An instance-store AMI (in --region): its bundle, and its ENA, SR-IOV, description and
    /// instance-store mappings for the new AMI
    #[arg(long, value_name = "AMI_ID")]
    pub ami: Option<String>,
    /// The private key that decrypts the bundle (default: amibundle's own)
    #[arg(
        short = 'k',
        long = "privatekey",
        value_name = "PATH",
        conflicts_with = "image"
    )]
    pub private_key: Option<PathBuf>,
    /// Accept a private key file that others can read
    #[arg(long)]
    pub allow_insecure_key: bool,
    #[command(flatten)]
    pub signature: super::keys::SignatureArgs,
    /// Accept a bundle declaring an image above 10 GiB
    #[arg(long)]
    pub allow_oversize: bool,
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
    /// Where to keep the record of the blocks sent, so that a run killed (or cut off from the
    /// network) resumes its snapshot on the rerun [default: /var/lib/amibundle/to-ebs for
    /// root, else ~/.local/state/amibundle/to-ebs; $XDG_STATE_HOME/amibundle/to-ebs when set]
    #[arg(long, value_name = "DIR", conflicts_with = "no_resume")]
    pub state_dir: Option<PathBuf>,
    /// Keep no record: a run that is killed starts again from nothing
    #[arg(long)]
    pub no_resume: bool,
    /// Register even when the Nitro boot check finds problems (they are printed as warnings)
    #[arg(long)]
    pub allow_unbootable: bool,
    /// For a bundle or AMI: decrypt the image into --work-dir first, to run the Nitro boot
    /// check on it before anything is sent (an image file is always checked)
    #[arg(long, conflicts_with_all = ["image", "no_register"])]
    pub check_boot: bool,
    /// An image without a partition table or boot code (a bare filesystem, the classic
    /// paravirtual layout): send a partitioned copy of its filesystem with GRUB 2 (made in
    /// --work-dir as bundle-vol -P mbr makes one; GRUB 2 for BIOS must be in the image) instead
    /// of refusing it. For a bundle or AMI, its image is decrypted into --work-dir first
    #[arg(long, conflicts_with = "no_register")]
    pub partition: bool,
    /// Where --check-boot decrypts the image and where images are mounted for the check
    #[arg(long, value_name = "DIR", default_value = "/var/tmp")]
    pub work_dir: PathBuf,
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
    return_freed_buffers();
    let source_name = match (&args.image, &args.manifest, &args.image_location, &args.ami) {
        (Some(p), ..) | (None, Some(p), ..) => p
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("image")
            .trim_end_matches(".manifest.xml")
            .to_string(),
        (None, None, Some(l), _) => l
            .rsplit('/')
            .next()
            .unwrap_or("image")
            .trim_end_matches(".manifest.xml")
            .to_string(),
        (None, None, None, Some(ami)) => ami.clone(),
        (None, None, None, None) => anyhow::bail!("pass -i, -m, --image-location or --ami"),
    };
    let tags = super::register::parse_tags(&args.tags)?;
    let mut conversion = conversion(&args, &source_name, tags)?;
    // Local inputs first: a bad key or certificate costs no request.
    let bundle_keys = if args.image.is_none() {
        Some((
            keys::load_private_key(args.private_key.as_deref(), args.allow_insecure_key)?,
            keys::SignatureCheck::new(
                args.signature.cert.as_deref(),
                args.signature.skip_signature,
            )?,
        ))
    } else {
        None
    };
    // The Nitro check (and --partition) mounts the image in a private mount namespace,
    // entered before any thread starts; an image file is readied before any request.
    let registering = conversion.register.is_some();
    let staged = args.check_boot || args.partition;
    let ns = if registering && (args.image.is_some() || staged) && nix::unistd::geteuid().is_root()
    {
        Some(mount::enter_private_namespace()?)
    } else {
        None
    };
    let prepared = match (&args.image, &conversion.register) {
        (Some(image), Some(reg)) => Some(to_ebs_local::prepare_image(
            &args,
            ns.as_ref(),
            image,
            reg.ena_support,
            progress,
        )?),
        _ => None,
    };
    if prepared
        .as_ref()
        .is_some_and(to_ebs_local::Prepared::is_copy)
    {
        // A copy made anew on every run: nothing to resume.
        conversion.snapshot.journal_dir = None;
    }
    let runtime = cloud_args::runtime()?;
    let cloud = runtime.block_on(args.cloud.load())?;
    let region = cloud.require_region()?.to_string();
    let what = source_name.clone();
    let done = match (&args.image, bundle_keys) {
        (Some(image), _) => ebs::convert_image_file(
            runtime.handle(),
            &cloud,
            &region,
            prepared
                .as_ref()
                .map_or(image.as_path(), |p| p.path.as_path()),
            &conversion,
            progress,
        ),
        (None, Some((key, check))) => {
            let bundle = match (&args.manifest, &args.image_location, &args.ami) {
                (Some(m), ..) => BundleRef::Local {
                    manifest: m.clone(),
                    parts: None,
                },
                (None, Some(l), _) => s3_bundle(l).context("checking --image-location")?,
                (None, None, Some(ami)) => {
                    let source = runtime.block_on(ec2::describe_image(
                        &cloud.ec2_client(&region),
                        &region,
                        ami,
                    ))?;
                    inherit_from_ami(&mut conversion, &args, &source);
                    s3_bundle(&source.image_location)
                        .with_context(|| format!("reading the image location of {ami}"))?
                }
                (None, None, None) => anyhow::bail!("pass -i, -m, --image-location or --ami"),
            };
            let remote = Remote {
                runtime: runtime.handle(),
                cloud: &cloud,
                concurrency: PARTS_AHEAD,
            };
            let remote = matches!(bundle, BundleRef::S3 { .. }).then_some(remote);
            if staged {
                let done = to_ebs_local::convert_checked(
                    &args,
                    ns.as_ref(),
                    runtime.handle(),
                    &cloud,
                    &region,
                    &bundle,
                    remote,
                    (&key, &check),
                    &conversion,
                    progress,
                )?;
                return print(&args, &region, &done);
            }
            if conversion.register.is_some() {
                tracing::warn!(
                    "the Nitro boot check (nvme, ena, root= and fstab names) needs the image: \
                     it was not run on {what}; --check-boot decrypts the image into --work-dir \
                     first to run it"
                );
            }
            ebs::convert_bundle(
                runtime.handle(),
                &cloud,
                &region,
                &bundle,
                remote,
                &key,
                &check,
                args.allow_oversize,
                &conversion,
                progress,
            )
        }
        (None, None) => anyhow::bail!("pass -i, -m, --image-location or --ami"),
    }
    .with_context(|| format!("making {what} into an EBS snapshot"))?;
    if let Some(prepared) = prepared {
        prepared.finish()?;
    }
    print(&args, &region, &done)
}

/// glibc keeps freed buffers of a few MiB in its heap (its mmap threshold rises to fit them), so
/// the 10 MiB parts and 512 KiB blocks that come and go left the peak RSS at 113–146 MiB with
/// 85 MiB live (scripts/bench-ebs.sh): from 128 KiB up, allocations are mapped and go back to
/// the kernel when freed.
#[allow(unsafe_code)]
fn return_freed_buffers() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets a parameter of the allocator, before any thread is started.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
    }
}

/// A bundle in S3 named by its manifest's address (`[s3://]BUCKET/[PREFIX/]NAME.manifest.xml`).
fn s3_bundle(address: &str) -> Result<BundleRef, crate::cloud::s3::S3Error> {
    let (location, manifest_name) = crate::cloud::s3::BundleLocation::parse_manifest_url(address)?;
    Ok(BundleRef::S3 {
        location,
        manifest_name,
    })
}

/// The conversion the flags ask for.
fn conversion(
    args: &ToEbsArgs,
    source_name: &str,
    tags: Vec<(String, String)>,
) -> anyhow::Result<Conversion> {
    let register = if args.no_register {
        None
    } else {
        let name = args.name.clone().unwrap_or_else(|| source_name.to_string());
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
        // An image file says nothing of its architecture: this machine's unless given. A
        // bundle's comes from its manifest (empty here).
        let architecture = match (&args.arch, &args.image) {
            (Some(a), _) => a.clone(),
            (None, Some(_)) => super::bundling::host_arch()
                .context("cannot tell this machine's architecture: pass --arch")?
                .to_string(),
            (None, None) => String::new(),
        };
        Some(EbsRegistration {
            name,
            description: args.description.clone(),
            architecture,
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
    Ok(Conversion {
        snapshot: SnapshotOptions {
            description: args
                .description
                .clone()
                .unwrap_or_else(|| format!("{source_name}, by amibundle to-ebs")),
            tags,
            encrypted: args.encrypted || args.kms_key_id.is_some(),
            kms_key_arn: args.kms_key_id.clone(),
            timeout_minutes: args.timeout,
            concurrency: args.concurrency.max(1),
            client_token: None,
            journal_dir: match (&args.state_dir, args.no_resume) {
                (_, true) => None,
                (Some(dir), false) => Some(dir.clone()),
                (None, false) => Some(ebs::default_journal_dir().context(
                    "no place for the resume journal (no HOME): pass --state-dir DIR or --no-resume",
                )?),
            },
        },
        register,
        force: args.force,
        wait: !args.no_wait,
    })
}

/// The source AMI's attributes for the new one, unless the flags give them.
fn inherit_from_ami(conversion: &mut Conversion, args: &ToEbsArgs, source: &ec2::SourceImage) {
    let Some(reg) = &mut conversion.register else {
        return;
    };
    reg.ena_support |= source.ena_support;
    reg.sriov_net_support |= source.sriov_net_support;
    if reg.description.is_none() {
        reg.description = source.description.clone();
    }
    if args.arch.is_none() {
        if let Some(a) = &source.architecture {
            reg.architecture = a.clone();
        }
    }
    if args.ephemeral.is_empty() {
        reg.ephemeral_mappings = source.ephemeral_mappings.clone();
    }
}

fn print(args: &ToEbsArgs, region: &str, done: &ebs::Converted) -> anyhow::Result<()> {
    let s = &done.snapshot;
    if args.json {
        output::print_json(&json!({
            "version": 1,
            "command": "to-ebs",
            "region": region,
            "snapshot_id": s.snapshot_id,
            "volume_size_gib": s.volume_size_gib,
            "blocks_sent": s.blocks_sent,
            "blocks_resumed": s.blocks_resumed,
            "blocks_skipped": s.blocks_skipped,
            "resumed": s.resumed,
            "snapshot_seconds": s.elapsed.as_secs_f64(),
            "ami_id": done.registered.as_ref().map(|r| r.image_id.clone()),
            "ami_created": done.registered.as_ref().map(|r| r.created),
            "register_seconds": done.registered.as_ref().map(|_| done.register_time.as_secs_f64()),
        }))?;
    } else {
        let resumed = if s.resumed {
            format!(
                " (resumed: {} block(s) sent before were kept)",
                s.blocks_resumed
            )
        } else {
            String::new()
        };
        eprintln!(
            "snapshot {} ({} GiB): {} block(s) of 512 KiB sent{resumed}, {} empty block(s) skipped, in {:.1} s",
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
