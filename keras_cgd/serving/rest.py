"""The TensorFlow Serving REST v1 contract: routing, JSON → tensors, tensors → JSON.

Pure Python + NumPy (no TensorFlow): request parsing follows
`tensorflow_serving/util/json_tensor.cc` and routing
`model_servers/http_rest_api_handler.cc` (see `reference/ecosystem.md` §5),
including their error messages, so that clients see the same answers from
`keras-cgd serve` and from TF Serving.

It is also the one request validator of `keras-cgd serve`: `RequestLimits`
bounds the work of one request (instances, bytes after base64 decoding, image
header pixels with a per-image minimum cost), and `read_predict_inputs`
checks them while it reads the JSON, before any image is decoded. Image
headers (JPEG SOF, PNG IHDR) are read here in pure Python, so a bad image is
refused with a message naming its instance.
"""

import base64
import binascii
import dataclasses
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
    """An error answered as `{"error": message}` with an HTTP status code (and headers)."""

    def __init__(self, status, message, headers=None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = dict(headers or {})


def bad_request(message):
    return RestError(400, message)


# --- request limits ------------------------------------------------------------

DEFAULT_MAX_INSTANCES = 256
"""Largest number of instances (rows) in one predict request."""

DEFAULT_MAX_DECODED_BYTES = 24 * 1024 * 1024
"""Largest total of string/image bytes in one request, after base64 decoding (24 MiB)."""


@dataclasses.dataclass(frozen=True)
class RequestLimits:
    """Bounds on the work of one predict request, checked before any decoding.

    An image costs `max(height × width, min_image_pixels)` pixels: its header's
    size, but at least what it becomes after the resize (the model's image
    size), so that many tiny images are not free. All checks answer HTTP 400
    with a message naming the limit.

    Args:
        max_instances: instances (rows) per request, e.g. the length of
            `"instances"` (default 256).
        max_decoded_bytes: bytes of all string values (`{"b64": ...}` after
            decoding) in one request (default 24 MiB).
        max_image_pixels: largest `height × width` one image header may
            declare (default 25 MP; `keras_cgd.export.DEFAULT_MAX_IMAGE_PIXELS`).
        max_request_pixels: largest sum of image costs in one request
            (default 200 MP).
        min_image_pixels: the least one image costs (default 0; the server
            sets it to the model's `image_size` product).

    Example:

    >>> limits = RequestLimits(max_instances=64)
    >>> try:
    ...     read_predict_inputs({"instances": [1.0] * 65}, {"x": "float32"}, limits)
    ... except RestError as e:
    ...     print(e.status, e.message[:44])
    400 Invalid request: 65 instances in one request
    """

    max_instances: int = DEFAULT_MAX_INSTANCES
    max_decoded_bytes: int = DEFAULT_MAX_DECODED_BYTES
    max_image_pixels: int = 25_000_000
    max_request_pixels: int = 200_000_000
    min_image_pixels: int = 0

    def __post_init__(self):
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            minimum = 0 if field.name == "min_image_pixels" else 1
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ValueError(
                    f"Invalid value received for argument `{field.name}`. Expected an int "
                    f">= {minimum}. Received: {field.name}={value!r}"
                )


class _ByteBudget:
    """Running total of decoded string bytes, refused as soon as it passes the limit."""

    def __init__(self, limit):
        self.limit = limit
        self.used = 0

    def take(self, size):
        self.used += size
        if self.limit is not None and self.used > self.limit:
            raise bad_request(
                f"Invalid request: more than max_decoded_bytes={self.limit} bytes of "
                "string/image data (after base64 decoding) in one request; send smaller "
                "batches or smaller images."
            )


# --- image headers (JPEG / PNG), without decoding ------------------------------

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Start-of-frame markers (every JPEG coding process); DHT (C4), JPG (C8), DAC (CC) aside.
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_OTHER_FORMATS = (
    (lambda d: d[:4] == b"RIFF" and d[8:12] == b"WEBP", "a WebP image"),
    (lambda d: d[:6] in (b"GIF87a", b"GIF89a"), "a GIF image"),
    (lambda d: d[:2] == b"BM", "a BMP image"),
    (lambda d: d[:4] in (b"II*\x00", b"MM\x00*"), "a TIFF image"),
    (lambda d: d[4:8] == b"ftyp" and d[8:12] in (b"avif", b"avis"), "an AVIF image"),
    (lambda d: d[4:8] == b"ftyp" and d[8:12][:3] in (b"hei", b"hev", b"mif"), "a HEIF image"),
    (lambda d: d[:4] == b"\x00\x00\x01\x00", "an ICO image"),
)


def image_header(data):
    """`(format, height, width)` declared by a JPEG or PNG header, without decoding.

    PNG: the IHDR chunk (big-endian width, height at bytes 16–23). JPEG: the
    first start-of-frame (SOF) marker, reached by walking the marker segments
    from SOI as libjpeg does (bytes between segments skipped). Nothing is
    decompressed: the cost is the bytes before the frame header.

    Args:
        data: the encoded file, `bytes`.

    Returns:
        `("png" | "jpeg", height, width)`.

    Raises:
        ValueError: with a plain-words reason ("the bytes are a WebP image",
            "the JPEG ends before its frame header", ...) for anything else.

    Example:

    >>> image_header(open("photo.jpg", "rb").read())  # doctest: +SKIP
    ('jpeg', 480, 640)
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ValueError(f"expected bytes, received {type(data).__name__}")
    data = bytes(data)
    if data[:8] == _PNG_SIGNATURE:
        if len(data) < 24 or data[12:16] != b"IHDR":
            raise ValueError("the PNG ends or is corrupt before its IHDR header")
        width = int.from_bytes(data[16:20], "big")
        height = int.from_bytes(data[20:24], "big")
        return "png", height, width
    if data[:3] == b"\xff\xd8\xff":
        return ("jpeg",) + _jpeg_frame_size(data)
    if not data:
        raise ValueError("the bytes are empty")
    for matches, name in _OTHER_FORMATS:
        if matches(data):
            raise ValueError(f"the bytes are {name}")
    raise ValueError(f"the bytes are not an image (they start with {data[:8]!r})")


def _jpeg_frame_size(data):
    """`(height, width)` of the first SOF segment of a JPEG (`data` starts with SOI)."""
    n = len(data)
    i = 2
    while True:
        i = data.find(b"\xff", i)  # libjpeg skips extraneous bytes between segments
        if i < 0:
            raise ValueError("the JPEG ends before its frame header (SOF)")
        while i < n and data[i] == 0xFF:  # fill bytes
            i += 1
        if i >= n:
            raise ValueError("the JPEG ends before its frame header (SOF)")
        marker = data[i]
        i += 1
        if marker == 0x00 or marker == 0x01 or 0xD0 <= marker <= 0xD8:
            continue  # stuffed byte, TEM, RSTn, SOI: no length field
        if marker in (0xD9, 0xDA):
            raise ValueError("the JPEG has no frame header (SOF) before its image data")
        if i + 2 > n:
            raise ValueError("the JPEG ends before its frame header (SOF)")
        length = (data[i] << 8) | data[i + 1]
        if length < 2:
            raise ValueError(f"the JPEG is corrupt (segment length {length} at byte {i})")
        if marker in _JPEG_SOF:
            if i + 7 > n or length < 8:
                raise ValueError("the JPEG ends inside its frame header (SOF)")
            height = (data[i + 3] << 8) | data[i + 4]
            width = (data[i + 5] << 8) | data[i + 6]
            return height, width
        i += length


def check_images(array, name, limits):
    """Header checks of the images of input `name`, instance by instance.

    Every element must be a JPEG or PNG whose header declares
    `1 <= height × width <= limits.max_image_pixels`, and the costs
    `max(height × width, limits.min_image_pixels)` must sum to at most
    `limits.max_request_pixels`. Raises a 400 `RestError` naming the first
    instance that fails, else returns the total cost.

    Args:
        array: object array of `bytes`, instances along axis 0.
        name: the input's name, for the messages.
        limits: `RequestLimits`.
    """
    total = 0
    flat = array.reshape(-1) if array.ndim else array.reshape(1)
    per_instance = max(1, flat.size // max(1, array.shape[0] if array.ndim else 1))
    for k, data in enumerate(flat):
        where = f"instance {k // per_instance} of input '{name}'"
        try:
            fmt, height, width = image_header(data)
        except ValueError as e:
            raise bad_request(
                f"Invalid image in {where}: {e}; only JPEG and PNG images are accepted."
            ) from None
        pixels = height * width
        if height < 1 or width < 1:
            raise bad_request(
                f"Invalid image in {where}: its {fmt.upper()} header declares "
                f"{width} × {height} pixels (width × height); an image needs at least one."
            )
        if pixels > limits.max_image_pixels:
            raise bad_request(
                f"Invalid image in {where}: its {fmt.upper()} header declares {width} × "
                f"{height} = {pixels} pixels, more than max_image_pixels="
                f"{limits.max_image_pixels}; resize it before sending."
            )
        total += max(pixels, limits.min_image_pixels)
    if total > limits.max_request_pixels:
        minimum = limits.min_image_pixels
        raise bad_request(
            f"Invalid request: its {flat.size} images cost {total} pixels (each counts its "
            f"header's width × height, at least {minimum}), more than max_request_pixels="
            f"{limits.max_request_pixels}; send fewer or smaller images."
        )
    return total


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
        shown = path if len(path) <= 200 else path[:200] + "..."
        raise bad_request(f"Malformed request: {method} {shown}")
    if version is not None:
        digits = version.lstrip("0") or "0"
        if len(digits) > 19 or int(digits) > INT64_MAX:  # never int() of 5,000 digits
            shown = version if len(version) <= 40 else version[:40] + "..."
            raise bad_request(
                f"Failed to convert version: {shown} ({len(version)} digits; versions are "
                f"int64, at most {INT64_MAX})"
            )
        version = int(digits)
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


def _scalar(value, dtype, budget):
    np_dtype, kind, type_name = _DTYPES[dtype]
    if kind == "string":
        if isinstance(value, str):
            data = value.encode("utf-8", errors="surrogatepass")
            budget.take(len(data))
            return data
        if _is_b64(value):
            text = value["b64"]
            if not isinstance(text, str):
                raise _type_error(text, "string")
            budget.take(len(text) // 4 * 3)  # before decoding
            try:
                return base64.b64decode(text, validate=True)
            except (binascii.Error, ValueError):
                raise bad_request(f"Unable to base64 decode: {_short(text, 60)}")
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


def _collect(value, shape, depth, dtype, out, budget):
    if depth == len(shape):
        if isinstance(value, list):
            raise bad_request("Encountered list at unexpected size: found at incorrect level")
        out.append(_scalar(value, dtype, budget))
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
        _collect(item, shape, depth + 1, dtype, out, budget)


def json_to_array(value, dtype, budget=None):
    """A JSON value (nested lists of scalars / b64 objects) → NumPy array of `dtype`.

    `budget` (internal): the running `_ByteBudget` of the request's string bytes.
    """
    budget = budget if budget is not None else _ByteBudget(None)
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
    _collect(value, shape, 0, dtype, flat, budget)
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


def read_predict_inputs(doc, input_specs, limits=None, image_inputs=()):
    """Inputs of a predict request, validated. Returns `({name: ndarray}, is_row_format)`.

    The one request validator of `keras-cgd serve`: TF Serving's JSON rules
    (`json_tensor.cc`) and, with `limits`, the bounds on the request's work,
    all checked before any image is decoded: the instance count first, then
    the string bytes (each `{"b64": ...}` is counted before it is decoded),
    then the headers of the images of `image_inputs` (`check_images`).

    Args:
        doc: the parsed request body (a dict).
        input_specs: `{name: dtype name}` of the signature's inputs.
        limits: `RequestLimits`, or None for no bounds.
        image_inputs: names of the string inputs holding JPEG/PNG files.

    Raises:
        RestError: HTTP 400 with TF Serving's message or the limit passed.
    """
    budget = _ByteBudget(limits.max_decoded_bytes if limits is not None else None)
    try:
        tensors, row_format = _read_inputs(doc, input_specs, limits, budget)
    except RecursionError:
        raise bad_request("Invalid request: its JSON values are nested too deeply.") from None
    if limits is not None:
        for name in sorted(set(image_inputs) & set(tensors)):
            check_images(tensors[name], name, limits)
    return tensors, row_format


def _check_instances(count, limits):
    if limits is not None and count > limits.max_instances:
        raise bad_request(
            f"Invalid request: {count} instances in one request; this server accepts at most "
            f"max_instances={limits.max_instances}. Send smaller batches."
        )


def _read_inputs(doc, input_specs, limits, budget):
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
            _check_instances(len(value) if isinstance(value, list) else 1, limits)
            return {names[0]: json_to_array(value, input_specs[names[0]], budget)}, False
        if not isinstance(value, dict) or _is_b64(value):
            raise bad_request(
                "'inputs' must be an object keyed by input name for a signature with "
                f"inputs: {','.join(names)}"
            )
        tensors = {}
        for name in names:
            if name not in value:
                raise bad_request(f"Missing named input: {name} in 'inputs' object.")
            column = value[name]
            _check_instances(len(column) if isinstance(column, list) else 1, limits)
        for name in names:
            tensors[name] = json_to_array(value[name], input_specs[name], budget)
        return tensors, False
    instances = doc["instances"]
    if not isinstance(instances, list):
        raise bad_request("Expecting 'instances' to be an list/array")
    if not instances:
        raise bad_request("No values in 'instances' array")
    _check_instances(len(instances), limits)
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
        tensors[name] = json_to_array(values, input_specs[name], budget)
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
