//! `--exclude` and `--include` patterns: paths anchored at the volume's root whose components
//! may hold the shell wildcards `*`, `?` and `[…]`, expanded into host paths
//! ([`expand_pattern`]).

use std::ffi::OsString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use super::tree::list_dir;

/// Expands `--exclude`/`--include` patterns into host paths under `volume`. A pattern is a path
/// anchored at the volume's root (`/var/cache` with `--volume /data` means `/data/var/cache`;
/// a path already under the volume is taken as it is); its components may hold the shell
/// wildcards `*`, `?` and `[…]` (so Packer's `-e /tmp/*` leaves `/tmp` itself and drops its
/// contents). Returns the matches and whether the pattern matched nothing.
pub fn expand_pattern(volume: &Path, pattern: &Path) -> (Vec<PathBuf>, bool) {
    let rel: PathBuf = if volume != Path::new("/") && pattern.starts_with(volume) {
        pattern
            .strip_prefix(volume)
            .map(Path::to_path_buf)
            .unwrap_or_default()
    } else {
        pattern
            .components()
            .filter(|c| !matches!(c, Component::RootDir | Component::CurDir))
            .collect()
    };
    let mut current = vec![volume.to_path_buf()];
    for comp in rel.components() {
        let Component::Normal(name) = comp else {
            // `..` could leave the volume: such a pattern matches nothing.
            return (Vec::new(), true);
        };
        let name = name.as_bytes();
        let mut next = Vec::new();
        for dir in &current {
            if has_wildcard(name) {
                let Ok(entries) = list_dir(dir) else {
                    continue;
                };
                let mut names: Vec<OsString> = entries
                    .into_iter()
                    .filter(|n| glob_match(name, n.as_bytes()))
                    .collect();
                names.sort();
                next.extend(names.into_iter().map(|n| dir.join(n)));
            } else {
                let p = dir.join(std::ffi::OsStr::from_bytes(name));
                if fs::symlink_metadata(&p).is_ok() {
                    next.push(p);
                }
            }
        }
        current = next;
    }
    let none = current.is_empty() || current == [volume.to_path_buf()];
    if current == [volume.to_path_buf()] {
        current.clear();
    }
    (current, none)
}

fn has_wildcard(name: &[u8]) -> bool {
    name.iter().any(|b| matches!(b, b'*' | b'?' | b'['))
}

/// Shell-style match of one path component: `*`, `?`, `[abc]`, `[a-z]`, `[!x]`. A leading `.`
/// must be matched literally, as in the shell, so a pattern means what it would have meant had
/// the shell expanded it (`/tmp/*` does not take `/tmp/.X11-unix`).
fn glob_match(pattern: &[u8], name: &[u8]) -> bool {
    if name.first() == Some(&b'.') && pattern.first() != Some(&b'.') {
        return false;
    }
    glob_from(pattern, name)
}

fn glob_from(p: &[u8], n: &[u8]) -> bool {
    match p.first() {
        None => n.is_empty(),
        Some(b'*') => (0..=n.len()).any(|i| glob_from(&p[1..], &n[i..])),
        Some(b'?') => !n.is_empty() && glob_from(&p[1..], &n[1..]),
        Some(b'[') => {
            let Some(&c) = n.first() else { return false };
            match class_match(&p[1..], c) {
                Some((matched, rest)) => matched && glob_from(rest, &n[1..]),
                // An unclosed `[` is a literal.
                None => c == b'[' && glob_from(&p[1..], &n[1..]),
            }
        }
        Some(&c) => n.first() == Some(&c) && glob_from(&p[1..], &n[1..]),
    }
}

/// Matches `c` against a bracket class starting after `[`; returns the result and the pattern
/// after `]`, or `None` when the class is not closed.
fn class_match(p: &[u8], c: u8) -> Option<(bool, &[u8])> {
    let (negate, mut i) = match p.first() {
        Some(b'!' | b'^') => (true, 1),
        _ => (false, 0),
    };
    let mut matched = false;
    let mut first = true;
    while i < p.len() {
        if p[i] == b']' && !first {
            return Some((matched != negate, &p[i + 1..]));
        }
        first = false;
        if i + 2 < p.len() && p[i + 1] == b'-' && p[i + 2] != b']' {
            if (p[i]..=p[i + 2]).contains(&c) {
                matched = true;
            }
            i += 3;
        } else {
            if p[i] == c {
                matched = true;
            }
            i += 1;
        }
    }
    None
}

/// [`expand_pattern`] for each of `patterns` (the values of `flag`), warning about those that
/// match nothing.
pub fn expand_patterns(volume: &Path, patterns: &[PathBuf], flag: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for p in patterns {
        let (matches, none) = expand_pattern(volume, p);
        if none {
            tracing::warn!(
                "{flag} {} matches nothing under {}",
                p.display(),
                volume.display()
            );
        }
        out.extend(matches);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_matches_like_the_shell() {
        assert!(glob_match(b"*", b"x509-key.pem"));
        assert!(!glob_match(b"*", b".hidden"));
        assert!(glob_match(b".*", b".hidden"));
        assert!(glob_match(b"*.pem", b"a.pem"));
        assert!(!glob_match(b"*.pem", b"a.pem.bak"));
        assert!(glob_match(b"id_?sa", b"id_rsa"));
        assert!(glob_match(b"[a-c]x", b"bx"));
        assert!(!glob_match(b"[!a-c]x", b"bx"));
        assert!(glob_match(b"[]x]", b"]"));
        assert!(glob_match(b"a[", b"a["));
        assert!(glob_match(b"**a", b"bba"));
    }

    #[test]
    fn patterns_are_anchored_at_the_volume_and_expanded() {
        let dir = tempfile::tempdir().unwrap();
        let vol = dir.path();
        fs::create_dir_all(vol.join("tmp/sub")).unwrap();
        fs::write(vol.join("tmp/key.pem"), b"k").unwrap();
        fs::write(vol.join("tmp/.hidden"), b"h").unwrap();
        fs::create_dir_all(vol.join("var/cache")).unwrap();

        let (m, none) = expand_pattern(vol, Path::new("/tmp/*"));
        assert!(!none);
        assert_eq!(m, [vol.join("tmp/key.pem"), vol.join("tmp/sub")]);
        // Anchored at the volume, or already a path under it.
        assert_eq!(
            expand_pattern(vol, Path::new("/var/cache")).0,
            [vol.join("var/cache")]
        );
        assert_eq!(
            expand_pattern(vol, &vol.join("var/cache")).0,
            [vol.join("var/cache")]
        );
        assert!(expand_pattern(vol, Path::new("/nothing/*")).1);
        assert!(expand_pattern(vol, Path::new("/tmp/../etc")).1);
        // The volume itself is never an exclusion.
        assert!(expand_pattern(vol, Path::new("/")).1);
    }
}
