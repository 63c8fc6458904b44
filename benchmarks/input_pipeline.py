"""Throughput of keras-cgd's input pipelines on real JPEGs (images/s) against PyTorch's.

Three pipelines, each against the way PyTorch users write it (torchvision transforms on
PIL images, `torch.utils.data.DataLoader` with as many workers as CPU cores, a sampler
giving the same kind of index order), reading the same files in the same run:

- `ra`: `repeated_augmentation_batches` (batch 48, repeats 3, MultiGrain "full":
  RandomResizedCrop 224, flip, ColorJitter 0.3, PCA lighting 0.1) vs MultiGrain's
  transform (`RandomResizedCrop`, `RandomHorizontalFlip`, `ColorJitter(0.3, 0.3, 0.3)`,
  `ToTensor`, `Lighting(0.1)` written as in MultiGrain, clamp) with a RASampler order;
- `pk`: `class_balanced_batches` (12 classes × 4 images, CGD augmentation: resize 252,
  random crop 224, flip) vs leftthomas/CGD's transform (`Resize((252, 252))`,
  `RandomCrop(224)`, `RandomHorizontalFlip`, `ToTensor`) with the same P×K index plan;
- `inference`: `inference_batches(image_size=224)` vs `Resize((224, 224))`, `ToTensor`.

The baselines stop before `Normalize` (keras-cgd models normalise uint8 images inside).
Variants of `ra` measured against the same baseline, for comparison:

- `ra_windowed_decodes` (built in this script): one `decode_and_crop_jpeg` of its own
  window per copy instead of one decode per image for its m copies (the library's way);
- `ra_plain_bilinear`: the library's `ra` with `antialias=False` (plain bilinear
  resizing, TensorFlow's `ResizeBilinear`, instead of the antialiased triangle kernel of
  PIL and the papers' code, `ScaleAndTranslate`);
- `ra_flip_and_color_in_model`, `ra_plain_bilinear_flip_and_color_in_model`: `ra` and
  `ra_plain_bilinear` with `flip_and_color=False`, the batches for a model that flips and
  colours them itself on the accelerator (`MultiGrainColorAugmentation`). That work is
  not gone: `flip_and_color_layer` records what the layer's map costs on this CPU, as
  XLA-compiled by the Keras backend at hand, per image of a batch;
- `ra_read_decode` (built in this script): only reading and decoding each image once
  for its m copies, no crop, resize or colour: the ceiling of any tf.data RA pipeline
  on these files with TensorFlow's JPEG decoder.

`resize_fidelity` compares both resizes with PIL's bilinear resize (the baseline's, and
the papers') on RandomResizedCrop windows of the same files: mean and 99th percentile of
the absolute difference in grey levels (0-255).

The JPEGs are random ~400×350 crops (quality 90) of the photos that scikit-image,
scikit-learn and matplotlib ship, written to a temporary folder.

Usage:
    python benchmarks/input_pipeline.py [--rounds 3] [--batches 20] [--kinds ra,pk,inference]

Each pipeline runs `--rounds` times, alternating with its baseline so that load from
other processes hits both; the best rate of each is reported with every round's rate
and the load average before and after. Each run also records the CPU time (user +
system, of tf.data's process; of the PyTorch process and its DataLoader workers) per
image over the timed batches, a figure that other processes' load disturbs less than
the rates (`cpu_speedup` = PyTorch CPU ms / keras-cgd CPU ms, best runs). Every
pipeline, ours and the baselines, runs in a fresh process of its own (see
`in_subprocess`). Prints one JSON line and writes it to
benchmarks/results/input_pipeline.json. Without torch and torchvision installed the
baselines are skipped with a message (their fields are null).
"""

import argparse
import json
import math
import os
import platform
import sys
import tempfile
import time

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

KINDS = ("ra", "ra_windowed_decodes", "ra_plain_bilinear", "ra_flip_and_color_in_model",
         "ra_plain_bilinear_flip_and_color_in_model", "ra_read_decode", "pk", "inference")
# Variants timed against the `ra` baseline (no baseline of their own).
RA_VARIANTS = ("ra_windowed_decodes", "ra_plain_bilinear", "ra_flip_and_color_in_model",
               "ra_plain_bilinear_flip_and_color_in_model", "ra_read_decode")


