"""Replays of the probe's export findings (issue 14, item 5): a killed export publishes
nothing and leaves nothing behind; what a crashed export left is cleaned safely."""

import os
import signal
import subprocess
import sys
import time

import keras
import pytest

from tests.reliability.conftest import child_env

_PARENT = r"""
import sys
import keras
import keras_cgd
from keras_cgd.export import export_saved_model

model = keras_cgd.build_model("cgd_tiny", num_classes=5)
export_saved_model(model, sys.argv[1])
print("published", flush=True)
"""


def _children(pid):
    """Live child pids of `pid` whose command line runs the export child (Linux /proc)."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{name}/cmdline", "rb") as f:
                cmdline = f.read()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z" and b"keras_cgd.export" in cmdline:
            found.append(int(name))
    return found


def _running(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _age(path, seconds=3600):
    old = time.time() - seconds
    os.utime(path, (old, old))


@pytest.mark.skipif(keras.backend.backend() == "tensorflow",
                    reason="the TensorFlow-child export path runs from other backends")
@pytest.mark.skipif(not os.path.isdir("/proc"), reason="finds the child through /proc")
def test_killed_parent_publishes_nothing_and_leaves_nothing(tmp_path):
    """Item 5: after `kill -9` of the parent the child published the version 11 s later
    and a `keras_cgd_export_*` copy of the model stayed in the system temp directory."""
    model_dir = tmp_path / "models" / "cgd"
    crashed = model_dir / ".tmp-3-0badc0de"  # what an earlier crashed export left
    (crashed / "variables").mkdir(parents=True)
    (crashed / "saved_model.pb").write_bytes(b"partial")
    _age(crashed)
    temp = tmp_path / "system_tmp"
    temp.mkdir()
    env = dict(child_env(), TMPDIR=str(temp), KERAS_BACKEND=keras.backend.backend())
    parent = subprocess.Popen([sys.executable, "-c", _PARENT, str(model_dir)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 240
        children = []
        while not children and time.monotonic() < deadline and parent.poll() is None:
            children = _children(parent.pid)
            time.sleep(0.05)
        assert children, "the export child never started:\n" + parent.communicate()[0].decode()
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(timeout=30)
        deadline = time.monotonic() + 60
        while any(_running(pid) for pid in children) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(_running(pid) for pid in children), "the child outlived its parent"
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        for pid in _children(parent.pid):
            os.kill(pid, signal.SIGKILL)
    time.sleep(0.5)
    assert sorted(os.listdir(model_dir)) == []  # no version, no .tmp-*, the crashed one gone
    assert sorted(os.listdir(temp)) == []


@pytest.mark.skipif(keras.backend.backend() != "tensorflow",
                    reason="the in-process TensorFlow export path")
@pytest.mark.skipif(sys.platform == "win32", reason="flock")
def test_stale_temporaries_are_cleaned_and_running_ones_kept(tmp_path):
    """Item 5: on TensorFlow, hidden `.tmp-*` directories of crashed exports were never cleaned."""
    import keras_cgd
    from keras_cgd.export import export_saved_model

    model_dir = tmp_path / "cgd"
    names = {"stale": ".tmp-4-deadbeef", "running": ".tmp-5-0c0ffee0", "fresh": ".tmp-6-beefcafe"}
    for name in names.values():
        (model_dir / name / "variables").mkdir(parents=True)
        (model_dir / name / "saved_model.pb").write_bytes(b"partial")
    (model_dir / "notes").mkdir()
    for key in ("stale", "running"):
        _age(model_dir / names[key])
    _age(model_dir / "notes")
    # Another export, in another process, holds the lock on its temporary directory.
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDONLY);"
         " fcntl.flock(fd, fcntl.LOCK_EX); print('locked', flush=True); time.sleep(120)",
         str(model_dir / names["running"])], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        path = export_saved_model(keras_cgd.build_model("cgd_tiny", num_classes=5), model_dir)
    finally:
        holder.kill()
        holder.wait()
    assert path == os.path.join(str(model_dir), "1")
    assert sorted(os.listdir(model_dir)) == sorted(["1", "notes", names["running"], names["fresh"]])
    assert os.path.isfile(os.path.join(path, "saved_model.pb"))
    # Once its holder is gone and it is old, the other one is stale too.
    from keras_cgd.export import remove_stale_temporaries

    _age(model_dir / names["running"])
    assert remove_stale_temporaries(str(model_dir)) == [names["running"]]
    assert remove_stale_temporaries(str(model_dir), min_age=0) == [names["fresh"]]
    assert sorted(os.listdir(model_dir)) == ["1", "notes"]
