#!/usr/bin/env bash
# Build the C core without Python and run csrc/test/test_core.c on every ISA
# path the CPU supports.  CC may name a cross compiler; RUN a runner, e.g.
#   CC=aarch64-linux-gnu-gcc RUN="qemu-aarch64 -L /usr/aarch64-linux-gnu" tools/check_c_core.sh
set -euo pipefail
cd "$(dirname "$0")/.."
CC="${CC:-gcc}"
RUN="${RUN:-}"
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
arch="$("$CC" -dumpmachine)"
flags="-std=gnu11 -O2 -fno-math-errno -ffp-contract=fast -Wall -Wno-unused-function"
objs=()
compile() { "$CC" $flags "$@"; }
compile -c csrc/kernels/kernel_scalar.c -o "$out/k_scalar.o"; objs+=("$out/k_scalar.o")
case "$arch" in
  x86_64*)
    compile -mavx2 -mfma -mf16c -c csrc/kernels/kernel_avx2.c -o "$out/k_avx2.o"; objs+=("$out/k_avx2.o")
    compile -mavx512f -mavx512dq -mavx512bw -mavx512vl -mavx2 -mfma -mf16c \
      -c csrc/kernels/kernel_avx512.c -o "$out/k_avx512.o"; objs+=("$out/k_avx512.o")
    compile -mavx512f -mavx512dq -mavx512bw -mavx512vl -mavx2 -mfma -mf16c -mavx512bf16 \
      -c csrc/kernels/kernel_avx512bf16.c -o "$out/k_avx512bf16.o"; objs+=("$out/k_avx512bf16.o") ;;
  aarch64*)
    compile -c csrc/kernels/kernel_neon.c -o "$out/k_neon.o"; objs+=("$out/k_neon.o") ;;
esac
compile csrc/test/test_core.c csrc/attention.c csrc/dispatch.c "${objs[@]}" -Icsrc -o "$out/test_core" -lm
echo "== $arch"
$RUN "$out/test_core"
