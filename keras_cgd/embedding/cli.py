"""`keras-cgd embed MODEL SOURCE OUT`: bulk embedding to Parquet shards (or with Beam).

    keras-cgd embed runs/cgd_tiny photos/ embeddings/            # resumable, one machine
    keras-cgd embed savedmodels/cgd_tiny "photos/**/*.jpg" emb/ --beam   # Beam DirectRunner
    keras-cgd embed /shared/savedmodels/cgd /shared/records/ /shared/emb --beam \\
        --runner=FlinkRunner --flink_master=flink:8081

With `--beam`, every argument this command does not know is passed to Beam's
`PipelineOptions` (`--runner`, `--direct_num_workers`, Dataflow/Flink/Spark
options). Exit codes: 0 done, 2 bad arguments (one line naming the value),
130 interrupted (rerun the same command to resume).

Also runnable as `python -m keras_cgd.embedding.cli ...`.
"""

import argparse
import os
import sys

EXIT_USAGE = 2


def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive int, received {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive int, received {text!r}")
    return value


def add_arguments(parser):
    """Adds the arguments of `keras-cgd embed` to an `argparse` parser."""
    from keras_cgd.embedding.job import DEFAULT_BATCH_SIZE
    from keras_cgd.embedding.job import DEFAULT_SHARD_SIZE

    parser.add_argument("model", help=".keras file, run directory, SavedModel folder or TF Serving "
                        "model base path (--beam: a SavedModel)")
    parser.add_argument("source", help="folder of images, glob (quote it), .txt file list, or "
                        "TFRecord files (.tfrecord) of tf.train.Example with image/encoded")
    parser.add_argument("out", help="output folder: Parquet shards + manifest.json + skipped.jsonl")
    parser.add_argument("--batch-size", type=_positive_int, default=DEFAULT_BATCH_SIZE,
                        help=f"images per model call (default {DEFAULT_BATCH_SIZE})")
    parser.add_argument("--shard-size", type=_positive_int, default=DEFAULT_SHARD_SIZE,
                        help=f"images per shard, the resume granularity (default {DEFAULT_SHARD_SIZE})")
    parser.add_argument("--quiet", "-q", action="store_true",
                        help="no progress bar (unreadable images are still reported)")
    parser.add_argument("--beam", action="store_true",
                        help="run as an Apache Beam pipeline (RunInference on the SavedModel); "
                        "unknown arguments go to Beam's PipelineOptions (default --runner DirectRunner)")
    parser.add_argument("--backend", choices=["tensorflow", "jax"], default=None,
                        help="Keras backend for a .keras model (sets KERAS_BACKEND)")
    return parser


def build_parser(prog="keras-cgd embed"):
    """The `argparse` parser of `keras-cgd embed`."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Embed every image of SOURCE with MODEL into Parquet shards under OUT "
        "(ids, keys, embeddings). Unreadable images are skipped and reported; rerunning the "
        "same command after an interruption resumes from the last finished shard.",
    )
    return add_arguments(parser)


def _select_backend(backend, argv):
    if backend is None:
        return
    os.environ["KERAS_BACKEND"] = backend
    keras = sys.modules.get("keras")
    if keras is not None and keras.backend.backend() != backend:
        sys.stdout.flush()
        os.execv(sys.executable, [sys.executable, "-m", "keras_cgd.embedding.cli", *argv])


def run(args, beam_args=()):
    """Runs `keras-cgd embed` for parsed `args`; returns the exit code."""
    if args.beam:
        from keras_cgd.embedding.beam import run_beam_pipeline

        result = run_beam_pipeline(args.model, args.source, args.out, batch_size=args.batch_size,
                                   pipeline_args=list(beam_args))
    else:
        from keras_cgd.embedding.job import embed_images

        result = embed_images(args.model, args.source, args.out, batch_size=args.batch_size,
                              shard_size=args.shard_size, quiet=args.quiet)
    if not args.quiet:
        resumed = result.get("resumed_shards")
        print(f"{result['num_embeddings']} embeddings (dimension {result['dimension']}) in "
              f"{result['num_shards']} shard(s) under {result['out']}; {result['num_skipped']} "
              f"unreadable image(s) skipped"
              + (f"; {resumed} shard(s) kept from an earlier run" if resumed else "")
              + f" ({result['seconds']:.1f} s)")
    return 0


def main(argv=None):
    """`keras-cgd embed` entry point (argv without the `embed` word); returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown and not args.beam:
        print(f"{parser.prog}: error: unrecognized arguments: {' '.join(unknown)} (Beam "
              f"pipeline options need --beam; see `{parser.prog} --help`)", file=sys.stderr)
        return EXIT_USAGE
    _select_backend(args.backend, argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        return run(args, unknown)
    except (ValueError, TypeError, FileNotFoundError, ImportError) as e:
        if os.environ.get("KERAS_CGD_DEBUG"):
            raise
        message = " ".join(str(e).split()) or type(e).__name__
        print(f"{parser.prog}: error: {message}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"\n{parser.prog}: interrupted; rerun the same command to resume from the last "
              "finished shard.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
