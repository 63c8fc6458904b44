"""`keras-cgd serve`: a reference server for the TensorFlow Serving REST API.

TensorFlow-only module. It loads SavedModels with `tf.saved_model.load` and
answers the TF Serving REST v1 contract (`reference/ecosystem.md` §5, §7) on a
werkzeug server: model status, metadata, `:predict` in row
(`instances`) and columnar (`inputs`) formats, `signature_name`,
`/versions/<v>` and `/labels/<l>`, `{"b64": ...}` values, errors as
`{"error": "..."}` with TF Serving's status codes and messages.

Layout served: `base_dir/<model_name>/<version>/saved_model.pb`. The directory
is polled; new versions load without a restart and the highest version is
served (TF Serving's default "latest" policy; `num_versions` keeps more).
Hidden and non-numeric children (such as an export's `.tmp-*` directory) are
ignored. It is meant for local work, notebooks and tests; production uses
TensorFlow Serving (Docker `tensorflow/serving` or apt), which speaks the same
contract.

One request cannot take the server down: its work is bounded before any
decoding by `rest.RequestLimits` (instances, decoded bytes, image header
pixels with a per-image minimum cost; the one request validator), the model
runs on `max_batch_size` instances at a time (`max_concurrent_predictions` runs
at once), a fixed pool of request threads with a bounded queue answers 503 +
`Retry-After` when full, and every client has `request_timeout` seconds to send
its request. Client errors are TF
Serving's 4xx `{"error": ...}` in plain words (never TensorFlow graph text);
5xx means a fault of the server itself.

Example:

    keras-cgd serve savedmodels --port 8501
    curl localhost:8501/v1/models/cgd
"""

import argparse
import dataclasses
import io
import json
import logging
import os
import queue
import re
import sys
import threading
import time

import numpy as np

from keras_cgd.export.saved_model import DEFAULT_MAX_IMAGE_PIXELS
from keras_cgd.export.saved_model import DEFAULT_MAX_REQUEST_PIXELS
from keras_cgd.export.saved_model import METADATA_FILENAME
from keras_cgd.export.saved_model import version_dirs
from keras_cgd.serving import rest

logger = logging.getLogger("keras_cgd.serving")

DEFAULT_MAX_REQUEST_BYTES = 32 * 1024 * 1024
"""Largest request body (32 MiB)."""

DEFAULT_MAX_BATCH_SIZE = 32
"""Instances the model runs on at a time; larger requests are split."""

DEFAULT_NUM_THREADS = 32
"""Request threads (TF Serving: `--rest_api_num_threads`)."""

DEFAULT_MAX_CONCURRENT_PREDICTIONS = max(2, os.cpu_count() or 2)
"""Model runs at a time (one CPU core each); the other request threads read,
validate and answer, so a request refused before decoding never waits for the model."""

PREDICTION_WAIT_SECONDS = 60.0
"""How long a request waits for a model slot before a 503 with `Retry-After`."""

DEFAULT_QUEUE_SIZE = 64
"""Accepted connections waiting for a thread; beyond, 503 with `Retry-After`."""

DEFAULT_REQUEST_TIMEOUT = 30.0
"""Seconds a client has to send its whole request (TF Serving: `--rest_api_timeout_in_ms`)."""

IMAGE_INPUT_NAME = "image_bytes"
"""String inputs of this name hold JPEG/PNG files (keras-cgd's `serving_default`)."""

_DRAIN_LIMIT_BYTES = 256 * 1024 * 1024
_LARGE_REQUEST_BYTES = 1024 * 1024

# absl/TF error codes → HTTP status (tensorflow_serving http_server.cc ToHTTPStatusCode).
_HTTP_STATUS = {
    1: 499, 2: 500, 3: 400, 4: 504, 5: 404, 6: 409, 7: 403, 8: 429,
    9: 400, 10: 409, 11: 400, 12: 501, 13: 500, 14: 503, 15: 500, 16: 401,
}


class _LoadedVersion:
    """One loaded SavedModel version and its signatures."""

    def __init__(self, path, version):
        import tensorflow as tf
        from google.protobuf import json_format
        from tensorflow.core.protobuf import saved_model_pb2

        self.path = path
        self.version = version
        self.module = tf.saved_model.load(path, tags=["serve"])
        self.signatures = dict(self.module.signatures)
        self.inputs = {}
        for name, fn in self.signatures.items():
            specs = fn.structured_input_signature[1]
            self.inputs[name] = {
                key: (spec.dtype.name, spec.shape.as_list() if spec.shape.rank is not None else None,
                      spec.dtype)
                for key, spec in specs.items()
            }
        proto = saved_model_pb2.SavedModel()
        with open(os.path.join(path, "saved_model.pb"), "rb") as f:
            proto.ParseFromString(f.read())
        meta = next(
            (m for m in proto.meta_graphs if "serve" in m.meta_info_def.tags), proto.meta_graphs[0]
        )
        self.signature_def = {
            name: json_format.MessageToDict(
                sig, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
            )
            for name, sig in meta.signature_def.items()
        }
        self.method = {name: sig.method_name for name, sig in meta.signature_def.items()}
        self.facts = {}
        facts_path = os.path.join(path, "assets.extra", METADATA_FILENAME)
        if os.path.isfile(facts_path):
            try:
                with open(facts_path) as f:
                    facts = json.load(f)
                self.facts = facts if isinstance(facts, dict) else {}
            except (OSError, ValueError) as e:
                logger.warning("Ignoring unreadable %s: %s", facts_path, e)
        self.image_inputs = {
            name: {key for key, spec in specs.items()
                   if key == IMAGE_INPUT_NAME and spec[0] == "string"}
            for name, specs in self.inputs.items()
        }


