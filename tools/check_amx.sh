#!/usr/bin/env bash
# Build and run the AMX tests: csrc/amx/test_amx.c (the tile emulation, the
# runtime gate and the tile GEMM of matrix.h) and csrc/test/test_matrix.c (the
# matrix-unit attention kernels through the C core), twice -- an
# optimized build with -Wall -Wextra -Werror, then an AddressSanitizer +
# UndefinedBehaviorSanitizer build.  The real-instruction file is compiled
# with -mamx-tile -mamx-bf16 where the target is x86-64 (its code runs only
# where the CPU and kernel allow AMX; elsewhere the test says why it did not
# run).  Exits non-zero on any build or test failure.
#   CC=clang tools/check_amx.sh
[ -n "${BASH_VERSION:-}" ] || exec bash "$0" "$@"  # (also when started as `sh check_amx.sh`)
set -euo pipefail
cd "$(dirname "$0")/.."
CC="${CC:-gcc}"
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
arch="$("$CC" -dumpmachine)"
src=(csrc/amx/test_amx.c csrc/amx/amx_emu.c csrc/amx/amx_gate.c)
# A row's flags that this compiler accepts (as setup.py: without -mamx-tile
# -mamx-bf16 only the stubs and an empty table of kernel_amx.c remain).
# shellcheck source=tools/lib.sh
source tools/lib.sh
real_flags=()
case "$arch" in
  # shellcheck disable=SC2207
  x86_64*) real_flags=($(accepted_flags -mamx-tile -mamx-bf16)) ;;
esac
[[ ${#real_flags[@]} -eq 2 ]] || real_flags=()

build_and_run() {  # NAME FLAGS...
  local name="$1"; shift
  echo "== $name ($arch)"
  "$CC" -std=gnu11 -Wall -Wextra -Werror "$@" "${real_flags[@]}" \
    -c csrc/amx/amx_gemm_real.c -o "$out/real_$name.o"
  "$CC" -std=gnu11 -Wall -Wextra -Werror -pthread "$@" "${src[@]}" "$out/real_$name.o" \
    -Icsrc/amx -o "$out/test_amx_$name" -lm
  "$out/test_amx_$name"
}

# The matrix-unit kernel family through the whole C core (csrc/test/
# test_matrix.c): every kernel file of csrc/isa_flags.txt for this target
# with its own flags, the driver, the registry and the gate.
core_flags=("${C_CORE_FLAGS[@]}")
matrix_build_and_run() {  # NAME FLAGS...
  local name="$1"; shift
  kernel_objects "$out" "$name" "${core_flags[@]}" "$@"
  echo "== matrix kernels, $name ($arch)"
  "$CC" "${core_flags[@]}" "$@" -fopenmp csrc/test/test_matrix.c csrc/attention.c \
    csrc/dispatch.c csrc/amx/amx_gate.c csrc/amx/amx_emu.c csrc/amx/tile_canary.c "${KERNEL_OBJS[@]}" -Icsrc \
    -o "$out/test_matrix_$name" -lm
  "$out/test_matrix_$name"
}

# LDTILECFG reads a 64-byte configuration: in the optimized real-tile
# objects at least two stores (rows, colsb) must come after the last call
# (fa_amx_cfg_init) and before each ldtilecfg; a compiler that saw only part
# of the operand deletes them, and every tile would have 0 rows.
check_ldtilecfg() {  # OBJECT
  objdump -d --no-show-raw-insn "$1" | awk -v obj="$1" '
    /^[0-9a-f]+ <.*>:$/ { stores = 0; fn = $2; next }
    /\tcall / { stores = 0; next }
    /\tv?mov[a-z0-9]* .*,(-?0x[0-9a-f]+)?\(%r[a-z0-9]+\)$/ { stores++ }
    /\tldtilecfg / { n++; if (stores < 2) { bad++; print obj ": " fn " ldtilecfg without the config stores before it" } }
    END { if (!n) { print obj ": no ldtilecfg"; exit 1 } exit bad > 0 }'
}

build_and_run release -O2
matrix_build_and_run release -O2
if [[ ${#real_flags[@]} -gt 0 ]] && command -v objdump >/dev/null; then
  check_ldtilecfg "$out/real_release.o"
  check_ldtilecfg "$out/k_amx_release.o"
  echo "== ldtilecfg operands stored before the instruction"
fi
ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1}" \
UBSAN_OPTIONS="${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1}" \
  build_and_run sanitize -O1 -g -fno-omit-frame-pointer \
    -fsanitize=address,undefined -fno-sanitize-recover=all
ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1}" \
UBSAN_OPTIONS="${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1}" \
  matrix_build_and_run sanitize -O1 -g -fno-omit-frame-pointer \
    -fsanitize=address,undefined -fno-sanitize-recover=all
echo "check_amx: all passed"
