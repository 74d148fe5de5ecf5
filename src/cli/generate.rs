//! `completions` and `man`: shell completion scripts and man pages generated from the clap
//! definitions themselves, so they cannot disagree with the parser. Hidden commands and flags
//! stay out of both (clap_complete and clap_mangen skip them).

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Args, CommandFactory};
use clap_complete::Shell;
use serde_json::json;

use super::{Cli, output};

/// `amibundle completions SHELL`.
#[derive(Debug, Args)]
#[command(after_help = "Install, e.g.:\n  \
    amibundle completions bash > /etc/bash_completion.d/amibundle\n  \
    amibundle completions zsh > \"${fpath[1]}/_amibundle\"\n  \
    amibundle completions fish > ~/.config/fish/completions/amibundle.fish")]
pub struct CompletionsArgs {
    /// The shell to write the completion script for
    #[arg(value_enum)]
    pub shell: Shell,
}

/// `amibundle man [DIR]`.
#[derive(Debug, Args)]
#[command(after_help = "Install, e.g.:\n  \
    amibundle man /usr/local/share/man/man1 && mandb -q")]
pub struct ManArgs {
    /// Directory to write the pages into (created if missing)
    #[arg(default_value = ".")]
    pub dir: PathBuf,
    /// Print the list of pages written as JSON on stdout
    #[arg(long)]
    pub json: bool,
}

/// Prints the completion script for `args.shell` on stdout.
pub fn run_completions(args: &CompletionsArgs) -> anyhow::Result<()> {
    let mut out = io::stdout().lock();
    write_completions(args.shell, &mut out)?;
    out.flush()
        .context("writing the completion script to stdout")?;
    Ok(())
}

/// Writes the completion script of `amibundle` for `shell`.
pub fn write_completions(shell: Shell, out: &mut dyn Write) -> anyhow::Result<()> {
    let mut cmd = visible_only(&Cli::command());
    // clap_complete writes through `out`; a failed write (a closed pipe) is reported by the
    // caller's flush.
    clap_complete::generate(shell, &mut cmd, "amibundle", out);
    Ok(())
}

/// A copy of `cmd` with only what `--help` shows: clap_complete's generators (4.6) offer hidden
/// flags and subcommands too, and those are hidden because nobody should type them (refused or
/// compatibility-only flags). Only what completion reads is kept: names, help, version, visible
/// aliases, the visible arguments (with their values and hints) and subcommands, recursively.
fn visible_only(cmd: &clap::Command) -> clap::Command {
    let mut out = clap::Command::new(cmd.get_name().to_string())
        .disable_help_subcommand(true)
        .args(cmd.get_arguments().filter(|a| !a.is_hide_set()).cloned())
        .visible_aliases(cmd.get_visible_aliases().map(str::to_string))
        .subcommands(
            cmd.get_subcommands()
                .filter(|s| !s.is_hide_set())
                .map(visible_only),
        );
    if let Some(about) = cmd.get_about() {
        out = out.about(about.clone());
    }
    if let Some(version) = cmd.get_version() {
        out = out.version(version.to_string());
    }
    out
}

/// Writes the man pages into `args.dir` and prints their paths (one a line, or as JSON).
pub fn run_man(args: &ManArgs) -> anyhow::Result<()> {
    let written = write_man_pages(&args.dir)?;
    if args.json {
        output::print_json(&json!({
            "version": 1,
            "command": "man",
            "pages": written,
        }))?;
    } else {
        for path in &written {
            println!("{}", path.display());
        }
    }
    Ok(())
}

/// Writes `amibundle.1` and one page per visible subcommand, nested ones included
/// (`amibundle-bundle-vol.1`, `amibundle-certs-install.1`, ...), into `dir`, which is created
/// if missing. Returns the paths written, the top-level page first.
pub fn write_man_pages(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("creating the man page directory {}", dir.display()))?;
    // Building resolves each subcommand's display name ("amibundle-bundle-vol") that clap_mangen
    // takes as the page's title and file name; `help` is clap's own and has no page.
    let mut cmd = Cli::command().disable_help_subcommand(true);
    cmd.build();
    let mut written = Vec::new();
    write_pages(&cmd, dir, &mut written)?;
    Ok(written)
}

