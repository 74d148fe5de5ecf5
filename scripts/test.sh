#!/usr/bin/env bash
# Runs every check CI runs: formatting, clippy, and the whole test suite (unit and integration,
# against the real binary, GNU tar, gzip, openssl and mkfs.ext4). Installs missing Debian
# packages first when run as root.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh
# The cloud tests run against a local moto server (S3 + EC2 emulator) from .venv/.
scripts/setup-emulator.sh >/dev/null

cargo fmt --check
cargo clippy --all-targets --locked -- -D warnings
cargo test --locked
