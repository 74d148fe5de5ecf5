//! The path rules: what an entry's path relative to the scanned root says about it
//! ([`classify`]): filtered by name or place, to be looked into, or kept. docs/security.md
//! lists every rule.

use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path};

use super::{Reason, Verdict};

/// History files, relative to a home directory; the filter matches them in any directory.
/// Shells (bash, zsh, ksh/sh, ash/busybox, tcsh, fish), interpreters, debuggers and database
/// clients whose histories routinely hold passwords typed on the command line, `less` (search
/// strings) and vim (`.viminfo`: command lines, searches and registers, i.e. text yanked from
/// edited files).
pub const HISTORY_FILES: &[&str] = &[
    ".bash_history",
    ".zsh_history",
    ".zhistory",
    ".sh_history",
    ".ash_history",
    ".history",
    ".local/share/fish/fish_history",
    ".python_history",
    ".node_repl_history",
    ".irb_history",
    ".pry_history",
    ".php_history",
    ".Rhistory",
    ".octave_hist",
    ".scala_history",
    ".gdb_history",
    ".mysql_history",
    ".mariadb_history",
    ".psql_history",
    ".sqlite_history",
    ".rediscli_history",
    ".dbshell",
    ".mongosh/mongosh_repl_history",
    ".lesshst",
    ".viminfo",
    ".local/share/nvim/shada/main.shada",
];

/// Credential files of network services, registries and cloud CLIs, relative to a home
/// directory (matched in any directory): filtered by name.
pub const CREDENTIAL_FILES: &[&str] = &[
    ".netrc",
    ".pgpass",
    ".git-credentials",
    ".docker/config.json",
    ".kube/config",
    ".vault-token",
    ".config/gh/hosts.yml",
    ".terraform.d/credentials.tfrc.json",
    ".config/gcloud/credentials.db",
    ".config/gcloud/access_tokens.db",
    ".config/gcloud/application_default_credentials.json",
    ".azure/accessTokens.json",
    ".azure/msal_token_cache.json",
    ".azure/msal_token_cache.bin",
    ".azure/service_principal_entries.json",
    ".azure/service_principal_entries.bin",
];

/// Configuration files that often, not always, hold a secret: filtered when one of the settings
/// is present (`name = value` or `name: value` at the start of a line).
const CREDENTIAL_SETTINGS: &[(&str, Reason, &[&str])] = &[
    (
        ".aws/config",
        Reason::AwsCredentials,
        &["aws_secret_access_key", "aws_session_token"],
    ),
    (".boto", Reason::AwsCredentials, &["aws_secret_access_key"]),
    (".s3cfg", Reason::AwsCredentials, &["secret_key"]),
    (".my.cnf", Reason::Credentials, &["password"]),
    (
        ".npmrc",
        Reason::Credentials,
        &["_auth", "_authToken", "_password"],
    ),
    (".pypirc", Reason::Credentials, &["password"]),
];

/// Files of a `.ssh` directory that are public by nature and never looked into.
const SSH_PUBLIC_FILES: &[&str] = &[
    "authorized_keys",
    "authorized_keys2",
    "known_hosts",
    "known_hosts.old",
    "config",
    "environment",
    "rc",
];

/// Name prefixes of OpenSSH user keys (`ssh-keygen`'s default file names).
const SSH_KEY_PREFIXES: &[&str] = &["id_rsa", "id_dsa", "id_ecdsa", "id_ed25519", "id_xmss"];

/// Suffixes of backup copies (editors, `cp --backup`, nano, hand-made): `name.bak` is judged as
/// `name`.
const BACKUP_SUFFIXES: &[&str] = &["~", ".bak", ".old", ".orig", ".save", ".backup", ".bkp"];

/// Places whose files are not searched for keys by content alone (name rules still apply):
/// their contents come from packages or registries, or are the machine's identity.
const CONTENT_EXEMPT: &[&str] = &[
    "etc/ssh",
    "var/lib/docker",
    "var/lib/containers",
    "var/lib/containerd",
    "var/lib/dpkg",
    "var/lib/rpm",
    "var/lib/apt",
    "var/cache/apt",
    "var/cache/dnf",
    "var/cache/yum",
    "var/log/journal",
];

