"""`python -m keras_cgd.cli` runs `keras-cgd`."""

import sys

from keras_cgd.cli import main

sys.exit(main())
