#!/usr/bin/env bash
# Run a representative subset of the test suite under Valgrind's memcheck.
#
#   tools/valgrind.sh                      # the built-in selection (below)
#   tools/valgrind.sh tests/robustness/test_edges.py   # other pytest arguments instead
#   PYTHON=python3.12 tools/valgrind.sh
#   FASTATTN_VALGRIND_DIR=/tmp/vg tools/valgrind.sh   # work in (and keep) this dir
#   KEEP=1 tools/valgrind.sh               # keep the temporary directory
#   FASTATTN_VALGRIND_DIR=/tmp/vg FASTATTN_VALGRIND_REUSE=1 tools/valgrind.sh
#                                          # rerun with the build (and tests) of a previous run
#
# fastattn is built as users get it (-O3, with Python's -g: the reports name
# source lines), so memcheck checks the code that ships; under CI's object
# cache that build is the readme step's, reused.  It goes into a virtual
# environment of its own, from a copy of the sources (without build/,
# compiled modules or generated C); the working tree is not modified.  Then
#
#   valgrind --tool=memcheck --error-exitcode=99 --leak-check=full
#            --errors-for-leak-kinds=definite python -m pytest <selection>
#
# runs with PYTHONMALLOC=malloc (so that memcheck sees every allocation of
# the interpreter), OMP_NUM_THREADS=2 and OMP_WAIT_POLICY=passive (idle
# OpenMP threads sleep instead of spinning, which under Valgrind's
# serialized threads would only burn time).  Invalid reads and writes, use
# of uninitialised values, bad frees and definite leaks are errors; the
# script fails (non-zero) on any of them, and on any failed test.
#
# Valgrind does not emulate AVX-512: under it the CPU appears to have AVX2
# at most, so the AVX-512 kernels are not run here (tools/sanitize.sh runs
# them): _core does not list that path, so no test forces it.
#
# The bad-argument table (tests/robustness/test_bad_inputs.py) runs its
# rows in child interpreters, which memcheck does not follow; here they run
# in the pytest process instead (FASTATTN_TEST_ROWS_IN_PROCESS=1).
#
# On Debian, as root, valgrind is installed with apt-get when it is missing.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

cd "$ROOT"