class ModelRepository:
    """Polls `base_dir` and holds the loaded versions of every model.

    Args:
        base_dir: directory of model base paths (`base_dir/<name>/<version>/`),
            or, with `model_name`, a single model base path.
        model_name: serve only `base_dir` itself under this name (TF Serving's
            `--model_name` / `--model_base_path`).
        num_versions: how many of the highest versions of each model to keep
            loaded (1 = TF Serving's default "latest" policy).
        version_labels: `{model: {label: version}}`.
    """

    def __init__(self, base_dir, model_name=None, num_versions=1, version_labels=None):
        if not os.path.isdir(base_dir):
            raise ValueError(
                "Invalid value received for argument `base_dir`. Expected an existing "
                f"directory. Received: base_dir={base_dir!r}"
            )
        if isinstance(num_versions, bool) or not isinstance(num_versions, int) or num_versions < 1:
            raise ValueError(
                "Invalid value received for argument `num_versions`. Expected a positive "
                f"int. Received: num_versions={num_versions!r}"
            )
        self.base_dir = base_dir
        self.model_name = model_name
        self.num_versions = num_versions
        self.version_labels = {m: dict(l) for m, l in (version_labels or {}).items()}
        self._lock = threading.Lock()
        self._loaded = {}  # name -> {version: _LoadedVersion}
        self._states = {}  # name -> {version: (state, error_code, error_message)}
        self._failed = {}  # (name, version) -> _fingerprint of the version that failed

    def _model_dirs(self):
        if self.model_name is not None:
            return {self.model_name: self.base_dir}
        dirs = {}
        for name in sorted(os.listdir(self.base_dir)):
            path = os.path.join(self.base_dir, name)
            if not name.startswith(".") and os.path.isdir(path):
                dirs[name] = path
        return dirs

    @staticmethod
    def _versions(model_dir):
        return {
            version: path
            for version, path in version_dirs(model_dir).items()
            if os.path.isfile(os.path.join(path, "saved_model.pb"))
        }

    @staticmethod
    def _fingerprint(path):
        """Every file and folder of a version directory with its size and mtime.

        A failed load is retried only when this changes (e.g. `variables/`
        arrived after `saved_model.pb`).
        """
        entries = []
        for root, dirs, files in os.walk(path):
            for child in dirs + files:
                full = os.path.join(root, child)
                try:
                    st = os.stat(full)
                except OSError:
                    continue
                entries.append((os.path.relpath(full, path), st.st_size, st.st_mtime_ns))
        return tuple(sorted(entries))

    def poll(self):
        """Load new versions, unload versions beyond `num_versions` or removed.

        The highest `num_versions` versions that load are served: a newer
        version that fails to load leaves the older ones in service.
        """
        try:
            model_dirs = self._model_dirs()
        except OSError as e:
            logger.warning("Cannot list %s: %s", self.base_dir, e)
            return
        for name, model_dir in model_dirs.items():
            try:
                versions = self._versions(model_dir)
            except OSError:
                continue
            with self._lock:
                loaded = set(self._loaded.get(name, {}))
            keep = []
            for version in sorted(versions, reverse=True):
                if len(keep) == self.num_versions:
                    break
                if version in loaded:
                    keep.append(version)
                    continue
                path = versions[version]
                fingerprint = self._fingerprint(path)
                if self._failed.get((name, version)) == fingerprint:
                    continue
                try:
                    item = _LoadedVersion(path, version)
                except Exception as e:  # a broken SavedModel must not stop the server
                    self._failed[(name, version)] = fingerprint
                    self._set_state(name, version, "END", "UNKNOWN", f"Failed to load: {e}")
                    logger.warning("Failed to load %s version %d: %s", name, version, e)
                    continue
                self._failed.pop((name, version), None)
                with self._lock:
                    self._loaded.setdefault(name, {})[version] = item
                self._set_state(name, version, "AVAILABLE", "OK", "")
                logger.info("Loaded model %s version %d from %s", name, version, path)
                keep.append(version)
            with self._lock:
                current = self._loaded.get(name, {})
                for version in [v for v in current if v not in keep]:
                    del current[version]
                    self._states[name][version] = ("END", "OK", "")
                    logger.info("Unloaded model %s version %d", name, version)

    def _set_state(self, name, version, state, code, message):
        with self._lock:
            self._states.setdefault(name, {})[version] = (state, code, message)

    def _label_version(self, name, label):
        labels = self.version_labels.get(name, {})
        if label not in labels:
            raise rest.bad_request(f"Unrecognized servable version label: {label}")
        return labels[label]

    def get(self, name, version=None, label=None):
        """The loaded version to use, or a TF Serving 404/400 `RestError`."""
        if label is not None:
            version = self._label_version(name, label)
        with self._lock:
            loaded = self._loaded.get(name, {})
            if version is None:
                if loaded:
                    return loaded[max(loaded)]
                raise rest.RestError(404, f"Servable not found for request: Latest({name})")
            if version in loaded:
                return loaded[version]
        raise rest.RestError(404, f"Servable not found for request: Specific({name}, {version})")

    def status(self, name, version=None, label=None):
        if label is not None:
            version = self._label_version(name, label)
        with self._lock:
            states = dict(self._states.get(name, {}))
        if not states:
            raise rest.RestError(404, f"Could not find any versions of model {name}")
        if version is not None:
            if version not in states:
                raise rest.RestError(404, f"Could not find version {version} of model {name}")
            states = {version: states[version]}
        return {
            "model_version_status": [
                {
                    "version": str(v),
                    "state": state,
                    "status": {"error_code": code, "error_message": message},
                }
                for v, (state, code, message) in sorted(states.items(), reverse=True)
            ]
        }


