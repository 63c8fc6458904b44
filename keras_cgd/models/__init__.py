"""Models of keras-cgd: CGD, MultiGrain, backbones and presets."""

from keras_cgd.models.backbones import backbone_preprocessing
from keras_cgd.models.backbones import build_backbone
from keras_cgd.models.backbones import freeze_batch_norm_statistics
from keras_cgd.models.backbones import list_backbones
from keras_cgd.models.build import build_model
from keras_cgd.models.build import step_decay_schedule
from keras_cgd.models.checkpoints import from_checkpoint
from keras_cgd.models.cgd import CGDModel
from keras_cgd.models.embedding_model import EmbeddingModel
from keras_cgd.models.multigrain import MultiGrainModel
from keras_cgd.models.presets import get_preset
from keras_cgd.models.presets import list_presets
from keras_cgd.models.presets import register_preset
from keras_cgd.models.tv_resnet import tv_resnet50
from keras_cgd.models.tv_resnet import tv_resnet101

__all__ = [
    "CGDModel",
    "EmbeddingModel",
    "MultiGrainModel",
    "backbone_preprocessing",
    "build_backbone",
    "build_model",
    "freeze_batch_norm_statistics",
    "from_checkpoint",
    "get_preset",
    "list_backbones",
    "list_presets",
    "register_preset",
    "step_decay_schedule",
    "tv_resnet101",
    "tv_resnet50",
]