# The selection: about 60 fast tests covering plain, causal (all three
# alignments), boolean / additive masks and their broadcasting, GQA / MQA,
# head and value dimensions, float64, every input layout (Fortran,
# transposed, negative strides, strided, unaligned, broadcast), the decode
# path that splits the keys and merges the partial results, out=, empty
# (and the variants: window, 16-bit, packed batches, KV cache, soft cap,
# kv_lengths, weights, merge),
# and fully masked inputs, NaNs, forced ISA paths, and argument errors.
SELECTION=(
    "tests/variants/test_window.py::test_window_matches_reference_and_band_mask[w3_0-9x9-causal]"
    "tests/variants/test_window.py::test_window_zero_sizes"
    "tests/variants/test_half.py::test_layouts[transposed-bf16]"
    "tests/variants/test_varlen.py::test_varlen_matches_reference[mixed-local]"
    "tests/layer/test_kvcache.py::test_token_by_token_decode_equals_one_full_causal_call[2-2]"
    "tests/variants/test_alibi_softcap.py::test_softcap_with_minus_inf_masks[bool]"
    "tests/variants/test_kv_lengths.py::test_kv_lengths_equal_sliced_keys[all-mixed-nq1]"
    "tests/variants/test_weights_merge.py::test_weights_match_reference[all-1-17-f64]"
    "tests/variants/test_weights_merge.py::test_merge_of_chunks_equals_the_whole[39-1-f64]"
    "tests/core/test_self_test.py::test_a_canary_passes[vector]"
    "tests/core/test_attention.py::test_sequence_lengths[f32-nq1-nk1]"
    "tests/core/test_attention.py::test_sequence_lengths[f32-nq65-nk63]"
    "tests/core/test_attention.py::test_sequence_lengths[f32-nq7-nk513]"
    "tests/core/test_attention.py::test_sequence_lengths[f64-nq129-nk33]"
    "tests/core/test_attention.py::test_causal[true-nq17-nk33]"
    "tests/core/test_attention.py::test_causal[bottom_right-nq130-nk65]"
    "tests/core/test_attention.py::test_causal[top_left-nq65-nk130]"
    "tests/core/test_attention.py::test_head_dims[f32-d1]"
    "tests/core/test_attention.py::test_head_dims[f32-d80]"
    "tests/core/test_attention.py::test_head_dims[f64-d256]"
    "tests/core/test_attention.py::test_value_dim_differs[d17-dv3]"
    "tests/core/test_attention.py::test_value_dim_differs[d3-dv129]"
    "tests/core/test_attention.py::test_mask_kinds[f32-bool]"
    "tests/core/test_attention.py::test_mask_kinds[f32-add32]"
    "tests/core/test_attention.py::test_mask_kinds[f64-add64]"
    "tests/core/test_attention.py::test_mask_broadcast_shapes[bool-1x3x37x1]"
    "tests/core/test_attention.py::test_mask_broadcast_shapes[add32-2x1x1x70]"
    "tests/core/test_attention.py::test_causal_with_mask[nq>nk-top_left-add64]"
    "tests/core/test_attention.py::test_gqa[3d-h8-hkv2]"
    "tests/core/test_attention.py::test_gqa[4d-h12-hkv4]"
    "tests/core/test_attention.py::test_gqa_with_per_head_mask[bool]"
    "tests/core/test_attention.py::test_mqa_float64"
    "tests/core/test_attention.py::test_decode_long_keys[f32-False-nq4-nk2049-4d-hkv2]"
    "tests/core/test_attention.py::test_decode_long_keys[f32-bottom_right-nq65-nk1100-2d-hkvNone]"
    "tests/core/test_attention.py::test_decode_long_keys[f64-top_left-nq2-nk3000-3d-hkv3]"
    "tests/core/test_attention.py::test_decode_long_keys_masked[f32-add32]"
    "tests/core/test_attention.py::test_decode_long_keys_strided"
    "tests/core/test_attention.py::test_inputs_not_modified[add32]"
    "tests/core/test_layouts.py::test_all_inputs_in_layout[4d-fortran]"
    "tests/core/test_layouts.py::test_all_inputs_in_layout[4d-transposed]"
    "tests/core/test_layouts.py::test_all_inputs_in_layout[3d-negative]"
    "tests/core/test_layouts.py::test_all_inputs_in_layout[4d-strided]"
    "tests/core/test_layouts.py::test_all_inputs_in_layout[2d-unaligned]"
    "tests/core/test_layouts.py::test_all_inputs_in_layout[4d-broadcast_cols]"
    "tests/core/test_layouts.py::test_one_input_in_layout[f64-k-unaligned]"
    "tests/core/test_layouts.py::test_one_input_in_layout[f32-v-negative]"
    "tests/core/test_layouts.py::test_gqa_inputs_in_layout[strided]"
    "tests/core/test_layouts.py::test_decode_inputs_in_layout[nk2100-negative]"
    "tests/core/test_layouts.py::test_decode_inputs_in_layout[nk2100-unaligned]"
    "tests/core/test_layouts.py::test_mask_in_layout[bool-negative]"
    "tests/core/test_layouts.py::test_mask_in_layout[add32-broadcast_rows]"
    "tests/core/test_layouts.py::test_unaligned_float_mask"
    "tests/core/test_layouts.py::test_out_is_filled_and_returned[f64-4d]"
    "tests/core/test_layouts.py::test_out_with_lse"
    "tests/robustness/test_edges.py::test_no_keys[True-f32-4d]"
    "tests/robustness/test_edges.py::test_no_keys_with_mask_and_gqa"
    "tests/robustness/test_edges.py::test_no_queries[f64-3d]"
    "tests/robustness/test_edges.py::test_zero_head_dim[top_left-f32]"
    "tests/robustness/test_edges.py::test_zero_batch_with_out"
    "tests/robustness/test_edges.py::test_fully_masked_rows[add32-f32]"
    "tests/robustness/test_edges.py::test_split_keys_nan_in_one_chunk[700-f32]"
    "tests/robustness/test_edges.py::test_nan_in_query_row[40-f64]"
    "tests/core/test_isa.py::test_forced_isa_matches_reference"
    "tests/robustness/test_bad_inputs.py::test_bad_input[q_5d]"
    "tests/robustness/test_bad_inputs.py::test_bad_input[errors::kv_heads_not_divisor]"
    "tests/robustness/test_bad_inputs.py::test_bad_input[errors::mask_wrong_heads]"
    "tests/robustness/test_bad_inputs.py::test_bad_input[scale_nan]"
    "tests/robustness/test_bad_inputs.py::test_bad_input[errors::out_overlaps_k]"
    "tests/robustness/test_bad_inputs.py::test_bad_input[errors::out_overlaps_q]"
    "tests/robustness/test_bad_inputs.py::test_bad_input[k_head_dim_message_gives_sizes]"
)