def plain_op_message(message):
    """A TensorFlow error message without TF's graph text: the error itself, one line.

    Drops "Graph execution error:", the "Detected at node ... defined at" stack,
    `[[{{node ...}}]]`, `{{function_node ...}}` and `[Op:...]` tags, and turns
    `assertion failed: [text] [7000] [7000]` into `text 7000 7000`.

    Example:

    >>> plain_op_message("Graph execution error:\\n\\nDetected at node x defined at "
    ...                  "(most recent call last):\\n  File ...\\n\\nInvalid PNG data, size 60"
    ...                  "\\n\\t [[{{node x}}]] [Op:__inference_f_1]")
    'Invalid PNG data, size 60'
    """
    lines = []
    in_stack = False
    for line in str(message).splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("Graph execution error"):
            continue
        if stripped.startswith("Detected at node") or stripped == "<stack traces unavailable>":
            in_stack = True
            continue
        if in_stack and (line[:1] in (" ", "\t") or stripped.startswith("File ")):
            continue
        in_stack = False
        lines.append(stripped)
    text = " ".join(lines)
    text = re.sub(r"\s*\[\[\{\{node [^}]*\}\}\]\]", "", text)
    text = re.sub(r"\{\{function_node [^}]*\}\}\s*", "", text)
    text = re.sub(r"\s*\[\[[^\]]*\]\]", "", text)
    text = re.sub(r"\s*\[Op:[^\]]*\]", "", text)
    match = re.fullmatch(r"assertion failed: \[(.*?)\]((?:\s*\[[^\]]*\])*)\s*", text)
    if match:
        values = re.findall(r"\[([^\]]*)\]", match.group(2))
        text = " ".join([match.group(1)] + values)
    text = text.strip()
    return text if len(text) <= 2000 else text[:2000] + "..."


