"""Weights in PyTorch and Hugging Face formats, read into and written from
NumPy arrays.

Two layers of helpers:

- generic ones that any model built on fastattn can use: :func:`to_numpy`
  (a tensor or array-like as an array), :func:`state_dict_arrays` (a
  ``state_dict()``, or any mapping of names to tensors, as NumPy arrays,
  optionally under a key prefix) and :func:`read_safetensors` (a
  ``.safetensors`` file, as Hugging Face models ship their weights);
- the layout of ``torch.nn.MultiheadAttention``:
  :func:`multihead_attention_weights` and :func:`multihead_attention_state_dict`,
  which :class:`fastattn.MultiHeadAttention` loads and saves through.

torch is never imported here unless torch tensors are handed in (then it
is loaded already); safetensors is imported only by :func:`read_safetensors`.
bfloat16 tensors become float32 arrays (exactly: every bfloat16 value is a
float32 value), since NumPy has no bfloat16 of its own.
"""
from __future__ import annotations

import os
from typing import Any, Dict, Mapping, NamedTuple, Optional, Tuple, Union

import numpy as np
from numpy.typing import NDArray

__all__ = ["to_numpy", "state_dict_arrays", "read_safetensors",
           "MultiheadAttentionWeights", "multihead_attention_weights",
           "multihead_attention_state_dict"]

Arrays = Dict[str, NDArray[Any]]

# safetensors dtype codes that NumPy reads as they are
_SAFETENSORS_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16,
                       "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8,
                       "U64": np.uint64, "U32": np.uint32, "U16": np.uint16, "U8": np.uint8,
                       "BOOL": np.bool_}


def _bf16_bits_to_float32(bits: NDArray[np.uint16]) -> NDArray[np.float32]:
    """bfloat16 values given by their 16-bit patterns, as float32 (the high
    half of a float32 is its bfloat16 rounding, so this is exact)."""
    return (bits.astype(np.uint32) << 16).view(np.float32)


def _is_torch_tensor(value: object) -> bool:
    t = type(value)
    return t.__module__.split(".")[0] == "torch" and hasattr(value, "detach")


def to_numpy(value: Any) -> NDArray[Any]:
    """``value`` as a NumPy array: a torch tensor is detached and moved to
    the CPU (bfloat16 widened to float32); anything else goes through
    ``numpy.asarray``."""
    if _is_torch_tensor(value):
        import torch

        t = value.detach().cpu()
        if t.dtype == torch.bfloat16:
            t = t.float()
        return np.asarray(t.numpy())
    return np.asarray(value)


def state_dict_arrays(state_dict: Mapping[str, Any], prefix: str = "") -> Arrays:
    """The entries of ``state_dict`` whose keys start with ``prefix``, with
    the prefix cut off, as real-valued NumPy arrays.

    Raises ``TypeError`` when ``state_dict`` is not a mapping, ``prefix``
    not a str, or a value does not hold real numbers.
    """
    if not isinstance(prefix, str):
        raise TypeError(f"prefix must be a str, got {type(prefix).__name__}")
    try:
        items = {k[len(prefix):]: v for k, v in state_dict.items()
                 if isinstance(k, str) and k.startswith(prefix)}
    except AttributeError:
        raise TypeError("state_dict must be a mapping of parameter names to arrays, "
                        f"got {type(state_dict).__name__}") from None
    arrays = {}
    for key, value in items.items():
        a = to_numpy(value)
        if a.dtype.kind not in "fiu":
            raise TypeError(f"state_dict[{prefix + key!r}] must hold real numbers, "
                            f"got dtype {a.dtype}")
        arrays[key] = a
    return arrays