/// Decides from its path relative to the scanned root (`root/.ssh/id_ed25519`, `etc/…`)
/// whether an entry is filtered, needs a look inside, or is kept (`None`). `is_dir` tells a
/// directory from a regular file; other kinds are never filtered and not classified.
pub fn classify(rel: &Path, is_dir: bool) -> Option<Verdict> {
    let comps: Vec<&[u8]> = rel
        .components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.as_bytes()),
            _ => None,
        })
        .collect();
    if comps.is_empty() {
        return None;
    }
    if is_dir {
        return classify_dir(&comps).map(Verdict::Filter);
    }
    if let Some(verdict) = classify_file(&comps) {
        return Some(verdict);
    }
    // A backup copy is as secret as what it copies.
    let (&name, parents) = comps.split_last()?;
    for suffix in BACKUP_SUFFIXES {
        if let Some(base) = name
            .strip_suffix(suffix.as_bytes())
            .filter(|b| !b.is_empty())
        {
            let mut original = parents.to_vec();
            original.push(base);
            if let Some(verdict) = classify_file(&original) {
                return Some(verdict);
            }
        }
    }
    (!content_exempt(&comps) && !public_by_name(&comps)).then_some(Verdict::IfKeyFile)
}

/// SSH public keys (`*.pub`) and the public files of a `.ssh` directory: never looked into.
fn public_by_name(comps: &[&[u8]]) -> bool {
    let Some((&name, parents)) = comps.split_last() else {
        return false;
    };
    name.ends_with(b".pub")
        || (parents.last() == Some(&&b".ssh"[..])
            && SSH_PUBLIC_FILES.iter().any(|p| name == p.as_bytes()))
}

fn classify_dir(comps: &[&[u8]]) -> Option<Reason> {
    let (&name, parents) = comps.split_last()?;
    let parent = parents.last().copied().unwrap_or_default();
    let grandparent = parents
        .len()
        .checked_sub(2)
        .map_or(&b""[..], |i| parents[i]);
    if name == b"private-keys-v1.d" {
        Some(Reason::GnupgPrivateKeys)
    } else if name == b"identity" && parent == b"amibundle" && grandparent == b".config" {
        Some(Reason::AmibundleIdentity)
    } else if name == b"cache" && (parent == b"cli" || parent == b"sso") && grandparent == b".aws" {
        Some(Reason::AwsCredentials)
    } else if name == b"legacy_credentials" && parent == b"gcloud" && grandparent == b".config" {
        Some(Reason::Credentials)
    } else if name == b"scripts" && cloud_instance_dir(parents) {
        Some(Reason::CloudInitUserData)
    } else {
        None
    }
}

/// `var/lib/cloud/instances/<id>`.
fn cloud_instance_dir(comps: &[&[u8]]) -> bool {
    comps.len() == 5 && comps[..4] == [&b"var"[..], b"lib", b"cloud", b"instances"]
}

/// The name rules for a regular file (everything but the backup and any-name rules).
fn classify_file(comps: &[&[u8]]) -> Option<Verdict> {
    let (&name, parents) = comps.split_last()?;
    let parent = parents.last().copied().unwrap_or_default();
    let has_ext = |exts: &[&str]| {
        exts.iter().any(|ext| {
            let ext = ext.as_bytes();
            name.len() > ext.len() && name[name.len() - ext.len()..].eq_ignore_ascii_case(ext)
        })
    };

    if HISTORY_FILES.iter().any(|h| ends_with_components(comps, h)) {
        return Some(Verdict::Filter(Reason::ShellHistory));
    }
    if name == b"credentials" && parent == b".aws" {
        return Some(Verdict::Filter(Reason::AwsCredentials));
    }
    if CREDENTIAL_FILES
        .iter()
        .any(|f| ends_with_components(comps, f))
    {
        return Some(Verdict::Filter(Reason::Credentials));
    }
    if let Some((_, reason, settings)) = CREDENTIAL_SETTINGS
        .iter()
        .find(|(f, _, _)| ends_with_components(comps, f))
    {
        return Some(Verdict::IfSetting(*reason, settings));
    }
    if cloud_instance_dir(parents)
        && (name.starts_with(b"user-data.txt")
            || name.starts_with(b"vendor-data")
            || name == b"obj.pkl")
    {
        return Some(Verdict::Filter(Reason::CloudInitUserData));
    }
    if comps.len() == 6
        && comps[..4] == [&b"var"[..], b"lib", b"cloud", b"seed"]
        && (name == b"user-data" || name == b"vendor-data")
    {
        return Some(Verdict::Filter(Reason::CloudInitUserData));
    }
    if name == b"secring.gpg" {
        return Some(Verdict::Filter(Reason::GnupgPrivateKeys));
    }
    if comps == [&b"etc"[..], b"udev", b"rules.d", b"70-persistent-net.rules"] {
        return Some(Verdict::Filter(Reason::PersistentNetRules));
    }
    if is_editor_temporary(name) {
        return Some(Verdict::Filter(Reason::EditorTemporary));
    }
    if parent == b".ssh" {
        return (!public_by_name(comps)).then_some(Verdict::IfPrivateKey(Reason::SshPrivateKey));
    }
    if SSH_KEY_PREFIXES
        .iter()
        .any(|p| name.starts_with(p.as_bytes()))
        && !name.ends_with(b".pub")
    {
        return Some(Verdict::IfPrivateKey(Reason::SshPrivateKey));
    }
    if package_managed(comps) {
        return None;
    }
    if has_ext(&[".p12", ".pfx", ".priv"]) {
        return Some(Verdict::Filter(Reason::KeyStore));
    }
    if has_ext(&[".jks", ".jceks", ".keystore"]) {
        return Some(Verdict::UnlessTrustStore);
    }
    if has_ext(&[".pem", ".key"]) {
        return Some(Verdict::IfPrivateKey(Reason::PrivateKeyFile));
    }
    None
}

