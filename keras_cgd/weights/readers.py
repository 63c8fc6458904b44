"""Read state-dict files into NumPy arrays without executing code from the file.

Formats (chosen from the file name unless `format=` is given):

| format          | file names                 | reader                                      |
|-----------------|----------------------------|---------------------------------------------|
| `"torch"`       | `.pth`, `.pt`, `.bin`      | `torch.load(weights_only=True)` when torch is installed, else keras-cgd's restricted reader |
| `"safetensors"` | `.safetensors`             | the `safetensors` package's NumPy API (no torch) |
| `"npz"`         | `.npz`                     | `numpy.load(allow_pickle=False)`            |

The restricted reader understands both PyTorch serialisations: the zip archive of
`torch.save` since PyTorch 1.6 (`<archive>/data.pkl` + `<archive>/data/<key>`) and the
legacy stream (pickled magic number, protocol version and system info, then the main
pickle whose tensors name their storages by persistent id, then the pickled list of
storage keys followed by each storage as an int64 element count and its raw bytes). Its
unpickler resolves only the names a tensor checkpoint needs (`collections.OrderedDict`,
torch's tensor/parameter rebuild functions, storage types and dtypes, `torch.Size`,
`_codecs.encode`, `set`, `frozenset`, `bytearray`, `complex`) to NumPy equivalents of
its own; any other global (`os.system`, a model class, `argparse.Namespace`, a NumPy
function) is refused with an error naming it, before anything runs. torch's
`weights_only=True` loader applies the same rule.

Tensors become NumPy arrays (bfloat16 is widened to float32, NumPy has no bfloat16);
dicts, lists, tuples and primitives stay as they are, so a training checkpoint such as
MultiGrain's `{"model_state": state_dict, "epoch": ...}` reads as that nested dict
(`read_checkpoint`) and its weights as a flat dict (`read_state_dict(path,
key="model_state")`).

Example:

>>> from keras_cgd.weights.readers import read_state_dict
>>> tensors = read_state_dict("efficientnet-lite0-57934424.pth")
>>> tensors["_conv_stem.weight"].shape
(32, 3, 3, 3)
"""

import codecs
import collections
import importlib.util
import os
import pickle
import struct
import zipfile

import numpy as np

FORMATS = ("torch", "safetensors", "npz")
_EXTENSIONS = {
    ".pth": "torch",
    ".pt": "torch",
    ".bin": "torch",
    ".safetensors": "safetensors",
    ".npz": "npz",
}
# torch.serialization's legacy-format constants.
LEGACY_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL_VERSION = 1001

# PyTorch storage classes and dtypes → NumPy dtypes. "bfloat16" is decoded from its bits.
_STORAGE_DTYPES = {
    "DoubleStorage": "float64",
    "FloatStorage": "float32",
    "HalfStorage": "float16",
    "BFloat16Storage": "bfloat16",
    "LongStorage": "int64",
    "IntStorage": "int32",
    "ShortStorage": "int16",
    "CharStorage": "int8",
    "ByteStorage": "uint8",
    "BoolStorage": "bool",
    "ComplexDoubleStorage": "complex128",
    "ComplexFloatStorage": "complex64",
    "UntypedStorage": "uint8",
}
_TORCH_DTYPES = {
    "float64": "float64", "double": "float64", "float32": "float32", "float": "float32",
    "float16": "float16", "half": "float16", "bfloat16": "bfloat16", "int64": "int64",
    "long": "int64", "int32": "int32", "int": "int32", "int16": "int16", "short": "int16",
    "int8": "int8", "uint8": "uint8", "bool": "bool", "complex64": "complex64",
    "complex128": "complex128", "uint16": "uint16", "uint32": "uint32", "uint64": "uint64",
}


class CheckpointError(ValueError):
    """A weights file cannot be read: names the file and what is wrong with it."""


# --------------------------------------------------------------------------- public API


def torch_available():
    """Whether torch is installed (checked without importing it)."""
    return importlib.util.find_spec("torch") is not None


def checkpoint_format(path, format=None):
    """The format (`"torch"`, `"safetensors"` or `"npz"`) of `path`: `format` or its extension."""
    if format is not None:
        if format not in FORMATS:
            raise ValueError(
                f"Invalid value received for argument `format`. Expected one of {list(FORMATS)} or None "
                f"(from the file extension). Received: format={format!r}"
            )
        return format
    ext = os.path.splitext(str(path))[1].lower()
    if ext not in _EXTENSIONS:
        raise ValueError(
            f"Invalid value received for argument `path`. Expected a file ending in one of "
            f"{sorted(_EXTENSIONS)} or an explicit `format` in {list(FORMATS)}. Received: path={path!r}"
        )
    return _EXTENSIONS[ext]


