"""fastattn.explain: the plan of a call, from the C planner the driver runs.

The shapes that the variant tests use to reach each kernel path
(support.arrays.PATH_SHAPES) are checked here against the plan, so a retune of
the kernel constants (tile rows, few-row limit, split thresholds) that
stops a shape from covering its path fails here instead of silently.
"""

import subprocess
import sys

import numpy as np
import pytest

import fastattn
from fastattn import _core
from support import PATH_SHAPES, make_qkv, path_qkv
from support.child import child_env

KEYS = {"kernel", "isa", "kernel_isa", "q_block", "k_block", "tasks", "key_splits",
        "split_keys", "work_items", "threads", "scratch_bytes", "precision",
        "precision_requested", "precision_note", "matrix_note", "bf16_tile"}

# path: (kernel family, whether the keys are split among work items)
PATHS = {
    "decode": ("rows", False),
    "decode_split": ("rows", True),
    "tile": ("tile", False),
    "tile_split": ("tile", True),
}


@pytest.fixture
def rng():
    return np.random.default_rng(7)


@pytest.mark.parametrize("path", sorted(PATHS))
def test_path_shapes_reach_their_path(rng, path):
    q, k, v = path_qkv(rng, path)
    plan = fastattn.explain(q, k, v)
    kernel, split = PATHS[path]
    assert plan["kernel"] == kernel, (path, plan)
    assert (plan["key_splits"] > 1) == split, (path, plan)
    assert plan["work_items"] == plan["tasks"] * plan["key_splits"]
    if split:
        # every chunk holds keys, and the chunks cover all of them
        nk = k.shape[-2]
        assert (plan["key_splits"] - 1) * plan["split_keys"] < nk
        assert plan["key_splits"] * plan["split_keys"] >= nk


@pytest.mark.parametrize("path", sorted(PATHS))
def test_path_shapes_keep_their_path_with_options(rng, path):
    # the variants' options (masks, bands, bias) do not move a shape to
    # another kernel
    q, k, v = path_qkv(rng, path)
    nq, nk = q.shape[-2], k.shape[-2]
    mask = np.ones((nq, nk), bool)
    slopes = np.full(q.shape[-3], 0.1)
    plan = fastattn.explain(q, k, v, mask=mask, causal=True, alibi_slopes=slopes,
                            softcap=20.0, window=(40, 0))
    assert (plan["kernel"], plan["key_splits"] > 1) == PATHS[path]


