//! The `ec2-*` drop-in personalities: when the binary is invoked as `ec2-bundle-vol`,
//! `ec2-upload-bundle` … (through the symlinks `amibundle install-compat` makes), the classic
//! tool's command line is parsed with that tool's own flags and defaults and translated into the
//! native command line, which the native parser then checks and the native code runs. Owns the
//! classic parsers, the translation, the classic `--version`/`--manual` and credential handling
//! (command-line secrets never go into the native argv, messages or `Debug` output).

mod bundle;
mod local;
mod migrate;
mod s3;

use std::ffi::{OsStr, OsString};
use std::path::Path;

use clap::{Args, Parser};

use super::{Cli, Command};

/// The classic tools amibundle can stand in for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tool {
    /// `ec2-bundle-vol`
    BundleVol,
    /// `ec2-bundle-image`
    BundleImage,
    /// `ec2-upload-bundle`
    UploadBundle,
    /// `ec2-download-bundle`
    DownloadBundle,
    /// `ec2-unbundle`
    Unbundle,
    /// `ec2-delete-bundle`
    DeleteBundle,
    /// `ec2-migrate-manifest`
    MigrateManifest,
    /// `ec2-migrate-bundle`
    MigrateBundle,
    /// `ec2-ami-tools-version`
    Version,
}

impl Tool {
    /// Every personality, in the order `install-compat` lists them.
    pub const ALL: [Tool; 9] = [
        Tool::BundleVol,
        Tool::BundleImage,
        Tool::UploadBundle,
        Tool::DownloadBundle,
        Tool::Unbundle,
        Tool::DeleteBundle,
        Tool::MigrateManifest,
        Tool::MigrateBundle,
        Tool::Version,
    ];

    /// The classic command name.
    pub fn name(self) -> &'static str {
        match self {
            Tool::BundleVol => "ec2-bundle-vol",
            Tool::BundleImage => "ec2-bundle-image",
            Tool::UploadBundle => "ec2-upload-bundle",
            Tool::DownloadBundle => "ec2-download-bundle",
            Tool::Unbundle => "ec2-unbundle",
            Tool::DeleteBundle => "ec2-delete-bundle",
            Tool::MigrateManifest => "ec2-migrate-manifest",
            Tool::MigrateBundle => "ec2-migrate-bundle",
            Tool::Version => "ec2-ami-tools-version",
        }
    }

    /// The native subcommand the tool is translated into.
    fn native(self) -> &'static str {
        match self {
            Tool::BundleVol => "bundle-vol",
            Tool::BundleImage => "bundle-image",
            Tool::UploadBundle => "upload",
            Tool::DownloadBundle => "download",
            Tool::Unbundle => "unbundle",
            Tool::DeleteBundle => "delete",
            Tool::MigrateManifest => "migrate-manifest",
            Tool::MigrateBundle => "copy",
            Tool::Version => "--version",
        }
    }

    /// The personality for `argv[0]` (its basename), if it names one.
    pub fn from_argv0(argv0: &OsStr) -> Option<Tool> {
        let base = Path::new(argv0).file_name()?.to_str()?;
        Tool::ALL.into_iter().find(|t| t.name() == base)
    }
}

/// The native command line for this process: the classic tool's, translated, when `argv[0]`
/// names a personality; else the native parse. `Err(code)`: the process should exit with `code`
/// (help, version, manual or a usage error, already printed).
pub fn parse_args() -> Result<(Cli, Option<Tool>), i32> {
    let argv: Vec<OsString> = std::env::args_os().collect();
    let tool = argv.first().and_then(|a| Tool::from_argv0(a));
    match tool {
        Some(tool) => parse_classic(tool, argv).map(|cli| (cli, Some(tool))),
        None => Ok((Cli::parse(), None)),
    }
}

/// The classic tool's own parser (its flags, for [`foreign_flags`]).
fn classic_command(tool: Tool) -> clap::Command {
    use clap::CommandFactory;
    match tool {
        Tool::BundleVol => bundle::BundleVol::command(),
        Tool::BundleImage => bundle::BundleImage::command(),
        Tool::UploadBundle => s3::Upload::command(),
        Tool::DownloadBundle => s3::Download::command(),
        Tool::DeleteBundle => s3::Delete::command(),
        Tool::Unbundle => local::Unbundle::command(),
        Tool::MigrateManifest => local::MigrateManifest::command(),
        Tool::MigrateBundle => migrate::MigrateBundle::command(),
        Tool::Version => VersionOnly::command(),
    }
}

