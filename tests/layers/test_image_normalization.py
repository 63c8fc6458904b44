import keras
import numpy as np

from keras_cgd.layers import ImageNormalization
from tests.testing import to_numpy


def test_uint8_batches_are_normalised_as_float_pixels():
    # The input pipelines emit uint8 batches: the model's first layer must take them.
    x = np.random.default_rng(0).integers(0, 256, (2, 5, 4, 3), dtype=np.uint8)
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    want = (x / 255.0 - mean) / std
    np.testing.assert_allclose(to_numpy(ImageNormalization()(x)), want, rtol=1e-5, atol=1e-5)
    inputs = keras.Input((5, 4, 3))  # a float32 model input fed uint8 arrays by predict
    model = keras.Model(inputs, ImageNormalization(channel_order="bgr")(inputs))
    np.testing.assert_allclose(model.predict(x, verbose=0), (x[..., ::-1] / 255.0 - mean) / std, rtol=1e-5, atol=1e-5)
