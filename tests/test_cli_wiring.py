"""Every sub-command is reachable from `keras-cgd` and `--help` imports neither Keras nor TF."""

import subprocess
import sys

import pytest

from keras_cgd import cli


@pytest.mark.parametrize("command,needle", [("embed", "Parquet"), ("index", "FAISS"), ("serve", "port")])
def test_delegated_commands_reach_their_parsers(command, needle, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main([command, "--help"])
    assert e.value.code == 0
    assert needle in capsys.readouterr().out


def test_help_lists_every_command_without_importing_keras():
    code = ("import sys, contextlib, io\nfrom keras_cgd import cli\nbuf = io.StringIO()\n"
            "with contextlib.redirect_stdout(buf), contextlib.suppress(SystemExit):\n    cli.main(['--help'])\n"
            "print(buf.getvalue())\nprint('HEAVY', [m for m in ('keras', 'tensorflow', 'jax') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    for name in list(cli.COMMAND_MODULES) + list(cli.DELEGATED_COMMANDS):
        assert f"    {name} " in out or f"    {name}\n" in out, name
    assert "HEAVY []" in out
