"""classification_accuracy on a small labelled folder against a brute-force count."""

import os

import keras
import numpy as np
import pytest
from PIL import Image

import keras_cgd
from keras_cgd.evaluation import classification_accuracy
from keras_cgd.evaluation import gem_p_override
from keras_cgd.evaluation import resize_longest_side
from keras_cgd.evaluation.classification import resize_center_crop

CLASSES = ["n01", "n02", "n03", "n04"]


@pytest.fixture(scope="module")
def model():
    keras.utils.set_random_seed(0)
    return keras_cgd.build_model(
        "multigrain", num_classes=len(CLASSES), backbone="tiny_convnet", input_shape=(None, None, 3),
        compile=False,
    )


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """`root/<synset>/<image>.png`: 3 classes of the model's 4, images of several sizes."""
    root = tmp_path_factory.mktemp("val")
    rng = np.random.default_rng(0)
    sizes = [(30, 40), (40, 30)]  # landscape and portrait; few shapes keep JAX compiles few
    for c, name in enumerate(CLASSES[1:]):
        os.makedirs(root / name)
        for i in range(4):
            h, w = sizes[(i + c) % len(sizes)]
            Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / name / f"{i}.png")
    return str(root)


def brute_force(model, folder, class_names, size, p, ks, crop=False):
    """One image at a time: PIL decode, resize, forward pass, rank of the true class."""
    hits = {k: 0 for k in ks}
    n = 0
    with gem_p_override(model, p):
        for name in sorted(os.listdir(folder)):
            for fn in sorted(os.listdir(os.path.join(folder, name))):
                image = np.asarray(Image.open(os.path.join(folder, name, fn)).convert("RGB"))
                image = resize_center_crop(image, size) if crop else resize_longest_side(image, size)
                logits = model.predict(image[None], verbose=0)["logits"][0]
                order = np.argsort(-logits)
                for k in ks:
                    hits[k] += int(class_names.index(name) in order[:k])
                n += 1
    return {f"top{k}": hits[k] / n for k in ks}, n


def test_matches_brute_force_count(model, folder):
    got = classification_accuracy(
        model, folder, image_size=32, gem_p=2.0, ks=(1, 2), class_names=CLASSES, batch_size=2,
        chunk_size=4, progress=False,
    )
    expected, n = brute_force(model, folder, CLASSES, 32, 2.0, (1, 2))
    assert got["num_images"] == n == 12 and got["num_classes"] == 4
    assert got["top1"] == pytest.approx(expected["top1"]) and got["top2"] == pytest.approx(expected["top2"])
    assert 0 < got["top2"] and got["top1"] <= got["top2"]
    assert float(keras.ops.convert_to_numpy(model.get_layer("gem").p)) == 3.0  # restored


def test_center_crop_protocol(model, folder):
    got = classification_accuracy(
        model, folder, image_size=24, ks=(1, 3), class_names=CLASSES, center_crop=True, progress=False,
    )
    expected, _ = brute_force(model, folder, CLASSES, 24, 3.0, (1, 3), crop=True)
    assert got["top1"] == pytest.approx(expected["top1"]) and got["top3"] == pytest.approx(expected["top3"])


def test_resize_center_crop_shape_and_centre():
    image = np.arange(40 * 60 * 3, dtype=np.float32).reshape(40, 60, 3)
    out = resize_center_crop(image, 35, resize_ratio=40 / 35)  # shorter side 40: no resize
    assert out.shape == (35, 35, 3)
    np.testing.assert_array_equal(out, image[2:37, 12:47])  # round((40-35)/2)=2, round(25/2)=12


def test_sorted_folders_need_every_class(model, folder, tmp_path):
    with pytest.raises(ValueError, match="3 class folders but the model has 4 classes"):
        classification_accuracy(model, folder, image_size=32, ks=(1,), progress=False)
    with pytest.raises(ValueError, match=r"\['n02', 'n03', 'n04'\] are not in `class_names`"):
        classification_accuracy(model, folder, class_names=["a", "b", "c", "d"], ks=(1,), progress=False)
    names = tmp_path / "synsets.txt"
    names.write_text("\n".join(CLASSES) + "\n")
    got = classification_accuracy(model, folder, image_size=32, class_names=str(names), ks=(1,), progress=False)
    assert got["num_images"] == 12
    with pytest.raises(ValueError, match="ks"):
        classification_accuracy(model, folder, ks=(0,), class_names=CLASSES)
    with pytest.raises(ValueError, match="k <= 4"):
        classification_accuracy(model, folder, ks=(5,), class_names=CLASSES)


def test_unreadable_image_is_named(model, tmp_path):
    root = tmp_path / "val"
    for name in CLASSES:
        os.makedirs(root / name)
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / name / "ok.png")
    (root / "n02" / "broken.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(ValueError, match="broken.jpg"):
        classification_accuracy(model, str(root), ks=(1,), progress=False)


def test_evaluate_classification_prints_top_k(model, folder, tmp_path, capsys):
    """`keras-cgd evaluate MODEL --classification FOLDER` through the real command line."""
    from keras_cgd import cli

    path = str(tmp_path / "model.keras")
    model.save(path)
    names = tmp_path / "synsets.txt"
    names.write_text("\n".join(CLASSES))
    code = cli.main(["evaluate", path, "--classification", folder, "--image-size", "32", "--gem-p", "2",
                     "--top-k", "1", "2", "--class-names", str(names)])
    assert code == 0
    lines = capsys.readouterr().out.strip().splitlines()
    expected, _ = brute_force(model, folder, CLASSES, 32, 2.0, (1, 2))
    assert lines[-1] == f"top-1 {100 * expected['top1']:.2f}%  top-2 {100 * expected['top2']:.2f}%"
    assert "12 images, 4 classes, s*=32 (longest side), p*=2.0" in lines[-2]
    assert cli.main(["evaluate", path, "--classification", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "missing" in err, err
