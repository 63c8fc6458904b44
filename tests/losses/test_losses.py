import keras
import numpy as np
import pytest

from keras_cgd.losses import BatchHardTripletLoss
from keras_cgd.losses import MarginLoss
from keras_cgd.losses import SmoothedCrossEntropy
from keras_cgd.losses import batch_hard_triplet_loss
from keras_cgd.losses import distance_weighted_sampling
from keras_cgd.losses.margin import margin_loss_from_masks
from tests.testing import run_serialization_test
from tests.testing import to_numpy


def l2n(v):
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def triplet_bruteforce(emb, labels, margin):
    n = len(labels)
    losses = []
    for i in range(n):
        pos = [np.linalg.norm(emb[i] - emb[j]) for j in range(n) if j != i and labels[j] == labels[i]]
        neg = [np.linalg.norm(emb[i] - emb[k]) for k in range(n) if labels[k] != labels[i]]
        if pos and neg:
            losses.append(max(0.0, max(pos) - min(neg) + margin))
    return float(np.mean(losses)) if losses else 0.0


@pytest.mark.parametrize("seed", range(4))
def test_batch_hard_triplet_matches_bruteforce(seed):
    rng = np.random.default_rng(seed)
    emb = l2n(rng.normal(size=(14, 6))).astype("float32")
    # class 9 has a single image (no positive): it must be left out.
    labels = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2, 3, 3, 4, 4, 9])
    for margin in (0.1, 0.5):
        got = float(to_numpy(BatchHardTripletLoss(margin=margin)(labels, emb)))
        assert got == pytest.approx(triplet_bruteforce(emb, labels, margin), rel=1e-5, abs=1e-6)


def test_batch_hard_triplet_degenerate_batches():
    emb = l2n(np.random.rand(4, 3)).astype("float32")
    # no anchor has a negative / no anchor has a positive: loss 0, not NaN
    assert float(to_numpy(BatchHardTripletLoss()(np.zeros(4), emb))) == 0.0
    assert float(to_numpy(BatchHardTripletLoss()(np.arange(4), emb))) == 0.0
    # labels given as (batch, 1) are accepted
    lab = np.array([0, 0, 1, 1])
    a = float(np.mean(to_numpy(batch_hard_triplet_loss(lab[:, None], emb))))
    assert a == pytest.approx(triplet_bruteforce(emb, lab, 0.1), rel=1e-5, abs=1e-6)


def test_batch_hard_triplet_gradient_is_finite_with_duplicates():
    import keras

    emb = keras.Variable(np.tile(l2n(np.random.rand(2, 4)), (2, 1)).astype("float32"))
    labels = np.array([0, 1, 0, 1])
    if keras.backend.backend() == "jax":
        import jax

        g = jax.grad(lambda e: keras.ops.mean(batch_hard_triplet_loss(labels, e)))(emb.value)
    else:
        import tensorflow as tf

        with tf.GradientTape() as tape:
            loss = keras.ops.mean(batch_hard_triplet_loss(labels, emb.value))
        g = tape.gradient(loss, emb.value)
    assert np.all(np.isfinite(to_numpy(g)))


def smoothed_ce_numpy(labels, logits, eps, tau):
    z = logits / tau
    z = z - z.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    out = []
    for i, y in enumerate(labels):
        out.append((1 - eps) * -logp[i, y] + eps * np.mean(-logp[i]))
    return np.mean(out)


@pytest.mark.parametrize("eps, tau", [(0.1, 0.5), (0.0, 1.0), (0.3, 2.0)])
def test_smoothed_cross_entropy_matches_numpy(eps, tau):
    logits = np.random.randn(7, 5).astype("float32") * 3
    labels = np.random.randint(0, 5, 7)
    got = float(to_numpy(SmoothedCrossEntropy(eps, tau)(labels, logits)))
    assert got == pytest.approx(smoothed_ce_numpy(labels, logits.astype("float64"), eps, tau), rel=1e-5)


def test_smoothed_cross_entropy_without_smoothing_is_keras_ce():
    logits = np.random.randn(6, 4).astype("float32")
    labels = np.random.randint(0, 4, 6)
    ref = keras.losses.SparseCategoricalCrossentropy(from_logits=True)(labels, logits)
    got = SmoothedCrossEntropy(0.0, 1.0)(labels, logits)
    assert float(to_numpy(got)) == pytest.approx(float(to_numpy(ref)), rel=1e-5)


def margin_numpy(d, pos, neg, beta, alpha):
    terms = []
    n = d.shape[0]
    for i in range(n):
        for j in range(n):
            if pos[i, j]:
                terms.append(max(0.0, d[i, j] - beta + alpha))
            for _ in range(int(neg[i, j])):  # counts: a negative drawn twice is two terms
                terms.append(max(0.0, beta - d[i, j] + alpha))
    nonzero = sum(t > 0 for t in terms)
    return sum(terms) / max(nonzero, 1)


