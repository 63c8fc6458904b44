"""Training throughput on one GPU: keras-cgd `model.fit` on JAX against PyTorch (img/s).

Two recipes, each trained three ways on the same synthetic uint8 batches, same run:

- **CGD**: ResNet-50 with last stride 1, SMG descriptors, 1536-d embedding, P×K = 32×4
  batches (128), 224 px, bf16; batch-hard triplet + smoothed, tempered cross-entropy,
  Adam 1e-4 (`keras_cgd.build_model("cgd", ...)`'s recipe).
- **MultiGrain**: ResNet-50, GeM p = 3, repeated-augmentation batches (128 = copies of
  ~43 images, m = 3), 224 px, bf16; λ·CE + (1 − λ)·margin loss with distance-weighted
  sampling and a learnable β, SGD 0.2 / momentum 0.9 / weight decay 1e-4.

Rows: `keras` = `model.fit` of the keras-cgd model (`KERAS_BACKEND=jax`,
`mixed_bfloat16`, jit) fed by a `keras.utils.PyDataset` of host NumPy uint8 batches (the
model normalises inside, as with keras-cgd's tf.data pipelines); `torch` = the same
architecture and losses written in PyTorch (`benchmarks/_torch_models.py`), eager, bf16
autocast, channels-last, uint8 batches copied from pinned host memory each step;
`torch_compile` = the same module under `torch.compile`. Each row runs in its own
process (GPU memory and compile caches are not shared) with warm-up steps first.

Needs only keras, JAX, PyTorch and NumPy (no TensorFlow, no torchvision): keras-cgd's
package `__init__` imports TensorFlow-based modules (data pipelines, export), so this
script imports `keras_cgd.models` (with `keras_cgd.layers`, `keras_cgd.losses`) without
running that `__init__`, here as on the GPU machine.

Usage:
    python benchmarks/gpu_train_throughput.py                 # on a GPU machine
    python benchmarks/gpu_train_throughput.py --dry-run       # CPU, tiny sizes, prints only

`--dry-run` runs everything in one process on CPU with a one-convolution trunk at 16 px, float32,
2 timed steps, and `torch.compile(backend="eager")` (graph capture without Inductor's C++ build),
so that CI checks the script without a GPU; its figures mean nothing. A full run prints
one JSON line and writes benchmarks/results/gpu_train_throughput.json with
`keras_img_per_s`, `torch_img_per_s`, `torch_compile_img_per_s` and
`ratio_keras_over_torch_compile` (top level: CGD; per recipe under "cgd"/"multigrain").
"""

import argparse
import importlib.util
import json
import os
import platform
import subprocess
import sys
import time
import types

import numpy as np

os.environ["KERAS_BACKEND"] = "jax"  # the benchmark is defined on JAX
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

ROWS = ("keras", "torch", "torch_compile")
RECIPES = ("cgd", "multigrain")
HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def settings(dry_run):
    if dry_run:
        return {"backbone": "micro", "image_size": 16, "classes_per_batch": 4, "images_per_class": 2,
                "ra_batch": 9, "repeats": 3, "num_classes": {"cgd": 10, "multigrain": 10},
                "warmup": 1, "steps": 2, "distinct_batches": 2, "precision": "float32"}
    return {"backbone": "resnet50", "image_size": 224, "classes_per_batch": 32, "images_per_class": 4,
            "ra_batch": 128, "repeats": 3, "num_classes": {"cgd": 100, "multigrain": 1000},
            "warmup": 10, "steps": 50, "distinct_batches": 4, "precision": "bfloat16"}


def make_batches(recipe, cfg, seed=0):
    """A few distinct synthetic batches `(uint8 images, ranking ids, class ids)`."""
    rng = np.random.default_rng(seed)
    s, c = cfg["image_size"], cfg["num_classes"][recipe]
    out = []
    for b in range(cfg["distinct_batches"]):
        if recipe == "cgd":
            p, k = cfg["classes_per_batch"], cfg["images_per_class"]
            cls = np.repeat(rng.choice(c, p, replace=False), k).astype("int32")
            rank = cls
        else:  # RA stream cut into batches: consecutive copies share an instance id
            n, m = cfg["ra_batch"], cfg["repeats"]
            rank = ((np.arange(n) + b * n) // m).astype("int32")
            cls = rng.integers(0, c, rank.max() + 1).astype("int32")[rank]
        images = rng.integers(0, 256, (len(cls), s, s, 3), dtype=np.uint8)
        out.append((images, rank, cls))
    return out


def micro_backbone_keras(image_size):
    """Dry-run trunk: conv 3×3 stride 2 (16 channels, no bias) → BatchNorm → ReLU."""
    import keras

    inputs = keras.Input((image_size, image_size, 3))
    x = keras.layers.Conv2D(16, 3, strides=2, padding="same", use_bias=False)(inputs)
    x = keras.layers.ReLU()(keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-5)(x))
    return keras.Model(inputs, x, name="micro")


