"""A small CGD model trained from scratch on real images improves Recall@1 on
classes it never saw (the CUB protocol: disjoint train and test classes)."""

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


def test_cgd_training_raises_recall_on_unseen_classes():
    # photo_views: regions of 14 photos for training, of 6 other photos for testing.
    data = load_builtin("photo_views", image_size=64)
    assert not set(data.train_labels) & set(data.test_labels)
    keras.utils.set_random_seed(0)
    model = keras_cgd.build_model("cgd_tiny", num_classes=data.num_train_classes)
    before = recall_at_1_bruteforce(
        model.predict(data.test_images, verbose=0)["embedding"], data.test_labels
    )
    batches = class_balanced_batches(
        data.train, classes_per_batch=16, images_per_class=4, image_size=64,
        augmentation="multigrain", seed=0,
    )
    model.fit(batches, epochs=8, verbose=0)
    after = recall_at_1_bruteforce(
        model.predict(data.test_images, verbose=0)["embedding"], data.test_labels
    )
    print(f"Recall@1 on unseen classes: before {before:.3f}, after {after:.3f}")
    # 3 seeds measured: +0.07 to +0.11; one hit is worth 1/288.
    assert after >= before + 0.03, (before, after)
