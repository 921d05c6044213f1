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
# A row's flags that this compiler accepts (as setup.py: without -mamx-tile
# -mamx-bf16, kernel_amx.c builds an empty table).
accepted() { local f; for f in "$@"; do
    echo 'int x;' | "$CC" "$f" -x c -c - -o /dev/null 2>/dev/null && printf '%s ' "$f"; done; return 0; }
# One object per row of csrc/isa_flags.txt built for this target ("any" or
# a prefix of the target triple), with that row's flags: the table setup.py
# reads too.
while read -r isa arches rowflags; do
    match=0
    for a in ${arches//,/ }; do
        [[ "$a" == any || "$arch" == "$a"* ]] && match=1
    done
    [[ "$match" == 1 ]] || continue
    [[ "$rowflags" == "-" ]] && rowflags=""
    # shellcheck disable=SC2086
    rowflags="$(accepted $rowflags)"
    # shellcheck disable=SC2086
    compile $rowflags -Icsrc -c "csrc/kernels/kernel_$isa.c" -o "$out/k_$isa.o"
    objs+=("$out/k_$isa.o")
done < <(sed -e 's/#.*//' csrc/isa_flags.txt | awk 'NF')
compile csrc/test/test_core.c csrc/attention.c csrc/dispatch.c csrc/amx/amx_gate.c \
    csrc/amx/amx_emu.c "${objs[@]}" -Icsrc -o "$out/test_core" -lm
echo "== $arch"
$RUN "$out/test_core"
