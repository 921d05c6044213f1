"""The signatures docs/guide.md prints equal the real ones.

A signature block is a ```` ```python ```` fence after
``<!-- skip: next "a signature: ..." -->``; it is not run (``*,`` is no call
syntax), so this test reads it: each ``name(params)`` in it is turned into
``def name(params)`` and compared, parameter by parameter (name, kind,
default), with ``inspect.signature`` of the object it names.
"""

import ast
import inspect
import re

import numpy as np
import pytest

import fastattn

from sybil_docs import DOCS_MISSING, ROOT

pytestmark = pytest.mark.skipif(bool(DOCS_MISSING), reason=DOCS_MISSING)

# what each documented name stands for ("layer" is a MultiHeadAttention)
DOCUMENTED = {
    "fastattn.attention": fastattn.attention,
    "fastattn.MultiHeadAttention": fastattn.MultiHeadAttention,
    "layer": fastattn.MultiHeadAttention.__call__,
}

_SIGNATURE_BLOCK = re.compile(
    r'<!-- skip: next "a signature[^"]*" -->\n```python\n(.*?)```', re.DOTALL)


def documented_signatures(path):
    """[(name, ast.arguments, line)] of every call in the signature blocks."""
    text = path.read_text(encoding="utf-8")
    found = []
    for block in _SIGNATURE_BLOCK.finditer(text):
        line = text.count("\n", 0, block.start(1)) + 1
        # one call per statement; continuation lines are indented
        for call in re.split(r"\n(?=\S)", block.group(1).strip()):
            name, _, params = call.partition("(")
            tree = ast.parse(f"def f({params.rstrip().removesuffix(')')}): pass")
            found.append((name.strip(), tree.body[0].args, line))
    return found


def as_parameters(args):
    """ast.arguments as [(name, kind, default source or None)]."""
    out = []
    positional = args.posonlyargs + args.args
    defaults = [None] * (len(positional) - len(args.defaults)) + list(args.defaults)
    for a, d in zip(positional, defaults):
        out.append((a.arg, inspect.Parameter.POSITIONAL_OR_KEYWORD, d))
    if args.vararg:
        out.append((args.vararg.arg, inspect.Parameter.VAR_POSITIONAL, None))
    for a, d in zip(args.kwonlyargs, args.kw_defaults):
        out.append((a.arg, inspect.Parameter.KEYWORD_ONLY, d))
    if args.kwarg:
        out.append((args.kwarg.arg, inspect.Parameter.VAR_KEYWORD, None))
    return out


def real_parameters(obj):
    params = list(inspect.signature(obj).parameters.values())
    if params and params[0].name == "self":
        params = params[1:]
    return params


def test_guide_has_the_signature_blocks():
    names = {name for name, _, _ in documented_signatures(ROOT / "docs" / "guide.md")}
    assert names == set(DOCUMENTED)


@pytest.mark.parametrize("name", sorted(DOCUMENTED))
def test_documented_signature_is_the_real_one(name):
    [(args, line)] = [(a, ln) for n, a, ln in documented_signatures(ROOT / "docs" / "guide.md")
                      if n == name]
    documented = as_parameters(args)
    real = real_parameters(DOCUMENTED[name])
    where = f"docs/guide.md:{line}: {name}"
    assert [p[0] for p in documented] == [p.name for p in real], where
    namespace = {"np": np, "numpy": np, "fastattn": fastattn}
    for (pname, kind, default), param in zip(documented, real):
        assert kind == param.kind, f"{where}: {pname} is {param.kind.description}"
        if param.default is inspect.Parameter.empty:
            assert default is None, f"{where}: {pname} has no default"
        else:
            assert default is not None, f"{where}: {pname} defaults to {param.default!r}"
            value = eval(compile(ast.Expression(default), where, "eval"), namespace)
            assert value == param.default and type(value) is type(param.default), (
                f"{where}: {pname}={ast.unparse(default)}, but the default is "
                f"{param.default!r}")


def test_the_comparison_sees_a_missing_parameter():
    """The old signature of the guide (without num_threads, precision,
    k_scale and v_scale) does not pass."""
    old = ast.parse("def f(q, k, v, *, mask=None, causal=False, scale=None, window=None, "
                    "alibi_slopes=None, softcap=None, kv_lengths=None, out=None, "
                    "return_lse=False, return_weights=False): pass").body[0].args
    real = [p.name for p in real_parameters(fastattn.attention)]
    assert [p[0] for p in as_parameters(old)] != real
    assert {"num_threads", "precision", "k_scale", "v_scale"} <= set(real)
