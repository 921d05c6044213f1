#!/usr/bin/env bash
# Build and run the AMX groundwork tests (csrc/amx/test_amx.c): the tile
# emulation, the runtime gate and the GEMM micro-kernel, twice -- an
# optimized build with -Wall -Wextra -Werror, then an AddressSanitizer +
# UndefinedBehaviorSanitizer build.  The real-instruction file is compiled
# with -mamx-tile -mamx-bf16 where the target is x86-64 (its code runs only
# where the CPU and kernel allow AMX; elsewhere the test says why it did not
# run).  Exits non-zero on any build or test failure.
#   CC=clang tools/check_amx.sh
set -euo pipefail
cd "$(dirname "$0")/.."
CC="${CC:-gcc}"
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
arch="$("$CC" -dumpmachine)"
src=(csrc/amx/test_amx.c csrc/amx/amx_emu.c csrc/amx/amx_gate.c csrc/amx/amx_gemm_emu.c)
real_flags=()
case "$arch" in
  x86_64*) real_flags=(-mamx-tile -mamx-bf16) ;;
esac

build_and_run() {  # NAME FLAGS...
  local name="$1"; shift
  echo "== $name ($arch)"
  "$CC" -std=gnu11 -Wall -Wextra -Werror "$@" "${real_flags[@]}" \
    -c csrc/amx/amx_gemm_real.c -o "$out/real_$name.o"
  "$CC" -std=gnu11 -Wall -Wextra -Werror -pthread "$@" "${src[@]}" "$out/real_$name.o" \
    -Icsrc/amx -o "$out/test_amx_$name" -lm
  "$out/test_amx_$name"
}

build_and_run release -O2
ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1}" \
UBSAN_OPTIONS="${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1}" \
  build_and_run sanitize -O1 -g -fno-omit-frame-pointer \
    -fsanitize=address,undefined -fno-sanitize-recover=all
echo "check_amx: all passed"