def test_plan_fields(rng):
    q, k, v = make_qkv(rng, (2, 4), 100, 300, 32)
    plan = fastattn.explain(q, k, v, causal=True)
    assert set(plan) == KEYS
    assert plan["isa"] == _core.get_isa()
    # float32: no refinement applies (a matrix-unit path runs it on the
    # vector path it falls back to)
    assert plan["kernel_isa"] == {"amx": "avx512", "amx_emu": "avx512"}.get(plan["isa"],
                                                                            plan["isa"])
    assert plan["q_block"] > 4 and plan["k_block"] > 0
    # 2 x 4 heads, ceil(100 / q_block) tiles each
    assert plan["tasks"] == 8 * -(-100 // plan["q_block"])
    assert 1 <= plan["threads"] <= max(1, fastattn.get_num_threads())
    assert plan["scratch_bytes"] > 0


def test_strided_keys_take_the_tile_kernel(rng):
    # the few-row kernel needs unit column strides
    q, k, v = make_qkv(rng, (1, 4), 1, 200, 32)
    assert fastattn.explain(q, k, v)["kernel"] == "rows"
    assert fastattn.explain(q, k[..., ::-1], v)["kernel"] == "tile"


def test_threads_follow_the_work_and_the_setting(rng):
    before = fastattn.get_num_threads()
    try:
        fastattn.set_num_threads(2)
        tiny = make_qkv(rng, (), 3, 5, 4)
        assert fastattn.explain(*tiny)["threads"] == 1
        big = make_qkv(rng, (2, 4), 256, 256, 64)
        assert fastattn.explain(*big)["threads"] == min(2, _core.get_num_threads())
        fastattn.set_num_threads(1)
        assert fastattn.explain(*big)["threads"] == 1
    finally:
        fastattn.set_num_threads(before)


def test_nothing_to_compute(rng):
    q, k, v = make_qkv(rng, (2,), 0, 10, 8)
    plan = fastattn.explain(q, k, v)
    assert plan["tasks"] == 0 and plan["work_items"] == 0 and plan["threads"] == 0


def test_weights_pass_has_its_own_plan(rng):
    q, k, v = make_qkv(rng, (2,), 3, 2000, 16)
    plan = fastattn.explain(q, k, v, return_weights=True)
    assert plan["kernel"] == "rows" and plan["key_splits"] > 1
    w = plan["weights"]
    assert w["kernel"] == "weights" and w["key_splits"] == 1


def test_explain_computes_nothing(rng):
    q, k, v = make_qkv(rng, (2,), 5, 7, 8)
    out = np.full((2, 5, 8), 123.0, np.float32)
    fastattn.explain(q, k, v, out=out, return_lse=True)
    assert (out == 123.0).all()


@pytest.mark.parametrize("bad, exc", [
    (dict(k=np.zeros((2, 7, 4), np.float64)), TypeError),     # dtype differs
    (dict(k=np.zeros((2, 7, 5), np.float32)), ValueError),    # head dim differs
    (dict(scale=float("nan")), ValueError),
    (dict(softcap=-1.0), ValueError),
    (dict(causal="sideways"), ValueError),
    (dict(mask=np.ones((3, 3), bool)), ValueError),
])
def test_explain_validates_like_attention(rng, bad, exc):
    args = dict(q=np.zeros((2, 5, 8), np.float32)[..., :4], k=np.zeros((2, 7, 4), np.float32),
                v=np.zeros((2, 7, 4), np.float32))
    args.update(bad)
    q, k, v = args.pop("q"), args.pop("k"), args.pop("v")
    with pytest.raises(exc) as e_attn:
        fastattn.attention(q, k, v, **args)
    with pytest.raises(exc) as e_plan:
        fastattn.explain(q, k, v, **args)
    assert str(e_plan.value) == str(e_attn.value)


def test_bf16_decode_names_the_refinement(rng):
    ml_dtypes = pytest.importorskip("ml_dtypes", reason="bfloat16 needs ml_dtypes")
    q, k, v = make_qkv(rng, (1, 4), 1, 300, 64)
    bf = [a.astype(ml_dtypes.bfloat16) for a in (q, k, v)]
    plan = fastattn.explain(*bf)
    assert plan["kernel"] == "rows"
    expected = "avx512bf16" if _core.bf16_dot_product() else plan["isa"]
    assert plan["kernel_isa"] == expected
    # the tile kernel widens bfloat16 on the path itself, or (AMD, or
    # FASTATTN_BF16_TILE=pairs) takes Q.K^T on pairs from the refinement; on
    # a matrix-unit path: the matrix kernel where the tiles run, else its
    # vector fallback
    prefill = fastattn.explain(*[a.astype(ml_dtypes.bfloat16)
                                 for a in make_qkv(rng, (1, 4), 70, 300, 64)])
    vector = {"amx": "avx512", "amx_emu": "avx512"}.get(plan["isa"], plan["isa"])
    if prefill["kernel"] == "matrix":
        assert prefill["kernel_isa"] == plan["isa"]
    else:
        # the pairs run under their own registry name, and only under the policy
        assert prefill["kernel_isa"] in {vector, "avx512bf16_pairs"}
        assert prefill["bf16_tile"] == _core.bf16_tile_policy()
        if prefill["kernel_isa"] == "avx512bf16_pairs":
            assert prefill["bf16_tile"] == "pairs"


@pytest.mark.parametrize("policy", ["pairs", "widen"])
def test_bf16_tile_policy_follows_the_environment(policy):
    # a policy of the plan, read from FASTATTN_BF16_TILE, reported by the
    # plan of bfloat16 inputs and by show_config (other dtypes: None)
    code = ("import numpy as np, fastattn; from fastattn import _core, _config\n"
            "q = np.zeros((1, 1, 70, 8), np.float32)\n"
            "assert fastattn.explain(q, q, q)['bf16_tile'] is None\n"
            "print(_core.bf16_tile_policy(), _config.config()['isa']['bf16_tile'])\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env=child_env(FASTATTN_BF16_TILE=policy), timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == [policy, policy]


def test_registry_lists_every_path():
    names = _core.isa_names()
    assert names[0] == "scalar" and len(set(names)) == len(names)
    assert set(_core.isa_available()) <= set(_core.isa_compiled()) <= set(names)
    assert "scalar" in _core.isa_available()
    assert _core.get_isa() in _core.isa_available()


def test_unknown_options_name_explain(rng):
    # explain passes its options to the planner; an unknown one is reported
    # as explain's, not the planner's
    q, k, v = make_qkv(rng, (1, 2), 4, 6, 8)
    with pytest.raises(TypeError, match=r"^explain\(\) got an unexpected keyword argument "
                                        r"'bogus'$"):
        fastattn.explain(q, k, v, bogus=1)
    with pytest.raises(TypeError, match=r"^explain\(\) got an unexpected keyword argument "
                                        r"'is_causal': .*causal='top_left'"):
        fastattn.explain(q, k, v, is_causal=True)
    # every option of attention is one of explain's
    assert fastattn.explain(q, k, v, causal="top_left", mask=np.ones((4, 6), bool),
                            num_threads=1, precision="highest")["kernel"] in ("tile", "rows")
