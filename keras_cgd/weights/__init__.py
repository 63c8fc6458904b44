"""Foreign weights: state-dict readers and one mapping mechanism.

- `read_state_dict` / `read_checkpoint` (`keras_cgd.weights.readers`): `.pth` / `.pt` /
  `.bin` (PyTorch, never executing code from the file), `.safetensors`, `.npz` → NumPy.
- `WeightTable` + `port_weights` (`keras_cgd.weights.mapping`): one table format from
  source tensor names to Keras variables, one loader.

Importing this package needs NumPy only (torch and safetensors are imported when a file
of theirs is read).
"""

from keras_cgd.weights.mapping import WeightMappingError
from keras_cgd.weights.mapping import WeightTable
from keras_cgd.weights.mapping import port_weights
from keras_cgd.weights.readers import CheckpointError
from keras_cgd.weights.readers import flatten_state_dict
from keras_cgd.weights.readers import read_checkpoint
from keras_cgd.weights.readers import read_state_dict

__all__ = [
    "CheckpointError",
    "WeightMappingError",
    "WeightTable",
    "flatten_state_dict",
    "port_weights",
    "read_checkpoint",
    "read_state_dict",
]
