#!/usr/bin/env bash
# Build the C core without Python and run csrc/test/test_core.c (attention)
# and csrc/test/test_linear.c (the linear layer) on every ISA path the CPU
# supports.  CC may name a cross compiler; RUN a runner, e.g.
#   CC=aarch64-linux-gnu-gcc RUN="qemu-aarch64 -L /usr/aarch64-linux-gnu" tools/check_c_core.sh
set -euo pipefail
cd "$(dirname "$0")/.."
CC="${CC:-gcc}"
RUN="${RUN:-}"
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
arch="$("$CC" -dumpmachine)"
# shellcheck source=tools/lib.sh
source tools/lib.sh
# The flags of tools/check_amx.sh's optimized build: the kernel objects are
# the same (reused under FASTATTN_BUILD_CACHE).
flags=("${C_CORE_FLAGS[@]}" -O2)
compile() { "$CC" "${flags[@]}" "$@"; }
kernel_objects "$out" core "${flags[@]}"
compile csrc/test/test_core.c csrc/attention.c csrc/dispatch.c csrc/amx/amx_gate.c \
    csrc/amx/amx_emu.c csrc/amx/tile_canary.c "${KERNEL_OBJS[@]}" -Icsrc -o "$out/test_core" -lm
compile csrc/test/test_linear.c csrc/attention.c csrc/dispatch.c csrc/amx/amx_gate.c \
    csrc/amx/amx_emu.c csrc/amx/tile_canary.c "${KERNEL_OBJS[@]}" -Icsrc -o "$out/test_linear" -lm
echo "== $arch"
$RUN "$out/test_core"
$RUN "$out/test_linear"