class RestApp:
    """The WSGI application answering the TF Serving REST v1 contract.

    Args:
        repository: the `ModelRepository`.
        limits: `rest.RequestLimits` of one request (the per-image minimum cost
            and the image caps also follow each model's `keras_cgd.json`).
        max_request_bytes: largest request body.
        max_batch_size: the model runs on at most this many instances at a
            time; larger requests are split and their outputs concatenated
            (TF Serving's `enable_large_batch_splitting`).
        max_concurrent_predictions: model runs (chunks) at a time; a chunk
            that waits `PREDICTION_WAIT_SECONDS` for a slot gets 503 with
            `Retry-After`.
    """

    def __init__(self, repository, max_request_bytes=DEFAULT_MAX_REQUEST_BYTES, limits=None,
                 max_batch_size=DEFAULT_MAX_BATCH_SIZE,
                 max_concurrent_predictions=DEFAULT_MAX_CONCURRENT_PREDICTIONS):
        self.repository = repository
        self.max_request_bytes = max_request_bytes
        self.limits = limits if limits is not None else rest.RequestLimits()
        self.max_batch_size = max_batch_size
        self._slots = threading.BoundedSemaphore(max_concurrent_predictions)
        self.large_request_seen = threading.Event()  # the server trims memory after these

    def __call__(self, environ, start_response):
        from werkzeug.wrappers import Request
        from werkzeug.wrappers import Response

        request = Request(environ)
        headers = {}
        try:
            status, body = self.handle(request)
        except rest.RestError as e:
            status, body = e.status, rest.error_json(e.message)
            headers = e.headers
            if status >= 500:
                logger.error("HTTP %d for %s %s: %s", status, request.method,
                             self._raw_path(request)[:200], e.message)
        except Exception as e:  # a real server fault: never let it take the server down
            logger.exception("Internal error")
            status = 500
            body = rest.error_json(f"Internal error: {type(e).__name__}: {str(e)[:500]}")
        response = Response(body, status=status, content_type="application/json",
                            headers=headers)
        return response(environ, start_response)

    def _raw_path(self, request):
        raw = request.environ.get("RAW_URI") or request.environ.get("REQUEST_URI")
        if raw:
            raw = raw.split("?", 1)[0]
            if "://" in raw:  # absolute-form request target
                raw = "/" + raw.split("://", 1)[1].partition("/")[2]
            return raw
        return request.path

    def _read_body(self, request):
        """The request body, or a 4xx `RestError` (too large, short, slow, malformed)."""
        from werkzeug.exceptions import ClientDisconnected

        limit = self.max_request_bytes
        length = request.content_length
        stream = request.stream
        if length is not None and length > limit:
            try:  # read (a bounded part of) it, so that the client sees the answer
                drained = 0
                while drained < min(length, _DRAIN_LIMIT_BYTES):
                    chunk = stream.read(1 << 20)
                    if not chunk:
                        break
                    drained += len(chunk)
            except (ClientDisconnected, OSError):
                pass
            raise rest.RestError(
                413,
                f"Request body of {length} bytes exceeds the limit of {limit} bytes "
                "(max_request_bytes); send smaller batches.",
            )
        try:
            body = stream.read(limit + 1)
        except ClientDisconnected as e:
            if isinstance(e.__context__, TimeoutError):
                raise self._timeout_error(length) from None
            logger.info("Client closed the connection before sending its %s-byte body", length)
            raise rest.RestError(
                400, f"Request body ended before its Content-Length of {length} bytes "
                "(the client closed the connection or sent a short body)."
            ) from None
        except TimeoutError:
            raise self._timeout_error(length) from None
        except ConnectionError as e:
            logger.info("Client connection lost while reading its body: %s", e)
            raise rest.RestError(400, f"Connection lost while reading the request body: {e}")
        except OSError as e:  # werkzeug's chunked decoding: bad chunk header / terminator
            raise rest.RestError(400, f"Malformed chunked request body: {e}.") from None
        if len(body) > limit:
            raise rest.RestError(
                413, f"Request body exceeds the limit of {limit} bytes (max_request_bytes); "
                "send smaller batches."
            )
        if len(body) > _LARGE_REQUEST_BYTES:
            self.large_request_seen.set()
        return body

    @staticmethod
    def _timeout_error(length):
        timeout = getattr(_request_state, "timeout", None)
        logger.info("Request body not received within %s s", timeout)
        return rest.RestError(
            408, f"Request body not received within the server's request timeout of "
            f"{timeout} s (Content-Length: {length}); send the whole body promptly."
        )

    def handle(self, request):
        path = self._raw_path(request)
        method = request.method.upper()
        if not rest.V1_RE.fullmatch(path):
            shown = path if len(path) <= 200 else path[:200] + "..."
            raise rest.RestError(404, f"Not found: {method} {shown}")
        target = rest.route(method, path)
        repo = self.repository
        if target["kind"] == "status":
            status = repo.status(target["model"], target["version"], target["label"])
            return 200, json.dumps(status, indent=1)
        loaded = repo.get(target["model"], target["version"], target["label"])
        if target["kind"] == "metadata":
            return 200, json.dumps(
                {
                    "model_spec": {
                        "name": target["model"],
                        "signature_name": "",
                        "version": str(loaded.version),
                    },
                    "metadata": {"signature_def": {"signature_def": loaded.signature_def}},
                },
                indent=1,
            )
        doc = rest.parse_json_body(self._read_body(request))
        signature = rest.signature_name_of(doc)
        if signature not in loaded.signatures:
            raise rest.bad_request(
                f'Serving signature name: "{signature}" not found in signature def'
            )
        if target["kind"] != "predict":
            kind = "classification" if target["kind"] == "classify" else "regression"
            raise rest.bad_request(
                f"Expected {kind} signature method_name to be "
                f"tensorflow/serving/{target['kind']}. Was: {loaded.method.get(signature)}"
            )
        return 200, self._predict(loaded, signature, doc)

    def limits_for(self, loaded):
        """This server's `RequestLimits`, tightened by the model's own (keras_cgd.json)."""
        facts = loaded.facts
        size = (facts.get("preprocessing") or {}).get("image_size")
        limits = self.limits
        changes = {}
        if isinstance(size, list) and len(size) == 2 and all(isinstance(d, int) for d in size):
            changes["min_image_pixels"] = max(limits.min_image_pixels, size[0] * size[1])
        for name in ("max_image_pixels", "max_request_pixels"):
            value = facts.get(name)
            if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
                changes[name] = min(getattr(limits, name), value)
        return dataclasses.replace(limits, **changes) if changes else limits

    def _predict(self, loaded, signature, doc):
        specs = loaded.inputs[signature]
        for name, (dtype_name, _, _) in specs.items():
            if dtype_name in ("float16", "bfloat16"):
                dtype_label = "half" if dtype_name == "float16" else "bfloat16"
                raise rest.RestError(501, f"Conversion of JSON Value to type: {dtype_label}")
            if dtype_name not in rest._DTYPES:
                raise rest.RestError(501, f"Conversion of JSON Value to type: {dtype_name}")
        arrays, row_format = rest.read_predict_inputs(
            doc, {name: spec[0] for name, spec in specs.items()},
            limits=self.limits_for(loaded), image_inputs=loaded.image_inputs[signature],
        )
        doc.clear()  # the JSON values are no longer needed while the model runs
        rest.check_input_shapes(arrays, {name: spec[1] for name, spec in specs.items()})
        outputs = self._run(loaded, signature, arrays)
        return rest.predict_response(outputs, row_format)

    def _run(self, loaded, signature, arrays):
        """Run the signature on at most `max_batch_size` instances at a time."""
        sizes = {arr.shape[0] if arr.ndim else None for arr in arrays.values()}
        total = sizes.pop() if len(sizes) == 1 else None
        step = self.max_batch_size
        if total is None or total <= step:
            return self._call(loaded, signature, arrays, 0)
        parts = []
        for start in range(0, total, step):
            chunk = {name: arr[start:start + step] for name, arr in arrays.items()}
            out = self._call(loaded, signature, chunk, start)
            count = min(step, total - start)
            if any(v.ndim == 0 or v.shape[0] != count for v in out.values()):
                # Outputs that are not one row per instance: run the request whole.
                return self._call(loaded, signature, arrays, 0)
            parts.append(out)
        return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}

    def _call(self, loaded, signature, arrays, offset):
        import tensorflow as tf

        specs = loaded.inputs[signature]
        if not self._slots.acquire(timeout=PREDICTION_WAIT_SECONDS):
            raise rest.RestError(
                503, f"Server busy: no model slot free within {PREDICTION_WAIT_SECONDS:g} s; "
                "retry later.", headers={"Retry-After": "1"}
            )
        try:
            tensors = {name: tf.constant(arr, dtype=specs[name][2]) for name, arr in arrays.items()}
            outputs = loaded.signatures[signature](**tensors)
            return {name: value.numpy() for name, value in outputs.items()}
        except tf.errors.OpError as e:
            status = _HTTP_STATUS.get(e.error_code, 500)
            message = plain_op_message(e.message)
            if status == 400:
                message = self._locate_bad_image(loaded, signature, arrays, offset) or message
            raise rest.RestError(status, message) from None
        except UnicodeDecodeError:  # TF's message itself held undecodable bytes
            message = self._locate_bad_image(loaded, signature, arrays, offset)
            raise rest.bad_request(
                message or "The model refused the input (its error message is not text)."
            ) from None
        except (TypeError, ValueError) as e:
            raise rest.bad_request(str(e)[:2000]) from None
        finally:
            self._slots.release()

    @staticmethod
    def _locate_bad_image(loaded, signature, arrays, offset):
        """After a refused call: the message naming the first image that does not decode."""
        import tensorflow as tf

        for name in sorted(loaded.image_inputs[signature] & set(arrays)):
            for k, data in enumerate(arrays[name].reshape(-1)):
                try:
                    tf.io.decode_image(data, channels=3, expand_animations=False)
                except (tf.errors.OpError, UnicodeDecodeError) as e:
                    reason = (plain_op_message(e.message) if isinstance(e, tf.errors.OpError)
                              else "undecodable")
                    return (
                        f"Invalid image in instance {offset + k} of input '{name}': it cannot "
                        f"be decoded ({reason}); only complete JPEG and PNG images are "
                        "accepted."
                    )
        return None


