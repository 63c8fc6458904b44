"""The papers' published PyTorch checkpoints as keras-cgd models: `from_checkpoint`.

Two formats (facts: `reference/pretrained-weights.md`, the reference code of both papers):

- **MultiGrain** (facebookresearch/multigrain; `joint_{1B,3B}_{1.0,0.5}.pth`,
  `joint_3BAA_0.5.pth`): `{"model_state": {...}}` with `features.*` a torchvision ResNet
  without avgpool/fc, `pool.p` the GeM exponent, `classifier.{weight,bias}`, and in a
  whitened model `whitening.pca.pca_P` / `pca_m` (the classifier then reads the 2049-d
  whitened vector). Forward: GeM(p) → [whitening] → classifier; the embedding is the
  L2-normalised (whitened) GeM vector. → `MultiGrainModel` on `tv_resnet50`.
- **CGD** (leftthomas/CGD `model.state_dict()`, files named
  `{data}_{crop}_{backbone}_{gd_config}_{feature_dim}_{smoothing}_{temperature}_{margin}_{batch}_model.pth`):
  `features.{0..7}` = torchvision ResNet-50 children (conv1, bn1, relu, maxpool, layer1..4)
  with layer3 at stride 1, `main_modules.{i}.0.weight` (Linear 2048 → dim/n, no bias),
  `auxiliary_module.0` BatchNorm1d(2048), `auxiliary_module.1` Linear(2048 → classes). The
  descriptor letters come from `gd_config` (S → p 1, M → p ∞, G → p 3; the first feeds the
  classifier). → `CGDModel` on `tv_resnet50` with strides (1, 2, 1, 2).

Each format is one `WeightTable` (the tv_resnet table, renamed, plus the heads) applied by
`port_weights`; anything that does not fit raises an error naming the tensors.
"""

import os
import re

import numpy as np

from keras_cgd.layers.combined_global_descriptor import DESCRIPTOR_NAMES
from keras_cgd.models.tv_resnet import BLOCKS
from keras_cgd.models.tv_resnet import tv_resnet_weight_table

FORMATS = ("multigrain", "cgd")
CACHE_DIR = None
"""Where `keras.utils.get_file` keeps downloaded checkpoints (None: Keras' `~/.keras`)."""
CACHE_SUBDIR = "keras_cgd"

# leftthomas/CGD: the children of torchvision's ResNet, in order, without avgpool/fc.
_CGD_CHILDREN = {"conv1": "0", "bn1": "1", "layer1": "4", "layer2": "5", "layer3": "6", "layer4": "7"}
CGD_STRIDES = (1, 2, 1, 2)
_CGD_NAME = re.compile(
    r"^(?P<data>[^_]+)_(?P<crop>[^_]+)_(?P<backbone>[^_]+)_(?P<gd_config>[^_]+)_(?P<feature_dim>\d+)_"
    r"(?P<smoothing>[0-9.eE-]+)_(?P<temperature>[0-9.eE-]+)_(?P<margin>[0-9.eE-]+)_(?P<batch>\d+)_model$"
)
_MULTIGRAIN_NAME = re.compile(r"joint_(?P<p>\d+)B(?P<aa>AA)?_(?P<lam>[0-9.]+)$")


def _error(message):
    from keras_cgd.weights.readers import CheckpointError

    return CheckpointError(message)


def _keys_summary(tensors, limit=8):
    keys = list(tensors)
    text = ", ".join(keys[:limit])
    return text + (f", ... ({len(keys)} in all)" if len(keys) > limit else "")


# --------------------------------------------------------------------------- reading


def read_checkpoint_tensors(path):
    """`{name: array}` of a MultiGrain or CGD file (MultiGrain's `model_state` unwrapped)."""
    from keras_cgd.weights.readers import flatten_state_dict
    from keras_cgd.weights.readers import read_checkpoint

    tree = read_checkpoint(path)
    if isinstance(tree, dict) and isinstance(tree.get("model_state"), dict):
        tree = tree["model_state"]
    return flatten_state_dict(tree, source=path)


