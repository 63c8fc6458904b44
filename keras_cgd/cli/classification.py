"""`keras-cgd evaluate MODEL --classification FOLDER`: top-k accuracy of the logits.

    keras-cgd evaluate joint_3B_0.5.pth --classification /data/imagenet/val \\
        --image-size 500 --gem-p 4 --top-k 1 5        # MultiGrain Table 2: 78.6 / 94.4

MODEL is a MultiGrain/CGD checkpoint (`.pth`, `.pt`, `.bin`, `.safetensors`, `.npz`:
`keras_cgd.models.from_checkpoint`, built for any input size) or a `.keras` file / run
directory. `add_arguments(parser)` adds the options to the `evaluate` sub-parser;
`run(args)` executes them. Parsing imports neither Keras nor TensorFlow.
"""

import argparse
import os

from keras_cgd.cli._common import Output
from keras_cgd.cli._common import positive_int

CHECKPOINT_EXTENSIONS = (".pth", ".pt", ".bin", ".safetensors", ".npz")


def positive_float(text):
    """argparse type: a float > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number > 0, received {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, received {text!r}")
    return value


def add_arguments(parser):
    """Adds `--classification FOLDER`, `--image-size`, `--gem-p`, `--top-k`, `--center-crop`,
    `--class-names`, `--batch-size` to an argparse (sub)parser; returns the parser."""
    group = parser.add_argument_group(
        "classification", "top-k accuracy of the logits on a labelled folder <root>/<class>/<image> "
        "(ImageNet val layout; the sorted class folders are the model's classes)")
    group.add_argument("--classification", metavar="FOLDER", default=None,
                       help="labelled image folder: report top-k accuracy instead of Recall@K")
    group.add_argument("--image-size", type=positive_int, default=None, metavar="S",
                       help="test resolution s*: longest side, no crop (default: the images as they are)")
    group.add_argument("--gem-p", type=positive_float, default=None, metavar="P",
                       help="GeM exponent p* used for the evaluation (default: the model's)")
    group.add_argument("--top-k", type=positive_int, nargs="+", default=[1, 5], metavar="K",
                       help="k values of top-k accuracy (default 1 5)")
    group.add_argument("--center-crop", action="store_true",
                       help="resize the shorter side to 256/224*s and crop s x s (the 224-px protocol)")
    group.add_argument("--class-names", default=None, metavar="FILE",
                       help="text file with the model's classes in logit order, one per line (needed "
                       "when the folder holds a subset of the classes)")
    group.add_argument("--batch-size", type=positive_int, default=32, metavar="N",
                       help="images per forward pass (default 32)")
    return parser


def load_model(spec):
    """A checkpoint file through `from_checkpoint` (any input size), else `.keras`/run dir."""
    if str(spec).lower().endswith(CHECKPOINT_EXTENSIONS):
        from keras_cgd.models.checkpoints import from_checkpoint

        return from_checkpoint(spec, input_shape=(None, None, 3), compile=False)
    from keras_cgd.training import load_model as load_keras_model

    return load_keras_model(spec)


def run(args):
    """Runs the classification evaluation of parsed `args` (`args.model`, the options above);
    prints the top-k line as the result. Returns the exit code 0."""
    from keras_cgd.evaluation.classification import classification_accuracy

    out = Output(args)
    if not os.path.isdir(args.classification):
        raise FileNotFoundError(
            "Invalid value received for argument `--classification`: not a folder. "
            f"Received: {args.classification!r}"
        )
    model = load_model(args.model)
    result = classification_accuracy(
        model, args.classification, image_size=args.image_size, gem_p=args.gem_p,
        ks=tuple(args.top_k), class_names=args.class_names, center_crop=args.center_crop,
        batch_size=args.batch_size, progress=out.show_progress(),
    )
    mode = "center crop" if args.center_crop else "longest side"
    size = args.image_size if args.image_size is not None else "native"
    p = args.gem_p if args.gem_p is not None else "model's"
    out.log(f"{args.classification}: {result['num_images']} images, {result['num_classes']} classes, "
            f"s*={size} ({mode}), p*={p}")
    out.result("  ".join(f"top-{k} {100 * result[f'top{k}']:.2f}%" for k in sorted(set(args.top_k))))
    return 0