# --- the HTTP server: a bounded pool of request threads, with deadlines ----------

_request_state = threading.local()


class _DeadlineReader(io.RawIOBase):
    """Socket reads that must all finish before one deadline (the request timeout).

    Each `recv` waits at most the time left, so a client that sends nothing, a
    short body or one byte at a time cannot hold a request thread longer than
    the timeout. Writes keep a per-operation timeout of the same length.
    """

    def __init__(self, sock, timeout):
        super().__init__()
        self._sock = sock
        self._timeout = timeout
        self._deadline = time.monotonic() + timeout

    def readable(self):
        return True

    def readinto(self, buffer):
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"request not received within {self._timeout} s")
        self._sock.settimeout(left)
        try:
            return self._sock.recv_into(buffer)
        finally:
            self._sock.settimeout(self._timeout)


def _handler_class():
    from werkzeug.serving import WSGIRequestHandler

    class Handler(WSGIRequestHandler):
        """werkzeug's handler with a request deadline and JSON protocol errors."""

        def setup(self):
            super().setup()
            timeout = self.server.request_timeout
            _request_state.timeout = timeout
            self.connection.settimeout(timeout)
            self.rfile = io.BufferedReader(_DeadlineReader(self.connection, timeout), 65536)

        def send_error(self, code, message=None, explain=None):
            """HTTP-level errors (bad request line, headers too large) as TF Serving JSON."""
            short = self.responses.get(code, ("Error",))[0]
            if self.request_version == "HTTP/0.9":  # unparsable request line: answer HTTP/1.0
                self.request_version = "HTTP/1.0"
            body = rest.error_json(f"{message or short}" + (f": {explain}" if explain else ""))
            body = body.encode("utf-8")
            self.log_error("code %d, message %s", code, message)
            try:
                self.send_response(code, short)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Connection", "close")
                self.end_headers()
                if self.command != "HEAD" and code >= 200 and code not in (204, 304):
                    self.wfile.write(body)
            except OSError:
                pass
            self.close_connection = True

        def log_error(self, format, *args):  # noqa: A002  (http.server's signature)
            logger.info("%s: %s", self.address_string(), format % args)

    return Handler


