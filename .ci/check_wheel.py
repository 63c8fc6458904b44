"""Checks the built distribution the way a user meets it: installed from the wheel, not the checkout.

    python .ci/check_wheel.py dist/                     # CI: dependencies from PyPI
    python .ci/check_wheel.py dist/ --deps reuse        # offline: this environment's packages
    python .ci/check_wheel.py dist/ --notebooks         # + the three notebooks via their install cell

Steps (each prints one line; the first failure stops with its output):

1. `twine check --strict` on the wheel and the sdist; the wheel holds every file of
   `keras_cgd/` (package data included) and the `keras-cgd` entry point.
2. A fresh virtual environment (`--deps pypi`: `pip install <wheel>` resolves the
   dependencies from PyPI, as a user's install; `--deps reuse`: the environment sees
   this interpreter's installed packages through a `.pth` file, except keras-cgd itself,
   and pip runs with `--no-index`, so nothing is downloaded).
3. From an empty working directory, with that environment's `keras-cgd`: `--help`,
   `import keras_cgd.serving` without Keras or TensorFlow, a test-sized `train`,
   `export <run>` (the run's next version), `evaluate` of the SavedModel.
4. With `--notebooks`: keras-cgd is uninstalled again and each notebook runs in a
   Jupyter kernel of that environment with `KERAS_CGD_INSTALL=<wheel>` and
   `KERAS_CGD_SMALL=1`; its install cell must install the wheel (keras-cgd is
   uninstalled before each notebook).

Needs `build`-made files in DIST (`python -m build`), and `twine`, `nbclient`,
`ipykernel` in the running interpreter.
"""

import argparse
import glob
import json
import os
import shutil
import site
import subprocess
import sys
import tempfile
import time
import zipfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "notebooks"))
from sync_repository_url import NOTEBOOKS  # noqa: E402  (the one list of notebooks)


def _step(message):
    print(f"[check_wheel] {message}", flush=True)


def _run(cmd, cwd=None, env=None, timeout=900):
    start = time.time()
    try:
        proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        raise SystemExit(f"[check_wheel] FAILED (over {timeout} s): {' '.join(map(str, cmd))}\n"
                         f"{(e.stdout or b'')[-3000:]!r}\n{(e.stderr or b'')[-3000:]!r}")
    if proc.returncode != 0:
        raise SystemExit(f"[check_wheel] FAILED ({proc.returncode}): {' '.join(map(str, cmd))}\n"
                         f"{proc.stdout[-6000:]}\n{proc.stderr[-6000:]}")
    return proc, time.time() - start


def find_distributions(dist):
    wheels = sorted(glob.glob(os.path.join(dist, "keras_cgd-*.whl")))
    sdists = sorted(glob.glob(os.path.join(dist, "keras_cgd-*.tar.gz")))
    if len(wheels) != 1 or len(sdists) != 1:
        raise SystemExit(f"[check_wheel] expected one keras_cgd wheel and one sdist in {dist!r}, "
                         f"found {wheels + sdists}")
    return os.path.abspath(wheels[0]), os.path.abspath(sdists[0])


def package_files(root=REPO):
    """Files of `keras_cgd/` that must ship: those git tracks (else every file but caches)."""
    try:
        listed = subprocess.run(["git", "-C", root, "ls-files", "keras_cgd"], capture_output=True, text=True,
                                check=True).stdout.split()
    except (OSError, subprocess.CalledProcessError):  # not a git checkout (an unpacked sdist)
        listed = []
    if listed:
        return sorted(listed)
    out = []
    for folder, dirs, files in os.walk(os.path.join(root, "keras_cgd")):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        for f in files:
            if not f.endswith((".pyc", ".pyo")):
                out.append(os.path.relpath(os.path.join(folder, f), root).replace(os.sep, "/"))
    return sorted(out)


