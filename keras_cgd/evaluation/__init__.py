"""Retrieval evaluation: chunked top-k, metrics, callback, MultiGrain test-time tools,
classification accuracy, plots."""

from keras_cgd.evaluation.callbacks import EvalCallback
from keras_cgd.evaluation.classification import classification_accuracy
from keras_cgd.evaluation.metrics import copy_detection_map
from keras_cgd.evaluation.metrics import map_at_r
from keras_cgd.evaluation.metrics import mean_average_precision
from keras_cgd.evaluation.metrics import recall_at_k
from keras_cgd.evaluation.metrics import ukbench_score
from keras_cgd.evaluation.neighbors import iter_topk_neighbors
from keras_cgd.evaluation.neighbors import topk_neighbors
from keras_cgd.evaluation.plots import export_embedding_projector
from keras_cgd.evaluation.plots import plot_recall_curve
from keras_cgd.evaluation.plots import plot_retrieval_grid
from keras_cgd.evaluation.test_time import build_p_star_proxy_set
from keras_cgd.evaluation.test_time import embed_images
from keras_cgd.evaluation.test_time import finetune_gem_p
from keras_cgd.evaluation.test_time import gem_p_loss_and_gradient
from keras_cgd.evaluation.test_time import gem_p_override
from keras_cgd.evaluation.test_time import resize_longest_side
from keras_cgd.evaluation.test_time import select_gem_p
from keras_cgd.evaluation.whitening import PCAWhitening
from keras_cgd.evaluation.whitening import apply_pca_whitening
from keras_cgd.evaluation.whitening import fit_model_whitening
from keras_cgd.evaluation.whitening import fit_pca_whitening
from keras_cgd.evaluation.whitening import fold_whitening_into_classifier
from keras_cgd.evaluation.whitening import whiten_model
