"""Image sources of a bulk embedding job: folder, glob, file list or TFRecords.

`resolve_source(spec)` turns the `SOURCE` argument of `keras-cgd embed` into an
`ImageSource`, an ordered list of items each with an int64 id and a string key:

| `spec` | items | id | key |
|---|---|---|---|
| a folder of images | image files under it, recursively, sorted by path (hidden files and folders skipped) | position in that order | the absolute path |
| a glob (`photos/**/*.jpg`) | the matching image (or TFRecord) files, sorted | position | the absolute path |
| a `.txt` file list | one path per line, whatever its extension (relative paths are relative to the list's folder; blank lines and `#` comments skipped), in list order | line position | the absolute path |
| a `.tfrecord` file, a glob of them, or a folder holding only TFRecord files | the `tf.train.Example` records of the files (sorted by name), in file order | position in that order | the example's `image/filename` feature, else `<file>:<record index>` |

TFRecord examples carry the encoded image in a bytes feature `image/encoded`
(the TF Object Detection / TFDS convention) or `image`. Ids are positions, so
a resumed run and the Beam pipeline give every image the same id;
`fingerprint` names the listing (file names, and file sizes for TFRecords) so
that a resumed run refuses a source whose listing changed.

Decoding (`decode_image_file`) is the one used by `keras_cgd.training.embed`
and the retrieval evaluation: `tf.io.decode_image(channels=3)` (JPEG, PNG,
GIF, BMP) and `keras_cgd.data.augment.resize_for_test` (bilinear,
antialiased), float32 pixels in [0, 255]. For JPEG and PNG these are the ops of
the exported `serving_default` signature.
"""

import glob
import hashlib
import os
import re

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
TFRECORD_EXTENSIONS = (".tfrecord", ".tfrecords", ".tfrec")
IMAGE_FEATURES = ("image/encoded", "image")
KEY_FEATURE = "image/filename"


def _usage(value, detail=""):
    return ValueError(
        "Invalid value received for argument `source`. Expected a folder of images, a "
        "glob, a .txt file list or TFRecord files (.tfrecord, .tfrecords, .tfrec)"
        f"{detail}. Received: source={value!r}"
    )


class ImageSource:
    """An ordered list of images to embed (see the module docstring).

    Attributes:
        spec: the `source` string it was resolved from.
        kind: `"files"` (image files) or `"tfrecord"` (TFRecord files of examples).
        files: the image paths (`"files"`) or the TFRecord paths (`"tfrecord"`).
        num_items: the number of images for `"files"`; None for `"tfrecord"`
            (known once the records are read).
        fingerprint: hex digest of the listing.
    """

    def __init__(self, spec, kind, files):
        self.spec = str(spec)
        self.kind = kind
        self.files = list(files)
        self.num_items = len(self.files) if kind == "files" else None
        digest = hashlib.sha256(kind.encode())
        for path in self.files:
            digest.update(b"\0" + os.fsencode(path))
            if kind == "tfrecord":
                digest.update(b"\0%d" % os.path.getsize(path))
        self.fingerprint = digest.hexdigest()

    def describe(self):
        """JSON-able description stored in the output manifest."""
        return {
            "spec": self.spec,
            "kind": self.kind,
            "num_files": len(self.files),
            "fingerprint": self.fingerprint,
        }

    def __repr__(self):
        return f"ImageSource({self.kind}, {len(self.files)} files, spec={self.spec!r})"


def _is_tfrecord(path):
    return path.lower().endswith(TFRECORD_EXTENSIONS)


def _is_image(path):
    return path.lower().endswith(IMAGE_EXTENSIONS)


def _walk(root):
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found.extend(os.path.join(dirpath, f) for f in filenames if not f.startswith("."))
    return sorted(os.path.abspath(p) for p in found)


def _read_file_list(path):
    base = os.path.dirname(os.path.abspath(path))
    files = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if line and not line.startswith("#"):
                files.append(os.path.abspath(os.path.join(base, line)))
    return files


def _split_kinds(spec, paths):
    images = [p for p in paths if not _is_tfrecord(p)]
    records = [p for p in paths if _is_tfrecord(p)]
    if images and records:
        raise _usage(spec, f" (found both image files, e.g. {images[0]!r}, and TFRecord "
                     f"files, e.g. {records[0]!r}; use one kind)")
    return ImageSource(spec, "tfrecord", records) if records else ImageSource(spec, "files", images)


