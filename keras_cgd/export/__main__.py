"""`python -m keras_cgd.export REQUEST.json`: the TF-backend export subprocess.

Writes the SavedModel into the request's `output_dir` without publishing it.
`export_saved_model` starts the same entry point (through a small bootstrap that
watches its parent) when the current Keras backend is not TensorFlow.
"""

import sys

from keras_cgd.export.saved_model import _subprocess_main

if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: KERAS_BACKEND=tensorflow python -m keras_cgd.export REQUEST.json")
    sys.exit(_subprocess_main(sys.argv[1]))
