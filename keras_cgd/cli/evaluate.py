"""`keras-cgd evaluate`: Recall@K and MAP@R of a model on a dataset's held-out classes."""

from keras_cgd.cli._common import add_backend
from keras_cgd.cli._common import add_crop_to_box
from keras_cgd.cli._common import add_dataset
from keras_cgd.cli._common import positive_int


def add_parser(sub):
    """Adds the `evaluate` sub-command to `sub` (an argparse sub-parsers object)."""
    p = sub.add_parser("evaluate", help="Recall@K (and MAP@R) of a .keras model on a dataset's test classes")
    p.add_argument("model", help=".keras file or run directory")
    add_dataset(p)
    p.add_argument("--ks", type=positive_int, nargs="+", default=[1, 2, 4, 8])
    p.add_argument("--small", action="store_true", default=None, help="test-sized built-in data")
    add_crop_to_box(p)
    add_backend(p)
    p.set_defaults(run=run)
    return p


def run(args):
    from keras_cgd import training

    training.check_dataset_spec(args.dataset)
    model = training.load_model(args.model)
    small = training.small_from_env() if args.small is None else args.small
    crop = True if args.crop_to_box is None else args.crop_to_box
    splits = training.resolve_dataset(args.dataset, training.model_image_size(model), small, crop_to_box=crop)
    out = training.evaluate(model, splits, args.ks, with_map=True)
    print(f"{splits.name}: {len(splits.test)} test images, {splits.test.num_classes} classes")
    if splits.name in training.BOX_DATASETS:
        print("bounding boxes: " + ("images cropped to their boxes" if splits.test.boxes is not None
                                    else "not used (uncropped images)"))
    print(f"{training.format_recall(out['recall'])}  MAP@R {out['map_at_r']:.3f}")
    return 0