def _libc_function(name, argtypes):
    """A glibc function through ctypes, or None elsewhere (musl, macOS, Windows)."""
    import ctypes
    import ctypes.util

    try:
        path = ctypes.util.find_library("c")
        function = getattr(ctypes.CDLL(path), name) if path else None
    except (OSError, AttributeError):
        return None
    if function is not None:
        function.argtypes = argtypes
        function.restype = ctypes.c_int
    return function


def _malloc_trim():
    """glibc's `malloc_trim(pad)`, or None."""
    import ctypes

    return _libc_function("malloc_trim", [ctypes.c_size_t])


_M_ARENA_MAX = -8  # glibc <malloc.h>


def limit_malloc_arenas(count=4):
    """Cap glibc's malloc arenas of this process (`mallopt(M_ARENA_MAX, count)`).

    By default glibc gives threads up to 8 arenas per core, and memory freed in
    them after a burst of large requests is not returned, even by
    `malloc_trim` (measured on 2 cores, 8 clients × 4 requests of 8 JPEGs of
    1500 × 1500: +190 MiB kept with the default 16 arenas, none with 4; see
    `rss_mib_after_burst` of `benchmarks/serving_attack.py`).
    `keras-cgd serve` calls it once at start, before its threads run; the same
    as `MALLOC_ARENA_MAX=4`. Returns True when applied (glibc only).
    """
    import ctypes

    mallopt = _libc_function("mallopt", [ctypes.c_int, ctypes.c_int])
    return bool(mallopt is not None and mallopt(_M_ARENA_MAX, count) == 1)


def _server_class():
    from werkzeug.serving import BaseWSGIServer

    class PooledWSGIServer(BaseWSGIServer):
        """werkzeug's server with `num_threads` request threads and a bounded queue.

        Accepted connections wait in a queue of `queue_size`; when it is full the
        connection is answered at once with 503 and `Retry-After`, so the
        threads, the memory they hold and the open sockets stay bounded.
        """

        multithread = True

        def __init__(self, host, port, app, num_threads, queue_size, request_timeout):
            super().__init__(host, port, app, handler=_handler_class())
            self.request_timeout = request_timeout
            self.num_threads = num_threads
            self._queue = queue.Queue(queue_size)
            self._threads = [
                threading.Thread(target=self._work, name=f"keras-cgd-rest-{i}", daemon=True)
                for i in range(num_threads)
            ]
            self._active = 0
            self._active_lock = threading.Lock()
            self._went_idle = threading.Event()
            self._threads.append(threading.Thread(target=self._trim_when_idle, daemon=True,
                                                  name="keras-cgd-rest-trim"))
            for thread in self._threads:
                thread.start()

        def process_request(self, request, client_address):
            try:
                self._queue.put_nowait((request, client_address))
            except queue.Full:
                self._refuse(request)

        def _refuse(self, request):
            body = rest.error_json(
                f"Server busy: all {self.num_threads} request threads are taken and "
                f"{self._queue.maxsize} connections are waiting; retry later."
            ).encode("utf-8")
            head = (
                "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\nRetry-After: 1\r\nConnection: close\r\n\r\n"
            ).encode("ascii")
            try:
                request.settimeout(0.5)
                request.sendall(head + body)
            except OSError:
                pass
            logger.info("Server busy: refused a connection with 503")
            self.shutdown_request(request)

        def _work(self):
            while True:
                item = self._queue.get()
                if item is None:
                    return
                request, client_address = item
                with self._active_lock:
                    self._active += 1
                try:
                    self.finish_request(request, client_address)
                except Exception:
                    self.handle_error(request, client_address)
                finally:
                    self.shutdown_request(request)
                    with self._active_lock:
                        self._active -= 1
                        idle = self._active == 0
                    if idle:
                        self._went_idle.set()

        def _trim_when_idle(self):
            """Give freed heap memory back to the system once no request is running.

            glibc keeps freed memory in its arenas; after a burst of large
            requests (bodies over 1 MiB) the process would stay near its peak.
            `malloc_trim(0)` after 0.2 s without requests returns it (no-op
            without glibc).
            """
            trim = _malloc_trim()
            large = getattr(self.app, "large_request_seen", None)
            while trim is not None and large is not None:
                self._went_idle.wait()
                self._went_idle.clear()
                time.sleep(0.2)
                with self._active_lock:
                    busy = self._active > 0
                if not busy and large.is_set():
                    large.clear()
                    trim(0)

        def handle_error(self, request, client_address):
            logger.exception("Error while handling a request from %s", client_address)

        def server_close(self):
            super().server_close()
            for _ in range(self.num_threads):
                try:
                    self._queue.put_nowait(None)
                except queue.Full:
                    break

    return PooledWSGIServer


class _Poller(threading.Thread):
    def __init__(self, repository, interval):
        super().__init__(name="keras-cgd-poller", daemon=True)
        self.repository = repository
        self.interval = interval
        self.stop = threading.Event()

    def run(self):
        while not self.stop.wait(self.interval):
            try:
                self.repository.poll()
            except Exception:  # keep polling whatever happens
                logger.exception("Polling failed")


