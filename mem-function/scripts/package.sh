#!/usr/bin/env bash
# Build the deployable AWS Lambda package of mem-function: a zip holding `bootstrap`, for the
# provided.al2023 runtime on x86_64.
#
#   mem-function/scripts/package.sh                  # MODE=auto: cargo-lambda if usable, else plain
#   MODE=cargo-lambda mem-function/scripts/package.sh
#   MODE=plain mem-function/scripts/package.sh
#
# Output: $CARGO_TARGET_DIR/lambda/mem-function/bootstrap.zip (default target dir: <repo>/target).
#
# cargo-lambda mode (`cargo lambda build --release --output-format zip`): needs
#     pip install --no-deps cargo-lambda ziglang
#   (both wheels ship static binaries, nothing else is downloaded; cargo-lambda finds zig through
#   the ziglang package of the `python3` on PATH; the script puts the python3 next to cargo-lambda
#   first and also looks in <repo>/.venv/bin). Zig links against an old glibc (the result needs
#   glibc <= 2.30 here), so the zip also runs on provided.al2.
# plain mode (`cargo build --release` + zip): links against the host glibc; the script checks the
#   binary needs glibc <= 2.34 (Amazon Linux 2023) and zips with python3's zipfile (no zip tool).
#
# Both strip debug info (CARGO_PROFILE_RELEASE_STRIP=debuginfo) and keep symbols for backtraces.
# arm64 (Graviton) needs the aarch64-unknown-linux-gnu Rust target (`rustup target add ...`) and
# `cargo lambda build --arm64`; it is not available on the build machine this was written on.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
OUT_DIR="$TARGET_DIR/lambda/mem-function"
ZIP="$OUT_DIR/bootstrap.zip"
MODE="${MODE:-auto}"
MAX_GLIBC="${MAX_GLIBC:-2.34}"   # Amazon Linux 2023
export CARGO_PROFILE_RELEASE_STRIP="${CARGO_PROFILE_RELEASE_STRIP:-debuginfo}"
if [[ -d "$ROOT/.venv/bin" ]]; then
    export PATH="$PATH:$ROOT/.venv/bin"
fi
# cargo-lambda runs zig as `python3 -m ziglang` when there is no `zig` on PATH: make sure the
# python3 it finds is the one of the venv cargo-lambda was installed into.
if command -v cargo-lambda >/dev/null 2>&1; then
    CL_BIN="$(dirname "$(command -v cargo-lambda)")"
    if [[ -x "$CL_BIN/python3" ]]; then
        export PATH="$CL_BIN:$PATH"
    fi
fi

have_cargo_lambda() {
    command -v cargo-lambda >/dev/null 2>&1 || return 1
    command -v zig >/dev/null 2>&1 || python3 -c 'import ziglang' >/dev/null 2>&1
}

# Highest GLIBC_x.y symbol version the binary needs (empty if it cannot be told).
glibc_needed() {
    if command -v objdump >/dev/null 2>&1; then
        objdump -T "$1" | grep -o 'GLIBC_[0-9.]*' | sed 's/GLIBC_//' | sort -uV | tail -1
    fi
}

check_glibc() {
    local bin="$1" need
    need="$(glibc_needed "$bin")"
    if [[ -z "$need" ]]; then
        echo "package.sh: objdump not found, cannot check the glibc version of $bin" >&2
        return 0
    fi
    if [[ "$(printf '%s\n%s\n' "$need" "$MAX_GLIBC" | sort -V | tail -1)" != "$MAX_GLIBC" ]]; then
        echo "package.sh: $bin needs glibc $need > $MAX_GLIBC (provided.al2023); use MODE=cargo-lambda" >&2
        exit 1
    fi
    echo "package.sh: bootstrap needs glibc <= $need (limit $MAX_GLIBC)"
}

if [[ "$MODE" == auto ]]; then
    if have_cargo_lambda; then MODE=cargo-lambda; else MODE=plain; fi
fi

mkdir -p "$OUT_DIR"
case "$MODE" in
cargo-lambda)
    have_cargo_lambda || { echo "package.sh: needs cargo-lambda and zig: pip install --no-deps cargo-lambda ziglang" >&2; exit 1; }
    (cd "$ROOT/mem-function" && cargo lambda build --release --output-format zip --bin mem-function \
        --target x86_64-unknown-linux-gnu --lambda-dir "$TARGET_DIR/lambda")
    tmp="$(mktemp -d)"
    trap 'rm -rf "$tmp"' EXIT
    python3 -m zipfile -e "$ZIP" "$tmp"
    check_glibc "$tmp/bootstrap"
    ;;
plain)
    cargo build --release -p mem-function --bin mem-function --manifest-path "$ROOT/Cargo.toml"
    BIN="$TARGET_DIR/release/mem-function"
    check_glibc "$BIN"
    python3 - "$BIN" "$ZIP" <<'PY'
import sys, zipfile
src, out = sys.argv[1], sys.argv[2]
info = zipfile.ZipInfo("bootstrap")
info.external_attr = 0o100755 << 16   # regular file, rwxr-xr-x: Lambda executes it as is
info.create_system = 3                 # unix, so the mode bits are honoured
info.compress_type = zipfile.ZIP_DEFLATED
with open(src, "rb") as f, zipfile.ZipFile(out, "w") as z:
    z.writestr(info, f.read())
PY
    ;;
*)
    echo "package.sh: MODE must be auto, cargo-lambda or plain" >&2
    exit 1
    ;;
esac

python3 - "$ZIP" <<'PY'
import sys, zipfile
z = zipfile.ZipFile(sys.argv[1])
names = z.namelist()
assert names == ["bootstrap"], names
mode = z.getinfo("bootstrap").external_attr >> 16
assert mode & 0o111, oct(mode)
print(f"package.sh: {sys.argv[1]}: bootstrap {z.getinfo('bootstrap').file_size} bytes, mode {oct(mode & 0o777)}")
PY
echo "deploy: aws lambda create-function --function-name node-0 --runtime provided.al2023 --architectures x86_64 \\"
echo "          --handler bootstrap --zip-file fileb://$ZIP --memory-size 1536 --timeout 900 --role <role-arn> \\"
echo "          --environment 'Variables={MEMFN_SECRET=<secret>}'"