def make_jpegs(folder, count, seed=0):
    """Writes `count` random ~400×350 crops (quality 90) of package-shipped photos."""
    from PIL import Image

    from keras_cgd.data.builtin import package_photo_paths

    rng = np.random.default_rng(seed)
    photos = []
    for path in package_photo_paths().values():
        im = Image.open(path).convert("RGB")
        if min(im.size) < 360:
            f = 360 / min(im.size)
            im = im.resize((math.ceil(im.size[0] * f), math.ceil(im.size[1] * f)), Image.BILINEAR)
        photos.append(im)
    paths, labels = [], []
    for i in range(count):
        k = i % len(photos)
        im = photos[k]
        w, h = int(rng.integers(380, 421)), int(rng.integers(330, 361))
        w, h = min(w, im.size[0]), min(h, im.size[1])
        x, y = int(rng.integers(0, im.size[0] - w + 1)), int(rng.integers(0, im.size[1] - h + 1))
        path = os.path.join(folder, f"{i:05d}.jpg")
        im.crop((x, y, x + w, y + h)).save(path, format="JPEG", quality=90)
        paths.append(path)
        labels.append(k)
    return paths, labels


def _cpu_seconds(pids=()):
    """CPU time (user + system) of this process and of the given worker processes."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    total = usage.ru_utime + usage.ru_stime
    tick = os.sysconf("SC_CLK_TCK")
    for pid in pids:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
    return total


def _time(iterator, batches, warmup, workers=lambda: ()):
    """`(images/s, CPU ms per image)` over `batches` batches after `warmup` ones."""
    for _ in range(warmup):
        next(iterator)
    pids = workers()
    cpu = _cpu_seconds(pids)
    start = time.perf_counter()
    n = 0
    for _ in range(batches):
        x = next(iterator)[0]
        n += int(x.shape[0])
    elapsed = time.perf_counter() - start
    return n / elapsed, (_cpu_seconds(pids) - cpu) / n * 1e3


# ------------------------------------------------------------------------ keras-cgd


def _windowed_decodes_pipeline(paths, batch_size, repeats, size, steps, seed=0):
    """RA with one `decode_and_crop_jpeg` per copy (the alternative to decoding once)."""
    import tensorflow as tf

    from keras_cgd.data import augment as aug

    rng = np.random.default_rng(seed)
    order = np.concatenate([np.repeat(rng.permutation(len(paths)), repeats) for _ in range(
        -(-steps * batch_size // (repeats * len(paths))))])[: steps * batch_size]
    files = tf.constant(paths)

    def element(i, counter):
        s_win, s_flip, s_col = tf.unstack(tf.random.experimental.stateless_split(tf.stack([
            tf.constant(seed, tf.int64), counter]), 3))
        contents = tf.io.read_file(files[i])
        shape = tf.io.extract_jpeg_shape(contents)
        win = aug.random_resized_crop_windows(s_win, 1, shape[0], shape[1])[0]
        crop = tf.io.decode_and_crop_jpeg(contents, win, channels=3)
        out = aug._round_to_uint8(aug.resize_bilinear(crop, (size, size)))
        out = tf.cond(tf.random.stateless_uniform([], s_flip) < 0.5, lambda: tf.reverse(out, [1]), lambda: out)
        return out, aug.multigrain_color_params(s_col, 1)[0]

    ds = tf.data.Dataset.from_tensor_slices((order.astype("int32"), np.arange(len(order), dtype="int64")))
    ds = ds.map(element, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.batch(batch_size, drop_remainder=True)
    ds = ds.map(lambda x, p: (aug.folded_color_transform_uint8(x, p), 0), num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)


def _read_decode_pipeline(paths, batch_size, repeats, size, steps, seed=0):
    """Reads and decodes each image once for its `repeats` copies; nothing else (a ceiling)."""
    import tensorflow as tf

    rng = np.random.default_rng(seed)
    groups = -(-steps * batch_size // repeats)
    order = np.concatenate([rng.permutation(len(paths)) for _ in range(-(-groups // len(paths)))])[:groups]
    files = tf.constant(paths)

    def element(i):
        image = tf.io.decode_jpeg(tf.io.read_file(files[i]), channels=3)
        # A corner of the decoded image per copy: batches of the shape the others emit.
        corner = tf.image.pad_to_bounding_box(image[:size, :size], 0, 0, size, size)
        return tf.tile(corner[None], [repeats, 1, 1, 1])

    ds = tf.data.Dataset.from_tensor_slices(order.astype("int32"))
    ds = ds.map(element, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).unbatch()
    return ds.batch(batch_size, drop_remainder=True).map(lambda x: (x, 0)).prefetch(tf.data.AUTOTUNE)


def flip_and_color_layer_cost(batch_size, size, calls=10):
    """CPU ms per image of `MultiGrainColorAugmentation`'s map on a uint8 batch, compiled
    by the Keras backend at hand (what the layer costs where no accelerator takes it)."""
    import keras

    from keras_cgd.layers import MultiGrainColorAugmentation

    layer = MultiGrainColorAugmentation(seed=0)
    x = np.random.default_rng(0).integers(0, 256, (batch_size, size, size, 3), dtype=np.uint8)
    params, flips = layer.draw(batch_size)
    if keras.backend.backend() == "jax":
        import jax

        fn = jax.jit(layer.transform)
    else:
        import tensorflow as tf

        fn = tf.function(layer.transform, jit_compile=True)
    done = lambda out: keras.ops.convert_to_numpy(out[:1, :1, :1])  # noqa: E731  (waits for the result)
    for _ in range(3):
        done(fn(x, params, flips))
    cpu = _cpu_seconds()
    start = time.perf_counter()
    for _ in range(calls):
        done(fn(x, params, flips))
    n = calls * batch_size
    return {"backend": keras.backend.backend(), "cpu_ms_per_image": round((_cpu_seconds() - cpu) / n * 1e3, 3),
            "wall_ms_per_image": round((time.perf_counter() - start) / n * 1e3, 3)}


def resize_fidelity(paths, size, crops=120, seed=0):
    """Mean / p99 |difference| (grey levels) of the two TF resizes against PIL's bilinear."""
    import tensorflow as tf
    from PIL import Image

    from keras_cgd.data import augment as aug

    diffs = {"antialiased": [], "plain_bilinear": []}
    for n in range(crops):
        contents = tf.io.read_file(paths[n % len(paths)])
        image = tf.io.decode_jpeg(contents, channels=3)
        y, x, h, w = aug.random_resized_crop_window(tf.constant([seed, n]), tf.shape(image)[0],
                                                    tf.shape(image)[1]).numpy()
        crop = image[y:y + h, x:x + w]
        pil = np.asarray(Image.fromarray(crop.numpy()).resize((size, size), Image.BILINEAR), np.float32)
        for name, antialias in (("antialiased", True), ("plain_bilinear", False)):
            ours_ = aug._round_to_uint8(aug.resize_bilinear(crop, (size, size), antialias)).numpy()
            diffs[name].append(np.abs(ours_.astype(np.float32) - pil).ravel())
    out = {}
    for name, d in diffs.items():
        d = np.concatenate(d)
        out[name] = {"mean_abs_levels": round(float(d.mean()), 3), "p99_abs_levels": float(np.percentile(d, 99))}
    return out


