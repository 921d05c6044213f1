/*
 * matrix_type.h: one storage type of the matrix-unit files, included by
 * matrix_instantiate.h with FA_MX_KIND set (the FA_S_KIND it becomes: 0
 * float32, 1 float16, 2 bfloat16); compiles kernel_body.h (vec.h, score.h,
 * matrix.h) for it and clears the type macros again.
 */
#if FA_MX_KIND == 0
#define FA_S float
#define FA_TNAME f32
#elif FA_MX_KIND == 1
#define FA_S uint16_t
#define FA_TNAME f16
#else
#define FA_S uint16_t
#define FA_TNAME bf16
#endif
#define FA_S_KIND FA_MX_KIND
#include "kernel_body.h"
#undef FA_S
#undef FA_S_KIND
#undef FA_TNAME
#undef FA_MX_KIND