/// Places the any-name content rule does not look into: package-managed trees and
/// [`CONTENT_EXEMPT`].
pub(super) fn content_exempt(comps: &[&[u8]]) -> bool {
    package_managed(comps)
        || CONTENT_EXEMPT.iter().any(|place| {
            let place: Vec<&[u8]> = place.split('/').map(str::as_bytes).collect();
            comps.len() > place.len() && comps[..place.len()] == place[..]
        })
}

/// `comps` ends with the `/`-separated components of `suffix`.
fn ends_with_components(comps: &[&[u8]], suffix: &str) -> bool {
    let want: Vec<&[u8]> = suffix.split('/').map(str::as_bytes).collect();
    comps.len() >= want.len() && comps[comps.len() - want.len()..] == want[..]
}

/// vim swap files (`.name.swp`, then `.swo` … down to `.swa`), emacs autosave (`#name#`) and
/// lock files (`.#name`, usually symlinks, regular files on filesystems without them).
fn is_editor_temporary(name: &[u8]) -> bool {
    let vim = name.len() > 5
        && name.starts_with(b".")
        && name[name.len() - 4..name.len() - 1] == *b".sw"
        && (b'a'..=b'p').contains(&name[name.len() - 1]);
    let autosave = name.len() > 2 && name.starts_with(b"#") && name.ends_with(b"#");
    let lock = name.len() > 2 && name.starts_with(b".#");
    vim || autosave || lock
}

