"""Vector indexes with ids and metadata: exact (NumPy) and FAISS (optional).

`FaissIndex` imports `faiss` only when it is constructed.
"""

from keras_cgd.index.base import BaseIndex
from keras_cgd.index.base import load_index
from keras_cgd.index.exact import ExactIndex
from keras_cgd.index.faiss_index import FaissIndex