if ! command -v valgrind >/dev/null 2>&1; then
    if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
        echo "== installing valgrind"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq valgrind
    else
        echo "error: valgrind is not installed (Debian: apt-get install valgrind)" >&2
        exit 2
    fi
fi

setup_workdir valgrind "${FASTATTN_VALGRIND_DIR:-}"

start=$SECONDS
if prepare_build_dir "${FASTATTN_VALGRIND_REUSE:-}"; then
    echo "== building (release flags)"
    "$VPY" -m pip install --no-cache-dir --quiet "$WORK/src[test]"
fi

if [[ $# -eq 0 ]]; then set -- "${SELECTION[@]}"; fi
LOGS="$WORK/logs"
SUPP="$ROOT/tools/valgrind-python.supp"
echo "== running pytest under valgrind ($(valgrind --version)), $# arguments"
cd "$WORK/src"
OUT="$WORK/pytest.log"
set +e
PYTHONMALLOC=malloc OMP_NUM_THREADS=2 OMP_WAIT_POLICY=passive \
OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1 PYTHONPATH= FASTATTN_TEST_ROWS_IN_PROCESS=1 \
    valgrind --tool=memcheck --error-exitcode=99 \
        --leak-check=full --show-leak-kinds=definite --errors-for-leak-kinds=definite \
        --track-origins=yes --num-callers=40 --suppressions="$SUPP" \
        --log-file="$LOGS/memcheck.%p.log" \
        "$VPY" -m pytest -p no:cacheprovider -q -ra "$@" 2>&1 | tee "$OUT"
status=${PIPESTATUS[0]}
set -e

# One log per process (pytest's and any subprocess'); print those with errors.
errors=0
shopt -s nullglob
for f in "$LOGS"/memcheck.*.log; do
    n=$(sed -n 's/.*ERROR SUMMARY: \([0-9]*\) errors.*/\1/p' "$f" | tail -1)
    if [[ -z "$n" ]]; then
        # No summary: a forked child that exec'd another program (memcheck
        # stops following it there), unless it reported something first.
        if grep -qE '^==[0-9]+== (Invalid|Conditional|Use of uninit|Syscall param|Mismatched|Source and destination|Process terminating|Argument|Jump to)' "$f"; then
            echo "== memcheck report $f (no ERROR SUMMARY: the process died?)"
            cat "$f"
            n=1
        else
            n=0
        fi
    elif [[ "$n" -ne 0 ]]; then
        echo "== memcheck report $f"
        cat "$f"
    fi
    errors=$((errors + n))
done
logs=("$LOGS"/memcheck.*.log)
if [[ ${#logs[@]} -eq 0 ]]; then
    echo "== no memcheck log was written"
    errors=$((errors + 1))
fi

finish_run valgrind "$status" "$errors" errors
