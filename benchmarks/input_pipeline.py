"""Throughput of the repeated-augmentation input pipeline on real JPEGs (images/s).

keras-cgd (`repeated_augmentation_batches`, tf.data, MultiGrain "full" augmentation at
224×224) against the way PyTorch users write it: a `Dataset` that decodes with PIL and
applies the same transforms written by hand (torchvision is not used), a RASampler-style
index list (each index 3 times in a row) and `torch.utils.data.DataLoader` with the same
number of workers as CPU cores. Both read the same files in the same run.

The JPEGs are random ~400×350 crops (quality 90) of the photos that scikit-image,
scikit-learn and matplotlib ship, written to a temporary folder.

Usage:
    python benchmarks/input_pipeline.py [--images 240] [--batches 20] [--batch-size 48]

Each pipeline runs `--rounds` times, alternating, and the best rate of each is reported
(the per-round rates are in the JSON too). Prints one JSON line and writes it to benchmarks/results/input_pipeline.json. Without
torch installed the baseline is skipped with a message (its fields are null).
"""

import argparse
import json
import math
import os
import platform
import random
import sys
import tempfile
import time

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


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


def bench_keras_cgd(paths, labels, batch_size, repeats, size, batches, warmup):
    import tensorflow as tf

    from keras_cgd.data import ImageDataset, repeated_augmentation_batches

    data = ImageDataset(labels, [str(i) for i in range(max(labels) + 1)], paths=paths, root="bench")
    ds = repeated_augmentation_batches(
        data, batch_size, repeats, image_size=size, augmentation="multigrain",
        steps_per_epoch=batches + warmup, seed=0,
    )
    it = iter(ds)
    for _ in range(warmup):
        next(it)
    start = time.perf_counter()
    n = 0
    for _ in range(batches):
        x, _ = next(it)
        n += int(x.shape[0])
    return n / (time.perf_counter() - start), tf.__version__


# ----------------------------------------------------------------- PyTorch/PIL baseline

EIGVAL = [0.2175, 0.0188, 0.0045]
EIGVEC = [[-0.5675, 0.7192, 0.4009], [-0.5808, -0.0045, -0.8140], [-0.5836, -0.6948, 0.4203]]


def _rrc_params(w, h, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
    area = w * h
    for _ in range(10):
        target = area * random.uniform(*scale)
        r = math.exp(random.uniform(math.log(ratio[0]), math.log(ratio[1])))
        cw, ch = int(round(math.sqrt(target * r))), int(round(math.sqrt(target / r)))
        if 0 < cw <= w and 0 < ch <= h:
            return random.randint(0, w - cw), random.randint(0, h - ch), cw, ch
    in_ratio = w / h
    if in_ratio < ratio[0]:
        cw, ch = w, int(round(w / ratio[0]))
    elif in_ratio > ratio[1]:
        cw, ch = int(round(h * ratio[1])), h
    else:
        cw, ch = w, h
    return (w - cw) // 2, (h - ch) // 2, cw, ch


def pil_full_transform(img, size):
    """MultiGrain "full" by hand with PIL + torch: RRC, flip, ColorJitter 0.3, Lighting 0.1."""
    import torch
    from PIL import Image, ImageEnhance

    x, y, cw, ch = _rrc_params(*img.size)
    img = img.crop((x, y, x + cw, y + ch)).resize((size, size), Image.BILINEAR)
    if random.random() < 0.5:
        img = img.transpose(Image.FLIP_LEFT_RIGHT)
    ops = [ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color]
    random.shuffle(ops)
    for op in ops:
        img = op(img).enhance(random.uniform(0.7, 1.3))
    t = torch.from_numpy(np.asarray(img, dtype=np.float32)).permute(2, 0, 1) / 255.0
    alpha = torch.randn(3) * 0.1
    rgb = torch.tensor(EIGVEC) @ (alpha * torch.tensor(EIGVAL))
    t = ((t + rgb.view(3, 1, 1)) / 1.1).clamp(0, 1)
    return t * 255.0


class _PILDataset:
    def __init__(self, paths, labels, size):
        self.paths, self.labels, self.size = paths, labels, size

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        from PIL import Image

        with Image.open(self.paths[i]) as im:
            img = im.convert("RGB")
        return pil_full_transform(img, self.size), self.labels[i], i


def bench_torch(paths, labels, batch_size, repeats, size, batches, warmup, workers):
    import torch
    from torch.utils.data import DataLoader, Dataset

    class DS(_PILDataset, Dataset):
        pass

    torch.set_num_threads(1)
    total = (batches + warmup) * batch_size
    order = []
    rng = np.random.default_rng(0)
    while len(order) < total:
        order.extend(np.repeat(rng.permutation(len(paths)), repeats).tolist())  # RASampler
    loader = DataLoader(DS(paths, labels, size), batch_size=batch_size, sampler=order[:total],
                        num_workers=workers, drop_last=True, persistent_workers=False)
    it = iter(loader)
    for _ in range(warmup):
        next(it)
    start = time.perf_counter()
    n = 0
    for _ in range(batches):
        x, _, _ = next(it)
        n += int(x.shape[0])
    return n / (time.perf_counter() - start), torch.__version__


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
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as folder:
        paths, labels = make_jpegs(folder, args.images)
        common = (paths, labels, args.batch_size, args.repeats, args.image_size, args.batches, args.warmup)
        try:
            import torch  # noqa: F401

            has_torch = True
        except ImportError:
            has_torch = False
            print("torch is not installed: skipping the PyTorch DataLoader baseline "
                  "(pip install torch to run it).", file=sys.stderr)
        ours_runs, base_runs, torch_version = [], [], None
        for _ in range(args.rounds):  # alternate, so that load from other processes hits both
            rate, tf_version = bench_keras_cgd(*common)
            ours_runs.append(rate)
            if has_torch:
                rate, torch_version = bench_torch(*common, args.workers)
                base_runs.append(rate)
        ours = max(ours_runs)
        base = max(base_runs) if base_runs else None

    result = {
        "benchmark": "input_pipeline",
        "pipeline": "repeated_augmentation_batches, MultiGrain full augmentation",
        "images_on_disk": args.images,
        "jpeg": "~400x350, quality 90",
        "image_size": args.image_size,
        "batch_size": args.batch_size,
        "repeats": args.repeats,
        "batches_timed": args.batches,
        "workers": args.workers,
        "cpu_count": os.cpu_count(),
        "rounds": args.rounds,
        "keras_cgd_tf_data_images_per_s": round(ours, 1),
        "keras_cgd_runs": [round(r, 1) for r in ours_runs],
        "torch_runs": [round(r, 1) for r in base_runs],
        "torch_pil_dataloader_images_per_s": None if base is None else round(base, 1),
        "speedup": None if base is None else round(ours / base, 2),
        "tensorflow": tf_version,
        "torch": torch_version,
        "python": platform.python_version(),
    }
    line = json.dumps(result)
    print(line)
    out_dir = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "input_pipeline.json"), "w") as f:
        f.write(line + "\n")


if __name__ == "__main__":
    main()
