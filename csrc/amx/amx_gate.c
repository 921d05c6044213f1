/*
 * amx_gate.c: runtime gating of the AMX tiles (rules and sources in
 * amx_gate.h).
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* syscall() */
#endif
#include "amx_gate.h"

#include <stdatomic.h>
#include <string.h>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define FA_AMX_X86 1
#include <cpuid.h>
#else
#define FA_AMX_X86 0
#endif

#if FA_AMX_X86 && defined(__linux__)
#define FA_AMX_LINUX 1
#include <errno.h>
#include <sys/syscall.h>
#include <unistd.h>
#else
#define FA_AMX_LINUX 0
#endif

#define FA_CPUID7_EDX_AMX_BF16 (1u << 22)
#define FA_CPUID7_EDX_AMX_TILE (1u << 24)
#define FA_CPUID7_EDX_AMX_INT8 (1u << 25)
#define FA_CPUID7_1_EAX_AMX_FP16 (1u << 21)
#define FA_XCR0_XTILECFG (1ull << 17)
#define FA_XCR0_XTILEDATA (1ull << 18)
/* arch_prctl codes (arch/x86/include/uapi/asm/prctl.h) */
#define FA_ARCH_GET_XCOMP_PERM 0x1022
#define FA_ARCH_REQ_XCOMP_PERM 0x1023
#define FA_XFEATURE_XTILEDATA 18

int fa_amx_cpu_ok(const fa_amx_facts *f, const char **reason)
{
    const char *why = NULL;
    if (!f->has_leaf7 || !(f->leaf7_edx & FA_CPUID7_EDX_AMX_TILE))
        why = "cpuid reports no AMX-TILE";
    else if (!(f->leaf7_edx & FA_CPUID7_EDX_AMX_BF16))
        why = "cpuid reports AMX-TILE but no AMX-BF16";
    else if (!f->osxsave)
        why = "the OS has not enabled XSAVE (cpuid OSXSAVE is 0)";
    else if ((f->xcr0 & (FA_XCR0_XTILECFG | FA_XCR0_XTILEDATA)) !=
             (FA_XCR0_XTILECFG | FA_XCR0_XTILEDATA))
        why = "XCR0 lacks the tile state (bits 17 and 18): the OS does not support AMX";
    if (reason) *reason = why ? why : "available";
    return why == NULL;
}

int fa_amx_decide(const fa_amx_facts *f, fa_amx_perm perm, const char **reason)
{
    if (!fa_amx_cpu_ok(f, reason)) return 0;
    const char *why = NULL;
    switch (perm) {
    case FA_AMX_PERM_GRANTED: break;
    case FA_AMX_PERM_NOSPC:
        why = "arch_prctl(ARCH_REQ_XCOMP_PERM) refused (ENOSPC): a thread's sigaltstack is too "
              "small for signal frames with tile data";
        break;
    case FA_AMX_PERM_UNSUPPORTED:
        why = "arch_prctl(ARCH_REQ_XCOMP_PERM) refused (EINVAL): the kernel has no dynamic "
              "xstate support (Linux >= 5.16 needed)";
        break;
    case FA_AMX_PERM_DENIED:
        why = "arch_prctl(ARCH_REQ_XCOMP_PERM) was denied (EPERM/EACCES)";
        break;
    case FA_AMX_PERM_NOT_LINUX:
        why = "tile permission can only be requested on Linux";
        break;
    default:
        why = "arch_prctl(ARCH_REQ_XCOMP_PERM) failed";
        break;
    }
    if (reason) *reason = why ? why : "available";
    return why == NULL;
}