/// Under `/usr` but not `/usr/local` (relative to the scanned root).
fn package_managed(comps: &[&[u8]]) -> bool {
    comps.first() == Some(&&b"usr"[..]) && comps.get(1) != Some(&&b"local"[..])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verdict(path: &str) -> Option<Verdict> {
        classify(Path::new(path), false)
    }

    /// A regular file no name rule matched: read only to see whether it is a key file.
    const ANY_NAME: Option<Verdict> = Some(Verdict::IfKeyFile);

    #[test]
    fn ssh_keys_by_name_and_place() {
        use Verdict::*;
        let key = Some(IfPrivateKey(Reason::SshPrivateKey));
        assert_eq!(verdict("root/.ssh/id_ed25519"), key);
        assert_eq!(verdict("home/a/.ssh/id_rsa"), key);
        // Any name in .ssh is looked into: keys are often named after their use.
        assert_eq!(verdict("home/a/.ssh/github-deploy"), key);
        assert_eq!(verdict("home/a/.ssh/aws.pem"), key);
        // id_* outside .ssh too (keys copied around), never the public halves.
        assert_eq!(verdict("srv/backup/id_ecdsa"), key);
        // Backups of keys are keys.
        assert_eq!(verdict("srv/backup/id_ecdsa.bak"), key);
        assert_eq!(verdict("srv/backup/id_ecdsa~"), key);
        assert_eq!(verdict("root/.ssh/id_ed25519.pub"), None);
        assert_eq!(verdict("srv/backup/id_rsa.pub"), None);
        assert_eq!(verdict("root/.ssh/authorized_keys"), None);
        assert_eq!(verdict("root/.ssh/known_hosts"), None);
        assert_eq!(verdict("root/.ssh/config"), None);
        // Host keys are the machine's identity: --generalize's business, not the filter's,
        // and /etc/ssh is not searched by content either.
        assert_eq!(verdict("etc/ssh/ssh_host_rsa_key"), None);
        assert_eq!(verdict("etc/ssh/ssh_host_ed25519_key"), None);
        assert_eq!(verdict("etc/ssh/sshd_config"), None);
        // Not ssh keys at all, and package-managed.
        assert_eq!(verdict("usr/lib/python3/id_map.py"), None);
    }

    #[test]
    fn credentials_keyrings_histories_identity() {
        use Verdict::*;
        assert_eq!(
            verdict("root/.aws/credentials"),
            Some(Filter(Reason::AwsCredentials))
        );
        assert_eq!(
            verdict("home/bob/.aws/credentials"),
            Some(Filter(Reason::AwsCredentials))
        );
        assert_eq!(
            verdict("home/bob/.aws/credentials.bak"),
            Some(Filter(Reason::AwsCredentials))
        );
        assert!(matches!(
            verdict("home/bob/.aws/config"),
            Some(IfSetting(Reason::AwsCredentials, _))
        ));
        assert_eq!(verdict("srv/app/credentials"), ANY_NAME);
        assert_eq!(
            classify(Path::new("root/.aws/sso/cache"), true),
            Some(Filter(Reason::AwsCredentials))
        );
        assert_eq!(
            classify(Path::new("root/.aws/cli/cache"), true),
            Some(Filter(Reason::AwsCredentials))
        );
        assert_eq!(classify(Path::new("var/cache"), true), None);
        assert_eq!(
            classify(Path::new("root/.gnupg/private-keys-v1.d"), true),
            Some(Filter(Reason::GnupgPrivateKeys))
        );
        assert_eq!(
            verdict("root/.gnupg/secring.gpg"),
            Some(Filter(Reason::GnupgPrivateKeys))
        );
        // Public keyrings stay (the classic `*.gpg` removed apt's); they are read, not taken.
        assert_eq!(
            verdict("etc/apt/trusted.gpg.d/debian-archive-bookworm.gpg"),
            ANY_NAME
        );
        assert_eq!(
            verdict("usr/share/keyrings/ubuntu-archive-keyring.gpg"),
            None
        );
        assert_eq!(verdict("root/.gnupg/pubring.kbx"), ANY_NAME);
        for h in [
            "root/.bash_history",
            "home/a/.zsh_history",
            "home/a/.python_history",
            "var/lib/postgresql/.psql_history",
            "home/a/.local/share/fish/fish_history",
            "root/.lesshst",
            "root/.ash_history",
            "home/a/.Rhistory",
            "home/a/.gdb_history",
            "root/.viminfo",
            "root/.bash_history.old",
        ] {
            assert_eq!(verdict(h), Some(Filter(Reason::ShellHistory)), "{h}");
        }
        assert_eq!(verdict("home/a/fish_history"), ANY_NAME);
        assert_eq!(verdict("home/a/.bash_history_notes/x"), ANY_NAME);
        assert_eq!(
            classify(Path::new("home/a/.config/amibundle/identity"), true),
            Some(Filter(Reason::AmibundleIdentity))
        );
        assert_eq!(classify(Path::new("home/a/.config/amibundle"), true), None);
        assert_eq!(classify(Path::new("srv/identity"), true), None);
    }

    #[test]
    fn credentials_of_other_services_and_cloud_init_user_data() {
        use Verdict::*;
        let cred = Some(Filter(Reason::Credentials));
        for f in [
            "root/.netrc",
            "home/a/.pgpass",
            "home/a/.git-credentials",
            "home/a/.docker/config.json",
            "root/.kube/config",
            "home/a/.config/gcloud/credentials.db",
            "home/a/.config/gcloud/application_default_credentials.json",
            "home/a/.azure/msal_token_cache.json",
            "home/a/.vault-token",
            "home/a/.netrc~",
        ] {
            assert_eq!(verdict(f), cred, "{f}");
        }
        assert_eq!(
            classify(Path::new("home/a/.config/gcloud/legacy_credentials"), true),
            cred.map(|_| Filter(Reason::Credentials))
        );
        // Not credentials by these names elsewhere.
        assert_eq!(verdict("srv/app/config.json"), ANY_NAME);
        assert_eq!(verdict("home/a/.kube/cache/discovery.json"), ANY_NAME);
        for f in [
            "root/.my.cnf",
            "home/a/.npmrc",
            "home/a/.pypirc",
            "root/.s3cfg",
        ] {
            assert!(matches!(verdict(f), Some(IfSetting(..))), "{f}");
        }
        let user_data = Some(Filter(Reason::CloudInitUserData));
        for f in [
            "var/lib/cloud/instances/i-0abc/user-data.txt",
            "var/lib/cloud/instances/i-0abc/user-data.txt.i",
            "var/lib/cloud/instances/i-0abc/vendor-data.txt",
            "var/lib/cloud/instances/i-0abc/obj.pkl",
            "var/lib/cloud/seed/nocloud-net/user-data",
        ] {
            assert_eq!(verdict(f), user_data, "{f}");
        }
        assert_eq!(
            classify(Path::new("var/lib/cloud/instances/i-0abc/scripts"), true),
            Some(Filter(Reason::CloudInitUserData))
        );
        assert_eq!(
            verdict("var/lib/cloud/instances/i-0abc/datasource"),
            ANY_NAME
        );
        assert_eq!(
            verdict("srv/var/lib/cloud/instances/i-0abc/user-data.txt"),
            ANY_NAME
        );
    }

    #[test]
    fn key_files_are_looked_into_except_in_package_trees() {
        use Verdict::*;
        let check = Some(IfPrivateKey(Reason::PrivateKeyFile));
        assert_eq!(verdict("etc/ssl/certs/ISRG_Root_X1.pem"), check);
        assert_eq!(verdict("etc/ssl/private/server.key"), check);
        assert_eq!(verdict("etc/ssl/private/server.key.orig"), check);
        assert_eq!(verdict("etc/pki/tls/private/LOCALHOST.KEY"), check);
        assert_eq!(verdict("usr/local/etc/app/tls.pem"), check);
        assert_eq!(verdict("usr/lib/python3.12/test/keycert.pem"), None);
        // Keystores: PKCS#12 and .priv by name, Java keystores unless only certificates.
        assert_eq!(verdict("opt/app/tls.p12"), Some(Filter(Reason::KeyStore)));
        assert_eq!(verdict("opt/app/TLS.PFX"), Some(Filter(Reason::KeyStore)));
        assert_eq!(verdict("root/ec2.priv"), Some(Filter(Reason::KeyStore)));
        assert_eq!(verdict("opt/app/server.jks"), Some(UnlessTrustStore));
        assert_eq!(verdict("opt/app/.keystore"), ANY_NAME);
        assert_eq!(verdict("opt/app/release.keystore"), Some(UnlessTrustStore));
        assert_eq!(verdict("usr/lib/jvm/x/lib/security/cacerts.jks"), None);
        // Other names are read only to see whether they are key files.
        assert_eq!(verdict("etc/pki/tls/certs/ca-bundle.crt"), ANY_NAME);
        assert_eq!(verdict("srv/.pem"), ANY_NAME);
        assert_eq!(verdict("var/lib/docker/overlay2/x/diff/etc/key"), None);
        assert_eq!(verdict("var/lib/dpkg/info/openssh-server.list"), None);
    }

    #[test]
    fn classic_leftovers_that_still_make_sense() {
        use Verdict::*;
        let editor = Some(Filter(Reason::EditorTemporary));
        assert_eq!(verdict("etc/.shadow.swp"), editor);
        assert_eq!(verdict("home/a/.notes.txt.swo"), editor);
        assert_eq!(verdict("home/a/#draft.txt#"), editor);
        assert_eq!(verdict("home/a/.#draft.txt"), editor);
        assert_eq!(verdict("home/a/notes.swp"), ANY_NAME);
        assert_eq!(verdict("home/a/.swp"), ANY_NAME);
        // A backup of a file that is no secret is not one either.
        assert_eq!(verdict("etc/fstab~"), ANY_NAME);
        assert_eq!(
            verdict("etc/udev/rules.d/70-persistent-net.rules"),
            Some(Filter(Reason::PersistentNetRules))
        );
        assert_eq!(
            verdict("srv/etc/udev/rules.d/70-persistent-net.rules"),
            ANY_NAME
        );
    }
}
