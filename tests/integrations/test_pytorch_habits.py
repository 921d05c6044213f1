"""PyTorch habits meet fastattn's NumPy API: the error says what to do.

Contract:

* PyTorch's option names (``is_causal``, ``attn_mask``, ``dropout_p``,
  ``enable_gqa``) passed to any public function that takes attention
  options (``attention``, ``attention_weights``, ``attention_varlen``,
  ``explain``, ``KVCache.attend``, ``MultiHeadAttention``, and the torch
  adapter's ``attention`` and ``attention_weights``) raise ``TypeError``
  naming fastattn's spelling: ``causal="top_left"`` for ``is_causal``
  (PyTorch's diagonal is top-left aligned, fastattn's ``causal=True``
  bottom-right), ``mask=`` for ``attn_mask`` (the same polarity), no
  dropout, automatic grouped-query attention.  Options passed by position,
  as PyTorch allows, get a note that they are keyword-only.
* Other unknown keywords keep Python's message, and ``explain`` names
  itself in it.
* A torch tensor passed to the NumPy API raises ``TypeError`` naming the
  argument, ``torch.Tensor`` and the way to pass tensors (``fastattn.torch``).
  Errors about other arguments are not reworded.
* The decorated functions keep their signatures.
"""

import inspect

import numpy as np
import pytest

import fastattn
from support import randn, require

TOP_LEFT = r"causal='top_left'"


def _qkv(rng, h=2, hkv=2, nq=4, nk=6, d=8):
    return randn(rng, (1, h, nq, d)), randn(rng, (1, hkv, nk, d)), randn(rng, (1, hkv, nk, d))


def _cache(rng):
    c = fastattn.KVCache(1, 2, 8, 8)
    c.append(randn(rng, (1, 2, 6, 8)), randn(rng, (1, 2, 6, 8)))
    return c


def _numpy_entries(rng):
    """name -> call(**options) of every NumPy entry taking attention options."""
    q, k, v = _qkv(rng)
    packed = [a[0].transpose(1, 0, 2) for a in (q, k, v)]
    layer = fastattn.MultiHeadAttention(16, 2, rng=0)
    x = randn(rng, (1, 4, 16))
    return {
        "attention": lambda **kw: fastattn.attention(q, k, v, **kw),
        "attention_weights": lambda **kw: fastattn.attention_weights(q, k, **kw),
        "attention_varlen": lambda **kw: fastattn.attention_varlen(*packed, [0, 4], [0, 6],
                                                                   **kw),
        "explain": lambda **kw: fastattn.explain(q, k, v, **kw),
        "KVCache.attend": lambda **kw: _cache(rng).attend(q, **kw),
        "MultiHeadAttention.__call__": lambda **kw: layer(x, **kw),
    }


@pytest.mark.parametrize("entry", ["attention", "attention_weights", "attention_varlen",
                                   "explain", "KVCache.attend", "MultiHeadAttention.__call__"])
def test_is_causal_names_causal_top_left(rng, entry):
    call = _numpy_entries(rng)[entry]
    for value in (True, False):
        with pytest.raises(TypeError, match=rf"{entry}\(\).*'is_causal'") as e:
            call(is_causal=value)
        assert TOP_LEFT in str(e.value) and "bottom-right" in str(e.value)


@pytest.mark.parametrize("entry", ["attention", "attention_weights", "explain",
                                   "KVCache.attend", "MultiHeadAttention.__call__"])
def test_attn_mask_names_mask(rng, entry):
    call = _numpy_entries(rng)[entry]
    with pytest.raises(TypeError, match=r"'attn_mask': fastattn spells it mask=.*True = "
                                        r"may attend"):
        call(attn_mask=np.ones((4, 6), bool))


def test_attn_mask_of_varlen_says_it_takes_no_mask(rng):
    call = _numpy_entries(rng)["attention_varlen"]
    with pytest.raises(TypeError, match=r"'attn_mask' \(PyTorch's name for fastattn's mask=, "
                                        r"which attention_varlen does not take\)"):
        call(attn_mask=np.ones((4, 6), bool))


@pytest.mark.parametrize("entry", ["attention", "attention_weights", "attention_varlen",
                                   "explain", "KVCache.attend"])
