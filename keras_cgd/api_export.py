"""One decorator that registers a class for Keras serialization.

Every public layer, loss and model of keras-cgd is decorated with
`keras_cgd_export`, so that `.keras` files written by one process load in
another with `keras.saving.load_model` as soon as `keras_cgd` is imported.
"""

import keras

PACKAGE = "keras_cgd"


def keras_cgd_export(cls):
    """Register `cls` as `keras_cgd>ClassName` for Keras serialization."""
    return keras.saving.register_keras_serializable(package=PACKAGE)(cls)
