"""`keras-cgd train`: train (or resume), evaluate Recall@K before and after, export."""

from keras_cgd.cli._common import add_backend
from keras_cgd.cli._common import add_crop_to_box
from keras_cgd.cli._common import add_dataset
from keras_cgd.cli._common import positive_int


def add_parser(sub):
    """Adds the `train` sub-command to `sub` (an argparse sub-parsers object)."""
    p = sub.add_parser("train", help="train (or resume) a model, evaluate Recall@K, export a SavedModel",
                       description="Train on a dataset, print Recall@K (and mAP for copy detection) on held-out classes "
                       "before (the pretrained baseline) and after, "
                       "export to savedmodels/<name>/<version>/. Rerunning the same command resumes an "
                       "interrupted run from its last completed epoch.")
    add_dataset(p, default=None)
    p.add_argument("--preset", "-p", default=None,
                   help="preset name (see `keras-cgd presets`; default multigrain_lite0_copydetect: fine-tune "
                   "ImageNet EfficientNet-Lite0 for copy detection on held-out photos)")
    p.add_argument("--model", choices=["cgd", "multigrain"], default=None,
                   help="model family when no preset is given")
    p.add_argument("--backbone", default=None, help="backbone name (e.g. efficientnet_lite0, resnet50, tiny_convnet)")
    p.add_argument("--descriptors", default=None, help="CGD descriptor letters from S, M, G (e.g. SMG, SG)")
    p.add_argument("--embedding-dim", type=positive_int, default=None)
    p.add_argument("--image-size", type=positive_int, default=None, help="square input size in pixels")
    p.add_argument("--weights", default=None, help="backbone weights: imagenet, none, or a file")
    p.add_argument("--epochs", "-e", type=positive_int, default=None, help="epochs (default: the preset's)")
    p.add_argument("--batching", choices=["pk", "ra"], default=None,
                   help="pk: P classes x K images (CGD); ra: repeated augmentation (MultiGrain)")
    p.add_argument("--classes-per-batch", "-P", type=positive_int, default=None, help="P of pk batches")
    p.add_argument("--images-per-class", "-K", type=positive_int, default=None, help="K of pk batches")
    p.add_argument("--batch-size", type=positive_int, default=None, help="batch size of ra batches")
    p.add_argument("--repeats", type=positive_int, default=None, help="copies per image in ra batches")
    p.add_argument("--steps-per-epoch", type=positive_int, default=None)
    p.add_argument("--learning-rate", "--lr", type=float, default=None)
    p.add_argument("--augmentation", default=None, help="cgd, multigrain, flip or none")
    add_crop_to_box(p)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--small", action="store_true", default=None,
                   help="test-sized settings: 32 px, few images and steps (also KERAS_CGD_SMALL=1)")
    p.add_argument("--run-dir", default=None, help="run directory (default runs/<name>-<dataset>-<hash>)")
    p.add_argument("--fresh", action="store_true", help="ignore a saved run and start over")
    p.add_argument("--export-dir", default="savedmodels", help="SavedModel base directory (default savedmodels)")
    p.add_argument("--no-export", action="store_true", help="do not export a SavedModel")
    p.add_argument("--model-name", default=None, help="name under the export directory (default: preset)")
    p.add_argument("--ks", type=positive_int, nargs="+", default=None, help="K values of Recall@K")
    p.add_argument("--steps-per-execution", type=positive_int, default=1, metavar="N",
                   help="training batches per compiled call (default 1; 8-32 on a GPU, see the README)")
    p.add_argument("--no-antialias", dest="antialias", action="store_false",
                   help="resize training crops with plain bilinear instead of the antialiased kernel of PIL "
                   "and the papers: a faster input pipeline (see the README); evaluation still antialiases")
    p.add_argument("--flip-and-color-in-model", action="store_true",
                   help="MultiGrain (repeated augmentation): the model flips and colours the training batches on "
                   "the accelerator instead of the CPU input pipeline (see the README); no effect at inference")
    add_backend(p)
    p.set_defaults(run=run)
    return p


def run(args):
    from keras_cgd import training

    config = training.TrainConfig(
        dataset=args.dataset, preset=args.preset, model=args.model, backbone=args.backbone,
        descriptors=args.descriptors, embedding_dim=args.embedding_dim, image_size=args.image_size,
        weights=args.weights, epochs=args.epochs, batching=args.batching,
        classes_per_batch=args.classes_per_batch, images_per_class=args.images_per_class,
        batch_size=args.batch_size, repeats=args.repeats, steps_per_epoch=args.steps_per_epoch,
        learning_rate=args.learning_rate, augmentation=args.augmentation, crop_to_box=args.crop_to_box,
        seed=args.seed,
        small=args.small, run_dir=args.run_dir, fresh=args.fresh,
        export_dir=None if args.no_export else args.export_dir, model_name=args.model_name,
        recall_ks=tuple(args.ks) if args.ks else None, steps_per_execution=args.steps_per_execution,
        antialias=args.antialias, flip_and_color_in_model=args.flip_and_color_in_model,
    )
    result = training.train(config, log=lambda line: print(line, flush=True))
    print(f"done in {result['seconds']:.0f} s; checkpoint {result['checkpoint']}")
    return 0
