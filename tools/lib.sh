# tools/lib.sh: shared by the check scripts in tools/ (source it, don't run it).

# copy_clean_sources ROOT DEST: copy the source tree at ROOT to DEST without
# version control, build products or virtual environments, so a build in
# DEST can never reuse objects compiled with other flags.
copy_clean_sources() {
    mkdir -p "$2"
    tar -C "$1" -cf - \
        --exclude=./.git --exclude=./build --exclude=./dist --exclude='*.egg-info' \
        --exclude='__pycache__' --exclude='*.so' --exclude='*.pyd' --exclude='*.o' \
        --exclude=./src/fastattn/_core.c --exclude=./.ci-venv --exclude=./.venv \
        --exclude=./venv --exclude=./.hypothesis --exclude=./.pytest_cache \
        --exclude=./.benchmarks \
        . | tar -C "$2" -xf -
}

# setup_workdir NAME [DIR]: WORK becomes DIR (created and kept) or a fresh
# temporary directory that is removed when the script exits (KEEP=1 keeps it).
setup_workdir() {
    if [[ -n "${2:-}" ]]; then
        WORK="$2"
        mkdir -p "$WORK"
        KEEP=1
    else
        WORK="$(mktemp -d "${TMPDIR:-/tmp}/fastattn-$1.XXXXXX")"
    fi
    trap _cleanup_workdir EXIT
}

_cleanup_workdir() {
    if [[ -n "${KEEP:-}" ]]; then echo "== kept $WORK"; else rm -rf "$WORK"; fi
}

# prepare_build_dir REUSE: sets VPY to the venv's python in $WORK.  With
# REUSE non-empty and a venv already there, only clears $WORK/logs and
# returns 1 (nothing to build).  Otherwise copies clean sources from $ROOT to
# $WORK/src, makes a fresh venv with $PYTHON and returns 0 (build it now).
prepare_build_dir() {
    VPY="$WORK/venv/bin/python"
    if [[ -n "${1:-}" && -x "$VPY" ]]; then
        echo "== reusing the build in $WORK"
        rm -rf "$WORK/logs"
        mkdir -p "$WORK/logs"
        return 1
    fi
    echo "== copying sources from $ROOT to $WORK/src"
    rm -rf "$WORK/src" "$WORK/venv" "$WORK/logs"
    mkdir -p "$WORK/src" "$WORK/logs"
    copy_clean_sources "$ROOT" "$WORK/src"
    echo "== creating a virtual environment with $PYTHON"
    "$PYTHON" -m venv "$WORK/venv"
    return 0
}
