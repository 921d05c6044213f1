# The C API of the fastattn core (csrc/fastattn.h, csrc/dispatch.h), as
# Cython sees it.  Declarations only: the binding is _core.pyx.
from libc.stdint cimport int32_t, int64_t

cdef extern from "fastattn.h" nogil:
    ctypedef enum fa_dtype:
        FA_F32
        FA_F64
        FA_F16
        FA_BF16
        FA_I8KV
    ctypedef enum fa_mask_kind:
        FA_MASK_NONE
        FA_MASK_BOOL
        FA_MASK_ADD_F32
        FA_MASK_ADD_F64
        FA_MASK_ADD_F16
        FA_MASK_ADD_BF16
    ctypedef int fa_isa
    ctypedef struct fa_params:
        fa_dtype dtype
        int64_t batch, h_q, h_kv, n_q, n_k, d, dv
        const void *q
        int64_t q_sb, q_sh, q_sn, q_sd
        const void *k
        int64_t k_sb, k_sh, k_sn, k_sd
        const void *v
        int64_t v_sb, v_sh, v_sn, v_sd
        void *out
        int64_t o_sb, o_sh, o_sn, o_sd
        void *lse
        int64_t l_sb, l_sh, l_sn
        fa_mask_kind mask_kind
        const void *mask
        int64_t m_sb, m_sh, m_sq, m_sk
        int64_t band_lo, band_hi
        int band_from_end
        const double *alibi
        int64_t a_sb, a_sh
        double softcap
        const int64_t *q_start
        const int64_t *k_start
        const int64_t *k_len
        double scale
        void *weights
        int64_t w_sb, w_sh, w_sq, w_sk
        int num_threads
        int precision
        const float *k_scale
        int64_t ks_sb, ks_sh, ks_sd
        const float *v_scale
        int64_t vs_sb, vs_sh, vs_sn
        const int32_t *block_table
        int64_t bt_sb
        int64_t page_size
    ctypedef struct fa_plan_info:
        int family
        int isa
        const char *kernel_isa
        int64_t q_block, k_block, tasks, key_splits, split_keys, items
        int threads
        size_t scratch_bytes
        double work
        int precision
        int bf16_tile
    int FA_OK
    int FA_ERR_NOMEM
    int FA_ERR_PARAMS
    int64_t FA_UNBOUNDED_LO
    int64_t FA_UNBOUNDED_HI
    int fa_attention(const fa_params *p) noexcept
    int fa_attention_weights(const fa_params *p) noexcept
    void fa_set_num_threads(int n) noexcept
    int fa_get_num_threads() noexcept
    int fa_has_openmp() noexcept
    int fa_plan(const fa_params *p, fa_plan_info *info) noexcept
    int fa_plan_weights(const fa_params *p, fa_plan_info *info) noexcept
    int fa_isa_count() noexcept
    int fa_isa_supported(fa_isa isa) noexcept
    int fa_isa_compiled(fa_isa isa) noexcept
    fa_isa fa_get_isa() noexcept
    int fa_set_isa(fa_isa isa) noexcept
    const char *fa_isa_name(fa_isa isa) noexcept
    const char *fa_family_name(int family) noexcept
    int fa_bf16_tile_policy() noexcept
    const char *fa_bf16_tile_name(int policy) noexcept

cdef extern from "dispatch.h" nogil:
    void fa_exp2_f32(const float *x, float *y, int64_t n) noexcept
    void fa_exp2_f64(const double *x, double *y, int64_t n) noexcept
    void fa_tanh_f32(const float *x, float *y, int64_t n) noexcept
    void fa_tanh_f64(const double *x, double *y, int64_t n) noexcept
    double fa_fma_probe(fa_isa isa, int64_t iters, int *lanes) noexcept
    int fa_linear_f32(const float *x, int64_t m, int64_t k, int64_t ldx, const void *packed,
                      int wtype, const float *w_scale, int64_t n, const float *bias,
                      const float *residual, int64_t ldr,
                      int act, float *y, int64_t ldy, int num_threads) noexcept
    const char *fa_linear_kernel(int wtype) noexcept
    double fa_dot_probe(int wtype, int64_t iters) noexcept nogil
    void fa_layer_norm_f32(const float *x, int64_t ldx, const float *residual, int64_t ldr,
                           int64_t m, int64_t n, const float *g, const float *b, float eps,
                           float *y, int64_t ldy) noexcept
    double fa_read_probe(const float *x, int64_t n) noexcept
    int fa_bf16_dot_product() noexcept
