//! Command-line interface: clap definitions and one function per subcommand. Thin: parsing,
//! choosing defaults, printing; the work is done by [`crate::bundle`].

mod bundle_image;
mod certs;
mod keys;
pub mod output;
mod unbundle;
mod verify;

use clap::{Parser, Subcommand};

/// Exit code for a failure.
pub const EXIT_FAILURE: i32 = 1;
/// Exit code for a usage error (clap's own).
pub const EXIT_USAGE: i32 = 2;
/// Exit code for an interrupted run.
pub const EXIT_INTERRUPTED: i32 = 130;

/// Save a Linux server or an image as an EC2 instance-store AMI bundle.
#[derive(Debug, Parser)]
#[command(name = "amibundle", version, about, max_term_width = 80)]
pub struct Cli {
    /// More log output (-v debug, -vv trace)
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
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
    /// Bundle an image file (or stdin) into encrypted parts and a signed manifest
    BundleImage(Box<bundle_image::BundleImageArgs>),
    /// Rebuild the image from a bundle with the user's private key
    Unbundle(unbundle::UnbundleArgs),
    /// Check a bundle: signature, part digests and, with a key, the whole stream
    Verify(verify::VerifyArgs),
    /// Show or install the EC2 certificates bundles are encrypted for
    Certs(certs::CertsArgs),
}

/// Runs the parsed command.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    let progress = output::CliProgress::new(cli.quiet);
    match cli.command {
        Command::BundleImage(args) => bundle_image::run(args, &progress),
        Command::Unbundle(args) => unbundle::run(args, &progress),
        Command::Verify(args) => verify::run(args, &progress),
        Command::Certs(args) => certs::run(args),
    }
}
