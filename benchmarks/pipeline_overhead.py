"""What the source of the per-epoch plan costs the P×K pipeline (issue 15).

`class_balanced_batches` hands its per-epoch index plan to tf.data as whole arrays:
constant tensors with `epoch=<int>`, one `tf.numpy_function` call per iteration with
`epoch=None`. Until issue 15 it used `tf.data.Dataset.from_generator`, which doubled the
CPU per image. This script times the library's pipeline both ways (`library_epoch_0`,
`library_epoch_none`) and with the plan source replaced by a `from_generator` of the very
arrays it holds (`plan_from_generator`; same plan, decode, augmentation and batches),
each in a fresh process (a pipeline run earlier in a process slows later ones), on
~400x350 JPEGs at 224 px.

    python benchmarks/pipeline_overhead.py [--images 60] [--steps 20]

Prints one JSON line (CPU ms per image and images/s of both) and writes
benchmarks/results/pipeline_overhead.json.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _results import write_result  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _child(variant, folder, steps):
    import numpy as np
    import tensorflow as tf

    from keras_cgd import data as kdata

    paths = sorted(os.path.join(folder, f) for f in os.listdir(folder))
    labels = np.arange(len(paths)) % 12
    ds = kdata.ImageDataset(labels, [str(i) for i in range(12)], paths=np.array(paths))
    if variant == "plan_from_generator":
        from_tensors = tf.data.Dataset.from_tensors

        def plan_from_generator(tensors, **kwargs):
            if kwargs or not (isinstance(tensors, tuple) and len(tensors) == 3):
                return from_tensors(tensors, **kwargs)
            arrays = tuple(t.numpy() for t in tensors)
            return tf.data.Dataset.from_generator(
                lambda: iter([arrays]), output_signature=tuple(tf.TensorSpec([None], t.dtype) for t in tensors))

        tf.data.Dataset.from_tensors = plan_from_generator
    epoch = None if variant == "library_epoch_none" else 0
    batches = kdata.class_balanced_batches(ds, 12, 4, image_size=224, augmentation="cgd",
                                           steps_per_epoch=steps, seed=0, epoch=epoch)
    it = iter(batches)
    next(it)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu0, wall0, n = usage.ru_utime + usage.ru_stime, time.time(), 0
    for x, _ in it:
        n += int(x.shape[0])
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu = usage.ru_utime + usage.ru_stime - cpu0
    print(json.dumps({"cpu_ms_per_image": round(cpu / n * 1e3, 2), "images_per_s": round(n / (time.time() - wall0), 1),
                      "images": n}))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=60)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return _child(args.child[0], args.child[1], args.steps)
    sys.path.insert(0, os.path.join(REPO, "benchmarks"))
    from input_pipeline import make_jpegs

    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""), TF_CPP_MIN_LOG_LEVEL="3")
    runs = {"library_epoch_0": [], "library_epoch_none": [], "plan_from_generator": []}
    with tempfile.TemporaryDirectory() as folder:
        make_jpegs(folder, args.images)
        for _ in range(args.rounds):
            for variant in runs:
                out = subprocess.run([sys.executable, __file__, "--steps", str(args.steps), "--child", variant, folder],
                                     env=env, capture_output=True, text=True, check=True).stdout
                runs[variant].append(json.loads(out.strip().splitlines()[-1]))
    best = {k: min(v, key=lambda r: r["cpu_ms_per_image"]) for k, v in runs.items()}
    result = {"benchmark": "pipeline_overhead", "cpu_count": os.cpu_count(), "best": best, "runs": runs,
              "cpu_ratio_generator_over_library": round(best["plan_from_generator"]["cpu_ms_per_image"]
                                                        / best["library_epoch_0"]["cpu_ms_per_image"], 2),
              "load_average": [round(v, 2) for v in os.getloadavg()]}
    path = os.path.join(REPO, "benchmarks", "results", "pipeline_overhead.json")
    write_result(path, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
