"""fastattn.torch: CPU tensors in, tensors out, read in place.

Results are checked against the float64 NumPy reference under the suite's
rule: max|fast - ref64| <= 2 * max|naive - ref64| + a small floor, where
naive is the plain computation (scores, softmax, product) in the input's
own dtype, done here with torch.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from support import require

torch = require("torch", "fastattn.torch needs torch (the 'torch' extra)")
require("ml_dtypes", "bfloat16 tensors are read as ml_dtypes.bfloat16 storage")

import fastattn.torch as ft  # noqa: E402
from fastattn import reference  # noqa: E402

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
# unit roundoff of each dtype, for the floor of the rule
UNIT = {torch.float32: 2.0**-24, torch.float64: 2.0**-53, torch.float16: 2.0**-11,
        torch.bfloat16: 2.0**-8}


def _naive(q: Any, k: Any, v: Any, mask: Any, causal: Any, scale: float | None) -> Any:
    """Plain attention in the inputs' dtype (GQA by repeating heads)."""
    rep = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
    s = (q @ k.transpose(-1, -2)) * (scale if scale is not None else q.shape[-1] ** -0.5)
    nq, nk = s.shape[-2:]
    if causal:
        diag = torch.arange(nq)[:, None] + (0 if causal == "top_left" else nk - nq)
        s = s.masked_fill(torch.arange(nk)[None, :] > diag, float("-inf"))
    if mask is not None:
        s = s.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else s + mask
    return torch.softmax(s.float() if s.dtype in (torch.float16, torch.bfloat16) else s,
                         dim=-1).to(q.dtype) @ v


def _ref64(q: Any, k: Any, v: Any, mask: Any, causal: Any, scale: float | None) -> Any:
    def n(t: Any) -> Any:
        return None if t is None else (t.numpy() if t.dtype == torch.bool else
                                       t.double().numpy())

    return reference.attention(n(q), n(k), n(v), mask=n(mask), causal=causal, scale=scale)


def _check(out: Any, q: Any, k: Any, v: Any, mask: Any = None, causal: Any = False,
           scale: float | None = None) -> None:
    assert isinstance(out, torch.Tensor) and out.dtype == q.dtype
    assert out.shape == q.shape[:-1] + v.shape[-1:]
    ref = _ref64(q, k, v, mask, causal, scale)
    naive = _naive(q, k, v, mask, causal, scale).double().numpy()
    err = np.abs(out.double().numpy() - ref).max()
    bound = 2 * np.abs(naive - ref).max() + 4 * UNIT[q.dtype] * max(1.0, np.abs(ref).max())
    assert err <= bound, f"{q.dtype}: error {err:.3g} > bound {bound:.3g}"


def _qkv(dtype: Any, b: int = 2, h: int = 4, hkv: int = 2, nq: int = 9, nk: int = 13,
         d: int = 16, layout: str = "bhnd", seed: int = 0) -> tuple[Any, Any, Any]:
    g = torch.Generator().manual_seed(seed)

    def make(heads: int, n: int) -> Any:
        if layout == "bhnd":
            return torch.randn(b, heads, n, d, generator=g).to(dtype)
        # (B, N, H, D) storage seen as (B, H, N, D): strided, no copy
        return torch.randn(b, n, heads, d, generator=g).to(dtype).transpose(1, 2)

    return make(h, nq), make(hkv, nk), make(hkv, nk)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("layout", ["bhnd", "bnhd"])
@pytest.mark.parametrize("causal", [False, True, "top_left"])
def test_matches_reference(dtype: Any, layout: str, causal: Any) -> None:
    q, k, v = _qkv(dtype, layout=layout)
    _check(ft.attention(q, k, v, causal=causal), q, k, v, causal=causal)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("mask_kind", ["bool", "float32", "same"])
def test_masks(dtype: Any, mask_kind: str) -> None:
    """bool and additive masks, including float16 and bfloat16 ones (in the
    dtype of the model, as transformers builds them), broadcast over heads."""
    q, k, v = _qkv(dtype, seed=1)
    g = torch.Generator().manual_seed(2)
    keep = torch.rand(2, 1, 9, 13, generator=g) < 0.7
    keep[..., 0] = True
    if mask_kind == "bool":
        mask = keep
    else:
        mdt = torch.float32 if mask_kind == "float32" else dtype
        mask = torch.where(keep, torch.randn(2, 1, 9, 13, generator=g), -torch.inf).to(mdt)
    _check(ft.attention(q, k, v, mask=mask), q, k, v, mask=mask)


def test_odd_strides_and_scale() -> None:
    """A sliced, transposed, offset view with a stride-0 (expanded) batch."""
    base = torch.randn(3, 40, 6, 24)
    q = base[1:2, 3:20:2, :4, 4:20].transpose(1, 2).expand(2, 4, 9, 16)
    k = base[0:1, :13, 4:6, :16].transpose(1, 2).expand(2, 2, 13, 16)
    v = base[2:3, 5:18, 4:6, 8:].transpose(1, 2).expand(2, 2, 13, 16)
    assert not q.is_contiguous() and q.stride(0) == 0
    _check(ft.attention(q, k, v, scale=0.3), q, k, v, scale=0.3)


