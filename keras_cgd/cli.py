"""`keras-cgd`: train, evaluate, export, serve and search from the command line.

    keras-cgd train                     # built-in photos, cgd_tiny, Recall@K, SavedModel
    keras-cgd train --dataset cub200:/data/CUB_200_2011 --preset cgd_resnet50_cub200
    keras-cgd evaluate runs/<run>/epoch-0008.keras --dataset photo_views
    keras-cgd export runs/<run> savedmodels/cgd_tiny
    keras-cgd serve savedmodels --port 8501
    keras-cgd search model.keras --gallery photo_views query.jpg --grid grid.png
    keras-cgd presets

`--backend` sets KERAS_BACKEND; when Keras was already imported on another backend
(importing `keras_cgd` imports Keras) the command re-executes itself with it. Bad
arguments end with a one-line error naming the value and the valid choices (exit 2);
set KERAS_CGD_DEBUG=1 to see the traceback instead.
"""

import argparse
import os
import sys

EXIT_USAGE = 2


class UsageError(Exception):
    """A bad command-line value: printed as one line, exit code 2."""


class _Parser(argparse.ArgumentParser):
    """An `ArgumentParser` whose errors are one line (no usage dump), exit code 2."""

    def error(self, message):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive int, received {text!r}")
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive int, received {text!r}")
    return value


def _add_dataset(parser, default="photo_views", required=False):
    parser.add_argument(
        "--dataset", "-d", default=None if required else default, required=required,
        help="built-in name (photo_views, digits), cub200:PATH, cars196:PATH, sop:PATH, inshop:PATH, "
        "a folder in one of those layouts, or an image folder <root>/<class>/* "
        f"(default {default})",
    )


def _add_backend(parser):
    parser.add_argument("--backend", choices=["tensorflow", "jax"], default=None,
                        help="Keras backend (sets KERAS_BACKEND before Keras is imported)")


