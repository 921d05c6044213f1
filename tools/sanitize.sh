#!/usr/bin/env bash
# Build fastattn with AddressSanitizer, LeakSanitizer and
# UndefinedBehaviorSanitizer and run the test suite under them.
#
#   tools/sanitize.sh                     # whole suite (tests/), python3
#   tools/sanitize.sh tests/robustness/test_edges.py  # other pytest arguments
#   PYTHON=python3.12 tools/sanitize.sh
#   FASTATTN_SANITIZE_DIR=/tmp/san tools/sanitize.sh   # work in (and keep) this dir
#   KEEP=1 tools/sanitize.sh              # keep the temporary directory
#   FASTATTN_SANITIZE_DIR=/tmp/san FASTATTN_SANITIZE_REUSE=1 tools/sanitize.sh tests/robustness/test_edges.py
#                                         # rerun with the build (and tests) of a previous run
#
# The extension (Cython module, driver and every ISA kernel) is compiled with
# FASTATTN_DEBUG=1 (-O1 -g -fno-omit-frame-pointer) and
#   -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined -fno-wrapv
# in a virtual environment of its own, from a copy of the sources (without
# build/, compiled modules or generated C, so that no object built without
# sanitizers is reused).  The working tree is not modified.
#
# Python itself is not instrumented, so the ASan runtime is preloaded
# (LD_PRELOAD) and PYTHONMALLOC=malloc routes Python's allocations through
# it.  Leaks are checked at exit (also in the subprocesses some tests start);
# tools/lsan.supp suppresses leaks of the interpreter only.
#
# Exits non-zero if a test fails or if any sanitizer reports anything: the
# first report ends the process (halt_on_error, -fno-sanitize-recover).
# ASan and LSan write their reports to files (log_path), printed at the end;
# UBSan writes to stderr, which pytest leaves alone (--capture=sys).  The
# output is also searched for report headers.  Subprocesses started by the
# tests inherit all of this.
#
# Notes.  -fno-wrapv undoes the -fwrapv of Python's CFLAGS, so that signed
# overflow is reported.  OpenMP: libgomp is not instrumented, which is fine
# for ASan (its threads' allocations go through the interposed malloc); no
# report from libgomp has been seen.  LSan suppressions name CPython
# allocation functions only (see tools/lsan.supp): a leak of memory that
# fastattn's C core allocates is always reported, but a Python object leaked
# by a missing Py_DECREF in _core.pyx is indistinguishable from the
# interpreter's own objects that live until exit, and is not.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

cd "$ROOT"
CC="${CC:-gcc}"

setup_workdir sanitize "${FASTATTN_SANITIZE_DIR:-}"

start=$SECONDS
# -fno-wrapv: Python's own CFLAGS (which setuptools passes first) usually
# have -fwrapv, which makes signed overflow defined and so switches off
# UBSan's signed-integer-overflow check.  The C core is also built without
# Python (csrc/test, tools/check_c_core.sh), where overflow is undefined.
SAN_FLAGS="-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined -fno-wrapv"

