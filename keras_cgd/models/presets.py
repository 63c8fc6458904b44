"""Preset registry: paper recipes and small CPU-sized configurations.

A preset is a plain dict: the model family, the constructor arguments, the
training recipe (batch layout, augmentation, schedule) and a description.
Preprocessing facts live here, not in code.
"""

import copy

_CGD_TRAINING = {
    "batching": "class_balanced",
    "classes_per_batch": 32,
    "images_per_class": 4,
    "augmentation": "cgd",
    "train_resize": 252,
    "epochs": 20,
    "lr_drop_epochs_fraction": [0.6, 0.8],
    "lr_drop_factor": 0.1,
    # leftthomas/CGD steps MultiStepLR after each epoch: 0-based epoch e uses the drops d <= e
    "lr_drop_convention": "multistep",
    "recall_ks": [1, 2, 4, 8],
    # CUB-200 / CARS196: crop to the ground-truth box (the CGD paper's numbers are cropped;
    # leftthomas/CGD reports CUB R@1 66.0 uncropped vs 73.9 cropped, CARS 86.4 vs 92.4)
    "crop_to_box": True,
}


def _cgd(descriptors, num_classes, description, reported, **training):
    return {
        "model": "cgd",
        "description": description,
        "config": {
            "backbone": "resnet50",
            "weights": "imagenet",
            "input_shape": (224, 224, 3),
            "descriptors": descriptors,
            "embedding_dim": 1536,
            "num_classes": num_classes,
            "last_stride": 1,
            "freeze_bn_statistics": True,
        },
        "training": {**_CGD_TRAINING, **training},
        "reported": reported,
    }


PRESETS = {
    "cgd_resnet50_cub200": _cgd(
        "MG", 100, "CGD, ResNet-50, MG, 1536-d, CUB-200-2011 (classes 1-100).",
        {"recall@1": 79.2, "source": "CGD paper (bbox-cropped)"},
    ),
    "cgd_resnet50_cars196": _cgd(
        "SG", 98, "CGD, ResNet-50, SG, 1536-d, CARS196 (classes 1-98).",
        {"recall@1": 94.8, "source": "CGD paper (bbox-cropped)"},
    ),
    "cgd_resnet50_sop": _cgd(
        "SG", 11318, "CGD, ResNet-50, SG, 1536-d, Stanford Online Products.",
        {"recall@1": 84.2, "source": "CGD paper"},
        recall_ks=[1, 10, 100, 1000],
    ),
    "cgd_resnet50_inshop": _cgd(
        "GS", 3997, "CGD, ResNet-50, GS, 1536-d, In-shop Clothes.",
        {"recall@1": 91.9, "source": "CGD paper"},
        recall_ks=[1, 10, 20, 30, 40, 50],
    ),
    "multigrain_resnet50": {
        "model": "multigrain",
        "description": "MultiGrain, ResNet-50, GeM p=3, lambda=0.5, ImageNet.",
        "config": {
            "backbone": "resnet50",
            "weights": None,
            # any size at test time (s* = 224, 500, 800); trains at 224
            "input_shape": (None, None, 3),
            "image_size": 224,
            "num_classes": 1000,
            "gem_p": 3.0,
            "classification_weight": 0.5,
            "learning_rate": 0.2,
        },
        "training": {
            "batching": "repeated_augmentation",
            "batch_size": 512,
            "repeats": 3,
            "epoch_length_factor": 2.0,
            "augmentation": "full",
            "epochs": 120,
            "lr_drop_epochs_fraction": [0.25, 0.5, 0.75],
            "lr_drop_factor": 0.1,
            # multigrain scripts/train.py: factor for 0-based epoch e uses the drops d < e
            "lr_drop_convention": "multigrain",
            "test_resolutions": {"224": 3.0, "500": 4.0, "800": 5.0},
        },
        "reported": {"top1@224": 77.4, "top1@500_p4": 78.6, "source": "MultiGrain Table 2"},
    },
    "cgd_tiny": {
        "model": "cgd",
        "description": "CPU-sized CGD: tiny ConvNet, SMG, 96-d, 64x64 inputs.",
        "config": {
            "backbone": "tiny_convnet",
            "weights": None,
            "input_shape": (64, 64, 3),
            "descriptors": "SMG",
            "embedding_dim": 96,
            "last_stride": 1,
            "learning_rate": 1e-3,
        },
        "training": {
            **_CGD_TRAINING,
            "classes_per_batch": 16,
            "images_per_class": 4,
            "train_resize": 72,
            "epochs": 8,
            "augmentation": "multigrain",
            # constant learning rate: a from-scratch CPU run is too short to decay
            "lr_drop_epochs_fraction": [],
        },
        "reported": {},
    },
    "multigrain_tiny": {
        "model": "multigrain",
        "description": "CPU-sized MultiGrain: tiny ConvNet, GeM p=3, 64x64 inputs.",
        "config": {
            "backbone": "tiny_convnet",
            "weights": None,
            "input_shape": (None, None, 3),
            "image_size": 64,
            "gem_p": 3.0,
            "classification_weight": 0.5,
            "learning_rate": 0.02,
        },
        "training": {
            "batching": "repeated_augmentation",
            "batch_size": 48,
            "repeats": 3,
            "epoch_length_factor": 1.0,
            "augmentation": "full",
            "epochs": 8,
            "lr_drop_epochs_fraction": [0.5, 0.75],
            "lr_drop_factor": 0.1,
            "lr_drop_convention": "multigrain",
            "recall_ks": [1, 2, 4, 8],
        },
        "reported": {},
    },
}

MODEL_FAMILIES = ("cgd", "multigrain")


def list_presets(family=None):
    """Names of the registered presets, optionally of one model family."""
    return sorted(n for n, p in PRESETS.items() if family in (None, p["model"]))


def get_preset(name):
    """A deep copy of preset `name` (`model`, `config`, `training`, ...)."""
    if name not in PRESETS:
        raise ValueError(
            f"Unknown preset. Expected one of {list_presets()}. Received: {name!r}"
        )
    return copy.deepcopy(PRESETS[name])


def register_preset(name, preset):
    """Add a preset (a dict with at least `model` and `config`)."""
    if not isinstance(preset, dict) or preset.get("model") not in MODEL_FAMILIES:
        raise ValueError(
            "Invalid preset. Expected a dict whose 'model' is one of "
            f"{list(MODEL_FAMILIES)}. Received: {preset!r}"
        )
    PRESETS[name] = {"config": {}, "training": {}, "description": "", "reported": {}, **preset}
