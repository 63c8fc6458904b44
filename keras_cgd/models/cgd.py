"""CGD: a backbone, combined global descriptors and an auxiliary classifier."""

import keras

from keras_cgd.api_export import keras_cgd_export
from keras_cgd.layers.combined_global_descriptor import CombinedGlobalDescriptor
from keras_cgd.losses.batch_hard_triplet import BatchHardTripletLoss
from keras_cgd.losses.smoothed_cross_entropy import SmoothedCrossEntropy
from keras_cgd.models.backbones import supports_last_stride
from keras_cgd.models.embedding_model import EmbeddingModel
from keras_cgd.models.embedding_model import _check_num_classes


@keras_cgd_export
class CGDModel(EmbeddingModel):
    """Combination of Multiple Global Descriptors (Jun et al. 2019).

    images → normalisation → backbone (last stage stride 1) →
    `CombinedGlobalDescriptor` → `embedding` (L2-normalised);
    raw first descriptor → BatchNorm → Dense → `logits`.

    Args:
        num_classes: int, classes of the auxiliary classifier (training
            classes), or None for an embedding-only model.
        backbone: name (see `keras_cgd.models.list_backbones`) or keras.Model.
        weights: None, "imagenet" or a weights-file path (named backbones).
        input_shape: `(H, W, 3)`; `(None, None, 3)` for any size.
        descriptors: e.g. "SMG", "SG", "MG" (first letter feeds the
            classifier).
        embedding_dim: total embedding size (1536 in the paper).
        gem_p: GeM exponent (3). trainable_p: learn it (False).
        last_stride: 1 (paper) for ResNets; None keeps the backbone's stride
            (the default for backbones that do not support 1).
        freeze_bn_statistics: freeze backbone BN statistics while
            gamma/beta train (the reference reimplementation does).
        mean, std, channel_order: override the backbone's normalisation.
        learning_rate: Adam learning rate of the default recipe (1e-4).
        margin, label_smoothing, temperature: loss hyper-parameters of the
            default recipe (0.1, 0.1, 0.5).
        backbone_strides: per-stage strides of a tv_resnet* backbone, e.g.
            (1, 2, 1, 2) for leftthomas/CGD's checkpoints (stage 3 at stride
            1); None keeps the backbone's (then `last_stride` applies).
        classifier_bn_momentum, classifier_bn_epsilon: the auxiliary head's
            BatchNormalization, `moving = momentum·moving + (1 − momentum)·batch`
            and `x̂ = (x − μ)/sqrt(σ² + ε)`. Defaults 0.9 and 1e-5 are PyTorch's
            `BatchNorm1d` (torch momentum 0.1 = Keras 0.9), as the reference
            (leftthomas/CGD) trains; Keras' own defaults are 0.99 and 1e-3.

    Outputs: `{"embedding": (batch, embedding_dim), "logits": (batch,
    num_classes)}`, both float32 whatever the dtype policy.
    """

    def __init__(
        self,
        num_classes,
        backbone="resnet50",
        weights=None,
        input_shape=(224, 224, 3),
        descriptors="SMG",
        embedding_dim=1536,
        gem_p=3.0,
        trainable_p=False,
        last_stride=1,
        freeze_bn_statistics=False,
        mean=None,
        std=None,
        channel_order=None,
        learning_rate=1e-4,
        margin=0.1,
        label_smoothing=0.1,
        temperature=0.5,
        backbone_strides=None,
        classifier_bn_momentum=0.9,
        classifier_bn_epsilon=1e-5,
        **kwargs,
    ):
        _check_num_classes(num_classes)
        if not 0.0 <= classifier_bn_momentum < 1.0 or not classifier_bn_epsilon > 0:
            raise ValueError(
                "Invalid values received for arguments `classifier_bn_momentum` and "
                "`classifier_bn_epsilon`. Expected a momentum in [0, 1) and an epsilon > 0. "
                f"Received: classifier_bn_momentum={classifier_bn_momentum!r}, "
                f"classifier_bn_epsilon={classifier_bn_epsilon!r}"
            )
        if last_stride == 1 and not supports_last_stride(backbone):
            last_stride = None
        init_config = self._config_from_arguments(locals())
        descriptor = CombinedGlobalDescriptor(
            descriptors=descriptors,
            embedding_dim=embedding_dim,
            gem_p=gem_p,
            trainable_p=trainable_p,
            name="cgd",
        )
        inputs, feature_map, normalization = self._build_trunk(
            backbone, input_shape, weights, last_stride, freeze_bn_statistics, mean, std, channel_order,
            backbone_strides=backbone_strides,
        )
        embedding, first = descriptor(feature_map)
        logits = None
        if num_classes is not None:
            x = keras.layers.BatchNormalization(
                momentum=classifier_bn_momentum, epsilon=classifier_bn_epsilon, name="classifier_bn"
            )(first)
            logits = keras.layers.Dense(num_classes, name="classifier")(x)
        self._finish_functional_init(inputs, embedding, logits, init_config, normalization, **kwargs)

    def default_compile_arguments(self):
        cfg = self._init_config
        loss = {"embedding": BatchHardTripletLoss(margin=cfg["margin"])}
        weights = {"embedding": 1.0}
        metrics = None
        if cfg["num_classes"] is not None:
            loss["logits"] = SmoothedCrossEntropy(
                label_smoothing=cfg["label_smoothing"], temperature=cfg["temperature"]
            )
            weights["logits"] = 1.0
            metrics = {"logits": [keras.metrics.SparseCategoricalAccuracy(name="accuracy")]}
        return keras.optimizers.Adam(cfg["learning_rate"]), loss, weights, metrics