def detect_format(tensors, source="the checkpoint"):
    """`"multigrain"` or `"cgd"` from the tensor names, else a `CheckpointError`."""
    if "features.conv1.weight" in tensors and "classifier.weight" in tensors:
        return "multigrain"
    if "features.0.weight" in tensors and "main_modules.0.0.weight" in tensors:
        return "cgd"
    raise _error(
        f"{source} is neither a MultiGrain checkpoint (model_state with features.conv1.weight, "
        "classifier.weight, pool.p) nor a CGD (leftthomas) state dict (features.0.weight, "
        "main_modules.0.0.weight, auxiliary_module.*); expected format one of "
        f"{list(FORMATS)}. Received tensors: {_keys_summary(tensors)}"
    )


def _depth(tensors, prefix, source):
    """ResNet depth (50 or 101) from the number of Bottlenecks in layer3 (`prefix`)."""
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    blocks = {int(m.group(1)) for k in tensors for m in [pattern.match(k)] if m}
    if not blocks:
        raise _error(f"{source} has no backbone tensors {prefix}<block>.*; cannot infer the ResNet depth.")
    if f"{prefix}0.conv3.weight" not in tensors:
        raise _error(
            f"{source} holds a ResNet with BasicBlocks (no {prefix}0.conv3.weight: ResNet-18/34); "
            f"only Bottleneck ResNets {sorted(BLOCKS)} (tv_resnet50/101) are supported."
        )
    n = max(blocks) + 1
    for depth, stages in BLOCKS.items():
        if stages[2] == n:
            return depth
    raise _error(
        f"{source} has {n} blocks in layer3; expected {', '.join(f'{s[2]} (ResNet-{d})' for d, s in BLOCKS.items())}."
    )


# --------------------------------------------------------------------------- tables


def multigrain_weight_table(depth=50, whitening=False, with_p=True):
    """MultiGrain `model_state` names → `MultiGrainModel` (on tv_resnet) variables."""
    table = tv_resnet_weight_table(depth).renamed(rename_source=lambda s: "features." + s)
    table.dense("classifier", "classifier")
    if with_p:
        table.add("pool.p", "gem", "p")
    if whitening:
        table.add("whitening.pca.pca_m", "pca_whitening", "mean")
        table.add("whitening.pca.pca_P", "pca_whitening", "projection")
    return table


def _cgd_source(name):
    head, _, rest = name.partition(".")
    return f"features.{_CGD_CHILDREN[head]}.{rest}"


def cgd_weight_table(descriptors, depth=50, with_classifier=True):
    """leftthomas/CGD state-dict names → `CGDModel` (on tv_resnet) variables."""
    table = tv_resnet_weight_table(depth).renamed(rename_source=_cgd_source)
    for i, letter in enumerate(descriptors):
        table.add(f"main_modules.{i}.0.weight", f"cgd/{DESCRIPTOR_NAMES[letter]}_projection", "kernel", "dense")
    if with_classifier:
        table.batch_norm("auxiliary_module.0", "classifier_bn")
        table.dense("auxiliary_module.1", "classifier")
    return table


# --------------------------------------------------------------------------- inference


def parse_cgd_file_name(path):
    """The fields of a leftthomas/CGD file name, or None if it does not follow the pattern.

    `car_uncropped_resnet50_SG_1536_0.1_0.5_0.1_128_model.pth` →
    `{"data": "car", "crop": "uncropped", "backbone": "resnet50", "gd_config": "SG",
    "feature_dim": 1536, "smoothing": 0.1, "temperature": 0.5, "margin": 0.1, "batch": 128}`.
    """
    stem = os.path.splitext(os.path.basename(os.fspath(path)))[0]
    m = _CGD_NAME.match(stem)
    if m is None:
        return None
    fields = m.groupdict()
    try:
        for key in ("feature_dim", "batch"):
            fields[key] = int(fields[key])
        for key in ("smoothing", "temperature", "margin"):
            fields[key] = float(fields[key])
    except ValueError:
        return None
    return fields


