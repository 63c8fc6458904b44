"""Data-parallel training on 2 virtual CPU devices (run in subprocesses,
since the device count must be set before TensorFlow/JAX start)."""

import json
import os
import subprocess
import sys
import textwrap

import keras

SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    import numpy as np
    backend = os.environ["KERAS_BACKEND"]
    if backend == "tensorflow":
        import tensorflow as tf
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras, keras_cgd
    from keras_cgd.distribute import data_parallel_scope, list_devices
    keras.utils.set_random_seed(0)
    name = sys.argv[1]
    x = np.random.default_rng(0).integers(0, 256, (32, 32, 32, 3)).astype("uint8")
    y = np.repeat(np.arange(8), 4).astype("int32")
    with data_parallel_scope() as dist:
        model = keras_cgd.build_model(name, num_classes=8, backbone="tiny_convnet",
                                      input_shape=(32, 32, 3), learning_rate=1e-3)
        before = model.predict(x, verbose=0)["embedding"]
        hist = model.fit(x, {"embedding": y, "logits": y}, batch_size=16,
                         epochs=2, verbose=0, shuffle=False)
        after = model.predict(x, verbose=0)["embedding"]
    print("RESULT" + json.dumps({
        "devices": len(list_devices()),
        "loss": hist.history["loss"],
        "changed": float(np.abs(after - before).max()),
        "norm": float(np.abs(np.linalg.norm(after, axis=1) - 1).max()),
    }))
    """
)


def run(name):
    env = dict(os.environ)
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
    env["KERAS_BACKEND"] = keras.backend.backend()
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, name], env=env, capture_output=True, text=True, timeout=600
    )
    lines = [l for l in proc.stdout.splitlines() if l.startswith("RESULT")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    return json.loads(lines[-1][len("RESULT"):])


def test_cgd_and_multigrain_train_data_parallel_on_two_devices():
    for name in ("cgd", "multigrain"):
        result = run(name)
        assert result["devices"] == 2
        assert all(map(lambda v: v == v and v < 1e6, result["loss"]))  # finite
        assert result["changed"] > 1e-4  # the weights were updated
        assert result["norm"] < 1e-4
