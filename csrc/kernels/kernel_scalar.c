/*
 * kernel_scalar.c: the attention tile (kernel_body.h) for the scalar path.
 * Compiled without ISA flags (the scalar row of csrc/isa_flags.txt).
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

/* one element per "vector" */
#define FA_VBYTES_F32 4
#define FA_VBYTES_F64 8
#include "kernel_instantiate.h"
