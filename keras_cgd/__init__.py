"""keras-cgd: CGD and MultiGrain image embeddings for Keras 3.

Public API: `build_model`, `list_presets`, `get_preset`, `load_model`, and the
subpackages `layers`, `losses`, `models`, `optimizers`, `weights`, `data`, `evaluation`, `index`,
`export`, `serving`, `training`, `distribute`.

Imports are lazy: `import keras_cgd` costs nothing, and each subpackage is imported on
first use, so `keras_cgd.serving.Client` needs neither Keras nor TensorFlow and
`keras-cgd --help` answers at once. The classes that `.keras` files refer to are
registered with Keras when `keras_cgd.models` (or `layers`, `losses`) is first used, and
at once when Keras is already imported; `keras_cgd.load_model(path)` always works.
"""

import importlib
import sys

__version__ = "0.2.0"

_SUBPACKAGES = (
    "data", "distribute", "evaluation", "export", "index", "layers", "losses", "models",
    "optimizers", "serving", "training", "weights",
)
_FROM_MODELS = ("build_model", "get_preset", "list_presets")

__all__ = ["build_model", "get_preset", "list_presets", "load_model", *_SUBPACKAGES]


def __getattr__(name):
    if name in _SUBPACKAGES:
        return importlib.import_module(f"keras_cgd.{name}")
    if name in _FROM_MODELS:
        return getattr(importlib.import_module("keras_cgd.models"), name)
    raise AttributeError(f"module 'keras_cgd' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))


def load_model(path):
    """Load a keras-cgd `.keras` file (or a run directory's last checkpoint)."""
    from keras_cgd.training import load_model as _load

    return _load(path)


if "keras" in sys.modules:  # Keras is paid for already: register the classes now.
    importlib.import_module("keras_cgd.models")
