/*
 * kernel_instantiate.h: compile kernel_body.h for float and for double.
 * Included by each kernel_<isa>.c after it has defined FA_ISA_NAME and its
 * register blocking (and FA_VBYTES, unless it sets one per type through
 * FA_VBYTES_F32 / FA_VBYTES_F64).
 */
#define FA_T float
#define FA_TNAME f32
#define FA_IS_DOUBLE 0
#ifdef FA_VBYTES_F32
#define FA_VBYTES FA_VBYTES_F32
#endif
#include "kernel_body.h"
#ifdef FA_VBYTES_F32
#undef FA_VBYTES
#endif
#undef FA_T
#undef FA_TNAME
#undef FA_IS_DOUBLE

#define FA_T double
#define FA_TNAME f64
#define FA_IS_DOUBLE 1
#ifdef FA_VBYTES_F64
#define FA_VBYTES FA_VBYTES_F64
#endif
#include "kernel_body.h"
#ifdef FA_VBYTES_F64
#undef FA_VBYTES
#endif
#undef FA_T
#undef FA_TNAME
#undef FA_IS_DOUBLE
