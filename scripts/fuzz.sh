#!/usr/bin/env bash
# Fuzzes the readers with cargo-fuzz (libFuzzer + AddressSanitizer): the manifest parser, the
# signature check on re-signed input (what a signature can be made to vouch for), the tar
# reader, the decrypt → gunzip → untar chain of unbundle and the boot check's initramfs lister
# (fuzz/fuzz_targets/*.rs).
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]
#
# runs each TARGET (default: all) for SECONDS (default 60) one after the other, and fails if any
# crashes, hangs (-timeout) or runs out of memory (-rss_limit_mb). Crashing inputs are left in
# fuzz/artifacts/TARGET/; keep each one as a regression test (docs/reliability.md, "Fuzzing").
# The corpus grows in fuzz/corpus/TARGET and is kept between runs; the seeds are made afresh in
# fuzz/seeds/TARGET from tests/data (the reference tools' test vectors). libFuzzer's
# output is in fuzz/logs/TARGET.log.
#
# Environment: FUZZ_RSS_MB (default 2048), FUZZ_TIMEOUT (seconds per input, default 10),
# FUZZ_MAX_LEN (bytes, default 65536), FUZZ_JOBS (parallel fuzzing processes per target,
# default 1), TESTDATA (default tests/data).
#
# cargo-fuzz needs nightly-only rustc flags (-Zsanitizer=address); RUSTC_BOOTSTRAP=1 lets the
# stable toolchain, which ships the ASan runtime, accept them. cargo-fuzz itself is installed from
# crates.io when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