def build_parser():
    """The `argparse` parser of `keras-cgd`."""
    parser = _Parser(
        prog="keras-cgd",
        description="CGD and MultiGrain image embeddings: train, evaluate, export, serve, search.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("train", help="train (or resume) a model, evaluate Recall@K, export a SavedModel",
                       description="Train on a dataset, print Recall@K on held-out classes before and after, "
                       "export to savedmodels/<name>/<version>/. Rerunning the same command resumes an "
                       "interrupted run from its last completed epoch.")
    _add_dataset(p)
    p.add_argument("--preset", "-p", default=None, help="preset name (see `keras-cgd presets`; default cgd_tiny)")
    p.add_argument("--model", choices=["cgd", "multigrain"], default=None,
                   help="model family when no preset is given")
    p.add_argument("--backbone", default=None, help="backbone name (e.g. resnet50, tiny_convnet)")
    p.add_argument("--descriptors", default=None, help="CGD descriptor letters from S, M, G (e.g. SMG, SG)")
    p.add_argument("--embedding-dim", type=_positive_int, default=None)
    p.add_argument("--image-size", type=_positive_int, default=None, help="square input size in pixels")
    p.add_argument("--weights", default=None, help="backbone weights: imagenet, none, or a file")
    p.add_argument("--epochs", "-e", type=_positive_int, default=None, help="epochs (default: the preset's)")
    p.add_argument("--batching", choices=["pk", "ra"], default=None,
                   help="pk: P classes x K images (CGD); ra: repeated augmentation (MultiGrain)")
    p.add_argument("--classes-per-batch", "-P", type=_positive_int, default=None, help="P of pk batches")
    p.add_argument("--images-per-class", "-K", type=_positive_int, default=None, help="K of pk batches")
    p.add_argument("--batch-size", type=_positive_int, default=None, help="batch size of ra batches")
    p.add_argument("--repeats", type=_positive_int, default=None, help="copies per image in ra batches")
    p.add_argument("--steps-per-epoch", type=_positive_int, default=None)
    p.add_argument("--learning-rate", "--lr", type=float, default=None)
    p.add_argument("--augmentation", default=None, help="cgd, multigrain, flip or none")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--small", action="store_true", default=None,
                   help="test-sized settings: 32 px, few images and steps (also KERAS_CGD_SMALL=1)")
    p.add_argument("--run-dir", default=None, help="run directory (default runs/<name>-<dataset>-<hash>)")
    p.add_argument("--fresh", action="store_true", help="ignore a saved run and start over")
    p.add_argument("--export-dir", default="savedmodels", help="SavedModel base directory (default savedmodels)")
    p.add_argument("--no-export", action="store_true", help="do not export a SavedModel")
    p.add_argument("--model-name", default=None, help="name under the export directory (default: preset)")
    p.add_argument("--ks", type=_positive_int, nargs="+", default=None, help="K values of Recall@K")
    _add_backend(p)

    p = sub.add_parser("evaluate", help="Recall@K (and MAP@R) of a .keras model on a dataset's test classes")
    p.add_argument("model", help=".keras file or run directory")
    _add_dataset(p)
    p.add_argument("--ks", type=_positive_int, nargs="+", default=[1, 2, 4, 8])
    p.add_argument("--small", action="store_true", default=None, help="test-sized built-in data")
    _add_backend(p)

    p = sub.add_parser("export", help="export a .keras model (or run directory) as a versioned SavedModel")
    p.add_argument("model", help=".keras file or run directory")
    p.add_argument("model_dir", nargs="?", default=None,
                   help="model base directory (default savedmodels/<file or run name>)")
    p.add_argument("--version", type=int, default=None, help="version number (default: next)")
    _add_backend(p)

    p = sub.add_parser("serve", help="reference TF Serving REST server (see `keras-cgd serve --help`)",
                       add_help=False)
    p.add_argument("serve_args", nargs=argparse.REMAINDER)

    p = sub.add_parser("search", help="top-k neighbours of query images in a gallery",
                       description="Embed a gallery (dataset or folder), build an exact index, and print "
                       "the top-k neighbours of each query image; --grid draws them.")
    p.add_argument("model", help=".keras file or run directory")
    p.add_argument("queries", nargs="+", help="query image files")
    _add_dataset(p, default="photo_views")
    p.add_argument("--gallery", default=None, help="gallery: a dataset (as --dataset) or a folder of images; "
                   "its test split is searched (default: --dataset)")
    p.add_argument("--index", default=None, help="index file: loaded if it exists and no --gallery is given, "
                   "else written after building")
    p.add_argument("-k", type=_positive_int, default=5, help="neighbours per query (default 5)")
    p.add_argument("--grid", default=None, help="write a PNG grid of the results")
    p.add_argument("--small", action="store_true", default=None, help="test-sized built-in data")
    _add_backend(p)

    sub.add_parser("presets", help="list the presets")
    return parser


# --------------------------------------------------------------------------- backend


def _select_backend(backend, argv):
    """Sets KERAS_BACKEND; re-executes the process if Keras is already on another backend."""
    if backend is None:
        return
    os.environ["KERAS_BACKEND"] = backend
    keras = sys.modules.get("keras")
    if keras is not None and keras.backend.backend() != backend:
        sys.stdout.flush()
        os.execv(sys.executable, [sys.executable, "-m", "keras_cgd.cli", *argv])


# --------------------------------------------------------------------------- commands


