//! `ec2-bundle-vol` and `ec2-bundle-image`: the classic flags → `bundle-vol`/`bundle-image`.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{Args, Parser};

use super::{Argv, Common, Credentials, Outcome, Refusal, Tool, parse_with};

/// Key, account and manifest flags both bundlers share.
#[derive(Debug, Args)]
pub(crate) struct Bundling {
    /// User X.509 certificate (PEM)
    #[arg(short = 'c', long = "cert", value_name = "PATH")]
    pub cert: Option<PathBuf>,
    /// User RSA private key (PEM)
    #[arg(short = 'k', long = "privatekey", value_name = "PATH")]
    pub privatekey: Option<PathBuf>,
    /// AWS account id (dashes allowed)
    #[arg(short = 'u', long = "user", value_name = "ACCOUNT")]
    pub user: Option<String>,
    /// EC2 certificate (default: the pinned certificate amibundle finds)
    #[arg(long, value_name = "PATH")]
    pub ec2cert: Option<PathBuf>,
    /// amibundle: accept an --ec2cert that is none of Amazon's (test setups only)
    #[arg(long)]
    pub unpinned_ec2cert: bool,
    /// Architecture: i386, x86_64 or arm64
    #[arg(short = 'r', long = "arch", value_name = "ARCH")]
    pub arch: Option<String>,
    /// Product codes, comma-separated
    #[arg(long, value_name = "CODE1,CODE2,...")]
    pub productcodes: Option<String>,
    /// Kernel id (aki-...)
    #[arg(long, value_name = "ID")]
    pub kernel: Option<String>,
    /// Ramdisk id (ari-...)
    #[arg(long, value_name = "ID")]
    pub ramdisk: Option<String>,
    /// Block-device mapping, virtual=device,... (repeatable)
    #[arg(short = 'B', long = "block-device-mapping", value_name = "MAP")]
    pub block_device_mapping: Vec<String>,
    /// Accepted; no effect (as in ec2-ami-tools)
    #[arg(long)]
    pub no_size_checks: bool,
}

impl Bundling {
    fn push(&self, argv: &mut Argv) {
        argv.opt_if("--cert", &self.cert)
            .opt_if("--privatekey", &self.privatekey)
            // The reference read keys of any mode, and Packer uploads its key 0644: accepted
            // with a warning (the native commands refuse such keys).
            .flag_if("--allow-insecure-key", self.privatekey.is_some())
            .opt_if("--user", &self.user)
            .opt_if("--ec2cert", &self.ec2cert)
            .flag_if("--unpinned-ec2cert", self.unpinned_ec2cert)
            .opt_if("--arch", &self.arch)
            .opt_if("--productcodes", &self.productcodes)
            .opt_if("--kernel", &self.kernel)
            .opt_if("--ramdisk", &self.ramdisk);
        for m in &self.block_device_mapping {
            argv.opt("--block-device-mapping", m);
        }
    }
}

/// ec2-bundle-vol: copy a live volume into an image and bundle it.
#[derive(Debug, Parser)]
#[command(disable_version_flag = true, max_term_width = 80)]
pub(crate) struct BundleVol {
    #[command(flatten)]
    pub common: Common,
    #[command(flatten)]
    pub bundling: Bundling,
    /// Directory for the image and the bundle
    #[arg(
        short = 'd',
        long = "destination",
        value_name = "DIR",
        default_value = "/tmp"
    )]
    pub destination: PathBuf,
    /// Bundle and image name
    #[arg(
        short = 'p',
        long = "prefix",
        value_name = "NAME",
        default_value = "image"
    )]
    pub prefix: String,
    /// Image size in MiB (default: amibundle's size rule)
    #[arg(short = 's', long = "size", value_name = "MB")]
    pub size: Option<u64>,
    /// Also copy other filesystems mounted below the volume
    #[arg(short = 'a', long = "all")]
    pub all: bool,
    /// Paths to leave out, comma-separated; loose paths after it are excluded too (a shell-expanded
    /// -e /tmp/*)
    #[arg(
        short = 'e',
        long = "exclude",
        value_name = "DIR1,DIR2,...",
        value_delimiter = ','
    )]
    pub exclude: Vec<PathBuf>,
    /// Paths to keep even if the sensitive-file filter would leave them out
    #[arg(
        short = 'i',
        long = "include",
        value_name = "FILE1,FILE2,...",
        value_delimiter = ','
    )]
    pub include: Vec<PathBuf>,
    /// Turn the sensitive-file filter off
    #[arg(long)]
    pub no_filter: bool,
    /// Inherit fields from instance metadata (the default)
    #[arg(long, overrides_with = "no_inherit")]
    pub inherit: bool,
    /// Do not inherit fields from instance metadata
    #[arg(long, overrides_with = "inherit")]
    pub no_inherit: bool,
    /// The volume to save
    #[arg(short = 'v', long = "volume", value_name = "DIR", default_value = "/")]
    pub volume: PathBuf,
    /// Install this file as the image's /etc/fstab
    #[arg(long, value_name = "PATH", conflicts_with = "generate_fstab")]
    pub fstab: Option<PathBuf>,
    /// Write a generated /etc/fstab into the image
    #[arg(long)]
    pub generate_fstab: bool,
    /// GRUB Legacy menu file: accepted, unused (amibundle installs the image's GRUB 2)
    #[arg(long, value_name = "PATH")]
    pub grub_config: Option<PathBuf>,
    /// Partition table of the image: mbr, gpt or none (default: like the volume's disk)
    #[arg(short = 'P', long = "partition", value_name = "TYPE",
          value_parser = ["mbr", "gpt", "none", "auto"])]
    pub partition: Option<String>,
    /// Script to run on the image mount point (not supported by amibundle)
    #[arg(short = 'S', long = "script", value_name = "PATH")]
    pub script: Option<PathBuf>,
    /// Only make the image file; no bundle
    #[arg(long)]
    pub clone_only: bool,
    /// Loose paths: a shell-expanded `-e DIR/*` arrives as `-e DIR/a DIR/b ...`
    #[arg(value_name = "PATH", hide = true)]
    pub loose: Vec<PathBuf>,
}

