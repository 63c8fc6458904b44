"""Export keras-cgd models as versioned SavedModels for TensorFlow Serving.

TensorFlow-only subpackage (the export always runs on the TensorFlow backend;
from JAX it goes through a `.keras` file and a TensorFlow subprocess).

    >>> path = keras_cgd.export.export_saved_model(model, "savedmodels/cgd")
"""

from keras_cgd.export.saved_model import DEFAULT_MAX_IMAGE_PIXELS
from keras_cgd.export.saved_model import DEFAULT_MAX_REQUEST_PIXELS
from keras_cgd.export.saved_model import METADATA_FILENAME
from keras_cgd.export.saved_model import export_saved_model
from keras_cgd.export.saved_model import list_versions
from keras_cgd.export.saved_model import remove_stale_temporaries

__all__ = [
    "DEFAULT_MAX_IMAGE_PIXELS",
    "DEFAULT_MAX_REQUEST_PIXELS",
    "METADATA_FILENAME",
    "export_saved_model",
    "list_versions",
    "remove_stale_temporaries",
]
