"""Shared fixtures: a folder of real photos (scikit-image) with unreadable files, a tiny model."""

import os

import keras
import pytest

from tests.data._data_files import write_text_as_image
from tests.data._data_files import write_truncated_jpeg
from tests.embedding._helpers import BROKEN
from tests.embedding._helpers import PHOTOS
from tests.embedding._helpers import photo
from tests.embedding._helpers import make_model


@pytest.fixture(scope="session")
def photo_folder(tmp_path_factory):
    """`(root, readable paths sorted, broken paths)`: 7 photos and 2 unreadable files."""
    root = str(tmp_path_factory.mktemp("photos"))
    for name, rel in PHOTOS:
        path = os.path.join(root, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        image = photo(name)
        if rel.endswith((".jpg", ".bmp")):
            image = image.convert("RGB")
        image.save(path)
    write_text_as_image(os.path.join(root, BROKEN[0]))
    write_truncated_jpeg(os.path.join(root, BROKEN[1]))
    with open(os.path.join(root, "notes.txt"), "w") as f:  # not an image: not listed
        f.write("ignored\n")
    readable = [os.path.join(root, rel) for _, rel in PHOTOS]
    broken = [os.path.join(root, rel) for rel in BROKEN]
    return root, readable, broken


@pytest.fixture(scope="session")
def keras_model_path(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("model") / "tiny.keras")
    make_model(0).save(path)
    return path


@pytest.fixture(scope="session")
def keras_runner(keras_model_path):
    """The tiny model loaded once for the session (`EmbeddingModelRunner`)."""
    from keras_cgd import embedding

    return embedding.load_embedding_model(keras_model_path)


@pytest.fixture(scope="session")
def saved_model_dir(tmp_path_factory, keras_model_path):
    """The tiny model exported as a SavedModel (TF backend; a subprocess on JAX)."""
    import keras_cgd

    base = str(tmp_path_factory.mktemp("savedmodels") / "tiny")
    model = keras.saving.load_model(keras_model_path, compile=False)
    return keras_cgd.export.export_saved_model(model, base)