def _import_keras_cgd_models():
    """`keras_cgd.models` without running the package `__init__` (which imports TensorFlow)."""
    if "keras_cgd" not in sys.modules:
        sys.path.insert(0, ROOT)
        spec = importlib.util.find_spec("keras_cgd")
        package = types.ModuleType("keras_cgd")
        package.__path__ = list(spec.submodule_search_locations)
        package.__file__ = spec.origin
        sys.modules["keras_cgd"] = package
    import keras_cgd.models

    return keras_cgd.models


# ----------------------------------------------------------------------------- Keras


def run_keras(recipe, cfg, steps_per_execution=1):
    import keras

    models = _import_keras_cgd_models()
    keras.mixed_precision.set_global_policy("mixed_bfloat16" if cfg["precision"] == "bfloat16" else "float32")
    s = cfg["image_size"]
    backbone = micro_backbone_keras(s) if cfg["backbone"] == "micro" else cfg["backbone"]
    common = dict(num_classes=cfg["num_classes"][recipe], backbone=backbone, weights=None,
                  input_shape=(s, s, 3), compile=False)
    if recipe == "cgd":
        model = models.build_model("cgd", descriptors="SMG", embedding_dim=1536, last_stride=1, **common)
    else:
        model = models.build_model("multigrain", gem_p=3.0, **common)
    model.compile(steps_per_execution=steps_per_execution, jit_compile=True)
    batches = make_batches(recipe, cfg)
    total = cfg["warmup"] + cfg["steps"]

    class Batches(keras.utils.PyDataset):
        def __len__(self):
            return total

        def __getitem__(self, i):
            x, rank, cls = batches[i % len(batches)]
            return x, {"embedding": rank, "logits": cls}

    class Timer(keras.callbacks.Callback):
        start = None

        def on_train_batch_end(self, batch, logs=None):
            if self.start is None and batch + 1 >= cfg["warmup"]:
                float(logs["loss"])  # wait for the warm-up steps to finish on the device
                self.start, self.done = time.perf_counter(), batch + 1

        def on_train_end(self, logs=None):
            self.end = time.perf_counter()

    timer = Timer()
    model.fit(Batches(), epochs=1, verbose=0, callbacks=[timer])
    return (total - timer.done) * len(batches[0][0]) / (timer.end - timer.start)


# ----------------------------------------------------------------------------- torch


def run_torch(recipe, cfg, compiled, dry_run):
    import torch

    sys.path.insert(0, HERE)
    import _torch_models as tm

    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    if cuda:
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    c = cfg["num_classes"][recipe]
    if recipe == "cgd":
        net = tm.CGDNet(c, cfg["backbone"], "SMG", 1536, last_stride=1)
    else:
        net = tm.MultiGrainNet(c, cfg["backbone"])
    net = net.to(device, memory_format=torch.channels_last)
    opt = tm.make_optimizer(net, recipe)
    forward = torch.compile(net, backend="eager" if dry_run else "inductor") if compiled else net

    def to_device(a):
        t = torch.from_numpy(a)
        return t.pin_memory().to(device, non_blocking=True) if cuda else t

    batches = make_batches(recipe, cfg)

    def step(i):
        x, rank, cls = batches[i % len(batches)]
        x, rank, cls = to_device(x), to_device(rank).long(), to_device(cls).long()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg["precision"] == "bfloat16"):
            loss = forward(x, rank) if recipe == "cgd" else forward(x, rank, cls)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss

    for i in range(cfg["warmup"]):
        step(i)
    if cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    for i in range(cfg["steps"]):
        loss = step(cfg["warmup"] + i)
    loss.item()
    if cuda:
        torch.cuda.synchronize()
    return cfg["steps"] * len(batches[0][0]) / (time.perf_counter() - start)


