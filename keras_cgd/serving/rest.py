"""The TensorFlow Serving REST v1 contract: routing, JSON → tensors, tensors → JSON.

Pure Python + NumPy (no TensorFlow): request parsing follows
`tensorflow_serving/util/json_tensor.cc` and routing
`model_servers/http_rest_api_handler.cc` (see `reference/ecosystem.md` §5),
including their error messages, so that clients see the same answers from
`keras-cgd serve` and from TF Serving.
"""

import base64
import binascii
import json
import math
import re

import numpy as np

POST_RE = re.compile(
    r"/v1/models/([^/:]+)(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?:(classify|regress|predict)",
    re.IGNORECASE,
)
GET_RE = re.compile(
    r"/v1/models(?:/([^/:]+))?(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?(?:/(metadata))?",
    re.IGNORECASE,
)
V1_RE = re.compile(r"/v1/.*", re.IGNORECASE)
INT64_MAX = 2**63 - 1
"""Largest version number: TF Serving parses version directory names as int64."""

# TF dtype name → (numpy dtype, JSON kind accepted, name in messages).
_DTYPES = {
    "float32": (np.float32, "number", "float"),
    "float64": (np.float64, "number", "double"),
    "int8": (np.int8, "int", "int8"),
    "int16": (np.int16, "int", "int16"),
    "int32": (np.int32, "int", "int32"),
    "int64": (np.int64, "int", "int64"),
    "uint8": (np.uint8, "int", "uint8"),
    "uint16": (np.uint16, "int", "uint16"),
    "uint32": (np.uint32, "int", "uint32"),
    "uint64": (np.uint64, "int", "uint64"),
    "bool": (np.bool_, "bool", "bool"),
    "string": (object, "string", "string"),
}


class RestError(Exception):
    """An error answered as `{"error": message}` with an HTTP status code."""

    def __init__(self, status, message):
        super().__init__(message)
        self.status = status
        self.message = message


def bad_request(message):
    return RestError(400, message)


def route(method, path):
    """Parse a `/v1/...` path. Returns a dict, or raises `RestError`.

    Keys: `kind` ("status" | "metadata" | "predict" | "classify" | "regress"),
    `model`, `version` (int or None), `label` (str or None).
    """
    from urllib.parse import unquote

    match = None
    if method == "POST":
        match = POST_RE.fullmatch(path)
        if match:
            name, version, label, verb = match.groups()
            kind = verb.lower()
    elif method == "GET":
        match = GET_RE.fullmatch(path)
        if match:
            name, version, label, meta = match.groups()
            if name is None:
                raise bad_request("Missing model name in request.")
            kind = "metadata" if meta else "status"
    if not match:
        raise bad_request(f"Malformed request: {method} {path}")
    if version is not None:
        if int(version) > INT64_MAX:
            raise bad_request(f"Failed to convert version: {version}")
        version = int(version)
    return {
        "kind": kind,
        "model": unquote(name),
        "version": version,
        "label": unquote(label) if label is not None else None,
    }


# --- request parsing ------------------------------------------------------------


def parse_json_body(body):
    """Body bytes → dict, with TF Serving's parse errors."""
    if not body or not body.strip():
        raise bad_request("JSON Parse error: The document is empty")
    try:
        text = body.decode("utf-8")
        doc = json.loads(text)  # accepts NaN / Infinity / -Infinity like rapidjson
    except UnicodeDecodeError as e:
        raise bad_request(f"JSON Parse error: Invalid encoding in string. at offset: {e.start}")
    except json.JSONDecodeError as e:
        raise bad_request(f"JSON Parse error: {e.msg}. at offset: {e.pos}")
    except ValueError as e:  # e.g. an integer literal beyond Python's 4300-digit limit
        raise bad_request(f"JSON Parse error: Number too big to convert: {e}")
    except RecursionError:
        raise bad_request("JSON Parse error: Nesting too deep.")
    if not isinstance(doc, dict):
        raise bad_request(f"JSON Value: {_short(doc)} Is not object")
    return doc


