"""`keras-cgd evaluate`: Recall@K and MAP@R of a model on a dataset's held-out classes, or
(`--classification FOLDER`) top-k accuracy of its logits on a labelled folder."""

from keras_cgd.cli import classification
from keras_cgd.cli._common import Output
from keras_cgd.cli._common import add_backend
from keras_cgd.cli._common import add_crop_to_box
from keras_cgd.cli._common import add_dataset
from keras_cgd.cli._common import positive_int

MODEL_HELP = (".keras file, run directory (its last checkpoint), SavedModel version directory "
              "(savedmodels/<name>/<version>) or model base directory (its highest version)")


def add_parser(sub):
    """Adds the `evaluate` sub-command to `sub` (an argparse sub-parsers object)."""
    p = sub.add_parser("evaluate", help="Recall@K and MAP@R (mAP for copy detection) of a model (.keras, "
                       "run or SavedModel) on a dataset's test classes")
    p.add_argument("model", help=MODEL_HELP)
    add_dataset(p)
    p.add_argument("--ks", type=positive_int, nargs="+", default=[1, 2, 4, 8], help="K values of Recall@K")
    p.add_argument("--small", action="store_true", default=None, help="test-sized built-in data")
    add_crop_to_box(p)
    add_backend(p)
    classification.add_arguments(p)
    p.set_defaults(run=run)
    return p


def run(args):
    if args.classification is not None:
        return classification.run(args)
    from keras_cgd import training

    out = Output(args)
    training.check_dataset_spec(args.dataset)
    kind, target = training.describe_model_path(args.model)
    model = training.load_embedder(args.model)
    out.log(f"loaded {'SavedModel' if kind == 'saved_model' else 'Keras model'} {target} "
            f"({model.input_shape[1]} px)")
    small = training.small_from_env() if args.small is None else args.small
    crop = True if args.crop_to_box is None else args.crop_to_box
    splits = training.resolve_dataset(args.dataset, training.model_image_size(model), small, crop_to_box=crop)
    scores = training.evaluate(model, splits, args.ks, with_map=True, progress=out.show_progress())
    out.log(f"{splits.name}: {len(splits.test)} test images, {splits.test.num_classes} classes")
    if splits.name in training.BOX_DATASETS:
        out.log("bounding boxes: " + ("images cropped to their boxes" if splits.test.boxes is not None
                                      else "not used (uncropped images)"))
    out.result(training.format_metrics(scores))
    return 0
