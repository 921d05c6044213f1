/*
 * kernel_avx512vnni.c: the int8 decode kernel for CPUs with AVX512-VNNI.
 * Compiled with the avx512vnni flags of csrc/isa_flags.txt; its table holds
 * only the few-row kernel over int8 keys and values (FA_I8KV), which
 * dispatch.c's registry row "avx512vnni" puts in place of avx512's when
 * cpuid has the bit: its P.V sum uses vpdpbusd on the raw int8 values with
 * the probabilities as exact 24-bit integers (see fa_pv_vnni_ in rows.h).
 * Q.K keeps the widening path: vpdpbusd would need the query as unsigned
 * bytes too.
 */
#include <stdint.h>
#include "kernel.h"
#include "avx512_hooks.h"

#define FA_ISA_NAME avx512vnni
#define FA_QK_IB 4
#define FA_QK_JB 6
#define FA_PV_IB 4
#define FA_PV_EB 4
#define FA_I8DP 1
#define FA_ONLY_I8 1

#include "kernel_instantiate.h"
