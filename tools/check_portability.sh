#!/usr/bin/env bash
# Check that a built fastattn extension runs on every CPU of its architecture:
# outside the per-ISA kernels, the machine code may use nothing beyond the
# baseline instruction set (x86-64: SSE2; aarch64: Advanced SIMD, no SVE).
#
#   tools/check_portability.sh [path/to/_core*.so | path/to/wheel.whl]
#
# Without an argument the extension under build/ is checked.  The kernels are
# told apart by name: every function of csrc/kernels/kernel_<isa>.c carries
# the suffix _<isa> (the naming macros of kernel_instantiate.h), and the ISA
# names come from csrc/isa_flags.txt.  A symbol counts as kernel code when one
# of its "_"/"."-separated words is an ISA name other than "scalar" (so
# fa_tile_f32_avx2, fa_rows_f16_avx512.cold and fa_amx_probe are kernel code,
# PyInit__core or fa_attention are not).  On x86-64 these are flagged
# outside kernel code:
#   * any ymm, zmm or tmm register, or an AVX-512 opmask register k0-k7;
#   * any VEX/EVEX mnemonic (v..., except the VMX/segment ones verr, verw,
#     vm*), the opmask instructions (k...), AMX (ldtilecfg, tile*, tdp*);
#   * BMI1/BMI2 (andn, bextr, blsi, blsmsk, blsr, bzhi, mulx, pdep, pext,
#     rorx, sarx, shlx, shrx), popcnt/lzcnt, and the SSSE3/SSE4 mnemonics.
# The check fails when the symbol table is missing (a stripped module cannot
# be checked) or names no kernel at all.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
OBJDUMP="${OBJDUMP:-objdump}"

target="${1:-}"
tmp=""
cleanup() { [[ -n "$tmp" ]] && rm -rf "$tmp"; return 0; }
trap cleanup EXIT
if [[ -z "$target" ]]; then
    target="$(find "$ROOT/build" -name '_core*.so' -newer "$ROOT/setup.py" 2>/dev/null | head -n1 || true)"
    [[ -n "$target" ]] || { echo "check_portability: no build/**/_core*.so; build first or pass a path" >&2; exit 2; }
fi
if [[ "$target" == *.whl ]]; then
    tmp="$(mktemp -d)"
    python3 -m zipfile -e "$target" "$tmp"
    target="$(find "$tmp" -name '_core*.so' | head -n1)"
fi
[[ -f "$target" ]] || { echo "check_portability: $target not found" >&2; exit 2; }

isas="$(sed -e 's/#.*//' "$ROOT/csrc/isa_flags.txt" | awk 'NF && $1 != "scalar" {print $1}' | paste -sd'|' -)"
arch="$("$OBJDUMP" -f "$target" | sed -n 's/.*architecture: *\([^,]*\).*/\1/p')"
echo "== $target ($arch); kernel ISA names: $isas"

if [[ "$("$OBJDUMP" -t "$target" | grep -c ' F .text' || true)" -eq 0 ]]; then
    echo "FAIL: $target has no symbol table (stripped?): kernel code cannot be told apart" >&2
    exit 1
fi

"$OBJDUMP" -d --no-show-raw-insn "$target" | awk -v isas="$isas" -v arch="$arch" '
function is_kernel(sym,    n, parts, i) {
    n = split(sym, parts, /[_.@]/)
    for (i = 1; i <= n; i++) if (parts[i] ~ ("^(" isas ")$")) return 1
    return 0
}
function bad_x86(mn, ops) {
    if (ops ~ /%(ymm|zmm|tmm)[0-9]/ || ops ~ /%k[0-7]([^0-9]|$)/) return "wide or opmask register"
    if (mn ~ /^v/ && mn !~ /^(verr|verw|vm)/) return "VEX/EVEX instruction"
    if (mn ~ /^k(add|and|or|xor|xnor|not|mov|shift|test|unpck)/) return "AVX-512 opmask instruction"
    if (mn ~ /^(ldtilecfg|sttilecfg|tile|tdp)/) return "AMX instruction"
    if (mn ~ /^(andn|bextr|blsi|blsmsk|blsr|bzhi|mulx|pdep|pext|rorx|sarx|shlx|shrx)$/) return "BMI instruction"
    if (mn ~ /^(popcnt|lzcnt|crc32)/) return "SSE4.2/ABM instruction"
    if (mn ~ /^(pshufb|palignr|phadd|phsub|pmaddubsw|pmulhrsw|pabs|psign)/) return "SSSE3 instruction"
    if (mn ~ /^(ptest|pblendvb|pblendw|blendv?p[sd]|round[sp][sd]|dpp[sd]|insertps|extractps|pextr[bdq]|pinsr[bdq]|pm(ax|in)(s[bd]|u[wd])|pmuldq|pmulld|packusdw|pcmp[eg][qt]q|pmov[sz]x|mpsadbw|phminposuw|pcmp[ei]str)/) return "SSE4 instruction"
    return ""
}
/^[0-9a-f]+ <.*>:$/ { sym = $2; sub(/^</, "", sym); sub(/>:$/, "", sym); kern = is_kernel(sym); if (kern) nk++; next }
/^ *[0-9a-f]+:\t/ {
    if (kern) next
    split($0, f, "\t"); ins = f[2]; mn = ins; sub(/[ \t].*/, "", mn); ops = ins; sub(/^[^ \t]*[ \t]*/, "", ops)
    why = ""
    if (arch ~ /x86-64/) why = bad_x86(mn, ops)
    else if (arch ~ /aarch64/ && ops ~ /(^|[^a-z])(z[0-9]+\.|p[0-9]+\/)/) why = "SVE instruction"
    if (why != "") {
        bad++
        if (shown[sym]++ < 3) printf "  %-40s %-28s %s\n", sym, why, ins
    }
}
END {
    if (nk == 0) { print "FAIL: no kernel symbol found (names must carry their ISA suffix)"; exit 1 }
    if (bad) { printf "FAIL: %d instruction(s) beyond the baseline outside the %d kernel functions\n", bad, nk; exit 1 }
    printf "OK: no instruction beyond the baseline outside the %d kernel functions\n", nk
}'
