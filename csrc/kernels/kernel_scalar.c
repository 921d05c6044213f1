/*
 * kernel_scalar.c: the attention tile (kernel_body.h) for the scalar path.
 * This file alone is compiled with the scalar ISA flags (see setup.py); it is
 * called only after dispatch.c has checked that the CPU supports them.
 * Portable C: 'vectors' of one element, so this path assumes nothing of the
 * CPU; 16 scalar accumulators per micro-kernel.
 */
#include <stdint.h>
#include "kernel.h"

#define FA_ISA_NAME scalar
#define FA_QK_IB 4
#define FA_QK_JB 4
#define FA_PV_IB 4
#define FA_PV_EB 4

#define FA_T float
#define FA_VBYTES 4
#define FA_TNAME f32
#define FA_IS_DOUBLE 0
#include "kernel_body.h"
#undef FA_T
#undef FA_TNAME
#undef FA_IS_DOUBLE
#undef FA_VBYTES

#define FA_T double
#define FA_VBYTES 8
#define FA_TNAME f64
#define FA_IS_DOUBLE 1
#include "kernel_body.h"
