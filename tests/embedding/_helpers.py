"""Helpers of the embedding tests: real photos (scikit-image), a tiny model, a reference."""

import os

import keras
import numpy as np
import tensorflow as tf
from PIL import Image

IMAGE_SIZE = 32
# (skimage.data name, file name under the folder); grey-scale ones are decoded to RGB.
PHOTOS = [
    ("astronaut", "a/astronaut.png"),
    ("chelsea", "a/chelsea.jpg"),
    ("coffee", "b/coffee.jpg"),
    ("rocket", "b/rocket.bmp"),
    ("camera", "c/camera.png"),
    ("coins", "c/coins.gif"),
    ("hubble_deep_field", "d.jpg"),
]
BROKEN = ["b/fake.jpg", "c/truncated.jpg"]


def photo(name):
    import skimage.data

    image = getattr(skimage.data, name)()
    image = Image.fromarray(image)
    image.thumbnail((160, 160))  # small files keep the tests fast
    return image


def listing(photo_folder):
    """All image files of the folder in the job's order (sorted absolute paths)."""
    root, readable, broken = photo_folder
    return sorted(os.path.abspath(p) for p in readable + broken)


def make_model(seed, embedding_dim=96):
    import keras_cgd

    keras.utils.set_random_seed(seed)
    return keras_cgd.build_model("cgd_tiny", num_classes=3, input_shape=(IMAGE_SIZE, IMAGE_SIZE, 3),
                                 embedding_dim=embedding_dim)


def reference_embeddings(model_path, paths):
    """Plain `model.predict` on images decoded and resized with TF ops written out here."""
    model = keras.saving.load_model(model_path, compile=False)
    images = []
    for p in paths:
        image = tf.io.decode_image(tf.io.read_file(p), channels=3, expand_animations=False)
        image = tf.image.resize(tf.cast(image, tf.float32), (IMAGE_SIZE, IMAGE_SIZE), method="bilinear",
                                antialias=True)
        images.append(image.numpy())
    return np.asarray(model.predict(np.stack(images), verbose=0)["embedding"], np.float32)
