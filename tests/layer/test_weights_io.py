"""fastattn.weights_io: state dicts and .safetensors files read into NumPy
arrays (values, dtypes, prefixes), torch tensors converted without a
caller-side copy, and a MultiHeadAttention rebuilt from a file it saved."""

import json
import struct

import numpy as np
import pytest

from support import require

from fastattn import MultiHeadAttention, weights_io


def _bf16_bits(values):
    """The bfloat16 bit patterns of float32 values exact in bfloat16."""
    return (np.asarray(values, dtype=np.float32).view(np.uint32) >> 16).astype(np.uint16)


def test_state_dict_arrays_prefix_and_conversion():
    sd = {"enc.0.w": [[1.0, 2.0]], "enc.0.n": np.arange(3, dtype=np.int32),
          "dec.w": np.zeros(2), 7: np.ones(1)}
    got = weights_io.state_dict_arrays(sd, "enc.0.")
    assert set(got) == {"w", "n"}
    assert got["w"].dtype == np.float64 and got["w"].shape == (1, 2)
    np.testing.assert_array_equal(got["n"], [0, 1, 2])
    with pytest.raises(TypeError, match=r"state_dict\['enc.0.s'\]"):
        weights_io.state_dict_arrays({"enc.0.s": np.array(["a"])}, "enc.0.")
    with pytest.raises(TypeError, match="prefix"):
        weights_io.state_dict_arrays(sd, 1)
    with pytest.raises(TypeError, match="state_dict"):
        weights_io.state_dict_arrays([("w", 1)])


def _write_safetensors(path, tensors):
    """A .safetensors file written by hand from the format's definition: a
    little-endian u64 header size, a JSON header of dtype, shape and byte
    range per tensor, then the bytes."""
    header, blobs, pos = {}, [], 0
    for name, (dtype, shape, data) in tensors.items():
        header[name] = {"dtype": dtype, "shape": list(shape),
                        "data_offsets": [pos, pos + len(data)]}
        blobs.append(data)
        pos += len(data)
    head = json.dumps(header).encode()
    head += b" " * (-len(head) % 8)
    path.write_bytes(struct.pack("<Q", len(head)) + head + b"".join(blobs))


def test_read_safetensors_dtypes_and_prefix(tmp_path):
    require("safetensors", reason="reading .safetensors files needs it")
    vals = np.array([1.0, -2.5, 3.140625, 0.0, -0.0, np.inf], dtype=np.float32)
    rng = np.random.default_rng(0)
    f32 = rng.standard_normal((3, 4)).astype(np.float32)
    f16 = rng.standard_normal((2, 2)).astype(np.float16)
    i64 = np.arange(-3, 3, dtype=np.int64).reshape(2, 3)
    tensors = {
        "m.a": ("F32", f32.shape, f32.tobytes()),
        "m.h": ("F16", f16.shape, f16.tobytes()),
        "m.i": ("I64", i64.shape, i64.tobytes()),
        "m.b": ("BF16", (2, 3), _bf16_bits(vals).tobytes()),
        "other": ("F32", (1,), np.ones(1, np.float32).tobytes()),
    }
    path = tmp_path / "w.safetensors"
    _write_safetensors(path, tensors)
    got = weights_io.read_safetensors(path, prefix="m.")
    assert set(got) == {"a", "h", "i", "b"}
    for key, want in (("a", f32), ("h", f16), ("i", i64)):
        assert got[key].dtype == want.dtype
        np.testing.assert_array_equal(got[key], want)
    # bfloat16 widens exactly to float32 (signed zeros and inf included)
    assert got["b"].dtype == np.float32 and got["b"].shape == (2, 3)
    np.testing.assert_array_equal(got["b"].view(np.uint32), vals.reshape(2, 3).view(np.uint32))
    assert set(weights_io.read_safetensors(str(path))) == set(tensors)


def test_layer_from_a_safetensors_file(tmp_path, rng):
    safetensors_numpy = require("safetensors.numpy", reason="writing the file needs it")
    layer = MultiHeadAttention(16, 4, rng=rng)
    layer.b_q = rng.standard_normal(16)
    sd = {"block.attn." + k: v for k, v in layer.to_torch_state_dict().items()}
    path = tmp_path / "model.safetensors"
    safetensors_numpy.save_file(sd, str(path))
    arrays = weights_io.read_safetensors(path)
    back = MultiHeadAttention.from_torch_state_dict(arrays, 4, prefix="block.attn.")
    x = rng.standard_normal((2, 5, 16)).astype(np.float32)
    np.testing.assert_array_equal(back(x), layer(x))


def test_to_numpy_torch_tensors():
    torch = require("torch", reason="converting torch tensors needs torch")
    p = torch.nn.Parameter(torch.arange(6, dtype=torch.float32).reshape(2, 3))
    a = weights_io.to_numpy(p)                # requires grad: detached first
    assert a.dtype == np.float32
    np.testing.assert_array_equal(a, np.arange(6).reshape(2, 3))
    b = weights_io.to_numpy(torch.tensor([1.0, -2.5, 3.140625], dtype=torch.bfloat16))
    assert b.dtype == np.float32
    np.testing.assert_array_equal(b, [1.0, -2.5, 3.140625])
    got = weights_io.state_dict_arrays({"w": p, "h": torch.ones(2, dtype=torch.float16)})
    assert got["w"].dtype == np.float32 and got["h"].dtype == np.float16
