"""Input pipelines for keras-cgd (TensorFlow `tf.data`; usable with the TF and JAX backends).

Readers (`image_folder`, `cub200`, `cars196`, `stanford_online_products`,
`inshop_clothes`) return an `ImageDataset`; the batchers turn it into training batches
`(images, {"embedding": ranking_labels, "logits": class_ids})` for `model.fit`:
`class_balanced_batches` (CGD, P×K) and `repeated_augmentation_batches` (MultiGrain);
`inference_batches` gives test-time batches. `load_builtin` / `load_copy_detection`
build offline datasets from real photos shipped by installed packages.
"""

from keras_cgd.data.augment import (
    cgd_train_augment,
    multigrain_train_augment,
    resize_for_test,
)
from keras_cgd.data.batching import (
    class_balanced_batches,
    inference_batches,
    repeated_augmentation_batches,
)
from keras_cgd.data.builtin import (
    BuiltinDataset,
    CopyDetectionSet,
    list_builtin,
    load_builtin,
    load_copy_detection,
)
from keras_cgd.data.readers import (
    ImageDataset,
    cars196,
    cub200,
    from_arrays,
    image_folder,
    inshop_clothes,
    stanford_online_products,
)
from keras_cgd.data.retrieval_benchmarks import (
    COPYDAYS_SUBSETS,
    RetrievalBenchmark,
    copydays,
    holidays,
    rotate_upright,
    ukbench,
)

__all__ = [
    "COPYDAYS_SUBSETS",
    "BuiltinDataset",
    "CopyDetectionSet",
    "ImageDataset",
    "RetrievalBenchmark",
    "cars196",
    "cgd_train_augment",
    "class_balanced_batches",
    "copydays",
    "cub200",
    "from_arrays",
    "holidays",
    "image_folder",
    "inference_batches",
    "inshop_clothes",
    "list_builtin",
    "load_builtin",
    "load_copy_detection",
    "multigrain_train_augment",
    "repeated_augmentation_batches",
    "resize_for_test",
    "rotate_upright",
    "stanford_online_products",
    "ukbench",
]
