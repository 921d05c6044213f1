/*
 * amx_gate.h: may this process use the AMX tiles?  A runtime check that
 * never executes a tile instruction and never faults.
 *
 * The tiles are usable when all of these hold, checked in this order:
 *  1. cpuid leaf 7 (subleaf 0) EDX reports AMX-TILE (bit 24) and AMX-BF16
 *     (bit 22); AMX-INT8 (bit 25) is reported but not required.  AMX-FP16
 *     is cpuid leaf 7 subleaf 1 EAX bit 21 (optional, reported apart).
 *  2. The OS enabled XSAVE (cpuid leaf 1 ECX bit 27, OSXSAVE; without it
 *     xgetbv itself would fault) and XCR0 has bits 17 (XTILECFG) and 18
 *     (XTILEDATA) set.
 *  3. Linux granted this process the tile data state:
 *     arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA = 18) succeeded
 *     (or ARCH_GET_XCOMP_PERM already shows bit 18).  Without it the first
 *     tile instruction is killed with SIGILL.
 *
 * Kernel semantics (Documentation/arch/x86/xstate.rst): the permission is
 * per process, inherited across fork() and cleared by exec(); asking again
 * once granted is a no-op.  Granting it makes every signal frame that
 * carries tile data larger (about 8 KB more), so the kernel refuses the
 * request if any thread of the process has a sigaltstack too small for
 * that frame, and after a grant it refuses (ENOMEM) any later sigaltstack()
 * that is too small.  A process with a small sigaltstack therefore keeps
 * working: the gate reports the refusal and the vector path runs.  The
 * flip side is why the permission is requested lazily (first use of the
 * matrix path, never at import): a program that installs a small
 * sigaltstack later would see that call fail.  getauxval(AT_MINSIGSTKSZ)
 * is no measure of "small" here: on a CPU with AMX it already counts the
 * tile data (the kernel's largest user state), permission or not.
 *
 * Thread and fork safety: the result is computed once per process (the
 * computation is idempotent, so concurrent first callers agree) and
 * published through an atomic; no lock is held, so a child forked at any
 * moment can call it.  Non-x86-64 or non-Linux builds report unavailable.
 */
#ifndef FA_AMX_GATE_H
#define FA_AMX_GATE_H

#include <stdint.h>

/* What cpuid and xgetbv said (filled by fa_amx_read_facts on x86-64). */
typedef struct {
    int has_leaf7;            /* max cpuid leaf >= 7 */
    uint32_t leaf7_edx;       /* leaf 7 subleaf 0 EDX */
    uint32_t leaf7_1_eax;     /* leaf 7 subleaf 1 EAX */
    int osxsave;              /* leaf 1 ECX bit 27 */
    uint64_t xcr0;            /* xgetbv(0), 0 when osxsave is off */
} fa_amx_facts;

/* The outcome of the permission request (arch_prctl). */
typedef enum {
    FA_AMX_PERM_GRANTED = 0,
    FA_AMX_PERM_NOSPC,        /* a sigaltstack is too small (ENOSPC) */
    FA_AMX_PERM_UNSUPPORTED,  /* kernel without dynamic xstate (EINVAL) */
    FA_AMX_PERM_DENIED,       /* EPERM / EACCES (e.g. a seccomp filter) */
    FA_AMX_PERM_OTHER,        /* any other failure */
    FA_AMX_PERM_NOT_LINUX     /* no arch_prctl on this platform */
} fa_amx_perm;

/* Pure decision from the facts and the permission outcome (tested with
 * made-up facts): 1 if the tiles and TDPBF16PS may be used, else 0 with
 * *reason set to a static human-readable sentence.  On success *reason is
 * "available". */
int fa_amx_decide(const fa_amx_facts *facts, fa_amx_perm perm, const char **reason);
/* 1 if the facts say the CPU and OS support the tiles (steps 1-2 only). */
int fa_amx_cpu_ok(const fa_amx_facts *facts, const char **reason);

/* The machine's facts (zeros off x86-64). */
void fa_amx_read_facts(fa_amx_facts *facts);
/* Ask the kernel for the tile data permission (step 3). */
fa_amx_perm fa_amx_request_permission(void);

/* The process-wide answer, computed on first use (steps 1-3). */
int fa_amx_available(void);
/* Why not (or "available"); a static string. */
const char *fa_amx_reason(void);
/* TDPFP16PS also usable (AMX-FP16 and the tiles available). */
int fa_amx_fp16_available(void);
/* TDPBSSD also usable (AMX-INT8 and the tiles available). */
int fa_amx_int8_available(void);
/* The outcome of the permission request (an fa_amx_perm), or -1 when it
 * was never made because the CPU or OS lacks the tiles; computes the
 * process-wide answer first if needed. */
int fa_amx_permission(void);
/* Whether the process-wide answer has been computed (the gate has run). */
int fa_amx_gate_ran(void);
/* The permission as the process holds it now, read without asking for it
 * (ARCH_GET_XCOMP_PERM): FA_AMX_PERM_GRANTED, or -1 when not held. */
int fa_amx_permission_held(void);

#endif /* FA_AMX_GATE_H */
