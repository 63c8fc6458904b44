"""Approximate FAISS factories vs exact search on 1,000,000 clustered 256-d vectors.

Data: `--n` (default 1,000,000) L2-normalised vectors of dimension `--dim`
(256) in n / 100 clusters: each vector is `normalise(c + s * e)` with a unit
random centre `c`, `e` ~ N(0, I / D) and `s = 0.6`, so a vector's neighbours
are mostly in its cluster and are ordered by isotropic noise (a hard case for
compressed codes). `--queries` (1,000) queries are drawn the same way (not in
the base). Metric: cosine.

Baseline: `keras_cgd.index.ExactIndex` (the chunked exact top-k), timed in the
same run, twice (before and after the approximate indexes; the slower is
reported too). Its results are the ground truth of recall@10 = |approx top-10 ∩
exact top-10| / 10, averaged over the queries.

Indexes (`keras_cgd.index.FaissIndex`, trained on a random sample of
`default_train_size` vectors, added in shards of 100,000): `IVF<nlist>,Flat`,
`IVF<nlist>,PQ32,Refine(SQ8)` (IVF-PQ with 32-byte codes whose `k_factor * 10`
best candidates are re-ranked with 8-bit scalar codes; `k_factor=1` re-orders
IVF-PQ's own top 10, so its recall is plain IVF-PQ's) and `HNSW32`, with
`nlist` = the power of two nearest sqrt(n) (1024 for 1M). Each is searched at several `nprobe` / `efSearch` /
`k_factor` settings; for each factory the report names the fastest setting
reaching recall@10 >= 0.9 and its speed-up over exact search. Queries/s:
best of `--repeats` passes over all queries (batch search, all threads).
Memory: the estimate of `estimate_faiss_memory` before building, the index's
resident-set growth after building, and FAISS's serialised size.

Usage: python benchmarks/ann_index.py [--n 1000000] [--queries 1000] [--repeats 3]
Prints one JSON line and writes benchmarks/results/ann_index.json.
"""

import argparse
import gc
import json
import os
import platform
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from keras_cgd.index import ExactIndex  # noqa: E402
from keras_cgd.index import FaissIndex  # noqa: E402
from keras_cgd.index import estimate_faiss_memory  # noqa: E402

K = 10
TARGET_RECALL = 0.9
TARGET_SPEEDUP = 20.0


