"""Serve keras-cgd embeddings over the TensorFlow Serving REST API.

- `Client(url, model_name).embed(images)`: REST client (requests + NumPy only),
  for TF Serving and the reference server alike.
- `serve(base_dir, host, port)` / `main(argv)`: `keras-cgd serve`, a reference
  server of the TF Serving REST v1 contract (TensorFlow-only; imported lazily).
"""

from keras_cgd.serving.client import Client
from keras_cgd.serving.client import ServingError


def serve(base_dir, host="127.0.0.1", port=8501, **kwargs):
    """Serve `base_dir/<model>/<version>/` over TF Serving REST (see `server.serve`)."""
    from keras_cgd.serving import server

    return server.serve(base_dir, host=host, port=port, **kwargs)


def main(argv=None):
    """`keras-cgd serve` entry point (see `server.main`)."""
    from keras_cgd.serving import server

    return server.main(argv)


__all__ = ["Client", "ServingError", "main", "serve"]
