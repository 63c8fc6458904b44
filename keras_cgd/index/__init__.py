"""Vector indexes with ids and metadata: exact (NumPy), FAISS and Milvus (optional).

`FaissIndex` imports `faiss`, and `MilvusIndex` imports `pymilvus`, only when
constructed; `estimate_faiss_memory` needs neither.
"""

from keras_cgd.index.base import BaseIndex
from keras_cgd.index.base import load_index
from keras_cgd.index.exact import ExactIndex
from keras_cgd.index.faiss_index import FaissIndex
from keras_cgd.index.faiss_index import estimate_faiss_memory
from keras_cgd.index.milvus_index import MilvusIndex
