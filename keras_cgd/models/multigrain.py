"""MultiGrain: one GeM embedding for classes, instances and copies."""

import keras

from keras_cgd.api_export import keras_cgd_export
from keras_cgd.layers.generalized_mean_pooling import GeneralizedMeanPooling
from keras_cgd.layers.l2_normalization import L2Normalization
from keras_cgd.layers.margin_state import MarginState
from keras_cgd.layers.multigrain_color import MultiGrainColorAugmentation
from keras_cgd.losses.margin import MarginLoss
from keras_cgd.models.embedding_model import EmbeddingModel
from keras_cgd.models.embedding_model import _check_num_classes
from keras_cgd.optimizers import CoupledWeightDecaySGD


@keras_cgd_export
class MultiGrainModel(EmbeddingModel):
    """MultiGrain (Berman et al. 2019).

    images → normalisation → backbone → GeM(p) = raw embedding;
    raw embedding → Dense → `logits`; L2(raw embedding) → `embedding`.
    The default recipe trains `λ·CE(logits) + (1−λ)·margin(embedding)` with
    SGD (momentum 0.9, weight decay 1e-4 added to the gradient as PyTorch's SGD
    does, β excluded: `keras_cgd.optimizers.CoupledWeightDecaySGD`) on
    repeated-augmentation batches whose ranking labels are instance ids.

    The model takes images of any size by default (`input_shape=(None, None,
    3)`): MultiGrain trains at 224 and evaluates at s* = 224, 500 or 800 (longest
    side, no crop) with a GeM exponent p* (`keras_cgd.evaluation.embed_images`,
    `select_gem_p`, `finetune_gem_p`). `image_size` is then the resolution it
    reports in `preprocessing` (the size training batches and the exported
    `image_bytes` signature resize to).

    Args:
        num_classes: int (1000 for ImageNet) or None for no classifier.
        backbone, weights, last_stride, freeze_bn_statistics, mean, std,
            channel_order: as in `CGDModel` (MultiGrain keeps the backbone's
            strides: `last_stride=None`).
        input_shape: `(None, None, 3)` (default) for any size, or `(H, W, 3)`.
        image_size: training / default square resolution of a variable-size
            model (224); ignored (taken from `input_shape`) for a fixed-size one.
        gem_p: GeM exponent during training (3; p*=3–5 at test time).
        trainable_p: learn p (False; p* is fine-tuned separately).
        classification_weight: λ in [0, 1] (0.5 in the paper; 1 = CE only).
        learning_rate: SGD learning rate (0.2 at batch 512 in the paper).
        weight_decay: 1e-4, added to the gradient before the momentum
            (PyTorch's rule, as the reference trains). momentum: 0.9.
        margin_alpha: α (0.2). beta_init: β₀ (1.2).
        beta_lr_multiplier: β's learning-rate multiplier (1.0 as the
            official code; the paper's Table B.1 lists 0.1).
        seed: seed of distance-weighted sampling.
        whitening: add MultiGrain's PCA whitening after GeM (a whitened
            checkpoint): `phi = ([e, 1] / (|[e, 1]| + 1e-6) - m) P` with the
            constant bias channel, so the embedding is `phi / |phi|` (C + 1 =
            2049-d for ResNet-50) and the classifier reads `phi`. `m`, `P`
            are non-trainable weights of the `pca_whitening` layer, loaded
            from the checkpoint (`from_checkpoint`). Default False.
        flip_and_color: put `keras_cgd.layers.MultiGrainColorAugmentation` in front
            of the normalisation, so that training flips and colours the batches on the
            accelerator; feed it `repeated_augmentation_batches(...,
            flip_and_color=False)`. It does nothing at inference. Default False (the
            pipelines flip and colour on the CPU).
    """

    def __init__(
        self,
        num_classes,
        backbone="resnet50",
        weights=None,
        input_shape=(None, None, 3),
        image_size=224,
        gem_p=3.0,
        trainable_p=False,
        last_stride=None,
        freeze_bn_statistics=False,
        mean=None,
        std=None,
        channel_order=None,
        classification_weight=0.5,
        learning_rate=0.2,
        weight_decay=1e-4,
        momentum=0.9,
        margin_alpha=0.2,
        beta_init=1.2,
        beta_lr_multiplier=1.0,
        seed=None,
        whitening=False,
        flip_and_color=False,
        **kwargs,
    ):
        _check_num_classes(num_classes)
        if not 0 <= classification_weight <= 1:
            raise ValueError(
                "Invalid value received for argument `classification_weight`. "
                "Expected a float in [0, 1]. "
                f"Received: classification_weight={classification_weight}"
            )
        if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
            raise ValueError(
                "Invalid value received for argument `image_size`. Expected a positive int "
                f"(the default resolution of a variable-size model). Received: image_size={image_size!r}"
            )
        if num_classes is None and classification_weight > 0:
            classification_weight = 0.0
        if not isinstance(flip_and_color, bool):
            raise ValueError(
                "Invalid value received for argument `flip_and_color`. Expected a bool. "
                f"Received: flip_and_color={flip_and_color!r}"
            )
        init_config = self._config_from_arguments(locals())
        augmentation = None
        if flip_and_color:
            augmentation = MultiGrainColorAugmentation(
                seed=None if seed is None else int(seed) + 1, name="flip_and_color"
            )
        inputs, feature_map, normalization = self._build_trunk(
            backbone, input_shape, weights, last_stride, freeze_bn_statistics, mean, std, channel_order,
            augmentation=augmentation,
        )
        raw = GeneralizedMeanPooling(p=gem_p, trainable_p=trainable_p, name="gem")(feature_map)
        if whitening:
            from keras_cgd.evaluation.whitening import PCAWhitening

            # MultiGrain's whitened checkpoints: bias channel, full dimension, L2 with
            # 1e-6 added to the norm (its `l2n`).
            raw = PCAWhitening(
                int(raw.shape[-1]) + 1, add_bias_channel=True, norm_epsilon=1e-6, name="pca_whitening"
            )(raw)
        embedding = L2Normalization(name="l2_normalization")(raw)
        embedding = MarginState(beta_init=beta_init, seed=seed, name="margin_state")(embedding)
        logits = None
        if num_classes is not None:
            logits = keras.layers.Dense(num_classes, name="classifier")(raw)
        self._finish_functional_init(inputs, embedding, logits, init_config, normalization, **kwargs)

    def default_compile_arguments(self):
        cfg = self._init_config
        lam = cfg["classification_weight"]
        loss = {
            "embedding": MarginLoss(
                alpha=cfg["margin_alpha"],
                beta_init=cfg["beta_init"],
                beta_lr_multiplier=cfg["beta_lr_multiplier"],
            )
        }
        weights = {"embedding": 1.0 - lam}
        metrics = None
        if cfg["num_classes"] is not None:
            loss["logits"] = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
            weights["logits"] = lam
            metrics = {"logits": [keras.metrics.SparseCategoricalAccuracy(name="accuracy")]}
        optimizer = CoupledWeightDecaySGD(
            learning_rate=cfg["learning_rate"],
            momentum=float(cfg["momentum"]),
            weight_decay=cfg["weight_decay"] or None,
        )
        return optimizer, loss, weights, metrics
