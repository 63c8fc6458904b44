"""Recall@{1,10,100,1000} on SOP-sized embeddings vs faiss.IndexFlatIP search.

Data: 60,502 x 512 float32 L2-normalised embeddings in about 11,000 classes of 2-9
images (the Stanford Online Products test set's shape), clustered so that the
recalls are not trivial. Every query searches the other 60,501.

Timed: `keras_cgd.evaluation.recall_at_k(x, labels, ks=(1, 10, 100, 1000))`
(chunked top-k + recall per chunk) and `faiss.IndexFlatIP.search(x, 1000)`
(search only; adding vectors is not timed). Best of `--repeats` runs each,
interleaved; wall-clock and process CPU seconds (all threads) are reported,
the latter being steadier on a shared machine.

Peak memory: "extra" is the process's peak resident set size (VmHWM, reset
before the run through /proc/self/clear_refs) minus the resident set size just
before the run, i.e. everything the call allocated including BLAS buffers and
thread stacks. A second untimed run reports tracemalloc's peak (NumPy's
allocations only).

Usage: python benchmarks/retrieval_eval.py [--n 60502] [--repeats 2]
Prints one JSON line and writes benchmarks/results/retrieval_eval.json.
"""

import argparse
import json
import os
import platform
import sys
import time
import tracemalloc

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from keras_cgd.evaluation import recall_at_k  # noqa: E402

KS = (1, 10, 100, 1000)


def _status(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not found in /proc/self/status")


def _reset_peak():
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current RSS


def sop_like(n, dim, seed=0):
    rng = np.random.default_rng(seed)
    sizes = []
    while sum(sizes) < n:
        sizes.append(int(rng.integers(2, 10)))
    sizes[-1] -= sum(sizes) - n
    if sizes[-1] < 2:  # merge a singleton class into the previous one
        last = sizes.pop()
        sizes[-1] += last
    labels = np.repeat(np.arange(len(sizes)), sizes).astype(np.int32)
    centers = rng.standard_normal((len(sizes), dim), dtype=np.float32)
    x = centers[labels] + 2.5 * rng.standard_normal((n, dim), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    perm = rng.permutation(n)
    return np.ascontiguousarray(x[perm]), labels[perm], len(sizes)


def measure(fn):
    _reset_peak()
    base = _status("VmRSS")
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    return out, (seconds, cpu), _status("VmHWM") - base


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=60502)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--no-tracemalloc", action="store_true")
    args = parser.parse_args()

    import faiss

    x, labels, num_classes = sop_like(args.n, args.dim)
    index = faiss.IndexFlatIP(args.dim)
    index.add(x)
    ours, theirs, ours_mem, faiss_mem, recalls = [], [], [], [], None
    for _ in range(args.repeats):
        recalls, seconds, mem = measure(lambda: recall_at_k(x, labels, KS))
        ours.append(seconds)
        ours_mem.append(mem)
        (_, _), seconds, mem = measure(lambda: index.search(x, max(KS)))
        theirs.append(seconds)
        faiss_mem.append(mem)
    traced = None
    if not args.no_tracemalloc:
        tracemalloc.start()
        recall_at_k(x, labels, KS)
        traced = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    result = {
        "benchmark": "retrieval_eval",
        "n": args.n,
        "dim": args.dim,
        "num_classes": num_classes,
        "ks": list(KS),
        "recall": {str(k): round(v, 4) for k, v in recalls.items()},
        "keras_cgd_recall_s": round(min(t for t, _ in ours), 2),
        "faiss_flatip_search_s": round(min(t for t, _ in theirs), 2),
        "ratio": round(min(t for t, _ in ours) / min(t for t, _ in theirs), 3),
        "keras_cgd_cpu_s": round(min(c for _, c in ours), 2),
        "faiss_cpu_s": round(min(c for _, c in theirs), 2),
        "cpu_ratio": round(min(c for _, c in ours) / min(c for _, c in theirs), 3),
        "keras_cgd_runs_s": [round(t, 2) for t, _ in ours],
        "faiss_runs_s": [round(t, 2) for t, _ in theirs],
        "load_average_1min": round(os.getloadavg()[0], 2),
        "keras_cgd_extra_peak_rss_mib": round(max(ours_mem) / 2**20, 1),
        "keras_cgd_tracemalloc_peak_mib": None if traced is None else round(traced / 2**20, 1),
        "faiss_extra_peak_rss_mib": round(max(faiss_mem) / 2**20, 1),
        "memory_method": "VmHWM after /proc/self/clear_refs reset minus VmRSS before the call",
        "cpus": os.cpu_count(),
        "faiss_threads": faiss.omp_get_max_threads(),
        "numpy": np.__version__,
        "faiss": faiss.__version__,
        "python": platform.python_version(),
    }
    line = json.dumps(result)
    print(line)
    out_dir = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "retrieval_eval.json"), "w") as f:
        f.write(line + "\n")


if __name__ == "__main__":
    main()
