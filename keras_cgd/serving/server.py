"""`keras-cgd serve`: a reference server for the TensorFlow Serving REST API.

TensorFlow-only module. It loads SavedModels with `tf.saved_model.load` and
answers the TF Serving REST v1 contract (`reference/ecosystem.md` §5, §7) on a
threaded werkzeug server: model status, metadata, `:predict` in row
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

Example:

    keras-cgd serve savedmodels --port 8501
    curl localhost:8501/v1/models/cgd
"""

import argparse
import json
import logging
import os
import sys
import threading

from keras_cgd.export.saved_model import version_dirs
from keras_cgd.serving import rest

logger = logging.getLogger("keras_cgd.serving")

DEFAULT_MAX_REQUEST_BYTES = 32 * 1024 * 1024
_DRAIN_LIMIT_BYTES = 256 * 1024 * 1024

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


class RestApp:
    """The WSGI application answering the TF Serving REST v1 contract."""

    def __init__(self, repository, max_request_bytes=DEFAULT_MAX_REQUEST_BYTES,
                 max_concurrent_predictions=32):
        self.repository = repository
        self.max_request_bytes = max_request_bytes
        self._slots = threading.BoundedSemaphore(max_concurrent_predictions)

    def __call__(self, environ, start_response):
        from werkzeug.wrappers import Request
        from werkzeug.wrappers import Response

        request = Request(environ)
        try:
            status, body = self.handle(request)
        except rest.RestError as e:
            status, body = e.status, rest.error_json(e.message)
        except Exception as e:  # never let a request take the server down
            logger.exception("Internal error")
            status, body = 500, rest.error_json(f"Internal error: {type(e).__name__}: {e}")
        response = Response(body, status=status, content_type="application/json")
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
        limit = self.max_request_bytes
        length = request.content_length
        stream = request.stream
        if length is not None and length > limit:
            drained = 0
            while drained < min(length, _DRAIN_LIMIT_BYTES):
                chunk = stream.read(1 << 20)
                if not chunk:
                    break
                drained += len(chunk)
            raise rest.RestError(
                413,
                f"Request body of {length} bytes exceeds the limit of {limit} bytes "
                "(max_request_bytes); send smaller batches.",
            )
        body = stream.read(limit + 1)
        if len(body) > limit:
            raise rest.RestError(
                413, f"Request body exceeds the limit of {limit} bytes (max_request_bytes); "
                "send smaller batches."
            )
        return body

    def handle(self, request):
        path = self._raw_path(request)
        method = request.method.upper()
        if not rest.V1_RE.fullmatch(path):
            raise rest.RestError(404, f"Not found: {method} {path}")
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

    def _predict(self, loaded, signature, doc):
        import tensorflow as tf

        specs = loaded.inputs[signature]
        for name, (dtype_name, _, _) in specs.items():
            if dtype_name in ("float16", "bfloat16"):
                dtype_label = "half" if dtype_name == "float16" else "bfloat16"
                raise rest.RestError(501, f"Conversion of JSON Value to type: {dtype_label}")
            if dtype_name not in rest._DTYPES:
                raise rest.RestError(501, f"Conversion of JSON Value to type: {dtype_name}")
        arrays, row_format = rest.read_predict_inputs(
            doc, {name: spec[0] for name, spec in specs.items()}
        )
        rest.check_input_shapes(arrays, {name: spec[1] for name, spec in specs.items()})
        tensors = {name: tf.constant(arr, dtype=specs[name][2]) for name, arr in arrays.items()}
        if not self._slots.acquire(timeout=60):
            raise rest.RestError(503, "Server busy: too many concurrent predictions; retry later.")
        try:
            outputs = loaded.signatures[signature](**tensors)
        except tf.errors.OpError as e:
            raise rest.RestError(_HTTP_STATUS.get(e.error_code, 500), e.message)
        except (TypeError, ValueError) as e:
            raise rest.bad_request(str(e))
        finally:
            self._slots.release()
        return rest.predict_response({k: v.numpy() for k, v in outputs.items()}, row_format)


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


