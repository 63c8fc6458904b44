"""CGD's combination of multiple global descriptors (SPoC, MAC, GeM)."""

import keras

from keras_cgd.api_export import keras_cgd_export
from keras_cgd.layers.generalized_mean_pooling import GeneralizedMeanPooling
from keras_cgd.layers.l2_normalize import l2_normalize

# Descriptor letter -> (name, GeM exponent); "G" takes the layer's `gem_p`.
DESCRIPTOR_NAMES = {"S": "spoc", "M": "mac", "G": "gem"}


def validate_descriptors(descriptors):
    """Check a CGD descriptor string such as "SMG"; return it upper-cased."""
    if not isinstance(descriptors, str) or not descriptors:
        raise ValueError(
            "Invalid value received for argument `descriptors`. Expected a "
            "non-empty string of distinct letters from 'S' (SPoC), 'M' (MAC) "
            f"and 'G' (GeM), e.g. 'SMG'. Received: descriptors={descriptors!r}"
        )
    letters = descriptors.upper()
    unknown = sorted(set(c for c in letters if c not in DESCRIPTOR_NAMES))
    if unknown:
        raise ValueError(
            "Invalid value received for argument `descriptors`. Unknown "
            f"letter(s) {unknown}; valid letters are 'S' (SPoC), 'M' (MAC) "
            f"and 'G' (GeM). Received: descriptors={descriptors!r}"
        )
    if len(set(letters)) != len(letters):
        raise ValueError(
            "Invalid value received for argument `descriptors`. Each letter "
            "may appear once (valid: any ordering of distinct letters from "
            f"'S', 'M', 'G'). Received: descriptors={descriptors!r}"
        )
    return letters


