"""The default job (`keras-cgd train`, no arguments) end to end: wall time, CPU time and
the held-out figures of the pretrained baseline and the fine-tuned network, per seed.

Each seed runs `python -m keras_cgd.cli train --seed S` in a fresh temporary directory
(so it builds, evaluates the ImageNet baseline, fine-tunes, evaluates and exports the
SavedModel exactly as a user's first run does) and parses its `before training:` /
`after training:` lines. The baseline is measured in the same run: the "before" line is
the pretrained EfficientNet-Lite0 (GeM of its feature map, no fine-tuning) on the same
held-out queries. CPU time (user + system of the child) is reported next to the wall
time, together with the 1-minute load average before and after, because the machine
that runs it is shared: on 2 otherwise idle cores the wall time is about CPU time / 2.

Usage:
    python benchmarks/default_job.py [--seeds 0 1 2] [--backend tensorflow] [--args "--lr 0.005"]

`--args` appends `keras-cgd train` options (to compare a recipe change against the default
in separate runs; the result records them). Prints one JSON line and writes it to
benchmarks/results/default_job.json (default arguments) or default_job_<tag>.json.
"""

import argparse
import json
import os
import platform
import re
import resource
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_METRIC = re.compile(r"(R@\d+|mAP) (\d\.\d+)")


def parse_metrics(line):
    """`{"R@1": 0.352, ..., "mAP": 0.428}` from a `before training:` / `after training:` line."""
    return {k: float(v) for k, v in _METRIC.findall(line)}


def run_seed(seed, backend, extra=()):
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""), TF_CPP_MIN_LOG_LEVEL="3",
               KERAS_BACKEND=backend)
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as cwd:
        usage0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.time()
        proc = subprocess.run([sys.executable, "-m", "keras_cgd.cli", "train", "--seed", str(seed), *extra], cwd=cwd, env=env,
                              capture_output=True, text=True)
        wall = time.time() - t0
        usage1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        exported = os.path.isdir(os.path.join(cwd, "savedmodels")) and any(
            os.path.isfile(os.path.join(cwd, "savedmodels", name, "1", "saved_model.pb"))
            for name in os.listdir(os.path.join(cwd, "savedmodels")))
    if proc.returncode != 0:
        raise RuntimeError(f"keras-cgd train --seed {seed} failed:\n{proc.stdout}\n{proc.stderr}")
    lines = proc.stdout.splitlines()
    before = next(line for line in lines if line.startswith("before training:"))
    after = next(line for line in lines if line.startswith("after training:"))
    epochs = [float(m.group(1)) for m in (re.search(r"([\d.]+) s$", line) for line in lines if line.startswith("epoch "))
              if m]
    return {
        "seed": seed,
        "before": parse_metrics(before),
        "after": parse_metrics(after),
        "wall_s": round(wall, 1),
        "cpu_s": round((usage1.ru_utime - usage0.ru_utime) + (usage1.ru_stime - usage0.ru_stime), 1),
        "epoch_s": epochs,
        "exported": exported,
        "load_1min": [round(load_before, 1), round(os.getloadavg()[0], 1)],
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--backend", default=os.environ.get("KERAS_BACKEND", "tensorflow"))
    parser.add_argument("--args", default="", help="extra `keras-cgd train` options, one string")
    parser.add_argument("--tag", default=None, help="result file suffix (default: none for the default job)")
    args = parser.parse_args()
    extra = args.args.split()
    runs = [run_seed(s, args.backend, extra) for s in args.seeds]
    result = {
        "benchmark": "default_job",
        "command": " ".join(["keras-cgd train --seed S", *extra]),
        "backend": args.backend,
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "runs": runs,
        "gain_map": [round(r["after"]["mAP"] - r["before"]["mAP"], 3) for r in runs],
        "gain_r1": [round(r["after"]["R@1"] - r["before"]["R@1"], 3) for r in runs],
        "max_wall_s": max(r["wall_s"] for r in runs),
        "max_cpu_s": max(r["cpu_s"] for r in runs),
        "mean_map": [round(sum(r[k]["mAP"] for r in runs) / len(runs), 3) for k in ("before", "after")],
        "mean_r1": [round(sum(r[k]["R@1"] for r in runs) / len(runs), 3) for k in ("before", "after")],
    }
    line = json.dumps(result)
    print(line)
    os.makedirs(os.path.join(REPO, "benchmarks", "results"), exist_ok=True)
    name = "default_job.json" if args.tag is None else f"default_job_{args.tag}.json"
    tmp = os.path.join(REPO, "benchmarks", "results", f".{name}.tmp-{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(line + "\n")
    os.replace(tmp, os.path.join(REPO, "benchmarks", "results", name))


if __name__ == "__main__":
    main()
