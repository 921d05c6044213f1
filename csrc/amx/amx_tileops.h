/*
 * amx_tileops.h: the tile operations as one vocabulary that compiles to
 * the real AMX instructions or to the portable emulation, so that a kernel
 * is written once and runs on every CPU.
 *
 * A file that includes this header with FA_AMX_REAL defined to 1 must be
 * compiled with -mamx-tile -mamx-bf16 and may only run after
 * fa_amx_available() said yes; otherwise (the default) the operations call
 * amx_emu.c.  FA_TILE_FN(name) gives a kernel its _amx or _emu name so that
 * both builds can live in one program.
 *
 * Tile numbers must be integer constants (the real instructions encode
 * them).  On the emulation a fault aborts the process with its reason on
 * stderr, as the instruction would fault on hardware.
 */
#ifndef FA_AMX_TILEOPS_H
#define FA_AMX_TILEOPS_H

#include "amx_emu.h" /* fa_amx_tilecfg, shared by both builds */

#if defined(FA_AMX_REAL) && FA_AMX_REAL
#include <immintrin.h>
#define FA_TILE_FN(name) name##_amx
/* Own asm rather than gcc's _tile_loadconfig / _tile_loadd: gcc 12 gives
 * LDTILECFG an 8-byte memory operand (so the stores of rows and colsb are
 * dead to it and get deleted) and TILELOADD no memory operand at all (so
 * stores into the source just before it may be sunk past it).  Here
 * LDTILECFG reads the whole 64-byte struct and TILELOADD / TILESTORED
 * clobber memory.  TILEZERO, TDPBF16PS and TILERELEASE touch only tile
 * state; being volatile they keep their order with the others. */
#define FA_TILE_CONFIG(cfg) \
    __asm__ volatile("ldtilecfg %0" ::"m"(*(const fa_amx_tilecfg *)(cfg)))
#define FA_TILE_RELEASE() __asm__ volatile("tilerelease" ::)
#define FA_TILE_LOAD(t, base, stride) FA_TILE_LOAD_(t, base, stride) /* t expanded */
#define FA_TILE_LOAD_(t, base, stride)                                              \
    __asm__ volatile("tileloadd (%0,%1,1), %%tmm" #t ::"r"((const void *)(base)),     \
                     "r"((long)(stride))                                            \
                     : "memory")
#define FA_TILE_STORE(t, base, stride) FA_TILE_STORE_(t, base, stride)
#define FA_TILE_STORE_(t, base, stride)                                             \
    __asm__ volatile("tilestored %%tmm" #t ", (%0,%1,1)" ::"r"((void *)(base)),       \
                     "r"((long)(stride))                                            \
                     : "memory")
#define FA_TILE_ZERO(t) _tile_zero(t)
#define FA_TILE_DPBF16PS(c, a, b) _tile_dpbf16ps(c, a, b)
/* TDPBSSD (AMX-INT8) as own asm, so that the file needs no -mamx-int8
 * (every assembler that knows AMX-TILE knows it).  Only called where the
 * gate reported AMX-INT8 (fa_linear_f32). */