def cmd_train(args):
    from keras_cgd import training

    config = training.TrainConfig(
        dataset=args.dataset, preset=args.preset, model=args.model, backbone=args.backbone,
        descriptors=args.descriptors, embedding_dim=args.embedding_dim, image_size=args.image_size,
        weights=args.weights, epochs=args.epochs, batching=args.batching,
        classes_per_batch=args.classes_per_batch, images_per_class=args.images_per_class,
        batch_size=args.batch_size, repeats=args.repeats, steps_per_epoch=args.steps_per_epoch,
        learning_rate=args.learning_rate, augmentation=args.augmentation, seed=args.seed,
        small=args.small, run_dir=args.run_dir, fresh=args.fresh,
        export_dir=None if args.no_export else args.export_dir, model_name=args.model_name,
        recall_ks=tuple(args.ks) if args.ks else None,
    )
    result = training.train(config, log=lambda line: print(line, flush=True))
    print(f"done in {result['seconds']:.0f} s; checkpoint {result['checkpoint']}")
    return 0


def cmd_evaluate(args):
    from keras_cgd import training

    training.check_dataset_spec(args.dataset)
    model = training.load_model(args.model)
    small = training.small_from_env() if args.small is None else args.small
    splits = training.resolve_dataset(args.dataset, model.input_shape[1], small)
    out = training.evaluate(model, splits, args.ks, with_map=True)
    print(f"{splits.name}: {len(splits.test)} test images, {splits.test.num_classes} classes")
    print(f"{training.format_recall(out['recall'])}  MAP@R {out['map_at_r']:.3f}")
    return 0


def cmd_export(args):
    from keras_cgd import training
    from keras_cgd.export import export_saved_model

    model = training.load_model(args.model)
    model_dir = args.model_dir
    if model_dir is None:
        base = os.path.basename(os.path.normpath(args.model))
        model_dir = os.path.join("savedmodels", os.path.splitext(base)[0])
    print(export_saved_model(model, model_dir, version=args.version))
    return 0


def _gallery(spec, image_size, small):
    """The gallery `ImageDataset`: every image of an image folder, or a dataset's test split.

    A flat folder of images gives one "class" per file (hidden files skipped); a folder
    of class sub-folders gives all of its classes; a built-in or standard dataset (or a
    folder with train/ and test/ sub-folders) gives its test split. Unreadable image
    files are left out and reported.
    """
    from keras_cgd import data
    from keras_cgd import training

    if os.path.isdir(spec) and not any(
        os.path.isdir(os.path.join(spec, d)) and not d.startswith(".") for d in os.listdir(spec)
    ):
        files = sorted(f for f in os.listdir(spec)
                       if not f.startswith(".") and f.lower().endswith(data.readers.IMAGE_EXTENSIONS))
        paths = [os.path.join(spec, f) for f in files]
        ok, _, reasons = data.readers.validate_image_files(paths)
        for i in sorted(reasons):
            print(f"skipped unreadable gallery file {paths[i]} ({reasons[i]})", file=sys.stderr)
        files = [f for f, good in zip(files, ok) if good]
        if not files:
            raise UsageError(f"Invalid value received for argument `gallery`. Expected a folder with readable "
                             f"images ({len(reasons)} unreadable). Received: gallery={spec!r}")
        return data.ImageDataset(list(range(len(files))), files, paths=[os.path.join(spec, f) for f in files],
                                 skipped=[(paths[i], reasons[i]) for i in sorted(reasons)], root=spec)
    kind, value = training.check_dataset_spec(spec)
    has_splits = all(os.path.isdir(os.path.join(value, d)) for d in ("train", "test"))
    if kind == "folder" and not has_splits:
        return data.image_folder(value)  # all classes: nothing is held out at search time
    return training.resolve_dataset(spec, image_size, small).test


def _read_query(path, image_size):
    from PIL import Image
    import numpy as np

    if not os.path.isfile(path):
        raise UsageError(f"Invalid value received for argument `queries`. Expected image files. Received: {path!r}")
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB").resize((image_size, image_size), Image.BILINEAR))
    except OSError as e:
        raise UsageError(f"Invalid value received for argument `queries`: cannot read {path!r} ({e})")


