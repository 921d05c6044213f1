/*
 * amx_emu.h: a portable-C emulation of the Intel AMX tile operations that
 * the matrix-unit kernels use, with the instructions' exact arithmetic, so
 * that the same kernel code runs (and is tested) on every CPU.
 *
 * Emulated: LDTILECFG (palette 1), TILERELEASE, TILELOADD, TILESTORED,
 * TILEZERO, TDPBF16PS, TDPFP16PS and TDPBSSD.  Like the hardware, the tile state
 * belongs to the calling thread (thread-local storage here).
 *
 * Sources (Intel 64 and IA-32 Architectures Software Developer's Manual,
 * Vol. 2, instruction pages LDTILECFG, TILELOADD, TILESTORED, TILEZERO,
 * TDPBF16PS, TDPFP16PS; Intel Architecture Instruction Set Extensions
 * Programming Reference, chapter "Intel AMX"):
 *
 * Tile configuration (LDTILECFG, palette 1).  A 64-byte block: byte 0 the
 *   palette, byte 1 start_row, bytes 2..15 reserved (must be 0), bytes
 *   16..47 colsb[16] (16-bit bytes per row), bytes 48..63 rows[16].
 *   Palette 1 has 8 tiles of at most 16 rows x 64 bytes; a used tile has
 *   rows in 1..16 and colsb in 1..64, an unused one rows = colsb = 0, and
 *   the fields of tiles 8..15 must be 0.  Anything else is #GP on hardware
 *   and a refused configuration here.  Loading a configuration zeroes every
 *   tile; palette 0 returns to the initial state (as TILERELEASE).
 *
 * TILELOADD / TILESTORED: row r of the tile is colsb bytes at
 *   base + r * stride (any stride, rows may overlap or be unaligned).  A
 *   load zeroes the bytes of each row past colsb and the rows past `rows`
 *   ("write_row_and_zero", "zero_upper_rows" in the SDM pseudocode).
 *
 * TDPBF16PS tC, tA, tB (C: M x N float32, A: M x K/2 bfloat16 pairs,
 *   B: K/2 x N pairs, i.e. B "pair-interleaved": row kp of tB holds
 *   B[2kp][n], B[2kp+1][n] for every column n).  Following the SDM
 *   pseudocode, for each row m and column n:
 *     even = 0, odd = 0
 *     for kp in 0 .. K/2-1:
 *       even = fma(A[m][2kp],   B[2kp][n],   even)
 *       odd  = fma(A[m][2kp+1], B[2kp+1][n], odd)
 *     C[m][n] = C[m][n] + (even + odd)
 *   i.e. the even and the odd products of the pairs are summed in two
 *   separate float32 chains over the whole instruction (each step one
 *   fused multiply-add, one rounding), then the two chains are added, and
 *   only then is the sum added to the accumulator: three roundings per
 *   element per instruction after the chains.  Every operation is
 *   "FP32 FMA with DAZ=FTZ=1, RNE rounding; MXCSR is neither consulted nor
 *   updated; no exceptions": subnormal inputs (bf16 values, the chains,
 *   C's old value) count as zero with their sign, a result that is tiny
 *   is flushed to a zero with the sign of the true result, and rounding
 *   is to nearest even whatever the caller's MXCSR says.  Tininess is
 *   detected after rounding to float32 precision with an unbounded
 *   exponent, as the SDM (Vol. 1, 4.9.1.5 "Numeric Underflow Exception")
 *   defines it for SSE/AVX; FTZ then returns a zero with the sign of the
 *   true result (Vol. 1, 10.2.3.3 "Flush-To-Zero").
 *   The Intrinsics Guide's pseudocode for _tile_dpbf16ps instead adds both
 *   products straight into C, one k at a time; the SDM is normative, and
 *   the difference is observable (different rounding), so hardware results
 *   decide: test_amx.c compares the emulation with the real instruction on
 *   a CPU that has it and reports the bitwise agreement.
 *   NaN: a NaN operand gives a NaN result (which NaN is not specified for
 *   AMX; the emulation returns the host's).
 *
 * TDPFP16PS (AMX-FP16): the same, with IEEE binary16 pairs.  The SDM says
 *   "Input FP16 denormals are always handled and not treated as zero": a
 *   float16 subnormal converts exactly to a normal float32; the float32
 *   FMAs and additions are DAZ/FTZ as above.
 *
 * TDPBSSD (AMX-INT8): C (M x N int32) += A (M x K/4 quads of signed
 *   bytes) . B (K/4 x N quads, "quad-interleaved" as the pairs above).
 *   Each element adds the four byte products of each quad into C in
 *   32-bit arithmetic; the SDM's DWORD additions wrap, and the products
 *   are exact, so the result is the exact sum modulo 2^32 whatever the
 *   order.
 *
 * The shape rules of TDPBF16PS/TDPFP16PS/TDPBSSD (#UD on hardware) are checked:
 *   the three tiles distinct and configured, rows(C) = rows(A),
 *   colsb(C) = colsb(B), colsb(A) / 4 = rows(B) (element counts are colsb / 4
 *   rounded down, as in the pseudocode); a violation, like a load or store
 *   of an unconfigured tile, records a fault and leaves the tiles unchanged.
 *
 * The emulation itself needs the host's default rounding (to nearest); it
 * does not depend on the host's DAZ/FTZ settings, so it can run inside a
 * call that flushes subnormals.
 */