def test_dropout_and_gqa_flags_are_explained(rng, entry):
    call = _numpy_entries(rng)[entry]
    with pytest.raises(TypeError, match=r"'dropout_p'.*no dropout"):
        call(dropout_p=0.0)
    with pytest.raises(TypeError, match=r"'enable_gqa'.*fewer heads"):
        call(enable_gqa=True)


def test_the_hints_are_right(rng):
    # PyTorch's is_causal=True is the mask ones(Nq, Nk).tril(): causal="top_left",
    # not causal=True when Nq < Nk; and the bool mask keeps its polarity
    q, k, v = _qkv(rng, h=4, hkv=2, nq=4, nk=6)
    torch_causal = np.tril(np.ones((4, 6), bool))
    want = fastattn.attention(q, k, v, mask=torch_causal)
    np.testing.assert_allclose(fastattn.attention(q, k, v, causal="top_left"), want,
                               rtol=1e-6, atol=1e-6)
    assert not np.allclose(fastattn.attention(q, k, v, causal=True), want)


def test_positional_options_are_keyword_only(rng):
    q, k, v = _qkv(rng)
    # PyTorch's scaled_dot_product_attention(q, k, v, attn_mask, dropout_p, is_causal)
    with pytest.raises(TypeError, match=r"takes 3 positional arguments but 6 were given: "
                                        r"the options of attention\(\) are keyword-only"):
        fastattn.attention(q, k, v, None, 0.0, True)
    with pytest.raises(TypeError, match=r"keyword-only.*causal='top_left'"):
        _cache(rng).attend(q, None)


def test_other_unknown_keywords_keep_pythons_message(rng):
    q, k, v = _qkv(rng)
    for call in (lambda: fastattn.attention(q, k, v, bogus=1),
                 lambda: _cache(rng).attend(q, bogus=1)):
        with pytest.raises(TypeError) as e:
            call()
        assert str(e.value).endswith("got an unexpected keyword argument 'bogus'")
    with pytest.raises(TypeError, match=r"^explain\(\) got an unexpected keyword argument "
                                        r"'bogus'$"):
        fastattn.explain(q, k, v, bogus=1)
    # a missing argument is Python's own error
    with pytest.raises(TypeError, match=r"missing 1 required positional argument: 'v'"):
        fastattn.attention(q, k)


def test_signatures_are_unchanged():
    for fn in (fastattn.attention, fastattn.attention_weights, fastattn.attention_varlen,
               fastattn.explain, fastattn.KVCache.attend, fastattn.KVCache.append,
               fastattn.MultiHeadAttention.__call__):
        assert inspect.signature(fn) == inspect.signature(fn.__wrapped__)
        assert fn.__doc__ == fn.__wrapped__.__doc__ and fn.__name__ == fn.__wrapped__.__name__
    params = inspect.signature(fastattn.attention).parameters
    assert list(params)[:3] == ["q", "k", "v"] and "causal" in params and "mask" in params
    assert not any(p.kind == p.VAR_KEYWORD for p in params.values())


def test_torch_adapter_names_the_spellings_too(rng):
    torch = require("torch", "the torch adapter needs torch")
    from fastattn import torch as fatorch
    q, k, v = (torch.from_numpy(a) for a in _qkv(rng))
    with pytest.raises(TypeError, match=rf"'is_causal'.*{TOP_LEFT}"):
        fatorch.attention(q, k, v, is_causal=True)
    with pytest.raises(TypeError, match=r"'attn_mask'.*mask="):
        fatorch.attention_weights(q, k, attn_mask=None)
    # its own errors about tensors are not reworded
    with pytest.raises(TypeError, match=r"^q must be a torch\.Tensor, got ndarray$"):
        fatorch.attention(q.numpy(), k, v)


# ---------------------------------------------------------------- torch tensors

