"""Train, evaluate, resume and export: the logic behind `keras-cgd train` and the notebooks.

TensorFlow is needed for the input pipelines (`tf.data`); the model trains on whichever
Keras backend is active (TensorFlow or JAX).

A training run lives in a run directory (default `runs/<preset>-<dataset>-<hash>`, the
hash taken from the arguments that change training) holding

    state.json              {"completed_epochs", "epochs", "args", "checkpoint", ...}
    epoch-0003.keras        model + optimizer state after the last completed epoch

Both are written atomically (temporary file + `os.replace`; the checkpoint first, then
the state that names it), so a run killed at any moment resumes from its last completed
epoch. Epoch `e` trains on batches planned from `(seed, e)` alone, so a resumed epoch
sees exactly the batches it would have seen without the interruption.

Modules: `config` (TrainConfig and its resolved settings), `datasets` (dataset
specifications and splits), `run_state` (state.json, checkpoints, `load_model`,
`load_embedder`), `saved_model_embedder` (an exported SavedModel used for embedding),
`scoring` (embedding and Recall@K), `progress` (progress bars), `loop` (`train`).

Example:

>>> from keras_cgd import training
>>> result = training.train(training.TrainConfig(epochs=1, small=True))
>>> result["recall_after"], result["export_path"]
"""

from keras_cgd.training.config import BOX_DATASETS
from keras_cgd.training.config import DEFAULT_PRESET
from keras_cgd.training.config import SMALL_ENV
from keras_cgd.training.config import TrainConfig
from keras_cgd.training.config import check_descriptors
from keras_cgd.training.config import resolve_settings
from keras_cgd.training.config import run_dir_for
from keras_cgd.training.config import small_from_env
from keras_cgd.training.config import training_args
from keras_cgd.training.datasets import BUILTIN_DATASETS
from keras_cgd.training.datasets import STANDARD_DATASETS
from keras_cgd.training.datasets import DatasetSplits
from keras_cgd.training.datasets import check_dataset_spec
from keras_cgd.training.datasets import dataset_choices
from keras_cgd.training.datasets import resolve_dataset
from keras_cgd.training.loop import _batches
from keras_cgd.training.loop import train
from keras_cgd.training.run_state import STATE_FILENAME
from keras_cgd.training.run_state import describe_model_path
from keras_cgd.training.run_state import load_embedder
from keras_cgd.training.run_state import load_model
from keras_cgd.training.run_state import read_state
from keras_cgd.training.scoring import embed
from keras_cgd.training.scoring import evaluate
from keras_cgd.training.scoring import format_metrics
from keras_cgd.training.scoring import format_recall
from keras_cgd.training.scoring import model_image_size

__all__ = [
    "BOX_DATASETS", "BUILTIN_DATASETS", "DEFAULT_PRESET", "SMALL_ENV", "STANDARD_DATASETS", "STATE_FILENAME",
    "DatasetSplits", "TrainConfig", "check_dataset_spec", "check_descriptors", "dataset_choices",
    "describe_model_path", "embed", "evaluate", "format_metrics", "format_recall", "load_embedder", "load_model",
    "model_image_size", "read_state", "resolve_dataset",
    "resolve_settings", "run_dir_for", "small_from_env", "train", "training_args",
]