def check_wheel_contents(wheel):
    """Missing package files and the entry point line; raises SystemExit on a problem."""
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        entry = next((n for n in names if n.endswith(".dist-info/entry_points.txt")), None)
        entry_points = z.read(entry).decode() if entry else ""
    missing = [f for f in package_files() if f not in names]
    if missing:
        raise SystemExit(f"[check_wheel] the wheel lacks package files: {missing}")
    if "keras-cgd = keras_cgd.cli:main" not in entry_points:
        raise SystemExit(f"[check_wheel] the wheel has no keras-cgd entry point: {entry_points!r}")
    stray = sorted({n.split("/")[0] for n in names} - {"keras_cgd"} - {n.split("/")[0] for n in names
                                                                          if ".dist-info/" in n})
    if stray:
        raise SystemExit(f"[check_wheel] the wheel installs more than keras_cgd: {stray}")


def _reuse_view(work):
    """A folder of links to this interpreter's installed packages, keras-cgd left out."""
    view = os.path.join(work, "site-view")
    os.makedirs(view)
    dirs = [p for p in site.getsitepackages() + [site.getusersitepackages()] if os.path.isdir(p)]
    for d in dirs:
        for name in os.listdir(d):
            low = name.lower()
            if (low.startswith(("keras_cgd", "__editable__", "keras-cgd")) or low.endswith(".pth")
                    or low in ("__pycache__", "_distutils_hack", "pip", "setuptools")
                    or low.startswith(("pip-", "setuptools-"))):
                continue
            target = os.path.join(view, name)
            if not os.path.exists(target):
                os.symlink(os.path.join(d, name), target)
    return view


def make_venv(work, deps):
    """A fresh virtual environment at `work/venv`; returns (python, env for its commands)."""
    venv = os.path.join(work, "venv")
    _run([sys.executable, "-m", "venv", venv])
    python = os.path.join(venv, "bin", "python")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env["PATH"] = os.path.join(venv, "bin") + os.pathsep + env.get("PATH", "")
    env["VIRTUAL_ENV"] = venv
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)  # the CLI must be quiet on its own
    if deps == "reuse":
        purelib = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                 capture_output=True, text=True, check=True).stdout.strip()
        with open(os.path.join(purelib, "zz_reuse_site_packages.pth"), "w") as f:
            f.write(_reuse_view(work) + "\n")
        env["PIP_NO_INDEX"] = "1"
    return python, env


def check_cli(python, env, wheel, work):
    """Installs the wheel and runs the CLI from an empty directory; returns timings."""
    # From PyPI this downloads TensorFlow (about 600 MB) and its dependencies.
    _, seconds = _run([python, "-m", "pip", "install", "-q", wheel], env=env, timeout=3600)
    _step(f"installed {os.path.basename(wheel)} into a fresh venv ({seconds:.0f} s)")
    cwd = os.path.join(work, "cwd")
    os.makedirs(cwd)
    where, _ = _run([python, "-c", "import keras_cgd; print(keras_cgd.__file__)"], cwd=cwd, env=env)
    venv = os.path.dirname(os.path.dirname(python))
    if not os.path.abspath(where.stdout.strip()).startswith(venv):
        raise SystemExit(f"[check_wheel] keras_cgd imported from {where.stdout.strip()}, not from {venv}")
    cli = os.path.join(venv, "bin", "keras-cgd")
    out, seconds = _run([cli, "--help"], cwd=cwd, env=env)
    for command in ("train", "evaluate", "export", "serve", "search", "presets"):
        if command not in out.stdout:
            raise SystemExit(f"[check_wheel] `keras-cgd --help` does not list {command!r}:\n{out.stdout}")
    _step(f"keras-cgd --help from the wheel: {seconds:.2f} s")
    probe = ("import sys; from keras_cgd.serving import Client; "
             "print(sorted(m for m in ('keras', 'tensorflow', 'jax') if m in sys.modules))")
    out, _ = _run([python, "-c", probe], cwd=cwd, env=env)
    if out.stdout.strip() != "[]":
        raise SystemExit(f"[check_wheel] `from keras_cgd.serving import Client` imported {out.stdout.strip()}")
    out, _ = _run([python, "-c", "from keras_cgd.training.config import DEFAULT_PRESET; print(DEFAULT_PRESET)"],
                  cwd=cwd, env=env)
    name = out.stdout.strip()  # the default job's model, hence its SavedModel directory
    out, seconds = _run([cli, "train", "--small", "--epochs", "1", "--steps-per-epoch", "2", "--run-dir", "run"],
                        cwd=cwd, env=env)
    if out.stderr.strip():
        raise SystemExit(f"[check_wheel] `keras-cgd train` wrote to stderr:\n{out.stderr}")
    if not os.path.isfile(os.path.join(cwd, "savedmodels", name, "1", "saved_model.pb")):
        raise SystemExit(f"[check_wheel] train exported no savedmodels/{name}/1:\n{out.stdout}")
    _step(f"keras-cgd train --small from the wheel: {seconds:.0f} s")
    out, seconds = _run([cli, "export", "run"], cwd=cwd, env=env)
    if out.stdout.strip().splitlines()[-1] != os.path.join("savedmodels", name, "2"):
        raise SystemExit(f"[check_wheel] `keras-cgd export run` did not write savedmodels/{name}/2:\n{out.stdout}")
    out, _ = _run([cli, "evaluate", os.path.join("savedmodels", name), "--small", "--quiet"], cwd=cwd, env=env)
    if "R@1 " not in out.stdout:
        raise SystemExit(f"[check_wheel] evaluate of the SavedModel printed no Recall@K:\n{out.stdout}")
    _step(f"keras-cgd export run -> savedmodels/{name}/2 ({seconds:.0f} s); evaluate of the SavedModel: "
          f"{out.stdout.strip()}")


