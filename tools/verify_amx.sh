#!/usr/bin/env bash
# One command that verifies the matrix-unit (AMX) kernels on the machine it
# runs on, and prints one block to paste into docs/amx.md:
#
#   1. the C checks (tools/check_amx.sh): the tile emulation, the gate, the
#      tile GEMM and the matrix kernels through the C core, plain and under
#      ASan + UBSan; where the gate allows the tiles, the real tiles against
#      float64 and against the emulation, with the count of bit-equal
#      results;
#   2. the first-use self-test of the real tiles: the process's decision
#      (which must pass) and its cost, then canaries on the real tiles with an
#      injected mismatch and an injected SIGILL (which must fail, contained);
#   3. the Python suite's core and variant tests on the amx path, at 1 and at
#      2 threads;
#   4. the TDPBF16PS and TDPBSSD peak probes (fastattn._core.amx_peak()),
#      and benchmarks/test_bench_linear.py on the tiles (the linear layer's
#      bfloat16 and int8 products as a % of those peaks);
#   5. the side-by-side table against torch's bfloat16 SDPA and its float32
#      SDPA with fp32_precision="bf16" (benchmarks/test_bench_amx.py; only
#      where torch is installed).
#
# Steps 2-5 need the tiles.  On a CPU (or OS) without them the block says
# why, and the script exits 0 after step 1.  It exits non-zero when a check
# fails.
#
# The Python steps use $PYTHON (default: python3 on PATH) when it imports
# fastattn; otherwise the package is installed with its test extra into a
# fresh virtual environment first.  .ci/run's amx step runs this script in
# its package lane, where the README's venv is active, so every CI machine
# with AMX verifies the real tiles.
#   tools/verify_amx.sh
#   VERIFY_AMX_SIZES="1024 2048" tools/verify_amx.sh   # fewer table sizes
set -uo pipefail
# shellcheck source=tools/lib.sh
source "$(dirname "$0")/lib.sh"
cd "$ROOT" || exit 1

WORK="$(mktemp -d "${TMPDIR:-/tmp}/fastattn-verify-amx.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
BLOCK="$WORK/block"
FAILED=0
note() { echo "$*" >> "$BLOCK"; }

note "AMX verification, $(date -u +%F)"
note "- CPU: $(lscpu 2>/dev/null | sed -n 's/^Model name: *//p' | head -1); kernel $(uname -r); $(${CC:-gcc} --version | head -1)"
note "- fastattn: commit $(git rev-parse --short HEAD 2>/dev/null || echo '(not a checkout)')"

echo "== 1. C checks (tools/check_amx.sh)"
if bash tools/check_amx.sh 2>&1 | tee "$WORK/c.log"; then
    note "- C checks: passed"
else
    note "- C checks: FAILED (tools/check_amx.sh)"
    FAILED=1
fi
# the real-tile lines of the C tests (bit-equal counts, or why they did not run)
grep -E "^real |^real AMX|^  real |real tiles" "$WORK/c.log" | sort -u | sed 's/^ */  - /' >> "$BLOCK"

echo "== Python: fastattn for the remaining steps"
if ! "$PYTHON" -c "import fastattn" 2>/dev/null; then
    "$PYTHON" -m venv "$WORK/venv" || exit 1
    PYTHON="$WORK/venv/bin/python"
    "$PYTHON" -m pip install --quiet ".[test]" || exit 1
fi
"$PYTHON" - > "$WORK/gate" <<'EOF' || { note "- gate: FAILED (fastattn._core.amx_status())"; FAILED=1; }
from fastattn import _core
s = _core.amx_status()  # runs the gate and the self-test, as the first matrix-unit call would
flags = [k for k in ("amx_tile", "amx_bf16", "amx_fp16", "amx_int8") if s[k]]
t = _core.tile_self_test_status()
print(int(bool(s["available"])), t["state"].replace(" ", "_"))
print(f"- gate: {'tiles available' if s['available'] else 'no tiles: ' + s['reason']}; "
      f"CPU flags: {', '.join(flags) or 'none'}; permission: {s['permission']}")
