//! Generated documentation: shell completions and man pages from the real binary, and
//! docs/json-output.md checked against what the commands actually print with `--json` (and
//! against every `print_json` in the source), so the documented API cannot drift silently.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::Path;
use std::process::Command;

use clap::CommandFactory;

use crate::support::*;

#[test]
fn completions_through_the_binary() {
    let home = tempfile::tempdir().unwrap();
    let out = run_ok(amibundle(home.path()).args(["completions", "bash"]));
    let script = String::from_utf8(out.stdout).unwrap();
    assert!(script.contains("complete -F _amibundle"), "{script:.200}");
    assert!(script.contains("bundle-vol"));
    assert!(script.contains("--volume"));
    // A bash script that bash itself accepts.
    let file = home.path().join("amibundle.bash");
    fs::write(&file, &script).unwrap();
    run_ok(Command::new("bash").arg("-n").arg(&file));

    for shell in ["zsh", "fish", "elvish", "powershell"] {
        let out = run_ok(amibundle(home.path()).args(["completions", shell]));
        let script = String::from_utf8(out.stdout).unwrap();
        assert!(script.contains("bundle-vol"), "{shell}");
    }
    let out = amibundle(home.path())
        .args(["completions", "tcsh"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "an unknown shell is a usage error"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("bash"));
}

/// `amibundle.1` and `amibundle-SUB[-NESTED].1` for every visible (sub)command.
fn expected_pages() -> BTreeSet<String> {
    fn walk(cmd: &clap::Command, prefix: &str, out: &mut BTreeSet<String>) {
        out.insert(format!("{prefix}.1"));
        for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
            walk(sub, &format!("{prefix}-{}", sub.get_name()), out);
        }
    }
    let mut out = BTreeSet::new();
    walk(&amibundle::cli::Cli::command(), "amibundle", &mut out);
    out
}

