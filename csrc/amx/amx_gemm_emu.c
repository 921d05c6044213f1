/*
 * amx_gemm_emu.c: B packing and the GEMM micro-kernel on the emulation.
 */
#include <string.h>

#define FA_AMX_REAL 0
#include "amx_gemm_body.h"

size_t fa_amx_packed_b_size(int64_t k, int64_t n)
{
    const int64_t kp = (k + 31) / 32 * 32;
    return (size_t)kp * (size_t)((n + 15) / 16 * 16);
}

void fa_amx_pack_b(int64_t k, int64_t n, const uint16_t *b, int64_t ldb, uint16_t *packed)
{
    const int64_t kblocks = (k + 31) / 32, panels = (n + 15) / 16;
    for (int64_t p = 0; p < panels; p++)
        for (int64_t kb = 0; kb < kblocks; kb++) {
            uint16_t *tile = packed + (size_t)(p * kblocks + kb) * 512;
            for (int kp = 0; kp < 16; kp++)
                for (int col = 0; col < 16; col++)
                    for (int s = 0; s < 2; s++) {
                        const int64_t row = kb * 32 + 2 * kp + s, cn = p * 16 + col;
                        tile[kp * 32 + col * 2 + s] = row < k && cn < n ? b[row * ldb + cn] : 0;
                    }
        }
}