EOF
read -r TILES SELF_TEST < <(head -1 "$WORK/gate")
sed -n '2p' "$WORK/gate" >> "$BLOCK"

if [[ "${SELF_TEST:-not_run}" != not_run ]]; then
    echo "== 2. the self-test of the real tiles"
    "$PYTHON" - >> "$BLOCK" <<'EOF' || { note "- self-test: FAILED"; FAILED=1; }
import sys
from fastattn import _core
_core.amx_status()  # the process's decision, on first use
t = _core.tile_self_test_status()
print(f"- self-test (first use): {t['state']} in {t['ms']:.1f} ms: {t['report']}")
bad = t["state"] != "passed"
if not bad:
    for inject in ("mismatch", "sigill"):
        r = _core.tile_self_test("amx", inject, timeout=10.0)
        print(f"  - injected {inject}: {'FAILED as it must' if not r['passed'] else 'PASSED (wrong)'}"
              f" ({r['ms']:.1f} ms): {r['report']}")
        bad |= r["passed"]
sys.exit(1 if bad else 0)
EOF
fi

if [[ "$TILES" != 1 ]]; then
    note "- suite on the amx path, TDPBF16PS peak, side-by-side table: not run (no tiles here)"
    [[ "${SELF_TEST:-not_run}" == failed ]] && FAILED=1
else
    for threads in 1 2; do
        echo "== 3. the suite on the amx path, $threads thread(s)"
        FASTATTN_ISA=amx FASTATTN_NUM_THREADS=$threads "$PYTHON" -m pytest -q -p no:randomly \
            tests/core tests/variants 2>&1 | tee "$WORK/suite$threads.log"
        status=${PIPESTATUS[0]}
        summary="$(grep -E '^[0-9]+ (passed|failed)|^=+ .*(passed|failed)' "$WORK/suite$threads.log" | tail -1)"
        note "- suite (tests/core, tests/variants) on amx, $threads thread(s): ${summary//=/}"
        [[ $status -eq 0 ]] || FAILED=1
    done
    echo "== 4. TDPBF16PS peak"
    "$PYTHON" -c "from fastattn import _core; print(f'- TDPBF16PS peak: {_core.amx_peak():.0f} GFLOP/s on one core')" \
        >> "$BLOCK" || { note "- TDPBF16PS peak: FAILED"; FAILED=1; }
    if "$PYTHON" -c "from fastattn import _core; assert _core.amx_status()['amx_int8']" 2>/dev/null; then
        "$PYTHON" -c "from fastattn import _core; print(f'- TDPBSSD peak: {_core.amx_peak(dtype=\"int8\"):.0f} GOP/s on one core')" \
            >> "$BLOCK" || { note "- TDPBSSD peak: FAILED"; FAILED=1; }
    else
        note "- TDPBSSD peak: not measured (cpuid reports no AMX-INT8)"
    fi
    echo "== 4b. the linear layer on the tiles (% of the TDPBF16PS / TDPBSSD peaks)"
    FASTATTN_ISA=amx "$PYTHON" benchmarks/test_bench_linear.py --rounds 5 > "$WORK/linear" \
        2> "$WORK/linear.err" || { note "- linear table: FAILED"; cat "$WORK/linear.err"; FAILED=1; }
    note ""
    cat "$WORK/linear" >> "$BLOCK"
    echo "== 5. side by side with torch"
    if "$PYTHON" -c "import torch" 2>/dev/null; then
        # shellcheck disable=SC2086
        FASTATTN_ISA=amx "$PYTHON" benchmarks/test_bench_amx.py \
            --sizes ${VERIFY_AMX_SIZES:-1024 2048 4096} > "$WORK/table" 2> "$WORK/table.err" \
            || { note "- side-by-side table: FAILED"; cat "$WORK/table.err"; FAILED=1; }
        note ""
        cat "$WORK/table" >> "$BLOCK"
    else
        note "- side-by-side table: not run (torch is not installed: pip install torch==2.13.0)"
    fi
fi

echo
echo "---- paste into docs/amx.md ----"
cat "$BLOCK"
echo "---- end ----"
exit "$FAILED"