def cmd_search(args):
    import numpy as np

    from keras_cgd import training
    from keras_cgd.index import ExactIndex
    from keras_cgd.index import load_index

    for q in args.queries:
        if not os.path.isfile(q):
            raise UsageError(f"Invalid value received for argument `queries`. Expected image files. Received: {q!r}")
    if args.gallery is not None and not os.path.isdir(args.gallery):
        training.check_dataset_spec(args.gallery)
    model = training.load_model(args.model)
    size = int(model.input_shape[1])
    small = training.small_from_env() if args.small is None else args.small
    gallery = None
    if args.index and os.path.isfile(args.index) and args.gallery is None:
        index = load_index(args.index)
    else:
        gallery = _gallery(args.gallery or args.dataset, size, small)
        index = ExactIndex()
        meta = [
            {"label": gallery.class_names[int(lab)], "path": None if gallery.paths is None else str(gallery.paths[i])}
            for i, lab in enumerate(gallery.labels)
        ]
        index.add(training.embed(model, gallery), metadata=meta)
        if args.index:
            index.save(args.index)
            print(f"index of {len(index)} images written to {args.index}")
    k = min(args.k, len(index))
    queries = np.stack([_read_query(q, size) for q in args.queries])
    emb = np.asarray(model.predict(queries.astype("float32"), verbose=0)["embedding"])
    ids, scores = index.search(emb, k)
    meta = index.get_metadata(ids)
    for q, row_ids, row_scores, row_meta in zip(args.queries, ids, scores, meta):
        print(q)
        for rank, (i, s, m) in enumerate(zip(row_ids, row_scores, row_meta), 1):
            m = m or {}
            where = m.get("path") or f"#{int(i)}"
            print(f"  {rank:2d}. {s:.4f}  {m.get('label', '')}  {where}")
    if args.grid:
        from keras_cgd.evaluation import plot_retrieval_grid

        if gallery is None:
            raise UsageError("Invalid value received for argument `grid`. Drawing needs the gallery images: "
                             "pass --gallery. Received: grid=" + repr(args.grid))
        names = gallery.class_names
        query_labels = [os.path.basename(os.path.dirname(os.path.abspath(q))) for q in args.queries]
        gallery_labels = [names[int(lab)] for lab in gallery.labels]
        pos = {int(i): j for j, i in enumerate(index.ids)}

        class _Lazy:
            def __getitem__(self, g):
                if gallery.images is not None:
                    return gallery.images[g]
                return _read_query(gallery.paths[g], size)

        neighbours = np.vectorize(lambda i: pos[int(i)])(ids)
        plot_retrieval_grid(list(queries), query_labels, _Lazy(), gallery_labels, neighbours, args.grid)
        print(f"grid written to {args.grid}")
    return 0


def cmd_presets(args):
    from keras_cgd.models.presets import get_preset
    from keras_cgd.models.presets import list_presets

    names = list_presets()
    width = max(len(n) for n in names)
    for name in names:
        p = get_preset(name)
        print(f"{name:<{width}}  {p['model']:<10}  {p.get('description', '')}")
    return 0


COMMANDS = {
    "train": cmd_train,
    "evaluate": cmd_evaluate,
    "export": cmd_export,
    "search": cmd_search,
    "presets": cmd_presets,
}


def main(argv=None):
    """`keras-cgd` entry point; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "serve":
        from keras_cgd.serving import main as serve_main

        return serve_main(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)  # exits 2 with a usage line on bad syntax
    if args.command is None:
        parser.print_help()
        return 0
    _select_backend(getattr(args, "backend", None), argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        return COMMANDS[args.command](args)
    except (UsageError, ValueError, TypeError, FileNotFoundError) as e:
        if os.environ.get("KERAS_CGD_DEBUG"):
            raise
        message = " ".join(str(e).split()) or type(e).__name__
        print(f"keras-cgd {args.command}: error: {message}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"\nkeras-cgd {args.command}: interrupted; rerun the same command to resume "
              "from the last completed epoch.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