#[test]
fn man_pages_one_per_command_and_valid_roff() {
    let home = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    // Default directory: the current one.
    let out = run_ok(amibundle(home.path()).arg("man").current_dir(work.path()));
    let listed: Vec<String> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    let found: BTreeSet<String> = fs::read_dir(work.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let expected = expected_pages();
    assert!(expected.len() >= 15, "{expected:?}");
    assert!(expected.contains("amibundle-bundle-vol.1"));
    assert!(expected.contains("amibundle-certs-install.1"));
    assert_eq!(found, expected);
    assert_eq!(listed.len(), expected.len(), "{listed:?}");

    for name in &expected {
        let path = work.path().join(name);
        let page = fs::read_to_string(&path).unwrap();
        let title = name.trim_end_matches(".1");
        assert!(
            page.lines()
                .any(|l| l.starts_with(&format!(".TH {title} 1"))),
            "{name} has no .TH line"
        );
        // groff in warning-all mode: any malformed request or escape is reported on stderr.
        let out = run_ok(
            Command::new("groff")
                .args(["-man", "-Tutf8", "-ww", "-z"])
                .arg(&path),
        );
        assert!(
            out.stderr.is_empty(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let vol = fs::read_to_string(work.path().join("amibundle-bundle-vol.1")).unwrap();
    assert!(vol.contains("volume"));
    // Hidden flags stay out of the pages.
    let register = fs::read_to_string(work.path().join("amibundle-register.1")).unwrap();
    assert!(register.contains("no\\-wait"), "{register:.400}");
    assert!(!register.contains("boot\\-mode"));
    assert!(!register.contains("tpm\\-support"));

    // An explicit directory is created; a file in the way is an error naming it.
    let dir = work.path().join("share/man/man1");
    run_ok(amibundle(home.path()).arg("man").arg(&dir));
    assert_eq!(fs::read_dir(&dir).unwrap().count(), expected.len());
    let blocker = work.path().join("file");
    fs::write(&blocker, "x").unwrap();
    let err = run_err(amibundle(home.path()).arg("man").arg(&blocker));
    assert!(err.contains(blocker.to_str().unwrap()), "{err}");
}

/// docs/json-output.md as command → documented field paths. A `## ` heading lists the
/// commands its table belongs to in backticks (`bundle-image --upload` counts for
/// `bundle-image`); a heading without any belongs to every command (key `*`).
fn documented_fields() -> BTreeMap<String, BTreeSet<String>> {
    let doc = fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/json-output.md"))
        .unwrap();
    let mut fields: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut current: Vec<String> = Vec::new();
    for line in doc.lines() {
        if let Some(heading) = line.strip_prefix("## ") {
            current = heading
                .split('`')
                .skip(1)
                .step_by(2)
                .map(|quoted| {
                    quoted
                        .split_whitespace()
                        .take_while(|w| !w.starts_with("--"))
                        .collect::<Vec<_>>()
                        .join(" ")
                })
                .collect();
            if current.is_empty() {
                current.push("*".to_string());
            }
        } else if let Some(row) = line.strip_prefix("| `") {
            let field = row.split('`').next().unwrap().to_string();
            for command in &current {
                fields
                    .entry(command.clone())
                    .or_default()
                    .insert(field.clone());
            }
        }
    }
    fields
}

/// Field paths of a JSON output: top-level keys, `a.b` for objects' keys and `a[].b` for the
/// keys of objects in arrays.
fn field_paths(value: &serde_json::Value, prefix: &str, out: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, v) in map {
                let path = if prefix.is_empty() {
                    key.clone()
                } else {
                    format!("{prefix}.{key}")
                };
                out.push(path.clone());
                field_paths(v, &path, out);
            }
        }
        serde_json::Value::Array(items) => {
            for item in items {
                field_paths(item, &format!("{prefix}[]"), out);
            }
        }
        _ => {}
    }
}

fn assert_documented(doc: &BTreeMap<String, BTreeSet<String>>, stdout: &[u8]) -> String {
    let v: serde_json::Value = serde_json::from_slice(stdout).unwrap();
    assert_eq!(v["version"], 1, "{v}");
    let command = v["command"].as_str().expect("command").to_string();
    let mut paths = Vec::new();
    field_paths(&v, "", &mut paths);
    let empty = BTreeSet::new();
    let own = doc.get(&command).unwrap_or(&empty);
    let common = doc.get("*").unwrap_or(&empty);
    for path in paths {
        assert!(
            own.contains(&path) || common.contains(&path),
            "`{command} --json` prints `{path}`, which docs/json-output.md does not list under {command}"
        );
    }
    command
}

#[test]
fn json_outputs_are_documented() {
    let doc = documented_fields();
    assert!(doc.get("*").is_some_and(|f| f.contains("version")));
    let keys = Keys::new();
    let home = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let image = work.path().join("disk.img");
    let mut data = vec![0u8; 300_000];
    for (i, b) in data.iter_mut().enumerate().take(100_000) {
        *b = (i * 7 % 251) as u8;
    }
    fs::write(&image, data).unwrap();
    let out_dir = work.path().join("bundle");
    fs::create_dir(&out_dir).unwrap();
    let mut checked = Vec::new();

    let out = run_ok(
        amibundle(home.path())
            .args(["bundle-image", "-u", "123456789012", "--json", "-i"])
            .arg(&image)
            .arg("-d")
            .arg(&out_dir)
            .args(keys.bundle_args()),
    );
    checked.push(assert_documented(&doc, &out.stdout));
    let manifest = out_dir.join("disk.img.manifest.xml");

    let out = run_ok(
        amibundle(home.path())
            .args(["verify", "--json", "-m"])
            .arg(&manifest)
            .arg("-c")
            .arg(keys.user_cert())
            .arg("-k")
            .arg(keys.user_key()),
    );
    checked.push(assert_documented(&doc, &out.stdout));

    let restored = work.path().join("restored");
    fs::create_dir(&restored).unwrap();
    let out = run_ok(
        amibundle(home.path())
            .args(["unbundle", "--json", "-m"])
            .arg(&manifest)
            .arg("-k")
            .arg(keys.user_key())
            .arg("-c")
            .arg(keys.user_cert())
            .arg("-d")
            .arg(&restored),
    );
    checked.push(assert_documented(&doc, &out.stdout));

    let out = run_ok(
        amibundle(home.path())
            .args(["migrate-manifest", "--json", "-m"])
            .arg(&manifest)
            .arg("-k")
            .arg(keys.user_key())
            .arg("-c")
            .arg(keys.user_cert())
            .arg("--ec2cert")
            .arg(keys.ec2_cert())
            .args(["--unpinned-ec2cert", "--kernel", "aki-0a1b2c3d"]),
    );
    checked.push(assert_documented(&doc, &out.stdout));

    // Amazon's certificates are not in the test data, so every region reports its error form;
    // the found form's keys are covered by the source scan below.
    let out = run_ok(amibundle(home.path()).args(["certs", "--json"]));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["regions"][0]["error"].is_string(), "{v}");
    checked.push(assert_documented(&doc, &out.stdout));

    let out = run_ok(
        amibundle(home.path())
            .args(["man", "--json"])
            .arg(work.path().join("man")),
    );
    checked.push(assert_documented(&doc, &out.stdout));

    assert_eq!(
        checked,
        [
            "bundle-image",
            "verify",
            "unbundle",
            "migrate-manifest",
            "certs",
            "man"
        ]
    );
}

