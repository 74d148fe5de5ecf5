#!/usr/bin/env bash
# Installs the S3+EC2 emulator the cloud tests run against (moto in server mode, pinned) into a
# Python venv at .venv/ in the repository root, and prints the path of its `moto_server`.
# Idempotent: a venv already holding the pinned version is left alone (well under a second).
# Works from any directory. Needs python3 (with the venv module) and, on first run, PyPI.
set -euo pipefail

MOTO_VERSION="5.2.5"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv"
python="$venv/bin/python"
moto_server="$venv/bin/moto_server"

# True when the venv has the pinned moto and the server extra's Flask (moto_server needs both).
installed() {
  [ -x "$moto_server" ] && [ -x "$python" ] && "$python" - "$MOTO_VERSION" <<'PY' 2>/dev/null
import sys
from importlib.metadata import version, PackageNotFoundError
try:
    ok = version("moto") == sys.argv[1] and version("flask") and version("flask-cors")
except PackageNotFoundError:
    ok = False
sys.exit(0 if ok else 1)
PY
}

if ! installed; then
  # Serialise concurrent first runs (two test shells sharing a checkout) by locking this script
  # itself: per checkout, and it leaves no lock file behind.
  if command -v flock >/dev/null 2>&1; then
    exec 9<"${BASH_SOURCE[0]}"
    flock 9
  fi
  if ! installed; then
    # A venv whose interpreter is gone (python upgraded or removed) cannot be repaired in place.
    if [ -d "$venv" ] && ! "$python" -c 'import sys' >/dev/null 2>&1; then
      rm -rf "$venv"
    fi
    [ -x "$python" ] || python3 -m venv "$venv" >&2
    "$python" -m pip install --quiet --disable-pip-version-check \
      "moto[server]==$MOTO_VERSION" >&2
    installed || { echo "setup-emulator: moto $MOTO_VERSION is not usable in $venv" >&2; exit 1; }
  fi
fi
echo "$moto_server"