/// The long flags `message` names that the classic `tool` does not have (in order, once
/// each): an error's hint written for the native command, such as `--fix-ownership` or
/// `--skip-signature`. Commands quoted in backticks (another program's, such as `aws s3api …`)
/// are not looked into.
pub fn foreign_flags(tool: Tool, message: &str) -> Vec<String> {
    // Blank out the quoted commands, keeping byte positions.
    let mut quoted = false;
    let message: String = message
        .chars()
        .map(|c| {
            if c == '`' {
                quoted = !quoted;
            }
            if quoted { ' ' } else { c }
        })
        .collect();
    let message = message.as_str();
    let cmd = classic_command(tool);
    let known: Vec<&str> = cmd
        .get_arguments()
        .filter_map(|a| a.get_long())
        .chain(["help"])
        .collect();
    let mut found: Vec<String> = Vec::new();
    let bytes = message.as_bytes();
    let mut i = 0;
    while let Some(at) = message[i..].find("--") {
        let start = i + at;
        let name_start = start + 2;
        let mut end = name_start;
        while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'-') {
            end += 1;
        }
        let boundary = start == 0 || !bytes[start - 1].is_ascii_alphanumeric();
        let name = message[name_start..end].trim_end_matches('-');
        if boundary
            && name.len() > 1
            && name.as_bytes()[0].is_ascii_lowercase()
            && !known.contains(&name)
            && !found.iter().any(|f| f[2..] == *name)
        {
            found.push(format!("--{name}"));
        }
        i = end.max(name_start);
    }
    found
}

/// A note for an error printed under a personality whose hint names flags the classic tool
/// lacks: where those flags are.
pub fn error_note(tool: Tool, message: &str) -> Option<String> {
    let flags = foreign_flags(tool, message);
    if flags.is_empty() || tool == Tool::Version {
        return None;
    }
    Some(format!(
        "{list} {are} {name} flag{s}: run `amibundle {native}` with {them} instead (see \
         amibundle {native} --help)",
        list = flags.join(", "),
        are = if flags.len() == 1 {
            "is not an"
        } else {
            "are not"
        },
        name = tool.name(),
        s = if flags.len() == 1 { "" } else { "s" },
        native = tool.native(),
        them = if flags.len() == 1 { "it" } else { "them" },
    ))
}

/// Parses a classic command line (argv[0] included) into the native command.
fn parse_classic(tool: Tool, argv: Vec<OsString>) -> Result<Cli, i32> {
    let translation = match translate(tool, argv) {
        Ok(Outcome::Run(t)) => t,
        Ok(Outcome::Print(text)) => {
            print!("{text}");
            return Err(0);
        }
        Err(Refusal::Clap(e)) => {
            let code = e.exit_code();
            let _ = e.print();
            if code != 0 && tool != Tool::Version {
                eprintln!(
                    "note: this is amibundle's {name}; it accepts the flags of ec2-ami-tools 1.5.3's {name} (see {name} --help, or amibundle {native} --help for the native command)",
                    name = tool.name(),
                    native = tool.native()
                );
            }
            return Err(code);
        }
        Err(Refusal::Message(msg)) => {
            eprintln!("{}: {msg}", tool.name());
            return Err(super::EXIT_USAGE);
        }
    };
    for note in &translation.notes {
        eprintln!("{}: note: {note}", tool.name());
    }
    let mut cli = match Cli::try_parse_from(&translation.argv) {
        Ok(cli) => cli,
        Err(e) => {
            // A value the classic parser let through but the native one refuses: say so in the
            // classic tool's name.
            eprintln!(
                "{}: {}",
                tool.name(),
                e.render()
                    .to_string()
                    .trim_start_matches("error: ")
                    .trim_end()
            );
            return Err(super::EXIT_USAGE);
        }
    };
    translation.credentials.inject(&mut cli.command);
    Ok(cli)
}

/// What a classic command line comes to.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// Run the native command.
    Run(Translation),
    /// Print this (`--version`, `--manual`) and exit 0.
    Print(String),
}

/// Why a classic command line is not run.
#[derive(Debug)]
pub(crate) enum Refusal {
    /// The classic parser's own error (or `--help`).
    Clap(clap::Error),
    /// A flag amibundle accepts but cannot honour, or inconsistent flags.
    Message(String),
}

impl From<clap::Error> for Refusal {
    fn from(e: clap::Error) -> Self {
        Refusal::Clap(e)
    }
}

