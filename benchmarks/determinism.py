"""Is training bit-reproducible run to run? One step of the default model, several times.

Builds the default job's model (`keras-cgd train` with no arguments) from the same seed
`--trials` times, takes one `train_on_batch` on the same first batch (checked identical
bit for bit) and compares every trainable variable's update with the first trial's.
Differences mean the backend's kernels sum in a run-dependent order (on TensorFlow/CPU:
the Conv2D filter-gradient reduction), so that seeded runs drift apart over training.

    python benchmarks/determinism.py [--trials 3]

Prints one JSON line; writes `benchmarks/results/determinism_<backend>.json`.
"""

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _results import write_result  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    if args.trials < 2:
        parser.error(f"--trials must be at least 2. Received: {args.trials}")

    import keras

    import keras_cgd
    from keras_cgd import training
    from keras_cgd.training.loop import _batches

    start = time.time()
    settings = training.resolve_settings(training.TrainConfig())
    splits = training.resolve_dataset(settings["dataset"], settings["image_size"], settings["small"], 0,
                                      crop_to_box=settings["crop_to_box"])
    first = [next(iter(_batches(splits, settings, 0, 0))) for _ in range(2)]
    batches_identical = bool(np.array_equal(np.asarray(first[0][0]), np.asarray(first[1][0])))
    x = np.asarray(first[0][0])
    y = {k: np.asarray(v) for k, v in first[0][1].items()}
    updates, paths, losses = [], None, []
    for _ in range(args.trials):
        keras.utils.set_random_seed(0)
        model = keras_cgd.build_model(settings["family"], num_classes=splits.num_train_classes,
                                      **settings["model_kwargs"])
        before = [np.array(v.numpy()) for v in model.trainable_weights]
        losses.append([float(v) for v in np.atleast_1d(model.train_on_batch(x, y))])
        updates.append([np.array(v.numpy()) - b for v, b in zip(model.trainable_weights, before)])
        paths = [v.path for v in model.trainable_weights]
    trials = []
    for t in range(1, args.trials):
        differ = [(p, float(np.abs(a - b).max())) for p, a, b in zip(paths, updates[0], updates[t])
                  if not np.array_equal(a, b)]
        trials.append({"differing_variables": len(differ), "max_abs_difference": max((d for _, d in differ), default=0.0),
                       "deepest_differing": differ[-1][0] if differ else None})
    result = {
        "benchmark": "determinism",
        "backend": keras.backend.backend(),
        "model": settings["name"],
        "variables": len(paths),
        "batches_identical": batches_identical,
        "losses": losses,
        "trials_vs_first": trials,
        "bit_reproducible": all(t["differing_variables"] == 0 for t in trials),
        "env": {k: os.environ.get(k) for k in ("TF_DETERMINISTIC_OPS", "TF_ENABLE_ONEDNN_OPTS")},
        "load_average": [round(v, 2) for v in os.getloadavg()],
        "seconds": round(time.time() - start, 1),
    }
    path = args.json or os.path.join(REPO, "benchmarks", "results", f"determinism_{result['backend']}.json")
    write_result(path, result)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, REPO)
    sys.exit(main())
