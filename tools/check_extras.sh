#!/usr/bin/env bash
# Every pip extra of fastattn installs a working set: the built wheel is
# installed with one extra at a time in a fresh virtual environment, and a
# short script imports and runs what that extra is for (see smoke() below).
#
# The wheel comes from wheelhouse/ (tools/build_wheels.sh, CI's wheels step),
# or WHEEL=path/to/fastattn-*.whl.  Extras that pull torch get torch==2.13.0
# first (torch's CPU build; from PyPI a plain torch is a multi-GB CUDA build):
# it is installed once into a template environment that each of those extras
# starts from as a copy made of hard links, which costs seconds instead of a
# torch install each (pip replaces files, never writes into one, so the
# template stays as it was).
#
#   tools/check_extras.sh                   # every extra
#   tools/check_extras.sh dask models       # some
#   TORCH_INDEX=https://download.pytorch.org/whl/cpu tools/check_extras.sh
#       (where the default index has no CPU build of torch)
set -euo pipefail
source "$(dirname "$0")/lib.sh"
TORCH_REQ="torch==2.13.0"
setup_workdir check-extras "${WORK_DIR:-}"

if [[ -z "${WHEEL:-}" ]]; then
    shopt -s nullglob
    wheels=("$ROOT"/wheelhouse/fastattn-*manylinux*.whl)
    shopt -u nullglob
    if [[ ${#wheels[@]} -gt 1 ]]; then
        echo "error: several wheels in wheelhouse/ (${wheels[*]}): set WHEEL=" >&2
        exit 2
    fi
    WHEEL="${wheels[0]:-}"
fi
if [[ -z "$WHEEL" || ! -f "$WHEEL" ]]; then
    echo "error: no wheel: run tools/build_wheels.sh first, or set WHEEL=" >&2
    exit 2
fi
mapfile -t ALL < <("$PYTHON" - "$ROOT/pyproject.toml" <<'EOF'
import sys, tomllib
print("\n".join(tomllib.load(open(sys.argv[1], "rb"))["project"]["optional-dependencies"]))
EOF
)
if [[ $# -gt 0 ]]; then EXTRAS=("$@"); else EXTRAS=("${ALL[@]}"); fi
echo "== wheel: $(basename "$WHEEL"); extras: ${EXTRAS[*]}"

needs_torch() {  # needs_torch EXTRA: does the extra require torch?
    "$PYTHON" - "$ROOT/pyproject.toml" "$1" <<'EOF'
import re, sys, tomllib
reqs = tomllib.load(open(sys.argv[1], "rb"))["project"]["optional-dependencies"][sys.argv[2]]
sys.exit(0 if any(re.match(r"torch\b", r) for r in reqs) else 1)
EOF
}

smoke() {  # smoke EXTRA: what the extra promises, run by the venv's python
    cat <<'EOF'
import importlib, sys, tempfile
import numpy as np
import fastattn

extra = sys.argv[1]
rng = np.random.default_rng(0)
q, k, v = rng.standard_normal((3, 1, 2, 64, 16), dtype=np.float32)
ref = fastattn.reference.attention(q, k, v, causal=True)
assert np.allclose(fastattn.attention(q, k, v, causal=True), ref, atol=1e-5)

def need(*modules):
    for m in modules:
        importlib.import_module(m)

def torch_cpu():
    import torch
    assert not torch.version.cuda, f"a CUDA build of torch: {torch.__version__}"
    out = torch.nn.functional.scaled_dot_product_attention(*map(torch.from_numpy, (q, k, v)))
    assert np.allclose(out.numpy(), fastattn.attention(q, k, v), atol=1e-5)

def models():
    need("tokenizers", "safetensors.numpy", "tqdm", "threadpoolctl")
    from fastattn.models import BertConfig, load_encoder  # noqa: F401
    from fastattn.models import embed_file  # noqa: F401

def plot():
    from fastattn.plot import attention_heatmap
    import io
    fig = attention_heatmap(fastattn.attention_weights(q[0], k[0])[:, :4, :4], list("abcd"))
    fig.savefig(io.BytesIO(), format="png")

def test():
    need("pytest", "pytest_benchmark", "hypothesis", "ml_dtypes", "threadpoolctl", "sybil",
         "sybil.parsers.markdown")
    plot()

def fa_torch():
    torch_cpu()
    import torch, fastattn.torch as fat
    t = [torch.from_numpy(a).to(torch.bfloat16) for a in (q, k, v)]
    out = fat.attention(*t, causal=True)
    assert out.dtype == torch.bfloat16 and np.allclose(out.float().numpy(), ref, atol=3e-2)

def dask():
    models()
    import dask, dask.bag as db, distributed
    assert dask.__version__ == distributed.__version__, (dask.__version__, distributed.__version__)
    from fastattn.models import dask_embed  # noqa: F401
    # what dask_embed does with a cluster: delayed tasks over a bag's partitions
    parts = db.from_sequence(range(10), npartitions=2).to_delayed()
    tasks = [dask.delayed(sum)(p) for p in parts]
    with distributed.Client(processes=False, n_workers=1, threads_per_worker=1,
                            dashboard_address=":0") as client:
        assert sum(client.compute(tasks, sync=True)) == 45

def transformers():
    fa_torch()
    need("sentence_transformers")
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig
    from fastattn.integrations.transformers import register
    register()
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64,
                         num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2)
    torch.manual_seed(0)
    ours = AutoModelForCausalLM.from_config(config, attn_implementation="fastattn").eval()
    theirs = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa").eval()
    theirs.load_state_dict(ours.state_dict())
    ids = torch.arange(12).reshape(2, 6)
    with torch.inference_mode():
        assert torch.allclose(ours(ids).logits, theirs(ids).logits, atol=1e-4)

def bench_peers():
    # the benchmarks' peers: NumKong's packed int8 GEMM, an ONNX Runtime session
    import numkong as nk
    a = np.arange(-8, 8, dtype=np.int8).reshape(2, 8)
    got = np.asarray(nk.dots_packed(a, nk.dots_pack(a, dtype="int8")))
    assert np.array_equal(got, a.astype(np.int32) @ a.T.astype(np.int32)), got
    import onnx, onnxruntime, onnxscript  # noqa: F401
    from onnx import TensorProto, helper
    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    s = onnxruntime.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    assert list(s.run(None, {"x": np.array([-1, 2], np.float32)})[0]) == [0, 2]
    need("sentence_transformers")

checks = {"test": [test], "oracle": [torch_cpu], "bench": [test, torch_cpu, bench_peers],
          "plot": [plot],
          "models": [models], "torch": [fa_torch], "dask": [dask],
          "transformers": [transformers]}
if extra not in checks:
    sys.exit(f"no smoke check for the extra {extra!r}: add one to tools/check_extras.sh")
for check in checks[extra]:
    check()
print(f"[{extra}] ok: fastattn {fastattn.__version__}, numpy {np.__version__}")
EOF
}

# Extras without torch first, while the torch template is made in the
# background (mostly unpacking: it overlaps the others' installs).
declare -a LIGHT=() HEAVY=()
for extra in "${EXTRAS[@]}"; do
    if needs_torch "$extra"; then HEAVY+=("$extra"); else LIGHT+=("$extra"); fi
done
TORCH_BASE="$WORK/torch-base"
T0=$SECONDS
if [[ ${#HEAVY[@]} -gt 0 ]]; then
    ( "$PYTHON" -m venv "$TORCH_BASE" \
      && "$TORCH_BASE/bin/python" -m pip install --quiet "$TORCH_REQ" \
             ${TORCH_INDEX:+--index-url "$TORCH_INDEX"} \
      && echo "   torch template ready after $((SECONDS - T0)) s" ) > "$WORK/torch-base.log" 2>&1 &
    TORCH_PID=$!
    # an early exit stops the background install before $WORK is removed
    trap '[[ -n "${TORCH_PID:-}" ]] && kill "$TORCH_PID" 2>/dev/null; wait; _cleanup_workdir' EXIT
fi
torch_base() {  # wait for the template venv with torch's CPU build
    if [[ -n "${TORCH_PID:-}" ]]; then
        local status=0
        wait "$TORCH_PID" || status=$?
        TORCH_PID=""
        grep -v "^WARNING: Location" "$WORK/torch-base.log" || true
        [[ $status -eq 0 ]] || { echo "torch template failed (exit $status)"; return 1; }
    fi
    [[ -x "$TORCH_BASE/bin/python" ]]
}

declare -a SUMMARY=()
FAILED=0
for extra in "${LIGHT[@]}" "${HEAVY[@]}"; do
    t=$SECONDS
    venv="$WORK/venv-$extra"
    echo "== [$extra]"
    status=0
    if needs_torch "$extra"; then
        # A copy of the template runs as its own venv: python resolves its
        # prefix from its own path (pyvenv.cfg), and pip runs as `python -m`.
        torch_base && cp -al "$TORCH_BASE" "$venv" || status=$?
    else
        "$PYTHON" -m venv "$venv" || status=$?
    fi
    if [[ $status -eq 0 ]]; then
        "$venv/bin/python" -m pip install --quiet "${WHEEL}[$extra]" || status=$?
    fi
    if [[ $status -eq 0 ]]; then
        # from the work dir, so that no source tree shadows the installed wheel
        (cd "$WORK" && "$venv/bin/python" -c "$(smoke)" "$extra") || status=$?
    fi
    [[ $status -eq 0 ]] || FAILED=1
    SUMMARY+=("$extra: $([[ $status -eq 0 ]] && echo ok || echo "FAILED (exit $status)") ($((SECONDS - t)) s)")
    rm -rf "$venv"
done
torch_base > /dev/null 2>&1 || true   # never leave the background install running
echo "== extras ($((SECONDS - T0)) s)"
printf '   %s\n' "${SUMMARY[@]}"
exit "$FAILED"