def _check_gd_config(gd_config, n, source):
    from keras_cgd.layers.combined_global_descriptor import validate_descriptors

    try:
        letters = validate_descriptors(gd_config)
    except ValueError:
        raise _error(
            f"Invalid value received for gd_config (the descriptor letters). Expected distinct letters "
            f"from 'S' (SPoC), 'M' (MAC), 'G' (GeM), e.g. 'SG', 'MG', 'SMG'. Received: "
            f"gd_config={gd_config!r} (for {source})"
        ) from None
    if len(letters) != n:
        raise _error(
            f"gd_config={gd_config!r} has {len(letters)} descriptor(s) but {source} holds {n} branch "
            f"projection(s) main_modules.0..{n - 1}; pass the file's own gd_config (descriptors=...)."
        )
    return letters


def infer_cgd_config(tensors, source, descriptors=None):
    """`CGDModel` arguments of a leftthomas/CGD state dict (+ its file name)."""
    depth = _depth(tensors, "features.6.", source)
    n = 0
    while f"main_modules.{n}.0.weight" in tensors:
        n += 1
    k, width = np.shape(tensors["main_modules.0.0.weight"])
    fields = parse_cgd_file_name(source) if isinstance(source, (str, os.PathLike)) else None
    if descriptors is None:
        if fields is None:
            raise _error(
                f"Cannot infer gd_config: {source} is not named like leftthomas/CGD's files "
                "({data}_{crop}_{backbone}_{gd_config}_{feature_dim}_{smoothing}_{temperature}_{margin}_{batch}"
                "_model.pth); pass descriptors='SG' (its gd_config)."
            )
        descriptors = fields["gd_config"]
    letters = _check_gd_config(descriptors, n, source)
    config = {
        "backbone": f"tv_resnet{depth}",
        "backbone_strides": CGD_STRIDES,
        "last_stride": None,
        "input_shape": (224, 224, 3),
        "descriptors": letters,
        "embedding_dim": int(k) * n,
        "gem_p": 3.0,
        "freeze_bn_statistics": True,
        "classifier_bn_epsilon": 1e-5,
        "classifier_bn_momentum": 0.9,
        "num_classes": int(np.shape(tensors["auxiliary_module.1.weight"])[0])
        if "auxiliary_module.1.weight" in tensors else None,
    }
    if fields is not None:
        if fields["backbone"] != "resnet50" or depth != 50:
            raise _error(
                f"{source} names backbone {fields['backbone']!r}; only leftthomas/CGD's 'resnet50' "
                "(torchvision layout) is supported (its 'resnext50' needs grouped convolutions)."
            )
        if fields["feature_dim"] != config["embedding_dim"]:
            raise _error(
                f"{source} names feature_dim {fields['feature_dim']} but its {n} projection(s) "
                f"main_modules.*.0.weight of shape {(int(k), int(width))} give {config['embedding_dim']}."
            )
        config.update(
            label_smoothing=fields["smoothing"], temperature=fields["temperature"], margin=fields["margin"]
        )
    return config


def infer_multigrain_config(tensors, source):
    """`MultiGrainModel` arguments of a MultiGrain `model_state` (+ its file name)."""
    depth = _depth(tensors, "features.layer3.", source)
    whitening = "whitening.pca.pca_P" in tensors or "whitening.pca.pca_m" in tensors
    classes, inputs = np.shape(tensors["classifier.weight"])
    expected = 2048 + int(whitening)
    if inputs != expected:
        raise _error(
            f"{source}: classifier.weight has {inputs} inputs; expected {expected} "
            f"({'2048 + the bias channel of the whitening' if whitening else 'the 2048-d GeM vector'})."
        )
    config = {
        "backbone": f"tv_resnet{depth}",
        "last_stride": None,
        "input_shape": (None, None, 3),
        "num_classes": int(classes),
        "gem_p": 3.0,
        "whitening": whitening,
    }
    if "pool.p" in tensors:
        p = float(np.asarray(tensors["pool.p"]).reshape(()))
        if not (p > 0):
            raise _error(f"{source}: pool.p = {p}; expected a GeM exponent > 0.")
        config["gem_p"] = p
    if isinstance(source, (str, os.PathLike)):
        m = _MULTIGRAIN_NAME.search(os.path.splitext(os.path.basename(os.fspath(source)))[0])
        if m is not None:
            config["classification_weight"] = float(m.group("lam"))
    return config


