import itertools

import keras
import numpy as np
import pytest

from keras_cgd.layers import CombinedGlobalDescriptor
from tests.testing import run_layer_saving_test
from tests.testing import run_serialization_test
from tests.testing import to_numpy

ORDERINGS = [
    "".join(p) for r in (1, 2, 3) for p in itertools.permutations("SMG", r)
]


def pool_numpy(x, letter, p=3.0):
    if letter == "S":
        return x.mean(axis=(1, 2))
    if letter == "M":
        return x.max(axis=(1, 2))
    return np.mean(np.maximum(x, 1e-6) ** p, axis=(1, 2)) ** (1 / p)


def l2n(v):
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


@pytest.mark.parametrize("descriptors", ORDERINGS)
def test_matches_numpy_for_every_ordering(descriptors):
    dim = 12
    layer = CombinedGlobalDescriptor(descriptors, embedding_dim=dim)
    x = np.random.rand(3, 4, 5, 6).astype("float32")
    emb, first = layer(x)
    emb, first = to_numpy(emb), to_numpy(first)
    branches = []
    for letter, proj in zip(descriptors, layer.projections):
        kernel = to_numpy(proj.kernel)
        assert kernel.shape == (6, dim // len(descriptors))
        branches.append(l2n(pool_numpy(x.astype("float64"), letter) @ kernel))
    expected = l2n(np.concatenate(branches, axis=-1))
    np.testing.assert_allclose(emb, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=-1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(first, pool_numpy(x, descriptors[0]), rtol=1e-5)
    assert emb.shape == (3, dim)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"descriptors": "SX"}, r"Unknown letter.*'X'.*Received: descriptors='SX'"),
        ({"descriptors": "SS"}, r"once.*Received: descriptors='SS'"),
        ({"descriptors": ""}, r"Received: descriptors=''"),
        ({"descriptors": "SMG", "embedding_dim": 100}, r"divisible.*Received: embedding_dim=100"),
        ({"descriptors": "SG", "embedding_dim": 0}, r"Received: embedding_dim=0"),
    ],
)
def test_bad_arguments_name_the_value(kwargs, match):
    with pytest.raises(ValueError, match=match):
        CombinedGlobalDescriptor(**kwargs)


def test_lowercase_letters_accepted():
    assert CombinedGlobalDescriptor("sg", embedding_dim=8).descriptors == "SG"


def test_variable_spatial_size_and_saving(tmp_path):
    layer = CombinedGlobalDescriptor("MSG", embedding_dim=9, trainable_p=True)
    run_serialization_test(layer)
    x = np.random.rand(2, 6, 7, 5).astype("float32")
    inputs = keras.Input((None, None, 5))
    model = keras.Model(inputs, layer(inputs))
    for shape in [(2, 3, 3, 5), (2, 8, 5, 5)]:
        e, f = model.predict(np.random.rand(*shape).astype("float32"), verbose=0)
        assert e.shape == (2, 9) and f.shape == (2, 5)
    restored = run_layer_saving_test(
        CombinedGlobalDescriptor("GSM", embedding_dim=6), x, tmp_path
    )
    assert restored.layers[-1].descriptors == "GSM"


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision(policy):
    keras.config.set_dtype_policy(policy)
    layer = CombinedGlobalDescriptor("SMG", embedding_dim=12)
    emb, first = layer(np.random.rand(2, 4, 4, 8).astype("float32") * 50)
    emb = to_numpy(emb).astype("float32")
    assert np.all(np.isfinite(emb))
    np.testing.assert_allclose(np.linalg.norm(emb, axis=-1), 1.0, rtol=2e-2)


def test_spoc_is_a_plain_mean_and_gem_clamped_by_default():
    # CGD reference: SPoC = x.mean(H, W), also for negative activations.
    x = np.random.default_rng(5).normal(-0.3, 1.0, (2, 3, 3, 4)).astype("float32")
    _, first = CombinedGlobalDescriptor("SG", embedding_dim=8)(x)
    np.testing.assert_allclose(to_numpy(first), x.mean(axis=(1, 2)), rtol=1e-5, atol=1e-7)
    _, first = CombinedGlobalDescriptor("GS", embedding_dim=8)(x)
    np.testing.assert_allclose(to_numpy(first), pool_numpy(x.astype("float64"), "G"), rtol=1e-5)
    # clamp="": GeM as leftthomas/CGD, sign(m)|m|^(1/3) with m = mean(x^3)
    _, first = CombinedGlobalDescriptor("GS", embedding_dim=8, clamp="")(x)
    m = np.mean(x.astype("float64") ** 3, axis=(1, 2))
    np.testing.assert_allclose(to_numpy(first), np.sign(m) * np.abs(m) ** (1 / 3), rtol=1e-5, atol=1e-7)
    # clamp="SG": SPoC clamped as well
    _, first = CombinedGlobalDescriptor("SG", embedding_dim=8, clamp="SG")(x)
    np.testing.assert_allclose(to_numpy(first), np.maximum(x, 1e-6).mean(axis=(1, 2)), rtol=1e-5)
    run_serialization_test(CombinedGlobalDescriptor("SG", embedding_dim=8, clamp="SG"))


def test_clamp_argument_errors():
    with pytest.raises(ValueError, match=r"Received: clamp='M'"):
        CombinedGlobalDescriptor("SMG", embedding_dim=12, clamp="M")
    with pytest.raises(ValueError, match=r"gem_p=2.5"):
        CombinedGlobalDescriptor("SG", embedding_dim=8, gem_p=2.5, clamp="")
    with pytest.raises(ValueError, match=r"trainable_p=True"):
        CombinedGlobalDescriptor("SG", embedding_dim=8, trainable_p=True, clamp="S")
    CombinedGlobalDescriptor("SM", embedding_dim=8, trainable_p=True, clamp="")  # no GeM branch: fine
