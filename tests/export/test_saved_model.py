"""Tests of keras_cgd.export: layout, versions, atomicity, standalone loading, guards.

On KERAS_BACKEND=jax the exports go through the `.keras` + TensorFlow
subprocess path. The SavedModel is checked in a separate Python process that
cannot import keras_cgd (TF Serving runs no Python).
"""

import io
import json
import os
import struct
import subprocess
import sys
import zlib

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

import keras_cgd
from keras_cgd.export import export_saved_model
from keras_cgd.export import list_versions

SIZE = 64


def _png(array):
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, "PNG")
    return buf.getvalue()


def _jpeg(array):
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def huge_png(width=20000, height=20000):
    """A valid-looking PNG whose IHDR declares width × height (tiny IDAT)."""

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(
            ">I", zlib.crc32(kind + data) & 0xFFFFFFFF
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" + b"\x00" * (3 * 16))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def huge_jpeg(width=20000, height=20000):
    """A small real JPEG whose SOF0 marker is patched to declare width × height."""
    data = bytearray(_jpeg(np.zeros((16, 16, 3), np.uint8)))
    sof = data.index(b"\xff\xc0")
    struct.pack_into(">HH", data, sof + 5, height, width)
    return bytes(data)


def tf_decode_resize(contents, size=(SIZE, SIZE)):
    """Independent reference of the bytes signature's preprocessing (tf ops)."""
    image = tf.io.decode_image(contents, channels=3, expand_animations=False)
    image = tf.image.resize(tf.cast(image, tf.float32), size, method="bilinear", antialias=True)
    return image.numpy()


@pytest.fixture(scope="module")
def cgd(tmp_path_factory):
    keras.utils.set_random_seed(0)
    model = keras_cgd.build_model("cgd_tiny", num_classes=5)
    model_dir = str(tmp_path_factory.mktemp("export") / "cgd")
    path = export_saved_model(model, model_dir)
    return model, model_dir, path


def test_layout_version_and_metadata_file(cgd):
    model, model_dir, path = cgd
    assert path == os.path.join(model_dir, "1")
    assert sorted(os.listdir(model_dir)) == ["1"]  # no temporary directory left behind
    assert os.path.isfile(os.path.join(path, "saved_model.pb"))
    assert os.path.isdir(os.path.join(path, "variables"))
    with open(os.path.join(path, "assets.extra", "keras_cgd.json")) as f:
        facts = json.load(f)
    assert facts["preprocessing"]["image_size"] == [SIZE, SIZE]
    assert facts["preprocessing"]["mean"] == model.preprocessing["mean"]
    assert facts["preprocessing"]["std"] == model.preprocessing["std"]
    assert facts["signatures"]["outputs"] == {
        "embedding": "float32 [None, 96]", "logits": "float32 [None, 5]"
    }


def test_next_version_ignores_non_numeric_children(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    model_dir = "mg"  # relative: the returned path keeps the caller's form on every backend
    for name in ("3", "abc", ".tmp-9-deadbeef"):
        (tmp_path / model_dir / name).mkdir(parents=True)
    (tmp_path / model_dir / "12").write_text("a file, not a version directory")
    assert list_versions(model_dir) == [3]
    model = keras_cgd.build_model("multigrain_tiny", num_classes=5)
    path = export_saved_model(model, model_dir)
    assert path == os.path.join(model_dir, "4")
    loaded = tf.saved_model.load(path)
    x = np.random.RandomState(1).uniform(0, 255, (3, SIZE, SIZE, 3)).astype("float32")
    got = loaded.signatures["serving_pixels"](images=tf.constant(x))
    want = model.predict(x, verbose=0)
    assert got["embedding"].dtype == tf.float32
    np.testing.assert_allclose(got["embedding"].numpy(), want["embedding"], atol=1e-5)
    np.testing.assert_allclose(got["logits"].numpy(), want["logits"], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("version", ["2", -1, True, 1.5])
def test_invalid_version_is_refused(cgd, version, tmp_path):
    with pytest.raises(ValueError, match="version"):
        export_saved_model(cgd[0], tmp_path / "m", version=version)


def test_existing_version_is_refused(cgd):
    model, model_dir, _ = cgd
    with pytest.raises(ValueError, match=r"already exists.*version=1"):
        export_saved_model(model, model_dir, version=1)


def test_model_dir_that_is_a_file_is_refused(cgd, tmp_path):
    target = tmp_path / "file"
    target.write_text("x")
    with pytest.raises(ValueError, match="model_dir.*which is a file"):
        export_saved_model(cgd[0], target)
    # Issue 14 item 8: `export model.keras a_file/sub` gave a NotADirectoryError traceback.
    with pytest.raises(ValueError, match=r"model_dir=.*file/sub.*inside .*file'?, which is a file"):
        export_saved_model(cgd[0], target / "sub" / "deeper")
    assert target.read_text() == "x"


def test_invalid_max_image_pixels_is_refused(cgd, tmp_path):
    with pytest.raises(ValueError, match="max_image_pixels=0"):
        export_saved_model(cgd[0], tmp_path / "m", max_image_pixels=0)
    with pytest.raises(ValueError, match="max_request_pixels=0"):
        export_saved_model(cgd[0], tmp_path / "m", max_request_pixels=0)


def test_request_pixel_budget_checked_before_decoding(cgd):
    _, _, path = cgd
    with open(os.path.join(path, "assets.extra", "keras_cgd.json")) as f:
        facts = json.load(f)
    assert facts["max_request_pixels"] == 200_000_000
    assert facts["max_image_pixels"] == 25_000_000
    fn = tf.saved_model.load(path).signatures["serving_default"]
    small = _png(np.zeros((8, 8, 3), np.uint8))
    minimum = SIZE * SIZE  # an image costs at least its resized size
    # 12 × 16 MP declared (no real pixel data) + one real image: under the 200 MP
    # budget, so the decoder reaches the fake images and fails on their data.
    with pytest.raises(tf.errors.InvalidArgumentError) as info:
        fn(image_bytes=tf.constant([small] + [huge_png(4000, 4000)] * 12))
    assert "max_request_pixels" not in info.value.message
    # 13 × 16 MP: refused as a whole, with the total cost (the 8 × 8 image counts 64 × 64).
    with pytest.raises(tf.errors.InvalidArgumentError) as info:
        fn(image_bytes=tf.constant([small] + [huge_png(4000, 4000)] * 13))
    assert "max_request_pixels=200000000" in info.value.message
    assert str(13 * 4000 * 4000 + minimum) in info.value.message
    # A 7000 × 7000 header (49 MP) is over the per-image cap.
    with pytest.raises(tf.errors.InvalidArgumentError, match="max_image_pixels=25000000"):
        fn(image_bytes=tf.constant([huge_jpeg(7000, 7000)]))
    # Header values whose product overflows int64 are still refused per image.
    with pytest.raises(tf.errors.InvalidArgumentError, match="max_image_pixels"):
        fn(image_bytes=tf.constant([huge_png(2**32 - 1, 2**32 - 1)]))


@pytest.mark.skipif(
    keras.backend.backend() != "tensorflow",
    reason="same TF-side graph; the JAX subprocess path is covered above (time budget)",
)
def test_tiny_images_cost_their_resized_size(tmp_path):
    """Many 1 × 1 PNGs are not free: each costs SIZE × SIZE of the request budget."""
    model = keras_cgd.build_model("cgd_tiny", num_classes=5)
    budget = 10 * SIZE * SIZE
    path = export_saved_model(model, tmp_path / "m", max_request_pixels=budget)
    fn = tf.saved_model.load(path).signatures["serving_default"]
    tiny = _png(np.full((1, 1, 3), 200, np.uint8))
    out = fn(image_bytes=tf.constant([tiny] * 10))["embedding"].numpy()
    want = model.predict(np.full((1, SIZE, SIZE, 3), 200, np.float32), verbose=0)["embedding"]
    np.testing.assert_allclose(out, np.repeat(want, 10, axis=0), atol=1e-5)
    with pytest.raises(tf.errors.InvalidArgumentError) as info:
        fn(image_bytes=tf.constant([tiny] * 11))
    assert f"max_request_pixels={budget}" in info.value.message
    assert str(11 * SIZE * SIZE) in info.value.message
    # Non-UTF-8 bytes (a WebP) are named by their first byte values, not raw bytes,
    # so the error message is text.
    webp = b"RIFF\x8e\x01\x00\x00WEBPVP8 "
    with pytest.raises(tf.errors.InvalidArgumentError) as info:
        fn(image_bytes=tf.constant([webp]))
    assert "only JPEG and PNG" in info.value.message
    assert "82 73 70 70 142 1 0 0" in info.value.message  # R I F F 0x8e 0x01 0 0


@pytest.mark.skipif(
    keras.backend.backend() != "tensorflow", reason="in-process export path only"
)
def test_failed_export_leaves_nothing(cgd, tmp_path, monkeypatch):
    from keras_cgd.export import saved_model

    def broken_rename(src, dst):
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(saved_model.os, "rename", broken_rename)
    with pytest.raises(OSError, match="simulated"):
        export_saved_model(cgd[0], tmp_path / "m", version=7)
    assert os.listdir(tmp_path / "m") == []


_STANDALONE = r"""
import importlib.abc, json, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "keras_cgd":
            raise ImportError("blocked in this test: " + name)
        return None
sys.meta_path.insert(0, Block())
import numpy as np
import tensorflow as tf
try:
    import keras_cgd
    raise SystemExit("keras_cgd importable")
except ImportError:
    pass
export_dir, work = sys.argv[1], sys.argv[2]
loaded = tf.saved_model.load(export_dir)
pixels = np.load(work + "/pixels.npy")
out = loaded.signatures["serving_pixels"](images=tf.constant(pixels))
np.save(work + "/pixels_embedding.npy", out["embedding"].numpy())
files = [open(work + "/" + n, "rb").read() for n in json.load(open(work + "/good.json"))]
out = loaded.signatures["serving_default"](image_bytes=tf.constant(files))
np.save(work + "/bytes_embedding.npy", out["embedding"].numpy())
errors = {}
for name in json.load(open(work + "/bad.json")):
    try:
        loaded.signatures["serving_default"](image_bytes=tf.constant([open(work + "/" + name, "rb").read()]))
        errors[name] = "no error"
    except tf.errors.InvalidArgumentError as e:
        errors[name] = "InvalidArgumentError: " + e.message
json.dump(errors, open(work + "/errors.json", "w"))
if any(m.split(".")[0] == "keras_cgd" for m in sys.modules):
    raise SystemExit("keras_cgd was imported")
"""


def test_standalone_load_matches_model_and_guards_decoder(cgd, tmp_path):
    model, _, path = cgd
    rng = np.random.RandomState(0)
    pixels = rng.uniform(0, 255, (4, SIZE, SIZE, 3)).astype("float32")
    np.save(tmp_path / "pixels.npy", pixels)
    good = {
        "a.png": _png(rng.randint(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)),
        "b.png": _png(rng.randint(0, 256, (40, 90, 3), dtype=np.uint8)),
        "c.jpg": _jpeg(rng.randint(0, 256, (100, 70, 3), dtype=np.uint8)),
    }
    gray = io.BytesIO()
    Image.fromarray(rng.randint(0, 256, (30, 30), dtype=np.uint8), "L").save(gray, "PNG")
    good["d_gray.png"] = gray.getvalue()
    bad = {
        "not_image.bin": b"definitely not an image",
        "truncated.png": good["a.png"][:40],
        "huge.png": huge_png(),
        "huge.jpg": huge_jpeg(),
        "gif.gif": b"GIF89a" + b"\x00" * 40,
    }
    for name, data in {**good, **bad}.items():
        (tmp_path / name).write_bytes(data)
    (tmp_path / "good.json").write_text(json.dumps(sorted(good)))
    (tmp_path / "bad.json").write_text(json.dumps(sorted(bad)))
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    env.pop("PYTHONPATH", None)
    proc = subprocess.run(
        [sys.executable, "-c", _STANDALONE, path, str(tmp_path)],
        cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]

    want = model.predict(pixels, verbose=0)["embedding"]
    np.testing.assert_allclose(np.load(tmp_path / "pixels_embedding.npy"), want, atol=1e-5)

    decoded = np.stack([tf_decode_resize(good[name]) for name in sorted(good)])
    want = model.predict(decoded, verbose=0)["embedding"]
    np.testing.assert_allclose(np.load(tmp_path / "bytes_embedding.npy"), want, atol=1e-5)

    errors = json.loads((tmp_path / "errors.json").read_text())
    assert all(message.startswith("InvalidArgumentError") for message in errors.values()), errors
    assert "expected JPEG or PNG" in errors["not_image.bin"]
    assert "expected JPEG or PNG" in errors["gif.gif"]
    for name in ("huge.png", "huge.jpg"):
        assert "max_image_pixels" in errors[name] and "[20000] [20000]" in errors[name]


@pytest.mark.skipif(
    keras.backend.backend() != "tensorflow",
    reason="same TF-side trace; the JAX subprocess path is covered above (time budget)",
)
def test_mixed_precision_outputs_float32(tmp_path):
    policy = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_float16")
    try:
        model = keras_cgd.build_model("cgd_tiny", num_classes=5)
    finally:
        keras.config.set_dtype_policy(policy)
    path = export_saved_model(model, tmp_path / "mp")
    loaded = tf.saved_model.load(path)
    for name, fn in loaded.signatures.items():
        assert {k: v.dtype for k, v in fn.structured_outputs.items()} == {
            "embedding": tf.float32, "logits": tf.float32
        }, name
    x = np.random.RandomState(2).uniform(0, 255, (2, SIZE, SIZE, 3)).astype("float32")
    got = loaded.signatures["serving_pixels"](images=tf.constant(x))["embedding"].numpy()
    want = np.asarray(model.predict(x, verbose=0)["embedding"], np.float32)
    np.testing.assert_allclose(got, want, atol=2e-3)  # float16 compute
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=2e-3)