def read_checkpoint(path, format=None, use_torch=None):
    """Reads a checkpoint file into NumPy arrays inside its own containers.

    Args:
        path: a `.pth` / `.pt` / `.bin` (PyTorch), `.safetensors` or `.npz` file.
        format: `"torch"`, `"safetensors"`, `"npz"`, or None to go by the extension.
        use_torch: for PyTorch files, None (default) uses `torch.load(weights_only=True)`
            when torch is installed and the restricted reader otherwise; True requires
            torch; False always uses the restricted reader.

    Returns:
        What the file holds with every tensor as a `np.ndarray`: for a state dict a
        `{name: array}` dict (an `OrderedDict` from PyTorch), for a training checkpoint
        the nested dict (e.g. `{"model_state": {...}, "epoch": 90}`).

    Raises:
        FileNotFoundError: naming a missing file.
        CheckpointError: naming the file when it is not of the format (e.g. an image
            renamed `.pth`), is truncated, or refers to a global other than the tensor
            machinery (which is refused, never run).
    """
    fmt = checkpoint_format(path, format)
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Invalid value received for argument `path`. No such file. Received: path={path!r}")
    if fmt == "npz":
        return _read_npz(path)
    if fmt == "safetensors":
        return _read_safetensors(path)
    if use_torch is None:
        use_torch = torch_available()
    if use_torch:
        return _read_with_torch(path)
    return read_torch_restricted(path)


def read_state_dict(path, format=None, key=None, use_torch=None):
    """Reads a state dict as a flat `{name: np.ndarray}` dict.

    Args:
        path, format, use_torch: as `read_checkpoint`.
        key: the entry of a nested checkpoint that holds the state dict, with `.`
            for deeper levels (`"model_state"` for MultiGrain's files, `"state_dict"`
            for many training scripts); None reads the whole file.

    Returns:
        `{name: array}` in file order; nested dicts below `key` are flattened with `.`
        (`{"a": {"b": t}}` → `{"a.b": t}`).

    Raises:
        CheckpointError: naming `key` when it is absent, and every entry that is not a
            tensor (an epoch counter, a string, ...) so that a whole training
            checkpoint is never mistaken for weights.

    Example:
        >>> tensors = read_state_dict("joint_3B_0.5.pth", key="model_state")
    """
    tree = read_checkpoint(path, format=format, use_torch=use_torch)
    if key is not None:
        for part in str(key).split("."):
            if not isinstance(tree, dict) or part not in tree:
                top = sorted(tree) if isinstance(tree, dict) else type(tree).__name__
                raise CheckpointError(
                    f"Invalid value received for argument `key`. {path!r} has no entry {key!r} "
                    f"(top-level entries: {top}). Received: key={key!r}"
                )
            tree = tree[part]
    return flatten_state_dict(tree, source=path)


def flatten_state_dict(tree, source="the checkpoint"):
    """`{"a": {"b": array}}` → `{"a.b": array}`; raises `CheckpointError` on non-array leaves."""
    if not isinstance(tree, dict):
        raise CheckpointError(f"{source!s} holds a {type(tree).__name__}, not a dict of tensors.")
    out, others = {}, []

    def visit(node, prefix):
        for k, v in node.items():
            name = f"{prefix}{k}"
            if isinstance(v, dict):
                visit(v, name + ".")
            elif isinstance(v, np.ndarray):
                out[name] = v
            else:
                others.append(f"{name} ({type(v).__name__})")

    visit(tree, "")
    if others:
        shown = ", ".join(others[:8]) + (f", ... ({len(others)} in all)" if len(others) > 8 else "")
        raise CheckpointError(
            f"{source!s} is not a plain state dict: entries {shown} are not tensors. Pass `key=` naming the "
            f"entry that holds the weights (top-level entries: {sorted(tree)})."
        )
    return out


# --------------------------------------------------------------------------- npz / safetensors


def _read_npz(path):
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: np.asarray(data[k]) for k in data.files}
    except Exception as e:  # zipfile.BadZipFile, ValueError (pickled object arrays), OSError
        raise CheckpointError(f"Cannot read {path!r} as an .npz archive of arrays: {e}") from None


