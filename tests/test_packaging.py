"""The distribution: pyproject.toml declares what the code imports, and the wheel installs and
runs in a fresh virtual environment (.ci/check_wheel.py; CI runs it with PyPI dependencies)."""

import ast
import importlib.metadata
import importlib.util
import os
import re
import shutil
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
tomllib = pytest.importorskip("tomllib")  # Python >= 3.11


def _pyproject():
    with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
        return tomllib.load(f)


def _requirement_name(spec):
    return re.match(r"[A-Za-z0-9._-]+", spec).group(0).lower().replace("_", "-")


def _imported_top_level_modules():
    """Top-level modules imported anywhere in keras_cgd/ (module level or inside functions)."""
    found = {}
    for folder, _, files in os.walk(os.path.join(REPO, "keras_cgd")):
        for f in files:
            if f.endswith(".py"):
                path = os.path.join(folder, f)
                with open(path, encoding="utf-8") as fh:
                    tree = ast.parse(fh.read(), path)
                for node in ast.walk(tree):
                    if isinstance(node, ast.Import):
                        names = [a.name for a in node.names]
                    elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                        names = [node.module]
                    else:
                        continue
                    for name in names:
                        found.setdefault(name.split(".")[0], os.path.relpath(path, REPO))
    return found


def test_version_and_entry_point():
    meta = _pyproject()
    assert meta["project"]["dynamic"] == ["version"]
    assert meta["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "keras_cgd.__version__"}
    module, func = meta["project"]["scripts"]["keras-cgd"].split(":")
    assert callable(getattr(importlib.import_module(module), func))
    assert meta["project"]["urls"]["Repository"].startswith("https://github.com/")


def test_every_third_party_import_is_declared():
    """Each distribution the package imports is a dependency or in an extra (by import scan)."""
    meta = _pyproject()["project"]
    declared = {_requirement_name(r) for r in meta["dependencies"]}
    for extra in meta["optional-dependencies"].values():
        declared |= {_requirement_name(r) for r in extra}
    providers = importlib.metadata.packages_distributions()
    undeclared = {}
    for module, where in _imported_top_level_modules().items():
        if module in sys.stdlib_module_names or module == "keras_cgd" or module == "__future__":
            continue
        dists = {d.lower().replace("_", "-") for d in providers.get(module, [])}
        if not dists:  # not installed here: the import name must then be the distribution's
            dists = {module.lower().replace("_", "-")}
            if not dists & declared:
                undeclared[module] = f"{where} (not installed here)"
        elif not dists & declared:
            undeclared[module] = f"{where} (from {sorted(dists)})"
    assert not undeclared, f"imported but not declared in pyproject.toml: {undeclared}"


def _check_wheel_module():
    spec = importlib.util.spec_from_file_location("check_wheel", os.path.join(REPO, ".ci", "check_wheel.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_wheel_installs_and_runs_in_a_fresh_venv(tmp_path):
    """Builds the wheel and sdist, then .ci/check_wheel.py --deps reuse (offline): twine, contents,
    a fresh venv, `keras-cgd --help`, the serving import, a tiny train, export, evaluate."""
    import keras

    if keras.backend.backend() != "tensorflow":
        pytest.skip("backend-independent: runs in the TensorFlow pass only")
    # Build from a copy: setuptools writes build/ and *.egg-info/ next to the sources.
    src = tmp_path / "src"
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(
        ".git", "build", "dist", "runs", "__pycache__", "*.egg-info", ".venv*", "*.keras", ".pytest_cache"))
    dist = tmp_path / "dist"
    build = subprocess.run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(dist), str(src)],
                           capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    check = subprocess.run([sys.executable, os.path.join(REPO, ".ci", "check_wheel.py"), str(dist),
                            "--deps", "reuse", "--work", str(tmp_path / "work")],
                           capture_output=True, text=True, timeout=1500)
    assert check.returncode == 0, check.stdout[-4000:] + check.stderr[-4000:]
    assert check.stdout.strip().splitlines()[-1] == "[check_wheel] ok"


def test_wheel_contents_check_finds_a_missing_file(tmp_path):
    """The contents check is not vacuous: a wheel without one package file is refused."""
    import zipfile

    check_wheel = _check_wheel_module()
    files = check_wheel.package_files()
    assert "keras_cgd/cli/__init__.py" in files and "keras_cgd/serving/README_SECTION.md" in files
    good = tmp_path / "good.whl"
    with zipfile.ZipFile(good, "w") as z:
        for f in files:
            z.writestr(f, "")
        z.writestr("keras_cgd-0.dist-info/entry_points.txt", "[console_scripts]\nkeras-cgd = keras_cgd.cli:main\n")
    check_wheel.check_wheel_contents(str(good))
    bad = tmp_path / "bad.whl"
    with zipfile.ZipFile(bad, "w") as z:
        for f in files:
            if f != "keras_cgd/serving/README_SECTION.md":
                z.writestr(f, "")
        z.writestr("keras_cgd-0.dist-info/entry_points.txt", "[console_scripts]\nkeras-cgd = keras_cgd.cli:main\n")
    with pytest.raises(SystemExit, match="README_SECTION.md"):
        check_wheel.check_wheel_contents(str(bad))