seconds=${1:-60}
shift || true
targets=("$@")
all_targets=(manifest signature tar unbundle initramfs)
[[ ${#targets[@]} -gt 0 ]] || targets=("${all_targets[@]}")
rss_mb=${FUZZ_RSS_MB:-2048}
timeout=${FUZZ_TIMEOUT:-10}
max_len=${FUZZ_MAX_LEN:-65536}
jobs=${FUZZ_JOBS:-1}
testdata=${TESTDATA:-$root/tests/data}
export RUSTC_BOOTSTRAP=1

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz: installing cargo-fuzz" >&2
    cargo install cargo-fuzz --locked
fi

# -a: debug assertions, so arithmetic overflow panics too.
build_flags=(--debug-assertions)
echo "fuzz: building ${targets[*]}" >&2
if [[ "${targets[*]}" == "${all_targets[*]}" ]]; then
    (cd fuzz && cargo fuzz build "${build_flags[@]}")
else
    for target in "${targets[@]}"; do
        (cd fuzz && cargo fuzz build "${build_flags[@]}" "$target")
    done
fi

# Seeds --------------------------------------------------------------------------------------

json_field() { # FILE KEY: a string value of a flat JSON file
    sed -n "s/.*\"$2\": *\"\([^\"]*\)\".*/\1/p" "$1" | head -n1
}

# The v3 vector's key and IV are the ones fuzz_targets/unbundle.rs uses.
key3=$(json_field "$testdata/peer-bundles/v3-sparse-islands/expected.json" aes_key_hex)
iv3=$(json_field "$testdata/peer-bundles/v3-sparse-islands/expected.json" aes_iv_hex)

make_seeds() {
    local seeds=$root/fuzz/seeds
    rm -rf "$seeds"
    mkdir -p "$seeds/manifest" "$seeds/signature" "$seeds/tar" "$seeds/unbundle" "$seeds/initramfs"
    local tmp
    tmp=$(mktemp -d)
    mkdir "$tmp/tars"
    local dir v meta manifest key iv
    for dir in "$testdata"/peer-bundles/*/; do
        v=$(basename "$dir")
        meta=$dir/expected.json
        manifest=$(json_field "$meta" manifest)
        key=$(json_field "$meta" aes_key_hex)
        iv=$(json_field "$meta" aes_iv_hex)
        cat "$dir/$manifest" >"$seeds/manifest/$v.xml"
        # signature: a choice byte (0: the text span is signed, 1: the canonical form), then
        # the manifest, as it is and with the signed pair hidden in a comment ahead of an
        # altered copy (issue 12's bypass).
        { printf '\000'; cat "$dir/$manifest"; } >"$seeds/signature/$v-text.xml"
        { printf '\001'; cat "$dir/$manifest"; } >"$seeds/signature/$v-canonical.xml"
        { printf '\000'; sed -e 's|\(<machine_configuration>.*</image>\)|<!--\1-->\1|' \
            -e 's|\(.*\)<size>|\1<size>1|' "$dir/$manifest"; } >"$seeds/signature/$v-comment.xml"
        # The parts in index order (the width is the same for all, so a glob sorts them).
        cat "$dir"/*.part.* >"$tmp/$v.enc"
        openssl enc -d -aes-128-cbc -K "$key" -iv "$iv" -in "$tmp/$v.enc" -out "$tmp/$v.tar.gz"
        # Whole streams of the small vectors, the first 64 KiB (headers and sparse maps) of the
        # large ones.
        gzip -dc "$tmp/$v.tar.gz" | head -c "$max_len" >"$tmp/tars/$v.tar" || true
    done
    # Third-party tar forms the reader must accept (docs/format.md §3.7): GNU long name, PAX
    # header, POSIX ustar, GNU tar's own sparse output.
    if command -v python3 >/dev/null; then
        python3 - "$tmp/tars" <<'PY'
import io, sys, tarfile
out = sys.argv[1]
def member(name, data, fmt, path):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as t:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        info.mtime = 1_700_000_000
        t.addfile(info, io.BytesIO(data))
    open(f"{out}/{path}", "wb").write(buf.getvalue())
member("l" * 150 + ".img", b"gnu long name\n", tarfile.GNU_FORMAT, "py-gnu-longname.tar")
member("p" * 120 + ".img", b"pax path\n", tarfile.PAX_FORMAT, "py-pax.tar")
member("image.img", b"x" * 700, tarfile.USTAR_FORMAT, "py-ustar.tar")
PY
    fi
    if tar --version 2>/dev/null | grep -q GNU; then
        truncate -s 1M "$tmp/gnu-sparse.img"
        local off
        for off in 0 3 7 11 15 19 23 27 31 35; do
            printf 'island %s' "$off" |
                dd of="$tmp/gnu-sparse.img" bs=4096 seek="$off" conv=notrunc status=none
        done
        tar --format=gnu --sparse -C "$tmp" -cf "$tmp/tars/gnu-sparse.tar" gnu-sparse.img
    fi
    # The first byte of an input selects the target's mode (see fuzz/fuzz_targets/*.rs):
    # tar: 1 = fix header checksums; unbundle: 0 = ciphertext, 1 = gzip, 2 = tar.
    local t name
    for t in "$tmp"/tars/*.tar; do
        name=$(basename "$t" .tar)
        { printf '\001'; cat "$t"; } >"$seeds/tar/$name"
        gzip -9nc "$t" >"$tmp/$name.gz"
        { printf '\000'; openssl enc -aes-128-cbc -K "$key3" -iv "$iv3" -in "$tmp/$name.gz"; } \
            >"$seeds/unbundle/$name.enc"
        { printf '\001'; cat "$tmp/$name.gz"; } >"$seeds/unbundle/$name.gz"
        { printf '\002'; cat "$t"; } >"$seeds/unbundle/$name.tar"
    done
    # initramfs images as initramfs-tools and dracut make them: a microcode archive, then the
    # main one compressed (or not).
    if command -v cpio >/dev/null; then
        mkdir -p "$tmp/ird/kernel/x86/microcode" "$tmp/ird/usr/lib/modules/6.1/kernel/drivers/block"
        echo microcode >"$tmp/ird/kernel/x86/microcode/GenuineIntel.bin"
        echo module >"$tmp/ird/usr/lib/modules/6.1/kernel/drivers/block/xen-blkfront.ko"
        (cd "$tmp/ird" && find kernel | cpio --quiet -o -H newc) >"$tmp/early.cpio"
        (cd "$tmp/ird" && find usr | cpio --quiet -o -H newc) >"$tmp/main.cpio"
        cp "$tmp/main.cpio" "$seeds/initramfs/plain"
        local c
        for c in "gzip -9nc" "zstd -qc" "xz -c --check=crc32" "xz -c --format=lzma"; do
            command -v "${c%% *}" >/dev/null || continue
            { cat "$tmp/early.cpio"; $c <"$tmp/main.cpio"; } >"$seeds/initramfs/${c%% *}-${c##*=}"
        done
    fi
    rm -rf "$tmp"
}
make_seeds

# Runs ---------------------------------------------------------------------------------------

failed=()
mkdir -p fuzz/logs
for target in "${targets[@]}"; do
    mkdir -p "fuzz/corpus/$target" "fuzz/artifacts/$target"
    echo "fuzz: $target for ${seconds}s" >&2
    args=(
        -max_total_time="$seconds" -rss_limit_mb="$rss_mb" -malloc_limit_mb="$rss_mb"
        -timeout="$timeout" -max_len="$max_len" -print_final_stats=1
    )
    if [[ $jobs -gt 1 ]]; then
        args+=(-fork="$jobs")
    fi
    # libFuzzer's progress goes to fuzz/logs/TARGET.log; its summary (or, on failure, the end
    # of the log with the crash report) to stderr.
    log=fuzz/logs/$target.log
    if (cd fuzz && cargo fuzz run "${build_flags[@]}" "$target" \
        "corpus/$target" "seeds/$target" -- "${args[@]}") >"$log" 2>&1; then
        grep -E '^(Done|stat::)' "$log" >&2 || true
    else
        tail -n 60 "$log" >&2
        failed+=("$target")
    fi
done
if [[ ${#failed[@]} -gt 0 ]]; then
    echo "fuzz: FAILED: ${failed[*]} (inputs in fuzz/artifacts/)" >&2
    exit 1
fi
echo "fuzz: ${targets[*]}: no crash, hang or OOM in ${seconds}s each" >&2