@keras_cgd_export
class CombinedGlobalDescriptor(keras.layers.Layer):
    r"""Combination of multiple global descriptors (CGD).

    For each letter a_i of `descriptors` (S = SPoC, M = MAC, G = GeM), the
    feature map is pooled into a global descriptor f^(a_i), projected without
    bias and L2-normalised; the branches are concatenated and L2-normalised:

        Φ^(a_i) = W^(i) f^(a_i) / ||W^(i) f^(a_i)||₂
        ψ       = [Φ^(a_1), …, Φ^(a_n)] / ||[Φ^(a_1), …, Φ^(a_n)]||₂

    Each branch has `embedding_dim / n` units. The raw first descriptor
    f^(a_1) (before its projection) is returned too: CGD trains its
    auxiliary classifier on it.

    Args:
        descriptors: string of distinct letters from "S", "M", "G"; the
            first one feeds the classifier. Paper default "SMG" here; the
            paper's best per dataset: CUB "MG", CARS196 and SOP "SG",
            In-shop "GS".
        embedding_dim: int, total size of the combined descriptor, divisible
            by the number of letters. Paper default 1536.
        gem_p: float, GeM exponent for "G" (3 in the paper).
        trainable_p: bool, learn the GeM exponent (fixed in the paper).
        kernel_initializer: initializer of the branch projections.
        clamp: the letters among "S" and "G" whose pooling clamps
            activations at 1e-6 before the power (see
            `GeneralizedMeanPooling`). Default "G": SPoC is a plain mean
            and GeM is clamped. The CGD reference (`leftthomas/CGD`) takes
            SPoC as `x.mean(H, W)` and GeM as `sign(m)|m|^(1/p)` without a
            clamp; on post-ReLU maps a clamped GeM differs from it by at most
            1e-6, and the clamp keeps a trainable or non-integer p free of NaN.
            `clamp=""` is the reference exactly (integer, fixed p only);
            `clamp="SG"` is what earlier keras-cgd versions did (SPoC clamped too, which
            shifts SPoC on backbones with negative activations).

    Call returns: tuple `(embedding, first_descriptor)` with shapes
    `(batch, embedding_dim)` (float32, unit norm) and `(batch, C)`.

    Example:

    >>> x = np.random.rand(2, 7, 7, 32).astype("float32")
    >>> emb, first = CombinedGlobalDescriptor("SG", embedding_dim=64)(x)
    >>> emb.shape, first.shape
    ((2, 64), (2, 32))

    Reference: Jun et al., "Combination of Multiple Global Descriptors for
    Image Retrieval", arXiv:1903.10663 (2019).
    """

    def __init__(
        self,
        descriptors="SMG",
        embedding_dim=1536,
        gem_p=3.0,
        trainable_p=False,
        kernel_initializer="glorot_uniform",
        clamp="G",
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.descriptors = validate_descriptors(descriptors)
        if not isinstance(clamp, str) or set(clamp.upper()) - {"S", "G"}:
            raise ValueError(
                "Invalid value received for argument `clamp`. Expected a string of "
                "letters from 'S' (SPoC) and 'G' (GeM) whose inputs are clamped at "
                f"1e-6, e.g. 'G' (default), 'SG' or ''. Received: clamp={clamp!r}"
            )
        self.clamp = "".join(c for c in "SG" if c in clamp.upper())
        if (
            "G" in self.descriptors
            and "G" not in self.clamp
            and (trainable_p or float(gem_p) != round(float(gem_p)))
        ):
            raise ValueError(
                "Invalid value received for argument `clamp`. An unclamped GeM "
                "needs a fixed integer `gem_p` (a negative activation to a "
                "non-integer power is NaN); add 'G' to `clamp`. Received: "
                f"clamp={clamp!r} with gem_p={gem_p}, trainable_p={trainable_p}"
            )
        n = len(self.descriptors)
        if (
            isinstance(embedding_dim, bool)
            or not isinstance(embedding_dim, int)
            or embedding_dim <= 0
            or embedding_dim % n
        ):
            raise ValueError(
                "Invalid value received for argument `embedding_dim`. "
                f"Expected a positive int divisible by the number of "
                f"descriptors ({n} for {self.descriptors!r}). "
                f"Received: embedding_dim={embedding_dim!r}"
            )
        self.embedding_dim = embedding_dim
        self.gem_p = gem_p
        self.trainable_p = trainable_p
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        exponents = {"S": 1.0, "M": float("inf"), "G": gem_p}
        self.poolings = []
        self.projections = []
        for letter in self.descriptors:
            name = DESCRIPTOR_NAMES[letter]
            self.poolings.append(
                GeneralizedMeanPooling(
                    p=exponents[letter],
                    trainable_p=trainable_p and letter == "G",
                    clamp=letter in self.clamp,
                    dtype=self.dtype_policy,
                    name=f"{name}_pool",
                )
            )
            self.projections.append(
                keras.layers.Dense(
                    embedding_dim // n,
                    use_bias=False,
                    kernel_initializer=self.kernel_initializer,
                    dtype=self.dtype_policy,
                    name=f"{name}_projection",
                )
            )

    def build(self, input_shape):
        for pool, proj in zip(self.poolings, self.projections):
            pool.build(input_shape)
            proj.build(pool.compute_output_shape(input_shape))

    def call(self, inputs):
        branches = []
        first = None
        for pool, proj in zip(self.poolings, self.projections):
            pooled = pool(inputs)
            if first is None:
                first = pooled
            branches.append(l2_normalize(proj(pooled)))
        combined = keras.ops.concatenate(branches, axis=-1)
        embedding = l2_normalize(combined)
        return keras.ops.cast(embedding, self.compute_dtype), first

    def compute_output_shape(self, input_shape):
        first = self.poolings[0].compute_output_shape(input_shape)
        return (input_shape[0], self.embedding_dim), first

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "descriptors": self.descriptors,
                "embedding_dim": self.embedding_dim,
                "gem_p": self.gem_p,
                "trainable_p": self.trainable_p,
                "kernel_initializer": keras.initializers.serialize(
                    self.kernel_initializer
                ),
                "clamp": self.clamp,
            }
        )
        return config
