"""Many sequences at once: decode and mixed batches over a PagedKVCache.

A batch of B sequences with ragged histories (uniform in [lo, hi] keys) is
held in a ``PagedKVCache`` with scattered pages.  One step is timed:

* **decode**: one query per sequence;
* **mixed**: most sequences decode, a few bring a chunk of their prompt
  (chunked prefill after their history).

Side by side, in one process, alternating, medians:

* ``paged``: ``fastattn.attention_paged``, one call for the whole batch;
* ``contiguous``: fastattn's own contiguous cache for the same histories
  (``KVCache.attend`` with per-row lengths; decode only, since a mixed step
  cannot be one call there);
* ``torch_mask``: torch SDPA over every sequence's keys end to end with the
  dense block-diagonal additive mask, what transformers' continuous
  batching runs on "sdpa" today (its gather of K/V is not timed);
* ``torch_loop``: torch SDPA called once per sequence on its own keys.

Decode is bound by memory: the table gives the bytes of K and V a step
reads per second and that as a % of ``_core.read_bandwidth()`` at the
same thread count.  Targets (issue "Many sequences at once"): decode of 32
sequences with 1k-8k histories in bfloat16 pages at >= 85% of the read
bandwidth, within 5% of the contiguous cache, >= 5x torch_mask.

``--generate`` times transformers' ``generate_batch`` end to end (16 ragged
prompts on a random Llama-style model, float32) with "sdpa" against the
same inside ``fastattn.integrations.transformers.continuous_batching()``,
and the share of each run's time spent in attention (the target: faster
than "sdpa").

Run with ``python -m pytest benchmarks/test_bench_paged.py`` (pytest-benchmark,
figures in ``extra_info``), or as a script for the table::

    python benchmarks/test_bench_paged.py [--rounds 9] [--threads 1 2]
        [--cases decode-32] [--page-sizes 16 32 64 128 256] [--no-torch]
    python benchmarks/test_bench_paged.py --generate [--rounds 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Tuple

import numpy as np
import pytest

import fastattn
from fastattn import _core
from fastattn._bench import cpu_model, time_calls

try:
    import ml_dtypes

    BF16: Any = ml_dtypes.bfloat16
except ImportError:  # pragma: no cover - ml_dtypes is a test dependency
    BF16 = None


class Case(NamedTuple):
    seqs: int          # sequences in the batch
    lo: int            # shortest history
    hi: int            # longest history
    chunks: int        # sequences that prefill a chunk (the others decode)
    chunk: int         # queries of a chunk
    h: int = 32
    hkv: int = 8
    d: int = 128


CASES: Dict[str, Case] = {
    "decode-8": Case(8, 256, 8192, 0, 0),
    "decode-32": Case(32, 1024, 8192, 0, 0),      # the target case
    "decode-64": Case(64, 256, 4096, 0, 0),
    "mixed-32": Case(32, 1024, 8192, 2, 256),
}
THREADS = (1, 2)


class Setup(NamedTuple):
    cache: fastattn.PagedKVCache
    ids: np.ndarray
    q: np.ndarray             # (total_q, H, D)
    cq: np.ndarray
    hist: np.ndarray          # keys per sequence, the chunk's own included
    k: List[np.ndarray]       # per sequence (Hkv, L, D), for the peers
    v: List[np.ndarray]


def make(case: Case, dtype: Any, page_size: int, seed: int = 0) -> Setup:
    rng = np.random.default_rng(seed)
    hist = rng.integers(case.lo, case.hi + 1, case.seqs)
    nq = np.ones(case.seqs, np.int64)
    nq[:case.chunks] = case.chunk
    hist = np.maximum(hist, nq)
    pages = int(sum(-(-int(n) // page_size) for n in hist)) + case.seqs
    cache = fastattn.PagedKVCache(case.hkv, case.d, num_pages=pages, max_seqs=case.seqs,
                                  page_size=page_size, dtype=dtype)
    ids = np.array([cache.allocate() for _ in range(case.seqs)])
    ks, vs = [], []
    adt = np.float32 if isinstance(dtype, str) else dtype    # int8: float rows, quantized
    # appended in rounds of one page per sequence: the pages interleave
    for n in hist:
        ks.append(rng.standard_normal((int(n), case.hkv, case.d), np.float32).astype(adt))
        vs.append(rng.standard_normal((int(n), case.hkv, case.d), np.float32).astype(adt))
    done = np.zeros(case.seqs, np.int64)
    while (done < hist).any():
        sel = np.flatnonzero(done < hist)
        add = np.minimum(hist[sel] - done[sel], page_size)
        cu = np.concatenate([[0], np.cumsum(add)])
        kk = np.concatenate([ks[b][done[b]:done[b] + a] for b, a in zip(sel, add)])
        vv = np.concatenate([vs[b][done[b]:done[b] + a] for b, a in zip(sel, add)])
        cache.append(ids[sel], kk, vv, cu_seqlens=cu)
        done[sel] += add
    cq = np.concatenate([[0], np.cumsum(nq)])
    q = rng.standard_normal((int(cq[-1]), case.h, case.d), np.float32).astype(adt)
    return Setup(cache, ids, q, cq, hist, [k.transpose(1, 0, 2) for k in ks],
                 [v.transpose(1, 0, 2) for v in vs])


def step_bytes(case: Case, s: Setup, itemsize: int) -> int:
    """Bytes of K and V one step reads."""
    return int(s.hist.sum()) * case.hkv * case.d * 2 * itemsize


def callers(case: Case, s: Setup, torch: Any) -> Dict[str, Callable[[], Any]]:
    calls: Dict[str, Callable[[], Any]] = {
        "paged": lambda: fastattn.attention_paged(s.q, s.cache, s.cq, s.ids, causal=True)}
    if case.chunks == 0 and s.cache.k_scale is None:
        contig = fastattn.KVCache(case.seqs, case.hkv, int(s.hist.max()), case.d,
                                  dtype=s.q.dtype)
        for b in range(case.seqs):
            contig.k[b, :, :s.hist[b]] = s.k[b]
            contig.v[b, :, :s.hist[b]] = s.v[b]
        contig.lengths[:] = s.hist
        qc = s.q[:, :, None, :].copy()          # (B, H, 1, D)
        calls["contiguous"] = lambda: contig.attend(qc, causal=True)
    if torch is None:
        return calls
    tdt = torch.bfloat16 if s.q.dtype == BF16 else torch.float32
    tq = [torch.from_numpy(s.q[s.cq[b]:s.cq[b + 1]].astype(np.float32)).to(tdt)
          .transpose(0, 1)[None] for b in range(case.seqs)]
    tk = [torch.from_numpy(k.astype(np.float32)).to(tdt)[None] for k in s.k]
    tv = [torch.from_numpy(v.astype(np.float32)).to(tdt)[None] for v in s.v]
    sdpa = torch.nn.functional.scaled_dot_product_attention

    masks = [None if s.cq[b + 1] - s.cq[b] == 1 else
             _causal_mask(torch, tq[b].shape[2], tk[b].shape[2], tdt) for b in range(case.seqs)]

    def loop() -> None:
        with torch.no_grad():
            for b in range(case.seqs):
                sdpa(tq[b], tk[b], tv[b], attn_mask=masks[b], enable_gqa=True)

    calls["torch_loop"] = loop
    # continuous batching's layout: all keys end to end, one block-diagonal mask
    qa = torch.cat(tq, dim=2)
    ka, va = torch.cat(tk, dim=2), torch.cat(tv, dim=2)
    mask = torch.full((qa.shape[2], ka.shape[2]), float("-inf"), dtype=tdt)
    k0 = 0
    for b in range(case.seqs):
        nq, nk = int(s.cq[b + 1] - s.cq[b]), int(s.hist[b])
        i = torch.arange(nq)[:, None] + (nk - nq)
        j = torch.arange(nk)[None, :]
        block = torch.where(j <= i, 0.0, float("-inf")).to(tdt)
        mask[int(s.cq[b]):int(s.cq[b + 1]), k0:k0 + nk] = block
        k0 += nk
    calls["torch_mask"] = lambda: _no_grad(torch, lambda: sdpa(qa, ka, va, attn_mask=mask,
                                                               enable_gqa=True))
    return calls


def _causal_mask(torch: Any, nq: int, nk: int, dtype: Any) -> Any:
    i = torch.arange(nq)[:, None] + (nk - nq)
    j = torch.arange(nk)[None, :]
    return torch.where(j <= i, 0.0, float("-inf")).to(dtype)


def _no_grad(torch: Any, fn: Callable[[], Any]) -> Any:
    with torch.no_grad():
        return fn()


def import_torch(enabled: bool = True) -> Optional[Any]:
    if not enabled:
        return None
    try:
        import torch
    except ImportError:
        return None
    return torch


def measure(name: str, threads: int, rounds: int, dtype: Any = None, page_size: int = 0,
            torch: Any = None) -> Dict[str, Any]:
    """One row: medians of each implementation, ratios, GB/s, % bandwidth."""
    dtype = BF16 if dtype is None else dtype
    page_size = page_size or fastattn.paged.DEFAULT_PAGE_SIZE
    case = CASES[name]
    s = make(case, dtype, page_size)
    fastattn.set_num_threads(threads)
    if torch is not None:
        torch.set_num_threads(threads)
    bw = float(_core.read_bandwidth())
    calls = callers(case, s, torch)
    # the dense-mask peer is far slower: fewer rounds of it would do, but
    # it alternates with the others like every peer
    times = time_calls(calls, rounds, alternate=True)
    med = {n: statistics.median(t) for n, t in times.items()}
    gbs = step_bytes(case, s, s.cache.dtype.itemsize) / med["paged"] / 1e9
    row: Dict[str, Any] = {"case": name, "threads": threads, "page_size": page_size,
                           "dtype": s.cache.dtype.name, "read_gbs": bw, "paged_gbs": gbs,
                           "paged_pct_bw": 100 * gbs / bw, "isa": _core.get_isa(),
                           "cpu": cpu_model()}
    for n, t in med.items():
        row[f"{n}_ms"] = t * 1e3
        if n != "paged":
            row[f"{n}_over_paged"] = t / med["paged"]
    return row


@pytest.mark.skipif(BF16 is None, reason="ml_dtypes (bfloat16) is not installed")
@pytest.mark.parametrize("threads", THREADS)
@pytest.mark.parametrize("name", ["decode-32", "mixed-32"])
def test_paged_step(benchmark, name, threads):
    row = measure(name, threads, rounds=3, torch=import_torch())
    benchmark.extra_info.update(row)
    s = make(CASES[name], BF16, fastattn.paged.DEFAULT_PAGE_SIZE)
    fastattn.set_num_threads(threads)
    benchmark.pedantic(lambda: fastattn.attention_paged(s.q, s.cache, s.cq, s.ids, causal=True),
                       rounds=3, warmup_rounds=1)


def generate_batch_times(threads: int, rounds: int, new_tokens: int = 32,
                         seed: int = 0) -> Dict[str, Any]:
    """generate_batch of 16 ragged prompts with "sdpa" and on fastattn:
    medians of alternating runs, and the attention share of each."""
    import time

    import torch
    import transformers
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    from fastattn.integrations.transformers import continuous_batching

    transformers.logging.set_verbosity_error()
    torch.set_num_threads(threads)
    fastattn.set_num_threads(threads)
    cfg = transformers.LlamaConfig(vocab_size=2000, hidden_size=512, intermediate_size=1408,
                                   num_hidden_layers=4, num_attention_heads=8,
                                   num_key_value_heads=2, max_position_embeddings=4096)
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(cfg, attn_implementation="sdpa").eval()
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(64, 1025, (16,), generator=g).tolist()
    prompts = [torch.randint(1, 2000, (n,), generator=g).tolist() for n in lengths]
    gen = transformers.GenerationConfig(max_new_tokens=new_tokens, do_sample=False,
                                        eos_token_id=-1)
    cbc = transformers.ContinuousBatchingConfig(
        num_blocks=sum(-(-(n + new_tokens) // 256) for n in lengths) + 16, page_size=256,
        max_batch_tokens=2048)
    spent = [0.0]

    def timed(fn: Callable[..., Any]) -> Callable[..., Any]:
        def run(*a: Any, **k: Any) -> Any:
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                spent[0] += time.perf_counter() - t
        return run

    def once(on_fastattn: bool) -> Tuple[float, float, Any]:
        from transformers import AttentionInterface
        original = ALL_ATTENTION_FUNCTIONS["sdpa"]
        spent[0] = 0.0
        t = time.perf_counter()
        if on_fastattn:
            with continuous_batching():
                AttentionInterface.register("sdpa", timed(ALL_ATTENTION_FUNCTIONS["sdpa"]))
                out = model.generate_batch(inputs=prompts, generation_config=gen,
                                           continuous_batching_config=cbc)
        else:
            AttentionInterface.register("sdpa", timed(original))
            try:
                out = model.generate_batch(inputs=prompts, generation_config=gen,
                                           continuous_batching_config=cbc)
            finally:
                AttentionInterface.register("sdpa", original)
        return time.perf_counter() - t, spent[0], out

    res: Dict[str, List[Tuple[float, float]]] = {"sdpa": [], "fastattn": []}
    tokens: Dict[str, Any] = {}
    with torch.inference_mode():
        once(False)                                     # warm-up
        for r in range(rounds):
            for name in (["sdpa", "fastattn"] if r % 2 == 0 else ["fastattn", "sdpa"]):
                total, attn, out = once(name == "fastattn")
                res[name].append((total, attn))
                tokens[name] = {k: v.generated_tokens for k, v in out.items()}
    row: Dict[str, Any] = {"threads": threads, "prompts": lengths, "new_tokens": new_tokens,
                           "same_tokens": tokens["sdpa"] == tokens["fastattn"],
                           "cpu": cpu_model(), "isa": _core.get_isa()}
    for name, runs in res.items():
        total = statistics.median(t for t, _ in runs)
        attn = statistics.median(a for _, a in runs)
        row[f"{name}_s"], row[f"{name}_attention_s"] = total, attn
        row[f"{name}_attention_share"] = attn / total
    row["speedup"] = row["sdpa_s"] / row["fastattn_s"]
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--threads", type=int, nargs="+", default=list(THREADS))
    ap.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    ap.add_argument("--page-sizes", type=int, nargs="+", default=[0])
    ap.add_argument("--dtype", choices=["bfloat16", "float32", "int8"], default="bfloat16")
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--generate", action="store_true",
                    help="time transformers' generate_batch instead")
    args = ap.parse_args()
    if args.generate:
        for th in args.threads:
            r = generate_batch_times(th, args.rounds)
            print(f"CPU: {r['cpu']}  threads {th}  generate_batch, 16 prompts "
                  f"{min(r['prompts'])}-{max(r['prompts'])} tokens, {r['new_tokens']} new: "
                  f"sdpa {r['sdpa_s']:.2f} s (attention {100 * r['sdpa_attention_share']:.0f}%)  "
                  f"fastattn {r['fastattn_s']:.2f} s (attention "
                  f"{100 * r['fastattn_attention_share']:.0f}%)  speedup {r['speedup']:.2f}x  "
                  f"same tokens: {r['same_tokens']}", flush=True)
        return
    dtype = {"bfloat16": BF16, "float32": np.float32, "int8": "int8"}[args.dtype]
    torch = import_torch(not args.no_torch)
    print(f"CPU: {cpu_model()}   ISA: {_core.get_isa()}   rounds: {args.rounds} "
          f"(alternating, medians)   pages: {args.dtype}")
    for name in args.cases:
        for th in args.threads:
            for ps in args.page_sizes:
                r = measure(name, th, args.rounds, dtype, ps, torch)
                peers = "  ".join(f"{k[:-3]} {v:.2f} ms ({r[k[:-3] + '_over_paged']:.2f}x)"
                                  for k, v in r.items() if k.endswith("_ms") and k != "paged_ms")
                print(f"{name:10} thr {th} page {r['page_size']:4}  paged {r['paged_ms']:8.2f} ms"
                      f"  {r['paged_gbs']:5.1f} GB/s = {r['paged_pct_bw']:3.0f}% of "
                      f"{r['read_gbs']:.1f}  |  {peers}", flush=True)


if __name__ == "__main__":
    main()
