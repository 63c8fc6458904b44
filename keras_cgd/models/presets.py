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
    "multigrain_lite0_copydetect": {
        "model": "multigrain",
        "description": (
            "The default job: MultiGrain fine-tuning of ImageNet EfficientNet-Lite0 (GeM p=3, frozen BN "
            "statistics) for copy detection on held-out photos (photo_copies), 96x96 inputs, CPU-sized."
        ),
        "config": {
            "backbone": "efficientnet_lite0",
            "weights": "imagenet",
            "input_shape": (96, 96, 3),
            "gem_p": 3.0,
            # margin loss only: the classes are the training regions themselves
            "classification_weight": 0.0,
            # MultiGrain's SGD 0.2 at batch 512, scaled linearly to batch 48 (0.019),
            # then halved for fine-tuning a pretrained network (measured at 96 px, 42
            # steps: 0.005 gains less, 0.02 peaks after 21 steps and then falls back)
            "learning_rate": 0.01,
            "freeze_bn_statistics": True,
        },
        "training": {
            "dataset": "photo_copies",
            # 16 regions x 3 copies (the clean region and attacked copies): the copies
            # are the margin loss's positives, as MultiGrain's repeated augmentation
            "batching": "class_balanced",
            "classes_per_batch": 16,
            "images_per_class": 3,
            "augmentation": "flip",
            "epochs": 2,
            "lr_drop_epochs_fraction": [],
            "recall_ks": [1, 2, 4, 8],
        },
        "reported": {},
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

# --- presets with published weights (build_model(name, weights=path_or_url)) -------------
# MultiGrain: facebookresearch/multigrain README (files, top-1 at 224) and paper Table 2/3
# (s*, p*, top-1/top-5, retrieval); weights CC BY-NC 4.0. CGD: leftthomas/CGD README
# (Baidu Pan downloads, not direct links: the user passes the downloaded file).

MULTIGRAIN_LICENSE = "CC-BY-NC-4.0"
_MULTIGRAIN_URL = "https://dl.fbaipublicfiles.com/multigrain/multigrain_models/"
_IMAGENET_NORMALIZATION = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "channel_order": "rgb"}
# Paper §3.5 / Table 2 (models trained with p=3): p* per test resolution s* (longest side).
_P_STAR = {1.0: {"224": 3.0, "500": 4.0, "800": 4.0}, 0.5: {"224": 3.0, "500": 4.0, "800": 5.0}}


def _multigrain_checkpoint(stem, p, lam, augmentation, reported):
    p_star = _P_STAR[lam] if p == 3.0 else {"224": p}
    return {
        "model": "multigrain",
        "description": (
            f"MultiGrain ResNet-50 {stem}.pth (GeM p={p:g}, lambda={lam:g}, {augmentation} "
            f"augmentation), ImageNet top-1 {reported['top1@224']} at 224. Weights: "
            "facebookresearch/multigrain, CC BY-NC 4.0 (non-commercial use only)."
        ),
        "license": MULTIGRAIN_LICENSE,
        "checkpoint": {
            "format": "multigrain",
            "file_name": f"{stem}.pth",
            "url": _MULTIGRAIN_URL + f"{stem}.pth",
            # sha256 of the published file; None until pinned (keras.utils.get_file then
            # downloads without verifying).
            "file_hash": None,
            "source": "https://github.com/facebookresearch/multigrain",
        },
        "config": {
            "backbone": "tv_resnet50",
            "weights": None,
            "input_shape": (None, None, 3),
            "num_classes": 1000,
            "gem_p": p,
            "classification_weight": lam,
            "learning_rate": 0.2,
            "last_stride": None,
        },
        "preprocessing": {
            **_IMAGENET_NORMALIZATION,
            "train_size": 224,
            "test": "s*=224: resize the shorter side to 256 and center-crop 224; s*>224: "
            "resize the longest side to s*, no crop",
        },
        "test_time": {"p_star": p_star},
        "training": dict(PRESETS["multigrain_resnet50"]["training"], augmentation=augmentation),
        "reported": {**reported, "source": "facebookresearch/multigrain README; MultiGrain paper Tables 2-3"},
    }


_RETRIEVAL = {
    1.0: {"holidays_map@500": 91.8, "ukb@500": 3.89, "cd10k_map@500": 81.1,
          "holidays_map@800": 91.6, "ukb@800": 3.91, "cd10k_map@800": 82.5},
    0.5: {"holidays_map@500": 91.5, "ukb@500": 3.90, "cd10k_map@500": 80.7,
          "holidays_map@800": 92.5, "ukb@800": 3.91, "cd10k_map@800": 78.6},
}