#define FA_TILE_DPBSSD(c, a, b) FA_TILE_DPBSSD_(c, a, b) /* c, a, b expanded */
#define FA_TILE_DPBSSD_(c, a, b) \
    __asm__ volatile("tdpbssd %%tmm" #b ", %%tmm" #a ", %%tmm" #c ::)
/* TDPFP16PS (AMX-FP16) without -mamx-fp16, which gcc 12 lacks: own asm,
 * the mnemonic where setup.py found that the assembler knows it
 * (FA_AS_TDPFP16PS), else its bytes, VEX.128.F2.0F38.W0 5C with ModRM
 * reg = c, rm = a and VEX.vvvv = b (as binutils 2.40 encodes
 * "tdpfp16ps %tmm<b>, %tmm<a>, %tmm<c>").  Only called where the gate
 * reported AMX-FP16 (fa_matrix_usable). */
#define FA_TILE_DPFP16PS(c, a, b) FA_TILE_DPFP16PS_(c, a, b) /* c, a, b expanded */
#ifdef FA_AS_TDPFP16PS
#define FA_TILE_DPFP16PS_(c, a, b) \
    __asm__ volatile("tdpfp16ps %%tmm" #b ", %%tmm" #a ", %%tmm" #c ::)
#else
#define FA_TILE_DPFP16PS_(c, a, b)                                            \
    __asm__ volatile(".byte 0xc4, 0xe2, ((15 - " #b ") << 3) | 3, 0x5c, "      \
                     "0xc0 | (" #c " << 3) | " #a ::)
#endif
#else
#include <stdio.h>
#include <stdlib.h>
/* What faults on hardware (SIGILL, #GP) is fatal on the emulation too: the
 * reason goes to stderr, then abort(). */
static inline void fa_amx_emu_check(int status)
{
    if (__builtin_expect(status == 0, 1)) return;
    const char *why = fa_amx_emu_fault();
    fprintf(stderr, "fastattn: tile emulation fault: %s\n", why ? why : "(no reason)");
    abort();
}
#define FA_TILE_FN(name) name##_emu
#define FA_TILE_CONFIG(cfg) fa_amx_emu_check(fa_amx_emu_loadconfig(cfg))
#define FA_TILE_RELEASE() fa_amx_emu_release()
#define FA_TILE_LOAD(t, base, stride) fa_amx_emu_check(fa_amx_emu_loadd(t, base, (size_t)(stride)))
#define FA_TILE_STORE(t, base, stride) \
    fa_amx_emu_check(fa_amx_emu_stored(t, base, (size_t)(stride)))
#define FA_TILE_ZERO(t) fa_amx_emu_check(fa_amx_emu_zero(t))
#define FA_TILE_DPBF16PS(c, a, b) fa_amx_emu_check(fa_amx_emu_dpbf16ps(c, a, b))
#define FA_TILE_DPFP16PS(c, a, b) fa_amx_emu_check(fa_amx_emu_dpfp16ps(c, a, b))
#define FA_TILE_DPBSSD(c, a, b) fa_amx_emu_check(fa_amx_emu_dpbssd(c, a, b))
#endif

/* The 2 x 2 register block of a tile GEMM over kblocks steps of 32
 * (16-bit pairs): tiles 0-3 accumulate C (rows of a0 / a1 x columns of
 * b0 / b1), 4-5 take A's two 16-row blocks (row stride a_stride bytes,
 * 32 elements further per step), 6-7 B's two packed panels (1 KB tiles, 512
 * elements further per step); DP is the tile product (TDPBF16PS or
 * TDPFP16PS).  Each loaded tile is used twice. */
#define FA_TILE_GEMM_2X2(DP, a0, a1, a_stride, b0, b1, kblocks)     \
    for (int64_t kb_ = 0; kb_ < (kblocks); kb_++) {                  \
        FA_TILE_LOAD(4, (a0) + kb_ * 32, a_stride);                  \
        FA_TILE_LOAD(5, (a1) + kb_ * 32, a_stride);                  \
        FA_TILE_LOAD(6, (b0) + kb_ * 512, 64);                       \
        FA_TILE_LOAD(7, (b1) + kb_ * 512, 64);                       \
        DP(0, 4, 6);                                                 \
        DP(1, 4, 7);                                                 \
        DP(2, 5, 6);                                                 \
        DP(3, 5, 7);                                                 \
    }

/* The 2 x 1 block of a last single panel: tiles 0 and 2 accumulate, 4-5
 * A's blocks, 6 B's panel. */
#define FA_TILE_GEMM_2X1(DP, a0, a1, a_stride, b0, kblocks)         \
    for (int64_t kb_ = 0; kb_ < (kblocks); kb_++) {                  \
        FA_TILE_LOAD(4, (a0) + kb_ * 32, a_stride);                  \
        FA_TILE_LOAD(5, (a1) + kb_ * 32, a_stride);                  \
        FA_TILE_LOAD(6, (b0) + kb_ * 512, 64);                       \
        DP(0, 4, 6);                                                 \
        DP(2, 5, 6);                                                 \
    }

/* Set tile t of cfg to rows x colsb bytes. */
static inline void fa_amx_cfg_tile(fa_amx_tilecfg *cfg, int t, int rows, int colsb)
{
    cfg->rows[t] = (uint8_t)rows;
    cfg->colsb[t] = (uint16_t)colsb;
}

#endif /* FA_AMX_TILEOPS_H */
