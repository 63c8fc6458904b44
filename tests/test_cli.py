"""`keras-cgd` command line: the default job's test-sized twin, resume after SIGKILL,
evaluate / export / search / presets, and one-line errors for bad arguments."""

import json
import os
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
from PIL import Image

from keras_cgd import cli
from keras_cgd import training

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run_cli(argv, capsys):
    try:
        code = cli.main(argv)
    except SystemExit as e:  # argparse errors
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize(
    "argv, names",
    [
        (["train", "--dataset", "/no/such/folder"], ["/no/such/folder", "photo_views", "cub200:PATH"]),
        (["train", "--dataset", "cub200:/no/such/folder"], ["cub200:/no/such/folder"]),
        (["train", "--preset", "resnet_9000"], ["resnet_9000", "cgd_tiny", "multigrain_tiny"]),
        (["train", "--descriptors", "SXG"], ["SXG", "'S'", "'M'", "'G'"]),
        (["train", "--descriptors", "SS"], ["'SS'"]),
        (["train", "--batching", "zz"], ["zz", "pk", "ra"]),
        (["train", "--epochs", "0"], ["'0'"]),
        (["evaluate", "missing.keras"], ["missing.keras"]),
        (["frobnicate"], ["frobnicate", "train", "presets"]),
    ],
)
def test_bad_arguments_give_one_line_error_and_exit_2(argv, names, capsys):
    code, out, err = _run_cli(argv, capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for name in names:
        assert name in lines[0]


def test_presets_lists_every_preset(capsys):
    code, out, _ = _run_cli(["presets"], capsys)
    assert code == 0
    listed = [line.split()[0] for line in out.strip().splitlines()]
    assert listed == training_presets()


def training_presets():
    import keras_cgd

    return keras_cgd.list_presets()


def test_resolve_dataset_image_folder_splits_classes(tmp_path):
    rng = np.random.default_rng(0)
    for c in ("a", "b", "c", "d"):
        (tmp_path / c).mkdir()
        for i in range(3):
            Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(tmp_path / c / f"{i}.png")
    (tmp_path / "d" / "broken.jpg").write_text("not an image")
    with pytest.warns(UserWarning, match="broken.jpg"):
        splits = training.resolve_dataset(str(tmp_path))
    assert splits.train.class_names == ["a", "b"] and splits.test.class_names == ["c", "d"]
    assert sorted(splits.train.labels.tolist()) == [0, 0, 0, 1, 1, 1]
    assert all("/c/" in p or "/d/" in p for p in splits.test.paths)
    # the unreadable file is reported with the split of its class, not dropped silently
    assert splits.train.skipped == []
    assert [p for p, _ in splits.test.skipped] == [str(tmp_path / "d" / "broken.jpg")]


@pytest.mark.parametrize("preset, factor", [("multigrain_resnet50", 2.0), ("multigrain_tiny", 1.0)])
def test_repeated_augmentation_epoch_length_follows_the_preset(preset, factor):
    settings = training.resolve_settings(training.TrainConfig(preset=preset, small=False, batch_size=12))
    assert settings["epoch_length_factor"] == factor
    splits = training.resolve_dataset("photo_views", 32, small=True)
    batches = training._batches(splits, settings, 0, seed=0)
    assert int(batches.cardinality()) == int(len(splits.train) * factor) // 12


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """The default job's test-sized twin: `keras-cgd train --small --epochs 1`, in process."""
    root = tmp_path_factory.mktemp("default_job")
    argv = ["train", "--small", "--epochs", "1", "--run-dir", str(root / "run"),
            "--export-dir", str(root / "savedmodels")]
    import io
    from contextlib import redirect_stdout

    buf = io.StringIO()
    with redirect_stdout(buf):
        code = cli.main(argv)
    return root, code, buf.getvalue()


def test_default_job_twin_prints_recall_and_exports(trained_run):
    root, code, out = trained_run
    assert code == 0, out
    before = [line for line in out.splitlines() if line.startswith("before training:")]
    after = [line for line in out.splitlines() if line.startswith("after training:")]
    assert len(before) == 1 and len(after) == 1
    # the default job: ImageNet EfficientNet-Lite0 on copy detection (R@K and mAP)
    assert "dataset photo_copies" in out and "weights='imagenet'" in before[0]
    for line in before + after:
        for k in (1, 2, 4, 8):
            assert f"R@{k} " in line
        assert "mAP " in line
    assert "epoch 1/1" in out
    exported = [line.split("SavedModel: ", 1)[1] for line in out.splitlines() if line.startswith("SavedModel: ")]
    assert exported == [str(root / "savedmodels" / training.DEFAULT_PRESET / "1")]
    assert os.path.isfile(os.path.join(exported[0], "saved_model.pb"))
    state = json.loads((root / "run" / "state.json").read_text())
    assert state["completed_epochs"] == 1 and os.path.isfile(root / "run" / state["checkpoint"])


def test_recall_printed_matches_independent_computation(trained_run):
    """The printed R@1 and mAP equal a brute-force ranking of the references for each
    attacked copy, on the checkpoint's embeddings."""
    root, _, out = trained_run
    state = json.loads((root / "run" / "state.json").read_text())
    model = keras.saving.load_model(str(root / "run" / state["checkpoint"]))
    splits = training.resolve_dataset("photo_copies", 32, small=True)
    refs = np.asarray(model.predict(splits.test.images, verbose=0)["embedding"], "float64")
    queries = np.asarray(model.predict(splits.query.images, verbose=0)["embedding"], "float64")
    sim = queries @ refs.T
    rank = np.array([int(np.sum(row > row[splits.test.labels == label][0]))
                     for row, label in zip(sim, splits.query.labels)])  # 0-based rank of the original
    r1 = float(np.mean(rank == 0))
    # one relevant item at rank r: Holidays AP = (p0 + p1) / 2 = 1 (r = 0), else 1 / (2 (r + 1))
    ap = np.where(rank == 0, 1.0, 1.0 / (2.0 * (rank + 1)))
    assert abs(r1 - state["recall_after"]["1"]) < 1e-6
    assert abs(float(ap.mean()) - state["map_after"]) < 1e-6
    after = [line for line in out.splitlines() if line.startswith("after")][0]
    assert f"R@1 {r1:.3f}" in after and f"mAP {ap.mean():.3f}" in after


def test_evaluate_export_search(trained_run, tmp_path, capsys):
    root, _, _ = trained_run
    run = str(root / "run")
    code, out, err = _run_cli(["evaluate", run, "--dataset", "photo_views", "--small", "--ks", "1", "4"], capsys)
    assert code == 0, err
    assert "R@1 " in out and "R@4 " in out and "MAP@R" in out

    code, out, err = _run_cli(["export", run, str(tmp_path / "models" / "tiny"), "--version", "7"], capsys)
    assert code == 0, err
    assert os.path.isfile(tmp_path / "models" / "tiny" / "7" / "saved_model.pb")

    splits = training.resolve_dataset("photo_views", 32, small=True)
    queries = []
    for i in (0, 10):
        path = tmp_path / f"q{i}.png"
        Image.fromarray(splits.test.images[i]).save(path)
        queries.append(str(path))
    grid = tmp_path / "grid.png"
    index = tmp_path / "gallery.index"
    code, out, err = _run_cli(
        ["search", run, *queries, "--gallery", "photo_views", "--small", "-k", "3", "--grid", str(grid),
         "--index", str(index)], capsys)
    assert code == 0, err
    assert grid.is_file() and index.is_file()
    lines = out.splitlines()
    for q in queries:
        at = lines.index(q)
        ranks = lines[at + 1: at + 4]
        assert [r.split()[0] for r in ranks] == ["1.", "2.", "3."]
    # The query is an exact copy of a gallery image: it must come first with cosine 1.
    first = lines[lines.index(queries[0]) + 1].split()
    assert float(first[1]) == pytest.approx(1.0, abs=1e-3)
    assert first[2] == splits.test.class_names[splits.test.labels[0]]
    # Reusing the saved index gives the same answer.
    code, out2, err = _run_cli(["search", run, queries[0], "--index", str(index), "-k", "3"], capsys)
    assert code == 0, err
    lines2 = out2.splitlines()
    assert any(line.startswith("loaded the index of ") for line in lines2), out2
    at2 = lines2.index(queries[0])
    assert lines2[at2 + 1: at2 + 4] == lines[lines.index(queries[0]) + 1: lines.index(queries[0]) + 4]


def _search_labels(out):
    """Labels of the ranked lines `  1. 0.9876  <label>  <path>` of `keras-cgd search`."""
    return [line.split()[2] for line in out.splitlines() if line.startswith("  ") and line.split()[0].endswith(".")]


def test_search_gallery_folders(trained_run, tmp_path, capsys):
    """A folder of class sub-folders is searched whole; a flat folder skips dot-files and bad files."""
    root, _, _ = trained_run
    run = str(root / "run")
    rng = np.random.default_rng(1)
    classes = tmp_path / "classes"
    for c in ("a", "b", "c", "d"):
        (classes / c).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(classes / c / f"{i}.png")
    query = tmp_path / "query.png"
    Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(query)
    code, out, err = _run_cli(["search", run, str(query), "--gallery", str(classes), "-k", "20"], capsys)
    assert code == 0, err
    labels = _search_labels(out)
    assert len(labels) == 8 and sorted(set(labels)) == ["a", "b", "c", "d"]

    flat = tmp_path / "flat"
    flat.mkdir()
    for name in ("x.png", "y.png", ".hidden.png"):
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(flat / name)
    (flat / "broken.jpg").write_text("not an image")
    code, out, err = _run_cli(["search", run, str(query), "--gallery", str(flat), "-k", "20"], capsys)
    assert code == 0, err
    assert sorted(_search_labels(out)) == ["x.png", "y.png"]
    assert "broken.jpg" in err and "skipped" in err


def test_changed_arguments_refuse_to_resume(tmp_path, capsys):
    # The saved run of `train --small --epochs 1` (its state file, as `train` writes it).
    config = training.TrainConfig(small=True, epochs=1)
    settings = training.resolve_settings(config)
    run = tmp_path / "run"
    run.mkdir()
    (run / training.STATE_FILENAME).write_text(json.dumps(
        {"args": training.training_args(config, settings, settings["dataset"]), "epochs": 1,
         "completed_epochs": 1, "checkpoint": None, "history": [{"epoch": 1, "loss": 1.0}]}))
    code, _, err = _run_cli(["train", "--small", "--epochs", "2", "--run-dir", str(run), "--no-export"], capsys)
    assert code == 2
    assert "epochs" in err and "--fresh" in err and len(err.strip().splitlines()) == 1


def test_resume_after_sigkill(tmp_path):
    """A run killed after ≥1 epoch, rerun with the same command, resumes at the next epoch."""
    epochs, steps = 4, 8
    run_dir = tmp_path / "run"
    # the scratch-trained tiny preset keeps this test cheap (the default job's Lite0 resumes the same way)
    cmd = [sys.executable, "-m", "keras_cgd.cli", "train", "--preset", "cgd_tiny", "--small", "--epochs", str(epochs),
           "--steps-per-epoch", str(steps), "--run-dir", str(run_dir), "--no-export"]
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""),
               TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    state_path = run_dir / "state.json"
    deadline = time.time() + 240
    try:
        while time.time() < deadline and proc.poll() is None:
            if state_path.is_file() and json.loads(state_path.read_text()).get("completed_epochs", 0) >= 1:
                break
            time.sleep(0.05)
        assert proc.poll() is None, proc.stdout.read().decode()
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    done = json.loads(state_path.read_text())["completed_epochs"]
    assert 1 <= done < epochs
    result = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert f"resuming {run_dir} after epoch {done}/{epochs}" in out
    trained = [int(line.split()[1].split("/")[0]) for line in out.splitlines() if line.startswith("epoch ")]
    assert trained == list(range(done + 1, epochs + 1))
    state = json.loads(state_path.read_text())
    assert state["completed_epochs"] == epochs
    assert [h["epoch"] for h in state["history"]] == list(range(1, epochs + 1))
    # The optimizer state travelled through the checkpoints: one step per batch, all epochs.
    model = keras.saving.load_model(str(run_dir / state["checkpoint"]))
    assert int(keras.ops.convert_to_numpy(model.optimizer.iterations)) == epochs * steps
    assert [f for f in os.listdir(run_dir) if f.endswith(".keras")] == [state["checkpoint"]]


def test_epoch_batches_depend_only_on_seed_and_epoch():
    """What makes a resumed epoch see the batches of an uninterrupted one."""
    settings = training.resolve_settings(training.TrainConfig(small=True, steps_per_epoch=2))
    splits = training.resolve_dataset("photo_views", settings["image_size"], small=True)

    def first_batch(epoch):
        x, y = next(iter(training._batches(splits, settings, epoch, seed=3)))
        return np.asarray(x), np.asarray(y["logits"])

    a1, b1 = first_batch(1)
    _ = first_batch(0)
    a2, b2 = first_batch(1)
    np.testing.assert_array_equal(a1, a2)
    np.testing.assert_array_equal(b1, b2)
    assert not np.array_equal(first_batch(2)[1], b1)
