//! Running external programs for the image code (`mke2fs`, `blkid`, `grub-install` …): finding
//! one on a `PATH`-like search list ([`SearchPath`]), running it without a shell, stdin closed
//! and its output captured ([`output`]), and the parts of the error a failed run becomes: its
//! command line ([`shell_line`], [`command_line`]) and the end of its standard error
//! ([`stderr_tail`]).
//!
//! The callers keep their own error types and messages (`fs::FsError::Tool*`,
//! `partition::BootloaderError::{Spawn, Failed}`) and their own environment (`fs` sets
//! `LC_ALL=C` because it parses the output); this module supplies the pieces they share.

use std::ffi::OsStr;
use std::io;
use std::os::unix::fs::PermissionsExt as _;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

/// Directories searched after `PATH` by [`SearchPath::path_then_sbin`]: a non-root login's
/// `PATH` often lacks them, and that is where every distribution installs mkfs, blkid and
/// dumpe2fs.
const SBIN_DIRS: [&str; 2] = ["/usr/sbin", "/sbin"];

/// Where [`SearchPath::find`] looks for a program: directories, in order.
///
/// There are two rules because the callers differ. The filesystem tools (`fs`: mkfs, blkid,
/// dumpe2fs) are looked for on `PATH` and then in `/usr/sbin` and `/sbin`
/// ([`SearchPath::path_then_sbin`]), where they are installed but where a non-root `PATH` often
/// does not lead. GRUB's installer (`partition`) is looked for on exactly the `PATH` given
/// ([`SearchPath::path`]): its tests give a `PATH` of fake installers, or one without any, and
/// the host's real `grub-install` in `/usr/sbin` must not be found instead. The two also treat
/// an empty `PATH` entry differently, as they always have: `path` skips it, `path_then_sbin`
/// keeps it, and it then names the program relative to the current directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SearchPath {
    dirs: Vec<PathBuf>,
}

impl SearchPath {
    /// The directories of `path` (a `PATH` value), empty entries skipped.
    pub(crate) fn path(path: &OsStr) -> Self {
        Self {
            dirs: std::env::split_paths(path)
                .filter(|dir| !dir.as_os_str().is_empty())
                .collect(),
        }
    }

    /// The directories of `path_var` (a `PATH` value, or none), then [`SBIN_DIRS`].
    pub(crate) fn path_then_sbin(path_var: Option<&OsStr>) -> Self {
        let from_path = path_var
            .map(|p| std::env::split_paths(p).collect::<Vec<_>>())
            .unwrap_or_default();
        Self {
            dirs: from_path
                .into_iter()
                .chain(SBIN_DIRS.iter().map(PathBuf::from))
                .collect(),
        }
    }

    /// The first executable regular file (after symlinks) called `name` in the directories.
    pub(crate) fn find(&self, name: &str) -> Option<PathBuf> {
        self.dirs.iter().map(|dir| dir.join(name)).find(|p| {
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
    }
}

/// Runs `cmd` to its end without a shell, stdin closed, stdout and stderr captured; returns its
/// output whatever the exit status.
///
/// # Errors
/// When the program cannot be started.
pub(crate) fn output(cmd: &mut Command) -> io::Result<Output> {
    cmd.stdin(Stdio::null()).output()
}

/// `program` and `args` as they would be typed in a shell ([`quote`]d), for error messages.
pub(crate) fn shell_line(program: &str, args: &[&OsStr]) -> String {
    std::iter::once(program.to_owned())
        .chain(args.iter().map(|a| quote(a)))
        .collect::<Vec<_>>()
        .join(" ")
}

/// An argument as it would be typed in a shell, for error messages.
pub(crate) fn quote(arg: &OsStr) -> String {
    let text = arg.to_string_lossy();
    let plain = !text.is_empty()
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./=:,^@%+".contains(&b));
    if plain {
        text.into_owned()
    } else {
        format!("'{}'", text.replace('\'', r"'\''"))
    }
}

/// The program and arguments of `cmd` joined by spaces, unquoted, for error messages.
pub(crate) fn command_line(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// How much of a failed program's standard error [`stderr_tail`] keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Tail {
    /// At most this many bytes from its end (cut at a character boundary), newlines shown as
    /// `; `; nothing when it is empty (`fs`).
    Bytes(usize),
    /// At most this many of its last non-blank lines joined by `; `, or `no error output`
    /// (`partition`).
    Lines(usize),
}

/// The end of `stderr`, as [`Tail`] says, for an error message.
pub(crate) fn stderr_tail(stderr: &[u8], tail: Tail) -> String {
    let text = String::from_utf8_lossy(stderr);
    match tail {
        Tail::Bytes(max) => {
            let text = text.trim();
            let start = text
                .char_indices()
                .map(|(i, _)| i)
                .find(|&i| text.len() - i <= max)
                .unwrap_or(text.len());
            text[start..].replace('\n', "; ")
        }
        Tail::Lines(max) => {
            let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
            let start = lines.len().saturating_sub(max);
            let tail = lines[start..].join("; ");
            if tail.is_empty() {
                "no error output".to_owned()
            } else {
                tail
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    /// The search `fs` makes for its tools.
    fn find_program(program: &str, path_var: Option<&OsStr>) -> Option<PathBuf> {
        SearchPath::path_then_sbin(path_var).find(program)
    }

    #[test]
    fn finds_programs_on_path_then_in_sbin() {
        let dir = tempfile::tempdir().expect("temp dir");
        let bin = dir.path().join("bin");
        std::fs::create_dir(&bin).expect("bin");
        let tool = bin.join("mytool");
        std::fs::write(&tool, "#!/bin/sh\n").expect("tool");
        std::fs::write(bin.join("notexec"), "").expect("file");
        let path = std::env::join_paths([Path::new("/nonexistent"), &bin]).expect("PATH");
        assert_eq!(
            find_program("mytool", Some(&path)),
            None,
            "not executable yet"
        );
        std::fs::set_permissions(&tool, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .expect("chmod");
        assert_eq!(find_program("mytool", Some(&path)), Some(tool));
        assert_eq!(find_program("notexec", Some(&path)), None);
        // Found in /usr/sbin or /sbin even with an empty PATH.
        let blkid = find_program("blkid", Some(OsStr::new(""))).expect("blkid in sbin");
        assert!(blkid.starts_with("/usr/sbin") || blkid.starts_with("/sbin"));
        assert_eq!(find_program("no-such-program-xyz", None), None);
    }
}