/// Translates an `ec2-bundle-vol` command line.
pub(crate) fn bundle_vol(argv: Vec<OsString>) -> Result<Outcome, Refusal> {
    let tool = Tool::BundleVol;
    let a: BundleVol = parse_with(tool, argv)?;
    if let Some(text) = a.common.print(tool) {
        return Ok(Outcome::Print(text));
    }
    if let Some(script) = &a.script {
        return Err(Refusal::Message(format!(
            "-S/--script {} is not supported: amibundle does not run scripts on the image while \
             it is made; make the change on the volume before bundling (for host keys, \
             machine-id and histories: amibundle bundle-vol --generalize)",
            script.display()
        )));
    }
    if !a.loose.is_empty() && a.exclude.is_empty() {
        return Err(Refusal::Message(format!(
            "unexpected argument {}: ec2-bundle-vol takes no positional arguments (loose paths \
             are accepted only after -e, as more excludes)",
            a.loose[0].display()
        )));
    }
    let mut notes = Vec::new();
    if let Some(g) = &a.grub_config {
        notes.push(format!(
            "--grub-config {} is for GRUB Legacy and is not used: amibundle installs the image's \
             own GRUB 2 on partitioned images",
            g.display()
        ));
    }
    let mut out = Argv::new(tool, &a.common);
    out.opt("--volume", &a.volume)
        .opt("--destination", &a.destination)
        .opt("--prefix", &a.prefix)
        .opt_if("--size", &a.size.map(|s| s.to_string()))
        .flag_if("--all", a.all)
        .flag_if("--no-filter", a.no_filter)
        .flag_if("--no-inherit", a.no_inherit)
        .opt_if("--fstab", &a.fstab)
        .flag_if("--generate-fstab", a.generate_fstab)
        .opt_if("--partition", &a.partition)
        .flag_if("--clone-only", a.clone_only);
    // A shell-expanded `-e DIR/*`: every loose path is one more exclude (Amazon's tool silently
    // ignored them, so the uploaded key could end up in the image).
    for e in a.exclude.iter().chain(&a.loose) {
        out.opt("--exclude", e);
    }
    for i in &a.include {
        out.opt("--include", i);
    }
    a.bundling.push(&mut out);
    Ok(out.done(Credentials::default(), notes))
}

/// ec2-bundle-image: bundle an image file.
#[derive(Debug, Parser)]
#[command(disable_version_flag = true, max_term_width = 80)]
pub(crate) struct BundleImage {
    #[command(flatten)]
    pub common: Common,
    #[command(flatten)]
    pub bundling: Bundling,
    /// The image file
    #[arg(short = 'i', long = "image", value_name = "PATH")]
    pub image: Option<PathBuf>,
    /// Directory for the bundle
    #[arg(
        short = 'd',
        long = "destination",
        value_name = "DIR",
        default_value = "/tmp"
    )]
    pub destination: PathBuf,
    /// Bundle name (default: the image's file name)
    #[arg(short = 'p', long = "prefix", value_name = "NAME")]
    pub prefix: Option<String>,
}

/// Translates an `ec2-bundle-image` command line.
pub(crate) fn bundle_image(argv: Vec<OsString>) -> Result<Outcome, Refusal> {
    let tool = Tool::BundleImage;
    let a: BundleImage = parse_with(tool, argv)?;
    if let Some(text) = a.common.print(tool) {
        return Ok(Outcome::Print(text));
    }
    let image = super::require(&a.image, "-i/--image")?;
    let mut out = Argv::new(tool, &a.common);
    out.opt("--image", image)
        .opt("--destination", &a.destination)
        .opt_if("--prefix", &a.prefix);
    a.bundling.push(&mut out);
    Ok(out.done(Credentials::default(), Vec::new()))
}