def read_safetensors(path: Union[str, "os.PathLike[str]"], prefix: str = "") -> Arrays:
    """The tensors of a ``.safetensors`` file as NumPy arrays, keyed by name
    (only names starting with ``prefix``, which is cut off).  Needs the
    ``safetensors`` package (``pip install safetensors``); torch is not
    used.  Raises ``TypeError`` for a tensor of a dtype NumPy cannot hold.
    """
    try:
        import safetensors
    except ImportError as e:
        raise ImportError("reading .safetensors files needs the safetensors package; "
                          "install it with pip install safetensors") from e
    with open(os.fspath(path), "rb") as f:
        tensors = safetensors.deserialize(f.read())  # type: ignore[no-untyped-call]
    arrays = {}
    for name, spec in tensors:
        if not name.startswith(prefix):
            continue
        code = spec["dtype"]
        if code == "BF16":
            a = _bf16_bits_to_float32(np.frombuffer(spec["data"], dtype="<u2"))
        elif code in _SAFETENSORS_DTYPES:
            a = np.frombuffer(spec["data"], dtype=np.dtype(_SAFETENSORS_DTYPES[code])
                              .newbyteorder("<")).astype(_SAFETENSORS_DTYPES[code])
        else:
            raise TypeError(f"{name} has dtype {code}, which NumPy cannot hold")
        arrays[name[len(prefix):]] = a.reshape(spec["shape"])
    return arrays


# ---------------------------------------------------------------------------
# torch.nn.MultiheadAttention
# ---------------------------------------------------------------------------

class MultiheadAttentionWeights(NamedTuple):
    """The parameters of a ``torch.nn.MultiheadAttention`` with kdim ==
    vdim, in its ``(out_features, in_features)`` orientation."""

    w_q: NDArray[Any]               # (E, E)
    w_k: NDArray[Any]               # (E, C)
    w_v: NDArray[Any]               # (E, C)
    w_o: NDArray[Any]               # (E, E)
    b_in: Optional[NDArray[Any]]    # (3E,) or None
    b_o: Optional[NDArray[Any]]     # (E,) or None


_SEPARATE = ("q_proj_weight", "k_proj_weight", "v_proj_weight")


def _in_projection(arrays: Arrays, prefix: str) -> Tuple[NDArray[Any], ...]:
    """Pop the input projection weights (packed or separate) from arrays."""
    if "in_proj_weight" in arrays:
        if any(name in arrays for name in _SEPARATE):
            raise ValueError("state_dict has both in_proj_weight and "
                             "q_proj_weight/k_proj_weight/v_proj_weight")
        w_in = arrays.pop("in_proj_weight")
        if w_in.ndim != 2 or w_in.shape[0] != 3 * w_in.shape[1]:
            raise ValueError(f"in_proj_weight has shape {w_in.shape}; expected (3E, E)")
        E = w_in.shape[1]
        return w_in[:E], w_in[E:2 * E], w_in[2 * E:]
    if not all(name in arrays for name in _SEPARATE):
        missing = [n for n in _SEPARATE if n not in arrays]
        raise ValueError(f"state_dict needs in_proj_weight or all of {', '.join(_SEPARATE)}"
                         f" (missing {', '.join(prefix + m for m in missing)})")
    w_q, w_k, w_v = (arrays.pop(name) for name in _SEPARATE)
    if w_q.ndim != 2 or w_q.shape[0] != w_q.shape[1]:
        raise ValueError(f"q_proj_weight has shape {w_q.shape}; expected (E, E)")
    E = w_q.shape[0]
    for name, w in (("k_proj_weight", w_k), ("v_proj_weight", w_v)):
        if w.ndim != 2 or w.shape[0] != E:
            raise ValueError(f"{name} has shape {w.shape}; expected ({E}, kdim)")
    if w_k.shape[1] != w_v.shape[1]:
        raise ValueError(
            f"k_proj_weight has kdim {w_k.shape[1]} but v_proj_weight has vdim "
            f"{w_v.shape[1]}; MultiHeadAttention takes one context array for "
            "keys and values, so kdim must equal vdim")
    return w_q, w_k, w_v


