"""A BERT-family encoder (embeddings, post-LayerNorm layers, GELU feed-forward)
in NumPy, with attention through :func:`fastattn.attention_varlen`.

Only real tokens are computed: the sentences of a batch are packed end to end
(no padding to a common length) and attention sees each sentence's own rows
through ``cu_seqlens`` offsets.

Bitwise batch and thread invariance
-----------------------------------
A sentence's output must not depend on its neighbours in a batch, on the batch
size or on the thread count.  Three things would break that:

* The matrix products.  A BLAS picks its kernels, and the edge code within
  them, by the shape of a call and by where a row falls in it (OpenBLAS's
  Haswell sgemm rounds rows 6-11 of every 12 differently from rows 0-5), so
  ``X @ W`` over a packed batch may round a row differently for other
  neighbours.  The products therefore run on :func:`fastattn.linear`, whose
  result for a row is computed by the same operations whatever the other
  rows are.  They run on row blocks of ``row_block`` rows (the packed rows
  are zero-padded up to a multiple of it), which bounds the scratch.
* The attention kernel choice.  The core runs a few-row kernel when the
  longest sequence of a call is very short and its tile kernel otherwise.
  Short sentences (up to the core's few-row bound, ``_few_rows()``) are
  therefore sent in calls that hold only sentences of the same length, so
  the choice is a function of the sentence alone.
* Reductions.  LayerNorm (:func:`fastattn.layer_norm`) reduces each row on
  its own and pooling adds each sentence's own rows in order, so no sum
  mixes sentences.

The bias, GELU and residual of each product run in its epilogue
(``fastattn.linear(..., activation="gelu", residual=...)``), and the
residual add before a LayerNorm is the product's, so the feed-forward block
makes one pass over its activations instead of five.

The thread count changes who computes a batch, never how: see
:class:`fastattn.models.SentenceEncoder`.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Sequence, Tuple

import numpy as np
import numpy.typing as npt

from .. import attention_varlen as _attention_varlen
from .. import explain as _explain
from ..linear import PackedLinear, layer_norm, linear, pack_linear

__all__ = ["BertConfig", "BertLayerWeights", "BertWeights", "BertModel"]

# the arithmetic of the linear products (BertModel's precision)
PRECISIONS = ("float32", "bfloat16", "int8")

F32 = npt.NDArray[np.float32]
I64 = npt.NDArray[np.int64]

# the public packed-batch attention (typed here for mypy --strict)
attention_varlen: Callable[..., Any] = _attention_varlen


@dataclass(frozen=True)
class BertConfig:
    """The architecture fields of a Hugging Face BERT ``config.json``."""

    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    max_position_embeddings: int
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "BertConfig":
        """Read a ``config.json`` dict; ValueError for an unsupported model."""
        act = d.get("hidden_act", "gelu")
        if act != "gelu":
            raise ValueError(f"config.json: hidden_act must be 'gelu' (erf), got {act!r}")
        pos = d.get("position_embedding_type", "absolute")
        if pos != "absolute":
            raise ValueError(f"config.json: position_embedding_type must be 'absolute', "
                             f"got {pos!r}")
        try:
            cfg = cls(vocab_size=int(d["vocab_size"]), hidden_size=int(d["hidden_size"]),
                      num_hidden_layers=int(d["num_hidden_layers"]),
                      num_attention_heads=int(d["num_attention_heads"]),
                      intermediate_size=int(d["intermediate_size"]),
                      max_position_embeddings=int(d["max_position_embeddings"]),
                      type_vocab_size=int(d.get("type_vocab_size", 2)),
                      layer_norm_eps=float(d.get("layer_norm_eps", 1e-12)))
        except KeyError as e:
            raise ValueError(f"config.json: missing field {e.args[0]!r}") from None
        if cfg.hidden_size % cfg.num_attention_heads != 0:
            raise ValueError(f"config.json: hidden_size {cfg.hidden_size} is not a multiple "
                             f"of num_attention_heads {cfg.num_attention_heads}")
        return cfg


@dataclass
class BertLayerWeights:
    """One encoder layer; matrices stored (in, out), C-contiguous."""

    qkv_w: F32   # (H, 3H): query, key and value side by side
    qkv_b: F32
    out_w: F32
    out_b: F32
    ln1_g: F32
    ln1_b: F32
    ff1_w: F32   # (H, I)
    ff1_b: F32
    ff2_w: F32   # (I, H)
    ff2_b: F32
    ln2_g: F32
    ln2_b: F32


@dataclass
class BertWeights:
    """Embedding tables, their LayerNorm and the layers."""

    word: F32
    position: F32
    token_type: F32
    ln_g: F32
    ln_b: F32
    layers: List[BertLayerWeights]

    @classmethod
    def from_state_dict(cls, config: BertConfig,
                        tensors: Mapping[str, npt.NDArray[Any]]) -> "BertWeights":
        """Take the tensors of a Hugging Face ``BertModel`` state dict (keys with
        or without a ``bert.`` prefix); ValueError naming a missing or
        misshapen tensor."""
        prefix = "bert." if "bert.embeddings.word_embeddings.weight" in tensors else ""
        h, inter = config.hidden_size, config.intermediate_size

        def get(name: str, shape: Tuple[int, ...]) -> F32:
            key = prefix + name
            if key not in tensors:
                raise ValueError(f"weights: tensor {key!r} is missing")
            a = np.asarray(tensors[key])
            if a.shape != shape:
                raise ValueError(f"weights: tensor {key!r} has shape {a.shape}, "
                                 f"expected {shape}")
            return np.ascontiguousarray(a, dtype=np.float32)

        def lin(name: str, n_in: int, n_out: int) -> Tuple[F32, F32]:
            w = get(name + ".weight", (n_out, n_in))   # torch Linear: (out, in)
            return np.ascontiguousarray(w.T), get(name + ".bias", (n_out,))

        layers = []
        for i in range(config.num_hidden_layers):
            p = f"encoder.layer.{i}."
            qw, qb = lin(p + "attention.self.query", h, h)
            kw, kb = lin(p + "attention.self.key", h, h)
            vw, vb = lin(p + "attention.self.value", h, h)
            ow, ob = lin(p + "attention.output.dense", h, h)
            f1w, f1b = lin(p + "intermediate.dense", h, inter)
            f2w, f2b = lin(p + "output.dense", inter, h)
            layers.append(BertLayerWeights(
                qkv_w=np.ascontiguousarray(np.concatenate([qw, kw, vw], axis=1)),
                qkv_b=np.concatenate([qb, kb, vb]), out_w=ow, out_b=ob,
                ln1_g=get(p + "attention.output.LayerNorm.weight", (h,)),
                ln1_b=get(p + "attention.output.LayerNorm.bias", (h,)),
                ff1_w=f1w, ff1_b=f1b, ff2_w=f2w, ff2_b=f2b,
                ln2_g=get(p + "output.LayerNorm.weight", (h,)),
                ln2_b=get(p + "output.LayerNorm.bias", (h,))))
        return cls(word=get("embeddings.word_embeddings.weight", (config.vocab_size, h)),
                   position=get("embeddings.position_embeddings.weight",
                                (config.max_position_embeddings, h)),
                   token_type=get("embeddings.token_type_embeddings.weight",
                                  (config.type_vocab_size, h)),
                   ln_g=get("embeddings.LayerNorm.weight", (h,)),
                   ln_b=get("embeddings.LayerNorm.bias", (h,)), layers=layers)


@functools.lru_cache(maxsize=1)
def _few_rows() -> int:
    """The most query rows per kv head for which the core runs its few-row
    kernel, as its plan of a one-query call says (``q_block`` of the
    ``"rows"`` kernel); 0 where that plan is another kernel."""
    q = np.zeros((1, 1, 1, 32), dtype=np.float32)
    plan = _explain(q, q, q)
    return int(plan["q_block"]) if plan["kernel"] == "rows" else 0


def _attention_groups(lens: I64) -> List[Tuple[int, int]]:
    """Runs of consecutive sentences that may share one attention call:
    long sentences together, short ones (up to ``_few_rows()`` tokens, the
    bound of the core's few-row kernel) only with sentences of their length."""
    short = _few_rows()
    groups: List[Tuple[int, int]] = []
    start = 0
    for i in range(1, len(lens) + 1):
        if i == len(lens):
            groups.append((start, i))
            break
        a, b = int(lens[i - 1]), int(lens[i])
        if (a <= short or b <= short) and a != b:
            groups.append((start, i))
            start = i
    return groups


class BertModel:
    """A BERT encoder over packed batches of token ids.

    Parameters
    ----------
    config : BertConfig
    weights : BertWeights
    row_block : int
        Rows of every matrix product (see the module docstring).
    precision : {"float32", "bfloat16", "int8"}
        The arithmetic of the linear products (``pack_linear``'s dtype):
        bfloat16 rounds the weights once and each product's input once, and
        sums in float32; int8 quantizes the weights per output channel and
        each product's input per row and block of 32 along K, with exact
        integer sums per block.  Attention, LayerNorm, the epilogues and
        the residual stream stay float32 (docs/numerics.md gives each
        precision's accuracy on MiniLM).

    The linear weights are packed for :func:`fastattn.linear` when the model
    is made: later changes to ``weights`` do not reach the products (make a
    new model instead).
    """

    def __init__(self, config: BertConfig, weights: BertWeights, row_block: int = 256,
                 precision: str = "float32") -> None:
        if row_block < 1:
            raise ValueError(f"row_block must be >= 1, got {row_block}")
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {list(PRECISIONS)}, got {precision!r}")
        self.config = config
        self.weights = weights
        self.row_block = int(row_block)
        self.precision = precision
        # each layer's products, packed once: (qkv, out, ff1, ff2); the
        # weights are stored (in, out), pack_linear takes (out, in)
        self._packed: List[Tuple[PackedLinear, ...]] = [
            tuple(pack_linear(wt.T, b, dtype=precision) for wt, b in ((lw.qkv_w, lw.qkv_b), (lw.out_w, lw.out_b),
                                                     (lw.ff1_w, lw.ff1_b), (lw.ff2_w, lw.ff2_b)))
            for lw in weights.layers]

    def hidden_states(self, ids: Sequence[npt.NDArray[np.integer[Any]]]) -> Tuple[F32, I64]:
        """Last hidden states of the sentences ``ids`` (token id arrays),
        packed: returns ``(states (total, H), cu_seqlens (B + 1,))``."""
        cfg, w, r = self.config, self.weights, self.row_block
        lens = np.array([len(a) for a in ids], dtype=np.int64)
        if lens.size and (lens.min() < 1 or lens.max() > cfg.max_position_embeddings):
            raise ValueError(f"ids: every sentence needs 1 to {cfg.max_position_embeddings} "
                             f"tokens, got lengths {lens.min()}..{lens.max()}")
        cu = np.zeros(len(lens) + 1, dtype=np.int64)
        np.cumsum(lens, out=cu[1:])
        n = int(cu[-1])
        n_pad = -(-n // r) * r
        x = np.zeros((n_pad, cfg.hidden_size), dtype=np.float32)
        if n == 0:
            return x[:0], cu
        tok = np.concatenate([np.asarray(a, dtype=np.int64) for a in ids])
        if tok.min() < 0 or tok.max() >= cfg.vocab_size:
            raise ValueError(f"ids: token ids must be in [0, {cfg.vocab_size})")
        pos = np.arange(n, dtype=np.int64) - np.repeat(cu[:-1], lens)
        np.add(w.word[tok], w.token_type[0], out=x[:n])
        x[:n] += w.position[pos]
        layer_norm(x, w.ln_g, w.ln_b, cfg.layer_norm_eps, out=x)
        groups = _attention_groups(lens)
        for layer, packed in zip(w.layers, self._packed):
            self._layer(x, n, cu, groups, layer, packed)
        return x[:n], cu

    def _layer(self, x: F32, n: int, cu: I64, groups: List[Tuple[int, int]],
               lw: BertLayerWeights, packed: Tuple[PackedLinear, ...]) -> None:
        """One post-LN encoder layer on the packed rows ``x``, in place."""
        cfg, r = self.config, self.row_block
        n_pad, h = x.shape
        nh, hd = cfg.num_attention_heads, cfg.head_dim
        qkv = np.empty((n_pad, 3 * h), dtype=np.float32)
        p_qkv, p_out, p_ff1, p_ff2 = packed
        for s in range(0, n_pad, r):
            linear(x[s:s + r], p_qkv, out=qkv[s:s + r])
        q4 = qkv.reshape(n_pad, 3, nh, hd)
        ctx = np.zeros((n_pad, nh, hd), dtype=np.float32)
        for a, b in groups:
            lo, hi = int(cu[a]), int(cu[b])
            local = cu[a:b + 1] - cu[a]
            attention_varlen(q4[lo:hi, 0], q4[lo:hi, 1], q4[lo:hi, 2], local, local,
                             out=ctx[lo:hi])
        ctx2 = ctx.reshape(n_pad, h)
        att = np.empty((r, h), dtype=np.float32)
        ff = np.empty((r, cfg.intermediate_size), dtype=np.float32)
        eps = cfg.layer_norm_eps
        # the bias, GELU and residual ride in the products' epilogues; the
        # LayerNorms run in place on rows that are still in cache
        for s in range(0, n_pad, r):
            blk = x[s:s + r]
            linear(ctx2[s:s + r], p_out, residual=blk, out=att)
            layer_norm(att, lw.ln1_g, lw.ln1_b, eps, out=att)
            linear(att, p_ff1, activation="gelu", out=ff)
            linear(ff, p_ff2, residual=att, out=blk)
            layer_norm(blk, lw.ln2_g, lw.ln2_b, eps, out=blk)

    def mean_pooled(self, ids: Sequence[npt.NDArray[np.integer[Any]]],
                    normalize: bool = True) -> F32:
        """Mean of each sentence's last hidden states (all its tokens), then
        L2 normalization when ``normalize``: shape (B, H)."""
        states, cu = self.hidden_states(ids)
        if len(ids) == 0:
            return np.zeros((0, self.config.hidden_size), dtype=np.float32)
        sums = np.add.reduceat(states, cu[:-1], axis=0)
        sums /= np.diff(cu).astype(np.float32)[:, None]
        if normalize:
            norm = np.sqrt(np.square(sums).sum(axis=1, keepdims=True))
            np.maximum(norm, np.float32(1e-12), out=norm)
            sums /= norm
        return sums


def config_dict(config: BertConfig) -> Dict[str, Any]:
    """``config.json`` fields of ``config`` (for writing a model folder)."""
    return {"model_type": "bert", "hidden_act": "gelu", "position_embedding_type": "absolute",
            **config.__dict__}
