"""A small CGD model trained from scratch on real images retrieves better on classes
it never saw (the CUB protocol: disjoint train and test classes)."""

import keras
import numpy as np

import keras_cgd
from keras_cgd.data import class_balanced_batches
from keras_cgd.data import load_builtin


def recall_at_1_bruteforce(embeddings, labels):
    hits = 0
    for i in range(len(labels)):
        d = np.sum((embeddings - embeddings[i]) ** 2, axis=1)
        d[i] = np.inf
        hits += labels[int(np.argmin(d))] == labels[i]
    return hits / len(labels)


def map_bruteforce(embeddings, labels):
    """Mean average precision, each test image querying all the others (a plain loop)."""
    labels = np.asarray(labels)
    aps = []
    for i in range(len(labels)):
        d = np.sum((embeddings - embeddings[i]) ** 2, axis=1)
        d[i] = np.inf
        relevant = labels[np.argsort(d, kind="stable")[:-1]] == labels[i]
        ranks = np.flatnonzero(relevant) + 1
        aps.append(np.mean(np.arange(1, len(ranks) + 1) / ranks))
    return float(np.mean(aps))


def test_cgd_training_improves_retrieval_on_unseen_classes():
    # photo_views: regions of 14 photos for training, of 6 other photos for testing.
    data = load_builtin("photo_views", image_size=64)
    assert not set(data.train_labels) & set(data.test_labels)
    keras.utils.set_random_seed(0)
    model = keras_cgd.build_model("cgd_tiny", num_classes=data.num_train_classes)
    e0 = model.predict(data.test_images, verbose=0)["embedding"]
    batches = class_balanced_batches(
        data.train, classes_per_batch=16, images_per_class=4, image_size=64,
        augmentation="multigrain", seed=0,
    )
    model.fit(batches, epochs=8, verbose=0)
    e1 = model.predict(data.test_images, verbose=0)["embedding"]
    y = data.test_labels
    r0, r1 = recall_at_1_bruteforce(e0, y), recall_at_1_bruteforce(e1, y)
    m0, m1 = map_bruteforce(e0, y), map_bruteforce(e1, y)
    print(f"unseen classes: R@1 {r0:.3f} -> {r1:.3f}, mAP {m0:.3f} -> {m1:.3f}")
    # mAP ranks every image of the class, so it is the steady signal. Measured 2026-12-01,
    # seeds 0 and 1: mAP +0.109, +0.093 on JAX and +0.123, +0.086 on TF; R@1 (one hit is
    # 1/288) moved +0.010, -0.003 on JAX and +0.063, +0.059 on TF in the same runs, as the
    # random network already finds many nearest neighbours: it must only not collapse.
    assert m1 >= m0 + 0.05, (m0, m1)
    assert r1 >= r0 - 0.02, (r0, r1)
