import os
import warnings

import numpy as np
import pytest
import scipy.io

from keras_cgd import data as kdata
from tests.data._data_files import colour_of, write_image, write_text_as_image, write_truncated_jpeg


def _pixel_means(ds):
    """Mean RGB colour of every image, decoded independently with PIL."""
    from PIL import Image

    return np.array([np.asarray(Image.open(p).convert("RGB"), np.float32).mean(axis=(0, 1)) for p in ds.paths])


def test_image_folder_with_corrupt_grey_and_rgba_files(tmp_path):
    root = str(tmp_path / "folder")
    for c, name in enumerate(["cat", "dog", "emu"]):
        for i in range(3):
            write_image(os.path.join(root, name, f"{i}.jpg"), colour_of(c))
    write_image(os.path.join(root, "cat", "grey.png"), colour_of(0), mode="L")
    write_image(os.path.join(root, "dog", "alpha.png"), colour_of(1), mode="RGBA")
    write_truncated_jpeg(os.path.join(root, "cat", "truncated.jpg"))
    write_text_as_image(os.path.join(root, "dog", "fake.jpg"))
    write_text_as_image(os.path.join(root, "emu", "notes.txt"))  # not an image name: ignored
    with pytest.warns(UserWarning, match="skipped 2 unreadable"):
        ds = kdata.image_folder(root)
    assert ds.class_names == ["cat", "dog", "emu"]
    assert len(ds) == 11
    assert sorted(os.path.basename(p) for p, _ in ds.skipped) == ["fake.jpg", "truncated.jpg"]
    # labels follow the folders, never shifted by the skipped files
    expected = [["cat", "dog", "emu"].index(os.path.basename(os.path.dirname(p))) for p in ds.paths]
    np.testing.assert_array_equal(ds.labels, expected)
    # decoded pixels: grey -> RGB, RGBA -> RGB, colours match the class of the label
    images = [x.numpy() for x, _ in kdata.inference_batches(ds, 1, image_size=8)]
    for img, label, path in zip(images, ds.labels, ds.paths):
        assert img.shape == (1, 8, 8, 3)
        if path.endswith("grey.png"):
            g = round(0.299 * colour_of(0)[0] + 0.587 * colour_of(0)[1] + 0.114 * colour_of(0)[2])
            np.testing.assert_allclose(img[0], g, atol=2)
        else:
            np.testing.assert_allclose(img[0].mean(axis=(0, 1)), colour_of(int(label)), atol=4)