def _read_safetensors(path):
    from safetensors.numpy import load_file

    try:
        return dict(load_file(path))
    except Exception as e:  # safetensors raises its own SafetensorError
        raise CheckpointError(f"Cannot read {path!r} as a safetensors file: {e}") from None


# --------------------------------------------------------------------------- torch.load


def _sniff_torch(path):
    """'zip' or 'legacy' from the first bytes; `CheckpointError` for anything else."""
    with open(path, "rb") as f:
        head = f.read(4)
    if head[:4] == b"PK\x03\x04":
        return "zip"
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:  # PROTO opcode, protocol 2-5
        return "legacy"
    raise CheckpointError(
        f"{path!r} is not a PyTorch checkpoint: expected a zip archive or a pickle stream, "
        f"found the bytes {head!r} at its start (is it another kind of file renamed?)."
    )


def _to_numpy_tree(obj, torch):
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu()
        if t.dtype == torch.bfloat16:
            t = t.float()
        return t.numpy().copy()
    if isinstance(obj, torch.Size):
        return tuple(obj)
    if isinstance(obj, dict):
        out = type(obj)() if isinstance(obj, collections.OrderedDict) else {}
        for k, v in obj.items():
            out[k] = _to_numpy_tree(v, torch)
        return out
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_numpy_tree(v, torch) for v in obj)
    return obj