def dws_weights_numpy(emb, ids, cutoff=0.5, nonzero_cutoff=1.4):
    n, dim = emb.shape
    d = np.sqrt(((emb[:, None] - emb[None]) ** 2).sum(-1) + 1e-8)
    dc = np.maximum(d, cutoff)
    logw = (2 - dim) * np.log(dc) - (dim - 3) / 2 * np.log(np.maximum(1 - dc**2 / 4, 1e-8))
    w = np.zeros((n, n))
    for i in range(n):
        elig = [j for j in range(n) if ids[j] != ids[i] and d[i, j] < nonzero_cutoff]
        if not elig:
            elig = [j for j in range(n) if ids[j] != ids[i]]
            for j in elig:
                w[i, j] = 1.0
        else:
            m = max(logw[i, j] for j in elig)
            for j in elig:
                w[i, j] = np.exp(logw[i, j] - m)
        w[i] /= w[i].sum()
    return d, w


def test_margin_sampling_masks_follow_the_rules():
    rng = np.random.default_rng(0)
    ids = np.repeat(np.arange(5), 3)  # repeated augmentation: 3 copies each
    emb = l2n(rng.normal(size=(15, 8))).astype("float32")
    d, pos, neg = (to_numpy(t) for t in distance_weighted_sampling(emb, ids, seed=3))
    d_np, w = dws_weights_numpy(emb.astype("float64"), ids)
    np.testing.assert_allclose(d, d_np, atol=1e-5)
    for i in range(15):
        same = [j for j in range(15) if ids[j] == ids[i] and j != i]
        assert sorted(np.flatnonzero(pos[i])) == same
        chosen = np.flatnonzero(neg[i])
        candidates = np.flatnonzero(w[i] > 0)
        assert neg[i].sum() == len(same)  # as many negatives as positives
        if len(candidates) >= len(same):
            assert neg[i].max() == 1  # without replacement
        assert set(chosen) <= set(candidates)
    # the loss on these pairs equals the brute-force sum
    got = float(np.mean(to_numpy(margin_loss_from_masks(d, pos, neg, 1.2, 0.2))))
    assert got == pytest.approx(margin_numpy(d_np, pos, neg, 1.2, 0.2), rel=1e-5)


def compiled_negative_sampler(emb, ids, seed):
    """A function drawing `distance_weighted_sampling(emb, ids)[2]` (the negative counts)
    with a fresh state of one `SeedGenerator` per call, compiled once (tf.function / jit),
    so that thousands of draws are cheap."""
    gen = keras.random.SeedGenerator(seed)
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        fn = tf.function(lambda: distance_weighted_sampling(emb, ids, seed=gen)[2])
        return lambda: fn().numpy()
    if keras.backend.backend() == "jax":
        import jax

        def step(state):
            with keras.StatelessScope(state_mapping=[(gen.state, state)]) as scope:
                neg = distance_weighted_sampling(emb, ids, seed=gen)[2]
                return neg, scope.get_current_value(gen.state)

        jitted = jax.jit(step)
        holder = [gen.state.value]

        def draw():
            neg, holder[0] = jitted(holder[0])
            return np.asarray(neg)

        return draw
    return lambda: to_numpy(distance_weighted_sampling(emb, ids, seed=gen)[2])


def test_margin_sampling_distribution_matches_weights():
    # One positive per anchor, so each draw picks one negative: the empirical
    # frequencies must match the normalised inverse-density weights.
    rng = np.random.default_rng(1)
    ids = np.array([0, 0, 1, 2, 3, 4, 5, 6])
    emb = l2n(rng.normal(size=(8, 4))).astype("float32")
    _, w = dws_weights_numpy(emb.astype("float64"), ids)
    sample = compiled_negative_sampler(emb, ids, 7)
    counts = np.zeros(8)
    draws = 3000
    for _ in range(draws):
        counts += sample()[0]
    freq = counts / draws
    assert np.all(freq[w[0] == 0] == 0)
    np.testing.assert_allclose(freq, w[0], atol=0.035)


def test_margin_fallback_uniform_when_no_negative_is_close():
    # All other ids are far (antipodal): nothing below 1.4, uniform fallback.
    emb = np.array([[1, 0], [1, 0], [-1, 0], [-1, 0.0]], "float32")
    ids = np.array([0, 0, 1, 1])
    _, pos, neg = (to_numpy(t) for t in distance_weighted_sampling(emb, ids, seed=0))
    assert neg.sum(axis=1).tolist() == [1, 1, 1, 1]
    assert not np.any(neg & (ids[:, None] == ids[None]))


def reference_sampler_numpy(w, ids, rng):
    """The MultiGrain rule for one draw: per anchor, len(same) - 1 negatives from p = w[i],
    without replacement, or with replacement when that is impossible."""
    n = len(ids)
    counts = np.zeros((n, n), int)
    for i in range(n):
        k = int(np.sum(ids == ids[i])) - 1
        try:
            picks = rng.choice(n, k, p=w[i], replace=False)
        except ValueError:  # fewer non-zero entries in p than k
            picks = rng.choice(n, k, p=w[i])
        np.add.at(counts[i], picks, 1)
    return counts


