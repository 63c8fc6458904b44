"""`CoupledWeightDecaySGD`: PyTorch's SGD rule (weight decay through the momentum), the
MultiGrain recipe's optimizer."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

import keras_cgd
from keras_cgd.optimizers import CoupledWeightDecaySGD
from tests.testing import to_numpy


def torch_sgd_numpy(w0, grads, lrs, momentum, weight_decay, nesterov=False):
    """torch.optim.SGD (dampening 0) written out: d = g + λw; b = μb + d; w -= η·b."""
    w = np.array(w0, np.float64)
    b = None
    for g, lr in zip(grads, lrs):
        d = g + weight_decay * w
        b = d.copy() if b is None else momentum * b + d
        w = w - lr * ((d + momentum * b) if nesterov else b)
    return w


def zero_gradient_closed_form(steps, lr, momentum, weight_decay):
    """With zero loss gradient, (w_{t+1}, b_t) = A (w_t, b_{t-1}), A = [[1-ηλ, -ημ], [λ, μ]]."""
    a = np.array([[1 - lr * weight_decay, -lr * momentum], [weight_decay, momentum]])
    return (np.linalg.matrix_power(a, steps) @ np.array([1.0, 0.0]))[0]


def test_closed_form_is_the_issue_figure():
    # 1000 steps, lr 0.2, momentum 0.9, wd 1e-4: PyTorch 0.820; Keras decoupled (1-ηλ)^N = 0.980.
    assert zero_gradient_closed_form(1000, 0.2, 0.9, 1e-4) == pytest.approx(0.820, abs=5e-4)
    assert (1 - 0.2 * 1e-4) ** 1000 == pytest.approx(0.980, abs=5e-4)


def test_multigrain_recipe_decays_weights_as_pytorch_sgd():
    """The MultiGrain recipe's optimizer, 1000 `fit` steps with zero loss gradient: every
    weight is w0 × the closed form (0.820); Keras' decoupled SGD would leave 0.980."""
    recipe = keras_cgd.build_model("multigrain", num_classes=2, backbone="tiny_convnet",
                                   input_shape=(16, 16, 3))
    opt = recipe.optimizer
    assert isinstance(opt, CoupledWeightDecaySGD)
    assert float(opt.learning_rate) == pytest.approx(0.2)
    assert (opt.momentum, opt.weight_decay) == (0.9, 1e-4)
    assert opt._use_weight_decay(recipe.get_layer("margin_state").beta) is False
    # the same optimizer (not yet built) trains a small model whose loss has zero gradient
    inputs = keras.Input((3,))
    model = keras.Model(inputs, keras.layers.Dense(4, bias_initializer="ones")(inputs))
    model.compile(optimizer=opt, loss=lambda y, p: 0.0 * keras.ops.sum(p, axis=-1), steps_per_execution=250)
    before = [to_numpy(v).copy() for v in model.trainable_variables]
    model.fit(np.ones((1000, 3), "float32"), np.zeros((1000,), "float32"), batch_size=1, verbose=0, shuffle=False)
    expected = zero_gradient_closed_form(1000, 0.2, 0.9, 1e-4)
    for v, w0 in zip(model.trainable_variables, before):
        np.testing.assert_allclose(to_numpy(v) / w0, expected, rtol=0.01)
    assert int(opt.iterations) == 1000


@pytest.mark.parametrize("nesterov", [False, True])
def test_matches_pytorch_rule_with_gradients_and_lr_drop(nesterov):
    rng = np.random.default_rng(0)
    w0 = rng.normal(size=(3, 2))
    grads = rng.normal(size=(6, 3, 2))
    lrs = [0.1, 0.1, 0.1, 0.01, 0.01, 0.001]
    var = keras.Variable(w0.astype("float32"))
    opt = CoupledWeightDecaySGD(learning_rate=0.1, momentum=0.9, weight_decay=0.05, nesterov=nesterov)
    for g, lr in zip(grads, lrs):
        opt.learning_rate = lr
        opt.apply_gradients([(g.astype("float32"), var)])
    expected = torch_sgd_numpy(w0, grads, lrs, 0.9, 0.05, nesterov)
    np.testing.assert_allclose(to_numpy(var), expected, rtol=1e-5, atol=1e-6)


