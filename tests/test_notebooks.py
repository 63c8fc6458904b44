"""The Colab notebooks: stored clean, opening with the Colab link and the install cell that
notebooks/sync_repository_url.py writes from the one repository URL, and running top to
bottom at small settings (KERAS_CGD_SMALL=1) with this checkout. CI also runs each one in a
fresh environment through its install cell against the built wheel (.ci/check_wheel.py)."""

import importlib.util
import json
import os
import re

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS = ("01_quickstart.ipynb", "02_train_cub200.ipynb", "03_export_and_serve.ipynb", "04_published_checkpoints.ipynb")


def _sync():
    spec = importlib.util.spec_from_file_location("sync_repository_url",
                                                  os.path.join(REPO, "notebooks", "sync_repository_url.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _read(name):
    return nbformat.read(os.path.join(REPO, "notebooks", name), as_version=4)


def test_the_sync_script_covers_every_notebook():
    assert tuple(_sync().NOTEBOOKS) == NOTEBOOKS
    assert sorted(NOTEBOOKS) == sorted(f for f in os.listdir(os.path.join(REPO, "notebooks")) if f.endswith(".ipynb"))


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_is_stored_clean_with_colab_link_and_install_cell(name):
    sync = _sync()
    nb = _read(name)
    nbformat.validate(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"{name} is stored with outputs"
    url = sync.repository_url()
    owner_repo = url.rstrip("/").split("github.com/")[1]
    link = f"https://colab.research.google.com/github/{owner_repo}/blob/main/notebooks/{name}"
    assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.splitlines()[0].endswith(f"({link})")
    first_code = next(c for c in nb.cells if c.cell_type == "code").source
    assert first_code == sync.install_cell(url), "run python notebooks/sync_repository_url.py"
    assert f'os.environ.get("KERAS_CGD_INSTALL", "git+{url}")' in first_code
    # Nothing else to sync: rewriting the stored notebook changes nothing.
    with open(os.path.join(REPO, "notebooks", name), encoding="utf-8") as f:
        stored = f.read()
    again = sync.synced(json.loads(stored), name, url)
    assert json.dumps(again, indent=1, sort_keys=True, ensure_ascii=False) + "\n" == stored


def test_install_cell_installs_from_the_variable(tmp_path):
    """The install cell runs pip with KERAS_CGD_INSTALL when keras_cgd is missing, and skips otherwise."""
    import subprocess
    import sys

    cell = _sync().install_cell("https://github.com/o/r")
    fake_bin = tmp_path / "fakepy"
    log = tmp_path / "pip.log"
    # A stand-in interpreter for `sys.executable -m pip`: records its arguments.
    fake_bin.write_text(f"#!/bin/sh\necho \"$@\" >> {log}\n")
    fake_bin.chmod(0o755)
    code = ("import sys, importlib.util\n"
            f"sys.executable = {str(fake_bin)!r}\n"
            "importlib.util.find_spec = lambda name, *a: None if name == 'keras_cgd' else _find(name, *a)\n")
    prelude = "import importlib.util\n_find = importlib.util.find_spec\n"
    for env_value, expected in ((None, "git+https://github.com/o/r"), ("dist/keras_cgd-0.2.0-py3-none-any.whl",
                                                                       "dist/keras_cgd-0.2.0-py3-none-any.whl")):
        env = {k: v for k, v in os.environ.items() if k != "KERAS_CGD_INSTALL"}
        if env_value:
            env["KERAS_CGD_INSTALL"] = env_value
        result = subprocess.run([sys.executable, "-c", prelude + code + cell], env=env, capture_output=True,
                                text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        assert log.read_text().splitlines()[-1] == f"-m pip install -q {expected}"
    # keras_cgd importable: no install.
    before = log.read_text()
    env = dict(os.environ, PYTHONPATH=REPO, KERAS_CGD_INSTALL="never-used")
    result = subprocess.run([sys.executable, "-c", f"import sys\nsys.executable = {str(fake_bin)!r}\n" + cell],
                            env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert log.read_text() == before and "installing" not in result.stdout


@pytest.mark.slow
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs_top_to_bottom(name, tmp_path, monkeypatch):
    import keras

    monkeypatch.setenv("KERAS_CGD_SMALL", "1")
    monkeypatch.setenv("KERAS_BACKEND", keras.backend.backend())
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "3")
    monkeypatch.setenv("PYTHONPATH", REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    monkeypatch.delenv("CUB_ROOT", raising=False)
    monkeypatch.chdir(tmp_path)
    nb = _read(name)
    client = nbclient.NotebookClient(
        nb, timeout=240, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}},
    )
    client.execute()  # raises CellExecutionError on the first cell that fails
    outputs = "\n".join(
        o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "stream"
    )
    if name == "01_quickstart.ipynb":
        assert "before training:" in outputs and "after: " in outputs
        assert (tmp_path / "neighbours.png").is_file()
    elif name == "02_train_cub200.ipynb":
        assert "using a tiny fake CUB tree" in outputs
        assert "Recall@K after:" in outputs
        saved = [v for v in (tmp_path / "savedmodels" / "cgd_resnet50_cub200").iterdir()]
        assert saved and (saved[0] / "saved_model.pb").is_file()
    elif name == "04_published_checkpoints.ipynb":
        assert "wrote the random stand-in multigrain_standin.npz" in outputs
        assert "MultiGrainModel | GeM p = 3.0" in outputs
        assert "references (54, 2048) | queries (16, 2048)" in outputs
        assert re.search(r"copy found at rank 1 for \d+% of 16 queries", outputs), outputs
        assert (tmp_path / "copies.png").is_file()
    else:
        assert "cosine with the local model" in outputs
        cos_line = next(line for line in outputs.splitlines() if "cosine with the local model" in line)
        values = [float(v) for v in cos_line.split("[")[1].split("]")[0].split()]
        assert len(values) == 4 and min(values) > 0.99
