"""keras-cgd: CGD and MultiGrain image embeddings for Keras 3.

Public API: `build_model`, `list_presets`, `get_preset`, and the
subpackages `layers`, `losses`, `models`, `data`, `evaluation`, `index`,
`export`, `serving`.
"""

__version__ = "0.1.0"

from keras_cgd import data
from keras_cgd import distribute
from keras_cgd import evaluation
from keras_cgd import export
from keras_cgd import index
from keras_cgd import layers
from keras_cgd import losses
from keras_cgd import models
from keras_cgd import serving
from keras_cgd.models import build_model
from keras_cgd.models import get_preset
from keras_cgd.models import list_presets

__all__ = [
    "build_model",
    "data",
    "distribute",
    "evaluation",
    "export",
    "get_preset",
    "index",
    "layers",
    "list_presets",
    "losses",
    "models",
    "serving",
]
