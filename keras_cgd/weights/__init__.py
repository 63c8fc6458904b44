"""Foreign weights: one mapping table format (`WeightTable`) and one loader (`port_weights`).

Readers for state-dict files (`.pth`, `.safetensors`, `.npz`) live in `keras_cgd.weights.readers`.
"""

from keras_cgd.weights.mapping import WeightMappingError
from keras_cgd.weights.mapping import WeightTable
from keras_cgd.weights.mapping import port_weights

__all__ = ["WeightMappingError", "WeightTable", "port_weights"]