/// Every key written in any `print_json(&json!({...}))` of the CLI (the cloud commands' too,
/// which the test above cannot run without the emulator) is a documented field name.
#[test]
fn every_printed_json_key_is_documented() {
    let doc = documented_fields();
    let names: BTreeSet<String> = doc
        .values()
        .flatten()
        .map(|path| {
            path.rsplit(['.', ']'])
                .next()
                .unwrap_or(path)
                .trim_start_matches('[')
                .to_string()
        })
        .collect();
    // Every .rs file under src/cli, subdirectories included.
    let mut files = Vec::new();
    let mut dirs = vec![Path::new(env!("CARGO_MANIFEST_DIR")).join("src/cli")];
    while let Some(dir) = dirs.pop() {
        for entry in fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
    }
    let mut seen = 0;
    for path in files {
        let text = fs::read_to_string(&path).unwrap();
        for block in text.split("print_json(").skip(1) {
            // The `json!` argument: up to the parenthesis closing `print_json(`.
            let mut depth = 1;
            let end = block
                .char_indices()
                .find(|&(_, c)| {
                    match c {
                        '(' => depth += 1,
                        ')' => depth -= 1,
                        _ => {}
                    }
                    depth == 0
                })
                .map_or(block.len(), |(i, _)| i);
            let body = &block[..end];
            for piece in body.split('"').collect::<Vec<_>>().windows(2) {
                // `"key":` — a quoted word followed by a colon.
                let (key, after) = (piece[0], piece[1]);
                if after.trim_start().starts_with(':')
                    && !key.is_empty()
                    && key.chars().all(|c| c.is_ascii_lowercase() || c == '_')
                {
                    seen += 1;
                    assert!(
                        names.contains(key),
                        "{}: JSON key `{key}` is not in docs/json-output.md",
                        path.display()
                    );
                }
            }
        }
    }
    assert!(seen > 100, "only {seen} keys found: the scan is broken");
}

/// Every `amibundle` command line in docs/usage.md's code blocks parses with the real argument
/// parser (Packer's template variables filled with sample values), so the doc names only
/// commands and flags that exist.
#[test]
fn usage_doc_command_lines_parse() {
    use clap::Parser;
    let doc =
        fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/usage.md")).unwrap();
    let samples = [
        ("{{.KeyPath}}", "/tmp/key.pem"),
        ("{{.CertPath}}", "/tmp/cert.pem"),
        ("{{.AccountId}}", "123456789012"),
        ("{{.Architecture}}", "x86_64"),
        ("{{.PrivatePath}}", "/tmp"),
        ("{{.Destination}}", "/tmp"),
        ("{{.Prefix}}", "image-1767225600"),
        ("{{.BucketName}}", "my-bundles"),
        ("{{.ManifestPath}}", "/tmp/image-1767225600.manifest.xml"),
        ("{{.BundleDirectory}}", "/tmp"),
        ("{{.Region}}", "eu-west-1"),
    ];
    let mut in_block = false;
    let mut parsed = 0;
    for line in doc.lines() {
        if line.starts_with("```") {
            in_block = !in_block;
            continue;
        }
        let Some(start) = line.find("amibundle ").filter(|_| in_block) else {
            continue;
        };
        let mut text = line[start..].to_string();
        for (var, value) in samples {
            text = text.replace(var, value);
        }
        assert!(!text.contains("{{"), "unfilled template variable: {text}");
        // No shell syntax is used in these lines but single quotes around one word.
        let words: Vec<String> = text
            .split_whitespace()
            .map(|w| w.trim_matches('\'').to_string())
            .collect();
        if let Err(e) = amibundle::cli::Cli::try_parse_from(&words) {
            panic!("docs/usage.md: `{text}` does not parse:\n{e}");
        }
        parsed += 1;
    }
    assert!(!in_block, "unbalanced code fences");
    assert!(parsed >= 15, "only {parsed} command lines found");
}
