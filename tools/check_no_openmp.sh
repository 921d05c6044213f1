#!/usr/bin/env bash
# Build fastattn without OpenMP (FASTATTN_NO_OPENMP=1) in a throwaway
# virtual environment and check that the serial build works:
#
#   * fastattn.info()['openmp'] is False and the build flags have no -fopenmp;
#   * get_num_threads() is 1, also after set_num_threads(4);
#   * attention matches the NumPy reference (the tolerance rule of
#     tests/support) on a few shapes, on every ISA path.
#
# Too slow for the default test suite (a full build, and pip fetches the
# build requirements from the package index).  Usage:
#
#   tools/check_no_openmp.sh            # uses python3
#   PYTHON=python3.12 tools/check_no_openmp.sh
#   KEEP=1 tools/check_no_openmp.sh     # keep the temporary directory
#
# The sources are copied (without build/, compiled modules or generated C)
# so that the build cannot reuse objects compiled with OpenMP in the working
# tree, and the working tree is left untouched.

set -euo pipefail
source "$(dirname "$0")/lib.sh"

WORK="$(mktemp -d "${TMPDIR:-/tmp}/fastattn-no-openmp.XXXXXX")"
cleanup() {
    if [[ -n "${KEEP:-}" ]]; then
        echo "kept $WORK"
    else
        rm -rf "$WORK"
    fi
}
trap cleanup EXIT

echo "== copying sources from $ROOT"
copy_clean_sources "$ROOT" "$WORK/src"

echo "== creating a virtual environment with $PYTHON"
"$PYTHON" -m venv "$WORK/venv"
VPY="$WORK/venv/bin/python"
"$VPY" -m pip install --quiet --upgrade pip
# The light test extra: the thread tests below run under pytest.
"$VPY" -m pip install --quiet pytest hypothesis ml_dtypes matplotlib threadpoolctl

echo "== building and installing with FASTATTN_NO_OPENMP=1"
FASTATTN_NO_OPENMP=1 "$VPY" -m pip install --no-cache-dir -v "$WORK/src" > "$WORK/build.log" 2>&1 \
    || { tail -50 "$WORK/build.log"; exit 1; }
# The build must say loudly that it is serial.
grep -q "building the SERIAL core" "$WORK/build.log" \
    || { echo "FAIL: no serial-build warning in the build output" >&2; exit 1; }
grep -m1 -B1 -A1 "building the SERIAL core" "$WORK/build.log"

echo "== checking the installed build"
# Run from the temporary directory so that the installed package, not the
# sources, is imported.
cd "$WORK"
"$VPY" - "$WORK/src/tests" <<'EOF'
import os
import sys

sys.path.insert(0, sys.argv[1])

import numpy as np

import fastattn
from fastattn import _core
from support import check_attention, make_mask, make_qkv

info = fastattn.info()
print("installed from", os.path.dirname(fastattn.__file__))
print("build flags:", info["build_flags"])
assert os.path.realpath(fastattn.__file__).startswith(os.path.realpath(sys.prefix)), \
    "imported fastattn is not the one installed in the temporary venv"
assert info["openmp"] is False, f"info()['openmp'] is {info['openmp']!r}"
assert "-fopenmp" not in info["build_flags"], info["build_flags"]
assert fastattn.get_num_threads() == 1, fastattn.get_num_threads()
assert info["num_threads"] == 1, info["num_threads"]
fastattn.set_num_threads(4)
assert fastattn.get_num_threads() == 1, \
    f"after set_num_threads(4): get_num_threads() = {fastattn.get_num_threads()}"

rng = np.random.default_rng(0)
for isa in _core.isa_available():
    _core.set_isa(isa)
    for dtype in (np.float32, np.float64):
        q, k, v = make_qkv(rng, (2, 3), 130, 200, 64, dtype=dtype)
        check_attention(q, k, v)
        check_attention(q, k, v, causal=True)
        check_attention(q, k, v, causal="top_left",
                        mask=make_mask(rng, "bool", (1, 3, 130, 200)))
        check_attention(q, k, v, mask=make_mask(rng, "add32", (130, 200)))
        # GQA, and decoding (few query rows, long keys: split along keys)
        q, k, v = make_qkv(rng, (1, 8), 70, 90, 32, dv=16, hkv=2, dtype=dtype)
        check_attention(q, k, v, causal=True)
        q, k, v = make_qkv(rng, (1, 8), 1, 3000, 64, hkv=2, dtype=dtype)
        check_attention(q, k, v)
        check_attention(q, k, v, mask=make_mask(rng, "add32", (1, 8, 1, 3000), 0.3))
        # out= and a row that sees no key
        q, k, v = make_qkv(rng, (), 40, 30, 8, dtype=dtype)
        out = np.empty((40, 8), dtype)
        assert fastattn.attention(q, k, v, causal=True, out=out) is out
        assert (out[:10] == 0).all()
    print(f"  {isa}: ok")
print("no-OpenMP build OK")
EOF

echo "== the thread and runtime-report tests on the serial build"
cp -r "$WORK/src/tests" "$WORK/tests"
"$VPY" -m pytest -q -p no:cacheprovider -k "thread or config" "$WORK/tests"