/// A classic command line translated.
#[derive(Debug)]
pub(crate) struct Translation {
    /// The native argv (`amibundle SUBCOMMAND …`), without any secret.
    pub argv: Vec<OsString>,
    /// Credentials from `-a/-s/-t`, set on the parsed native command.
    pub credentials: Credentials,
    /// Things the user should know (flags accepted but meaning something else here).
    pub notes: Vec<String>,
}

/// Translates a classic command line (argv[0] included).
pub(crate) fn translate(tool: Tool, argv: Vec<OsString>) -> Result<Outcome, Refusal> {
    match tool {
        Tool::BundleVol => bundle::bundle_vol(argv),
        Tool::BundleImage => bundle::bundle_image(argv),
        Tool::UploadBundle => s3::upload(argv),
        Tool::DownloadBundle => s3::download(argv),
        Tool::DeleteBundle => s3::delete(argv),
        Tool::Unbundle => local::unbundle(argv),
        Tool::MigrateManifest => local::migrate_manifest(argv),
        Tool::MigrateBundle => migrate::migrate_bundle(argv),
        Tool::Version => version_only(argv),
    }
}

/// ec2-ami-tools-version: only the version (and `--help`).
#[derive(Debug, Parser)]
#[command(disable_version_flag = true, max_term_width = 80)]
struct VersionOnly {
    #[command(flatten)]
    common: Common,
}

/// `ec2-ami-tools-version`: prints the version line scripts check (first word `1.5.3`, the
/// ec2-ami-tools release amibundle stands in for).
fn version_only(argv: Vec<OsString>) -> Result<Outcome, Refusal> {
    let a: VersionOnly = parse_with(Tool::Version, argv)?;
    Ok(Outcome::Print(
        a.common
            .print(Tool::Version)
            .unwrap_or_else(|| version_text(Tool::Version)),
    ))
}

/// Parses `argv` with the classic parser `P`, named after the tool. Like the reference's Ruby
/// OptionParser, any unambiguous prefix of a long option is taken for it (`--dest`,
/// `--ec2c`, `--no-filt`); an ambiguous one is refused.
fn parse_with<P: Parser>(tool: Tool, argv: Vec<OsString>) -> Result<P, Refusal> {
    let mut cmd = P::command()
        .name(tool.name())
        .bin_name(tool.name())
        .infer_long_args(true);
    let matches = cmd.try_get_matches_from_mut(argv)?;
    Ok(P::from_arg_matches(&matches)?)
}

/// A flag the classic tool requires (checked after `--version`/`--manual`, which need none).
fn require<'a, T>(value: &'a Option<T>, flag: &str) -> Result<&'a T, Refusal> {
    value
        .as_ref()
        .ok_or_else(|| Refusal::Message(format!("{flag} is required (see --help)")))
}

/// Options every classic tool has.
#[derive(Debug, Args)]
pub(crate) struct Common {
    /// Never prompt: a confirmation is taken as given (only ec2-delete-bundle -p asks)
    #[arg(long)]
    pub batch: bool,
    /// More log output
    #[arg(long)]
    pub debug: bool,
    /// Print a short manual and exit
    #[arg(long)]
    pub manual: bool,
    /// Print the version and exit
    #[arg(long)]
    pub version: bool,
}

impl Common {
    /// `--version` or `--manual` output, if asked for.
    fn print(&self, tool: Tool) -> Option<String> {
        if self.version {
            Some(version_text(tool))
        } else if self.manual {
            Some(manual_text(tool))
        } else {
            None
        }
    }
}

/// The classic-looking version line (ec2-ami-tools printed "1.5.3 20071010" and a copyright).
pub(crate) fn version_text(tool: Tool) -> String {
    format!(
        "1.5.3 20071010 ({} from amibundle {}, a drop-in replacement for ec2-ami-tools)\n",
        tool.name(),
        env!("CARGO_PKG_VERSION")
    )
}

