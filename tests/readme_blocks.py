"""The fenced code blocks of README.md, and how each one is checked.

Every `bash` and `python` block of the README runs as written, somewhere:

- no marker: `tests/test_readme.py` runs it, in README order, in one scratch
  directory (shell blocks with `bash -euo pipefail`, Python blocks with the test's
  interpreter), so later blocks see the files earlier ones wrote;
- `<!-- readme-test: background -->` on the line before the fence: started by the test
  and left running for the blocks after it (a server), stopped at the end;
- `<!-- readme-test: ci -->`: run verbatim by `.ci/run` (`python tests/readme_blocks.py ci`
  prints them) because they install packages or run the test suite itself;
- `<!-- readme-test: skip -->`: not run anywhere (needs Docker or another program that
  is not on PyPI); the block's first line must say so to the reader, as a comment
  starting `# Not run by the README test:`.

Blocks in other languages (`bibtex`, `text`, tables) are not code and are left alone.

    python tests/readme_blocks.py ci        # the CI blocks, as one bash script
    python tests/readme_blocks.py list      # every block with its line and how it is checked
"""

import os
import re
import shlex
import sys

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")
CODE_LANGUAGES = {"bash": "bash", "sh": "bash", "shell": "bash", "python": "python"}
MODES = ("run", "background", "ci", "skip")
SKIP_LABEL = "# Not run by the README test:"

_FENCE = re.compile(r"^```([\w+-]*)[^\n]*\n(.*?)^```[ \t]*$", re.M | re.S)
_MARKER = re.compile(r"<!--\s*readme-test:\s*([\w-]+)\s*-->\s*\n$")


class Block:
    """One fenced block: `language` ("bash"/"python"/other), `code`, `mode`, `line` (1-based)."""

    def __init__(self, language, code, mode, line):
        self.language, self.code, self.mode, self.line = language, code, mode, line

    def __repr__(self):
        first = self.code.strip().splitlines()[0] if self.code.strip() else ""
        return f"README.md:{self.line} [{self.language}, {self.mode}] {first[:60]}"


def blocks(path=README):
    """The README's blocks in order; `ValueError` for an unknown marker or an unlabelled skip."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    out = []
    for match in _FENCE.finditer(text):
        language = CODE_LANGUAGES.get(match.group(1).lower(), match.group(1).lower() or "text")
        before = text[: match.start()]
        marker = _MARKER.search(before[-200:])
        mode = marker.group(1) if marker else "run"
        line = before.count("\n") + 1
        if mode not in MODES:
            raise ValueError(f"README.md:{line}: unknown readme-test marker {mode!r}; expected one of {MODES}")
        if language in ("bash", "python") and mode == "skip" and not match.group(2).startswith(SKIP_LABEL):
            raise ValueError(f"README.md:{line}: a skipped block must start with {SKIP_LABEL!r} and the reason")
        out.append(Block(language, match.group(2), mode, line))
    return out


def ci_script(path=README):
    """The `ci` blocks joined into one bash script (each announced before it runs, timed after).

    Each block runs in its own `bash -euo pipefail -c`, and the script stops at the first
    block that fails: under `set -e`, a failure before the last `&&` of a list (such as
    `pip install ... && KERAS_BACKEND=tensorflow pytest ... && KERAS_BACKEND=jax pytest ...`)
    does not stop a script, and the `echo` after it would have made the script succeed.
    """
    parts = ["set -euo pipefail"]
    for b in blocks(path):
        if b.mode == "ci":
            if b.language != "bash":
                raise ValueError(f"{b!r}: CI runs shell blocks only")
            parts.append(f"echo '+ README.md:{b.line}'\nSECONDS=0\n"
                         f"bash -euo pipefail -c {shlex.quote(b.code.rstrip())} "
                         f"|| {{ status=$?; echo \"README.md:{b.line} failed (exit $status)\" >&2; exit $status; }}\n"
                         f"echo \"README.md:{b.line} took $SECONDS s\"")
    return "\n".join(parts) + "\n"


if __name__ == "__main__":
    what = sys.argv[1] if len(sys.argv) > 1 else "list"
    if what == "ci":
        sys.stdout.write(ci_script())
    elif what == "list":
        for b in blocks():
            print(repr(b))
    else:
        sys.exit(f"usage: python {sys.argv[0]} [ci|list]")
