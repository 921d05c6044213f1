/*
 * amx_emu.c: the AMX tile emulation (semantics and sources: amx_emu.h).
 *
 * Only exact or correctly rounded host operations are used: a float32
 * fused multiply-add (fmaf), the product of two 16-bit-significand values
 * in double (exact), and a double TwoSum (exact error term) to settle the
 * one case where the host's float result cannot tell tininess apart.
 */
#include "amx_emu.h"

#include <math.h>
#include <string.h>

typedef struct {
    fa_amx_tilecfg cfg;
    int configured;
    uint8_t data[FA_AMX_TILES][FA_AMX_MAX_ROWS][FA_AMX_MAX_COLSB];
    const char *fault;
} fa_amx_state;

static _Thread_local fa_amx_state fa_amx_st;

static int fa_amx_set_fault(const char *why)
{
    if (!fa_amx_st.fault) fa_amx_st.fault = why;
    return -1;
}

const char *fa_amx_emu_fault(void)
{
    const char *f = fa_amx_st.fault;
    fa_amx_st.fault = NULL;
    return f;
}

void fa_amx_cfg_init(fa_amx_tilecfg *cfg)
{
    memset(cfg, 0, sizeof *cfg);
    cfg->palette_id = 1;
}

/* ---- configuration, loads, stores -------------------------------------- */

int fa_amx_emu_loadconfig(const fa_amx_tilecfg *cfg)
{
    if (cfg->palette_id == 0) { /* the initial state, as TILERELEASE */
        fa_amx_emu_release();
        return 0;
    }
    if (cfg->palette_id != 1) return fa_amx_set_fault("ldtilecfg: palette other than 0 or 1");
    for (int i = 0; i < 14; i++)
        if (cfg->reserved[i]) return fa_amx_set_fault("ldtilecfg: reserved bytes not zero");
    for (int t = 0; t < 16; t++) {
        const unsigned rows = cfg->rows[t], colsb = cfg->colsb[t];
        if (t >= FA_AMX_TILES) {
            if (rows || colsb) return fa_amx_set_fault("ldtilecfg: tile 8..15 configured");
            continue;
        }
        if ((rows == 0) != (colsb == 0))
            return fa_amx_set_fault("ldtilecfg: rows and colsb must both be 0 or both set");
        if (rows > FA_AMX_MAX_ROWS || colsb > FA_AMX_MAX_COLSB)
            return fa_amx_set_fault("ldtilecfg: more than 16 rows or 64 bytes per row");
    }
    fa_amx_st.cfg = *cfg;
    fa_amx_st.cfg.start_row = 0; /* the instruction resets it */
    fa_amx_st.configured = 1;
    memset(fa_amx_st.data, 0, sizeof fa_amx_st.data);
    return 0;
}

void fa_amx_emu_release(void)
{
    memset(&fa_amx_st.cfg, 0, sizeof fa_amx_st.cfg);
    fa_amx_st.configured = 0;
    memset(fa_amx_st.data, 0, sizeof fa_amx_st.data);
}

/* 1 if tile t is configured and in use. */
static int fa_amx_usable(int t)
{
    return fa_amx_st.configured && t >= 0 && t < FA_AMX_TILES && fa_amx_st.cfg.rows[t] != 0;
}

int fa_amx_emu_loadd(int tile, const void *base, size_t stride)
{
    if (!fa_amx_usable(tile)) return fa_amx_set_fault("tileloadd: tile not configured");
    const unsigned rows = fa_amx_st.cfg.rows[tile], colsb = fa_amx_st.cfg.colsb[tile];
    memset(fa_amx_st.data[tile], 0, sizeof fa_amx_st.data[tile]);
    for (unsigned r = 0; r < rows; r++)
        memcpy(fa_amx_st.data[tile][r], (const char *)base + r * stride, colsb);
    return 0;
}

int fa_amx_emu_stored(int tile, void *base, size_t stride)
{
    if (!fa_amx_usable(tile)) return fa_amx_set_fault("tilestored: tile not configured");
    const unsigned rows = fa_amx_st.cfg.rows[tile], colsb = fa_amx_st.cfg.colsb[tile];
    for (unsigned r = 0; r < rows; r++)
        memcpy((char *)base + r * stride, fa_amx_st.data[tile][r], colsb);
    return 0;
}

int fa_amx_emu_zero(int tile)
{
    if (!fa_amx_usable(tile)) return fa_amx_set_fault("tilezero: tile not configured");
    memset(fa_amx_st.data[tile], 0, sizeof fa_amx_st.data[tile]);
    return 0;
}

/* ---- arithmetic --------------------------------------------------------- */

