"""Writes the notebooks' install cell and "Open in Colab" link from the repository URL.

The repository URL has one setting: `[project.urls] Repository` in `pyproject.toml`.
Each notebook opens with

- a markdown cell whose first line is the "Open in Colab" badge,
  `https://colab.research.google.com/github/<owner>/<repo>/blob/main/notebooks/<file>`;
- a code cell that installs keras-cgd unless it is importable already, from the
  source named by the environment variable `KERAS_CGD_INSTALL`: any pip requirement
  (`keras-cgd` from PyPI once it is published, a wheel file, `git+<url>@<ref>`),
  default `git+<repository URL>`.

Run `python notebooks/sync_repository_url.py` after changing the URL (or these cells);
`tests/test_notebooks.py` fails while a notebook disagrees with it.
"""

import json
import os
import re
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
NOTEBOOKS = ("01_quickstart.ipynb", "02_train_cub200.ipynb", "03_export_and_serve.ipynb", "04_published_checkpoints.ipynb")
INSTALL_ENV = "KERAS_CGD_INSTALL"
BRANCH = "main"
_BADGE = re.compile(r"^\[!\[Open In Colab\]\([^)]*\)\]\([^)]*\)\s*$")


def repository_url(pyproject=os.path.join(REPO, "pyproject.toml")):
    """`[project.urls] Repository` of `pyproject.toml`."""
    with open(pyproject, "rb") as f:
        text = f.read().decode("utf-8")
    try:
        import tomllib  # Python >= 3.11
    except ImportError:  # Python 3.10: the one line this needs
        match = re.search(r'^\[project\.urls\][^\[]*?^Repository\s*=\s*"([^"]+)"', text, re.M | re.S)
        if match is None:
            raise ValueError(f"{pyproject}: no `Repository` under [project.urls]")
        return match.group(1)
    return tomllib.loads(text)["project"]["urls"]["Repository"]


def colab_url(notebook, url=None):
    """The "Open in Colab" address of `notebooks/<notebook>` on GitHub's `main` branch."""
    url = (url or repository_url()).rstrip("/")
    match = re.fullmatch(r"https://github\.com/([^/]+)/([^/]+?)(\.git)?", url)
    if match is None:
        raise ValueError(f"Invalid value received for argument `url`. Expected https://github.com/<owner>/<repo>. "
                         f"Received: url={url!r}")
    return f"https://colab.research.google.com/github/{match[1]}/{match[2]}/blob/{BRANCH}/notebooks/{notebook}"


def badge(notebook, url=None):
    """The markdown badge line linking `notebook` to Colab."""
    return f"[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]({colab_url(notebook, url)})"


def install_cell(url=None):
    """The source of the notebooks' first code cell."""
    url = (url or repository_url()).rstrip("/")
    return (
        "# Install keras-cgd unless it is importable already (a dev checkout). The source is the\n"
        f"# environment variable {INSTALL_ENV}: any pip requirement, e.g. \"keras-cgd\" (PyPI, once\n"
        "# published), a wheel file, or \"git+<repository>@<tag>\"; default: the repository below.\n"
        "import importlib, importlib.util, os, subprocess, sys\n"
        f"{INSTALL_ENV} = os.environ.get(\"{INSTALL_ENV}\", \"git+{url}\")\n"
        "if importlib.util.find_spec(\"keras_cgd\") is None:\n"
        f"    print(\"installing\", {INSTALL_ENV})\n"
        f"    subprocess.run([sys.executable, \"-m\", \"pip\", \"install\", \"-q\", {INSTALL_ENV}], check=True)\n"
        "    importlib.invalidate_caches()"
    )


def synced(nb, notebook, url=None):
    """`nb` (a notebook dict) with its badge line and install cell rewritten."""
    cells = nb["cells"]
    first = cells[0]
    if first["cell_type"] != "markdown":
        raise ValueError(f"{notebook}: the first cell must be the markdown title cell")
    lines = "".join(first["source"]).split("\n")
    lines = [line for line in lines if not _BADGE.match(line)]
    while lines and not lines[0].strip():
        lines.pop(0)
    first["source"] = _as_source("\n".join([badge(notebook, url), ""] + lines).rstrip("\n"))
    code = next(c for c in cells if c["cell_type"] == "code")
    code["source"] = _as_source(install_cell(url))
    return nb


def _as_source(text):
    lines = text.split("\n")
    return [line + "\n" for line in lines[:-1]] + [lines[-1]]


def main(argv=None):
    url = repository_url()
    changed = []
    for name in NOTEBOOKS:
        path = os.path.join(HERE, name)
        with open(path, encoding="utf-8") as f:
            before = f.read()
        nb = synced(json.loads(before), name, url)
        after = json.dumps(nb, indent=1, sort_keys=True, ensure_ascii=False) + "\n"
        if after != before:
            with open(path + ".tmp", "w", encoding="utf-8") as f:
                f.write(after)
            os.replace(path + ".tmp", path)
            changed.append(name)
    print(f"repository {url}: " + (f"updated {', '.join(changed)}" if changed else "notebooks already in sync"))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
