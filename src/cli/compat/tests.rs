use std::ffi::OsString;

use super::*;

fn args(line: &str) -> Vec<OsString> {
    line.split_whitespace().map(OsString::from).collect()
}

fn run(tool: Tool, line: &str) -> Translation {
    match translate(tool, args(line)) {
        Ok(Outcome::Run(t)) => t,
        other => panic!("{line}: {other:?}"),
    }
}

fn refused(tool: Tool, line: &str) -> String {
    match translate(tool, args(line)) {
        Err(Refusal::Message(m)) => m,
        Err(Refusal::Clap(e)) => e.to_string(),
        other => panic!("{line} was not refused: {other:?}"),
    }
}

fn native(t: &Translation) -> String {
    t.argv
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

#[test]
fn argv0_basename_picks_the_personality() {
    assert_eq!(
        Tool::from_argv0("/usr/local/bin/ec2-bundle-vol".as_ref()),
        Some(Tool::BundleVol)
    );
    assert_eq!(
        Tool::from_argv0("ec2-migrate-manifest".as_ref()),
        Some(Tool::MigrateManifest)
    );
    assert_eq!(Tool::from_argv0("/usr/bin/amibundle".as_ref()), None);
    assert_eq!(Tool::from_argv0("ec2-bundle-vol-old".as_ref()), None);
}

#[test]
fn packer_bundle_vol_with_a_shell_expanded_exclude_excludes_every_loose_path() {
    let t = run(
        Tool::BundleVol,
        "ec2-bundle-vol -k /tmp/key.pem -u 1234-5678-9012 -c /tmp/cert.pem -r arm64 \
         -e /tmp/cert.pem /tmp/extra /tmp/key.pem -d /tmp -p image-1700000000 --batch --no-filter",
    );
    assert_eq!(
        native(&t),
        "amibundle bundle-vol --volume / --destination /tmp --prefix image-1700000000 \
         --no-filter --exclude /tmp/cert.pem --exclude /tmp/extra --exclude /tmp/key.pem \
         --cert /tmp/cert.pem --privatekey /tmp/key.pem --allow-insecure-key \
         --user 1234-5678-9012 --arch arm64"
    );
    // The native parser takes it as it is.
    assert!(Cli::try_parse_from(&t.argv).is_ok());
}

#[test]
fn bundle_vol_defaults_are_the_classic_ones_and_comma_lists_split() {
    let t = run(
        Tool::BundleVol,
        "ec2-bundle-vol -e /a,/b -i /c,/d --clone-only",
    );
    let n = native(&t);
    assert!(
        n.starts_with("amibundle bundle-vol --volume / --destination /tmp --prefix image "),
        "{n}"
    );
    assert!(
        n.contains("--exclude /a --exclude /b --include /c --include /d"),
        "{n}"
    );
    // An unexpanded glob is passed on as one pattern (bundle-vol expands it itself).
    let t = run(Tool::BundleVol, "ec2-bundle-vol -e /tmp/* --clone-only");
    assert!(native(&t).contains("--exclude /tmp/*"));
}

#[test]
fn bundle_vol_historical_flags_are_accepted_or_refused_clearly() {
    let t = run(
        Tool::BundleVol,
        "ec2-bundle-vol -u 123456789012 -P gpt --inherit --no-inherit --generate-fstab \
         --grub-config /boot/grub/menu.lst -a -s 2048 -B ami=sda1,root=/dev/sda1 \
         --productcodes a,b --kernel aki-1 --ramdisk ari-1 --ec2cert /e.pem --no-size-checks \
         --debug -v /data",
    );
    let n = native(&t);
    for want in [
        "amibundle --debug bundle-vol",
        "--volume /data",
        "--partition gpt",
        "--no-inherit",
        "--generate-fstab",
        "--all",
        "--size 2048",
        "--block-device-mapping ami=sda1,root=/dev/sda1",
        "--productcodes a,b",
        "--kernel aki-1",
        "--ramdisk ari-1",
        "--ec2cert /e.pem",
    ] {
        assert!(n.contains(want), "{want} missing in {n}");
    }
    assert!(t.notes.iter().any(|n| n.contains("GRUB Legacy")));
    assert!(Cli::try_parse_from(&t.argv).is_ok());

    assert!(refused(Tool::BundleVol, "ec2-bundle-vol -S /root/fix.sh").contains("--script"));
    assert!(refused(Tool::BundleVol, "ec2-bundle-vol /stray").contains("/stray"));
    assert!(refused(Tool::BundleVol, "ec2-bundle-vol --frobnicate").contains("--frobnicate"));
    assert!(refused(Tool::BundleVol, "ec2-bundle-vol -P lvm").contains("lvm"));
}

#[test]
fn packer_upload_translates_and_keeps_the_credentials_out_of_argv_and_debug() {
    let t = run(
        Tool::UploadBundle,
        "ec2-upload-bundle -b my-bucket/builds -m /tmp/image-1.manifest.xml -a AKIAEXAMPLEKEY \
         -s SeCrEtVaLuE -d /tmp --batch --region eu-central-1 --retry",
    );
    assert_eq!(
        native(&t),
        "amibundle upload --manifest /tmp/image-1.manifest.xml --bucket my-bucket/builds \
         --directory /tmp --acl aws-exec-read --region eu-central-1"
    );
    let debug = format!("{t:?}");
    assert!(
        !debug.contains("SeCrEtVaLuE") && !debug.contains("AKIAEXAMPLEKEY"),
        "{debug}"
    );
    // The parsed classic struct does not show them either.
    let parsed: s3::Upload = parse_with(
        Tool::UploadBundle,
        args("ec2-upload-bundle -b b -m m -a AKIAEXAMPLEKEY -s SeCrEtVaLuE -t ToKeN"),
    )
    .unwrap();
    let debug = format!("{parsed:?}");
    assert!(
        !debug.contains("SeCrEtVaLuE")
            && !debug.contains("AKIAEXAMPLEKEY")
            && !debug.contains("ToKeN"),
        "{debug}"
    );

    // They reach the native command once it is parsed.
    let mut cli = Cli::try_parse_from(&t.argv).unwrap();
    t.credentials.inject(&mut cli.command);
    let Command::Upload(up) = &cli.command else {
        panic!("not an upload")
    };
    assert_eq!(up.cloud.access_key.as_deref(), Some("AKIAEXAMPLEKEY"));
    assert_eq!(up.cloud.secret_key.as_deref(), Some("SeCrEtVaLuE"));
    assert_eq!(up.cloud.session_token, None);
}

#[test]
fn upload_location_url_sigv_part_and_skipmanifest() {
    let t = run(
        Tool::UploadBundle,
        "ec2-upload-bundle -b b -m m --location EU --sigv 2 --part 3 --skipmanifest --acl public-read",
    );
    let n = native(&t);
    assert!(n.contains("--region eu-west-1"), "{n}");
    assert!(n.contains("--part 3 --skip-manifest"), "{n}");
    assert!(n.contains("--acl public-read"), "{n}");
    assert!(t.notes.iter().any(|n| n.contains("Signature Version 4")));
    assert!(Cli::try_parse_from(&t.argv).is_ok());

    let t = run(
        Tool::UploadBundle,
        "ec2-upload-bundle -b b -m m --location US",
    );
    assert!(native(&t).contains("--region us-east-1"));
    let t = run(
        Tool::UploadBundle,
        "ec2-upload-bundle -b b -m m --url http://127.0.0.1:9000",
    );
    let n = native(&t);
    assert!(
        n.ends_with("--s3-endpoint-url http://127.0.0.1:9000 --path-style"),
        "{n}"
    );
    assert!(!n.contains("--region"), "{n}");
    let t = run(
        Tool::UploadBundle,
        "ec2-upload-bundle -b b -m m --url https://s3-ap-southeast-2.amazonaws.com",
    );
    assert!(native(&t).contains("--region ap-southeast-2"));

    assert!(
        refused(
            Tool::UploadBundle,
            "ec2-upload-bundle -b b -m m --region us-west-2 --location EU"
        )
        .contains("different regions")
    );
    assert!(refused(Tool::UploadBundle, "ec2-upload-bundle -b b -m m --sigv 3").contains("3"));
    assert!(refused(Tool::UploadBundle, "ec2-upload-bundle -m m").contains("-b/--bucket"));
}

#[test]
fn location_and_url_regions() {
    assert_eq!(s3::location_region("EU"), "eu-west-1");
    assert_eq!(s3::location_region("eu"), "eu-west-1");
    assert_eq!(s3::location_region("US"), "us-east-1");
    assert_eq!(s3::location_region(""), "us-east-1");
    assert_eq!(s3::location_region("sa-east-1"), "sa-east-1");
    assert_eq!(
        s3::url_region("https://s3.amazonaws.com").as_deref(),
        Some("us-east-1")
    );
    assert_eq!(
        s3::url_region("https://s3-eu-west-1.amazonaws.com/").as_deref(),
        Some("eu-west-1")
    );
    assert_eq!(
        s3::url_region("https://s3.eu-north-1.amazonaws.com").as_deref(),
        Some("eu-north-1")
    );
    assert_eq!(s3::url_region("http://127.0.0.1:5000"), None);
    assert_eq!(s3::url_region("https://minio.example.org"), None);
}

#[test]
fn credential_mistakes_are_named_without_echoing_them() {
    let m = refused(
        Tool::UploadBundle,
        "ec2-upload-bundle -b b -m m -a ASIAVERYSECRETKEY -s SeCrEt",
    );
    assert!(m.contains("-t") && m.contains("temporary"), "{m}");
    assert!(
        !m.contains("ASIAVERYSECRETKEY") && !m.contains("SeCrEt"),
        "{m}"
    );
    // With its token a temporary key is fine.
    run(
        Tool::UploadBundle,
        "ec2-upload-bundle -b b -m m -a ASIAVERYSECRETKEY -s SeCrEt -t ToKeN",
    );
    let m = refused(Tool::UploadBundle, "ec2-upload-bundle -b b -m m -a AKIAKEY");
    assert!(m.contains("without -s"), "{m}");
    assert!(!m.contains("AKIAKEY"), "{m}");
    let m = refused(Tool::UploadBundle, "ec2-upload-bundle -b b -m m -s SeCrEt");
    assert!(m.contains("without -a") && !m.contains("SeCrEt"), "{m}");
}

#[test]
fn download_delete_unbundle_migrate_translate() {
    let t = run(
        Tool::DownloadBundle,
        "ec2-download-bundle -b b/p -p img -k /k.pem --retry",
    );
    assert_eq!(
        native(&t),
        "amibundle download --bucket b/p --manifest img.manifest.xml --directory ."
    );
    assert!(t.notes.iter().any(|n| n.contains("-k")));
    assert!(Cli::try_parse_from(&t.argv).is_ok());
    let t = run(Tool::DownloadBundle, "ec2-download-bundle -b b");
    assert!(native(&t).contains("--manifest image.manifest.xml"));

    let t = run(
        Tool::DeleteBundle,
        "ec2-delete-bundle -b b -m /tmp/x.manifest.xml --clear -y",
    );
    assert_eq!(
        native(&t),
        "amibundle delete --bucket b --manifest /tmp/x.manifest.xml --clear"
    );
    assert!(Cli::try_parse_from(&t.argv).is_ok());
    assert!(refused(Tool::DeleteBundle, "ec2-delete-bundle -b b").contains("-p PREFIX"));

    let t = run(Tool::Unbundle, "ec2-unbundle -k /k.pem -m /m.xml");
    assert_eq!(
        native(&t),
        "amibundle unbundle --manifest /m.xml --privatekey /k.pem --allow-insecure-key --source . --destination ."
    );
    assert!(Cli::try_parse_from(&t.argv).is_ok());
    assert!(refused(Tool::Unbundle, "ec2-unbundle -m /m.xml").contains("-k/--privatekey"));

    let t = run(
        Tool::MigrateManifest,
        "ec2-migrate-manifest -c /c -k /k -m /m -a A -s S --region eu-west-1 --no-mapping",
    );
    assert_eq!(
        native(&t),
        "amibundle migrate-manifest --manifest /m --cert /c --privatekey /k --allow-insecure-key --region eu-west-1 --no-mapping"
    );
    assert!(Cli::try_parse_from(&t.argv).is_ok());

    let t = run(
        Tool::BundleImage,
        "ec2-bundle-image -i /img -k /k -c /c -u 123456789012 -r x86_64",
    );
    assert_eq!(
        native(&t),
        "amibundle bundle-image --image /img --destination /tmp --cert /c --privatekey /k --allow-insecure-key --user 123456789012 --arch x86_64"
    );
    assert!(Cli::try_parse_from(&t.argv).is_ok());
}

#[test]
fn version_manual_and_help_need_no_other_flag() {
    for tool in Tool::ALL {
        let name = tool.name();
        match translate(tool, args(&format!("{name} --version"))) {
            Ok(Outcome::Print(s)) => {
                assert!(s.starts_with("1.5.3 ") && s.contains("amibundle"), "{s}")
            }
            other => panic!("{other:?}"),
        }
        match translate(tool, args(&format!("{name} --manual"))) {
            Ok(Outcome::Print(s)) => assert!(s.contains(name) && s.contains("amibundle"), "{s}"),
            other => panic!("{other:?}"),
        }
        match translate(tool, args(&format!("{name} --help"))) {
            Err(Refusal::Clap(e)) => {
                assert_eq!(e.exit_code(), 0);
                assert!(e.to_string().contains(name));
            }
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn unambiguous_long_option_prefixes_are_taken_as_the_reference_took_them() {
    let t = run(
        Tool::BundleVol,
        "ec2-bundle-vol --priv /k --us 123456789012 --cert /c --dest /d --pref img --no-filt \
         --ec2c /e --clone",
    );
    let n = native(&t);
    for expected in [
        "--destination /d",
        "--prefix img",
        "--no-filter",
        "--ec2cert /e",
        "--clone-only",
        "--privatekey /k",
        "--user 123456789012",
    ] {
        assert!(n.contains(expected), "{expected} missing: {n}");
    }
    let t = run(
        Tool::UploadBundle,
        "ec2-upload-bundle --buck b --manif /m.xml --acc A --secret S --reg eu-west-1",
    );
    assert!(
        native(&t).contains("--manifest /m.xml --bucket b"),
        "{}",
        native(&t)
    );
    // An ambiguous prefix is refused (clap names a candidate).
    let msg = refused(Tool::BundleVol, "ec2-bundle-vol --no -d /d");
    assert!(msg.contains("'--no'") && msg.contains("--no-"), "{msg}");
}

#[test]
fn a_key_others_can_read_is_accepted_under_the_personalities_as_the_reference_did() {
    for (tool, line) in [
        (
            Tool::BundleVol,
            "ec2-bundle-vol -k /k -c /c -u 123456789012 -r x86_64 --clone-only",
        ),
        (
            Tool::BundleImage,
            "ec2-bundle-image -i /img -k /k -c /c -u 123456789012 -r x86_64",
        ),
        (Tool::Unbundle, "ec2-unbundle -k /k -m /m.manifest.xml"),
        (
            Tool::MigrateManifest,
            "ec2-migrate-manifest -m /m -c /c -k /k --region eu-west-1",
        ),
    ] {
        let t = run(tool, line);
        assert!(
            native(&t).contains("--privatekey /k --allow-insecure-key"),
            "{line}: {}",
            native(&t)
        );
        assert!(Cli::try_parse_from(&t.argv).is_ok(), "{line}");
    }
    // Without -k there is nothing to allow.
    let t = run(Tool::BundleVol, "ec2-bundle-vol --clone-only");
    assert!(!native(&t).contains("--allow-insecure-key"));
}

#[test]
fn delete_by_prefix_lists_the_bucket_and_asks_unless_yes_or_batch() {
    let t = run(Tool::DeleteBundle, "ec2-delete-bundle -b b/p -p web");
    assert_eq!(native(&t), "amibundle delete --bucket b/p --prefix web");
    assert!(Cli::try_parse_from(&t.argv).is_ok());
    for line in [
        "ec2-delete-bundle -b b/p -p web -y",
        "ec2-delete-bundle -b b/p -p web --batch --clear",
    ] {
        let t = run(Tool::DeleteBundle, line);
        assert!(native(&t).contains("--prefix web --yes"), "{}", native(&t));
        assert!(Cli::try_parse_from(&t.argv).is_ok());
    }
    let t = run(
        Tool::DeleteBundle,
        "ec2-delete-bundle -b b -m web.manifest.xml",
    );
    assert_eq!(
        native(&t),
        "amibundle delete --bucket b --manifest web.manifest.xml"
    );
}

#[test]
fn migrate_bundle_is_a_copy_into_the_destination_bucket_without_registering() {
    let t = run(
        Tool::MigrateBundle,
        "ec2-migrate-bundle -c /c -k /k -m web.manifest.xml -b src/builds -d dst/moved \
         --location EU -a AKIAEXAMPLE -s SECRET --ec2cert /e --unpinned-ec2cert",
    );
    assert_eq!(
        native(&t),
        "amibundle copy --image-location src/builds/web.manifest.xml --to-region eu-west-1 \
         --bucket-template dst/moved --cert /c --privatekey /k --allow-insecure-key \
         --acl aws-exec-read --no-register --unpinned-ec2cert --ec2cert eu-west-1=/e \
         --region eu-west-1"
    );
    assert!(!format!("{t:?}").contains("SECRET"));
    let mut cli = Cli::try_parse_from(&t.argv).expect("native parse");
    t.credentials.inject(&mut cli.command);
    match &cli.command {
        Command::Copy(c) => assert_eq!(c.cloud.secret_key.as_deref(), Some("SECRET")),
        other => panic!("{other:?}"),
    }
    // A kernel makes the copy paravirtual.
    let t = run(
        Tool::MigrateBundle,
        "ec2-migrate-bundle -c /c -k /k -m web.manifest.xml -b s -d d --region us-west-2 \
         --kernel aki-1",
    );
    assert!(native(&t).contains("--kernel-id aki-1"));
    assert!(native(&t).contains("--virtualization-type paravirtual"));
    assert!(Cli::try_parse_from(&t.argv).is_ok());
    assert!(
        refused(
            Tool::MigrateBundle,
            "ec2-migrate-bundle -c /c -k /k -m web.manifest.xml -b s -d d"
        )
        .contains("--location")
    );
    assert!(
        refused(
            Tool::MigrateBundle,
            "ec2-migrate-bundle -c /c -k /k -m p/web.manifest.xml -b s -d d --location US"
        )
        .contains("NAME.manifest.xml")
    );
}

#[test]
fn ami_tools_version_prints_the_reference_version_first() {
    match translate(Tool::Version, args("ec2-ami-tools-version")) {
        Ok(Outcome::Print(text)) => assert!(text.starts_with("1.5.3 20071010"), "{text}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn hints_naming_amibundles_own_flags_get_a_note_fitting_the_personality() {
    let acl = "uploading: bucket b has ACLs disabled (Object Ownership is BucketOwnerEnforced); \
               allow ACLs with `aws s3api put-bucket-ownership-controls --bucket b \
               --ownership-controls …` or rerun with --fix-ownership";
    assert_eq!(foreign_flags(Tool::UploadBundle, acl), ["--fix-ownership"]);
    let note = error_note(Tool::UploadBundle, acl).expect("note");
    assert!(note.contains("--fix-ownership"), "{note}");
    assert!(note.contains("amibundle upload"), "{note}");
    // Flags the classic tool has are not foreign.
    assert!(
        error_note(
            Tool::BundleVol,
            "the image would not boot: pass --partition mbr, or use --generate-fstab"
        )
        .is_none()
    );
    let sig = "verifying the signature of m.manifest.xml with the public key of --privatekey \
               (pass --cert if another key signed it, or --skip-signature to go on without the \
               check)";
    assert_eq!(
        foreign_flags(Tool::Unbundle, sig),
        ["--cert", "--skip-signature"]
    );
    // Paths and words with dashes are not flags.
    assert!(foreign_flags(Tool::Unbundle, "reading /tmp/a--b and x--y").is_empty());
}

#[test]
fn every_classic_flag_is_in_the_usage_table() {
    let usage =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/usage.md"))
            .expect("docs/usage.md");
    let start = usage
        .find("## Classic flags")
        .expect("docs/usage.md has a \"Classic flags\" section");
    let section = &usage[start..];
    let section = &section[..section[3..].find("\n## ").map_or(section.len(), |e| e + 3)];
    for tool in Tool::ALL {
        assert!(section.contains(tool.name()), "{} missing", tool.name());
        for arg in classic_command(tool).get_arguments() {
            if let Some(long) = arg.get_long() {
                assert!(
                    section.contains(&format!("--{long}")),
                    "{} --{long} is not in docs/usage.md's Classic flags table",
                    tool.name()
                );
            }
        }
    }
}
