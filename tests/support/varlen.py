"""References of packed variable-length problems (``attention_varlen``):
q is (total_q, H, D), k and v (total_k, Hkv, D / Dv), sequence b owns rows
``cq[b]:cq[b + 1]`` and keys ``ck[b]:ck[b + 1]``, and the lse comes back as
(H, total_q)."""

import numpy as np

from .compare import AttentionRefs, _reference, plan_kernel_varlen, to64_any


def varlen_s_max(q, k, cq, ck, scale=None):
    """max |scale * q.k| over the (query, key) pairs of each sequence."""
    q64, k64 = to64_any(q), to64_any(k)
    h, hkv, d = q.shape[1], k.shape[1], q.shape[2]
    scale = (1 / np.sqrt(d) if d else 1.0) if scale is None else scale
    best = 0.0
    for b in range(len(cq) - 1):
        qs = q64[cq[b]:cq[b + 1]].transpose(1, 0, 2)
        ks = np.repeat(k64[ck[b]:ck[b + 1]].transpose(1, 0, 2), h // hkv, axis=0)
        if qs.shape[1] and ks.shape[1]:
            with np.errstate(invalid="ignore"):
                s = np.abs(qs @ ks.transpose(0, 2, 1))
            s = s[np.isfinite(s)]
            if s.size:
                best = max(best, abs(scale) * float(s.max()))
    return best


class VarlenRefs:
    """Float64 / naive references of one ``attention_varlen`` problem, with
    ``check(out, lse)``; ``per_sequence`` as in
    ``reference.attention_varlen`` (e.g. an oracle's function)."""

    def __init__(self, q, k, v, cq, ck, per_sequence=None, **kw):
        reference = _reference()

        def fn(q, k, v, *, mask=None, return_lse=False, **kw):
            assert mask is None
            o, lse = reference.attention_varlen(q, k, v, cq, ck, return_lse=True,
                                                per_sequence=per_sequence, **kw)
            o = o.transpose(1, 0, 2)       # (H, total_q, Dv): rows like the lse's
            return (o, lse) if return_lse else o

        fn.rounds_p = getattr(per_sequence, "rounds_p", False)

        nk = int(np.diff(ck).max()) if len(ck) > 1 else 0
        kernel = plan_kernel_varlen(q, k, v, cq, ck, **kw)
        self.refs = AttentionRefs(q, k, v, fn=fn, nk=nk, kernel=kernel,
                                  s_max=varlen_s_max(q, k, cq, ck, kw.get("scale")), **kw)

    def check(self, out, lse=None):
        self.refs.check(out.transpose(1, 0, 2), lse)