static float fa_bits_f32(uint32_t u)
{
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static uint32_t fa_f32_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

/* DAZ on the bits (exponent field 0: zero or subnormal -> signed zero), so
 * that it does not depend on the host's own DAZ. */
static float fa_amx_daz(float x)
{
    const uint32_t u = fa_f32_bits(x);
    return (u & 0x7f800000u) ? x : fa_bits_f32(u & 0x80000000u);
}

/* bfloat16 -> float32 is the bit pattern in the upper half (the SDM's
 * make_fp32); DAZ applies to the result when it is used. */
float fa_amx_bf16_to_f32(uint16_t x) { return fa_bits_f32((uint32_t)x << 16); }

/* binary16 -> float32, exact for every value (subnormals become normal
 * floats; NaN stays NaN, quieted). */
float fa_amx_f16_to_f32(uint16_t h)
{
    const uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu, man = h & 0x3ffu;
    if (exp == 0x1f) return fa_bits_f32(sign | 0x7f800000u | (man << 13) | (man ? 0x400000u : 0));
    if (exp == 0) {
        if (man == 0) return fa_bits_f32(sign);
        /* normalize: value = man * 2^-24 */
        int e = -14;
        while (!(man & 0x400u)) { man <<= 1; e--; }
        man &= 0x3ffu;
        return fa_bits_f32(sign | ((uint32_t)(e + 127) << 23) | (man << 13));
    }
    return fa_bits_f32(sign | ((exp + 112) << 23) | (man << 13));
}

float fa_amx_fma_ftz(float a, float b, float c)
{
    a = fa_amx_daz(a);
    b = fa_amx_daz(b);
    c = fa_amx_daz(c);
    const float r = fmaf(a, b, c);
    const float ar = fabsf(r);
    /* normal results (and inf, NaN) are the correctly rounded ones */
    if (!(ar <= 0x1p-126f)) return r;
    /* an exact zero, or a tiny result the host already flushed: the sign
     * is that of the true result either way */
    if (r == 0.0f) return r;
    /* the host rounded on the subnormal grid to below 2^-126: the exact
     * value is below 2^-126 - 2^-150, so tiny at float32 precision too */
    if (ar < 0x1p-126f) return copysignf(0.0f, r);
    /* r = +-2^-126 exactly: the exact value may lie just below it, where
     * rounding to 24 bits with an unbounded exponent stays below 2^-126
     * (tiny: flushed) although the subnormal grid rounds up.  The exact
     * value is s + e (TwoSum; the product of two values with at most 24
     * significant bits is exact in double and far from double's
     * underflow).  The 24-bit rounding stays below 2^-126 iff the exact
     * magnitude is below the midpoint 2^-126 - 2^-151 (a tie goes to the
     * even 2^-126). */
    const double p = (double)a * (double)b;
    const double s = p + (double)c;
    const double bv = s - p;
    const double e = (p - (s - bv)) + ((double)c - bv);
    const double mid = 0x1p-126 - 0x1p-151;
    const double as = fabs(s);
    const int tiny = as < mid || (as == mid && (s > 0 ? e < 0 : e > 0));
    return tiny ? copysignf(0.0f, r) : r;
}

/* The dot-product-accumulates: what each kind multiplies, and the
 * reasons of its faults. */
enum { FA_AMX_DP_FP16 = 0, FA_AMX_DP_BF16 = 1, FA_AMX_DP_SSD = 2 };
static const char *const fa_amx_dp_faults[3][4] = {
    {"tdpfp16ps: tile not configured", "tdpfp16ps: tiles not distinct",
     "tdpfp16ps: colsb not a multiple of 4",
     "tdpfp16ps: beyond the TMUL limits (M, K 16, N 64 bytes)"},
    {"tdpbf16ps: tile not configured", "tdpbf16ps: tiles not distinct",
     "tdpbf16ps: colsb not a multiple of 4",
     "tdpbf16ps: beyond the TMUL limits (M, K 16, N 64 bytes)"},
    {"tdpbssd: tile not configured", "tdpbssd: tiles not distinct",
     "tdpbssd: colsb not a multiple of 4",
     "tdpbssd: beyond the TMUL limits (M, K 16, N 64 bytes)"},
};
static const char *const fa_amx_dp_shape_faults[3] = {"tdpfp16ps: tile shapes do not match",
                                                      "tdpbf16ps: tile shapes do not match",
                                                      "tdpbssd: tile shapes do not match"};

/* One element of TDPBSSD: C + the sum of the four products of each quad
 * of signed bytes, in 32-bit arithmetic that wraps (the SDM's DWORD
 * adds); computed unsigned, where C's wrap-around is defined. */
static int32_t fa_amx_ssd(int32_t c, const uint8_t (*ta)[FA_AMX_MAX_COLSB],
                          const uint8_t (*tb)[FA_AMX_MAX_COLSB], unsigned m, unsigned n,
                          unsigned k_quads)
{
    uint32_t acc = (uint32_t)c;
    for (unsigned k = 0; k < k_quads; k++)
        for (unsigned q = 0; q < 4; q++)
            acc += (uint32_t)((int32_t)(int8_t)ta[m][4 * k + q] * (int8_t)tb[k][4 * n + q]);
    int32_t r;
    memcpy(&r, &acc, sizeof r);
    return r;
}

static int fa_amx_dp(int c, int a, int b, int kind)
{
    const char *const *why = fa_amx_dp_faults[kind];
    if (!fa_amx_usable(c) || !fa_amx_usable(a) || !fa_amx_usable(b))
        return fa_amx_set_fault(why[0]);
    if (c == a || c == b || a == b) return fa_amx_set_fault(why[1]);
    const fa_amx_tilecfg *cf = &fa_amx_st.cfg;
    /* k_pairs: bfloat16/float16 pairs, or quads of bytes (TDPBSSD), per
     * 32-bit element of A's rows */
    const unsigned m_rows = cf->rows[c], n_cols = cf->colsb[c] / 4u, k_pairs = cf->colsb[a] / 4u;
    /* the SDM's #UD conditions: colsb of C and A whole dwords, K at most 16
     * pairs (rows of B), N at most 16 floats (64 bytes), M at most 16 rows */
    if (cf->colsb[c] % 4u || cf->colsb[a] % 4u || cf->colsb[b] % 4u)
        return fa_amx_set_fault(why[2]);
    if (m_rows > FA_AMX_MAX_ROWS || k_pairs > 16 || cf->rows[b] > 16 || cf->colsb[c] > 64 ||
        cf->colsb[b] > 64 || cf->colsb[a] > 64)
        return fa_amx_set_fault(why[3]);
    if (cf->rows[a] != m_rows || cf->colsb[b] != cf->colsb[c] || cf->rows[b] != k_pairs)
        return fa_amx_set_fault(fa_amx_dp_shape_faults[kind]);
    uint8_t (*tc)[FA_AMX_MAX_COLSB] = fa_amx_st.data[c];
    const uint8_t (*ta)[FA_AMX_MAX_COLSB] = (const uint8_t (*)[FA_AMX_MAX_COLSB])fa_amx_st.data[a];
    const uint8_t (*tb)[FA_AMX_MAX_COLSB] = (const uint8_t (*)[FA_AMX_MAX_COLSB])fa_amx_st.data[b];
    const int bf16 = kind == FA_AMX_DP_BF16;
    for (unsigned m = 0; m < m_rows; m++) {
        float row[FA_AMX_MAX_COLSB / 4];
        memcpy(row, tc[m], sizeof row);
        if (kind == FA_AMX_DP_SSD) {
            int32_t irow[FA_AMX_MAX_COLSB / 4];
            memcpy(irow, tc[m], sizeof irow);
            for (unsigned n = 0; n < n_cols; n++) irow[n] = fa_amx_ssd(irow[n], ta, tb, m, n, k_pairs);
            memcpy(row, irow, sizeof row);
        } else
            for (unsigned n = 0; n < n_cols; n++) {
                float even = 0.0f, odd = 0.0f;
                for (unsigned k = 0; k < k_pairs; k++) {
                    uint16_t a2[2], b2[2];
                    memcpy(a2, &ta[m][4 * k], 4);
                    memcpy(b2, &tb[k][4 * n], 4);
                    const float a0 = bf16 ? fa_amx_bf16_to_f32(a2[0]) : fa_amx_f16_to_f32(a2[0]);
                    const float a1 = bf16 ? fa_amx_bf16_to_f32(a2[1]) : fa_amx_f16_to_f32(a2[1]);
                    const float b0 = bf16 ? fa_amx_bf16_to_f32(b2[0]) : fa_amx_f16_to_f32(b2[0]);
                    const float b1 = bf16 ? fa_amx_bf16_to_f32(b2[1]) : fa_amx_f16_to_f32(b2[1]);
                    even = fa_amx_fma_ftz(a0, b0, even);
                    odd = fa_amx_fma_ftz(a1, b1, odd);
                }
                const float pair_sum = fa_amx_fma_ftz(even, 1.0f, odd);
                row[n] = fa_amx_fma_ftz(row[n], 1.0f, pair_sum);
            }
        /* write_row_and_zero: bytes past colsb become 0 */
        memset(tc[m], 0, FA_AMX_MAX_COLSB);
        memcpy(tc[m], row, n_cols * 4u);
    }
    /* zero_upper_rows */
    for (unsigned m = m_rows; m < FA_AMX_MAX_ROWS; m++) memset(tc[m], 0, FA_AMX_MAX_COLSB);
    return 0;
}

int fa_amx_emu_dpbf16ps(int c, int a, int b) { return fa_amx_dp(c, a, b, FA_AMX_DP_BF16); }
int fa_amx_emu_dpfp16ps(int c, int a, int b) { return fa_amx_dp(c, a, b, FA_AMX_DP_FP16); }
int fa_amx_emu_dpbssd(int c, int a, int b) { return fa_amx_dp(c, a, b, FA_AMX_DP_SSD); }
