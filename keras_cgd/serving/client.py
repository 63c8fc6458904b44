"""REST client for embeddings served by TF Serving or `keras-cgd serve`.

Needs only `requests` and NumPy (no TensorFlow): it speaks the TF Serving REST
v1 contract, so it works against the `tensorflow/serving` Docker image and the
reference server alike.
"""

import base64
import json
import os
import time

import numpy as np


class ServingError(RuntimeError):
    """A non-200 answer of the server: `status_code` and the server's `message`."""

    def __init__(self, status_code, message, url=None):
        super().__init__(f"HTTP {status_code} from {url}: {message}")
        self.status_code = status_code
        self.message = message
        self.url = url


class Client:
    """Compute embeddings with a served keras-cgd SavedModel.

    `embed` sends encoded images (file paths or bytes) to the `serving_default`
    signature (input `image_bytes`, decoded and resized by the server exactly
    as evaluation does) and pixel arrays `(H, W, 3)` / `(N, H, W, 3)` (RGB in
    [0, 255], already at the model's image size) to `serving_pixels`. Requests
    carry at most `batch_size` images and, when the images allow it, at most
    `max_request_bytes` of JSON (an image larger than that goes alone); HTTP 503 (model loading / server busy)
    and connection failures are retried `max_retries` times with exponential
    backoff.

    Args:
        url: server root, e.g. `"http://localhost:8501"`.
        model_name: the served model name.
        version: int version to query (`/versions/<v>`), or None for the latest.
        label: version label (`/labels/<l>`); exclusive with `version`.
        batch_size: images per request.
        max_request_bytes: largest request body to build (default 32 MiB,
            `keras-cgd serve`'s default limit); batches are split to fit.
        timeout: seconds per HTTP request.
        max_retries: retries on 503 / connection errors.
        backoff: seconds before the first retry (doubled each time).
        bytes_signature: signature taking encoded images.
        pixels_signature: signature taking float pixels.
        session: an optional `requests.Session`.

    Example:

    >>> client = keras_cgd.serving.Client("http://localhost:8501", "cgd")
    >>> emb = client.embed(["a.jpg", "b.png"])  # (2, D) float32
    """

    def __init__(self, url="http://localhost:8501", model_name="model", version=None, label=None,
                 batch_size=32, timeout=60.0, max_retries=3, backoff=0.5,
                 bytes_signature="serving_default", pixels_signature="serving_pixels",
                 session=None, max_request_bytes=32 * 1024 * 1024):
        import requests

        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise ValueError(
                "Invalid value received for argument `url`. Expected an http(s) URL such "
                f"as 'http://localhost:8501'. Received: url={url!r}"
            )
        if not isinstance(model_name, str) or not model_name:
            raise ValueError(
                "Invalid value received for argument `model_name`. Expected a non-empty "
                f"string. Received: model_name={model_name!r}"
            )
        if version is not None and label is not None:
            raise ValueError(
                "Arguments `version` and `label` are exclusive. "
                f"Received: version={version!r}, label={label!r}"
            )
        if version is not None and (isinstance(version, bool) or not isinstance(version, int)
                                    or version < 0):
            raise ValueError(
                "Invalid value received for argument `version`. Expected a non-negative "
                f"int or None. Received: version={version!r}"
            )
        for name, value in (("batch_size", batch_size), ("max_retries", max_retries),
                            ("max_request_bytes", max_request_bytes)):
            minimum = 0 if name == "max_retries" else 1
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ValueError(
                    f"Invalid value received for argument `{name}`. Expected an int >= "
                    f"{minimum}. Received: {name}={value!r}"
                )
        from urllib.parse import quote

        self.url = url.rstrip("/")
        self.model_name = model_name
        path = f"{self.url}/v1/models/{quote(model_name, safe='')}"
        if version is not None:
            path += f"/versions/{version}"
        elif label is not None:
            path += f"/labels/{quote(label, safe='')}"
        self._model_url = path
        self.batch_size = batch_size
        self.max_request_bytes = max_request_bytes
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff = backoff
        self.bytes_signature = bytes_signature
        self.pixels_signature = pixels_signature
        self.session = session or requests.Session()

    # --- HTTP ------------------------------------------------------------------
    def _request(self, method, url, payload=None, data=None):
        import requests

        headers = {"Content-Type": "application/json"} if data is not None else None
        delay = self.backoff
        for attempt in range(self.max_retries + 1):
            try:
                response = self.session.request(method, url, json=payload, data=data,
                                                headers=headers, timeout=self.timeout)
            except (requests.ConnectionError, requests.Timeout) as e:
                if attempt == self.max_retries:
                    raise ServingError(None, f"{type(e).__name__}: {e}", url) from e
            else:
                if response.status_code == 200:
                    return response.json()
                if response.status_code != 503 or attempt == self.max_retries:
                    try:
                        message = response.json().get("error", response.text)
                    except ValueError:
                        message = response.text
                    raise ServingError(response.status_code, message, url)
            time.sleep(delay)
            delay *= 2

    def status(self):
        """`GET /v1/models/<name>`: the model's version status."""
        return self._request("GET", self._model_url)

    def metadata(self):
        """`GET /v1/models/<name>/metadata`: the signature definitions."""
        return self._request("GET", self._model_url + "/metadata")

    def predict(self, inputs, signature_name="serving_default"):
        """`:predict` in the columnar format; returns the `outputs` value."""
        payload = {"signature_name": signature_name, "inputs": inputs}
        return self._request("POST", self._model_url + ":predict", payload)["outputs"]

    # --- embeddings --------------------------------------------------------------
    def embed(self, images, output="embedding"):
        """Embeddings of `images`, in order, as a float32 `(N, D)` array.

        Args:
            images: a path (str / `os.PathLike`), encoded image bytes, a pixel
                array `(H, W, 3)` or `(N, H, W, 3)`, or a list mixing these.
            output: which signature output to return ("embedding" or "logits").

        Returns:
            float32 NumPy array `(N, D)`.
        """
        items = self._as_items(images)
        if not items:
            raise ValueError("Invalid value received for argument `images`. Expected at least "
                             "one image. Received: images=[]")
        results = [None] * len(items)
        for signature, is_bytes in ((self.bytes_signature, True), (self.pixels_signature, False)):
            indices = [i for i, item in enumerate(items) if isinstance(item, bytes) == is_bytes]
            for chunk, texts in self._chunks(items, indices, signature):
                body = (f'{{"signature_name": {json.dumps(signature)}, "inputs": ['
                        + ",".join(texts) + "]}")
                answer = self._request("POST", self._model_url + ":predict",
                                       data=body.encode("ascii"))
                out = self._output(answer["outputs"], output)
                for i, row in zip(chunk, out):
                    results[i] = row
        return np.stack(results).astype(np.float32)

    def _chunks(self, items, indices, signature):
        """`(indices, JSON texts)` groups within `batch_size` and `max_request_bytes`.

        Consecutive images; one image over `max_request_bytes` goes alone.
        """
        overhead = len(f'{{"signature_name": {json.dumps(signature)}, "inputs": []}}')
        chunk, texts, size = [], [], overhead
        for i in indices:
            item = items[i]
            if isinstance(item, bytes):
                text = json.dumps({"b64": base64.b64encode(item).decode("ascii")})
            else:
                text = json.dumps(np.asarray(item, np.float32).tolist())  # ASCII only
            if chunk and (len(chunk) == self.batch_size
                          or size + 1 + len(text) > self.max_request_bytes):
                yield chunk, texts
                chunk, texts, size = [], [], overhead
            size += len(text) + (1 if chunk else 0)
            chunk.append(i)
            texts.append(text)
        if chunk:
            yield chunk, texts

    @staticmethod
    def _output(outputs, name):
        if isinstance(outputs, dict):
            if name not in outputs:
                raise ValueError(
                    f"Invalid value received for argument `output`. Expected one of "
                    f"{sorted(outputs)}. Received: output={name!r}"
                )
            outputs = outputs[name]
        return np.asarray(outputs, dtype=np.float32)

    @staticmethod
    def _as_items(images):
        if isinstance(images, np.ndarray):
            if images.ndim == 4:
                return list(images)
            images = [images]
        elif isinstance(images, (str, bytes, os.PathLike)):
            images = [images]
        items = []
        for i, image in enumerate(images):
            if isinstance(image, (bytes, bytearray, memoryview)):
                items.append(bytes(image))
            elif isinstance(image, (str, os.PathLike)):
                with open(image, "rb") as f:
                    items.append(f.read())
            elif isinstance(image, np.ndarray) and image.ndim == 3 and image.shape[-1] == 3:
                items.append(image)
            else:
                shape = getattr(image, "shape", None)
                raise ValueError(
                    "Invalid value received for argument `images`. Expected paths, encoded "
                    "image bytes or RGB pixel arrays (H, W, 3). Received at position "
                    f"{i}: {type(image).__name__}" + (f" of shape {shape}" if shape else "")
                )
        return items
