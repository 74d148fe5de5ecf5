//! Makes the image's own references to its root filesystem resolve: the kernel's `root=` in
//! GRUB's configurations and Boot Loader Specification entries, GRUB's `search` for the
//! filesystem holding `/boot`, and the `/` entry of `/etc/fstab`.
//!
//! `bundle-vol` keeps the source's identifiers where it can (the filesystem UUID and label, the
//! partition table's disk signature or GUID and the partition's GUID and number), and then
//! nothing here changes. Where one could not be kept (`--new-uuid`, a root device that cannot be
//! read, a table of another kind than the source's, a directory with no disk) a reference to the
//! old identifier would leave an image that stops in GRUB's rescue prompt or the initramfs: each
//! such reference is rewritten to the image's identifier of the same kind (or to `UUID=` when
//! the image has none of that kind), and every rewrite is reported. A `root=` naming a device
//! that does not exist under Xen (`/dev/nvme0n1p1`, `/dev/vda1`) is rewritten to `UUID=` too;
//! `/dev/xvda1`, `/dev/sda1`, LVM and md names are left alone.
//!
//! Every file is opened through [`ImageRoot`] (nothing outside the image is ever read or
//! written), read with a size bound, and replaced atomically with its owner, mode and SELinux
//! label.

use std::fmt;
use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{OFlag, openat, renameat};
use nix::sys::stat::{Mode, SFlag, fstat};
use nix::unistd::{UnlinkatFlags, unlinkat};

use super::fstab::RootFs;
use super::root::{ImageRoot, Lookup, image_path, kind, list_names, write_replacement};

/// The largest configuration file read: GRUB configurations with many kernels are tens of KiB.
const CONFIG_LIMIT_BYTES: u64 = 4 << 20;

/// GRUB commands whose arguments are a kernel command line.
const GRUB_KERNEL_COMMANDS: &[&str] = &["linux", "linux16", "linuxefi", "kernel"];

/// One reference rewritten.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rewrite {
    /// The file, as a path in the image (`/boot/grub/grub.cfg`).
    pub file: PathBuf,
    /// Its line number (1-based).
    pub line: usize,
    /// What was there.
    pub old: String,
    /// What is there now.
    pub new: String,
}

impl fmt::Display for Rewrite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} line {}: {} → {}",
            self.file.display(),
            self.line,
            self.old,
            self.new
        )
    }
}

/// A failure to read or replace a file of the image.
#[derive(Debug, thiserror::Error)]
#[error("{what} {file} in the image at {image}")]
pub struct BootRefsError {
    what: &'static str,
    file: PathBuf,
    image: PathBuf,
    #[source]
    source: io::Error,
}

