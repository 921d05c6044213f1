"""MultiHeadAttention layer benchmarks: fastattn's layer vs the same layer
with the NumPy reference attention vs torch.nn.MultiheadAttention.

Run from the repository root::

    python -m pytest benchmarks/test_bench_layer.py
    python benchmarks/test_bench_layer.py --threads 2 --repeat 12   # interleaved side by side

All three compute the same function on the same float32 weights and inputs,
shape (B, N, E) = (8, 256, 512) with 8 heads of 64:

* ``fastattn``: ``fastattn.MultiHeadAttention`` (one GEMM for Q, K and V,
  heads as strided views, the fused kernel writing into the merge buffer,
  one GEMM for the output).
* ``reference``: the same projections in NumPy (the same single GEMMs), and
  ``fastattn.reference.attention`` for the attention; the merge is a
  transposing copy.
* ``torch``: ``torch.nn.MultiheadAttention(batch_first=True)`` loaded with
  the same weights, ``need_weights=False``, under ``torch.no_grad()``.

The projections are 8 * B * N * E^2 FLOPs (4.3 GFLOP here) and the attention
4 * B * H * N^2 * D (1.1 GFLOP, half of it with causal), so the layer's time
is mostly GEMMs that all three share; ``extra_info`` records both counts.
The thread count of each implementation is set to the benchmark's: fastattn
via ``set_num_threads``, torch via ``torch.set_num_threads`` and NumPy's BLAS
(the projections of ``fastattn`` and ``reference``) via threadpoolctl when it
is installed.

Two thread pools take turns in the NumPy-based layers: OpenBLAS's for the
projections and fastattn's OpenMP pool for the kernel.  By default both
spin for a while after their work is done, and on a machine with no spare
cores the spinning threads slow the other pool down; torch has one pool for
everything.  ``OMP_WAIT_POLICY=passive OPENBLAS_THREAD_TIMEOUT=4`` (set
before Python starts) make both go to sleep at once.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys

import numpy as np
import pytest

from fastattn._bench import blas_limit, time_calls  # blas_limit: threadpoolctl or a no-op

B, N, E, H = 8, 256, 512, 8
D = E // H
IMPLS = ["fastattn", "reference", "torch"]
THREADS = [1, 2]


def flop_counts(causal):
    proj = 8 * B * N * E * E                     # Q, K, V and output projections
    pairs = N * (N + 1) // 2 if causal else N * N
    attn = 4 * B * H * pairs * D
    return proj, attn


def make_layer_and_input(seed=0):
    import fastattn

    rng = np.random.default_rng(seed)
    layer = fastattn.MultiHeadAttention(E, H, rng=seed)
    for p in (layer.b_q, layer.b_k, layer.b_v, layer.b_o):
        p[...] = 0.1 * rng.standard_normal(p.shape)
    x = rng.standard_normal((B, N, E)).astype(np.float32)
    return layer, x


def reference_layer(layer, x, causal=False, w_in=None, b_in=None):
    """The layer with fastattn.reference.attention in place of the kernel.
    ``w_in``, ``b_in``: the stacked Q, K, V weights and biases (computed
    here when not given; pass them to keep the stacking out of a timing)."""
    from fastattn import reference

    if w_in is None:
        w_in = np.concatenate([layer.w_q, layer.w_k, layer.w_v])
        b_in = np.concatenate([layer.b_q, layer.b_k, layer.b_v])
    b, n, e = x.shape
    hd = layer.num_heads * layer.head_dim
    qkv = x.reshape(b * n, e) @ w_in.T
    qkv += b_in
    qkv = qkv.reshape(b, n, 3, layer.num_heads, layer.head_dim)
    q, k, v = (qkv[:, :, i].transpose(0, 2, 1, 3) for i in range(3))
    o = reference.attention(q, k, v, causal=causal)
    y = o.transpose(0, 2, 1, 3).reshape(b * n, hd) @ layer.w_o.T
    y += layer.b_o
    return y.reshape(b, n, e)


def make_runner(impl, layer, x, causal, threads):
    """A zero-argument callable computing the layer with ``impl``."""
    import fastattn

    if impl == "fastattn":
        fastattn.set_num_threads(threads)

        def run():
            with blas_limit(threads):          # the projections are NumPy GEMMs
                return layer(x, causal=causal)
        return run
    if impl == "reference":
        w_in = np.concatenate([layer.w_q, layer.w_k, layer.w_v])
        b_in = np.concatenate([layer.b_q, layer.b_k, layer.b_v])

        def run():
            with blas_limit(threads):
                return reference_layer(layer, x, causal, w_in, b_in)
        return run
    if impl == "torch":
        import torch

        torch.set_num_threads(threads)
        module = torch.nn.MultiheadAttention(E, H, batch_first=True).eval()
        module.load_state_dict({k: torch.from_numpy(v)
                                for k, v in layer.to_torch_state_dict().items()})
        tx = torch.from_numpy(x)
        mask = torch.triu(torch.ones(N, N, dtype=torch.bool), 1) if causal else None

        def run():
            with torch.no_grad():
                return module(tx, tx, tx, attn_mask=mask, is_causal=causal,
                              need_weights=False)[0]
        return run
    raise ValueError(f"unknown implementation {impl!r}")


# ---------------------------------------------------------------------------
# pytest-benchmark
# ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def layer_and_input():
    pytest.importorskip("fastattn")
    return make_layer_and_input()


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("threads", THREADS, ids=[f"t{t}" for t in THREADS])
def test_layer(benchmark, layer_and_input, fma_peak_gflops, impl, causal, threads):
    pytest.importorskip("pytest_benchmark", reason="the benchmarks need pytest-benchmark")
    if threads > (os.cpu_count() or 1):
        pytest.skip(f"{threads} threads requested, {os.cpu_count()} CPUs available")
    torch_threads = None
    if impl == "torch":
        torch = pytest.importorskip(
            "torch", reason="torch is not installed (pip install '.[bench]')")
        torch_threads = torch.get_num_threads()
    import fastattn

    layer, x = layer_and_input
    try:
        run = make_runner(impl, layer, x, causal, threads)
        # all three agree before anything is timed
        expected = reference_layer(layer, x, causal)
        np.testing.assert_allclose(np.asarray(run()), expected, rtol=1e-4, atol=1e-4)

        proj, attn = flop_counts(causal)
        benchmark.group = f"layer b{B}-n{N}-e{E}-h{H}{'-causal' if causal else ''} t{threads}"
        benchmark.extra_info.update(
            impl=impl, isa=fastattn.info().get("isa"), threads=threads,
            B=B, N=N, E=E, H=H, D=D, causal=causal, dtype="float32",
            projection_flops=proj, attention_flops=attn, flops=proj + attn,
            peak_gflops_per_core=(None if fma_peak_gflops is None
                                  else round(fma_peak_gflops, 3)),
        )
        benchmark.pedantic(run, rounds=12, warmup_rounds=1, iterations=1)
        if benchmark.stats is not None:
            median = benchmark.stats.stats.median
            benchmark.extra_info["gflops"] = round((proj + attn) / median / 1e9, 2)
    finally:
        if torch_threads is not None:
            torch.set_num_threads(torch_threads)


# ---------------------------------------------------------------------------
# interleaved side-by-side timing
# ---------------------------------------------------------------------------

def side_by_side(threads, repeat, causal, settle):
    import fastattn

    layer, x = make_layer_and_input()
    impls = ["fastattn", "reference"]
    try:
        import torch  # noqa: F401
        impls.append("torch")
    except ImportError:
        pass
    runners = {name: make_runner(name, layer, x, causal, threads) for name in impls}
    # A B C A B C ..., settle: let the previous one's threads go idle
    times = time_calls(runners, repeat, settle=settle)
    med = {name: statistics.median(t) for name, t in times.items()}
    proj, attn = flop_counts(causal)
    print(f"MultiHeadAttention (B, N, E, H) = ({B}, {N}, {E}, {H}), float32, "
          f"{'causal' if causal else 'full'}, {threads} thread(s), isa "
          f"{fastattn.info()['isa']}; median of {repeat} interleaved runs")
    print(f"FLOPs: projections {proj / 1e9:.2f} G, attention {attn / 1e9:.2f} G")
    for name in impls:
        ratio = med[name] / med["fastattn"]
        print(f"  {name:<10} {med[name] * 1e3:8.2f} ms  "
              f"(min {min(times[name]) * 1e3:7.2f}, max {max(times[name]) * 1e3:7.2f})  "
              f"{ratio:5.2f}x fastattn's time")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeat", type=int, default=12)
    p.add_argument("--causal", action="store_true")
    p.add_argument("--settle", type=float, default=0.05,
                   help="idle seconds before each timed run (default 0.05)")
    args = p.parse_args(argv)
    side_by_side(args.threads, args.repeat, args.causal, args.settle)
    return 0


if __name__ == "__main__":
    sys.exit(main())
