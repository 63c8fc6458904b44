"""Helpers that write tiny image files and dataset trees in the official layouts."""

import os

import numpy as np
from PIL import Image


def colour_of(k):
    """A distinct RGB colour for integer k (exact in PNG, near in JPEG)."""
    return ((37 * k + 20) % 256, (91 * k + 60) % 256, (53 * k + 100) % 256)


def write_image(path, colour, size=(40, 30), fmt=None, mode="RGB"):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    arr = np.zeros((size[1], size[0], 3), np.uint8) + np.array(colour, np.uint8)
    im = Image.fromarray(arr)
    if mode == "L":
        im = im.convert("L")
    elif mode == "RGBA":
        im = im.convert("RGBA")
    fmt = fmt or ("JPEG" if path.lower().endswith((".jpg", ".jpeg")) else "PNG")
    kw = {"quality": 95} if fmt == "JPEG" else {}
    im.save(path, format=fmt, **kw)


def write_truncated_jpeg(path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(path, format="JPEG", quality=90)
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])


def write_text_as_image(path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write("this is not an image\n")
