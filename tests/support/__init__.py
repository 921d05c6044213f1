"""Helpers of the fastattn test suite (``from support import ...``).

* ``compare``: the float64 reference, the tolerance rule (FlashAttention's
  2x rule) and its failure report;
* ``arrays``: random inputs, masks, memory layouts, path shapes;
* ``optional_deps``: optional third-party packages, skipped with a reason;
* ``isa``: the per-ISA child-process harness;
* ``child``: the environment of child interpreters;
* ``matrix``: the matrix-unit paths and the plain computation at their
  precision (the oracles of the harness);
* ``varlen``: the references of packed variable-length problems.
"""

from .arrays import (LAYOUTS, PATH_SHAPES, make_mask, make_qkv, path_qkv, randn,
                     random_variant_problem, relayout)
from .compare import (BF16_U, F16_U, F32_FLOOR, F32_U, F64_RTOL, AttentionRefs,
                      _finite_abs_max, assert_matches, assert_matches_half, assert_result,
                      check_any, check_attention, check_attention_out_only, check_weights,
                      half_dtypes, is_half, max_abs_score, plan_kernel, plan_kernel_varlen,
                      reference_results, to32, to64, to64_any)
from .isa import (ISA_COMBOS, ISA_NAMES, ISA_THREADS, IsaCase, attention_case,
                  check_isa_path, random_variant_cases)
from .optional_deps import require
from .varlen import VarlenRefs, varlen_s_max

__all__ = [
    "LAYOUTS", "PATH_SHAPES", "make_mask", "make_qkv", "path_qkv", "randn",
    "random_variant_problem", "relayout",
    "BF16_U", "F16_U", "F32_FLOOR", "F32_U", "F64_RTOL", "AttentionRefs", "_finite_abs_max",
    "assert_matches", "assert_matches_half", "assert_result", "check_any", "check_attention",
    "check_attention_out_only", "check_weights", "half_dtypes", "is_half", "max_abs_score",
    "plan_kernel", "plan_kernel_varlen", "reference_results", "to32", "to64", "to64_any",
    "ISA_COMBOS", "ISA_NAMES", "ISA_THREADS", "IsaCase", "attention_case", "check_isa_path",
    "random_variant_cases",
    "require",
    "VarlenRefs", "varlen_s_max",
]
