"""Tests of the Holidays, UKBench and Copydays readers on tiny trees in the official layouts."""

import os
import warnings

import numpy as np
import pytest
from PIL import Image

from keras_cgd import data as kdata
from tests.data._data_files import colour_of, write_image, write_text_as_image, write_truncated_jpeg


def _names(ds):
    return [os.path.basename(p) for p in ds.paths]


def _write_pattern_png(path, h=6, w=10):
    """A non-square PNG with distinct pixels, so rotations can be checked exactly."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    arr = np.arange(h * w * 3, dtype=np.uint8).reshape(h, w, 3)
    Image.fromarray(arr).save(path, format="PNG")
    return arr


# ---------------------------------------------------------------------------- Holidays

HOLIDAY_IDS = [100000, 100001, 100002, 100100, 100200, 100201, 149900]


def _write_holidays(root, ids=HOLIDAY_IDS, sub="jpg"):
    for k, i in enumerate(reversed(ids)):  # written out of order on purpose
        write_image(os.path.join(root, sub, f"{i:06d}.jpg"), colour_of(k))


def test_holidays_groups_and_queries(tmp_path):
    root = str(tmp_path / "holidays")
    _write_holidays(root)
    write_text_as_image(os.path.join(root, "jpg", "README.txt"))  # not an image name: ignored
    write_text_as_image(os.path.join(root, "jpg", "._100000.jpg"))  # hidden: ignored
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        bench = kdata.holidays(root)
    ds = bench.dataset
    assert _names(ds) == [f"{i}.jpg" for i in HOLIDAY_IDS]
    assert ds.class_names == ["1000", "1001", "1002", "1499"]
    np.testing.assert_array_equal(ds.labels, [0, 0, 0, 1, 2, 2, 3])
    np.testing.assert_array_equal(bench.query_indices, [0, 3, 4, 6])
    np.testing.assert_array_equal(bench.reference_indices, np.arange(7))
    assert bench.distractor_indices.size == 0
    np.testing.assert_array_equal(bench.rotations, 0)
    assert ds.skipped == [] and bench.name == "holidays"
    # Archive extracted without its jpg/ folder.
    flat = str(tmp_path / "flat")
    _write_holidays(flat, sub="")
    bench2 = kdata.holidays(flat)
    np.testing.assert_array_equal(bench2.labels, ds.labels)
    np.testing.assert_array_equal(bench2.query_indices, bench.query_indices)


def test_holidays_skips_unreadable_and_keeps_indices_aligned(tmp_path):
    root = str(tmp_path / "holidays")
    _write_holidays(root)
    write_truncated_jpeg(os.path.join(root, "jpg", "100001.jpg"))  # a non-query
    write_text_as_image(os.path.join(root, "jpg", "100200.jpg"))  # a query
    with pytest.warns(UserWarning, match="skipped 2 unreadable"):
        bench = kdata.holidays(root)
    ds = bench.dataset
    assert sorted(os.path.basename(p) for p, _ in ds.skipped) == ["100001.jpg", "100200.jpg"]
    assert _names(ds) == ["100000.jpg", "100002.jpg", "100100.jpg", "100201.jpg", "149900.jpg"]
    np.testing.assert_array_equal(ds.labels, [0, 0, 1, 2, 3])
    # The query of group 1002 was unreadable: the group has no query (protocol kept).
    np.testing.assert_array_equal(bench.query_indices, [0, 2, 4])


def test_holidays_bad_names_and_missing_root(tmp_path):
    root = str(tmp_path / "holidays")
    _write_holidays(root)
    write_image(os.path.join(root, "jpg", "holiday_1.jpg"), colour_of(0))
    with pytest.raises(ValueError, match="holiday_1.jpg"):
        kdata.holidays(root)
    with pytest.raises(FileNotFoundError, match="missing"):
        kdata.holidays(str(tmp_path / "missing"))


def test_holidays_rotations_mapping_file_and_upright_copies(tmp_path):
    root = str(tmp_path / "holidays")
    _write_holidays(root, ids=[100000, 100001, 100100])
    pattern = _write_pattern_png(str(tmp_path / "p.png"))
    # Replace 100001.jpg by a lossless pattern (a PNG under a .jpg name decodes fine).
    Image.fromarray(pattern).save(os.path.join(root, "jpg", "100001.jpg"), format="PNG")
    Image.fromarray(pattern).save(os.path.join(root, "jpg", "100100.jpg"), format="PNG")
    bench = kdata.holidays(root, rotations={"100001.jpg": 90, "100100.jpg": -90})
    np.testing.assert_array_equal(bench.rotations, [0, 90, 270])
    assert bench.dataset.paths[1].endswith(os.path.join("jpg", "100001.jpg"))  # no rotated_dir: untouched
    # MultiGrain's yaml file format (flow mapping with a trailing comma) and yaml block style.
    flow = tmp_path / "holidays-rotate.yaml"
    flow.write_text('{\n"100001.jpg": 90,\n"100100.jpg": 270,\n}\n')
    block = tmp_path / "block.yaml"
    block.write_text("100001.jpg: 90\n'100100.jpg': 270\n")
    out = str(tmp_path / "upright")
    for src in (str(flow), str(block)):
        b = kdata.holidays(root, rotations=src, rotated_dir=out)
        np.testing.assert_array_equal(b.rotations, [0, 90, 270])
        assert b.dataset.paths[0].endswith(os.path.join("jpg", "100000.jpg"))
        assert b.dataset.paths[1] == os.path.join(out, "100001.png")
        # PIL: rotate(-deg, expand=True) is MultiGrain's correction (clockwise).
        cw90 = np.asarray(Image.fromarray(pattern).rotate(-90, expand=True))
        cw270 = np.asarray(Image.fromarray(pattern).rotate(-270, expand=True))
        np.testing.assert_array_equal(np.asarray(Image.open(b.dataset.paths[1])), cw90)
        np.testing.assert_array_equal(np.asarray(Image.open(b.dataset.paths[2])), cw270)
        assert cw90.shape == (10, 6, 3)
    with pytest.raises(ValueError, match="unknown names"):
        kdata.holidays(root, rotations={"123400.jpg": 90})
    with pytest.raises(ValueError, match="multiples of 90"):
        kdata.holidays(root, rotations={"100001.jpg": 45})
    with pytest.raises(TypeError, match="mapping"):
        kdata.holidays(root, rotations=[("100001.jpg", 90)])


@pytest.mark.parametrize("degrees", [0, 90, 180, 270, 360, -90])
def test_rotate_upright_matches_pil(degrees):
    arr = np.arange(4 * 7 * 3, dtype=np.uint8).reshape(4, 7, 3)
    want = np.asarray(Image.fromarray(arr).rotate(-degrees, expand=True))
    np.testing.assert_array_equal(kdata.rotate_upright(arr, degrees), want)


def test_rotate_upright_rejects_other_angles():
    with pytest.raises(ValueError, match="multiple of 90"):
        kdata.rotate_upright(np.zeros((2, 2, 3)), 30)


# ---------------------------------------------------------------------------- UKBench


def test_ukbench_groups_from_names(tmp_path):
    root = str(tmp_path / "ukbench")
    numbers = [0, 1, 2, 3, 4, 5, 6, 7, 9, 10, 11, 12]  # 00008 missing from the folder
    for n in numbers:
        write_image(os.path.join(root, "full", f"ukbench{n:05d}.jpg"), colour_of(n))
    write_text_as_image(os.path.join(root, "full", "ukbench00005.jpg"))  # unreadable
    with pytest.warns(UserWarning, match="skipped 1 unreadable"):
        bench = kdata.ukbench(root)
    ds = bench.dataset
    kept = [n for n in numbers if n != 5]
    assert _names(ds) == [f"ukbench{n:05d}.jpg" for n in kept]
    np.testing.assert_array_equal(ds.labels, [0, 0, 0, 0, 1, 1, 1, 2, 2, 2, 3])
    assert ds.class_names == ["0", "1", "2", "3"]
    np.testing.assert_array_equal(bench.query_indices, np.arange(11))
    np.testing.assert_array_equal(bench.reference_indices, np.arange(11))
    assert [os.path.basename(p) for p, _ in ds.skipped] == ["ukbench00005.jpg"]
    write_image(os.path.join(root, "full", "image9.jpg"), colour_of(0))
    with pytest.raises(ValueError, match="image9.jpg"):
        kdata.ukbench(root)


def test_ukbench_with_ground_truth_embeddings_scores_four(tmp_path):
    from keras_cgd.evaluation import ukbench_score

    root = str(tmp_path / "ukbench")
    for n in range(8):
        write_image(os.path.join(root, f"ukbench{n:05d}.jpg"), colour_of(n))  # flat layout
    bench = kdata.ukbench(root)
    emb = np.eye(2, dtype="float32")[bench.labels] + 0.01
    assert ukbench_score(emb, bench.labels) == 4.0


# ---------------------------------------------------------------------------- Copydays


def _write_copydays(root):
    for k, i in enumerate([200000, 200100, 200200]):
        write_image(os.path.join(root, "original", f"{i}.jpg"), colour_of(k))
    for i in [200001, 200002, 200101, 200201]:
        write_image(os.path.join(root, "strong", f"{i}.jpg"), colour_of(i))
    for q in (10, 3):
        for i in [200000, 200100, 200200]:
            write_image(os.path.join(root, "jpegqual", str(q), f"{i}.jpg"), colour_of(i + q))
    for i in [200000, 200200]:
        write_image(os.path.join(root, "crops", "50", f"{i}.jpg"), colour_of(i + 7))


def test_copydays_strong_with_distractors(tmp_path):
    root = str(tmp_path / "copydays")
    _write_copydays(root)
    dis = str(tmp_path / "yfcc")
    for j, rel in enumerate(["b/x.jpg", "a/z.png", "a/y.jpg", "c.jpg"]):
        write_image(os.path.join(dis, rel), colour_of(100 + j))
    bench = kdata.copydays(root, distractors_dir=dis)
    ds = bench.dataset
    assert _names(ds) == [
        "200000.jpg", "200100.jpg", "200200.jpg",
        "200001.jpg", "200002.jpg", "200101.jpg", "200201.jpg",
        "y.jpg", "z.png", "x.jpg", "c.jpg",  # distractors sorted by path: a/y, a/z, b/x, c
    ]  # fmt: skip
    assert ds.class_names == ["2000", "2001", "2002", "<distractor>"]
    np.testing.assert_array_equal(bench.reference_indices, [0, 1, 2])
    np.testing.assert_array_equal(bench.query_indices, [3, 4, 5, 6])
    np.testing.assert_array_equal(bench.distractor_indices, [7, 8, 9, 10])
    np.testing.assert_array_equal(ds.labels, [0, 1, 2, 0, 0, 1, 2, 3, 3, 3, 3])
    assert list(bench.subsets) == ["original"] * 3 + ["strong"] * 4 + ["distractor"] * 4
    # max_distractors keeps the first files by path
    b2 = kdata.copydays(root, distractors_dir=dis, max_distractors=2)
    assert [os.path.relpath(p, dis) for p in b2.dataset.paths[b2.distractor_indices]] == [
        os.path.join("a", "y.jpg"),
        os.path.join("a", "z.png"),
    ]


def test_copydays_distractor_order_is_sorted_by_path(tmp_path):
    root = str(tmp_path / "copydays")
    _write_copydays(root)
    dis = str(tmp_path / "yfcc")
    for j, rel in enumerate(["b/x.jpg", "a/z.png", "a/y.jpg", "c.jpg"]):
        write_image(os.path.join(dis, rel), colour_of(100 + j))
    bench = kdata.copydays(root, distractors_dir=dis)
    got = [os.path.relpath(p, dis) for p in bench.dataset.paths[bench.distractor_indices]]
    assert got == sorted(got) == [os.path.join("a", "y.jpg"), os.path.join("a", "z.png"), os.path.join("b", "x.jpg"), "c.jpg"]


def test_copydays_subsets_levels_and_skips(tmp_path):
    root = str(tmp_path / "copydays")
    _write_copydays(root)
    write_truncated_jpeg(os.path.join(root, "strong", "200002.jpg"))
    with pytest.warns(UserWarning, match="skipped 1 unreadable"):
        bench = kdata.copydays(root, subsets=("jpegqual", "strong", "crops/50"))
    ds = bench.dataset
    rel = [os.path.relpath(p, root) for p in ds.paths]
    assert rel == [
        os.path.join("original", "200000.jpg"), os.path.join("original", "200100.jpg"),
        os.path.join("original", "200200.jpg"),
        os.path.join("jpegqual", "3", "200000.jpg"), os.path.join("jpegqual", "3", "200100.jpg"),
        os.path.join("jpegqual", "3", "200200.jpg"),
        os.path.join("jpegqual", "10", "200000.jpg"), os.path.join("jpegqual", "10", "200100.jpg"),
        os.path.join("jpegqual", "10", "200200.jpg"),
        os.path.join("strong", "200001.jpg"), os.path.join("strong", "200101.jpg"),
        os.path.join("strong", "200201.jpg"),
        os.path.join("crops", "50", "200000.jpg"), os.path.join("crops", "50", "200200.jpg"),
    ]  # fmt: skip
    np.testing.assert_array_equal(ds.labels, [0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 2])
    assert ds.class_names == ["2000", "2001", "2002"]
    np.testing.assert_array_equal(bench.query_indices, np.arange(3, 14))
    np.testing.assert_array_equal(bench.reference_indices, [0, 1, 2])
    assert bench.distractor_indices.size == 0
    assert list(bench.subsets[3:]) == ["jpegqual/3"] * 3 + ["jpegqual/10"] * 3 + ["strong"] * 3 + ["crops/50"] * 2


@pytest.mark.filterwarnings("ignore:keras_cgd.data.copydays")
def test_copydays_custom_folders_orphans_and_errors(tmp_path):
    root = str(tmp_path / "cd")
    for i in [200000, 200100]:
        write_image(os.path.join(root, "copydays_original", f"{i}.jpg"), colour_of(i))
    for i in [200001, 200301]:  # 2003 has no original
        write_image(os.path.join(root, "attacked", f"{i}.jpg"), colour_of(i))
    with pytest.warns(UserWarning, match="1 copy group"):
        bench = kdata.copydays(root, subsets="attacked", originals_dir="copydays_original")
    assert bench.dataset.class_names == ["2000", "2001", "2003"]
    np.testing.assert_array_equal(bench.dataset.labels, [0, 1, 0, 2])
    np.testing.assert_array_equal(bench.query_indices, [2, 3])
    with pytest.raises(ValueError, match="subsets"):
        kdata.copydays(root, subsets=("strong",), originals_dir="copydays_original")
    with pytest.raises(ValueError, match="max_distractors"):
        kdata.copydays(root, subsets="attacked", originals_dir="copydays_original", max_distractors=-1)
    with pytest.raises(FileNotFoundError, match="distractors_dir"):
        kdata.copydays(root, subsets="attacked", originals_dir="copydays_original", distractors_dir=str(tmp_path / "no"))
    write_image(os.path.join(root, "attacked", "copy.jpg"), colour_of(0))
    with pytest.raises(ValueError, match="copy.jpg"):
        kdata.copydays(root, subsets="attacked", originals_dir="copydays_original")


def test_copydays_feeds_copy_detection_map(tmp_path):
    from keras_cgd.evaluation import copy_detection_map

    root = str(tmp_path / "copydays")
    _write_copydays(root)
    dis = str(tmp_path / "yfcc")
    write_image(os.path.join(dis, "d.jpg"), colour_of(1))
    b = kdata.copydays(root, distractors_dir=dis)
    y = b.labels
    # Ground-truth embeddings (one-hot of the group; distractor orthogonal): mAP 1.
    e = np.eye(b.dataset.num_classes, dtype="float32")[y]
    q, r, d = b.query_indices, b.reference_indices, b.distractor_indices
    assert copy_detection_map(e[q], y[q], e[r], y[r], e[d]) == 1.0
