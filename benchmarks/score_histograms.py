"""Cosine scores of matching and non-matching pairs: raw embeddings vs centred + whitened.

Why the raw scores cannot be thresholded (issue 12, item 7): the embeddings of a ReLU
network sit in a narrow cone, so unrelated images score close to 1. This script measures
it for any keras-cgd model and draws the two histograms (the README picture):

    python benchmarks/score_histograms.py --model runs/<run dir or .keras> \\
        [--dataset photo_views] [--png docs/score_histograms.png]

Pairs are the held-out test classes of the dataset (every unordered pair of test
images; "matching" = same class); for a copy-detection dataset (photo_copies, the default
job's), every (attacked copy, reference) pair, "matching" = the copy of that reference. `keras_cgd.evaluation.whiten_model` (one call) centres
(`power=0`) or PCA-whitens (`power=0.5`, MultiGrain) the embeddings, fit on the
training-class images (disjoint from the pairs) or on the gallery (the test images
themselves, unsupervised). For each variant:
the mean and std of both score distributions, ROC AUC over all pairs (how well ONE
global threshold separates them), and the balanced error on the test pairs at the
threshold chosen (equal error rate) on the training-class pairs, i.e. a threshold set on
some classes and used on new ones.

Prints one JSON line; writes `benchmarks/results/score_histograms.json` and the PNG.
"""

