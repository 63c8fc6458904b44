"""`keras-cgd index EMBEDDINGS INDEX`: build a searchable index from embedding shards.

    keras-cgd index embeddings/ photos.index                          # exact (NumPy)
    keras-cgd index embeddings/ photos.index --backend faiss --factory IVF1024,PQ32,Refine(SQ8) \\
        --nprobe 16 --k-factor 8                                     # FAISS, trained on a sample
    keras-cgd index embeddings/ photos.index --backend milvus --uri photos.db        # Milvus Lite
    keras-cgd index embeddings/ photos.index --backend milvus --uri http://milvus:19530

EMBEDDINGS is an output folder of `keras-cgd embed` (or of its Beam pipeline);
the shards are added one at a time, each vector with its id and
`{"key": <image path>}` as metadata. INDEX is the index file that
`keras-cgd search --index INDEX` and `keras_cgd.index.load_index` read (for
Milvus: a small file naming the database and collection). An existing INDEX
file, or a non-empty Milvus collection, is refused (nothing overwritten). For
FAISS the memory the index will take is printed before it is built
(`--dry-run`: only that).
"""

import argparse
import os
import sys

EXIT_USAGE = 2


def add_arguments(parser):
    """Adds the arguments of `keras-cgd index` to an `argparse` parser."""
    parser.add_argument("embeddings", help="output folder of `keras-cgd embed`")
    parser.add_argument("index", help="index file to write (refused if it exists)")
    parser.add_argument("--backend", choices=["exact", "faiss", "milvus"], default="exact",
                        help="exact (NumPy, default), faiss or milvus")
    parser.add_argument("--metric", choices=["cosine", "inner_product", "euclidean"], default="cosine")
    parser.add_argument("--factory", default="Flat", help="FAISS factory string, e.g. IVF1024,PQ32 or HNSW32")
    parser.add_argument("--nprobe", type=int, default=None, help="FAISS IVF lists searched per query")
    parser.add_argument("--ef-search", type=int, default=None, help="FAISS HNSW search queue length")
    parser.add_argument("--k-factor", type=int, default=None, help="FAISS Refine candidates per result")
    parser.add_argument("--ef-construction", type=int, default=None, help="FAISS HNSW build queue length")
    parser.add_argument("--train-size", type=int, default=None,
                        help="FAISS training-sample size (default: from the factory)")
    parser.add_argument("--uri", default=None,
                        help="Milvus: a local .db file (Milvus Lite; default INDEX with .db) or a server URI")
    parser.add_argument("--collection", default="keras_cgd", help="Milvus collection (default keras_cgd)")
    parser.add_argument("--index-type", default="FLAT", help="Milvus index type (FLAT, IVF_FLAT, HNSW, ...)")
    parser.add_argument("--no-keys", action="store_true", help="do not store the image paths as metadata")
    parser.add_argument("--dry-run", action="store_true", help="FAISS: print the memory estimate and stop")
    return parser


def build_parser(prog="keras-cgd index"):
    """The `argparse` parser of `keras-cgd index`."""
    parser = argparse.ArgumentParser(
        prog=prog, description="Build an exact, FAISS or Milvus index from the shards of `keras-cgd embed`.")
    return add_arguments(parser)


def run(args, log=print):
    """Builds the index for parsed `args`; returns the exit code."""
    from keras_cgd import index as indexes
    from keras_cgd.embedding.shards import finished_output

    manifest, _ = finished_output(args.embeddings)  # a clear error before any work
    if os.path.exists(args.index):
        raise ValueError(
            "Invalid value received for argument `index`. Expected a new file; nothing is "
            f"overwritten (delete it first). Received: index={args.index!r}, which exists"
        )
    n, dimension = manifest["num_embeddings"], manifest["dimension"]
    metadata = None if args.no_keys else "key"
    if args.backend == "faiss":
        index = indexes.FaissIndex(metric=args.metric, dimension=dimension, factory=args.factory,
                                   nprobe=args.nprobe, ef_search=args.ef_search, k_factor=args.k_factor,
                                   ef_construction=args.ef_construction)
        estimate = index.estimate_memory(n)
        log(f"FAISS {args.factory!r} for {n} vectors of dimension {dimension}: about "
            f"{estimate / 2**20:.1f} MiB (without metadata)")
        if args.dry_run:
            return 0
        index.add_shards(args.embeddings, metadata=metadata, train_size=args.train_size)
    elif args.backend == "milvus":
        uri = args.uri or os.path.splitext(args.index)[0] + ".db"
        index = indexes.MilvusIndex(uri, collection=args.collection, metric=args.metric, dimension=dimension,
                                    index_type=args.index_type)
        if len(index):
            raise ValueError(
                "Invalid value received for argument `collection`. The collection "
                f"{args.collection!r} in {uri!r} already holds {len(index)} vectors; nothing was "
                f"added. Choose another --collection. Received: collection={args.collection!r}"
            )
        index.add_shards(args.embeddings, metadata=metadata)
    else:
        index = indexes.ExactIndex(metric=args.metric, dimension=dimension)
        index.add_shards(args.embeddings, metadata=metadata)
    index.save(args.index)
    log(f"index of {len(index)} vectors ({args.backend}"
        + (f" {args.factory}" if args.backend == "faiss" else "") + f") written to {args.index}")
    return 0


def main(argv=None):
    """`keras-cgd index` entry point (argv without the `index` word); returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return run(args)
    except (ValueError, TypeError, FileNotFoundError, ImportError) as e:
        if os.environ.get("KERAS_CGD_DEBUG"):
            raise
        print(f"{parser.prog}: error: {' '.join(str(e).split())}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
