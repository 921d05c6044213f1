/* fpenv.h: the floating-point control every compute entry point of the core
 * sets for its duration (attention.c's thread pool, dispatch.c's linear
 * GEMM). */
#ifndef FA_FPENV_H
#define FA_FPENV_H

/* Subnormal numbers.  On x86 every arithmetic instruction that meets a
 * subnormal operand (or makes a subnormal result) takes a microcode assist
 * of ~150 cycles, so one subnormal q, k or v (an uninitialized cache slot,
 * an underflowed activation) made a whole call 12-300x slower.  Each thread
 * that computes part of a call therefore switches its own floating-point
 * control to flush subnormals to zero (x86 MXCSR DAZ | FTZ; aarch64 FPCR.FZ)
 * for the duration of its work and then restores its previous control
 * bits: the caller's and the pool's control state is unchanged after the
 * call, while exception flags raised by the computation stay raised, as
 * before.  Float16 storage is unaffected (its subnormals widen to normal
 * floats).  FASTATTN_KEEP_SUBNORMALS=1 (read once) keeps gradual underflow,
 * at the old speed; it exists to compare both modes.  Normal inputs give
 * bitwise the same results either way unless an intermediate value falls
 * below the normal range (e.g. an attention weight under 1.2e-38). */
#if defined(__x86_64__) || defined(_M_X64) || defined(__SSE2__)
#include <xmmintrin.h>
#define FA_FP_SAVE() _mm_getcsr()
#define FA_FP_FLUSH(s) _mm_setcsr((s) | 0x8040u) /* FTZ (bit 15) | DAZ (bit 6) */
/* control bits as saved, exception flags (bits 0-5) as the work left them */
#define FA_FP_RESTORE(s) _mm_setcsr(((s) & ~0x3fu) | (_mm_getcsr() & 0x3fu))
typedef unsigned int fa_fp_state;
#elif defined(__aarch64__)
static inline unsigned long fa_fpcr_get(void)
{
    unsigned long v;
    __asm__ volatile("mrs %0, fpcr" : "=r"(v));
    return v;
}
static inline void fa_fpcr_set(unsigned long v) { __asm__ volatile("msr fpcr, %0" : : "r"(v)); }
#define FA_FP_SAVE() fa_fpcr_get()
#define FA_FP_FLUSH(s) fa_fpcr_set((s) | (1ul << 24)) /* FZ */
#define FA_FP_RESTORE(s) fa_fpcr_set(s)
typedef unsigned long fa_fp_state;
#else
#define FA_FP_SAVE() 0
#define FA_FP_FLUSH(s) ((void)(s))
#define FA_FP_RESTORE(s) ((void)(s))
typedef int fa_fp_state;
#endif

/* Whether calls flush subnormals (1 unless FASTATTN_KEEP_SUBNORMALS is set
 * to something other than 0; read once).  Defined in attention.c. */
int fa_flush_subnormals(void);

#endif
