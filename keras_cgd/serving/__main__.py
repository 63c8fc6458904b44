"""`python -m keras_cgd.serving BASE_DIR [--port 8501]`: the reference server."""

import sys

from keras_cgd.serving.server import main

if __name__ == "__main__":
    sys.exit(main())
