"""Replays of the probe's file findings (issue 14, items 3 and 9): a bad file name or index
file gets a clear error or a documented skip-and-report naming the file."""

import os
import sys

import numpy as np
import pytest

from tests.reliability.conftest import encode


@pytest.mark.skipif(sys.platform == "win32" or os.fsencode("\udcff") != b"\xff",
                    reason="needs a POSIX file system with byte file names")
def test_non_utf8_file_name_is_skipped_and_reported(tmp_path):
    """Item 3: one non-UTF-8 name aborted `image_folder` with a tf.string conversion error."""
    from keras_cgd.data import image_folder

    rng = np.random.RandomState(0)
    for cls in ("a", "b"):
        (tmp_path / cls).mkdir()
        for i in range(2):
            (tmp_path / cls / f"{i}.png").write_bytes(
                encode(rng.randint(0, 256, (8, 8, 3), dtype=np.uint8)))
    bad_name = os.path.join(os.fsencode(tmp_path / "b"), b"caf\xe9.png")  # Latin-1 e-acute
    with open(bad_name, "wb") as f:
        f.write(encode(rng.randint(0, 256, (8, 8, 3), dtype=np.uint8)))
    (tmp_path / "a" / "broken.png").write_bytes(b"not a png")

    with pytest.warns(UserWarning, match=r"skipped 2 unreadable image file\(s\)") as record:
        ds = image_folder(str(tmp_path))
    message = str(record[0].message)
    assert "caf\\udce9.png" in message and "broken.png" in message, message
    want = sorted(os.path.join(str(tmp_path), c, f"{i}.png") for c in "ab" for i in range(2))
    assert sorted(ds.paths.tolist()) == want
    assert ds.labels.tolist() == [0, 0, 1, 1]  # labels of the other files never shift
    reasons = dict(ds.skipped)
    bad = os.fsdecode(bad_name)
    assert set(reasons) == {bad, os.path.join(str(tmp_path), "a", "broken.png")}
    assert "not valid UTF-8" in reasons[bad] and "caf\\xe9.png" in reasons[bad], reasons[bad]
    next(iter(ds.to_tf_dataset()))  # the dataset is usable


@pytest.mark.parametrize("what", ["ids", "vectors", "metadata"])
def test_index_arrays_that_disagree_fail_at_load(tmp_path, what):
    """Item 9: an index whose arrays disagree in length loaded, then failed with IndexError."""
    import json

    from keras_cgd.index import ExactIndex
    from keras_cgd.index import load_index

    index = ExactIndex()
    index.add(np.eye(4, dtype=np.float32), metadata=[{"i": i} for i in range(4)])
    path = str(tmp_path / "good.npz")
    index.save(path)
    with np.load(path) as data:
        arrays = {name: data[name] for name in data.files}
    header = json.loads(arrays["header"].tobytes())
    if what == "ids":
        arrays["ids"] = arrays["ids"][:3]
    elif what == "vectors":
        arrays["vectors"] = arrays["vectors"][:2]
    else:
        header["metadata"] = header["metadata"][:1]
        arrays["header"] = np.frombuffer(json.dumps(header).encode(), np.uint8)
    bad = str(tmp_path / "bad.npz")
    np.savez(bad, **arrays)
    assert load_index(path).search(np.eye(4), k=1)[0].ravel().tolist() == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="disagree in length") as info:
        load_index(bad)
    assert repr(bad) in str(info.value)
    expected = {"ids": 4, "vectors": 4, "metadata": 4}
    expected[what] = {"ids": 3, "vectors": 2, "metadata": 1}[what]
    for name, count in expected.items():
        assert f"{name}: {count}" in str(info.value), str(info.value)