def run_row(recipe, row, cfg, dry_run, steps_per_execution=1):
    start = time.perf_counter()
    if row == "keras":
        rate = run_keras(recipe, cfg, steps_per_execution)
    else:
        rate = run_torch(recipe, cfg, row == "torch_compile", dry_run)
    print(f"{recipe}:{row} {rate:.1f} img/s ({time.perf_counter() - start:.1f} s with build and warm-up)",
          file=sys.stderr)
    return rate


def run_isolated(recipe, row, args):
    """One row in a fresh process; returns (img/s or None, error or None)."""
    cmd = [sys.executable, os.path.abspath(__file__), "--single", f"{recipe}:{row}",
           "--steps-per-execution", str(args.steps_per_execution)] + (["--dry-run"] if args.dry_run else [])
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.row_timeout)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode or not lines:
        return None, (proc.stderr or proc.stdout)[-800:]
    return json.loads(lines[-1])["img_per_s"], None


def environment():
    info = {"python": platform.python_version()}
    try:
        import jax
        import keras

        info.update(jax=jax.__version__, keras=keras.__version__, jax_devices=[str(d) for d in jax.devices()])
    except Exception as e:  # noqa: BLE001 - report what is missing
        info["jax_error"] = repr(e)
    try:
        import torch

        info["torch"] = torch.__version__
        info["device"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    except Exception as e:  # noqa: BLE001
        info["torch_error"] = repr(e)
    return info


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes, print only")
    parser.add_argument("--recipes", default=",".join(RECIPES))
    parser.add_argument("--rows", default=",".join(ROWS))
    parser.add_argument("--steps-per-execution", type=int, default=1)
    parser.add_argument("--isolate", choices=("auto", "yes", "no"), default="auto",
                        help="one process per row (auto: yes unless --dry-run)")
    parser.add_argument("--row-timeout", type=int, default=1800)
    parser.add_argument("--single", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    cfg = settings(args.dry_run)
    if args.single:
        recipe, row = args.single.split(":")
        print(json.dumps({"img_per_s": run_row(recipe, row, cfg, args.dry_run, args.steps_per_execution)}))
        return
    recipes = [r for r in args.recipes.split(",") if r]
    rows = [r for r in args.rows.split(",") if r]
    for name, values, valid in (("recipes", recipes, RECIPES), ("rows", rows, ROWS)):
        if set(values) - set(valid):
            parser.error(f"Invalid value received for argument `--{name}`. Expected names from {valid}. "
                         f"Received: {values}")
    isolate = args.isolate == "yes" or (args.isolate == "auto" and not args.dry_run)
    result = {"benchmark": "gpu_train_throughput", "dry_run": args.dry_run, **environment(),
              "settings": {k: v for k, v in cfg.items() if k != "distinct_batches"},
              "steps_per_execution": args.steps_per_execution, "errors": {}}
    for recipe in recipes:
        figures = {}
        for row in rows:
            if isolate:
                rate, error = run_isolated(recipe, row, args)
            else:
                rate, error = run_row(recipe, row, cfg, args.dry_run, args.steps_per_execution), None
            figures[f"{row}_img_per_s"] = None if rate is None else round(rate, 1 if rate >= 10 else 3)
            if error:
                result["errors"][f"{recipe}:{row}"] = error
        k, t, tc = (figures.get(f"{r}_img_per_s") for r in ROWS)
        figures["ratio_keras_over_torch"] = round(k / t, 3) if k and t else None
        figures["ratio_keras_over_torch_compile"] = round(k / tc, 3) if k and tc else None
        result[recipe] = figures
    first = result[recipes[0]]
    for key in ("keras_img_per_s", "torch_img_per_s", "torch_compile_img_per_s", "ratio_keras_over_torch_compile"):
        result[key] = first.get(key)
    line = json.dumps(result)
    print(line)
    if not args.dry_run:
        out_dir = os.path.join(HERE, "results")
        os.makedirs(out_dir, exist_ok=True)
        tmp = os.path.join(out_dir, ".gpu_train_throughput.json.tmp")
        with open(tmp, "w") as f:
            f.write(line + "\n")
        os.replace(tmp, os.path.join(out_dir, "gpu_train_throughput.json"))


if __name__ == "__main__":
    main()