def _rss():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def clustered(n, dim, seed, centres=None, spread=0.6, chunk=100_000):
    """`n` unit vectors around `centres` (made when None: n / 100 of them)."""
    rng = np.random.default_rng(seed)
    if centres is None:
        centres = rng.standard_normal((max(n // 100, 1), dim), dtype=np.float32)
        centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    out = np.empty((n, dim), np.float32)
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        x = centres[rng.integers(0, len(centres), stop - start)]
        x = x + (spread / np.sqrt(dim)) * rng.standard_normal((stop - start, dim), dtype=np.float32)
        out[start:stop] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out, centres


def timed_search(index, queries, repeats, **params):
    best, result = np.inf, None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = index.search(queries, K, **params)
        best = min(best, time.perf_counter() - t0)
    return result, len(queries) / best


def recall_at_k(found, truth):
    return float(np.mean([len(np.intersect1d(f, t)) / K for f, t in zip(found, truth)]))


def exact_baseline(base, queries, repeats):
    index = ExactIndex()
    index.add(base)
    (ids, _), qps = timed_search(index, queries, repeats)
    return index, ids, qps


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--factories", default="ivf_flat,ivf_pq,hnsw",
                        help="comma-separated subset of ivf_flat, ivf_pq, hnsw")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                                      "ann_index.json"))
    args = parser.parse_args()
    import faiss

    t_start = time.perf_counter()
    base, centres = clustered(args.n, args.dim, seed=0)
    queries, _ = clustered(args.queries, args.dim, seed=1, centres=centres)
    nlist = int(2 ** round(np.log2(np.sqrt(args.n))))

    exact, truth, exact_qps = exact_baseline(base, queries, args.repeats)
    exact_bytes = 2 * base.nbytes + 8 * args.n  # the vectors + their normalised copy + ids
    del exact
    gc.collect()

    plans = {
        "ivf_flat": (f"IVF{nlist},Flat", [{"nprobe": p} for p in (1, 2, 4, 8, 16)]),
        # k_factor=1 re-ranks IVF-PQ's own top-10 (the same set): plain IVF-PQ's recall.
        "ivf_pq": (f"IVF{nlist},PQ32,Refine(SQ8)",
                   [{"nprobe": p, "k_factor": f} for p in (4, 8, 16) for f in (1, 4, 8, 16)]),
        "hnsw": ("HNSW32", [{"ef_search": e} for e in (16, 32, 64, 128)]),
    }
    results = {}
    for name in [f.strip() for f in args.factories.split(",") if f.strip()]:
        factory, settings = plans[name]
        estimate = estimate_faiss_memory(factory, args.n, args.dim)
        gc.collect()
        rss0 = _rss()
        index = FaissIndex(dimension=args.dim, factory=factory)
        t0 = time.perf_counter()
        if not index.is_trained:
            index.train(base, max_samples=index.default_train_size(args.n))
        train_s = time.perf_counter() - t0
        for start in range(0, args.n, 100_000):  # add in shards, as from `keras-cgd embed`
            index.add(base[start:start + 100_000])
        build_s = time.perf_counter() - t0
        gc.collect()
        resident = _rss() - rss0
        serialised = int(faiss.serialize_index(index._index).nbytes) + 8 * args.n
        runs = []
        for params in settings:
            (ids, _), qps = timed_search(index, queries, args.repeats, **params)
            runs.append({**params, "recall_at_10": round(recall_at_k(ids, truth), 4), "qps": round(qps, 1),
                         "speedup": round(qps / exact_qps, 1)})
        good = [r for r in runs if r["recall_at_10"] >= TARGET_RECALL]
        best = max(good, key=lambda r: r["qps"]) if good else max(runs, key=lambda r: r["recall_at_10"])
        results[name] = {
            "factory": factory,
            "train_s": round(train_s, 1),
            "build_s": round(build_s, 1),
            "memory_estimate_mib": round(estimate / 2**20, 1),
            "memory_resident_mib": round(resident / 2**20, 1),
            "memory_serialised_mib": round(serialised / 2**20, 1),
            "runs": runs,
            "best": best,
            "meets_target": bool(good) and best["speedup"] >= TARGET_SPEEDUP,
        }
        print(json.dumps({name: results[name]}), file=sys.stderr, flush=True)
        del index
        gc.collect()

    # The exact baseline again, after the approximate runs (the machine is shared).
    exact, _, exact_qps_after = exact_baseline(base, queries, args.repeats)
    del exact
    for r in results.values():
        for run in r["runs"] + [r["best"]]:
            run["speedup_vs_slower_exact"] = round(run["qps"] / min(exact_qps, exact_qps_after), 1)
    report = {
        "benchmark": "ann_index",
        "n": args.n,
        "dim": args.dim,
        "queries": args.queries,
        "k": K,
        "clusters": len(centres),
        "nlist": nlist,
        "exact_qps": round(exact_qps, 1),
        "exact_qps_after": round(exact_qps_after, 1),
        "exact_memory_mib": round(exact_bytes / 2**20, 1),
        "targets": {"recall_at_10": TARGET_RECALL, "speedup": TARGET_SPEEDUP},
        "indexes": results,
        "faiss_version": faiss.__version__,
        "faiss_threads": faiss.omp_get_max_threads(),
        "cpus": os.cpu_count(),
        "machine": platform.machine(),
        "seconds": round(time.perf_counter() - t_start, 1),
    }
    line = json.dumps(report)
    print(line)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        f.write(line + "\n")


if __name__ == "__main__":
    main()
