#!/usr/bin/env bash
# Builds the release binary to ship: target/release/amibundle without debug information (its
# symbol table kept), and
# target/release/amibundle.debug beside it holding the line tables (DWARF), linked by
# .gnu_debuglink. Copy the binary alone to servers; keep the .debug file next to it (or in
# /usr/lib/debug) where panics should print file and line numbers.
#
#   scripts/release.sh
#
# Prints the sizes. The unstripped binary is about 280 MB: the line tables of the whole AWS SDK.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked --bin amibundle
bin=target/release/amibundle
objcopy --only-keep-debug "$bin" "$bin.debug"
chmod 0644 "$bin.debug"
# --strip-debug keeps the symbol table (12 MB): a panic's backtrace names its functions even
# where the .debug file is not at hand; with it, files and lines too.
objcopy --strip-debug --add-gnu-debuglink="$bin.debug" "$bin" "$bin.stripped"
mv "$bin.stripped" "$bin"
size() { stat -c %s "$1"; }
echo "release: $bin $(( $(size "$bin") / 1024 / 1024 )) MiB ($(size "$bin") bytes)," \
    "$bin.debug $(( $(size "$bin.debug") / 1024 / 1024 )) MiB"