#ifndef FA_AMX_EMU_H
#define FA_AMX_EMU_H

#include <stddef.h>
#include <stdint.h>

#define FA_AMX_TILES 8        /* palette 1: tmm0 .. tmm7 */
#define FA_AMX_MAX_ROWS 16
#define FA_AMX_MAX_COLSB 64

/* The LDTILECFG memory operand (64 bytes), usable with the real
 * LDTILECFG of amx_tileops.h as well. */
typedef struct {
    uint8_t palette_id;
    uint8_t start_row;
    uint8_t reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} fa_amx_tilecfg;
_Static_assert(sizeof(fa_amx_tilecfg) == 64, "LDTILECFG reads 64 bytes");
_Static_assert(offsetof(fa_amx_tilecfg, colsb) == 16, "palette 1: colsb at byte 16");
_Static_assert(offsetof(fa_amx_tilecfg, rows) == 48, "palette 1: rows at byte 48");

/* Fill cfg for palette 1 with every tile unused. */
void fa_amx_cfg_init(fa_amx_tilecfg *cfg);

/* Emulated instructions on the calling thread's tile state.  Each returns
 * 0, or -1 for what would fault on hardware (and then records the reason,
 * see fa_amx_emu_fault). */
int fa_amx_emu_loadconfig(const fa_amx_tilecfg *cfg);
void fa_amx_emu_release(void);
int fa_amx_emu_loadd(int tile, const void *base, size_t stride);
int fa_amx_emu_stored(int tile, void *base, size_t stride);
int fa_amx_emu_zero(int tile);
int fa_amx_emu_dpbf16ps(int c, int a, int b);
int fa_amx_emu_dpfp16ps(int c, int a, int b);
int fa_amx_emu_dpbssd(int c, int a, int b);

/* The first fault recorded on this thread since the last call (NULL if
 * none); the call clears it. */
const char *fa_amx_emu_fault(void);

/* The arithmetic primitives, exported for their tests:
 * fa_amx_fma_ftz(a, b, c) = a * b + c rounded once to nearest even, with
 * subnormal a, b, c read as zero and a tiny result flushed to zero;
 * fa_amx_bf16_to_f32 / fa_amx_f16_to_f32 the exact widenings. */
float fa_amx_fma_ftz(float a, float b, float c);
float fa_amx_bf16_to_f32(uint16_t x);
float fa_amx_f16_to_f32(uint16_t x);

#endif /* FA_AMX_EMU_H */