fn write_pages(cmd: &clap::Command, dir: &Path, written: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    let man = clap_mangen::Man::new(cmd.clone()).manual("amibundle manual");
    let path = dir.join(man.get_filename());
    let mut page = Vec::new();
    man.render(&mut page)
        .with_context(|| format!("rendering the man page {}", path.display()))?;
    std::fs::write(&path, page).with_context(|| format!("writing {}", path.display()))?;
    written.push(path);
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        write_pages(sub, dir, written)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn completions(shell: Shell) -> String {
        let mut out = Vec::new();
        write_completions(shell, &mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn every_shell_gets_a_script_naming_the_subcommands() {
        for shell in [
            Shell::Bash,
            Shell::Zsh,
            Shell::Fish,
            Shell::Elvish,
            Shell::PowerShell,
        ] {
            let script = completions(shell);
            for word in ["bundle-vol", "upload", "migrate-manifest", "completions"] {
                assert!(script.contains(word), "{shell}: no {word}");
            }
        }
    }

    #[test]
    fn bash_completes_bundle_vol_flags_but_not_hidden_ones() {
        let script = completions(Shell::Bash);
        assert!(
            script.contains("amibundle,bundle-vol)"),
            "no bundle-vol case"
        );
        // bundle-vol's own case lists its flags on its `opts=` line.
        let case = script
            .split("amibundle__subcmd__bundle__subcmd__vol)")
            .nth(1)
            .expect("bundle-vol's option case");
        let opts = case.lines().find(|l| l.contains("opts=")).unwrap();
        for flag in ["--volume", "-v ", "--generate-fstab", "--upload"] {
            assert!(opts.contains(flag), "{flag} missing from {opts}");
        }
        // Hidden flags (register's --boot-mode and --tpm-support, bundle-vol's --batch) are not
        // offered.
        let cmd = Cli::command();
        let mut hidden = Vec::new();
        collect_hidden(&cmd, &mut hidden);
        assert!(
            !hidden.is_empty(),
            "the test needs at least one hidden flag"
        );
        for flag in hidden {
            assert!(
                !script.contains(&format!("--{flag} ")),
                "hidden --{flag} is completed"
            );
        }
    }

    /// Long names of hidden flags no visible flag shares.
    fn collect_hidden(cmd: &clap::Command, out: &mut Vec<String>) {
        let mut visible = Vec::new();
        all_flags(cmd, &mut visible, false);
        let mut hidden = Vec::new();
        all_flags(cmd, &mut hidden, true);
        out.extend(hidden.into_iter().filter(|h| !visible.contains(h)));
    }

    fn all_flags(cmd: &clap::Command, out: &mut Vec<String>, hidden: bool) {
        for arg in cmd.get_arguments() {
            if arg.is_hide_set() == hidden {
                if let Some(long) = arg.get_long() {
                    out.push(long.to_string());
                }
            }
        }
        for sub in cmd.get_subcommands() {
            all_flags(sub, out, hidden);
        }
    }

    #[test]
    fn one_man_page_per_subcommand_nested_included() {
        let dir = tempfile::tempdir().unwrap();
        let written = write_man_pages(dir.path()).unwrap();
        let names: Vec<String> = written
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names[0], "amibundle.1");
        let mut expected = vec!["amibundle.1".to_string()];
        for sub in Cli::command().get_subcommands() {
            expected.push(format!("amibundle-{}.1", sub.get_name()));
            for nested in sub.get_subcommands() {
                expected.push(format!(
                    "amibundle-{}-{}.1",
                    sub.get_name(),
                    nested.get_name()
                ));
            }
        }
        let mut sorted = names.clone();
        sorted.sort();
        expected.sort();
        assert_eq!(sorted, expected);
        assert!(names.contains(&"amibundle-certs-install.1".to_string()));
        assert!(!names.iter().any(|n| n.contains("help")), "{names:?}");
        let page = std::fs::read_to_string(dir.path().join("amibundle-bundle-vol.1")).unwrap();
        assert!(
            page.starts_with(".ie") || page.starts_with(".TH"),
            "{page:.80}"
        );
        assert!(page.contains(".TH amibundle-bundle-vol 1"), "{page:.300}");
        assert!(page.contains("volume"));
    }
}