/// Rewrites the references to the root filesystem in the image mounted at `image_root` that do
/// not resolve to `ids`; see the module docs.
///
/// # Errors
/// [`BootRefsError`] naming the file when one cannot be read or replaced.
pub fn fix_references(image_root: &Path, ids: &RootFs) -> Result<Vec<Rewrite>, BootRefsError> {
    let err = |what: &'static str, rel: &Path| {
        let (file, image) = (image_path(rel), image_root.to_owned());
        move |source: io::Error| BootRefsError {
            what,
            file,
            image,
            source,
        }
    };
    let root = ImageRoot::open(image_root).map_err(err("opening", Path::new("")))?;
    let mut files: Vec<(PathBuf, Kind)> = vec![
        ("boot/grub/grub.cfg".into(), Kind::Grub),
        ("boot/grub2/grub.cfg".into(), Kind::Grub),
        ("etc/fstab".into(), Kind::Fstab),
    ];
    let entries = Path::new("boot/loader/entries");
    if let Lookup::Dir(dir) = root.open_dir(entries).map_err(err("opening", entries))? {
        let mut names = list_names(&dir).map_err(err("listing", entries))?;
        names.sort();
        for name in names {
            let name = String::from_utf8_lossy(name.to_bytes()).into_owned();
            if name.ends_with(".conf") {
                files.push((entries.join(name), Kind::Bls));
            }
        }
    }
    let mut rewrites = Vec::new();
    for (rel, kind_of) in files {
        let (Some(dir_rel), Some(name)) = (rel.parent(), rel.file_name()) else {
            continue;
        };
        let name = name.to_string_lossy().into_owned();
        let Lookup::Dir(dir) = root.open_dir(dir_rel).map_err(err("opening", dir_rel))? else {
            continue;
        };
        let Some(text) = read_regular(&dir, &name).map_err(err("reading", &rel))? else {
            continue;
        };
        let (new_text, mut done) = rewrite_text(&text, kind_of, ids);
        if done.is_empty() {
            continue;
        }
        let tmp = write_replacement(&dir, &name, new_text.as_bytes())
            .map_err(err("writing a new", &rel))?;
        if let Err(e) = renameat(&dir, tmp.as_str(), &dir, name.as_str()) {
            let _ = unlinkat(&dir, tmp.as_str(), UnlinkatFlags::NoRemoveDir);
            return Err(err("replacing", &rel)(e.into()));
        }
        dir.sync_all()
            .map_err(err("syncing the directory of", &rel))?;
        for r in &mut done {
            r.file = image_path(&rel);
        }
        rewrites.extend(done);
    }
    Ok(rewrites)
}

