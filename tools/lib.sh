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

# accepted_flags FLAG...: the flags that $CC accepts (as setup.py does: a
# compiler without -mamx-tile -mamx-bf16 builds kernel_amx.c as an empty
# table).
accepted_flags() {
    local f
    for f in "$@"; do
        echo 'int x;' | "$CC" "$f" -x c -c - -o /dev/null 2>/dev/null && printf '%s ' "$f"
    done
    return 0
}

# kernel_objects OUT TAG CFLAGS...: one object per row of csrc/isa_flags.txt
# built for $CC's target ("any" or a prefix of the target triple), with the
# row's flags added to CFLAGS: the table setup.py reads too.  The files
# compile side by side (each takes tens of seconds); KERNEL_OBJS lists the
# objects.  Fails when any compile fails.
kernel_objects() {
    local out="$1" tag="$2" arch isa arches rowflags a match pid
    shift 2
    arch="$("$CC" -dumpmachine)"
    local pids=()
    KERNEL_OBJS=()
    while read -r isa arches rowflags; do
        match=0
        for a in ${arches//,/ }; do [[ "$a" == any || "$arch" == "$a"* ]] && match=1; done
        [[ "$match" == 1 ]] || continue
        [[ "$rowflags" == "-" ]] && rowflags=""
        # shellcheck disable=SC2086
        rowflags="$(accepted_flags $rowflags)"
        # shellcheck disable=SC2086
        "$CC" "$@" $rowflags -Icsrc -c "csrc/kernels/kernel_$isa.c" -o "$out/k_${isa}_$tag.o" &
        pids+=($!)
        KERNEL_OBJS+=("$out/k_${isa}_$tag.o")
    done < <(sed -e 's/#.*//' csrc/isa_flags.txt | awk 'NF')
    for pid in "${pids[@]}"; do wait "$pid" || return 1; done
}