def ours(kind, paths, labels, args):
    from keras_cgd import data as kdata

    steps = args.batches + args.warmup
    data = kdata.ImageDataset(labels, [str(i) for i in range(max(labels) + 1)], paths=paths, root="bench")
    size = args.image_size
    if kind in ("ra", "ra_plain_bilinear", "ra_flip_and_color_in_model", "ra_plain_bilinear_flip_and_color_in_model"):
        ds = kdata.repeated_augmentation_batches(data, args.batch_size, args.repeats, image_size=size,
                                                 augmentation="multigrain", steps_per_epoch=steps, seed=0,
                                                 antialias="plain_bilinear" not in kind,
                                                 flip_and_color=not kind.endswith("_in_model"))
    elif kind == "ra_windowed_decodes":
        ds = _windowed_decodes_pipeline(paths, args.batch_size, args.repeats, size, steps)
    elif kind == "ra_read_decode":
        ds = _read_decode_pipeline(paths, args.batch_size, args.repeats, size, steps)
    elif kind == "pk":
        ds = kdata.class_balanced_batches(data, args.batch_size // 4, 4, image_size=size, augmentation="cgd",
                                          steps_per_epoch=steps, seed=0)
    else:
        reps = -(-steps * args.batch_size // len(paths))
        many = kdata.ImageDataset(np.tile(labels, reps), data.class_names, paths=np.tile(paths, reps), root="bench")
        ds = kdata.inference_batches(many, args.batch_size, image_size=size)
    return _time(iter(ds), args.batches, args.warmup)


# ------------------------------------------------------------------ PyTorch baseline

IMAGENET_EIGVAL = [0.2175, 0.0188, 0.0045]
IMAGENET_EIGVEC = [[-0.5675, 0.7192, 0.4009], [-0.5808, -0.0045, -0.8140], [-0.5836, -0.6948, 0.4203]]


class Lighting:
    """MultiGrain's AlexNet PCA lighting on a [0, 1] tensor: (x + V(alpha * lambda)) / (1 + std)."""

    def __init__(self, std=0.1):
        import torch

        self.std = std
        self.eigval = torch.tensor(IMAGENET_EIGVAL)
        self.eigvec = torch.tensor(IMAGENET_EIGVEC)

    def __call__(self, t):
        import torch

        alpha = torch.randn(3) * self.std
        rgb = self.eigvec @ (alpha * self.eigval)
        return ((t + rgb.view(3, 1, 1)) / (1.0 + self.std)).clamp(0.0, 1.0)


def torch_transform(kind, size):
    from torchvision import transforms as T

    if kind in ("ra", "ra_windowed_decodes"):  # MultiGrain "full"
        return T.Compose([T.RandomResizedCrop(size), T.RandomHorizontalFlip(), T.ColorJitter(0.3, 0.3, 0.3),
                          T.ToTensor(), Lighting(0.1)])
    if kind == "pk":  # leftthomas/CGD train
        resize = int(round(size * 252 / 224))
        return T.Compose([T.Resize((resize, resize)), T.RandomCrop(size), T.RandomHorizontalFlip(), T.ToTensor()])
    return T.Compose([T.Resize((size, size)), T.ToTensor()])  # CGD test


class _FileDataset:
    def __init__(self, paths, labels, transform):
        self.paths, self.labels, self.transform = paths, labels, transform

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        from PIL import Image

        with Image.open(self.paths[i]) as im:
            img = im.convert("RGB")
        return self.transform(img), self.labels[i], i


def torch_order(kind, labels, args):
    """The index order the sampler yields: RASampler's, the same P×K plan, or sequential."""
    from keras_cgd.data.batching import class_balanced_plan

    total = (args.batches + args.warmup) * args.batch_size
    rng = np.random.default_rng(0)
    if kind in ("ra", "ra_windowed_decodes"):
        order = []
        while len(order) < total:
            order.extend(np.repeat(rng.permutation(len(labels)), args.repeats).tolist())
        return order[:total]
    if kind == "pk":
        return class_balanced_plan(labels, args.batch_size // 4, 4, args.batches + args.warmup, rng).tolist()
    return [i % len(labels) for i in range(total)]


def baseline(kind, paths, labels, order, args):
    """The PyTorch pipeline, measured in this process (see `in_subprocess`)."""
    import torch
    from torch.utils.data import DataLoader

    torch.set_num_threads(1)
    loader = DataLoader(_FileDataset(paths, labels, torch_transform(kind, args.image_size)),
                        batch_size=args.batch_size, sampler=order,
                        num_workers=args.workers, drop_last=True)
    it = iter(loader)
    return _time(it, args.batches, args.warmup, lambda: [w.pid for w in getattr(it, "_workers", [])])


def in_subprocess(side, kind, folder, labels, args):
    """Runs one pipeline (`side` "ours" or "torch") in a fresh Python process.

    Both sides get a process of their own, as a user's training script would: DataLoader
    workers are forked, and forking a process after TensorFlow started its threads is
    unsafe (it can crash); and a tf.data pipeline run earlier in a process slows the
    ones after it (inference_batches measured 351 img/s after the other pipelines in one
    process, 653 img/s alone).
    """
    import subprocess

    if side == "torch":
        with open(os.path.join(folder, f"order_{kind}.json"), "w") as f:
            json.dump([int(i) for i in torch_order(kind, labels, args)], f)
    cmd = [sys.executable, os.path.abspath(__file__), "--only", f"{side}:{kind}", "--folder", folder,
           "--images", str(args.images), "--batches", str(args.batches), "--warmup", str(args.warmup),
           "--batch-size", str(args.batch_size), "--repeats", str(args.repeats),
           "--image-size", str(args.image_size), "--workers", str(args.workers)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode or not lines:
        raise RuntimeError(f"The {side} pipeline {kind!r} failed:\n{proc.stderr[-2000:]}")
    out = json.loads(lines[-1])
    return out["images_per_s"], out["cpu_ms_per_image"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=240)
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds; the best of each is kept")
    parser.add_argument("--kinds", default=",".join(KINDS), help=f"comma-separated subset of {KINDS}")
    parser.add_argument("--only", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--folder", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.only:
        side, kind = args.only.split(":")
        paths = [os.path.join(args.folder, f"{i:05d}.jpg") for i in range(args.images)]
        with open(os.path.join(args.folder, "labels.json")) as f:
            labels = json.load(f)
        if side == "torch":
            with open(os.path.join(args.folder, f"order_{kind}.json")) as f:
                order = json.load(f)
            rate, cpu = baseline(kind, paths, labels, order, args)
        else:
            rate, cpu = ours(kind, paths, np.asarray(labels, "int32"), args)
        print(json.dumps({"images_per_s": rate, "cpu_ms_per_image": cpu}))
        return
    kinds = [k for k in args.kinds.split(",") if k]
    unknown = sorted(set(kinds) - set(KINDS))
    if unknown:
        parser.error(f"Invalid value received for argument `--kinds`. Expected names from {KINDS}. "
                     f"Received: {unknown}")
    try:
        import torch
        import torchvision

        versions = {"torch": torch.__version__, "torchvision": torchvision.__version__}
    except ImportError:
        versions = None
        print("torch/torchvision are not installed: skipping the PyTorch DataLoader baselines "
              "(pip install torch torchvision to run them).", file=sys.stderr)
    import tensorflow as tf

    load_before = [round(v, 2) for v in os.getloadavg()]
    runs = {k: {"keras_cgd": [], "torch": [], "keras_cgd_cpu": [], "torch_cpu": []} for k in kinds}
    with tempfile.TemporaryDirectory() as folder:
        paths, labels = make_jpegs(folder, args.images)
        with open(os.path.join(folder, "labels.json"), "w") as f:
            json.dump([int(v) for v in labels], f)
        labels = np.asarray(labels, "int32")
        for _ in range(args.rounds):
            for kind in kinds:
                rate, cpu = in_subprocess("ours", kind, folder, labels, args)
                runs[kind]["keras_cgd"].append(round(rate, 1))
                runs[kind]["keras_cgd_cpu"].append(round(cpu, 2))
                if versions and kind not in RA_VARIANTS:
                    rate, cpu = in_subprocess("torch", kind, folder, labels, args)
                    runs[kind]["torch"].append(round(rate, 1))
                    runs[kind]["torch_cpu"].append(round(cpu, 2))
        fidelity = resize_fidelity(paths, args.image_size) if any(k.startswith("ra") for k in kinds) else None
    layer_cost = (flip_and_color_layer_cost(args.batch_size, args.image_size)
                  if any(k.endswith("_in_model") for k in kinds) else None)
    load_after = [round(v, 2) for v in os.getloadavg()]

    result = {
        "benchmark": "input_pipeline",
        "images_on_disk": args.images,
        "jpeg": "~400x350, quality 90",
        "image_size": args.image_size,
        "batch_size": args.batch_size,
        "repeats": args.repeats,
        "batches_timed": args.batches,
        "workers": args.workers,
        "cpu_count": os.cpu_count(),
        "rounds": args.rounds,
        "load_average_before": load_before,
        "load_average_after": load_after,
    }
    base = runs.get("ra", {"torch": [], "torch_cpu": []})
    for kind in kinds:
        r = runs[kind] if kind not in RA_VARIANTS else {**runs[kind], "torch": base["torch"],
                                                        "torch_cpu": base["torch_cpu"]}
        mine, mine_cpu = max(r["keras_cgd"]), min(r["keras_cgd_cpu"])
        theirs = max(r["torch"]) if r["torch"] else None
        theirs_cpu = min(r["torch_cpu"]) if r["torch_cpu"] else None
        result[kind] = {
            "keras_cgd_images_per_s": mine,
            "keras_cgd_runs": r["keras_cgd"],
            "torch_dataloader_images_per_s": theirs,
            "torch_runs": r["torch"],
            "speedup": None if not theirs else round(mine / theirs, 2),
            "keras_cgd_cpu_ms_per_image": mine_cpu,
            "keras_cgd_cpu_runs": r["keras_cgd_cpu"],
            "torch_cpu_ms_per_image": theirs_cpu,
            "torch_cpu_runs": r["torch_cpu"],
            "cpu_speedup": None if not theirs_cpu else round(theirs_cpu / mine_cpu, 2),
        }
    if fidelity:
        result["resize_fidelity"] = fidelity
    if layer_cost:
        result["flip_and_color_layer"] = layer_cost
    result.update({"tensorflow": tf.__version__, **(versions or {"torch": None}),
                   "python": platform.python_version()})
    line = json.dumps(result)
    print(line)
    out_dir = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
    os.makedirs(out_dir, exist_ok=True)
    tmp = os.path.join(out_dir, ".input_pipeline.json.tmp")
    with open(tmp, "w") as f:
        f.write(line + "\n")
    os.replace(tmp, os.path.join(out_dir, "input_pipeline.json"))


if __name__ == "__main__":
    main()