PRESETS.update({
    "multigrain_resnet50_joint_1B_1.0": _multigrain_checkpoint(
        "joint_1B_1.0", 1.0, 1.0, "full", {"top1@224": 76.8, "top5@224": 93.2}),
    "multigrain_resnet50_joint_3B_1.0": _multigrain_checkpoint(
        "joint_3B_1.0", 3.0, 1.0, "full", {"top1@224": 76.9, "top5@224": 93.5, **_RETRIEVAL[1.0]}),
    "multigrain_resnet50_joint_1B_0.5": _multigrain_checkpoint(
        "joint_1B_0.5", 1.0, 0.5, "full", {"top1@224": 77.0, "top5@224": 93.6}),
    "multigrain_resnet50_joint_3B_0.5": _multigrain_checkpoint(
        "joint_3B_0.5", 3.0, 0.5, "full",
        {"top1@224": 77.4, "top5@224": 93.6, "top1@500_p4": 78.6, "top5@500_p4": 94.4,
         "top1@800_p5": 77.2, "top5@800_p5": 93.5, **_RETRIEVAL[0.5]}),
    "multigrain_resnet50_joint_3BAA_0.5": _multigrain_checkpoint(
        "joint_3BAA_0.5", 3.0, 0.5, "autoaugment",
        {"top1@224": 78.2, "top5@224": 93.9, "top1@500_p4": 79.4, "top5@500_p4": 94.8,
         "top1@800_p5": 77.8, "top5@800_p5": 93.9}),
})


def _cgd_leftthomas(data, crop, descriptors, num_classes, dataset, recall, baidu_code, ks=(1, 2, 4, 8)):
    file_name = f"{data}_{crop}_resnet50_{descriptors}_1536_0.1_0.5_0.1_128_model.pth"
    return {
        "model": "cgd",
        "description": (
            f"CGD ResNet-50 {descriptors} 1536-d on {dataset} ({crop}), leftthomas/CGD reimplementation "
            f"(R@1 {recall[0]}); weights: your downloaded {file_name} (Baidu Pan, code {baidu_code}; "
            "no licence stated by the repository)."
        ),
        "license": "not stated (leftthomas/CGD)",
        "checkpoint": {
            "format": "cgd",
            "file_name": file_name,
            "url": None,
            "file_hash": None,
            "source": "https://github.com/leftthomas/CGD",
            "download": f"Baidu Pan link in the leftthomas/CGD README, extraction code {baidu_code}",
        },
        "config": {
            "backbone": "tv_resnet50",
            "backbone_strides": (1, 2, 1, 2),
            "weights": None,
            "input_shape": (224, 224, 3),
            "descriptors": descriptors,
            "embedding_dim": 1536,
            "num_classes": num_classes,
            "last_stride": None,
            "freeze_bn_statistics": True,
            "classifier_bn_epsilon": 1e-5,
            "classifier_bn_momentum": 0.9,
        },
        "preprocessing": {**_IMAGENET_NORMALIZATION, "test": "resize to 224x224 (aspect not kept), no crop"},
        "training": dict(_CGD_TRAINING, recall_ks=list(ks)),
        "reported": {
            **{f"recall@{k}": r for k, r in zip(ks, recall)},
            "source": "leftthomas/CGD README (20 epochs, one V100)",
        },
    }


PRESETS.update({
    "cgd_leftthomas_resnet50_cars196_uncropped": _cgd_leftthomas(
        "car", "uncropped", "SG", 98, "CARS196", (86.4, 92.1, 95.6, 97.5), "r3sn"),
    "cgd_leftthomas_resnet50_cars196_cropped": _cgd_leftthomas(
        "car", "cropped", "SG", 98, "CARS196", (92.4, 96.1, 97.8, 98.7), "sf5s"),
    "cgd_leftthomas_resnet50_cub200_uncropped": _cgd_leftthomas(
        "cub", "uncropped", "MG", 100, "CUB-200-2011", (66.0, 76.4, 84.8, 90.7), "2cfi"),
    "cgd_leftthomas_resnet50_cub200_cropped": _cgd_leftthomas(
        "cub", "cropped", "MG", 100, "CUB-200-2011", (73.9, 83.1, 89.6, 94.0), "pi4q"),
    "cgd_leftthomas_resnet50_sop": _cgd_leftthomas(
        "sop", "uncropped", "SG", 11318, "Stanford Online Products", (79.3, 90.6, 95.8, 98.6), "qgsn",
        ks=(1, 10, 100, 1000)),
    "cgd_leftthomas_resnet50_inshop": _cgd_leftthomas(
        "isc", "uncropped", "GS", 3997, "In-shop Clothes", (83.6, 95.7, 97.1, 97.7, 98.1, 98.4), "8jmp",
        ks=(1, 10, 20, 30, 40, 50)),
})


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