void fa_amx_read_facts(fa_amx_facts *f)
{
    memset(f, 0, sizeof *f);
#if FA_AMX_X86
    unsigned a, b, c, d;
    if (__get_cpuid(1, &a, &b, &c, &d)) f->osxsave = (c >> 27) & 1;
    if (__get_cpuid_count(7, 0, &a, &b, &c, &d)) {
        f->has_leaf7 = 1;
        f->leaf7_edx = d;
        const unsigned max_sub = a; /* leaf 7 subleaf 0 EAX: highest subleaf */
        if (max_sub >= 1 && __get_cpuid_count(7, 1, &a, &b, &c, &d)) f->leaf7_1_eax = a;
    }
    if (f->osxsave) { /* xgetbv faults (#UD) unless the OS enabled XSAVE */
        unsigned lo, hi;
        __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
        f->xcr0 = ((uint64_t)hi << 32) | lo;
    }
#endif
}

int fa_amx_permission_held(void)
{
#if FA_AMX_LINUX
    uint64_t perm = 0;
    if (syscall(SYS_arch_prctl, FA_ARCH_GET_XCOMP_PERM, &perm) == 0 &&
        (perm & (1ull << FA_XFEATURE_XTILEDATA)))
        return FA_AMX_PERM_GRANTED;
#endif
    return -1;
}

fa_amx_perm fa_amx_request_permission(void)
{
#if FA_AMX_LINUX
    if (fa_amx_permission_held() == FA_AMX_PERM_GRANTED) return FA_AMX_PERM_GRANTED;
    if (syscall(SYS_arch_prctl, FA_ARCH_REQ_XCOMP_PERM, FA_XFEATURE_XTILEDATA) == 0)
        return FA_AMX_PERM_GRANTED;
    switch (errno) {
    case ENOSPC: return FA_AMX_PERM_NOSPC;
    case EINVAL: return FA_AMX_PERM_UNSUPPORTED;
    case EPERM:
    case EACCES: return FA_AMX_PERM_DENIED;
    default: return FA_AMX_PERM_OTHER;
    }
#else
    return FA_AMX_PERM_NOT_LINUX;
#endif
}

/* 0: not computed; else 1 + (available) + 2 * (fp16 available) + 4 *
 * (int8 available), and the
 * reason pointer published before it. */
static _Atomic int fa_amx_state = 0;
static _Atomic(const char *) fa_amx_why = NULL;
static _Atomic int fa_amx_perm_seen = -1; /* fa_amx_perm, -1: not requested */

static int fa_amx_compute(void)
{
    int st = atomic_load_explicit(&fa_amx_state, memory_order_acquire);
    if (st) return st;
    fa_amx_facts f;
    fa_amx_read_facts(&f);
    const char *why;
    int ok;
#if FA_AMX_X86
    /* never ask the kernel for something the CPU or OS lacks */
    ok = fa_amx_cpu_ok(&f, &why);
    if (ok) {
        const fa_amx_perm perm = fa_amx_request_permission();
        atomic_store_explicit(&fa_amx_perm_seen, (int)perm, memory_order_release);
        ok = fa_amx_decide(&f, perm, &why);
    }
#else
    ok = 0;
    why = "not an x86-64 build";
#endif
    const int fp16 = ok && (f.leaf7_1_eax & FA_CPUID7_1_EAX_AMX_FP16);
    const int int8 = ok && (f.leaf7_edx & FA_CPUID7_EDX_AMX_INT8);
    st = 1 + ok + 2 * fp16 + 4 * int8;
    atomic_store_explicit(&fa_amx_why, why, memory_order_release);
    atomic_store_explicit(&fa_amx_state, st, memory_order_release);
    return st;
}

int fa_amx_available(void) { return (fa_amx_compute() - 1) & 1; }
int fa_amx_fp16_available(void) { return ((fa_amx_compute() - 1) >> 1) & 1; }
int fa_amx_int8_available(void) { return ((fa_amx_compute() - 1) >> 2) & 1; }

const char *fa_amx_reason(void)
{
    fa_amx_compute();
    return atomic_load_explicit(&fa_amx_why, memory_order_acquire);
}

int fa_amx_gate_ran(void) { return atomic_load_explicit(&fa_amx_state, memory_order_acquire) != 0; }

int fa_amx_permission(void)
{
    fa_amx_compute();
    return atomic_load_explicit(&fa_amx_perm_seen, memory_order_acquire);
}
