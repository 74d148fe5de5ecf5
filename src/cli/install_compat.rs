//! `amibundle install-compat [DIR]`: the seven `ec2-*` symlinks to this binary, so that scripts
//! and Packer templates calling the classic tools run amibundle (see [`super::compat`]).

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::Args;

use super::compat::Tool;

/// Arguments of `install-compat`.
#[derive(Debug, Args)]
pub struct InstallCompatArgs {
    /// Directory for the symlinks (on root's PATH for Packer's `sudo -i`)
    #[arg(value_name = "DIR", default_value = "/usr/local/bin")]
    pub dir: PathBuf,
}

/// What will happen to one link.
enum Plan {
    Create,
    Replace,
    Unchanged,
}

/// Runs `install-compat`.
pub fn run(args: InstallCompatArgs) -> anyhow::Result<()> {
    let exe = std::env::current_exe()
        .and_then(std::fs::canonicalize)
        .context("finding this program's own path to link to")?;
    let dir = &args.dir;
    if !dir.is_dir() {
        bail!(
            "{} is not a directory: create it or name another",
            dir.display()
        );
    }
    // Decide for every link before touching any, so a refusal changes nothing.
    let mut plans = Vec::new();
    for tool in Tool::ALL {
        let link = dir.join(tool.name());
        plans.push((link.clone(), plan(&link, &exe)?));
    }
    for (link, plan) in plans {
        match plan {
            Plan::Unchanged => println!("{} -> {} (already there)", link.display(), exe.display()),
            Plan::Create => {
                std::os::unix::fs::symlink(&exe, &link)
                    .with_context(|| format!("creating the symlink {}", link.display()))?;
                println!("{} -> {} (created)", link.display(), exe.display());
            }
            Plan::Replace => {
                // A new link renamed over the old one: the name is never missing.
                let tmp = dir.join(format!(".{}.amibundle-tmp", tool_name(&link)));
                let _ = std::fs::remove_file(&tmp);
                std::os::unix::fs::symlink(&exe, &tmp)
                    .with_context(|| format!("creating the symlink {}", tmp.display()))?;
                std::fs::rename(&tmp, &link)
                    .with_context(|| format!("replacing the symlink {}", link.display()))?;
                println!("{} -> {} (replaced)", link.display(), exe.display());
            }
        }
    }
    Ok(())
}

fn tool_name(link: &Path) -> String {
    link.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Only our own links are replaced: a symlink to an `amibundle` binary (this one or another
/// install). Anything else — a file, the Ruby tools' launchers, a link elsewhere — is refused.
fn plan(link: &Path, exe: &Path) -> anyhow::Result<Plan> {
    let md = match std::fs::symlink_metadata(link) {
        Ok(md) => md,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Plan::Create),
        Err(e) => return Err(e).with_context(|| format!("looking at {}", link.display())),
    };
    if !md.file_type().is_symlink() {
        bail!(
            "{} exists and is not a symlink (the classic tool?): amibundle does not overwrite it; move it away and run install-compat again",
            link.display()
        );
    }
    let target =
        std::fs::read_link(link).with_context(|| format!("reading the link {}", link.display()))?;
    let resolved = link
        .parent()
        .map_or_else(|| target.clone(), |p| p.join(&target));
    if std::fs::canonicalize(&resolved).is_ok_and(|t| t == exe) {
        return Ok(Plan::Unchanged);
    }
    if target.file_name().is_some_and(|n| n == "amibundle") {
        return Ok(Plan::Replace);
    }
    bail!(
        "{} is a symlink to {}, not to amibundle: amibundle does not overwrite it; remove it and run install-compat again",
        link.display(),
        target.display()
    )
}
