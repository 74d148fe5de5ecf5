#!/usr/bin/env bash
# Crash and resume at full strength: the tests of tests/it/crash.rs with 20 kill points (or
# more) per command instead of the suite's few. Usage:
#   scripts/crash-resume.sh [POINTS [SEED]]
# POINTS (default 20) applies to upload, download, bundle-image and save; SEED (decimal or
# 0x-hex) moves every kill point (default: the suite's fixed seed). Runs as root (save and
# bundle-vol need loop devices and mounts), against moto on 127.0.0.1 only.
set -euo pipefail
cd "$(dirname "$0")/.."

points="${1:-20}"
if [ "$points" -lt 20 ]; then
  echo "crash-resume.sh: at least 20 points per command (got $points)" >&2
  exit 2
fi
export AMIBUNDLE_CRASH_POINTS="$points"
export AMIBUNDLE_CRASH_SAVE_POINTS="$points"
if [ -n "${2:-}" ]; then
  export AMIBUNDLE_CRASH_SEED="$2"
fi
scripts/setup-emulator.sh >/dev/null
# --nocapture shows each test's summary line (seed, points killed, parts transferred/reused).
exec cargo test --locked --test it crash:: -- --nocapture --test-threads 2