def check_notebooks(python, env, wheel, work, deps, backend="tensorflow"):
    """Runs each notebook in a kernel of the venv, through its install cell (wheel)."""
    import nbclient
    import nbformat

    if deps == "pypi":
        _run([python, "-m", "pip", "install", "-q", "ipykernel"], env=env, timeout=1800)
    kernels = os.path.join(work, "jupyter", "kernels", "keras-cgd-wheel")
    os.makedirs(kernels)
    with open(os.path.join(kernels, "kernel.json"), "w") as f:
        json.dump({"argv": [python, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                   "display_name": "keras-cgd wheel", "language": "python"}, f)
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env, JUPYTER_PATH=os.path.join(work, "jupyter"), KERAS_CGD_INSTALL=wheel,
                      KERAS_CGD_SMALL="1", KERAS_BACKEND=backend, MPLBACKEND="Agg")
    try:
        for name in NOTEBOOKS:
            _run([python, "-m", "pip", "uninstall", "-q", "-y", "keras-cgd"], env=env)
            cwd = os.path.join(work, "nb-" + name.split(".")[0])
            os.makedirs(cwd)
            nb = nbformat.read(os.path.join(REPO, "notebooks", name), as_version=4)
            start = time.time()
            nbclient.NotebookClient(nb, timeout=600, kernel_name="keras-cgd-wheel",
                                    resources={"metadata": {"path": cwd}}).execute()
            first = next(c for c in nb.cells if c.cell_type == "code")
            said = "".join(o.get("text", "") for o in first.outputs if o.output_type == "stream")
            if f"installing {wheel}" not in said:
                raise SystemExit(f"[check_wheel] {name}: the install cell did not install the wheel: {said!r}")
            _step(f"{name} ran through its install cell ({time.time() - start:.0f} s)")
    finally:
        os.environ.clear()
        os.environ.update(saved)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dist", help="folder with the wheel and the sdist (python -m build)")
    parser.add_argument("--deps", choices=["pypi", "reuse"], default="pypi",
                        help="pypi: resolve dependencies from PyPI (CI); reuse: this environment's (offline)")
    parser.add_argument("--notebooks", action="store_true", help="also run the notebooks through their install cell")
    parser.add_argument("--work", default=None, help="work folder (default: a temporary one, removed)")
    args = parser.parse_args(argv)
    wheel, sdist = find_distributions(args.dist)
    _run([sys.executable, "-m", "twine", "check", "--strict", wheel, sdist])
    check_wheel_contents(wheel)
    _step(f"twine check --strict and contents: {os.path.basename(wheel)}, {os.path.basename(sdist)}")
    work = args.work or tempfile.mkdtemp(prefix="keras_cgd_wheel_")
    try:
        python, env = make_venv(work, args.deps)
        check_cli(python, env, wheel, work)
        if args.notebooks:
            check_notebooks(python, env, wheel, work, args.deps)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    _step("ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