def test_inputs_read_in_place(monkeypatch: Any) -> None:
    """The kernel gets views of the tensors' own memory: same pointers and
    strides, bfloat16 bit for bit; out= is written in place."""
    seen: dict[str, Any] = {}
    real = ft._np_attention

    def spy(q: Any, k: Any, v: Any, **kw: Any) -> Any:
        seen.update(q=q, k=k, v=v, mask=kw["mask"], out=kw["out"])
        return real(q, k, v, **kw)

    monkeypatch.setattr(ft, "_np_attention", spy)
    for dtype in DTYPES:
        q, k, v = _qkv(dtype, layout="bnhd")
        mask = torch.zeros(2, 1, 9, 13, dtype=torch.bool)[..., :1].expand(2, 1, 9, 13)
        mask = ~mask
        out = torch.empty(2, 9, 4, 16, dtype=dtype).transpose(1, 2)
        res = ft.attention(q, k, v, mask=mask, out=out)
        assert res is out
        for name, t in (("q", q), ("k", k), ("v", v), ("mask", mask), ("out", out)):
            a = seen[name]
            assert a.__array_interface__["data"][0] == t.data_ptr(), name
            assert a.strides == tuple(s * t.element_size() for s in t.stride()), name
        if dtype == torch.bfloat16:
            assert seen["q"].dtype.name == "bfloat16"
            assert np.array_equal(seen["q"].view(np.int16), q.view(torch.int16).numpy())
        _check(out, q, k, v)


def test_result_shares_the_kernels_memory() -> None:
    q, k, v = _qkv(torch.bfloat16)
    out, lse, w = ft.attention(q, k, v, return_lse=True, return_weights=True)
    assert out.dtype == torch.bfloat16 and lse.dtype == torch.float32
    assert w.shape == (2, 4, 9, 13) and w.dtype == torch.bfloat16
    arr = ft.as_numpy(out)
    assert arr.__array_interface__["data"][0] == out.data_ptr()
    # weights sum to 1 per row; lse matches the float64 reference
    assert torch.allclose(w.float().sum(-1), torch.ones(2, 4, 9), atol=2e-2)
    _, lse64 = reference.attention(*(t.double().numpy() for t in (q, k, v)), return_lse=True)
    assert np.abs(lse.double().numpy() - lse64).max() < 1e-4 * max(1.0, np.abs(lse64).max())


def test_attention_weights_and_kv_lengths() -> None:
    q, k, v = _qkv(torch.float32, b=2, h=2, hkv=2)
    lens = torch.tensor([5, 13])
    w = ft.attention_weights(q, k, kv_lengths=lens, causal="top_left")
    keep = (torch.arange(13)[None, :] < lens[:, None])[:, None, None, :] & \
        (torch.arange(13)[None, :] <= torch.arange(9)[:, None])
    ref = torch.softmax((q.double() @ k.double().transpose(-1, -2) / 4)
                        .masked_fill(~keep, float("-inf")), dim=-1)
    assert torch.allclose(w.double(), ref, atol=1e-6)
    out = ft.attention(q, k, v, kv_lengths=lens, causal="top_left")
    _check(out, q, k, v, mask=keep, causal=False)


def test_errors() -> None:
    q, k, v = _qkv(torch.float32)
    with pytest.raises(ValueError, match="q requires grad.*no backward"):
        ft.attention(q.clone().requires_grad_(), k, v)
    with pytest.raises(ValueError, match="k is on device meta"):
        ft.attention(q, k.to("meta"), v)
    with pytest.raises(TypeError, match="v has dtype torch.int32"):
        ft.attention(q, k, v.to(torch.int32))
    with pytest.raises(TypeError, match="q must be a torch.Tensor, got ndarray"):
        ft.attention(q.numpy(), k, v)
    with pytest.raises(TypeError, match="k has layout"):
        ft.attention(q, k.to_sparse(), v)
    with pytest.raises(TypeError, match="mask has dtype torch.int64"):
        ft.attention(q, k, v, mask=torch.zeros(9, 13, dtype=torch.int64))
    with pytest.raises(TypeError, match="k has dtype float64 but q has float32"):
        ft.attention(q, k.double(), v)
    with pytest.raises(ValueError, match="k has head dim"):
        ft.attention(q, k[..., :8], v)
    with pytest.raises(ValueError, match="out requires grad"):
        ft.attention(q, k, v, out=torch.empty(2, 4, 9, 16, requires_grad=True))
    with pytest.raises(ValueError, match="q requires grad"):
        ft.attention_weights(q.clone().requires_grad_(), k)


def test_num_threads_per_call() -> None:
    """num_threads reaches the core: the same bits at 1 and 2 threads (the
    work split does not depend on the thread count), and bad counts raise."""
    g = torch.Generator().manual_seed(11)
    q = torch.randn(2, 8, 3, 32, generator=g)
    k, v = (torch.randn(2, 2, 700, 32, generator=g) for _ in range(2))
    one = ft.attention(q, k, v, causal=True, num_threads=1)
    two = ft.attention(q, k, v, causal=True, num_threads=2)
    assert isinstance(one, torch.Tensor) and torch.equal(one, two)
    assert torch.equal(ft.attention_weights(q, k, num_threads=1),
                       ft.attention_weights(q, k, num_threads=2))
    with pytest.raises(ValueError, match="num_threads"):
        ft.attention(q, k, v, num_threads=0)
    with pytest.raises(TypeError, match="num_threads"):
        ft.attention(q, k, v, num_threads=1.5)  # type: ignore[arg-type]
