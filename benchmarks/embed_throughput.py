"""Images/s of `keras-cgd embed` vs plain `model.predict`, and of the Beam pipeline.

Same run, same images, same model (`--model`, default a CGD ResNet-50 at 224 px,
random weights: the speed does not depend on them), same batch size:

- `predict`: `model.predict(x, batch_size=B)` on the images already decoded
  and resized into one in-memory array (decoding not timed): the ceiling.
- `embed`: `keras_cgd.embedding.embed_images` from the JPEG files to Parquet
  shards (listing, `tf.data` decoding and resizing, the model, shard writes,
  manifest), the model loaded beforehand (as for `predict`).
- `beam`: `run_beam_pipeline` on the DirectRunner with the exported SavedModel
  (listing, pipeline start, decoding, RunInference, Parquet sink), TensorFlow.

Each is warmed up once, then timed `--rounds` times interleaved; the best of each
is reported. Ratios: embed / predict (goal >= 0.9) and beam / embed.

Memory: the peak resident-set growth of `embed_images` (VmHWM reset through
/proc/self/clear_refs just before the call, minus the resident set then) for
`--images` and for 4 x `--images` images: flat when streaming.

The JPEGs are random ~400x350 crops (quality 90) of the photos that
scikit-image, scikit-learn and matplotlib ship, written to a temporary folder.

Usage: python benchmarks/embed_throughput.py [--images 128] [--batch-size 16] [--rounds 2]
       [--model cgd_resnet50] [--image-size 224] [--no-beam]
Prints one JSON line and writes benchmarks/results/embed_throughput.json.
"""

import argparse
import json
import math
import os
import platform
import shutil
import sys
import tempfile
import time

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def _status(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not found in /proc/self/status")


def _reset_peak():
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def make_jpegs(folder, count, seed=0):
    """Writes `count` random ~400x350 JPEG crops of package-shipped photos."""
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
    os.makedirs(folder, exist_ok=True)
    paths = []
    for i in range(count):
        im = photos[i % len(photos)]
        w, h = min(int(rng.integers(380, 421)), im.size[0]), min(int(rng.integers(330, 361)), im.size[1])
        x, y = int(rng.integers(0, im.size[0] - w + 1)), int(rng.integers(0, im.size[1] - h + 1))
        path = os.path.join(folder, f"{i:05d}.jpg")
        im.crop((x, y, x + w, y + h)).save(path, format="JPEG", quality=90)
        paths.append(path)
    return paths


def build(name, image_size):
    import keras_cgd

    if name == "cgd_resnet50":
        return keras_cgd.build_model("cgd", backbone="resnet50", weights=None,
                                     input_shape=(image_size, image_size, 3), num_classes=100)
    return keras_cgd.build_model(name, num_classes=100, input_shape=(image_size, image_size, 3))


def decode_all(paths, image_size):
    import tensorflow as tf

    from keras_cgd.embedding.sources import decode_image_file

    return np.stack([decode_image_file(tf.io.read_file(p), (image_size, image_size)).numpy() for p in paths])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--model", default="cgd_resnet50", help="cgd_resnet50 or a preset name (cgd_tiny)")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--no-beam", action="store_true")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                                      "embed_throughput.json"))
    args = parser.parse_args()
    import keras

    from keras_cgd import embedding

    work = tempfile.mkdtemp(prefix="embed_bench_")
    try:
        t_start = time.perf_counter()
        small = make_jpegs(os.path.join(work, "images"), args.images)
        big_folder = os.path.join(work, "images_x4")
        make_jpegs(big_folder, 4 * args.images, seed=1)
        model = build(args.model, args.image_size)
        model_path = os.path.join(work, "model.keras")
        model.save(model_path)
        runner = embedding.load_embedding_model(model_path)
        x = decode_all(small, args.image_size)
        n = len(small)
        run_id = [0]

        def run_predict():
            model.predict(x, batch_size=args.batch_size, verbose=0)

        def run_embed(folder=os.path.join(work, "images")):
            run_id[0] += 1
            out = os.path.join(work, f"out-{run_id[0]}")
            embedding.embed_images(runner, folder, out, batch_size=args.batch_size,
                                   shard_size=4 * args.batch_size, quiet=True, report=lambda line: None)
            return out

        methods = {"predict": run_predict, "embed": run_embed}
        saved_model = None
        if not args.no_beam:
            from keras_cgd.export import export_saved_model

            saved_model = export_saved_model(model, os.path.join(work, "savedmodel"))

            def run_beam():
                run_id[0] += 1
                embedding.run_beam_pipeline(saved_model, os.path.join(work, "images"),
                                            os.path.join(work, f"beam-{run_id[0]}"),
                                            batch_size=args.batch_size, report=lambda line: None)

            methods["beam"] = run_beam
        for fn in methods.values():  # warm-up (graph tracing, caches)
            fn()
        times = {name: [] for name in methods}
        for _ in range(args.rounds):
            for name, fn in methods.items():
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
        ips = {name: n / min(t) for name, t in times.items()}
        # Equal outputs: the shards hold model.predict's embeddings.
        ids, vectors, _ = embedding.read_embeddings(run_embed())
        reference = np.asarray(model.predict(x, batch_size=args.batch_size, verbose=0)["embedding"])
        max_diff = float(np.abs(vectors - reference[ids]).max())
        # Peak memory growth of the job: n images, then 4 n.
        peaks = {}
        for label, folder in (("images", os.path.join(work, "images")), ("images_x4", big_folder)):
            _reset_peak()
            before = _status("VmRSS")
            run_embed(folder)
            peaks[label] = (_status("VmHWM") - before) / 2**20
        report = {
            "benchmark": "embed_throughput",
            "model": args.model,
            "image_size": args.image_size,
            "images": n,
            "batch_size": args.batch_size,
            "backend": keras.backend.backend(),
            "predict_images_per_s": round(ips["predict"], 2),
            "embed_images_per_s": round(ips["embed"], 2),
            "beam_images_per_s": round(ips["beam"], 2) if "beam" in ips else None,
            "ratio_embed_to_predict": round(ips["embed"] / ips["predict"], 3),
            "ratio_beam_to_embed": round(ips["beam"] / ips["embed"], 3) if "beam" in ips else None,
            "seconds_per_round": {k: [round(v, 2) for v in t] for k, t in times.items()},
            "embed_max_abs_diff_vs_predict": max_diff,
            "embed_peak_extra_mib": {f"{n}": round(peaks["images"], 1), f"{4 * n}": round(peaks["images_x4"], 1)},
            "memory_ratio_4x_images": round(peaks["images_x4"] / max(peaks["images"], 1e-9), 3),
            "cpus": os.cpu_count(),
            "machine": platform.machine(),
            "seconds": round(time.perf_counter() - t_start, 1),
        }
        line = json.dumps(report)
        print(line)
        os.makedirs(os.path.dirname(args.out), exist_ok=True)
        with open(args.out, "w") as f:
            f.write(line + "\n")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