# --------------------------------------------------------------------------- public API


def from_checkpoint(path, format=None, compile=True, **overrides):
    """A keras-cgd model equivalent to a MultiGrain or CGD (leftthomas) PyTorch checkpoint.

    Reads the file (never running code from it), infers the architecture (ResNet depth,
    descriptors and dimensions, classes, GeM p, whitening), builds `MultiGrainModel` /
    `CGDModel` on `tv_resnet` and assigns every tensor; the model is compiled with the
    paper's recipe (CGD: the file name's smoothing, temperature and margin; backbone BN
    statistics frozen as leftthomas trains) so that `fit` fine-tunes it.

    MultiGrain: embedding = L2(GeM_p(features)) (whitened: L2 of
    `phi = ([e, 1] / (|[e, 1]| + 1e-6) − m) P`, 2049-d), logits = classifier(e or phi).
    CGD: embedding = L2(concat_i L2(W_i · GD_i(features))), logits =
    Linear(BN1d(GD_1(features))), GD in gd_config order (S mean, M max, G GeM p=3).

    Args:
        path: a `.pth` (or `.safetensors` / `.npz` holding the same names) file.
        format: "multigrain", "cgd", or None to detect it from the tensor names.
        compile: compile with the paper recipe (True).
        **overrides: constructor arguments that replace the inferred ones, e.g.
            `input_shape=(None, None, 3)` (any size; MultiGrain's default),
            `descriptors="SG"` (CGD's gd_config when the file name does not carry it),
            `gem_p=4.0` (p*: then the stored `pool.p` is not used), `num_classes=None`
            (embedding only: the classifier tensors are then ignored).

    Returns:
        A compiled `CGDModel` or `MultiGrainModel` with outputs `{"embedding", "logits"}`.

    Raises:
        CheckpointError: another or an unreadable/truncated format, an unknown gd_config,
            an unsupported backbone, naming what was received.
        WeightMappingError: missing, unexpected or misshapen tensors, naming them.

    Example:

    >>> model = keras_cgd.models.from_checkpoint("joint_3B_0.5.pth")  # doctest: +SKIP
    >>> model = keras_cgd.models.from_checkpoint(
    ...     "car_uncropped_resnet50_SG_1536_0.1_0.5_0.1_128_model.pth")  # doctest: +SKIP

    References: Berman et al. 2019 (MultiGrain), facebookresearch/multigrain; Jun et al.
    2019 (CGD), leftthomas/CGD.
    """
    if format is not None and format not in FORMATS:
        raise ValueError(
            f"Invalid value received for argument `format`. Expected one of {list(FORMATS)} or None "
            f"(detected from the tensors). Received: format={format!r}"
        )
    source = os.fspath(path)
    tensors = read_checkpoint_tensors(source)
    return model_from_tensors(tensors, source, format=format, compile=compile, **overrides)


