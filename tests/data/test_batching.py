import os
import warnings

import numpy as np
import pytest
import tensorflow as tf

from keras_cgd import data as kdata
from tests.data._data_files import write_image


def _coded_images(n, size=16):
    """Image i is constant with colour (i % 256, i // 256, 7): the pixel tells the index."""
    images = np.zeros((n, size, size, 3), np.uint8)
    images[..., 0] = (np.arange(n) % 256)[:, None, None]
    images[..., 1] = (np.arange(n) // 256)[:, None, None]
    images[..., 2] = 7
    return images


def _decode_index(batch_images):
    px = np.round(batch_images[:, 0, 0, :]).astype(int)
    assert (px[:, 2] == 7).all()
    return px[:, 0] + 256 * px[:, 1]


def _unbalanced_labels():
    # 10 classes with 1..10 images each (class c has c + 1 images)
    return np.concatenate([np.full(c + 1, c) for c in range(10)]).astype("int32")


def test_class_balanced_batches_exact_composition():
    labels = _unbalanced_labels()
    ds = kdata.from_arrays(_coded_images(len(labels)), labels)
    p, k = 4, 3
    batches = kdata.class_balanced_batches(ds, p, k, image_size=16, augmentation="none", seed=3)
    assert int(batches.cardinality()) == len(labels) // (p * k)
    seen = 0
    for images, y in batches.as_numpy_iterator():
        assert images.shape == (p * k, 16, 16, 3) and images.dtype == np.uint8
        idx = _decode_index(images)
        # labels are those of the images actually in the batch
        np.testing.assert_array_equal(y["logits"], labels[idx])
        np.testing.assert_array_equal(y["embedding"], labels[idx])
        assert y["logits"].dtype == np.int32
        blocks = y["logits"].reshape(p, k)
        assert (blocks == blocks[:, :1]).all()  # K images per class block
        assert len(set(blocks[:, 0].tolist())) == p  # P distinct classes
        for block, block_idx in zip(blocks, idx.reshape(p, k)):
            size = int((labels == block[0]).sum())
            # distinct images when the class has >= K, else all of its images + repeats
            assert len(set(block_idx.tolist())) == min(size, k)
        seen += 1
    assert seen == len(labels) // (p * k)


def test_class_balanced_small_classes_drop_and_errors():
    labels = _unbalanced_labels()
    ds = kdata.from_arrays(_coded_images(len(labels)), labels)
    with pytest.warns(UserWarning, match="2 class"):
        batches = kdata.class_balanced_batches(ds, 2, 3, image_size=16, augmentation="none", small_classes="drop", seed=0)
    for _, y in batches.as_numpy_iterator():
        assert set(y["logits"].tolist()) <= set(range(2, 10))
    with pytest.raises(ValueError, match="classes_per_batch"):
        kdata.class_balanced_batches(ds, 11, 2, image_size=16)
    with pytest.raises(ValueError, match="small_classes"):
        kdata.class_balanced_batches(ds, 2, 2, image_size=16, small_classes="pad")
    with pytest.raises(ValueError, match="augmentation"):
        kdata.class_balanced_batches(ds, 2, 2, image_size=16, augmentation="autoaugment")
    with pytest.raises(ValueError, match="image_size"):
        kdata.class_balanced_batches(ds, 2, 2, image_size=0)


def test_repeated_augmentation_exact_composition_and_epochs():
    n, b, m = 50, 12, 3
    labels = (np.arange(n) % 7).astype("int32")
    ds = kdata.from_arrays(_coded_images(n), labels)
    batches = kdata.repeated_augmentation_batches(ds, b, m, image_size=16, augmentation="none", seed=5)
    assert int(batches.cardinality()) == int(n * 2.0) // b  # MultiGrain epoch length factor 2
    epochs = []
    for _ in range(2):
        ids_epoch = []
        for images, y in batches.as_numpy_iterator():
            idx = _decode_index(images)
            np.testing.assert_array_equal(y["embedding"], idx)  # instance id = dataset index
            np.testing.assert_array_equal(y["logits"], labels[idx])
            groups = y["embedding"].reshape(b // m, m)
            assert (groups == groups[:, :1]).all()  # copies consecutive, all in this batch
            assert len(set(groups[:, 0].tolist())) == b // m  # no image twice in a batch
            ids_epoch.extend(groups[:, 0].tolist())
        epochs.append(ids_epoch)
        # 2N samples / 3 copies < N distinct images: all drawn from one permutation
        assert len(ids_epoch) == len(set(ids_epoch)) == int(n * 2.0) // b * (b // m)
    assert epochs[0] != epochs[1]  # a new plan each epoch
    longer = kdata.repeated_augmentation_batches(ds, b, m, image_size=16, augmentation="none",
                                                 epoch_length_factor=6.0, seed=5)
    ids = np.concatenate([y["embedding"][::m] for _, y in longer.as_numpy_iterator()])
    assert len(ids) == 100
    # successive random permutations: each image once per pass
    assert sorted(ids[:n].tolist()) == list(range(n)) and sorted(ids[n:].tolist()) == list(range(n))
    with pytest.raises(ValueError, match="distinct images"):
        kdata.repeated_augmentation_batches(ds, 153, 3, image_size=16)
    with pytest.raises(ValueError, match="repeats <= batch_size"):
        kdata.repeated_augmentation_batches(ds, 2, 3, image_size=16)


def test_repeated_augmentation_copies_independent_and_reproducible():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (8, 40, 40, 3), dtype=np.uint8)
    ds = kdata.from_arrays(images, np.arange(8) % 2)
    for augmentation in ("multigrain", "cgd"):
        make = lambda: kdata.repeated_augmentation_batches(  # noqa: E731
            ds, 6, 3, image_size=24, augmentation=augmentation, steps_per_epoch=2, seed=11)
        a = [x for x, _ in make().as_numpy_iterator()]
        b = [x for x, _ in make().as_numpy_iterator()]
        for xa, xb in zip(a, b):
            np.testing.assert_array_equal(xa, xb)  # same seed, same batches
        x = a[0].astype(np.float32)
        assert x.shape == (6, 24, 24, 3) and a[0].dtype == np.uint8
        for g in range(2):
            copies = x[3 * g : 3 * g + 3]
            for i in range(3):
                for j in range(i + 1, 3):
                    assert np.abs(copies[i] - copies[j]).mean() > 1.0  # independently augmented


def test_batchers_accept_tf_data_of_paths(tmp_path):
    paths, labels = [], []
    for i in range(12):
        p = os.path.join(str(tmp_path), f"{i}.jpg" if i % 2 else f"{i}.png")
        write_image(p, (i * 20, 100, 7), size=(50, 40))  # red channel = 20 * file index
        paths.append(p)
        labels.append(i % 3)
    ds = tf.data.Dataset.from_tensor_slices((paths, labels))
    labels = np.asarray(labels)

    def file_index(x):
        red = x[:, :, :, 0].reshape(len(x), -1)
        assert np.ptp(red, axis=1).max() < 8  # constant images stay near constant without augmentation
        return np.round(red.mean(axis=1) / 20).astype(int)

    ra = kdata.repeated_augmentation_batches(ds, 6, 3, image_size=20, augmentation="none", seed=0)  # JPEG + PNG
    for x, y in ra.as_numpy_iterator():
        assert x.shape == (6, 20, 20, 3)
        idx = file_index(x)
        np.testing.assert_array_equal(idx, y["embedding"])  # the image is the file its instance id names
        np.testing.assert_array_equal(y["logits"], labels[idx])
    for x, y in kdata.repeated_augmentation_batches(ds, 6, 3, image_size=20, seed=0).as_numpy_iterator():
        assert x.shape == (6, 20, 20, 3)  # "multigrain" crops while decoding JPEGs
        np.testing.assert_array_equal(y["logits"], labels[y["embedding"]])
    pk = kdata.class_balanced_batches(ds, 3, 2, image_size=20, augmentation="none", seed=0)
    for x, y in pk.as_numpy_iterator():
        idx = file_index(x)
        np.testing.assert_array_equal(y["embedding"], labels[idx])  # the label is that of the file shown
        np.testing.assert_array_equal(y["logits"], labels[idx])
        np.testing.assert_array_equal(np.sort(np.unique(y["logits"])), [0, 1, 2])


def _box_crop(image, box):
    """NumPy crop to [x0, y0, x1, y1]: floor of the start, ceil of the end."""
    x0, y0 = int(np.floor(box[0])), int(np.floor(box[1]))
    x1, y1 = int(np.ceil(box[2])), int(np.ceil(box[3]))
    return image[y0:y1, x0:x1]


def test_boxes_crop_in_memory_images():
    rng = np.random.default_rng(4)
    images = rng.integers(0, 256, (4, 20, 24, 3), dtype=np.uint8)
    # every box covers 7 rows x 9 columns once widened to whole pixels
    boxes = np.array([[2.5, 3.0, 10.2, 9.5], [0, 0, 9, 7], [15, 13, 24, 20], [4.9, 1.1, 13, 8]], "float32")
    expected = np.stack([_box_crop(im, b) for im, b in zip(images, boxes)]).astype("float32")
    assert expected.shape == (4, 7, 9, 3)
    labels = np.array([0, 0, 1, 1], "int32")
    data = kdata.ImageDataset(labels, ["a", "b"], images=images, boxes=boxes)
    out = np.concatenate([x for x, _ in kdata.inference_batches(data, 3, image_size=(7, 9)).as_numpy_iterator()])
    np.testing.assert_allclose(out, expected, atol=1e-3)
    # the training loaders crop too, and a tf.data "box" column is kept
    as_tf = tf.data.Dataset.from_tensor_slices({"image": images, "label": labels, "box": boxes})
    for source in (data, as_tf):
        batches = kdata.repeated_augmentation_batches(source, 4, 1, image_size=(7, 9), augmentation="none",
                                                      epoch_length_factor=1.0, seed=0)
        for x, y in batches.as_numpy_iterator():
            np.testing.assert_allclose(x, expected[y["embedding"]], atol=1e-3)


def test_tf_data_of_decoded_images_of_different_sizes_is_a_clear_error():
    shapes = [(16, 16, 3), (20, 12, 3), (16, 16, 3)]

    def gen():
        for i, sh in enumerate(shapes):
            yield np.zeros(sh, np.uint8), i % 2

    ds = tf.data.Dataset.from_generator(
        gen, output_signature=(tf.TensorSpec([None, None, 3], tf.uint8), tf.TensorSpec([], tf.int32)))
    with pytest.raises(ValueError, match=r"\(16, 16, 3\), \(20, 12, 3\)"):
        kdata.class_balanced_batches(ds, 2, 2, image_size=16)
    # one shape, unknown statically: read element by element
    same = tf.data.Dataset.from_generator(
        lambda: ((np.full((16, 16, 3), i, np.uint8), i % 2) for i in range(4)),
        output_signature=(tf.TensorSpec([None, None, 3], tf.uint8), tf.TensorSpec([], tf.int32)))
    batches = kdata.repeated_augmentation_batches(same, 4, 2, image_size=16, augmentation="none", seed=0)
    for x, y in batches.as_numpy_iterator():
        np.testing.assert_array_equal(x[:, 0, 0, 0], y["embedding"])
        np.testing.assert_array_equal(y["logits"], y["embedding"] % 2)


def test_inference_batches_modes():
    images = np.zeros((3, 30, 60, 3), np.uint8) + 100
    ds = kdata.from_arrays(images, [0, 1, 1])
    out = list(kdata.inference_batches(ds, 2, image_size=16).as_numpy_iterator())
    assert [x.shape for x, _ in out] == [(2, 16, 16, 3), (1, 16, 16, 3)]
    np.testing.assert_array_equal(np.concatenate([y["logits"] for _, y in out]), [0, 1, 1])
    rect = list(kdata.inference_batches(ds, 1, longest_side=40).as_numpy_iterator())
    assert rect[0][0].shape == (1, 20, 40, 3)
    with pytest.raises(ValueError, match="batch_size must be 1"):
        kdata.inference_batches(ds, 2, longest_side=40)


def test_model_fit_on_batches():
    import keras

    data = kdata.load_builtin("digits", image_size=16)
    train = kdata.from_arrays(data.train_images[:200], data.train_labels[:200])
    batches = kdata.class_balanced_batches(train, 4, 4, image_size=16, augmentation="flip", steps_per_epoch=3, seed=0)
    inputs = keras.Input((16, 16, 3))
    h = keras.layers.Flatten()(keras.layers.Rescaling(1 / 255.0)(inputs))
    emb = keras.layers.UnitNormalization(name="embedding")(keras.layers.Dense(8)(h))
    logits = keras.layers.Dense(data.num_train_classes, name="logits")(h)
    model = keras.Model(inputs, {"embedding": emb, "logits": logits})

    def dummy_ranking(y_true, y_pred):
        same = keras.ops.cast(keras.ops.equal(y_true[:, None], y_true[None, :]), "float32")
        sim = keras.ops.matmul(y_pred, keras.ops.transpose(y_pred))
        return keras.ops.mean((sim - same) ** 2)

    model.compile("adam", loss={"embedding": dummy_ranking,
                                "logits": keras.losses.SparseCategoricalCrossentropy(from_logits=True)})
    hist = model.fit(batches, epochs=2, verbose=0)
    assert len(hist.history["loss"]) == 2 and np.isfinite(hist.history["loss"]).all()


def _check_ra_stream(batches, n, b, m, labels):
    """The epoch stream is MultiGrain's RASampler's: groups of m equal consecutive ids cut
    into batches of b, no image in two groups of one batch, images drawn pass by pass."""
    stream, per_batch = [], []
    for images, y in batches.as_numpy_iterator():
        ids = y["embedding"]
        assert images.shape[0] == b and len(ids) == b
        np.testing.assert_array_equal(_decode_index(images), ids)  # the pixels are those of the id
        np.testing.assert_array_equal(y["logits"], labels[ids])
        per_batch.append(ids)
        stream.extend(ids.tolist())
    stream = np.array(stream)
    groups = [stream[g : g + m] for g in range(0, len(stream), m)]
    assert all((grp == grp[0]).all() for grp in groups)  # copies consecutive (last group may be cut)
    firsts = np.array([grp[0] for grp in groups])
    for t, ids in enumerate(per_batch):  # groups touching batch t: distinct images
        touching = firsts[(t * b) // m : ((t + 1) * b - 1) // m + 1]
        assert len(set(touching.tolist())) == len(touching)
    for start in range(0, len(firsts) - n + 1, n):  # each image once per pass
        assert sorted(firsts[start : start + n].tolist()) == list(range(n))
    return per_batch, firsts


def test_repeated_augmentation_batch_not_a_multiple_of_repeats_straddles():
    n, b, m = 20, 10, 3
    labels = (np.arange(n) % 4).astype("int32")
    ds = kdata.from_arrays(_coded_images(n), labels)
    batches = kdata.repeated_augmentation_batches(ds, b, m, image_size=16, augmentation="none",
                                                  epoch_length_factor=8.0, seed=2)
    assert int(batches.cardinality()) == int(n * 8.0) // b
    per_batch, firsts = _check_ra_stream(batches, n, b, m, labels)
    # batch 0 ends inside group 3 (stream positions 9, 10, 11): one copy here, two in batch 1
    assert per_batch[0][-1] == per_batch[1][0] == per_batch[1][1] == firsts[3]
    assert len(firsts) == -(-len(per_batch) * b // m) and len(firsts) > 2 * n  # > 2 passes


def test_repeated_augmentation_paper_batch_512_repeats_3():
    n = 180
    labels = (np.arange(n) % 9).astype("int32")
    images = _coded_images(n, size=8)
    batches = kdata.repeated_augmentation_batches(kdata.from_arrays(images, labels), 512, 3, image_size=8,
                                                  augmentation="none", steps_per_epoch=2, seed=0)
    per_batch, _ = _check_ra_stream(batches, n, 512, 3, labels)
    assert [len(set(ids.tolist())) for ids in per_batch] == [171, 172]  # 170 triples + partial groups
    with pytest.raises(ValueError, match="needs up to 172 distinct images"):
        kdata.repeated_augmentation_batches(kdata.from_arrays(images[:171], labels[:171]), 512, 3,
                                            image_size=8, steps_per_epoch=2)


def test_plan_groups_matches_a_loop():
    from keras_cgd.data.batching import plan_groups

    rng = np.random.default_rng(0)
    for _ in range(20):
        plan = np.repeat(rng.integers(0, 4, 30), rng.integers(1, 5, 30))[:60]
        b, copies = int(rng.integers(1, 13)), int(rng.integers(1, 5))
        want, pos = [], 0
        while pos < len(plan):  # runs of one index, cut at batch ends and every `copies`
            end = pos + 1
            while end < len(plan) and plan[end] == plan[pos] and end % b and end - pos < copies:
                end += 1
            want.append((pos, end - pos))
            pos = end
        starts, counts = plan_groups(plan, b, copies)
        assert list(zip(starts.tolist(), counts.tolist())) == want


def test_training_resize_is_antialiased_as_evaluation_and_pil():
    from PIL import Image

    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (4, 64, 48, 3), dtype=np.uint8)  # noise: aliasing shows
    ds = kdata.from_arrays(images, [0, 0, 1, 1])
    pil = np.stack([np.asarray(Image.fromarray(im).resize((12, 16), Image.BILINEAR)) for im in images])
    test = np.concatenate([x for x, _ in kdata.inference_batches(ds, 4, image_size=(16, 12)).as_numpy_iterator()])
    train = kdata.repeated_augmentation_batches(ds, 4, 1, image_size=(16, 12), augmentation="none",
                                                epoch_length_factor=1.0, seed=0)
    for x, y in train.as_numpy_iterator():
        np.testing.assert_array_equal(x, test[y["embedding"]])  # train resizes as evaluation does
        diff = np.abs(x.astype(float) - pil[y["embedding"]])
        assert diff.max() <= 2 and diff.mean() < 0.6  # PIL's (antialiased) bilinear; plain bilinear: ~25


def test_output_dtype_option():
    images = np.random.default_rng(2).integers(0, 256, (8, 20, 20, 3), dtype=np.uint8)
    ds = kdata.from_arrays(images, np.arange(8) % 2)
    make = lambda **kw: kdata.class_balanced_batches(ds, 2, 2, image_size=12, augmentation="multigrain",  # noqa: E731
                                                    steps_per_epoch=2, seed=4, **kw)
    as_uint8 = [x for x, _ in make().as_numpy_iterator()]
    as_float = [x for x, _ in make(dtype="float32").as_numpy_iterator()]
    for u, f in zip(as_uint8, as_float):
        assert u.dtype == np.uint8 and f.dtype == np.float32
        np.testing.assert_array_equal(u.astype(np.float32), f)
    test = kdata.inference_batches(ds, 8, image_size=12, dtype="float32")
    x, _ = next(iter(test))
    want = tf.image.resize(images, (12, 12), antialias=True).numpy()  # unrounded, as serving_bytes
    np.testing.assert_allclose(x.numpy(), want, atol=1e-3)
    for fn in (lambda: make(dtype="float16"), lambda: kdata.inference_batches(ds, 2, image_size=8, dtype="int8")):
        with pytest.raises(ValueError, match="Expected one of \\('uint8', 'float32'\\)"):
            fn()


def test_jpeg_files_same_seed_same_batches_each_epoch(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(3)
    paths = []
    yy, xx = np.mgrid[0:60, 0:80]
    for i in range(6):
        smooth = np.stack([(xx * (i + 1)) % 256, (yy * 3 + 40 * i) % 256, (xx + yy) % 256], -1).astype(np.uint8)
        noisy = np.clip(smooth + rng.normal(0, 8, smooth.shape), 0, 255).astype(np.uint8)
        paths.append(os.path.join(str(tmp_path), f"{i}.jpg"))
        Image.fromarray(noisy).save(paths[-1], quality=92)
    data = kdata.ImageDataset(np.arange(6) % 3, ["a", "b", "c"], paths=np.array(paths))

    def epochs(seed):
        batches = kdata.repeated_augmentation_batches(data, 6, 3, image_size=16, steps_per_epoch=1, seed=seed)
        return [next(iter(batches))[0].numpy() for _ in range(2)]

    first, again = epochs(9), epochs(9)
    for xa, xb in zip(first, again):  # epoch e of one pipeline = epoch e of another with the seed
        np.testing.assert_array_equal(xa, xb)
    assert np.abs(first[0].astype(float) - first[1]).mean() > 1  # a new epoch, new batches
    copies = first[0][:3].astype(float)  # one file decoded once, three independent crops
    assert min(np.abs(copies[i] - copies[j]).mean() for i, j in [(0, 1), (0, 2), (1, 2)]) > 1


def test_multigrain_crops_of_jpeg_files_stay_inside_their_box(tmp_path):
    # Only the box (grey) may be decoded into the crops, never the stripes around it.
    from PIL import Image

    paths, boxes = [], []
    for i in range(4):
        arr = np.zeros((96, 112, 3), np.uint8)
        arr[:, ::2] = 255  # 1-pixel stripes: any crop that reaches outside has a huge spread
        y0, x0 = 16 * (i % 2 + 1), 16 * (i // 2 + 1)
        arr[y0 : y0 + 48, x0 : x0 + 64] = 60 + 40 * i
        paths.append(os.path.join(str(tmp_path), f"{i}.jpg"))
        Image.fromarray(arr).save(paths[-1], quality=95)
        boxes.append([x0 + 3, y0 + 3, x0 + 61, y0 + 45])  # 3 px margin against JPEG ringing
    data = kdata.ImageDataset(np.arange(4) % 2, ["a", "b"], paths=np.array(paths), boxes=np.array(boxes, "float32"))
    for batches in (kdata.repeated_augmentation_batches(data, 6, 3, image_size=16, steps_per_epoch=3, seed=1),
                    kdata.class_balanced_batches(data, 2, 2, image_size=16, augmentation="multigrain",
                                                 steps_per_epoch=3, seed=1)):
        for x, _ in batches.as_numpy_iterator():
            spread = x.astype(float).reshape(len(x), -1, 3).std(axis=1).max(axis=1)
            assert spread.max() < 8, spread  # uniform crops (stripes: ~127)


@pytest.mark.parametrize("kind", ["pk", "ra"])
def test_fixed_epoch_gives_that_iteration_of_the_multi_epoch_dataset_every_time(kind):
    """`epoch=e`: each iteration yields what the e-th iteration of `epoch=None` yields."""
    labels = np.repeat(np.arange(6), 4).astype("int32")
    ds = kdata.from_arrays(_coded_images(len(labels)), labels)

    def make(**kw):
        if kind == "pk":
            return kdata.class_balanced_batches(ds, 3, 2, image_size=16, augmentation="flip", seed=4,
                                                steps_per_epoch=2, **kw)
        return kdata.repeated_augmentation_batches(ds, 6, 3, image_size=16, augmentation="multigrain", seed=4,
                                                   steps_per_epoch=2, **kw)

    def read(batches):
        return [(x, y["logits"]) for x, y in batches.as_numpy_iterator()]

    multi = make()
    epochs = [read(multi) for _ in range(3)]
    for e in (0, 2):
        fixed = make(epoch=e)
        for _ in range(2):  # however often it is iterated
            got = read(fixed)
            assert len(got) == len(epochs[e])
            for (xa, ya), (xb, yb) in zip(got, epochs[e]):
                np.testing.assert_array_equal(xa, xb)
                np.testing.assert_array_equal(ya, yb)
    assert not all(np.array_equal(a[0], b[0]) for a, b in zip(epochs[0], epochs[2]))
    with pytest.raises(ValueError, match="argument `epoch`.*Received: epoch=-1"):
        make(epoch=-1)
