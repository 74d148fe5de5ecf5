#!/usr/bin/env bash
# Runs every check CI runs: formatting, clippy, and the whole test suite (unit and integration,
# against the real binary, GNU tar, gzip, openssl and mkfs.ext4). Installs missing Debian
# packages first when run as root. As a normal user, the tests that need root are skipped and
# listed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh
# The cloud tests run against a local moto server (S3 + EC2 emulator) from .venv/.
scripts/setup-emulator.sh >/dev/null

cargo fmt --check
(cd fuzz && cargo fmt --check)
cargo clippy --all-targets --locked -- -D warnings
# tools/netproxy (the benchmarks' network model) includes tests/it/support/{http,proxy}.rs by
# path: it must keep building on its own (seconds: no AWS SDK).
cargo fmt --check --manifest-path tools/netproxy/Cargo.toml
cargo clippy --locked --release --manifest-path tools/netproxy/Cargo.toml -- -D warnings
# The VM boot test (docs/bootability.md): a real Debian 12 guest saves itself with bundle-vol and
# the result must boot by its own firmware, MBR/GPT, GRUB, kernel, initramfs and fstab. CI runs
# the MBR + root=PARTUUID style with the to-ebs legs (+ebs: the bundle's snapshot and a
# partitioned copy of its bare root filesystem, each booted from NVMe) and the GPT style with
# --generalize side by side (about 6 minutes under TCG, plus a minute for the root filesystem);
# BOOT_TEST_STYLES=all runs every style.
boot_styles=${BOOT_TEST_STYLES:-ci}
if [[ $(id -u) -ne 0 ]]; then
    echo "test.sh: skipping the VM boot test (scripts/boot-test.sh needs root)" >&2
elif [[ $boot_styles != none ]]; then
    cargo build --locked --bin amibundle
    scripts/boot-test.sh --styles "$boot_styles" --binary target/debug/amibundle --jobs 2
fi
# A fuzzing smoke: each cargo-fuzz target for FUZZ_SMOKE_SECONDS (default 20; 0 skips it), so
# the targets (and the library without its `cli` feature) keep building and the seeds pass
# (docs/reliability.md, "Fuzzing"). Before the tests, so that cargo test's summary closes the
# output.
smoke=${FUZZ_SMOKE_SECONDS:-20}
if [[ $smoke -gt 0 ]]; then
    scripts/fuzz.sh "$smoke"
fi
# Tests that need root (loop devices, mkfs on devices, mounts, namespaces) are marked #[ignore]
# with that reason, so that a plain `cargo test` as a normal user passes and lists them as
# ignored; as root, they all run here.
if [[ $(id -u) -eq 0 ]]; then
    cargo test --locked -- --include-ignored
else
    cargo test --locked
    skipped=$(cargo test --locked -q -- --list --ignored 2>/dev/null | sed -n 's/: test$//p')
    echo "test.sh: not root, so these $(grep -c . <<<"$skipped") tests were skipped (they need" \
        "loop devices and mounts; run scripts/test.sh as root for them):" >&2
    sed 's/^/  /' <<<"$skipped" >&2
fi