def _check_positive(name, value, kind=int):
    if kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool) and value >= 1
    else:
        ok = (isinstance(value, (int, float)) and not isinstance(value, bool)
              and np.isfinite(value) and value > 0)
    if not ok:
        expected = "a positive int" if kind is int else "a positive number of seconds"
        raise ValueError(
            f"Invalid value received for argument `{name}`. Expected {expected}. "
            f"Received: {name}={value!r}"
        )
    return value


def make_server(base_dir, host="127.0.0.1", port=8501, model_name=None, num_versions=1,
                version_labels=None, poll_interval=1.0,
                max_request_bytes=DEFAULT_MAX_REQUEST_BYTES,
                max_instances=rest.DEFAULT_MAX_INSTANCES,
                max_decoded_bytes=rest.DEFAULT_MAX_DECODED_BYTES,
                max_image_pixels=DEFAULT_MAX_IMAGE_PIXELS,
                max_request_pixels=DEFAULT_MAX_REQUEST_PIXELS,
                max_batch_size=DEFAULT_MAX_BATCH_SIZE,
                num_threads=DEFAULT_NUM_THREADS,
                queue_size=DEFAULT_QUEUE_SIZE,
                request_timeout=DEFAULT_REQUEST_TIMEOUT,
                max_concurrent_predictions=DEFAULT_MAX_CONCURRENT_PREDICTIONS):
    """Load the models and bind the server. Returns `(server, poller)`.

    `server.serve_forever()` answers requests; `poller.start()` picks up new
    versions every `poll_interval` seconds; `server.server_port` is the bound
    port (useful with `port=0`).

    The work of one request is bounded before anything is decoded (HTTP 400
    beyond, naming the limit; `rest.RequestLimits`): `max_instances`
    instances, `max_decoded_bytes` of string/image data, images whose header
    declares at most `max_image_pixels`, and images costing at most
    `max_request_pixels` in all (an image costs its header's width × height,
    at least the model's `image_size`; a model's own, lower caps in its
    `keras_cgd.json` win). The model then runs on `max_batch_size` instances
    at a time, at most `max_concurrent_predictions` runs at once. `num_threads`
    threads answer requests (more than the model runs, so that a request
    refused before decoding is answered while others wait for the model); up
    to `queue_size` connections wait for one, beyond which a connection gets
    503 with `Retry-After: 1`. A client has `request_timeout` seconds to send its
    request (line, headers and body), else 408 or the connection is closed.
    """
    check_port(port, lowest=0)
    _check_positive("poll_interval", poll_interval, float)
    _check_positive("request_timeout", request_timeout, float)
    for name, value in (("max_request_bytes", max_request_bytes),
                        ("max_batch_size", max_batch_size), ("num_threads", num_threads),
                        ("queue_size", queue_size),
                        ("max_concurrent_predictions", max_concurrent_predictions)):
        _check_positive(name, value)
    limits = rest.RequestLimits(
        max_instances=max_instances, max_decoded_bytes=max_decoded_bytes,
        max_image_pixels=max_image_pixels, max_request_pixels=max_request_pixels,
    )
    repository = ModelRepository(base_dir, model_name, num_versions, version_labels)
    repository.poll()
    app = RestApp(repository, max_request_bytes=max_request_bytes, limits=limits,
                  max_batch_size=max_batch_size,
                  max_concurrent_predictions=max_concurrent_predictions)
    server = _server_class()(host, port, app, num_threads, queue_size, float(request_timeout))
    return server, _Poller(repository, poll_interval)


def serve(base_dir, host="127.0.0.1", port=8501, **kwargs):
    """Serve every model under `base_dir` over the TF Serving REST API until interrupted.

    Args:
        base_dir: `base_dir/<model_name>/<version>/saved_model.pb` layout.
        host: interface to bind; `"0.0.0.0"` to accept non-local clients.
        port: TCP port (TF Serving's REST default is 8501; 0 picks a free one).
        **kwargs: `model_name`, `num_versions`, `version_labels`,
            `poll_interval`, `max_request_bytes`, `max_instances`,
            `max_decoded_bytes`, `max_image_pixels`, `max_request_pixels`,
            `max_batch_size`, `num_threads`, `queue_size`, `request_timeout`,
            `max_concurrent_predictions` (see `make_server`).

    Example:

    >>> keras_cgd.serving.serve("savedmodels", port=8501)  # doctest: +SKIP
    """
    server, poller = make_server(base_dir, host, port, **kwargs)
    poller.start()
    print(
        f"keras-cgd serve: {base_dir} on http://{host}:{server.server_port} "
        f"(models: {', '.join(sorted(server.app.repository._loaded)) or 'none yet'})",
        flush=True,
    )
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        poller.stop.set()
        server.server_close()


def _parse_labels(items):
    labels = {}
    for item in items or []:
        try:
            model, rest_ = item.split(":", 1)
            label, version = rest_.split("=", 1)
            labels.setdefault(model, {})[label] = int(version)
        except ValueError:
            raise SystemExit(
                "Invalid value received for argument `--version_label`. Expected "
                f"MODEL:LABEL=VERSION. Received: {item!r}"
            )
    return labels