def make_server(base_dir, host="127.0.0.1", port=8501, model_name=None, num_versions=1,
                version_labels=None, poll_interval=1.0,
                max_request_bytes=DEFAULT_MAX_REQUEST_BYTES):
    """Load the models and bind the server. Returns `(server, poller)`.

    `server.serve_forever()` answers requests; `poller.start()` picks up new
    versions every `poll_interval` seconds; `server.server_port` is the bound
    port (useful with `port=0`).
    """
    from werkzeug.serving import make_server as werkzeug_server

    if not isinstance(poll_interval, (int, float)) or poll_interval <= 0:
        raise ValueError(
            "Invalid value received for argument `poll_interval`. Expected a positive "
            f"number of seconds. Received: poll_interval={poll_interval!r}"
        )
    if isinstance(max_request_bytes, bool) or not isinstance(max_request_bytes, int) \
            or max_request_bytes < 1:
        raise ValueError(
            "Invalid value received for argument `max_request_bytes`. Expected a positive "
            f"int. Received: max_request_bytes={max_request_bytes!r}"
        )
    repository = ModelRepository(base_dir, model_name, num_versions, version_labels)
    repository.poll()
    app = RestApp(repository, max_request_bytes=max_request_bytes)
    server = werkzeug_server(host, port, app, threaded=True)
    return server, _Poller(repository, poll_interval)


def serve(base_dir, host="127.0.0.1", port=8501, **kwargs):
    """Serve every model under `base_dir` over the TF Serving REST API until interrupted.

    Args:
        base_dir: `base_dir/<model_name>/<version>/saved_model.pb` layout.
        host: interface to bind; `"0.0.0.0"` to accept non-local clients.
        port: TCP port (TF Serving's REST default is 8501; 0 picks a free one).
        **kwargs: `model_name`, `num_versions`, `version_labels`,
            `poll_interval`, `max_request_bytes` (see `make_server`).

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


def main(argv=None):
    """`keras-cgd serve BASE_DIR [--port 8501] ...` command-line entry point."""
    parser = argparse.ArgumentParser(
        prog="keras-cgd serve",
        description="Serve SavedModels under BASE_DIR/<model>/<version>/ with the "
        "TensorFlow Serving REST API (reference server for local work and tests).",
    )
    parser.add_argument("base_dir", help="directory holding <model_name>/<version>/saved_model.pb")
    parser.add_argument("--port", type=int, default=8501, help="REST port (default 8501)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="interface to bind (default 127.0.0.1; 0.0.0.0 for all)")
    parser.add_argument("--model_name", default=None,
                        help="serve BASE_DIR itself as one model base path under this name")
    parser.add_argument("--num_versions", type=int, default=1,
                        help="highest versions of each model kept loaded (default 1)")
    parser.add_argument("--version_label", action="append", metavar="MODEL:LABEL=VERSION",
                        help="version label, e.g. cgd:stable=1 (repeatable)")
    parser.add_argument("--poll_interval", type=float, default=1.0,
                        help="seconds between directory polls (default 1)")
    parser.add_argument("--max_request_bytes", type=int, default=DEFAULT_MAX_REQUEST_BYTES,
                        help="largest request body accepted (default 32 MiB)")
    parser.add_argument("--log_requests", action="store_true", help="log every request")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("werkzeug").setLevel(logging.INFO if args.log_requests else logging.WARNING)
    try:
        serve(
            args.base_dir,
            host=args.host,
            port=args.port,
            model_name=args.model_name,
            num_versions=args.num_versions,
            version_labels=_parse_labels(args.version_label),
            poll_interval=args.poll_interval,
            max_request_bytes=args.max_request_bytes,
        )
    except ValueError as e:
        print(f"keras-cgd serve: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
