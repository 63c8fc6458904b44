"""`keras-cgd search`: top-k neighbours of query images in a gallery."""

import os
import sys

from keras_cgd.cli._common import Output
from keras_cgd.cli._common import UsageError
from keras_cgd.cli._common import add_backend
from keras_cgd.cli._common import add_dataset
from keras_cgd.cli._common import positive_int


def add_parser(sub):
    """Adds the `search` sub-command to `sub` (an argparse sub-parsers object)."""
    p = sub.add_parser("search", help="top-k neighbours of query images in a gallery",
                       description="Embed a gallery (dataset or folder), build an exact index, and print "
                       "the top-k neighbours of each query image; --grid draws them.")
    from keras_cgd.cli.evaluate import MODEL_HELP

    p.add_argument("model", help=MODEL_HELP)
    p.add_argument("queries", nargs="+", help="query image files")
    add_dataset(p, default="photo_views")
    p.add_argument("--gallery", default=None, help="gallery: a dataset (as --dataset) or a folder of images; "
                   "its test split is searched (default: --dataset)")
    p.add_argument("--index", default=None, help="index file: loaded if it exists and no --gallery is given, "
                   "else written after building")
    p.add_argument("-k", type=positive_int, default=5, help="neighbours per query (default 5)")
    p.add_argument("--grid", default=None, help="write a PNG grid of the results")
    p.add_argument("--small", action="store_true", default=None, help="test-sized built-in data")
    add_backend(p)
    p.set_defaults(run=run)
    return p


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


def run(args):
    import numpy as np

    from keras_cgd import training
    from keras_cgd.index import ExactIndex
    from keras_cgd.index import load_index

    out = Output(args)
    for q in args.queries:
        if not os.path.isfile(q):
            raise UsageError(f"Invalid value received for argument `queries`. Expected image files. Received: {q!r}")
    if args.gallery is not None and not os.path.isdir(args.gallery):
        training.check_dataset_spec(args.gallery)
    _, target = training.describe_model_path(args.model)
    model = training.load_embedder(args.model)
    size = training.model_image_size(model)
    out.log(f"loaded {target} ({size} px)")
    small = training.small_from_env() if args.small is None else args.small
    gallery = None
    if args.index and os.path.isfile(args.index) and args.gallery is None:
        index = load_index(args.index)
        out.log(f"loaded the index of {len(index)} images from {args.index}")
    else:
        gallery = _gallery(args.gallery or args.dataset, size, small)
        index = ExactIndex()
        meta = [
            {"label": gallery.class_names[int(lab)], "path": None if gallery.paths is None else str(gallery.paths[i])}
            for i, lab in enumerate(gallery.labels)
        ]
        index.add(training.embed(model, gallery, progress=out.show_progress(),
                                 desc=f"embedding {len(gallery)} gallery images"), metadata=meta)
        if args.index:
            index.save(args.index)
            out.log(f"index of {len(index)} images written to {args.index}")
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
        out.log(f"grid written to {args.grid}")
    return 0