/// The short manual `--manual` prints.
fn manual_text(tool: Tool) -> String {
    let what = match tool {
        Tool::BundleVol => {
            "Copies a live volume (default /) into a new image file and bundles it: the manifest \
             <destination>/<prefix>.manifest.xml (default /tmp/image.manifest.xml) and its parts \
             next to it. Loose paths after -e are excluded too; the -k/-c files are never copied \
             into the image."
        }
        Tool::BundleImage => {
            "Bundles an image file (-i) into <destination>/<prefix>.manifest.xml and its parts \
             (default destination /tmp, prefix the image's file name)."
        }
        Tool::UploadBundle => {
            "Uploads the parts of the manifest -m (from -d, default the manifest's directory) and \
             then the manifest to <bucket>[/prefix]/; the bucket is created in --region (or \
             --location, EU and US accepted) if missing. Exit code 3: the bucket belongs to \
             someone else or cannot be written."
        }
        Tool::DownloadBundle => {
            "Downloads <prefix>.manifest.xml (or -m NAME) and its parts from <bucket>[/prefix]/ \
             into -d (default the current directory), checking every part."
        }
        Tool::Unbundle => {
            "Rebuilds the image from the manifest -m and the parts in -s (default .) into -d \
             (default .) with the private key -k, checking every digest."
        }
        Tool::DeleteBundle => {
            "Deletes the bundle of the manifest -m (or <prefix>.manifest.xml with -p) from \
             <bucket>[/prefix]/: the manifest first, then its parts; --clear then removes the \
             empty bucket."
        }
        Tool::MigrateBundle => {
            "Copies the bundle -m from -b BUCKET[/PREFIX] into -d BUCKET[/PREFIX] in the region \
             --location (or --region) names, server-side, its manifest re-wrapped for that \
             region's EC2 certificate and re-signed with -k; prints where the copy is, to be \
             registered there."
        }
        Tool::Version => "Prints the version of ec2-ami-tools amibundle stands in for.",
        Tool::MigrateManifest => {
            "Re-wraps the manifest -m for the EC2 certificate of --region (or --ec2cert), sets \
             --kernel/--ramdisk (--no-mapping drops those not given), re-signs it with -k/-c and \
             keeps the original as <manifest>.bak."
        }
    };
    format!(
        "{name} (amibundle {version}, drop-in for ec2-ami-tools 1.5.3)\n\n{what}\n\n\
         It accepts the classic tool's flags and defaults (see {name} --help) and runs \
         `amibundle {native}`; amibundle's own flags are listed by `amibundle {native} --help`.\n",
        name = tool.name(),
        version = env!("CARGO_PKG_VERSION"),
        native = tool.native()
    )
}

/// A secret from the command line: its `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Secret(String);

impl Secret {
    fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// clap value parser for [`Secret`]: any text.
fn secret(s: &str) -> Result<Secret, std::convert::Infallible> {
    Ok(Secret(s.to_string()))
}

/// Static credentials from `-a/-s/-t`.
#[derive(Debug, Default, Clone)]
pub(crate) struct Credentials {
    pub access_key: Option<Secret>,
    pub secret_key: Option<Secret>,
    pub session_token: Option<Secret>,
}

impl Credentials {
    /// Puts the credentials into the native command's cloud flags.
    fn inject(&self, command: &mut Command) {
        let cloud = match command {
            Command::Upload(a) => &mut a.cloud,
            Command::Download(a) => &mut a.cloud,
            Command::Delete(a) => &mut a.cloud,
            Command::Copy(a) => &mut a.cloud,
            _ => return,
        };
        let get = |s: &Option<Secret>| s.as_ref().map(|s| s.expose().to_string());
        if self.access_key.is_some() {
            cloud.access_key = get(&self.access_key);
            cloud.secret_key = get(&self.secret_key);
            cloud.session_token = get(&self.session_token);
        }
    }
}

/// The native argv being built.
#[derive(Debug)]
pub(crate) struct Argv(Vec<OsString>);

impl Argv {
    /// `amibundle [--debug] SUBCOMMAND`.
    fn new(tool: Tool, common: &Common) -> Self {
        let mut v: Vec<OsString> = vec!["amibundle".into()];
        if common.debug {
            v.push("--debug".into());
        }
        v.push(tool.native().into());
        Argv(v)
    }

    fn flag(&mut self, name: &str) -> &mut Self {
        self.0.push(name.into());
        self
    }

    fn opt(&mut self, name: &str, value: impl Into<OsString>) -> &mut Self {
        self.0.push(name.into());
        self.0.push(value.into());
        self
    }

    fn opt_if<V: Into<OsString> + Clone>(&mut self, name: &str, value: &Option<V>) -> &mut Self {
        if let Some(v) = value {
            self.opt(name, v.clone());
        }
        self
    }

    fn flag_if(&mut self, name: &str, on: bool) -> &mut Self {
        if on {
            self.flag(name);
        }
        self
    }

    fn done(self, credentials: Credentials, notes: Vec<String>) -> Outcome {
        Outcome::Run(Translation {
            argv: self.0,
            credentials,
            notes,
        })
    }
}

#[cfg(test)]
mod tests;