def resolve_source(spec):
    """The `ImageSource` named by `spec` (folder, glob, `.txt` list or TFRecords).

    Args:
        spec: a path or glob string (see the module docstring for the rules).

    Returns:
        `ImageSource` with at least one item file.

    Raises:
        ValueError: `spec` names nothing, or matches no image / TFRecord file.

    Example:
    >>> source = resolve_source("photos/")        # photos/**/*.jpg, sorted
    >>> source.kind, len(source.files)
    """
    if isinstance(spec, ImageSource):
        return spec
    if not isinstance(spec, (str, os.PathLike)):
        raise _usage(spec)
    spec = os.fspath(spec)
    if os.path.isdir(spec):
        everything = _walk(spec)
        images = [p for p in everything if _is_image(p)]
        records = [p for p in everything if _is_tfrecord(p)]
        if images:
            source = ImageSource(spec, "files", images)
        elif records:
            source = ImageSource(spec, "tfrecord", records)
        else:
            raise _usage(spec, f" (the folder holds no file ending in "
                         f"{IMAGE_EXTENSIONS + TFRECORD_EXTENSIONS})")
    elif os.path.isfile(spec) and spec.lower().endswith(".txt"):
        files = _read_file_list(spec)
        if not files:
            raise _usage(spec, " (the file list is empty)")
        source = _split_kinds(spec, files)
    elif os.path.isfile(spec) and _is_tfrecord(spec):
        source = ImageSource(spec, "tfrecord", [os.path.abspath(spec)])
    elif glob.has_magic(spec):
        matches = sorted(os.path.abspath(p) for p in glob.glob(spec, recursive=True)
                         if os.path.isfile(p) and (_is_image(p) or _is_tfrecord(p)))
        if not matches:
            raise _usage(spec, f" (the glob matches no file ending in {IMAGE_EXTENSIONS + TFRECORD_EXTENSIONS})")
        source = _split_kinds(spec, matches)
    elif os.path.isfile(spec) and _is_image(spec):
        source = ImageSource(spec, "files", [os.path.abspath(spec)])
    else:
        raise _usage(spec, " (no such folder or file)" if not os.path.exists(spec) else "")
    return source


# ----------------------------------------------------------------------- decoding (TF)


def decode_image_file(contents, image_size):
    """Decodes encoded image bytes to float32 `(H, W, 3)` pixels in [0, 255].

    `tf.io.decode_image(contents, channels=3, expand_animations=False)` then
    `keras_cgd.data.augment.resize_for_test(image, image_size)` (bilinear,
    antialias), the decoding of `keras_cgd.training.embed`. Raises
    `tf.errors.InvalidArgumentError` for bytes that are not a readable image.

    Args:
        contents: scalar `tf.string`.
        image_size: `(H, W)`.
    """
    import tensorflow as tf

    from keras_cgd.data.augment import resize_for_test

    image = tf.io.decode_image(contents, channels=3, expand_animations=False)
    return resize_for_test(image, image_size)


def parse_example(record, record_name):
    """`(image_bytes, key)` of a serialised `tf.train.Example` (TF graph ops).

    The image is the `image/encoded` feature, else `image` (empty bytes when
    neither is present, which then fails to decode and is reported); the key is
    `image/filename` when present, else `record_name`.
    """
    import tensorflow as tf

    spec = {name: tf.io.FixedLenFeature([], tf.string, default_value="")
            for name in IMAGE_FEATURES + (KEY_FEATURE,)}
    features = tf.io.parse_single_example(record, spec)
    image = features[IMAGE_FEATURES[0]]
    for name in IMAGE_FEATURES[1:]:
        image = tf.where(tf.strings.length(image) > 0, image, features[name])
    key = tf.where(tf.strings.length(features[KEY_FEATURE]) > 0, features[KEY_FEATURE], record_name)
    return image, key


def describe_decode_error(contents_or_path, image_size, parse=False):
    """Reason (one line) why an item fails to decode; `"unreadable"` if it decodes now."""
    import tensorflow as tf

    try:
        if parse:
            contents, _ = parse_example(contents_or_path, "")
            if not int(tf.strings.length(contents)):
                return f"the example has no image feature (looked for {list(IMAGE_FEATURES)})"
        elif isinstance(contents_or_path, bytes):
            contents = contents_or_path
        else:
            contents = tf.io.read_file(contents_or_path)
        decode_image_file(contents, image_size)
    except Exception as e:  # noqa: BLE001 - any reader/decoder error is reported as text
        return _one_line(e)
    return "unreadable"


def _one_line(error):
    """The message of a TF error on one line, without TF's `{{function_node ...}}` and `[Op:...]`."""
    text = re.sub(r"\{\{function_node [^}]*\}\}", "", str(error))
    text = re.sub(r"\[Op:[^\]]*\].*$", "", text, flags=re.S)
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__
