"""Invalid FASTATTN_ISA / FASTATTN_NUM_THREADS / OMP_NUM_THREADS: ``import
fastattn`` raises an ImportError that names the variable, while the
``fastattn`` command (``python -m fastattn`` and the console script) reports
it as one error line with exit status 2 (``--help`` and ``--version`` still
work, ``fastattn info`` prints its report with the problem in it).  Each case
runs in a child interpreter, since the environment is read at import."""

import json
import os
import subprocess
import sys

import pytest

from fastattn import _core

from support.child import child_env

BAD = {
    "FASTATTN_ISA": ("bogus", "FASTATTN_ISA must be one of "
                              f"{', '.join(_core.isa_available())} (the ISA paths of this "
                              "CPU) or unset, got 'bogus'"),
    "FASTATTN_NUM_THREADS": ("abc", "FASTATTN_NUM_THREADS must be a positive integer, "
                                    "got 'abc'"),
}
MISSING_ISA = [name for name in _core.isa_names() if name not in _core.isa_available()]


def _run(argv, env, cwd=None):
    full = child_env(**env)
    for name in ("FASTATTN_ISA", "FASTATTN_NUM_THREADS", "OMP_NUM_THREADS"):
        if name not in env:
            full.pop(name, None)
    return subprocess.run(argv, capture_output=True, text=True, env=full, cwd=cwd,
                          timeout=300)


def _cli(args, env, cwd=None):
    return _run([sys.executable, "-m", "fastattn", *args], env, cwd)


def _one_error_line(r, message):
    assert "Traceback" not in r.stderr, r.stderr
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert r.stderr == f"fastattn: error: {message}\n"


@pytest.mark.parametrize("name", sorted(BAD))
def test_import_raises_a_clear_error(name):
    value, message = BAD[name]
    r = _run([sys.executable, "-c", "import fastattn"], {name: value})
    assert r.returncode == 1
    assert r.stderr.splitlines()[-1] == f"ImportError: {message}"


@pytest.mark.parametrize("value", ["0", "-2", "2.5", "four"])
def test_import_rejects_every_non_positive_count(value):
    r = _run([sys.executable, "-c", "import fastattn"], {"OMP_NUM_THREADS": "1",
                                                          "FASTATTN_NUM_THREADS": value})
    assert r.returncode == 1
    assert r.stderr.splitlines()[-1] == ("ImportError: FASTATTN_NUM_THREADS must be a positive "
                                         f"integer, got {value!r}")


def test_import_names_a_path_this_cpu_lacks():
    if not MISSING_ISA:
        pytest.skip("this CPU has every ISA path of the registry")
    r = _run([sys.executable, "-c", "import fastattn"], {"FASTATTN_ISA": MISSING_ISA[0]})
    assert r.returncode == 1
    last = r.stderr.splitlines()[-1]
    assert last.startswith(f"ImportError: FASTATTN_ISA='{MISSING_ISA[0]}' cannot be used: ")


@pytest.mark.parametrize("name", sorted(BAD))
@pytest.mark.parametrize("args", [["--help"], ["--version"]])
def test_help_and_version_still_work(name, args):
    """Once a traceback, before argparse ran."""
    r = _cli(args, {name: BAD[name][0]})
    assert r.returncode == 0 and r.stderr == "", r.stderr
    assert r.stdout.startswith("usage: fastattn" if args == ["--help"] else "fastattn ")


@pytest.mark.parametrize("name", sorted(BAD))
def test_info_reports_the_problem(name):
    value, message = BAD[name]
    r = _cli(["info"], {name: value})
    _one_error_line(r, message)
    section = "ISA paths:" if name == "FASTATTN_ISA" else "Threads:"
    report = r.stdout.splitlines()
    error = report.index(f"  error: {message} (ignored)")
    headers = [line for line in report[:error] if not line.startswith(" ")]
    assert headers[-1] == section, report


@pytest.mark.parametrize("name", sorted(BAD))
def test_info_json_reports_the_problem(name):
    value, message = BAD[name]
    r = _cli(["info", "--json"], {name: value})
    _one_error_line(r, message)
    data = json.loads(r.stdout)
    assert data["env_errors"] == [message]
    assert data["isa"] in data["isa_available"] and data["isa_override"] is None


def test_info_of_a_good_environment():
    r = _cli(["info", "--json"], {"FASTATTN_ISA": " Scalar ", "FASTATTN_NUM_THREADS": "1"})
    assert r.returncode == 0 and r.stderr == "", r.stderr
    data = json.loads(r.stdout)
    assert (data["env_errors"], data["isa"], data["isa_override"], data["num_threads"]) \
        == ([], "scalar", "scalar", 1)


@pytest.mark.parametrize("name", sorted(BAD))
@pytest.mark.parametrize("args", [
    ["bench", "--quick", "--no-reference", "--repeat", "1"],
    ["demo", "--out", "x.png"],
    ["embed", "--input", "in.txt", "--output", "out.npy"],
])
def test_commands_stop_with_one_line(name, args, tmp_path):
    """bench, demo and embed run nothing on a bad setting: one line, exit 2."""
    (tmp_path / "in.txt").write_text("a sentence\n")
    r = _cli(args, {name: BAD[name][0]}, cwd=tmp_path)
    _one_error_line(r, BAD[name][1])
    assert r.stdout == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.txt"]


def test_console_script_and_two_bad_variables():
    """The ``fastattn`` script as ``python -m fastattn``; two bad variables,
    still one line."""
    script = os.path.join(os.path.dirname(sys.executable), "fastattn")
    if not os.path.exists(script):
        pytest.skip(f"no console script beside {sys.executable} (fastattn not installed there)")
    env = {name: value for name, (value, _) in BAD.items()}
    r = _run([script, "bench"], env)
    _one_error_line(r, f"{BAD['FASTATTN_ISA'][1]}; {BAD['FASTATTN_NUM_THREADS'][1]}")