/// The text of the regular file `name` in `dir`; `None` when it is missing or not a regular
/// file (a symlink is not followed).
fn read_regular(dir: &File, name: &str) -> io::Result<Option<String>> {
    let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC;
    let file = match openat(dir, name, flags, Mode::empty()) {
        Ok(fd) => File::from(fd),
        Err(Errno::ENOENT | Errno::ELOOP) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    if kind(&fstat(&file)?) != SFlag::S_IFREG {
        return Ok(None);
    }
    let mut bytes = Vec::new();
    file.take(CONFIG_LIMIT_BYTES + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > CONFIG_LIMIT_BYTES {
        return Err(io::Error::other(format!(
            "larger than {} MiB: not a configuration file",
            CONFIG_LIMIT_BYTES >> 20
        )));
    }
    // A file that is not UTF-8 is left alone rather than rewritten lossily.
    Ok(String::from_utf8(bytes).ok())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Grub,
    Bls,
    Fstab,
}

/// The text with its references fixed, and what was changed (files not yet named).
fn rewrite_text(text: &str, kind_of: Kind, ids: &RootFs) -> (String, Vec<Rewrite>) {
    let mut out = String::with_capacity(text.len());
    let mut done = Vec::new();
    for (i, line) in text.split_inclusive('\n').enumerate() {
        let new = match kind_of {
            Kind::Grub => grub_line(line, ids),
            Kind::Bls => command_line_words(line, &["options"], ids),
            Kind::Fstab => fstab_line(line, ids),
        };
        match new {
            Some(new) if new != line => {
                done.push(Rewrite {
                    file: PathBuf::new(),
                    line: i + 1,
                    old: line.trim().to_owned(),
                    new: new.trim().to_owned(),
                });
                out.push_str(&new);
            }
            _ => out.push_str(line),
        }
    }
    (out, done)
}

/// Splits a line into words and the whitespace around them, so a rewritten line keeps its
/// indentation and spacing.
fn words(line: &str) -> Vec<(usize, &str)> {
    let mut v = Vec::new();
    let mut start = None;
    for (i, c) in line.char_indices() {
        match (c.is_whitespace(), start) {
            (false, None) => start = Some(i),
            (true, Some(s)) => {
                v.push((s, &line[s..i]));
                start = None;
            }
            _ => {}
        }
    }
    if let Some(s) = start {
        v.push((s, &line[s..]));
    }
    v
}

/// `line` with the words at the given positions replaced.
fn replace_words(line: &str, replacements: &[(usize, &str, String)]) -> String {
    let mut out = String::with_capacity(line.len() + 64);
    let mut at = 0;
    for (start, old, new) in replacements {
        out.push_str(&line[at..*start]);
        out.push_str(new);
        at = start + old.len();
    }
    out.push_str(&line[at..]);
    out
}

fn grub_line(line: &str, ids: &RootFs) -> Option<String> {
    let w = words(line);
    let first = w.first()?.1;
    if GRUB_KERNEL_COMMANDS.contains(&first) {
        return command_line_words(line, GRUB_KERNEL_COMMANDS, ids);
    }
    let mut repl = Vec::new();
    match first {
        // search [--no-floppy] [--set[=VAR]] [--hint…] (--fs-uuid|-u|--label|-l|--file|-f) ID
        "search" => {
            let mut mode = None;
            let mut value = None;
            let mut it = w.iter().skip(1).peekable();
            while let Some(&(at, word)) = it.next() {
                match word {
                    "--fs-uuid" | "-u" | "--label" | "-l" => mode = Some((at, word)),
                    "--file" | "-f" => return None,
                    "--set" | "-s" => {
                        // `--set VAR`: the next word is the variable, unless it is an option.
                        if it.peek().is_some_and(|(_, next)| !next.starts_with('-')) {
                            it.next();
                        }
                    }
                    _ if word.starts_with('-') => {}
                    _ => value = value.or(Some((at, word))),
                }
            }
            let ((mode_at, mode_word), (value_at, value_word)) = (mode?, value?);
            let by_label = matches!(mode_word, "--label" | "-l");
            fix_search(by_label, value_word, ids, |flag, id| {
                repl.push((mode_at, mode_word, flag.to_owned()));
                repl.push((value_at, value_word, id));
            });
        }
        "search.fs_uuid" | "search.fs_label" => {
            let &(value_at, value_word) = w.get(1)?;
            let (cmd_at, cmd) = w[0];
            fix_search(cmd == "search.fs_label", value_word, ids, |flag, id| {
                let new_cmd = if flag == "--label" {
                    "search.fs_label"
                } else {
                    "search.fs_uuid"
                };
                repl.push((cmd_at, cmd, new_cmd.to_owned()));
                repl.push((value_at, value_word, id));
            });
        }
        _ => return None,
    }
    (!repl.is_empty()).then(|| replace_words(line, &repl))
}

/// Calls `fix(flag, id)` with what a GRUB search for the image's root filesystem must look
/// for, when `value` (a UUID, or a label when `by_label`) does not name it.
fn fix_search(by_label: bool, value: &str, ids: &RootFs, fix: impl FnOnce(&str, String)) {
    let value = value.trim_matches(|c| c == '"' || c == '\'');
    if by_label {
        match &ids.label {
            Some(label) if label == value => {}
            Some(label) => fix("--label", label.clone()),
            None => {
                if let Some(uuid) = &ids.uuid {
                    fix("--fs-uuid", uuid.clone());
                }
            }
        }
    } else if let Some(uuid) = &ids.uuid {
        if !uuid.eq_ignore_ascii_case(value) {
            fix("--fs-uuid", uuid.clone());
        }
    }
}

/// The line with its `root=` arguments fixed, when its first word is one of `commands`.
fn command_line_words(line: &str, commands: &[&str], ids: &RootFs) -> Option<String> {
    let w = words(line);
    if !commands.contains(&w.first()?.1) {
        return None;
    }
    let mut repl = Vec::new();
    for &(at, word) in &w[1..] {
        let quote = word.starts_with('"') || word.starts_with('\'');
        let bare = word.trim_matches(|c| c == '"' || c == '\'');
        if let Some(value) = bare.strip_prefix("root=") {
            if let Some(new) = fixed_root(value, ids) {
                let new = if quote {
                    let q = &word[..1];
                    format!("{q}root={new}{q}")
                } else {
                    format!("root={new}")
                };
                repl.push((at, word, new));
            }
        }
    }
    (!repl.is_empty()).then(|| replace_words(line, &repl))
}

fn fstab_line(line: &str, ids: &RootFs) -> Option<String> {
    let w = words(line);
    let &(at, spec) = w.first()?;
    if spec.starts_with('#') || w.get(1).map(|m| m.1) != Some("/") {
        return None;
    }
    let new = fixed_root(spec, ids)?;
    Some(replace_words(line, &[(at, spec, new)]))
}

/// What a root device `value` (`UUID=…`, `PARTUUID=…`, `/dev/…`) must become so that it names
/// the image's root filesystem, or `None` when it does already (or is nothing we know).
pub(crate) fn fixed_root(value: &str, ids: &RootFs) -> Option<String> {
    let by_uuid = || ids.uuid.as_ref().map(|u| format!("UUID={u}"));
    let (tag, id) = match value.split_once('=') {
        Some((tag, id)) => (tag.to_ascii_uppercase(), id),
        None => {
            return match value {
                v if v.starts_with("/dev/disk/by-uuid/") => {
                    fixed_root(&format!("UUID={}", &v["/dev/disk/by-uuid/".len()..]), ids)
                }
                v if v.starts_with("/dev/disk/by-label/") => {
                    fixed_root(&format!("LABEL={}", &v["/dev/disk/by-label/".len()..]), ids)
                }
                v if v.starts_with("/dev/disk/by-partuuid/") => fixed_root(
                    &format!("PARTUUID={}", &v["/dev/disk/by-partuuid/".len()..]),
                    ids,
                ),
                v if missing_on_xen(v) => by_uuid(),
                _ => None,
            };
        }
    };
    let same = |have: &Option<String>| {
        have.as_deref()
            .is_some_and(|h| h.eq_ignore_ascii_case(id.trim_matches('"')))
    };
    match tag.as_str() {
        "UUID" if !same(&ids.uuid) => by_uuid(),
        "LABEL" if !same(&ids.label) => match &ids.label {
            Some(label) => Some(format!("LABEL={label}")),
            None => by_uuid(),
        },
        "PARTUUID" if !same(&ids.partuuid) => match &ids.partuuid {
            Some(p) => Some(format!("PARTUUID={p}")),
            None => by_uuid(),
        },
        "PARTLABEL" if ids.partlabel.as_deref() != Some(id) => match &ids.partlabel {
            Some(p) => Some(format!("PARTLABEL={p}")),
            None => by_uuid(),
        },
        _ => None,
    }
}

/// A device name that an instance-store instance (Xen: `xvd*`, or `sd*` through the emulated
/// controller) will not have.
fn missing_on_xen(device: &str) -> bool {
    let Some(name) = device.strip_prefix("/dev/") else {
        return false;
    };
    ["nvme", "vd", "hd"].iter().any(|p| {
        name.starts_with(p) && name[p.len()..].starts_with(|c: char| c.is_ascii_alphanumeric())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _, symlink};

    const UUID: &str = "0f3e4c1a-1b2c-4d5e-8f90-123456789abc";
    const OLD_UUID: &str = "11111111-2222-4333-8444-555555555555";

    fn ids() -> RootFs {
        RootFs {
            uuid: Some(UUID.into()),
            label: Some("cloudimg-rootfs".into()),
            partuuid: Some("1234abcd-01".into()),
            partlabel: None,
            fs_type: "ext4".into(),
        }
    }

    fn uuid_only() -> RootFs {
        RootFs {
            uuid: Some(UUID.into()),
            label: None,
            partuuid: None,
            partlabel: None,
            fs_type: "ext4".into(),
        }
    }

    fn write(root: &Path, rel: &str, text: &str) {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    /// A Debian-style grub.cfg: search by UUID with hints, root= by PARTUUID.
    fn debian_cfg(uuid: &str, partuuid: &str) -> String {
        format!(
            "insmod part_msdos\n\
             if [ x$feature_platform_search_hint = xy ]; then\n  \
               search --no-floppy --fs-uuid --set=root --hint-bios=hd0,msdos1 {uuid}\n\
             else\n  \
               search --no-floppy --fs-uuid --set=root {uuid}\n\
             fi\n\
             menuentry 'Debian' {{\n\
             \tlinux\t/boot/vmlinuz-6.1.0-28-cloud-amd64 root=PARTUUID={partuuid} ro console=ttyS0\n\
             \tinitrd\t/boot/initrd.img-6.1.0-28-cloud-amd64\n\
             }}\n"
        )
    }

    #[test]
    fn references_that_resolve_are_left_byte_for_byte() {
        let tmp = tempfile::tempdir().unwrap();
        let r = tmp.path();
        let cfg = debian_cfg(UUID, "1234abcd-01");
        write(r, "boot/grub/grub.cfg", &cfg);
        let fstab = format!("UUID={UUID} / ext4 rw 0 1\nLABEL=data /data ext4 nofail 0 2\n");
        write(r, "etc/fstab", &fstab);
        assert_eq!(fix_references(r, &ids()).unwrap(), []);
        assert_eq!(
            std::fs::read_to_string(r.join("boot/grub/grub.cfg")).unwrap(),
            cfg
        );
        assert_eq!(std::fs::read_to_string(r.join("etc/fstab")).unwrap(), fstab);
    }

    #[test]
    fn old_identifiers_are_rewritten_to_the_images_and_reported() {
        let tmp = tempfile::tempdir().unwrap();
        let r = tmp.path();
        write(
            r,
            "boot/grub/grub.cfg",
            &debian_cfg(OLD_UUID, "deadbeef-01"),
        );
        std::fs::set_permissions(
            r.join("boot/grub/grub.cfg"),
            std::fs::Permissions::from_mode(0o400),
        )
        .unwrap();
        write(
            r,
            "etc/fstab",
            &format!(
                "# root\nUUID={OLD_UUID}  /  ext4  rw,errors=remount-ro 0 1\nUUID={OLD_UUID} /srv ext4 rw 0 2\n"
            ),
        );
        write(
            r,
            "boot/loader/entries/abc-6.1.conf",
            "title Fedora\noptions \"root=/dev/nvme0n1p1\" ro\n",
        );
        let done = fix_references(r, &ids()).unwrap();
        let lines: Vec<String> = done.iter().map(ToString::to_string).collect();
        assert_eq!(done.len(), 5, "{lines:#?}");
        let cfg = std::fs::read_to_string(r.join("boot/grub/grub.cfg")).unwrap();
        assert_eq!(cfg, debian_cfg(UUID, "1234abcd-01"));
        assert_eq!(
            std::fs::metadata(r.join("boot/grub/grub.cfg"))
                .unwrap()
                .mode()
                & 0o7777,
            0o400,
            "the mode is kept"
        );
        let fstab = std::fs::read_to_string(r.join("etc/fstab")).unwrap();
        assert_eq!(
            fstab,
            format!(
                "# root\nUUID={UUID}  /  ext4  rw,errors=remount-ro 0 1\nUUID={OLD_UUID} /srv ext4 rw 0 2\n"
            ),
            "only the / entry names the root filesystem"
        );
        let bls = std::fs::read_to_string(r.join("boot/loader/entries/abc-6.1.conf")).unwrap();
        assert_eq!(
            bls,
            format!("title Fedora\noptions \"root=UUID={UUID}\" ro\n")
        );
        assert!(
            lines.contains(&format!(
                "/etc/fstab line 2: UUID={OLD_UUID}  /  ext4  rw,errors=remount-ro 0 1 → UUID={UUID}  /  ext4  rw,errors=remount-ro 0 1"
            )),
            "{lines:#?}"
        );
        // No temporary file left behind.
        let names: Vec<_> = std::fs::read_dir(r.join("boot/grub")).unwrap().collect();
        assert_eq!(names.len(), 1);
    }

    #[test]
    fn each_kind_of_root_reference_maps_to_the_images() {
        let no_label_no_table = uuid_only();
        let cases: &[(&RootFs, &str, Option<String>)] = &[
            (&ids(), "PARTUUID=1234ABCD-01", None),
            (
                &ids(),
                "PARTUUID=99999999-02",
                Some("PARTUUID=1234abcd-01".into()),
            ),
            (
                &no_label_no_table,
                "PARTUUID=99999999-02",
                Some(format!("UUID={UUID}")),
            ),
            (&ids(), "LABEL=cloudimg-rootfs", None),
            (&ids(), "LABEL=other", Some("LABEL=cloudimg-rootfs".into())),
            (
                &no_label_no_table,
                "LABEL=other",
                Some(format!("UUID={UUID}")),
            ),
            (
                &ids(),
                "/dev/disk/by-uuid/0F3E4C1A-1B2C-4D5E-8F90-123456789ABC",
                None,
            ),
            (
                &ids(),
                &format!("/dev/disk/by-uuid/{OLD_UUID}"),
                Some(format!("UUID={UUID}")),
            ),
            (&ids(), "/dev/xvda1", None),
            (&ids(), "/dev/sda1", None),
            (&ids(), "/dev/mapper/vg-root", None),
            (&ids(), "/dev/nvme0n1p1", Some(format!("UUID={UUID}"))),
            (&ids(), "/dev/vda1", Some(format!("UUID={UUID}"))),
            (&ids(), "PARTLABEL=root", Some(format!("UUID={UUID}"))),
            (&ids(), "ZFS=rpool/ROOT", None),
        ];
        for (ids, value, expected) in cases {
            assert_eq!(&fixed_root(value, ids), expected, "{value}");
        }
    }

    #[test]
    fn grub_searches_by_label_and_the_dotted_commands_are_fixed() {
        let tmp = tempfile::tempdir().unwrap();
        let r = tmp.path();
        write(
            r,
            "boot/grub2/grub.cfg",
            "search --no-floppy --label --set root old-root\nsearch.fs_uuid 1111 root hd0,gpt2\nsearch --file --set=root /boot/vmlinuz\n",
        );
        let no_label = uuid_only();
        fix_references(r, &no_label).unwrap();
        assert_eq!(
            std::fs::read_to_string(r.join("boot/grub2/grub.cfg")).unwrap(),
            format!(
                "search --no-floppy --fs-uuid --set root {UUID}\nsearch.fs_uuid {UUID} root hd0,gpt2\nsearch --file --set=root /boot/vmlinuz\n"
            )
        );
    }

    #[test]
    fn symlinks_out_of_the_image_are_never_followed() {
        let tmp = tempfile::tempdir().unwrap();
        let host = tmp.path().join("host");
        let r = tmp.path().join("image");
        write(&host, "grub/grub.cfg", &debian_cfg(OLD_UUID, "deadbeef-01"));
        write(&host, "fstab", &format!("UUID={OLD_UUID} / ext4 rw 0 1\n"));
        std::fs::create_dir_all(r.join("etc")).unwrap();
        symlink(&host, r.join("boot")).unwrap();
        symlink(host.join("fstab"), r.join("etc/fstab")).unwrap();
        assert_eq!(fix_references(&r, &ids()).unwrap(), []);
        assert_eq!(
            std::fs::read_to_string(host.join("grub/grub.cfg")).unwrap(),
            debian_cfg(OLD_UUID, "deadbeef-01")
        );
        assert_eq!(
            std::fs::read_to_string(host.join("fstab")).unwrap(),
            format!("UUID={OLD_UUID} / ext4 rw 0 1\n")
        );
    }
}
