"""`fastattn bench`, the command-line parser and the benchmark helpers they
share with benchmarks/ (fastattn._bench).  No timing is asserted: speed is
measured in benchmarks/."""

import io

import numpy as np
import pytest

from fastattn import _bench, cli, reference


@pytest.mark.parametrize("nq,nk", [(1, 1), (5, 5), (3, 8), (8, 3), (64, 100), (1, 4096)])
@pytest.mark.parametrize("causal", [False, True])
def test_visible_pairs_counts_the_reference_mask(nq, nk, causal):
    i = np.arange(nq)[:, None]
    j = np.arange(nk)[None, :]
    visible = (j <= i + nk - nq) if causal else np.ones((nq, nk), bool)
    assert _bench.visible_pairs(nq, nk, causal) == int(visible.sum())


def test_attention_flops():
    assert _bench.attention_flops(2, 3, 16, 32, 64) == 4 * 2 * 3 * 16 * 32 * 64
    assert _bench.attention_flops(1, 1, 4, 4, 8, dv=16) == 2 * (8 + 16) * 16
    assert _bench.attention_flops(1, 2, 4, 4, 8, causal=True) == 4 * 2 * 10 * 8


def test_case_names_ids_and_inputs():
    case = _bench.BenchCase(1, 32, 1, 512, 16, Hkv=8, label="decode gqa")
    assert case.kv_heads == 8
    assert case.name == "decode gqa B1 H32 Hkv8 Nk512 D16"
    assert case.id == "decode-gqa-b1-h32-hkv8-nq1-nk512-d16"
    assert case.kv_bytes == 2 * 8 * 512 * 16 * 4
    assert case.score_bytes == 32 * 512 * 4
    q, k, v = case.make_inputs(seed=3)
    assert q.shape == (1, 32, 1, 16) and k.shape == v.shape == (1, 8, 512, 16)
    assert q.dtype == np.float32
    again = case.make_inputs(seed=3)
    assert all(np.array_equal(a, b) for a, b in zip((q, k, v), again))
    q16, _, _ = case.make_inputs(seed=3, dtype=np.float16)
    assert q16.dtype == np.float16 and np.array_equal(q16, q.astype(np.float16))
    causal = _bench.BenchCase(1, 8, 64, 128, 32, causal=True)
    assert causal.name == "B1 H8 Nq64 Nk128 D32 causal"
    assert causal.id == "b1-h8-nq64-nk128-d32-causal"


def test_cli_case_lists_have_unique_labels():
    for cases in (cli.DEFAULT_CASES, cli.QUICK_CASES):
        labels = [c.label for c in cases]
        assert all(labels) and len(set(labels)) == len(labels)
    assert set(cli.QUICK_CASES) <= set(cli.DEFAULT_CASES)


@pytest.mark.parametrize("seconds,text", [(None, "-"), (0.1234, "123"), (0.01234, "12.3"),
                                          (0.001234, "1.23"), (0.0001234, "0.123")])
def test_format_ms(seconds, text):
    assert _bench.format_ms(seconds) == text


def test_blas_limit_holds_blas_threads():
    threadpoolctl = pytest.importorskip("threadpoolctl",
                                        reason="blas_limit limits nothing without threadpoolctl")
    with _bench.blas_limit(1):
        blas = threadpoolctl.threadpool_info()
        assert all(p["num_threads"] == 1 for p in blas if p["user_api"] == "blas")
    assert _bench.blas_limit_available()


def test_blas_limit_without_threadpoolctl_is_a_no_op(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "threadpoolctl", None)  # import fails
    assert not _bench.blas_limit_available()
    with _bench.blas_limit(1):
        pass


def test_run_bench_prints_a_row_per_case_with_the_error(monkeypatch):
    monkeypatch.setattr(cli, "SETTLE_SECONDS", 0.0)
    cases = [_bench.BenchCase(1, 2, 33, 33, 16, label="tiny"),
             _bench.BenchCase(2, 4, 1, 70, 8, causal=True, Hkv=2, label="tiny decode")]
    out = io.StringIO()
    assert cli.run_bench(cases, repeat=1, out=out, bandwidth=10.0) == 0
    lines = out.getvalue().splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("case "))
    assert lines[header].split()[-1] == "max|err|"
    rows = lines[header + 2:header + 2 + len(cases)]
    for case, row in zip(cases, rows):
        assert row.startswith(case.label + " ")
        err = float(row.split()[-1])
        q, k, v = case.make_inputs(0)
        assert err < 1e-4 * max(1.0, float(np.abs(reference.attention(
            q.astype(np.float64), k.astype(np.float64), v.astype(np.float64),
            causal=case.causal)).max()))


def test_rows_give_the_percentage_of_their_roofline_bound():
    # a machine of 100 GFLOP/s and 10 GB/s balances at 10 FLOP per byte:
    # prefill (about 128 FLOP per byte) is bound by the FMA units, decode
    # (about 0.5) by memory
    prefill = _bench.BenchCase(1, 8, 512, 512, 64)
    decode = _bench.BenchCase(1, 32, 1, 4096, 128, Hkv=8)
    assert decode.moved_bytes == 2 * 8 * 4096 * 128 * 4 + 2 * 32 * 128 * 4
    assert not prefill.memory_bound(100.0, 10.0) and decode.memory_bound(100.0, 10.0)
    assert prefill.memory_bound(100.0, 0.5)  # a slow enough memory bounds prefill too
    t = 0.004
    cells = dict(zip(cli._BENCH_HEADERS, cli._bench_row(decode, t, None, 100.0, 10.0)))
    gbs = decode.moved_bytes / t / 1e9
    assert (cells["GB/s"], cells["% bw"], cells["% peak"]) == (f"{gbs:.1f}", f"{10 * gbs:.0f}%", "-")
    cells = dict(zip(cli._BENCH_HEADERS, cli._bench_row(prefill, t, None, 100.0, 10.0)))
    gflops = prefill.flops / t / 1e9
    assert (cells["GFLOP/s"], cells["% peak"], cells["% bw"]) == (f"{gflops:.1f}", f"{gflops:.0f}%", "-")


def test_run_bench_without_reference():
    out = io.StringIO()
    cli.run_bench([_bench.BenchCase(1, 1, 16, 16, 8, label="tiny")], repeat=1,
                  reference=False, out=out, bandwidth=10.0)
    row = next(line for line in out.getvalue().splitlines() if line.startswith("tiny"))
    assert row.split()[-3:] == ["-", "-", "-"]
    assert "numpy: the NumPy reference" not in out.getvalue()


def test_parser_has_every_subcommand():
    parser = cli.build_parser()
    args = parser.parse_args(["bench", "--threads", "1", "--repeat", "2", "--quick"])
    assert (args.threads, args.repeat, args.quick, args.no_reference) == (1, 2, True, False)
    assert args.func is cli.cmd_bench
    for name in ("info", "demo"):
        assert parser.parse_args([name]).command == name


@pytest.mark.parametrize("argv", [["bench", "--threads", "0"], ["bench", "--repeat", "x"],
                                  ["nosuchcommand"]])
def test_bad_arguments_exit_with_2(argv, capsys):
    assert cli.main(argv) == 2
    assert "expected a positive integer" in capsys.readouterr().err or argv[0] != "bench"


def test_no_command_prints_help(capsys):
    assert cli.main([]) == 2
    assert "COMMAND" in capsys.readouterr().err


def test_info_json(capsys):
    import json

    assert cli.main(["info", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["isa"] in data["isa_available"]