def test_image_folder_without_readable_image_names_root(tmp_path):
    root = str(tmp_path / "bad")
    write_text_as_image(os.path.join(root, "a", "x.jpg"))
    write_truncated_jpeg(os.path.join(root, "b", "y.jpg"))
    with pytest.raises(ValueError, match="No readable image found under root=.*bad"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            kdata.image_folder(root)
    with pytest.raises(FileNotFoundError, match="missing"):
        kdata.image_folder(str(tmp_path / "missing"))


def _write_cub(root, class_ids, per_class=2):
    base = os.path.join(root, "CUB_200_2011")
    images, labels, boxes, classes = [], [], [], []
    k = 0
    for c in class_ids:
        name = f"{c:03d}.Bird_{c}"
        classes.append(f"{c} {name}")
        for j in range(per_class):
            k += 1
            rel = f"{name}/Bird_{c}_{j:04d}_{k}.jpg"
            # image 60x40 of colour_of(c) with a box region of colour_of(c + 7)
            from PIL import Image

            arr = np.zeros((40, 60, 3), np.uint8) + np.array(colour_of(c), np.uint8)
            arr[10:30, 20:50] = colour_of(c + 7)
            os.makedirs(os.path.join(base, "images", name), exist_ok=True)
            Image.fromarray(arr).save(os.path.join(base, "images", rel), quality=95)
            images.append(f"{k} {rel}")
            labels.append(f"{k} {c}")
            boxes.append(f"{k} 20.0 10.0 30.0 20.0")
    for fname, rows in (
        ("images.txt", images),
        ("image_class_labels.txt", labels),
        ("bounding_boxes.txt", boxes),
        ("classes.txt", classes),
        ("train_test_split.txt", [f"{i + 1} {i % 2}" for i in range(k)]),
    ):
        with open(os.path.join(base, fname), "w") as f:
            f.write("\n".join(rows) + "\n")
    return base


def test_cub200_split_and_box_crop(tmp_path):
    _write_cub(str(tmp_path), [1, 2, 100, 101, 150, 200])
    train = kdata.cub200(str(tmp_path), "train")
    test = kdata.cub200(str(tmp_path / "CUB_200_2011"), "test")
    assert train.class_names == ["001.Bird_1", "002.Bird_2", "100.Bird_100"]
    assert test.class_names == ["101.Bird_101", "150.Bird_150", "200.Bird_200"]
    np.testing.assert_array_equal(train.labels, [0, 0, 1, 1, 2, 2])
    np.testing.assert_array_equal(test.labels, [0, 0, 1, 1, 2, 2])
    assert all("Bird_1" in os.path.basename(p) for p in train.paths[:2])
    cropped = kdata.cub200(str(tmp_path), "test", crop_to_box=True)
    np.testing.assert_allclose(cropped.boxes[0], [20, 10, 50, 30])
    for (x, _), c in zip(kdata.inference_batches(cropped, 1, image_size=8), [101, 101, 150, 150, 200, 200]):
        np.testing.assert_allclose(x.numpy()[0, 2:-2, 2:-2].mean(axis=(0, 1)), colour_of(c + 7), atol=4)
    with pytest.raises(ValueError, match="split"):
        kdata.cub200(str(tmp_path), "val")


def test_cars196_mat_annotations(tmp_path):
    root = str(tmp_path)
    recs = []
    for k, c in enumerate([1, 98, 99, 196, 196]):
        rel = f"car_ims/{k + 1:06d}.jpg"
        from PIL import Image

        arr = np.zeros((40, 60, 3), np.uint8) + np.array(colour_of(c), np.uint8)
        arr[5:25, 10:40] = colour_of(c + 3)  # 1-based inclusive box x 11..40, y 6..25
        os.makedirs(os.path.join(root, "car_ims"), exist_ok=True)
        Image.fromarray(arr).save(os.path.join(root, rel), quality=95)
        recs.append((rel, 11, 6, 40, 25, c, k % 2))
    dtype = [("relative_im_path", "O"), ("bbox_x1", "O"), ("bbox_y1", "O"), ("bbox_x2", "O"),
             ("bbox_y2", "O"), ("class", "O"), ("test", "O")]
    ann = np.array(recs, dtype=dtype).reshape(1, -1)
    names = np.empty((1, 196), dtype=object)
    for i in range(196):
        names[0, i] = f"Car model {i + 1}"
    scipy.io.savemat(os.path.join(root, "cars_annos.mat"), {"annotations": ann, "class_names": names})
    train = kdata.cars196(root, "train")
    test = kdata.cars196(root, "test", crop_to_box=True)
    assert train.class_names == ["Car model 1", "Car model 98"]
    assert test.class_names == ["Car model 99", "Car model 196"]
    np.testing.assert_array_equal(train.labels, [0, 1])
    np.testing.assert_array_equal(test.labels, [0, 1, 1])
    np.testing.assert_allclose(test.boxes[0], [10, 5, 40, 25])
    for (x, _), c in zip(kdata.inference_batches(test, 1, image_size=8), [99, 196, 196]):
        np.testing.assert_allclose(x.numpy()[0, 2:-2, 2:-2].mean(axis=(0, 1)), colour_of(c + 3), atol=4)


def test_stanford_online_products_lists(tmp_path):
    base = os.path.join(str(tmp_path), "Stanford_Online_Products")
    rows = {"train": [], "test": []}
    k = 0
    for split, classes in (("train", [1, 2, 3]), ("test", [11319, 11320])):
        for c in classes:
            sup, sname = (1, "bicycle") if c % 2 else (2, "cabinet")
            for j in range(2):
                k += 1
                rel = f"{sname}_final/{100000 + c}_{j}.JPG"
                write_image(os.path.join(base, rel), colour_of(c))
                rows[split].append(f"{k} {c} {sup} {rel}")
    for split in rows:
        with open(os.path.join(base, f"Ebay_{split}.txt"), "w") as f:
            f.write("image_id class_id super_class_id path\n" + "\n".join(rows[split]) + "\n")
    train = kdata.stanford_online_products(str(tmp_path), "train")
    test = kdata.stanford_online_products(base, "test")
    assert train.class_names == ["1", "2", "3"] and test.class_names == ["11319", "11320"]
    np.testing.assert_array_equal(train.labels, [0, 0, 1, 1, 2, 2])
    np.testing.assert_array_equal(test.labels, [0, 0, 1, 1])
    for means, label in zip(_pixel_means(test), test.labels):
        np.testing.assert_allclose(means, colour_of(int(test.class_names[label])), atol=4)


def test_inshop_partition_query_gallery_share_labels(tmp_path):
    root = str(tmp_path)
    rows = []
    entries = [("id_00000001", "train"), ("id_00000001", "train"), ("id_00000005", "train"),
               ("id_00000002", "query"), ("id_00000002", "gallery"), ("id_00000003", "gallery"),
               ("id_00000004", "query"), ("id_00000004", "gallery")]
    for j, (item, status) in enumerate(entries):
        rel = f"img/WOMEN/Dresses/{item}/{j:02d}_1_front.jpg"
        write_image(os.path.join(root, rel), colour_of(int(item[3:])))
        rows.append(f"{rel} {item} {status}")
    os.makedirs(os.path.join(root, "Eval"))
    with open(os.path.join(root, "Eval", "list_eval_partition.txt"), "w") as f:
        f.write(f"{len(rows)}\nimage_name item_id evaluation_status\n" + "\n".join(rows) + "\n")
    train = kdata.inshop_clothes(root, "train")
    query = kdata.inshop_clothes(root, "query")
    gallery = kdata.inshop_clothes(root, "gallery")
    assert train.class_names == ["id_00000001", "id_00000005"]
    np.testing.assert_array_equal(train.labels, [0, 0, 1])
    # one mapping over query + gallery items
    assert query.class_names == gallery.class_names == ["id_00000002", "id_00000003", "id_00000004"]
    np.testing.assert_array_equal(query.labels, [0, 2])
    np.testing.assert_array_equal(gallery.labels, [0, 1, 2])


def test_listed_but_missing_file_is_reported(tmp_path):
    base = os.path.join(str(tmp_path), "Stanford_Online_Products")
    write_image(os.path.join(base, "mug_final/1_0.JPG"), colour_of(1))
    with open(os.path.join(base, "Ebay_train.txt"), "w") as f:
        f.write("image_id class_id super_class_id path\n1 1 1 mug_final/1_0.JPG\n2 2 1 mug_final/2_0.JPG\n")
    with pytest.warns(UserWarning, match="skipped 1"):
        ds = kdata.stanford_online_products(str(tmp_path), "train")
    assert len(ds) == 1 and ds.class_names == ["1", "2"]
    np.testing.assert_array_equal(ds.labels, [0])
    assert ds.skipped[0][0].endswith("2_0.JPG")


def test_image_dataset_argument_validation():
    with pytest.raises(ValueError, match="labels"):
        kdata.ImageDataset([0, 5], ["a", "b"], paths=["x", "y"])
    with pytest.raises(TypeError, match="uint8"):
        kdata.from_arrays(np.zeros((2, 4, 4, 3), np.float32), [0, 1])
