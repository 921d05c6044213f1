# tools/lib.sh: shared by the check scripts in tools/ (source it, don't run it).

# The checkout (this file's parent folder) and the interpreter to build with.
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"

# finish_run TOOL STATUS FINDINGS NOUN: the last line of a pytest run under
# a checking tool (the passed and failed counts read from its log $OUT, the
# time from $start) and the script's exit: 0 only when pytest passed
# (STATUS 0) and the tool found nothing.
finish_run() {
    local tool="$1" status="$2" findings="$3" noun="$4" passed failed elapsed
    passed=$(grep -oE '[0-9]+ passed' "$OUT" | tail -1 | grep -oE '[0-9]+' || echo 0)
    failed=$(grep -oE '[0-9]+ (failed|errors?)' "$OUT" | tail -1 | grep -oE '[0-9]+' || echo 0)
    elapsed=$((SECONDS - start))
    if [[ $status -eq 0 && $findings -eq 0 ]]; then
        echo "$tool: $passed passed, 0 $noun ($elapsed s)"
        exit 0
    fi
    echo "$tool: $passed passed, $failed failed, $findings $noun, pytest exit $status ($elapsed s)"
    exit 1
}

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

# The flags of the C core's test builds (tools/check_c_core.sh and
# tools/check_amx.sh), one list so that their kernel objects are one set.
C_CORE_FLAGS=(-std=gnu11 -fno-math-errno -ffp-contract=fast -Wall -Wextra -Werror
              -Wno-unused-function -Wno-missing-field-initializers)

# cached_compile OBJECT SOURCE ARGS...: $CC ARGS -c SOURCE -o OBJECT, the
# object reused from FASTATTN_BUILD_CACHE (a folder; unset: no cache) when
# the same compiler compiled the same preprocessed source with the same
# arguments before, by the rule of setup.py's ObjectCache (the key: the
# compiler's version, the arguments but the -I folders, and the source
# preprocessed without line markers).
cached_compile() {
    local obj="$1" src="$2" key stored
    shift 2
    if [[ -z "${FASTATTN_BUILD_CACHE:-}" ]]; then
        "$CC" "$@" -c "$src" -o "$obj"
        return
    fi
    mkdir -p "$FASTATTN_BUILD_CACHE"
    local kept=() incs=() a
    for a in "$@"; do
        if [[ "$a" == -I* ]]; then incs+=("$a"); else kept+=("$a"); fi
    done
    key="$({ "$CC" --version; printf '%s\0' "$CC" "${kept[@]}"; \
             "$CC" "${kept[@]}" -E -P "$src" "${incs[@]}"; } | sha256sum | cut -d' ' -f1)" \
        || { "$CC" "$@" -c "$src" -o "$obj"; return; }
    stored="$FASTATTN_BUILD_CACHE/sh-$key.o"
    if [[ -f "$stored" ]]; then
        cp "$stored" "$obj"
        echo "   reused $stored for $src"
        return 0
    fi
    "$CC" "$@" -c "$src" -o "$obj" || return
    cp "$obj" "$stored.$$.$BASHPID" && mv -f "$stored.$$.$BASHPID" "$stored"
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
        cached_compile "$out/k_${isa}_$tag.o" "csrc/kernels/kernel_$isa.c" "$@" $rowflags -Icsrc &
        pids+=($!)
        KERNEL_OBJS+=("$out/k_${isa}_$tag.o")
    done < <(sed -e 's/#.*//' csrc/isa_flags.txt | awk 'NF')
    for pid in "${pids[@]}"; do wait "$pid" || return 1; done
}
