"""Start-up cost of the command line and of the serving client, against the imports they avoid.

    python benchmarks/cli_startup.py [--repeats 5] [--output benchmarks/results/cli_startup.json]

Each figure is the best wall time of `--repeats` fresh processes and the peak resident
memory of that process, measured in the same run (the load of the machine changes all of
them alike):

- `python_s`: `python -c pass` (the interpreter alone: the floor);
- `help_s`: `python -m keras_cgd.cli --help` (what `keras-cgd --help` runs);
- `client_import_s`: `from keras_cgd.serving import Client`;
- `tensorflow_import_s`: `import tensorflow` (the baseline: what `--help` cost when
  `keras_cgd/__init__.py` imported every subpackage, and TensorFlow with them);
- `eager_help_s`: `import keras_cgd.models` + `--help` (the baseline itself: the old
  eager package import followed by the same parser).

Prints one JSON line; writes it to `--output`.
"""

import argparse
import datetime
import json
import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CASES = {
    "python": "pass",
    "help": "import sys; from keras_cgd.cli import main; sys.argv = ['keras-cgd', '--help']; main()",
    "client_import": "from keras_cgd.serving import Client",
    "tensorflow_import": "import tensorflow",
    "eager_help": "import sys; import keras_cgd.models; from keras_cgd.cli import main; main(['--help'])",
}


def _measure(code, env):
    """(wall seconds, peak RSS MiB) of one fresh `python -c code`."""
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"`python -c {code!r}` exited with {proc.returncode}")
    return seconds, usage.ru_maxrss / 1024.0


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--output", default=os.path.join(REPO, "benchmarks", "results", "cli_startup.json"))
    args = parser.parse_args(argv)
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""),
               TF_CPP_MIN_LOG_LEVEL="3")
    best = {name: (float("inf"), 0.0) for name in CASES}
    for _ in range(args.repeats):  # interleaved, so a burst of load hits every case
        for name, code in CASES.items():
            seconds, rss = _measure(code, env)
            if seconds < best[name][0]:
                best[name] = (seconds, rss)
    result = {"benchmark": "cli_startup", "date": datetime.date.today().isoformat(), "repeats": args.repeats}
    for name, (seconds, rss) in best.items():
        result[f"{name}_s"] = round(seconds, 3)
        result[f"{name}_peak_mib"] = round(rss, 1)
    result["help_vs_eager_help"] = round(best["eager_help"][0] / best["help"][0], 1)
    result["cpu_count"] = os.cpu_count()
    result["load_average_1min"] = round(os.getloadavg()[0], 2)
    line = json.dumps(result)
    print(line)
    if args.output:
        os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
        with open(args.output + ".tmp", "w") as f:
            f.write(line + "\n")
        os.replace(args.output + ".tmp", args.output)


if __name__ == "__main__":
    main()
