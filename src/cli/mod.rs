//! Command-line interface: clap definitions and one function per subcommand. Thin: parsing,
//! choosing defaults, printing; the work is done by [`crate::bundle`].

mod bundle_image;
mod bundle_vol;
mod bundling;
mod certs;
mod check_image;
mod cloud_args;
pub mod compat;
mod copy;
mod delete;
mod download;
mod generate;
mod image_report;
mod install_compat;
mod keys;
mod migrate_manifest;
pub mod output;
mod register;
mod restore;
mod streaming;
mod to_ebs;
mod to_ebs_local;
mod unbundle;
mod upload;
mod verify;

use clap::{Parser, Subcommand};

/// Exit code for a failure.
pub const EXIT_FAILURE: i32 = 1;
/// Exit code for a usage error (clap's own).
pub const EXIT_USAGE: i32 = 2;
/// Exit code for an interrupted run (128 + SIGINT; SIGTERM gives 143).
pub const EXIT_INTERRUPTED: i32 = 130;
/// Exit code for a bucket ownership or access problem (Packer reads 3 as "the bucket may be
/// owned by somebody else").
pub const EXIT_BUCKET_ACCESS: i32 = 3;

/// The exit code for an error: 3 for bucket ownership/access problems, else 1.
pub fn exit_code(err: &anyhow::Error) -> i32 {
    let access = err.chain().any(|e| {
        e.downcast_ref::<crate::cloud::s3::S3Error>()
            .is_some_and(crate::cloud::s3::S3Error::is_access_problem)
            || e.downcast_ref::<crate::cloud::stream::StreamError>()
                .is_some_and(crate::cloud::stream::StreamError::is_access_problem)
            || e.downcast_ref::<crate::cloud::copy::CopyError>()
                .is_some_and(crate::cloud::copy::CopyError::is_access_problem)
            || e.downcast_ref::<crate::cloud::publish::PublishError>()
                .is_some_and(crate::cloud::publish::PublishError::is_access_problem)
            || e.downcast_ref::<crate::cloud::ebs::ConvertError>()
                .is_some_and(crate::cloud::ebs::ConvertError::is_access_problem)
            || e.downcast_ref::<crate::cloud::ebs::EbsError>()
                .is_some_and(crate::cloud::ebs::EbsError::is_access_problem)
            || snapshot_read_error(e)
                .is_some_and(crate::cloud::ebs::SnapshotReadError::is_access_problem)
    });
    if access {
        EXIT_BUCKET_ACCESS
    } else {
        EXIT_FAILURE
    }
}

/// A snapshot's read failure, as it is or inside the `io::Error` the bundler's reader returned
/// it in (an `io::Error`'s `source` skips the error it wraps).
fn snapshot_read_error<'a>(
    e: &'a (dyn std::error::Error + 'static),
) -> Option<&'a crate::cloud::ebs::SnapshotReadError> {
    e.downcast_ref::<crate::cloud::ebs::SnapshotReadError>()
        .or_else(|| {
            e.downcast_ref::<std::io::Error>()
                .and_then(std::io::Error::get_ref)
                .and_then(|inner| inner.downcast_ref())
        })
}

/// Save a Linux server or an image as an EC2 instance-store AMI bundle.
#[derive(Debug, Parser)]
#[command(name = "amibundle", version, about, max_term_width = 80)]
pub struct Cli {
    /// More log output (-v debug, -vv trace), given before the subcommand (bundle-vol's -v is
    /// --volume, as in ec2-bundle-vol); --debug works anywhere
    #[arg(short, long, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// More log output, anywhere on the command line (like -v; the classic tools' --debug)
    #[arg(long = "debug", action = clap::ArgAction::Count, global = true, hide_short_help = true)]
    pub debug: u8,
    /// Only warnings and errors; no progress
    #[arg(short, long, global = true)]
    pub quiet: bool,
    /// The subcommand
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Save this server in one pass: image, bundle, upload and register, resumable (needs root)
    Save(Box<bundle_vol::BundleVolArgs>),
    /// Save a running system or any directory as an image and bundle it (needs root)
    BundleVol(Box<bundle_vol::BundleVolArgs>),
    /// Bundle an image file (or stdin), or an EBS snapshot, into encrypted parts and a signed
    /// manifest
    BundleImage(Box<bundle_image::BundleImageArgs>),
    /// Rebuild the image from a bundle with the user's private key
    Unbundle(unbundle::UnbundleArgs),
    /// Check a bundle: signature, part digests and, with a key, the whole stream
    Verify(verify::VerifyArgs),
    /// Check that an image or bundle will boot on an instance-store (Xen) instance: bootloader,
    /// kernel, root=, drivers, fstab, serial console (read-only; needs root)
    CheckImage(Box<check_image::CheckImageArgs>),
    /// Show or install the EC2 certificates bundles are encrypted for
    Certs(certs::CertsArgs),
    /// Upload a bundle to S3 (parts concurrently, resumable, manifest last)
    Upload(Box<upload::UploadArgs>),
    /// Download a bundle from S3, checking every part
    Download(Box<download::DownloadArgs>),
    /// Delete a bundle from S3: the manifest first, then exactly its parts
    Delete(Box<delete::DeleteArgs>),
    /// Restore a bundle of a directory (local or s3://) into a directory (needs root)
    Restore(Box<restore::RestoreArgs>),
    /// Register an uploaded bundle as an instance-store AMI (idempotent; waits for "available")
    Register(Box<register::RegisterArgs>),
    /// Re-wrap a manifest for another region's EC2 certificate; set its kernel/ramdisk
    MigrateManifest(Box<migrate_manifest::MigrateManifestArgs>),
    /// Copy an AMI or bundle to other regions: parts copied in S3, manifest re-wrapped,
    /// registered alike
    Copy(Box<copy::CopyArgs>),
    /// Make a disk image into an EBS snapshot (EBS direct APIs, no volume, no helper instance)
    /// and an EBS-backed AMI booting from it
    ToEbs(Box<to_ebs::ToEbsArgs>),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell)
    Completions(generate::CompletionsArgs),
    /// Write man pages, one per command (amibundle.1, amibundle-bundle-vol.1, ...)
    Man(generate::ManArgs),
    /// Create the ec2-* symlinks (ec2-bundle-vol, ec2-upload-bundle ...) that make amibundle a
    /// drop-in for ec2-ami-tools and Packer
    InstallCompat(install_compat::InstallCompatArgs),
}

/// Runs the parsed command.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    let progress = output::CliProgress::new(cli.quiet);
    match cli.command {
        Command::Save(args) => bundle_vol::run_save(args, &progress),
        Command::BundleVol(args) => bundle_vol::run(args, &progress),
        Command::BundleImage(args) => bundle_image::run(args, &progress),
        Command::Unbundle(args) => unbundle::run(args, &progress),
        Command::Verify(args) => verify::run(args, &progress),
        Command::CheckImage(args) => check_image::run(*args, &progress),
        Command::Certs(args) => certs::run(args),
        Command::Upload(args) => upload::run(*args, &progress),
        Command::Download(args) => download::run(*args, &progress),
        Command::Delete(args) => delete::run(*args),
        Command::Register(args) => register::run(*args),
        Command::Restore(args) => restore::run(*args, &progress),
        Command::MigrateManifest(args) => migrate_manifest::run(*args),
        Command::Copy(args) => copy::run(*args),
        Command::ToEbs(args) => to_ebs::run(*args, &progress),
        Command::Completions(args) => generate::run_completions(&args),
        Command::Man(args) => generate::run_man(&args),
        Command::InstallCompat(args) => install_compat::run(args),
    }
}
