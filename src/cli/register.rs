//! `amibundle register`: RegisterImage for a bundle in S3, idempotent, waiting for `available`.

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Args;
use serde_json::json;

use super::cloud_args::{self, CloudArgs};
use super::output;
use crate::bundle::pipeline::LocalBundle;
use crate::cloud::ec2::{self, AmiOptions, RegisterTarget};
use crate::cloud::s3::{self, BundleLocation};

/// Arguments of `register`.
#[derive(Debug, Args)]
pub struct RegisterArgs {
    /// The bundle's local manifest (for its name and architecture); with -b, where it was uploaded
    #[arg(
        short = 'm',
        long = "manifest",
        value_name = "PATH",
        required_unless_present = "image_location"
    )]
    pub manifest: Option<PathBuf>,
    /// Bucket and prefix the bundle was uploaded to (default: amibundle-ACCOUNT-REGION)
    #[arg(
        short = 'b',
        long = "bucket",
        value_name = "BUCKET",
        conflicts_with = "image_location"
    )]
    pub bucket: Option<String>,
    /// The manifest in S3 as BUCKET/PREFIX/NAME.manifest.xml (instead of -m/-b)
    #[arg(long, value_name = "LOCATION")]
    pub image_location: Option<String>,
    /// AMI name (default: the bundle name); 3-128 characters
    #[arg(short = 'n', long, value_name = "NAME")]
    pub name: Option<String>,
    /// Kernel id (paravirtual only)
    #[arg(long, value_name = "AKI")]
    pub kernel_id: Option<String>,
    /// Ramdisk id (paravirtual only)
    #[arg(long, value_name = "ARI")]
    pub ramdisk_id: Option<String>,
    #[command(flatten)]
    pub ami: AmiArgs,
    #[command(flatten)]
    pub cloud: CloudArgs,
    /// Print the result as JSON on stdout
    #[arg(long)]
    pub json: bool,
}

/// How an AMI is registered: shared by `register` and the `--register` of the bundling commands.
#[derive(Debug, Args, Clone)]
pub struct AmiArgs {
    /// AMI description
    #[arg(long, value_name = "TEXT")]
    pub description: Option<String>,
    /// hvm (default; EC2 itself would default to paravirtual) or paravirtual
    #[arg(long, value_name = "TYPE", default_value = "hvm", value_parser = ["hvm", "paravirtual"])]
    pub virtualization_type: String,
    /// Root device name
    #[arg(long, value_name = "DEVICE", default_value = ec2::DEFAULT_ROOT_DEVICE)]
    pub root_device_name: String,
    /// Enable ENA (X1 instances; the image needs the ena driver)
    #[arg(long)]
    pub ena_support: bool,
    /// Enable SR-IOV "simple" networking (C3, D2, I2, R3; needs ixgbevf)
    #[arg(long)]
    pub sriov_net_support: bool,
    /// Tag KEY=VALUE on the AMI (repeatable)
    #[arg(long = "tag", value_name = "KEY=VALUE")]
    pub tags: Vec<String>,
    /// Deregister an AMI of the same name registered from another location
    #[arg(long)]
    pub force: bool,
    /// Return right after RegisterImage instead of waiting for "available"
    #[arg(long)]
    pub no_wait: bool,
    /// Refused: UEFI needs Nitro, and instance-store families are Xen (legacy BIOS)
    #[arg(long, value_name = "MODE", hide = true)]
    pub boot_mode: Option<String>,
    /// Refused: NitroTPM needs UEFI on Nitro
    #[arg(long, value_name = "VERSION", hide = true)]
    pub tpm_support: Option<String>,
}

impl AmiArgs {
    /// The registration options, after refusing what instance-store AMIs cannot use and
    /// parsing the tags.
    pub fn options(&self) -> anyhow::Result<AmiOptions> {
        if self.boot_mode.is_some() {
            return Err(ec2::Ec2Error::NotForInstanceStore {
                option: "--boot-mode",
                why: "UEFI boot needs a Nitro instance, and every instance-store family is Xen with legacy BIOS boot",
            }
            .into());
        }
        if self.tpm_support.is_some() {
            return Err(ec2::Ec2Error::NotForInstanceStore {
                option: "--tpm-support",
                why: "NitroTPM needs UEFI boot on Nitro, which instance-store AMIs cannot use",
            }
            .into());
        }
        let tags = parse_tags(&self.tags)?;
        Ok(AmiOptions {
            description: self.description.clone(),
            virtualization_type: self.virtualization_type.clone(),
            root_device_name: self.root_device_name.clone(),
            ena_support: self.ena_support,
            sriov_net_support: self.sriov_net_support,
            tags,
            force: self.force,
            wait: !self.no_wait,
        })
    }
}

/// Runs `register`.
pub fn run(args: RegisterArgs) -> anyhow::Result<()> {
    let ami = args.ami.options()?;
    if let Some(name) = &args.name {
        ec2::validate_ami_name(name)?;
    }
    cloud_args::runtime()?.block_on(async {
        let cloud = args.cloud.load().await?;
        let region = cloud.require_region()?.to_string();
        let mut target = match (&args.image_location, &args.manifest) {
            (Some(loc), _) => {
                let (location, file) =
                    BundleLocation::parse_manifest_url(loc).context("checking --image-location")?;
                let (manifest, _) =
                    s3::fetch_manifest(&cloud.s3_client(&region), &location, &file).await?;
                let image_location = location.image_location(&file);
                RegisterTarget::for_manifest(&manifest, image_location, args.name.clone())
            }
            (None, Some(path)) => {
                let bundle = LocalBundle::open(path, None)?;
                let location = match &args.bucket {
                    Some(b) => BundleLocation::parse(b).context("checking --bucket")?,
                    None => BundleLocation::parse(&s3::default_bucket_name(
                        &bundle.manifest.image.user,
                        &region,
                    ))?,
                };
                let file = path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .context("manifest path has no file name")?;
                let image_location = location.image_location(file);
                RegisterTarget::for_manifest(&bundle.manifest, image_location, args.name.clone())
            }
            (None, None) => bail!("pass --manifest or --image-location"),
        };
        target.kernel_id = args.kernel_id.clone();
        target.ramdisk_id = args.ramdisk_id.clone();
        let client = cloud.ec2_client(&region);
        let (req, registered) = ec2::register_and_wait(&client, &region, target, &ami).await?;
        if args.json {
            output::print_json(&json!({
                "version": 1,
                "command": "register",
                "ami_id": registered.image_id,
                "created": registered.created,
                "region": region,
                "name": req.name,
                "image_location": req.image_location,
                "virtualization_type": req.virtualization_type,
            }))?;
        } else {
            println!("{}", registered.image_id);
        }
        Ok(())
    })
}

/// `--tag KEY=VALUE` values.
pub fn parse_tags(tags: &[String]) -> anyhow::Result<Vec<(String, String)>> {
    tags.iter()
        .map(|t| match t.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
            _ => bail!("--tag {t:?} is not KEY=VALUE"),
        })
        .collect()
}