# The ASan runtime of the compiler that builds the extension.
LIBASAN="$("$CC" -print-file-name=libasan.so)"
if [[ "$LIBASAN" != /* || ! -e "$LIBASAN" ]]; then
    echo "error: $CC has no libasan.so (Debian: apt-get install libasan8 or gcc)" >&2
    exit 2
fi
LIBASAN="$(readlink -f "$LIBASAN")"

if prepare_build_dir "${FASTATTN_SANITIZE_REUSE:-}"; then
    echo "== building with FASTATTN_DEBUG=1 and $SAN_FLAGS"
    # Build isolation stays on (pip fetches the build requirements); the
    # FASTATTN_* variables reach the isolated build.
    FASTATTN_DEBUG=1 \
    FASTATTN_EXTRA_CFLAGS="$SAN_FLAGS" \
    FASTATTN_EXTRA_LDFLAGS="-fsanitize=address,undefined" \
        "$VPY" -m pip install --no-cache-dir --quiet "$WORK/src[test]"
    # matplotlib's pybind11 extensions (not instrumented) abort inside ASan's
    # __cxa_throw interceptor the first time they raise; the tests that use
    # matplotlib skip under the preloaded runtime anyway, so it is removed
    # here, where nothing can load it by accident (an order-dependent abort
    # was seen once).
    "$VPY" -m pip uninstall --yes --quiet matplotlib
fi

# Check that the module that will be imported is the instrumented one.
"$VPY" - <<'EOF'
import os, subprocess, sysconfig
site = sysconfig.get_paths()["platlib"]
so = [f for f in os.listdir(os.path.join(site, "fastattn"))
      if f.startswith("_core.") and f.endswith(".so")]
assert so, "fastattn._core not installed"
deps = subprocess.run(["ldd", os.path.join(site, "fastattn", so[0])],
                      capture_output=True, text=True).stdout
assert "libasan" in deps, "the installed extension is not linked with libasan:\n" + deps
print("   ", so[0], "links", ", ".join(sorted({l.split()[0] for l in deps.splitlines()
                                                if "san" in l})))
EOF

SUPP="$ROOT/tools/lsan.supp"
LOGS="$WORK/logs"
# halt_on_error + exitcode: the first report ends the process with status 86
# (fatal even when pytest would otherwise go on).  allocator_may_return_null:
# a huge allocation makes malloc return NULL, as without ASan, so the core's
# own out-of-memory handling is what gets tested.  handle_segv=0: a SIGSEGV
# stays a SIGSEGV (tests/robustness/test_guard_pages.py provokes one on purpose in a
# subprocess and expects the signal); a real one still fails the run.
export ASAN_OPTIONS="handle_segv=0:detect_leaks=1:halt_on_error=1:exitcode=86:abort_on_error=0:allocator_may_return_null=1:detect_stack_use_after_return=1:check_initialization_order=1:strict_init_order=1:detect_odr_violation=0:print_summary=1:log_path=$LOGS/asan"
export LSAN_OPTIONS="suppressions=$SUPP:print_suppressions=0:exitcode=86"
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1:print_summary=1:exitcode=87"
export PYTHONMALLOC=malloc
export PYTHONFAULTHANDLER=1
# Any installed copy, never the sources in the copy's src/.
unset PYTHONPATH

# The whole suite, less tests that bound the growth of the RSS over many
# calls: ASan's quarantine keeps freed memory for a while (that is how it
# sees use after free), so the RSS grows under it without any leak; LSan
# checks those processes for leaks instead.
if [[ $# -eq 0 ]]; then set -- tests; fi
echo "== running pytest $* under ASan+UBSan (LD_PRELOAD=$LIBASAN)"
cd "$WORK/src"
OUT="$WORK/pytest.log"
set +e
# --capture=sys: pytest captures Python's sys.stdout/stderr only, so what the
# runtimes print straight to file descriptor 2 reaches the log even when the
# process dies in the middle of a test.
# The tile emulation's path runs its matrix kernels under ASan+UBSan in
# tools/check_amx.sh; here it would multiply the harness's time.
FASTATTN_TEST_SKIP_PATHS="${FASTATTN_TEST_SKIP_PATHS-amx_emu}" \
LD_PRELOAD="$LIBASAN" "$VPY" -m pytest -p no:cacheprovider --capture=sys -q -ra "$@" 2>&1 | tee "$OUT"
test_status=${PIPESTATUS[0]}
set -e

# Reports: files written by the runtimes, plus any header in the output.
pattern='ERROR: AddressSanitizer|runtime error:|LeakSanitizer|AddressSanitizer:DEADLYSIGNAL'
shopt -s nullglob
report_files=("$LOGS"/*)
reports=0
for f in "${report_files[@]}"; do
    echo "== sanitizer report $f"
    cat "$f"
    n=$(grep -cE "$pattern" "$f" || true)
    reports=$((reports + (n > 0 ? n : 1)))
done
n=$(grep -cE "$pattern" "$OUT" || true)
reports=$((reports + n))

finish_run sanitizers "$test_status" "$reports" reports