def test_margin_sampling_with_replacement_when_too_few_negatives_are_eligible():
    # Instance 0 has 3 copies (2 positives each) but only one eligible negative (sample 3);
    # sample 4 is antipodal (d = 2 > 1.4). The reference draws that negative twice.
    emb = l2n(np.array([[1, 0.0, 0], [1, 0.05, 0], [1, 0, 0.05], [0.3, 1, 0], [-1, 0, 0]])).astype("float32")
    ids = np.array([0, 0, 0, 1, 2])
    _, w = dws_weights_numpy(emb.astype("float64"), ids)
    expected = reference_sampler_numpy(w, ids, np.random.default_rng(0))
    _, pos, neg = (to_numpy(t) for t in distance_weighted_sampling(emb, ids, seed=0))
    assert neg[:3].tolist() == expected[:3].tolist() == [[0, 0, 0, 2, 0]] * 3
    # uniform fallback (nothing eligible) with fewer negatives than positives: also repeated
    far = np.array([[1, 0], [1, 0], [1, 0.01], [-1, 0]], "float32")
    _, _, neg = (to_numpy(t) for t in distance_weighted_sampling(l2n(far), np.array([0, 0, 0, 1]), seed=0))
    assert neg[:3, 3].tolist() == [2, 2, 2] and neg[:3, :3].sum() == 0
    # the loss counts a pair drawn twice twice
    d = to_numpy(distance_weighted_sampling(emb, ids, seed=0)[0])
    got = float(np.mean(to_numpy(margin_loss_from_masks(d, pos, expected, 1.2, 0.2))))
    assert got == pytest.approx(margin_numpy(d, pos, expected, 1.2, 0.2), rel=1e-5)


def test_margin_sampling_with_replacement_follows_the_reference_distribution():
    # 4 positives per anchor of instance 0 and 3 eligible negatives of unequal weights:
    # counts of the reference rule are Multinomial(4, w); compare mean counts over draws.
    rng = np.random.default_rng(3)
    base = np.array([1.0, 0, 0, 0])
    copies = [base + 0.02 * rng.normal(size=4) for _ in range(5)]
    negs = [np.array([0.8, 0.6, 0, 0]), np.array([0.2, 1, 0, 0]), np.array([0.1, 0.7, 0.7, 0])]
    emb = l2n(np.stack(copies + negs)).astype("float32")
    ids = np.array([0] * 5 + [1, 2, 3])
    _, w = dws_weights_numpy(emb.astype("float64"), ids)
    assert np.count_nonzero(w[0]) == 3 and w[0, 5:].min() > 0.05
    draws = 1000
    ref = np.mean([reference_sampler_numpy(w, ids, rng)[0] for _ in range(draws)], axis=0)
    sample = compiled_negative_sampler(emb, ids, 11)
    ours = np.zeros(8)
    for _ in range(draws):
        neg = sample()
        assert neg[0].sum() == 4
        ours += neg[0]
    ours /= draws
    np.testing.assert_allclose(ref, 4 * w[0], atol=0.12)  # the brute force is Multinomial(4, w)
    np.testing.assert_allclose(ours, ref, atol=0.15)
    np.testing.assert_allclose(ours, 4 * w[0], atol=0.12)


def test_margin_loss_class_and_bound_beta():
    loss = MarginLoss(seed=0)
    ids = np.repeat(np.arange(4), 2)
    emb = l2n(np.random.randn(8, 5)).astype("float32")
    value = float(to_numpy(loss(ids, emb)))
    assert np.isfinite(value) and value >= 0
    beta = keras.Variable(0.7)
    loss.bind(beta, keras.random.SeedGenerator(0))
    d, pos, neg = (to_numpy(t) for t in distance_weighted_sampling(emb, ids, seed=keras.random.SeedGenerator(0)))
    expected = margin_numpy(d, pos, neg, 0.7, 0.2)
    assert float(to_numpy(loss(ids, emb))) == pytest.approx(expected, rel=1e-5)
    run_serialization_test(MarginLoss(alpha=0.3, beta_lr_multiplier=0.1))
    with pytest.raises(ValueError, match="cutoff=1.5"):
        MarginLoss(cutoff=1.5)


def test_loss_serialization_and_errors():
    run_serialization_test(BatchHardTripletLoss(margin=0.3))
    run_serialization_test(SmoothedCrossEntropy(0.2, 0.7))
    with pytest.raises(ValueError, match="Received: margin=-1"):
        BatchHardTripletLoss(margin=-1)
    with pytest.raises(ValueError, match="Received: temperature=0"):
        SmoothedCrossEntropy(temperature=0)
    with pytest.raises(ValueError, match=r"labels.shape=\(2, 2\)"):
        batch_hard_triplet_loss(np.zeros((2, 2)), np.zeros((2, 3), "float32"))
