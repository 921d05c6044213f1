#!/usr/bin/env python3
"""Side-by-side timings of the attention variants against their baselines.

For every group in benchmarks/variants.py and every thread count, the calls
of the group run in turn (A B C A B C ...) for a number of rounds, and the
medians are reported with the ratio to the group's first call and the
useful GFLOP/s (visible pairs only).  Interleaving spreads the noise of a
shared machine over all calls alike.

    python benchmarks/bench_variants.py [--threads 1 2] [--rounds 5] [--groups window varlen ...]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)  # variants.py sits beside this script

import fastattn  # noqa: E402
from fastattn._bench import time_calls  # noqa: E402
from variants import GROUPS  # noqa: E402

SETTLE_SECONDS = 0.1


def run_group(calls, rounds):
    samples = time_calls({c.name: c.fn for c in calls}, rounds, settle=SETTLE_SECONDS)
    return {name: statistics.median(ts) for name, ts in samples.items()}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--groups", nargs="+", default=list(GROUPS), choices=list(GROUPS))
    args = ap.parse_args(argv)
    info = fastattn.info()
    print(f"fastattn {info['version']} isa={info['isa']} rounds={args.rounds} "
          "(medians of interleaved runs)")
    for g in args.groups:
        calls = GROUPS[g]()
        for th in args.threads:
            fastattn.set_num_threads(th)
            med = run_group(calls, args.rounds if g != "window" else min(args.rounds, 3))
            base = med[calls[0].name]
            print(f"\n{g}, {th} thread{'s' if th > 1 else ''}")
            print(f"  {'call':28s} {'median ms':>10s} {'vs first':>9s} {'useful GF/s':>12s}")
            for c in calls:
                t = med[c.name]
                print(f"  {c.name:28s} {t * 1e3:10.2f} {t / base:8.2f}x "
                      f"{c.useful_flops / t / 1e9:12.1f}")
        del calls


if __name__ == "__main__":
    main()