def test_torch_tensors_point_to_fastattn_torch(rng):
    torch = require("torch", "torch tensors are what is tested")
    q, k, v = _qkv(rng)
    tq, tk, tv = (torch.from_numpy(a) for a in (q, k, v))
    use_torch = r"takes NumPy arrays: use fastattn\.torch\.attention\b"
    for call, pattern in [
        (lambda: fastattn.attention(tq, tk, tv), r"^q is a torch\.Tensor; fastattn\.attention"
                                                 rf"\(\) {use_torch}"),
        (lambda: fastattn.attention(q, k, tv), r"^v is a torch\.Tensor"),
        (lambda: fastattn.attention(q, k, v, mask=torch.ones(4, 6, dtype=torch.bool)),
         r"^mask is a torch\.Tensor"),
        (lambda: fastattn.attention(q, k, v, out=torch.empty(1, 2, 4, 8)),
         r"^out is a torch\.Tensor"),
        (lambda: fastattn.attention(tq, tk, tv.detach().requires_grad_()),
         r"^q is a torch\.Tensor"),
        (lambda: fastattn.attention(torch.nn.Parameter(tq), tk, tv),
         r"^q is a torch\.nn\.parameter\.Parameter; .*fastattn\.torch\.attention"),
        (lambda: fastattn.attention_weights(q, tk),
         r"^k is a torch\.Tensor; .*use fastattn\.torch\.attention_weights\b"),
        (lambda: fastattn.explain(tq, tk, tv), r"^q is a torch\.Tensor; fastattn\.explain\(\) "
                                               r".*fastattn\.torch\.as_numpy"),
        (lambda: fastattn.explain(q, k, v, mask=torch.ones(4, 6, dtype=torch.bool)),
         r"^mask is a torch\.Tensor"),
        (lambda: fastattn.attention_varlen(tq[0].transpose(0, 1), tk[0].transpose(0, 1),
                                           tv[0].transpose(0, 1), [0, 4], [0, 6]),
         r"^q is a torch\.Tensor; fastattn\.attention_varlen\(\) .*fastattn\.torch\.as_numpy"),
    ]:
        with pytest.raises(TypeError, match=pattern):
            call()


def test_torch_tensors_in_the_cache_and_the_layer(rng):
    torch = require("torch", "torch tensors are what is tested")
    c = fastattn.KVCache(1, 2, 8, 8)
    k, v = randn(rng, (1, 2, 3, 8)), randn(rng, (1, 2, 3, 8))
    with pytest.raises(TypeError, match=r"^k is a torch\.Tensor; fastattn\.KVCache\.append\(\) "
                                        r"takes NumPy arrays: .*fastattn\.torch\.as_numpy"):
        c.append(torch.from_numpy(k), torch.from_numpy(v))
    assert c.lengths.tolist() == [0]
    c.append(k, v)
    q = randn(rng, (1, 4, 1, 8))
    with pytest.raises(TypeError, match=r"^q is a torch\.Tensor; fastattn\.KVCache\.attend\(\)"):
        c.attend(torch.from_numpy(q))
    with pytest.raises(TypeError, match=r"^mask is a torch\.Tensor; fastattn\.KVCache\.attend"):
        c.attend(q, mask=torch.ones(1, 3, dtype=torch.bool))
    layer = fastattn.MultiHeadAttention(16, 2, rng=0)
    with pytest.raises(TypeError, match=r"^x is a torch\.Tensor; .*\.numpy\(\)"):
        layer(torch.zeros(1, 3, 16))
    # the pointer's way works
    from fastattn import torch as fatorch
    np.testing.assert_array_equal(c.attend(fatorch.as_numpy(torch.from_numpy(q))), c.attend(q))


def test_errors_about_other_arguments_are_not_reworded(rng):
    torch = require("torch", "torch tensors are what is tested")
    c = fastattn.KVCache(2, 1, 8, 4)
    # a torch tensor that is accepted (lengths are converted) next to a bad k
    with pytest.raises(TypeError, match=r"^k has dtype float64 but the cache holds float32$"):
        c.append(np.zeros((2, 1, 3, 4)), np.zeros((2, 1, 3, 4), np.float32),
                 lengths=torch.tensor([1, 2]))
    c.append(np.ones((2, 1, 3, 4), np.float32), np.ones((2, 1, 3, 4), np.float32),
             lengths=torch.tensor([1, 2]))
    assert c.lengths.tolist() == [1, 2]
    q, k, v = _qkv(rng)
    with pytest.raises(TypeError, match=r"^precision must be a str"):
        fastattn.attention(q, k, v, out=torch.empty(1, 2, 4, 8), precision=1)
