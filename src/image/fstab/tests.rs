//! Tests of fstab parsing and review, the generated text, `--fstab FILE` checks and the
//! installation into an image root.

use super::*;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};

fn root_fs() -> RootFs {
    RootFs {
        uuid: Some("0f3e4c1a-1b2c-4d5e-8f90-123456789abc".into()),
        label: Some("cloudimg-rootfs".into()),
        partuuid: Some("885cbc11-01".into()),
        partlabel: None,
        fs_type: "ext4".into(),
    }
}

fn mapping(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(v, d)| ((*v).to_owned(), (*d).to_owned()))
        .collect()
}

#[test]
fn instance_store_mounts_from_the_mapping() {
    let mounts = instance_store_mounts(&mapping(&[
        ("ami", "sda1"),
        ("root", "/dev/sda1"),
        ("swap", "sda3"),
        ("ephemeral10", "sdl"),
        ("ephemeral1", "/dev/sdc"),
        ("ephemeral0", "xvdb"),
        ("ephemeralX", "sdz"),
    ]));
    let got: Vec<(&str, &str, Option<&str>)> = mounts
        .iter()
        .map(|m| {
            (
                m.virtual_name.as_str(),
                m.device.as_str(),
                m.mount_point.as_deref(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("ephemeral0", "/dev/xvdb", Some("/mnt")),
            ("ephemeral1", "/dev/xvdc", Some("/media/ephemeral1")),
            ("ephemeral10", "/dev/xvdl", Some("/media/ephemeral10")),
            ("swap", "/dev/xvda3", None),
        ]
    );
    assert_eq!(kernel_device("nvme1n1"), "/dev/nvme1n1");
    assert_eq!(kernel_device("/dev/xvdb"), "/dev/xvdb");
}

#[test]
fn generated_fstab_text() {
    let mounts = instance_store_mounts(&mapping(&[("ephemeral0", "sdb"), ("swap", "sda3")]));
    let text = generate(&root_fs(), &mounts, "amibundle 0.1.0").unwrap();
    assert_eq!(
        text,
        "# /etc/fstab written by amibundle 0.1.0 (--generate-fstab)\n\
         # Instance-store volumes are nofail: a volume missing at launch does not stop the boot.\n\
         UUID=0f3e4c1a-1b2c-4d5e-8f90-123456789abc  /         ext4    defaults                                      0  1\n\
         /dev/xvdb                                  /mnt      auto    defaults,nofail,x-systemd.device-timeout=10s  0  0\n\
         /dev/xvda3                                 none      swap    defaults,nofail,x-systemd.device-timeout=10s  0  0\n\
         devpts                                     /dev/pts  devpts  gid=5,mode=620                                0  0\n\
         proc                                       /proc     proc    defaults                                      0  0\n\
         sysfs                                      /sys      sysfs   defaults                                      0  0\n"
    );
    // What it writes parses, and the review has nothing to say about it.
    let parsed = Fstab::parse(&text).unwrap();
    assert_eq!(parsed.entries.len(), 6);
    assert_eq!(parsed.review(&root_fs()), []);
}

#[test]
fn generated_root_by_label_then_refused_without_either() {
    let mut root = root_fs();
    root.uuid = None;
    root.label = Some("my root".into());
    let text = generate(&root, &[], "amibundle").unwrap();
    let parsed = Fstab::parse(&text).unwrap();
    assert_eq!(parsed.entries[0].spec, "LABEL=my\\040root");
    assert_eq!(parsed.review(&root), []);
    root.label = None;
    assert!(matches!(
        generate(&root, &[], "amibundle"),
        Err(FstabError::NoRootId)
    ));
}

#[test]
fn parse_errors_name_the_line() {
    let err = Fstab::parse("# c\n\nUUID=x / ext4 defaults 0 1\n/dev/sdb /mnt\n").unwrap_err();
    assert_eq!(err.line, 4);
    assert!(
        err.to_string()
            .starts_with("line 4: expected 3 to 6 fields"),
        "{err}"
    );
    let err = Fstab::parse("UUID=x / ext4 defaults zero 1\n").unwrap_err();
    assert_eq!(
        err.to_string(),
        "line 1: the dump field \"zero\" is not a number"
    );
    let ok = Fstab::parse("proc /proc proc\n").unwrap();
    assert_eq!(
        ok.entries[0],
        Entry {
            line: 1,
            spec: "proc".into(),
            file: "/proc".into(),
            vfstype: "proc".into(),
            options: "defaults".into(),
            freq: 0,
            passno: 0,
        }
    );
}

#[test]
fn review_of_a_kept_fstab() {
    let text = "\
UUID=0F3E4C1A-1B2C-4D5E-8F90-123456789ABC / ext4 defaults 0 1
UUID=AAAA-BBBB /boot/efi vfat umask=0077 0 1
/dev/xvdb /mnt auto defaults,nofail 0 0
/dev/xvdc /data ext4 defaults 0 2
/swapfile none swap sw 0 0
server:/export /srv/nfs nfs defaults 0 0
//host/share /srv/smb cifs _netdev 0 0
tmpfs /tmp tmpfs defaults 0 0
/srv/a /srv/b none bind 0 0
/dev/xvdd /opt ext4 noauto 0 0
";
    let warnings = Fstab::parse(text).unwrap().review(&root_fs());
    let lines: Vec<usize> = warnings.iter().map(|w| w.line).collect();
    // The EFI partition (docs/reference-behaviour.md §14, pain 11: "comment out /boot/efi"),
    // an extra disk, a swap file.
    assert_eq!(lines, [2, 4, 5]);
    assert!(warnings[0].to_string().starts_with(
        "/etc/fstab line 2: UUID=AAAA-BBBB is mounted on /boot/efi at boot without nofail"
    ));

    for (root_line, expect) in [
        (
            "UUID=11111111-2222-3333-4444-555555555555 / ext4 defaults 0 1",
            "but the image's filesystem has UUID=0f3e4c1a",
        ),
        (
            "LABEL=other / ext4 defaults 0 1",
            "but the image's filesystem has LABEL=cloudimg-rootfs",
        ),
        (
            "PARTUUID=6a1b2c3d-01 / ext4 defaults 0 1",
            "the partition PARTUUID=6a1b2c3d-01, which the image does not have",
        ),
        (
            "PARTLABEL=root / ext4 defaults 0 1",
            "the partition PARTLABEL=root, which the image does not have",
        ),
        (
            "/dev/nvme0n1p1 / ext4 defaults 0 1",
            "may have another name",
        ),
    ] {
        let warnings = Fstab::parse(root_line).unwrap().review(&root_fs());
        assert_eq!(warnings.len(), 1, "{root_line}");
        assert!(warnings[0].message.contains(expect), "{}", warnings[0]);
    }
    for fine in [
        "LABEL=cloudimg-rootfs / ext4 defaults 0 1",
        "UUID=0f3e4c1a-1b2c-4d5e-8f90-123456789abc / ext4 defaults 0 1",
        "PARTUUID=885CBC11-01 / ext4 defaults 0 1",
    ] {
        assert_eq!(Fstab::parse(fine).unwrap().review(&root_fs()), [], "{fine}");
    }
}

#[test]
fn escapes_round_trip() {
    assert_eq!(escape("/mnt/my disk\\x"), "/mnt/my\\040disk\\134x");
    assert_eq!(unescape("/mnt/my\\040disk\\134x"), "/mnt/my disk\\x");
    assert_eq!(unescape("a\\04"), "a\\04");
    assert_eq!(unescape("a\\999"), "a\\999");
}

#[test]
fn user_fstab_is_checked() {
    let tmp = tempfile::tempdir().unwrap();
    let good = tmp.path().join("good");
    std::fs::write(&good, "LABEL=root / ext4 defaults 0 1\n").unwrap();
    assert_eq!(
        read_user_fstab(&good).unwrap(),
        "LABEL=root / ext4 defaults 0 1\n"
    );
    let bad = tmp.path().join("bad");
    std::fs::write(&bad, "LABEL=root /\n").unwrap();
    let err = read_user_fstab(&bad).unwrap_err();
    assert!(matches!(err, FstabError::InvalidUserFile { .. }), "{err:?}");
    let err = read_user_fstab(&tmp.path().join("missing")).unwrap_err();
    assert!(matches!(err, FstabError::ReadUserFile { .. }), "{err:?}");
}

#[test]
fn install_keeps_the_previous_file_and_its_attributes() {
    let tmp = tempfile::tempdir().unwrap();
    let image = tmp.path();
    std::fs::create_dir(image.join("etc")).unwrap();
    std::fs::write(image.join("etc/fstab"), "old\n").unwrap();
    std::fs::set_permissions(
        image.join("etc/fstab"),
        std::fs::Permissions::from_mode(0o640),
    )
    .unwrap();
    std::fs::write(image.join("etc/fstab.old"), "older\n").unwrap();

    assert_eq!(read_from_image(image).unwrap().as_deref(), Some("old\n"));
    let installed = install(image, "new\n").unwrap();
    assert_eq!(installed.previous, Some(PathBuf::from("/etc/fstab.old.1")));
    assert_eq!(
        std::fs::read_to_string(image.join("etc/fstab")).unwrap(),
        "new\n"
    );
    assert_eq!(
        std::fs::read_to_string(image.join("etc/fstab.old.1")).unwrap(),
        "old\n"
    );
    assert_eq!(
        std::fs::read_to_string(image.join("etc/fstab.old")).unwrap(),
        "older\n"
    );
    let meta = std::fs::metadata(image.join("etc/fstab")).unwrap();
    assert_eq!(meta.permissions().mode() & 0o7777, 0o640);
    // No temporary file left behind.
    let names: Vec<String> = std::fs::read_dir(image.join("etc"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), 3, "{names:?}");

    // Without a previous file: 0644, nothing kept.
    let other = tempfile::tempdir().unwrap();
    std::fs::create_dir(other.path().join("etc")).unwrap();
    assert_eq!(read_from_image(other.path()).unwrap(), None);
    let installed = install(other.path(), "x\n").unwrap();
    assert_eq!(installed.previous, None);
    let meta = std::fs::metadata(other.path().join("etc/fstab")).unwrap();
    assert_eq!(meta.permissions().mode() & 0o7777, 0o644);
    assert_eq!(meta.uid(), nix::unistd::geteuid().as_raw());
}

#[test]
fn install_refuses_the_host_root() {
    let err = install(Path::new("/"), "x\n").unwrap_err();
    assert!(matches!(err, FstabError::HostRoot { .. }), "{err:?}");
}

#[test]
fn install_never_writes_through_a_symlink() {
    let tmp = tempfile::tempdir().unwrap();
    let host = tmp.path().join("host");
    std::fs::create_dir_all(&host).unwrap();
    std::fs::write(host.join("fstab"), "host fstab\n").unwrap();

    // /etc of the image is a symlink to a host directory by its host path: inside the
    // image that path does not exist.
    let image = tmp.path().join("image");
    std::fs::create_dir(&image).unwrap();
    symlink(&host, image.join("etc")).unwrap();
    let err = install(&image, "evil\n").unwrap_err();
    assert!(matches!(err, FstabError::NoEtc { .. }), "{err:?}");
    assert_eq!(read_from_image(&image).unwrap(), None);

    // /etc/fstab of the image is a symlink to the host file: replaced as a name, the
    // link kept as the previous file, the host file untouched.
    let image2 = tmp.path().join("image2");
    std::fs::create_dir_all(image2.join("etc")).unwrap();
    symlink(host.join("fstab"), image2.join("etc/fstab")).unwrap();
    assert_eq!(read_from_image(&image2).unwrap(), None);
    let installed = install(&image2, "new\n").unwrap();
    assert_eq!(installed.previous, Some(PathBuf::from("/etc/fstab.old")));
    assert!(image2.join("etc/fstab.old").is_symlink());
    assert_eq!(
        std::fs::read_to_string(image2.join("etc/fstab")).unwrap(),
        "new\n"
    );
    assert!(!image2.join("etc/fstab").is_symlink());
    assert_eq!(
        std::fs::read_to_string(host.join("fstab")).unwrap(),
        "host fstab\n"
    );
}