def _biases(arrays: Arrays, E: int) -> Tuple[Optional[NDArray[Any]], Optional[NDArray[Any]]]:
    """Pop (in_proj_bias, out_proj.bias), both or neither, from arrays."""
    b_in = arrays.pop("in_proj_bias", None)
    b_o = arrays.pop("out_proj.bias", None)
    if b_in is None or b_o is None:
        if b_in is not None or b_o is not None:
            raise ValueError("state_dict has only one of in_proj_bias and out_proj.bias; "
                             "a torch.nn.MultiheadAttention has both or neither")
        return None, None
    if b_in.shape != (3 * E,):
        raise ValueError(f"in_proj_bias has shape {b_in.shape}; expected ({3 * E},)")
    if b_o.shape != (E,):
        raise ValueError(f"out_proj.bias has shape {b_o.shape}; expected ({E},)")
    return b_in, b_o


def multihead_attention_weights(state_dict: Mapping[str, Any], prefix: str = ""
                                ) -> MultiheadAttentionWeights:
    """The parameters of a ``torch.nn.MultiheadAttention`` from its state
    dict (keys under ``prefix``), checked for shape and completeness.

    Recognized keys: ``in_proj_weight`` ``(3E, E)``, or ``q_proj_weight (E,
    E)``, ``k_proj_weight (E, kdim)`` and ``v_proj_weight (E, vdim)`` (the
    form PyTorch uses when ``kdim`` or ``vdim`` differ from ``embed_dim``;
    here they must be equal, since one context feeds both); ``in_proj_bias
    (3E,)``; ``out_proj.weight (E, E)``; ``out_proj.bias (E,)``.  A module
    built with ``bias=False`` has no bias keys.  Raises
    ``ValueError`` for missing, unexpected or inconsistently shaped keys and
    for ``add_bias_kv`` modules (``bias_k``, ``bias_v``); ``TypeError`` as
    :func:`state_dict_arrays` does.
    """
    arrays = state_dict_arrays(state_dict, prefix)
    if "bias_k" in arrays or "bias_v" in arrays:
        raise ValueError("state_dict has bias_k/bias_v (add_bias_kv=True), "
                         "which MultiHeadAttention does not implement")
    w_q, w_k, w_v = _in_projection(arrays, prefix)
    E = w_q.shape[0]
    if "out_proj.weight" not in arrays:
        raise ValueError(f"state_dict has no {prefix}out_proj.weight")
    w_o = arrays.pop("out_proj.weight")
    if w_o.shape != (E, E):
        raise ValueError(f"out_proj.weight has shape {w_o.shape}; expected ({E}, {E})")
    b_in, b_o = _biases(arrays, E)
    if arrays:
        raise ValueError("state_dict has unexpected keys: "
                         + ", ".join(sorted(prefix + k for k in arrays)))
    return MultiheadAttentionWeights(w_q, w_k, w_v, w_o, b_in, b_o)


def multihead_attention_state_dict(params: Mapping[str, Optional[NDArray[Any]]],
                                   packed: bool) -> Arrays:
    """A ``torch.nn.MultiheadAttention`` state dict of NumPy arrays (copies)
    from the parameters ``w_q, w_k, w_v, w_o`` and, when present, ``b_q,
    b_k, b_v, b_o``: ``in_proj_weight`` when ``packed`` (kdim == vdim ==
    embed_dim) else ``q/k/v_proj_weight``, then ``in_proj_bias``,
    ``out_proj.weight`` and ``out_proj.bias``."""
    def get(name: str) -> NDArray[Any]:
        a = params[name]
        assert a is not None
        return a

    sd: Arrays = {}
    if packed:
        sd["in_proj_weight"] = np.concatenate([get("w_q"), get("w_k"), get("w_v")])
    else:
        for name in ("q", "k", "v"):
            sd[f"{name}_proj_weight"] = get(f"w_{name}").copy()
    bias = params.get("b_o") is not None
    if bias:
        sd["in_proj_bias"] = np.concatenate([get("b_q"), get("b_k"), get("b_v")])
    sd["out_proj.weight"] = get("w_o").copy()
    if bias:
        sd["out_proj.bias"] = get("b_o").copy()
    return sd