def _read_with_torch(path):
    import torch

    _sniff_torch(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # UnpicklingError (forbidden global), RuntimeError, EOFError (truncated)
        text = str(e)
        refused = [line.strip() for line in text.splitlines() if "unsupported global" in line.lower()]
        if refused:  # torch's message is long; the refused global is what matters
            text = f"{refused[0]} (refused, not run)"
        raise CheckpointError(f"Cannot read {path!r} as a PyTorch checkpoint with torch.load(weights_only=True): {text}") from None
    return _to_numpy_tree(obj, torch)


# --------------------------------------------------------------------------- restricted reader


class _StorageType:
    """Stands for a torch storage class or a torch.dtype: the NumPy dtype name it holds."""

    __slots__ = ("dtype",)

    def __init__(self, dtype):
        self.dtype = dtype


class _TensorClass:
    """Stands for `torch.Tensor` / `torch.nn.Parameter` as an argument of rebuild functions."""


class _Storage:
    """A storage announced by a persistent id; its bytes are filled in later (legacy format)."""

    def __init__(self, key, dtype, numel):
        self.key, self.dtype, self.numel = key, dtype, numel
        self.data = None  # 1-D np.ndarray once read


class _PendingTensor:
    def __init__(self, storage, offset, size, stride, dtype=None):
        self.storage, self.offset = storage, int(offset)
        self.size, self.stride = tuple(int(s) for s in size), tuple(int(s) for s in stride)
        self.dtype = dtype


def _rebuild_tensor(storage, storage_offset, size, stride, *_):
    return _PendingTensor(storage, storage_offset, size, stride)


def _rebuild_tensor_v3(storage, storage_offset, size, stride, requires_grad, backward_hooks, dtype, *_):
    return _PendingTensor(storage, storage_offset, size, stride, dtype=dtype)


def _rebuild_parameter(data, *_):
    return data


def _rebuild_from_type_v2(func, new_type, args, state):
    if new_type is not _TensorClass:
        raise pickle.UnpicklingError(f"tensor subclass {new_type!r} is not supported")
    return func(*args)


def _encode(text, encoding="latin1"):
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError("only _codecs.encode(str, 'latin1') (bytes) is allowed")
    return codecs.encode(text, encoding)


def _allowed_globals():
    allowed = {
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
        ("torch._utils", "_rebuild_tensor_v3"): _rebuild_tensor_v3,
        ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
        ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
        ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type_v2,
        ("torch", "Tensor"): _TensorClass,
        ("torch.nn.parameter", "Parameter"): _TensorClass,
        ("torch", "Size"): tuple,
        ("_codecs", "encode"): _encode,
        ("builtins", "set"): set,
        ("builtins", "frozenset"): frozenset,
        ("builtins", "bytearray"): bytearray,
        ("builtins", "complex"): complex,
    }
    for name, dtype in _STORAGE_DTYPES.items():
        allowed[("torch", name)] = _StorageType(dtype)
    allowed[("torch.storage", "UntypedStorage")] = _StorageType("uint8")
    for name, dtype in _TORCH_DTYPES.items():
        allowed[("torch", name)] = _StorageType(dtype)  # a torch.dtype argument (v3)
    return allowed


class _RestrictedUnpickler(pickle.Unpickler):
    """Resolves only the globals of a tensor checkpoint; everything else is refused."""

    def __init__(self, file, path, persistent_load=None):
        super().__init__(file, encoding="utf-8")
        self._path = path
        self._persistent = persistent_load
        self._allowed = _allowed_globals()  # fresh per file: nothing a file does outlives it

    def find_class(self, module, name):
        found = self._allowed.get((module, name))
        if found is None:
            raise CheckpointError(
                f"{self._path!r} refers to the global `{module}.{name}`, which is not part of a tensor "
                "checkpoint; refusing to load it (keras-cgd never runs code from a weights file). "
                "Save a plain state dict (`torch.save(model.state_dict(), path)`) or convert it to "
                ".safetensors / .npz."
            )
        return found

    def persistent_load(self, pid):
        if self._persistent is None:
            raise pickle.UnpicklingError(f"unexpected persistent id {pid!r}")
        return self._persistent(pid)


def _storage_from_pid(pid, storages, path):
    if not isinstance(pid, tuple) or not pid or pid[0] not in ("storage", b"storage"):
        raise CheckpointError(f"{path!r} holds a persistent id {pid!r} that is not a tensor storage.")
    storage_type, key = pid[1], pid[2]
    numel = pid[4]
    if not isinstance(storage_type, _StorageType):
        raise CheckpointError(f"{path!r} names an unknown storage type {storage_type!r}.")
    key = key.decode("ascii") if isinstance(key, bytes) else str(key)
    if key not in storages:
        storages[key] = _Storage(key, storage_type.dtype, int(numel))
    if len(pid) > 5 and pid[5] is not None:  # legacy view metadata (view_key, offset, size)
        raise CheckpointError(f"{path!r} uses storage views (PyTorch < 0.4), which are not supported.")
    return storages[key]


_VALID_DTYPES = frozenset(_STORAGE_DTYPES.values()) | frozenset(_TORCH_DTYPES.values())


def _decode(raw, dtype, byteorder, path, key):
    if dtype not in _VALID_DTYPES:
        raise CheckpointError(f"{path!r}: storage {key!r} has an unsupported dtype {dtype!r}.")
    if dtype == "bfloat16":
        bits = np.frombuffer(raw, dtype=np.dtype("uint16").newbyteorder(byteorder))
        return (bits.astype("uint32") << 16).view("float32")
    dt = np.dtype(dtype).newbyteorder(byteorder)
    if len(raw) % dt.itemsize:
        raise CheckpointError(f"{path!r}: storage {key!r} has {len(raw)} bytes, not a multiple of {dt.itemsize}.")
    return np.frombuffer(raw, dtype=dt).astype(np.dtype(dtype).newbyteorder("="))


def _materialise(obj, path):
    """Replaces every pending tensor of the tree by a NumPy array (a copy, C order)."""
    if isinstance(obj, _PendingTensor):
        storage = obj.storage
        flat = storage.data
        if obj.dtype is not None and obj.dtype.dtype != storage.dtype:
            if storage.dtype != "uint8":
                raise CheckpointError(f"{path!r}: tensor dtype {obj.dtype.dtype} over a {storage.dtype} storage.")
            flat = _decode(flat.tobytes(), obj.dtype.dtype, "<", path, storage.key)
        extent = obj.offset + sum((n - 1) * s for n, s in zip(obj.size, obj.stride)) + 1
        if any(n == 0 for n in obj.size):
            return np.zeros(obj.size, flat.dtype)
        if obj.offset < 0 or any(s < 0 for s in obj.stride) or extent > flat.size:
            raise CheckpointError(
                f"{path!r}: a tensor of shape {obj.size} (stride {obj.stride}, offset {obj.offset}) does not fit "
                f"its storage {storage.key!r} of {flat.size} elements (truncated or corrupt file)."
            )
        item = flat.itemsize
        view = np.lib.stride_tricks.as_strided(
            flat[obj.offset:], shape=obj.size, strides=tuple(s * item for s in obj.stride), writeable=False
        )
        return np.array(view, order="C")
    if isinstance(obj, dict):
        out = type(obj)() if isinstance(obj, collections.OrderedDict) else {}
        for k, v in obj.items():
            out[k] = _materialise(v, path)
        return out
    if isinstance(obj, (list, tuple)):
        return type(obj)(_materialise(v, path) for v in obj)
    return obj


def read_torch_restricted(path):
    """Reads a PyTorch checkpoint (zip or legacy format) without torch and without running code.

    Returns the object tree with NumPy arrays for tensors (see `read_checkpoint`).

    Raises:
        CheckpointError: naming the file for another kind of file, a truncated file, or a
            global outside the tensor machinery.
    """
    kind = _sniff_torch(path)
    try:
        if kind == "zip":
            return _read_zip(path)
        return _read_legacy(path)
    except CheckpointError:
        raise
    except (pickle.UnpicklingError, EOFError, struct.error, zipfile.BadZipFile, ValueError, KeyError, IndexError,
            TypeError, AttributeError) as e:
        raise CheckpointError(f"Cannot read {path!r} as a PyTorch checkpoint (truncated or corrupt?): {e!r}") from None


def _read_zip(path):
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        pickles = [n for n in names if n.endswith("/data.pkl") or n == "data.pkl"]
        if not pickles:
            hint = " (a TorchScript archive? save the state dict instead)" if any(
                n.endswith("constants.pkl") for n in names) else ""
            raise CheckpointError(f"{path!r} is a zip archive without data.pkl: not a torch.save file{hint}.")
        prefix = pickles[0][: -len("data.pkl")]
        byteorder = "<"
        if prefix + "byteorder" in names:
            byteorder = "<" if archive.read(prefix + "byteorder").strip() == b"little" else ">"
        storages = {}
        with archive.open(pickles[0]) as f:
            tree = _RestrictedUnpickler(f, path, lambda pid: _storage_from_pid(pid, storages, path)).load()
        for key, storage in storages.items():
            member = f"{prefix}data/{key}"
            if member not in names:
                raise CheckpointError(f"{path!r} lacks the storage {member!r} (truncated or corrupt file).")
            raw = archive.read(member)
            itemsize = 2 if storage.dtype == "bfloat16" else np.dtype(storage.dtype).itemsize
            if len(raw) < storage.numel * itemsize:
                raise CheckpointError(
                    f"{path!r}: storage {member!r} has {len(raw)} bytes, expected {storage.numel * itemsize}."
                )
            storage.data = _decode(raw[: storage.numel * itemsize], storage.dtype, byteorder, path, key)
    return _materialise(tree, path)


def _read_legacy(path):
    with open(path, "rb") as f:
        magic = _RestrictedUnpickler(f, path).load()
        if magic != LEGACY_MAGIC_NUMBER:
            raise CheckpointError(f"{path!r} is a pickle but not a PyTorch checkpoint (no torch magic number).")
        version = _RestrictedUnpickler(f, path).load()
        if version != LEGACY_PROTOCOL_VERSION:
            raise CheckpointError(f"{path!r}: unsupported PyTorch serialisation version {version!r}.")
        sys_info = _RestrictedUnpickler(f, path).load()
        byteorder = "<" if not isinstance(sys_info, dict) or sys_info.get("little_endian", True) else ">"
        storages = {}
        tree = _RestrictedUnpickler(f, path, lambda pid: _storage_from_pid(pid, storages, path)).load()
        keys = _RestrictedUnpickler(f, path).load()
        if not isinstance(keys, list):
            raise CheckpointError(f"{path!r}: expected the list of storage keys after the main pickle.")
        for key in keys:
            key = key.decode("ascii") if isinstance(key, bytes) else str(key)
            if key not in storages:
                raise CheckpointError(f"{path!r}: storage {key!r} is listed but no tensor uses it.")
            storage = storages[key]
            header = f.read(8)
            if len(header) < 8:
                raise CheckpointError(f"{path!r} is truncated: the data of storage {key!r} is missing.")
            (numel,) = struct.unpack(byteorder + "q", header)
            itemsize = 2 if storage.dtype == "bfloat16" else np.dtype(storage.dtype).itemsize
            raw = f.read(numel * itemsize)
            if numel != storage.numel or len(raw) < numel * itemsize:
                raise CheckpointError(
                    f"{path!r} is truncated or corrupt: storage {key!r} should hold {storage.numel} elements "
                    f"({storage.numel * itemsize} bytes); found {len(raw)} bytes."
                )
            storage.data = _decode(raw, storage.dtype, byteorder, path, key)
    missing = [k for k, s in storages.items() if s.data is None]
    if missing:
        raise CheckpointError(f"{path!r} is truncated: no data for storages {missing[:8]}.")
    return _materialise(tree, path)
