"""Multi-device training with the engines Keras already has.

* TensorFlow backend: `tf.distribute.MirroredStrategy`. Build (and compile)
  the model inside `strategy.scope()`; `fit` splits every batch across the
  replicas. Each replica computes the losses on its own slice, so batch-hard
  triplet mining and distance-weighted sampling see the **per-replica**
  batch (as MultiGrain's default per-GPU sampling). Keep P×K batches whole
  per replica by making the global batch a multiple of
  `replicas × images_per_class` with classes grouped (the P×K batcher emits
  classes contiguously).
* JAX backend: `keras.distribution.DataParallel`. The jitted train step
  works on the global, sharded batch, so the losses mine over the **global**
  batch.

`data_parallel_scope()` returns the right context for the current backend.
"""

import contextlib

import keras


def list_devices():
    """Devices Keras' distribution API sees (JAX) or TF's logical devices."""
    if keras.backend.backend() == "jax":
        import jax

        return jax.devices()
    import tensorflow as tf

    gpus = tf.config.list_logical_devices("GPU")
    return gpus or tf.config.list_logical_devices("CPU")


@contextlib.contextmanager
def data_parallel_scope(devices=None):
    """Context in which to build, compile and fit a model data-parallel.

    Args:
        devices: optional device list (JAX: `jax.Device`s; TF: device name
            strings). Defaults to every accelerator, or every CPU device.

    Yields: the `tf.distribute.Strategy` (TF) or `keras.distribution`
    distribution (JAX).

    Example (TF backend, two devices):

        with keras_cgd.distribute.data_parallel_scope() as strategy:
            model = keras_cgd.build_model("cgd_tiny", num_classes=10)
        model.fit(dataset, epochs=2)
    """
    backend = keras.backend.backend()
    if backend == "jax":
        distribution = keras.distribution.DataParallel(devices=devices or list_devices())
        previous = keras.distribution.distribution()
        keras.distribution.set_distribution(distribution)
        try:
            yield distribution
        finally:
            keras.distribution.set_distribution(previous)
    elif backend == "tensorflow":
        import tensorflow as tf

        if devices is None:
            devices = [d.name for d in list_devices()]
        strategy = tf.distribute.MirroredStrategy(devices=devices)
        with strategy.scope():
            yield strategy
    else:
        raise ValueError(
            "data_parallel_scope supports the 'tensorflow' and 'jax' backends. "
            f"Received: backend={backend!r}"
        )