def check_port(port, lowest=1):
    """Raises `ValueError` unless `port` is an int in [lowest, 65535] (`make_server`
    takes 0, a free port; the command line wants a real one, from 1)."""
    if isinstance(port, bool) or not isinstance(port, int) or not lowest <= port <= 65535:
        free = " (0 picks a free port)" if lowest == 0 else ""
        raise ValueError(
            f"Invalid value received for argument `port`. Expected an int in [{lowest}, 65535]{free}. "
            f"Received: port={port!r}"
        )


def _port(text):
    """`--port` as an int (its range is checked by `check_port`, one line on stderr)."""
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number in 1..65535, received {text!r}") from None


def build_parser():
    """The `argparse` parser of `keras-cgd serve`."""
    parser = argparse.ArgumentParser(
        prog="keras-cgd serve",
        description="Serve SavedModels under BASE_DIR/<model>/<version>/ with the "
        "TensorFlow Serving REST API (reference server for local work and tests). Options are "
        "kebab-case; TF Serving's snake_case spellings (--rest_api_num_threads) work too.",
    )
    parser.add_argument("base_dir", help="directory holding <model_name>/<version>/saved_model.pb")
    parser.add_argument("--port", type=_port, default=8501, help="REST port, 1-65535 (default 8501)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="interface to bind (default 127.0.0.1; 0.0.0.0 for all)")
    parser.add_argument("--model-name", "--model_name", default=None,
                        help="serve BASE_DIR itself as one model base path under this name")
    parser.add_argument("--num-versions", "--num_versions", type=int, default=1,
                        help="highest versions of each model kept loaded (default 1)")
    parser.add_argument("--version-label", "--version_label", action="append", metavar="MODEL:LABEL=VERSION",
                        help="version label, e.g. cgd:stable=1 (repeatable)")
    parser.add_argument("--poll-interval", "--poll_interval", type=float, default=1.0,
                        help="seconds between directory polls (default 1)")
    parser.add_argument("--max-request-bytes", "--max_request_bytes", type=int, default=DEFAULT_MAX_REQUEST_BYTES,
                        help="largest request body accepted (default 32 MiB)")
    parser.add_argument("--max-instances", "--max_instances", type=int, default=rest.DEFAULT_MAX_INSTANCES,
                        help="instances per request (default %(default)s)")
    parser.add_argument("--max-decoded-bytes", "--max_decoded_bytes", type=int, default=rest.DEFAULT_MAX_DECODED_BYTES,
                        help="string/image bytes per request after base64 decoding "
                        "(default 24 MiB)")
    parser.add_argument("--max-image-pixels", "--max_image_pixels", type=int, default=DEFAULT_MAX_IMAGE_PIXELS,
                        help="largest width x height an image header may declare "
                        "(default %(default)s)")
    parser.add_argument("--max-request-pixels", "--max_request_pixels", type=int, default=DEFAULT_MAX_REQUEST_PIXELS,
                        help="pixels per request, each image counting at least the model's "
                        "image size (default %(default)s)")
    parser.add_argument("--max-batch-size", "--max_batch_size", type=int, default=DEFAULT_MAX_BATCH_SIZE,
                        help="instances the model runs on at a time (default %(default)s)")
    parser.add_argument("--rest-api-num-threads", "--rest_api_num_threads", type=int, default=DEFAULT_NUM_THREADS,
                        help="request threads (default %(default)s)")
    parser.add_argument("--max-concurrent-predictions", "--max_concurrent_predictions", type=int,
                        default=DEFAULT_MAX_CONCURRENT_PREDICTIONS,
                        help="model runs at a time (default: the CPU count, at least 2)")
    parser.add_argument("--max-queued-connections", "--max_queued_connections", type=int, default=DEFAULT_QUEUE_SIZE,
                        help="connections waiting for a thread before 503 (default %(default)s)")
    parser.add_argument("--rest-api-timeout-in-ms", "--rest_api_timeout_in_ms", type=int,
                        default=int(DEFAULT_REQUEST_TIMEOUT * 1000),
                        help="time a client has to send its request (default %(default)s)")
    parser.add_argument("--log-requests", "--log_requests", action="store_true", help="log every request")
    return parser


def main(argv=None):
    """`keras-cgd serve BASE_DIR [--port 8501] ...` command-line entry point."""
    args = build_parser().parse_args(argv)
    if "MALLOC_ARENA_MAX" not in os.environ:
        limit_malloc_arenas()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("werkzeug").setLevel(logging.INFO if args.log_requests else logging.WARNING)
    try:
        check_port(args.port)
        serve(
            args.base_dir,
            host=args.host,
            port=args.port,
            model_name=args.model_name,
            num_versions=args.num_versions,
            version_labels=_parse_labels(args.version_label),
            poll_interval=args.poll_interval,
            max_request_bytes=args.max_request_bytes,
            max_instances=args.max_instances,
            max_decoded_bytes=args.max_decoded_bytes,
            max_image_pixels=args.max_image_pixels,
            max_request_pixels=args.max_request_pixels,
            max_batch_size=args.max_batch_size,
            num_threads=args.rest_api_num_threads,
            max_concurrent_predictions=args.max_concurrent_predictions,
            queue_size=args.max_queued_connections,
            request_timeout=args.rest_api_timeout_in_ms / 1000.0,
        )
    except ValueError as e:
        print(f"keras-cgd serve: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