def model_from_tensors(tensors, source, format=None, compile=True, **overrides):
    """`from_checkpoint` on tensors already read (`source` names them in errors and, for
    CGD, carries the file name's gd_config)."""
    from keras_cgd.models.build import build_model
    from keras_cgd.weights import port_weights

    detected = detect_format(tensors, source)
    if format is not None and format != detected:
        raise _error(
            f"format={format!r} was requested but {source} is a {detected} checkpoint "
            f"(tensors: {_keys_summary(tensors, 4)})."
        )
    if detected == "cgd":
        config = infer_cgd_config(tensors, source, overrides.pop("descriptors", None))
    else:
        config = infer_multigrain_config(tensors, source)
    user_p = "gem_p" in overrides
    config.update(overrides)
    model = build_model(detected, compile=compile, **config)
    cfg = model.get_config()
    depth = {f"tv_resnet{d}": d for d in BLOCKS}.get(cfg["backbone"]) if isinstance(cfg["backbone"], str) else None
    if depth is None:
        raise ValueError(
            f"Invalid value received for argument `backbone`. A {detected} checkpoint loads into "
            f"'tv_resnet50' or 'tv_resnet101'. Received: backbone={cfg['backbone']!r}"
        )
    with_classifier = cfg["num_classes"] is not None
    if detected == "cgd":
        table = cgd_weight_table(cfg["descriptors"], depth, with_classifier)
        ignore = () if with_classifier else ("auxiliary_module.",)
    else:
        finite_p = np.isfinite(cfg["gem_p"])
        table = multigrain_weight_table(depth, cfg.get("whitening", False), with_p=finite_p and not user_p)
        ignore = ("pool.p",) + (() if with_classifier else ("classifier.",))
    port_weights(model, tensors, table, ignore=ignore, source=source)
    return model


# --------------------------------------------------------------------------- presets


def _is_url(text):
    return isinstance(text, str) and re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", text) is not None


def resolve_weights_file(weights, checkpoint=None):
    """A local file for `weights`: a path as it is, a URL through `keras.utils.get_file`.

    A URL equal to the preset's published `checkpoint["url"]` is verified against its pinned
    `checkpoint["file_hash"]` (sha256); get_file raises if the download does not match.
    """
    checkpoint = checkpoint or {}
    if isinstance(weights, os.PathLike):
        weights = os.fspath(weights)
    if not isinstance(weights, str):
        raise TypeError(
            "Invalid type received for argument `weights`. Expected a checkpoint path or URL. "
            f"Received: weights={weights!r}"
        )
    if _is_url(weights):
        import keras

        if CACHE_DIR is not None:
            os.makedirs(CACHE_DIR, exist_ok=True)  # get_file falls back to /tmp if it is absent
        file_hash = checkpoint.get("file_hash") if weights == checkpoint.get("url") else None
        name = checkpoint.get("file_name") if weights == checkpoint.get("url") else None
        return keras.utils.get_file(
            fname=name or os.path.basename(weights.split("?")[0]),
            origin=weights,
            file_hash=file_hash,
            cache_dir=CACHE_DIR,
            cache_subdir=CACHE_SUBDIR,
        )
    if not os.path.isfile(weights):
        raise FileNotFoundError(
            f"Invalid value received for argument `weights`. No such checkpoint file. Received: weights={weights!r}"
        )
    return weights


def build_preset_with_weights(name, weights, compile=True, **kwargs):
    """`build_model(<checkpoint preset>, weights=path_or_url)`: the preset's architecture
    and facts, the checkpoint's tensors (see `from_checkpoint`)."""
    from keras_cgd.models.presets import PRESETS

    preset = PRESETS[name]
    checkpoint = preset["checkpoint"]
    if weights == "published":
        if not checkpoint.get("url"):
            raise ValueError(
                f"Preset {name!r} has no published download URL; pass the path of your "
                f"{checkpoint.get('file_name', 'checkpoint')} file. Received: weights='published'"
            )
        weights = checkpoint["url"]
    path = resolve_weights_file(weights, checkpoint)
    # The checkpoint decides its trained exponent; everything else comes from the preset.
    config = {k: v for k, v in preset["config"].items() if k not in ("gem_p", "weights")}
    config.update(kwargs)
    tensors = read_checkpoint_tensors(path)
    model = model_from_tensors(tensors, path, format=checkpoint["format"], compile=compile, **config)
    return model