def _short(value, limit=200):
    text = json.dumps(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _is_b64(value):
    return isinstance(value, dict) and len(value) == 1 and "b64" in value


def _type_error(value, type_name):
    kind = {str: "String", bool: "Bool", dict: "Object", list: "Array"}.get(type(value), "Number")
    if value is None:
        kind = "Null"
    return bad_request(
        f"JSON Value: {_short(value)} Type: {kind} is not of expected type: {type_name}"
    )


def _scalar(value, dtype):
    np_dtype, kind, type_name = _DTYPES[dtype]
    if kind == "string":
        if isinstance(value, str):
            return value.encode("utf-8")
        if _is_b64(value):
            if not isinstance(value["b64"], str):
                raise _type_error(value["b64"], "string")
            try:
                return base64.b64decode(value["b64"], validate=True)
            except (binascii.Error, ValueError):
                raise bad_request(f"Unable to base64 decode: {_short(value['b64'], 60)}")
        raise _type_error(value, type_name)
    if _is_b64(value):
        raise bad_request(
            f"JSON Value: {_short(value)} Type: Object is not of expected type: {type_name}"
        )
    if isinstance(value, bool):
        if kind == "bool":
            return value
        raise _type_error(value, type_name)
    if kind == "number" and isinstance(value, (int, float)):
        return value
    if kind == "int" and isinstance(value, int):
        info = np.iinfo(np_dtype)
        if not info.min <= value <= info.max:
            raise _type_error(value, type_name)
        return value
    raise _type_error(value, type_name)


def _shape_of(value):
    shape = []
    while isinstance(value, list):
        shape.append(len(value))
        if not value:
            break
        value = value[0]
    return shape


def _collect(value, shape, depth, dtype, out):
    if depth == len(shape):
        if isinstance(value, list):
            raise bad_request("Encountered list at unexpected size: found at incorrect level")
        out.append(_scalar(value, dtype))
        return
    if not isinstance(value, list):
        raise bad_request(
            f"Encountered scalar element: {_short(value, 60)} at incorrect level; "
            f"expected a list of {shape[depth]} values"
        )
    if len(value) != shape[depth]:
        raise bad_request(
            f"Encountered list at unexpected size: {len(value)} at level: {depth} "
            f"expected size: {shape[depth]}"
        )
    for item in value:
        _collect(item, shape, depth + 1, dtype, out)


def json_to_array(value, dtype):
    """A JSON value (nested lists of scalars / b64 objects) → NumPy array of `dtype`."""
    np_dtype, kind, _ = _DTYPES[dtype]
    if kind == "number":  # fast path for big float tensors
        try:
            arr = np.array(value)
        except (ValueError, TypeError, OverflowError):
            arr = None
        if arr is not None and arr.dtype.kind in "if":
            return arr.astype(np_dtype)
    shape = _shape_of(value)
    flat = []
    _collect(value, shape, 0, dtype, flat)
    if kind == "string":
        arr = np.empty(len(flat), dtype=np_dtype)
        arr[:] = flat
    else:
        try:
            arr = np.array(flat, dtype=np_dtype)
        except OverflowError as e:  # an integer too large for a float
            raise bad_request(
                f"JSON Value out of range for type: {_DTYPES[dtype][2]} ({e})"
            )
    return arr.reshape(shape)


def signature_name_of(doc):
    name = doc.get("signature_name", "serving_default")
    if not isinstance(name, str):
        raise bad_request("'signature_name' key must be a string value.")
    return name


def read_predict_inputs(doc, input_specs):
    """Inputs of a predict request. Returns `({name: ndarray}, is_row_format)`.

    Args:
        doc: the parsed request body (a dict).
        input_specs: `{name: dtype name}` of the signature's inputs.
    """
    has_instances, has_inputs = "instances" in doc, "inputs" in doc
    if has_instances and has_inputs:
        raise bad_request(
            "Not formatted correctly expecting only one of 'inputs' or 'instances' keys to exist"
        )
    if not has_instances and not has_inputs:
        raise bad_request("Missing 'inputs' or 'instances' key")
    names = sorted(input_specs)
    if has_inputs:
        value = doc["inputs"]
        if len(names) == 1 and not (isinstance(value, dict) and not _is_b64(value)):
            return {names[0]: json_to_array(value, input_specs[names[0]])}, False
        if not isinstance(value, dict) or _is_b64(value):
            raise bad_request(
                "'inputs' must be an object keyed by input name for a signature with "
                f"inputs: {','.join(names)}"
            )
        tensors = {}
        for name in names:
            if name not in value:
                raise bad_request(f"Missing named input: {name} in 'inputs' object.")
            tensors[name] = json_to_array(value[name], input_specs[name])
        return tensors, False
    instances = doc["instances"]
    if not isinstance(instances, list):
        raise bad_request("Expecting 'instances' to be an list/array")
    if not instances:
        raise bad_request("No values in 'instances' array")
    named = isinstance(instances[0], dict) and not _is_b64(instances[0])
    if len(names) > 1 and not named:
        raise bad_request(
            "instances is a plain list, but expecting list of objects as multiple input "
            f"tensors required as per tensorinfo_map (inputs: {','.join(names)})"
        )
    columns = {name: [] for name in names}
    for i, item in enumerate(instances):
        item_named = isinstance(item, dict) and not _is_b64(item)
        if named and not item_named:
            raise bad_request(f"Expecting object but got list at item {i} of input list")
        if not named and item_named:
            raise bad_request(f"Expecting value/list but got object at item {i} of input list")
        if named:
            if set(item) != set(names):
                raise bad_request(
                    f"Failed to process element: {i} of 'instances' list. JSON object: "
                    f"{_short(item, 100)} keys must be equal to: {','.join(names)}"
                )
            for name in names:
                columns[name].append(item[name])
        else:
            columns[names[0]].append(item)
    tensors = {}
    for name in names:
        values = columns[name]
        first = _shape_of(values[0])
        for value in values[1:]:
            shape = _shape_of(value)
            if shape != first:
                raise bad_request(f"Expecting shape {first} but got: {shape}")
        tensors[name] = json_to_array(values, input_specs[name])
    return tensors, True


def check_input_shapes(tensors, shapes):
    """Check each tensor against its signature shape (None = any)."""
    for name, arr in tensors.items():
        want = shapes[name]
        if want is None:
            continue
        ok = arr.ndim == len(want) and all(w is None or w == g for w, g in zip(want, arr.shape))
        if not ok:
            shown = [-1 if d is None else d for d in want]
            raise bad_request(
                f"Invalid shape for input '{name}': expected {shown}, received "
                f"{list(arr.shape)}"
            )


# --- response formatting --------------------------------------------------------


def _format_float(x):
    if math.isnan(x):
        return "NaN"
    if math.isinf(x):
        return "Infinity" if x > 0 else "-Infinity"
    return str(x)  # NumPy scalars print the shortest round-trip repr of their own type


def array_to_json(arr, alias=""):
    """NumPy array → JSON text, TF Serving style.

    Floats: shortest repr that round-trips in the tensor's own precision,
    whole numbers as `3.0`, non-finite as `NaN` / `Infinity` / `-Infinity`.
    Strings: raw, or `{"b64": ...}` when `alias` ends with `_bytes`.
    """
    arr = np.asarray(arr)
    kind = arr.dtype.kind
    if kind == "f":
        if arr.dtype == np.float16:
            raise bad_request("Failed to write JSON value for tensor type: half")
        flat = [_format_float(v) for v in arr.ravel()]
    elif kind in "iu":
        flat = [str(int(v)) for v in arr.ravel()]
    elif kind == "b":
        flat = ["true" if v else "false" for v in arr.ravel()]
    elif kind in "OSU":
        as_b64 = alias.endswith("_bytes")
        flat = []
        for v in arr.ravel():
            raw = v if isinstance(v, bytes) else str(v).encode("utf-8")
            if as_b64:
                flat.append(json.dumps({"b64": base64.b64encode(raw).decode("ascii")}))
            else:
                flat.append(json.dumps(raw.decode("utf-8", errors="replace")))
    else:
        raise bad_request(f"Failed to write JSON value for tensor type: {arr.dtype}")
    return _nest(flat, arr.shape)


def _nest(flat, shape):
    if not shape:
        return flat[0]
    if len(shape) == 1:
        return "[" + ",".join(flat) + "]"
    step = len(flat) // shape[0] if shape[0] else 0
    return "[" + ",".join(_nest(flat[i * step:(i + 1) * step], shape[1:])
                          for i in range(shape[0])) + "]"


def predict_response(outputs, row_format):
    """`{alias: ndarray}` → response JSON text (`predictions` or `outputs`)."""
    names = sorted(outputs)
    if row_format:
        batch = None
        for name in names:
            arr = outputs[name]
            if arr.ndim == 0:
                raise bad_request(f"Tensor name: {name} has no shape information ")
            if batch is None:
                batch = arr.shape[0]
            elif arr.shape[0] != batch:
                raise bad_request(
                    f"Tensor name: {name} has inconsistent batch size: {arr.shape[0]} "
                    f"expecting: {batch}"
                )
        if len(names) == 1:
            body = array_to_json(outputs[names[0]], names[0])
            return '{"predictions": ' + body + "}"
        rows = []
        per_output = {n: [array_to_json(row, n) for row in outputs[n]] for n in names}
        for i in range(batch):
            fields = ",".join(f"{json.dumps(n)}: {per_output[n][i]}" for n in names)
            rows.append("{" + fields + "}")
        return '{"predictions": [' + ",".join(rows) + "]}"
    if len(names) == 1:
        return '{"outputs": ' + array_to_json(outputs[names[0]], names[0]) + "}"
    fields = ",".join(f"{json.dumps(n)}: {array_to_json(outputs[n], n)}" for n in names)
    return '{"outputs": {' + fields + "}}"


def error_json(message):
    return json.dumps({"error": message})
