"""`keras-cgd evaluate / search / export` with the three kinds of model path, the run's next
SavedModel version, `--quiet`, and one flag style (kebab-case, snake_case accepted)."""

import json
import os
import shutil

import keras
import numpy as np
import pytest
from PIL import Image

from keras_cgd import cli
from keras_cgd import training
from keras_cgd.cli.export import default_model_dir


def _run_cli(argv, capsys):
    try:
        code = cli.main(argv)
    except SystemExit as e:  # argparse errors
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def _bruteforce_recall(emb, labels, ks):
    """Recall@K by a loop over queries: a hit if any of the K nearest others shares the label."""
    emb = np.asarray(emb, "float64")
    out = {}
    for k in ks:
        hits = 0
        for i in range(len(labels)):
            d = np.sum((emb - emb[i]) ** 2, axis=1)
            d[i] = np.inf
            hits += labels[i] in labels[np.argsort(d, kind="stable")[:k]]
        out[k] = hits / len(labels)
    return out


@pytest.fixture(scope="module")
def job(default_job_run):
    assert default_job_run.code == 0, default_job_run.out
    state = training.read_state(default_job_run.run_dir)
    checkpoint = os.path.join(default_job_run.run_dir, state["checkpoint"])
    version_dir = os.path.join(default_job_run.export_dir, training.DEFAULT_PRESET, "1")
    assert os.path.isfile(os.path.join(version_dir, "saved_model.pb"))
    return default_job_run, state, checkpoint, version_dir


def test_run_state_names_its_model(job):
    run, state, _, version_dir = job
    assert state["model_name"] == training.DEFAULT_PRESET
    assert state["export_path"] == version_dir


def test_saved_model_embedder_matches_the_keras_model(job):
    _, _, checkpoint, version_dir = job
    model = keras.saving.load_model(checkpoint)
    embedder = training.load_embedder(version_dir)
    assert embedder.input_shape == (None, 32, 32, 3)
    pixels = np.random.default_rng(0).uniform(0, 255, (5, 32, 32, 3)).astype("float32")
    expected = np.asarray(model.predict(pixels, verbose=0)["embedding"])
    got = embedder.predict(pixels, batch_size=2)
    assert got["embedding"].dtype == np.float32 and got["embedding"].shape == expected.shape
    np.testing.assert_allclose(got["embedding"], expected, atol=1e-5)
    # The base directory resolves to its highest version, as TF Serving does.
    assert training.describe_model_path(os.path.dirname(version_dir)) == ("saved_model", version_dir)


def test_evaluate_accepts_run_keras_file_and_saved_model(job, capsys):
    run, _, checkpoint, version_dir = job
    model = keras.saving.load_model(checkpoint)
    splits = training.resolve_dataset("photo_views", 32, small=True)
    emb = model.predict(splits.test.images, verbose=0)["embedding"]
    expected = _bruteforce_recall(emb, splits.test.labels, (1, 4))
    for path in (run.run_dir, checkpoint, version_dir, os.path.dirname(version_dir)):
        code, out, err = _run_cli(["evaluate", path, "--small", "--ks", "1", "4", "--quiet"], capsys)
        assert code == 0, err
        lines = out.strip().splitlines()
        assert len(lines) == 1, out  # --quiet: the result only
        assert lines[0].startswith(f"R@1 {expected[1]:.3f}  R@4 {expected[4]:.3f}  (MAP@R "), (path, lines[0])
    code, out, _ = _run_cli(["evaluate", version_dir, "--small", "--ks", "1"], capsys)
    assert code == 0 and f"loaded SavedModel {version_dir} (32 px)" in out


def test_search_with_a_saved_model_ranks_like_the_keras_model(job, tmp_path, capsys):
    run, _, _, version_dir = job
    splits = training.resolve_dataset("photo_views", 32, small=True)
    query = tmp_path / "q.png"
    Image.fromarray(splits.test.images[3]).save(query)
    ranked = []
    for path in (run.run_dir, version_dir):
        code, out, err = _run_cli(["search", path, str(query), "--gallery", "photo_views", "--small", "-k", "4",
                                   "--quiet"], capsys)
        assert code == 0, err
        lines = out.splitlines()
        assert lines[0] == str(query)
        ranked.append([line.split()[2] for line in lines[1:5]])
    assert ranked[0] == ranked[1]
    assert ranked[0][0] == splits.test.class_names[splits.test.labels[3]]  # the copy comes first


def test_export_run_writes_the_next_version_of_its_model(job, capsys):
    run, _, _, version_dir = job
    code, out, err = _run_cli(["export", run.run_dir, "--quiet"], capsys)
    assert code == 0, err
    assert out.strip() == os.path.join(os.path.dirname(version_dir), "2")  # --quiet: the path only
    assert os.path.isfile(os.path.join(os.path.dirname(version_dir), "2", "saved_model.pb"))


def test_default_model_dir(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "epoch-0001.keras").write_bytes(b"")
    state = {"checkpoint": "epoch-0001.keras", "completed_epochs": 1, "args": {"preset": None, "model": "multigrain"}}
    (run / "state.json").write_text(json.dumps(state))
    # no export, no model name (an older run): the family
    assert default_model_dir(str(run)) == os.path.join("savedmodels", "multigrain")
    state["model_name"] = "my_model"
    (run / "state.json").write_text(json.dumps(state))
    assert default_model_dir(str(run)) == os.path.join("savedmodels", "my_model")
    assert default_model_dir(str(run / "epoch-0001.keras")) == os.path.join("savedmodels", "my_model")
    state["export_path"] = str(tmp_path / "elsewhere" / "my_model" / "3")
    (run / "state.json").write_text(json.dumps(state))
    assert default_model_dir(str(run)) == str(tmp_path / "elsewhere" / "my_model")
    loose = tmp_path / "loose"
    loose.mkdir()
    shutil.copy(run / "epoch-0001.keras", loose / "best.keras")
    assert default_model_dir(str(loose / "best.keras")) == os.path.join("savedmodels", "best")


@pytest.mark.parametrize("command", ["evaluate", "search", "export"])
def test_a_path_that_is_no_model_lists_what_is_accepted(command, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    argv = [command, str(empty)] + (["q.jpg"] if command == "search" else [])
    if command == "search":
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "q.jpg")
        argv[2] = str(tmp_path / "q.jpg")
    code, out, err = _run_cli(argv, capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and str(empty) in lines[0]
    assert ".keras" in lines[0] and "run directory" in lines[0]
    if command != "export":
        assert "saved_model.pb" in lines[0]


def test_snake_case_spellings_are_aliases():
    parser = cli.build_parser()
    kebab = parser.parse_args(["train", "--embedding-dim", "8", "--steps-per-epoch=3", "--run-dir", "r"])
    snake = parser.parse_args(["train", "--embedding_dim", "8", "--steps_per_epoch=3", "--run_dir", "r"])
    assert vars(kebab) == vars(snake)
    assert (snake.embedding_dim, snake.steps_per_epoch, snake.run_dir) == (8, 3, "r")


def test_unknown_snake_case_option_is_named_in_the_error(capsys):
    code, _, err = _run_cli(["evaluate", "m.keras", "--frob_nicate", "1"], capsys)
    assert code == 2 and "--frob_nicate" in err and len(err.strip().splitlines()) == 1


def test_every_command_has_the_output_options():
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for name, p in sub.choices.items():
        if name == "serve":  # parsed by keras_cgd.serving.server.main
            continue
        options = set(p._option_string_actions)
        assert {"--quiet", "-q", "--tf-logs"} <= options, name