import argparse
import json
import os
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _unit(x):
    """Rows of `x` scaled to unit L2 norm (float64)."""
    x = np.asarray(x, np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def pair_scores(embeddings, labels, max_pairs=200_000, seed=0):
    """Cosines of all unordered pairs (subsampled above `max_pairs`) and whether they match."""
    e = _unit(embeddings)
    i, j = np.triu_indices(len(labels), 1)
    if len(i) > max_pairs:
        keep = np.random.default_rng(seed).choice(len(i), max_pairs, replace=False)
        i, j = i[keep], j[keep]
    return np.sum(e[i] * e[j], axis=1), np.asarray(labels)[i] == np.asarray(labels)[j]


def cross_scores(queries, query_labels, references, reference_labels):
    """Cosines of every (query, reference) pair and whether the query is a copy of it."""
    q, r = _unit(queries), _unit(references)
    same = np.asarray(query_labels)[:, None] == np.asarray(reference_labels)[None, :]
    return (q @ r.T).ravel(), same.ravel()


def equal_error_threshold(scores, same):
    """Threshold where the false-match and false-non-match rates are equal (brute force)."""
    candidates = np.unique(np.quantile(scores, np.linspace(0, 1, 2001)))
    fnr = np.array([np.mean(scores[same] < t) for t in candidates])
    fpr = np.array([np.mean(scores[~same] >= t) for t in candidates])
    return float(candidates[int(np.argmin(np.abs(fnr - fpr)))])


def balanced_error(scores, same, threshold):
    return float(0.5 * (np.mean(scores[same] < threshold) + np.mean(scores[~same] >= threshold)))


def describe(test_scores, test_same, fit_scores, fit_same):
    from sklearn.metrics import roc_auc_score

    t = equal_error_threshold(fit_scores, fit_same)
    return {
        "matching_mean": float(test_scores[test_same].mean()),
        "matching_std": float(test_scores[test_same].std()),
        "non_matching_mean": float(test_scores[~test_same].mean()),
        "non_matching_std": float(test_scores[~test_same].std()),
        "roc_auc": float(roc_auc_score(test_same, test_scores)),
        "threshold_from_train_classes": t,
        "balanced_error_at_that_threshold": balanced_error(test_scores, test_same, t),
    }


def _fits_full_whitening(model, part):
    """Whether `part` has more images than twice the embedding's dimensions (a full PCA
    whitening of fewer is (near-)singular)."""
    return len(part) > 2 * (int(model.output["embedding"].shape[-1]) + 1)


def measure(model, splits):
    """The figures for raw and whitened embeddings of `model` on `splits` (in-memory images)."""
    from keras_cgd.evaluation import whiten_model
    from keras_cgd.training import embed

    if splits.train.images is None or splits.test.images is None:
        raise ValueError("This script needs in-memory images (a built-in dataset such as photo_views).")
    variants = {
        "raw": model,
        "centred_on_train_classes": whiten_model(model, splits.train.images, power=0.0),
        "centred_on_gallery": whiten_model(model, splits.test.images, power=0.0),
    }
    for name, part in (("whitened_on_train_classes", splits.train), ("whitened_on_gallery", splits.test)):
        if _fits_full_whitening(model, part):  # else (near-)singular: whitening is not measured
            variants[name] = whiten_model(model, part.images)
    out, scores = {}, {}
    for name, m in variants.items():
        if splits.query is not None:  # copy detection: every (query, reference) pair
            test = cross_scores(embed(m, splits.query), splits.query.labels, embed(m, splits.test), splits.test.labels)
        else:
            test = pair_scores(embed(m, splits.test), splits.test.labels)
        fit = pair_scores(embed(m, splits.train), splits.train.labels)
        out[name] = describe(*test, *fit)
        scores[name] = test
    return out, scores


def draw(scores, figures, path, title, names=("different class", "same class")):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("raw", "raw embeddings"), ("centred_on_train_classes", "centred: whiten_model(model, images, power=0)")]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), sharey=False)
    for ax, (key, label) in zip(axes, panels):
        s, same = scores[key]
        bins = np.linspace(-1.0, 1.0, 161)
        ax.hist(s[~same], bins=bins, density=True, alpha=0.6, label=names[0], color="tab:red")
        ax.hist(s[same], bins=bins, density=True, alpha=0.6, label=names[1], color="tab:green")
        f = figures[key]
        ax.set_title(f"{label}\nnon-matching mean {f['non_matching_mean']:.3f}, matching {f['matching_mean']:.3f}, "
                     f"AUC {f['roc_auc']:.3f}", fontsize=9)
        ax.set_xlabel("cosine score")
        ax.set_xlim(-1, 1)
        lo = float(np.quantile(s, 0.001))
        if key == "raw" and lo > 0.5:  # zoom on a narrow cone
            inset = ax.inset_axes([0.08, 0.3, 0.55, 0.55])
            zoom = np.linspace(lo, 1.0, 81)
            inset.hist(s[~same], bins=zoom, density=True, alpha=0.6, color="tab:red")
            inset.hist(s[same], bins=zoom, density=True, alpha=0.6, color="tab:green")
            inset.set_title(f"zoom [{lo:.3f}, 1]", fontsize=8)
            inset.tick_params(labelsize=7)
            inset.set_yticks([])
    axes[0].set_ylabel("density")
    axes[1].legend(loc="upper left", fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=110)
    os.replace(tmp, path)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help=".keras file or run directory (keras-cgd train)")
    parser.add_argument("--dataset", default="photo_views", help="built-in dataset (default photo_views)")
    parser.add_argument("--label", default=None, help="model name in the figure title (default: the model's name)")
    parser.add_argument("--png", default=os.path.join(REPO, "docs", "score_histograms.png"))
    parser.add_argument("--json", default=os.path.join(REPO, "benchmarks", "results", "score_histograms.json"))
    args = parser.parse_args(argv)

    import keras

    from keras_cgd import training

    start = time.time()
    model = training.load_model(args.model)
    splits = training.resolve_dataset(args.dataset, training.model_image_size(model))
    figures, scores = measure(model, splits)
    result = {
        "benchmark": "score_histograms",
        "model": os.path.relpath(os.path.abspath(args.model), REPO) if args.model.startswith(REPO) else args.model,
        "model_name": model.name,
        "dataset": args.dataset,
        "test_images": len(splits.test),
        "query_images": len(splits.query) if splits.query is not None else 0,
        "train_images": len(splits.train),
        "backend": keras.backend.backend(),
        **figures,
        "not_measured": sorted({"whitened_on_train_classes", "whitened_on_gallery"} - set(figures)),
        "png": os.path.relpath(os.path.abspath(args.png), REPO),
        "seconds": round(time.time() - start, 1),
    }
    label = args.label or model.name
    result["label"] = label
    copies = splits.query is not None
    draw(scores, figures, args.png,
         f"{label} on {args.dataset}: cosine scores of held-out " + ("(copy, reference) pairs" if copies else "test pairs"),
         names=("not a copy", "copy of the reference") if copies else ("different class", "same class"))
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    tmp = args.json + ".tmp"
    with open(tmp, "w") as f:
        json.dump(result, f, indent=2)
    os.replace(tmp, args.json)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, REPO)
    sys.exit(main())