_TORCH_SGD = """
import json, sys
import torch
w0, grads = json.loads(sys.stdin.read())
p = torch.nn.Parameter(torch.tensor(w0, dtype=torch.float64))
opt = torch.optim.SGD([p], lr=0.2, momentum=0.9, weight_decay=1e-2)
for g in grads:
    p.grad = torch.tensor(g, dtype=torch.float64)
    opt.step()
print(json.dumps(p.detach().tolist()))
"""


def test_matches_torch_optim_sgd():
    # torch runs in its own process (importing it next to TensorFlow can crash).
    try:
        import importlib.util

        if importlib.util.find_spec("torch") is None:
            pytest.skip("torch is not installed")
    except ValueError:
        pytest.skip("torch is not importable")
    rng = np.random.default_rng(1)
    w0 = rng.normal(size=(4,))
    grads = rng.normal(size=(5, 4))
    done = subprocess.run([sys.executable, "-c", _TORCH_SGD], input=json.dumps([w0.tolist(), grads.tolist()]),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    expected = np.array(json.loads(done.stdout.strip().splitlines()[-1]))
    var = keras.Variable(w0.astype("float32"))
    opt = CoupledWeightDecaySGD(learning_rate=0.2, momentum=0.9, weight_decay=1e-2)
    for g in grads:
        opt.apply_gradients([(g.astype("float32"), var)])
    np.testing.assert_allclose(to_numpy(var), expected, rtol=1e-5)


def test_excluded_variable_and_no_momentum():
    w = keras.Variable(np.ones(2, "float32"), name="w")
    beta = keras.Variable(np.ones(1, "float32"), name="beta")
    opt = CoupledWeightDecaySGD(learning_rate=0.5, weight_decay=0.1)
    opt.exclude_from_weight_decay(var_list=[beta])
    opt.apply_gradients([(np.full(2, 0.2, "float32"), w), (np.zeros(1, "float32"), beta)])
    np.testing.assert_allclose(to_numpy(w), 1 - 0.5 * (0.2 + 0.1 * 1.0))
    np.testing.assert_allclose(to_numpy(beta), 1.0)


def test_round_trips_through_keras_files(tmp_path):
    model = keras_cgd.build_model("multigrain", num_classes=2, backbone="tiny_convnet",
                                  input_shape=(16, 16, 3))
    x = np.random.default_rng(0).integers(0, 255, (6, 16, 16, 3)).astype("uint8")
    # the restored MultiGrain model re-excludes β when it recompiles
    ids = np.repeat(np.arange(2), 3).astype("int32")
    model.fit(x, {"embedding": ids, "logits": ids}, batch_size=6, epochs=1, verbose=0)
    path = os.path.join(tmp_path, "mg.keras")
    model.save(path)
    restored = keras.saving.load_model(path)
    assert isinstance(restored.optimizer, CoupledWeightDecaySGD)
    assert restored.optimizer.get_config() == model.optimizer.get_config()
    for a, b in zip(restored.optimizer.variables, model.optimizer.variables):
        np.testing.assert_allclose(to_numpy(a), to_numpy(b))
    state = restored.get_layer("margin_state")
    assert restored.optimizer._use_weight_decay(state.beta) is False


def test_bad_weight_decay_names_the_value():
    with pytest.raises(ValueError, match=r"Received: weight_decay=-1"):
        CoupledWeightDecaySGD(weight_decay=-1)


def test_cgd_recipe_keeps_adam_without_weight_decay():
    model = keras_cgd.build_model("cgd_tiny", num_classes=3, input_shape=(32, 32, 3))
    assert type(model.optimizer) is keras.optimizers.Adam
    assert model.optimizer.weight_decay is None
