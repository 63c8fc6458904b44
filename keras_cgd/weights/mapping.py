"""One weight-mapping mechanism: a table from source tensor names to Keras variables.

Every architecture that loads foreign weights (torchvision ResNets, EfficientNet-Lite0,
MultiGrain and CGD checkpoints) describes its weights as a `WeightTable`: rows of
`(source_name, layer_name, variable_name, transform)`. `port_weights` applies a table to a
model from a dict of NumPy arrays (however the file was read), checking that every source
tensor is used, every table row finds its tensor, and every shape matches — each failure
raises one error that names the tensors. The backbone never knows where its weights came
from (the keras-hub converter pattern: one small table per architecture, one loader).

Transforms (PyTorch layout → Keras layout):

| name        | source shape      | Keras shape        |
|-------------|-------------------|--------------------|
| "identity"  | any               | same               |
| "conv2d"    | (out, in, kh, kw) | (kh, kw, in, out)  |
| "depthwise" | (C, 1, kh, kw)    | (kh, kw, C, 1)     |
| "dense"     | (out, in)         | (in, out)          |

Example:

>>> table = WeightTable()
>>> table.conv("conv1", "conv1")              # conv1.weight -> conv1/kernel
>>> table.batch_norm("bn1", "bn1")            # bn1.{weight,bias,running_mean,running_var}
>>> port_weights(model, tensors, table, ignore=("fc.",))
"""

import numpy as np

TRANSFORMS = {
    "identity": lambda a: a,
    "conv2d": lambda a: np.transpose(a, (2, 3, 1, 0)),
    "depthwise": lambda a: np.transpose(a, (2, 3, 0, 1)),
    "dense": lambda a: np.transpose(a, (1, 0)),
}

# PyTorch BatchNorm buffers that carry no Keras variable.
DEFAULT_IGNORED_SUFFIXES = (".num_batches_tracked",)


class WeightMappingError(ValueError):
    """A source state dict does not fit a model: names the missing, unexpected or misshapen tensors."""


class WeightTable:
    """Rows `(source_name, layer_name, variable_name, transform)`, in order.

    `variable_name` is the Keras variable's own name within its layer (`kernel`, `bias`,
    `gamma`, `beta`, `moving_mean`, `moving_variance`, or a custom
    layer's variable name). A sublayer of a layer is named by its path,
    e.g. `("main_modules.0.0.weight", "cgd/gem_projection", "kernel", "dense")`.
    """

    def __init__(self, rows=()):
        self.rows = []
        for row in rows:
            self.add(*row)

    def add(self, source, layer, variable, transform="identity"):
        if transform not in TRANSFORMS:
            raise ValueError(
                "Invalid value received for argument `transform`. Expected one of "
                f"{sorted(TRANSFORMS)}. Received: transform={transform!r}"
            )
        self.rows.append((source, layer, variable, transform))
        return self

    # Builders for the common PyTorch modules ------------------------------------------
    def conv(self, source, layer, bias=False):
        """`source.weight` (out, in, kh, kw) → `layer/kernel` (+ `source.bias` → `layer/bias`)."""
        self.add(f"{source}.weight", layer, "kernel", "conv2d")
        if bias:
            self.add(f"{source}.bias", layer, "bias")
        return self

    def depthwise_conv(self, source, layer, bias=False):
        """`source.weight` (C, 1, kh, kw) → `layer/kernel` of a Keras 3 DepthwiseConv2D (kh, kw, C, 1)."""
        self.add(f"{source}.weight", layer, "kernel", "depthwise")
        if bias:
            self.add(f"{source}.bias", layer, "bias")
        return self

    def batch_norm(self, source, layer):
        """PyTorch BatchNorm (weight, bias, running_mean, running_var) → Keras BN."""
        self.add(f"{source}.weight", layer, "gamma")
        self.add(f"{source}.bias", layer, "beta")
        self.add(f"{source}.running_mean", layer, "moving_mean")
        self.add(f"{source}.running_var", layer, "moving_variance")
        return self

    def dense(self, source, layer, bias=True):
        """PyTorch Linear (out, in) → Keras Dense kernel (in, out) (+ bias)."""
        self.add(f"{source}.weight", layer, "kernel", "dense")
        if bias:
            self.add(f"{source}.bias", layer, "bias")
        return self

    def extend(self, other, source_prefix="", layer_prefix=""):
        """Append `other`'s rows with prefixes on their source and layer names."""
        for source, layer, variable, transform in other.rows:
            self.add(source_prefix + source, layer_prefix + layer, variable, transform)
        return self

    def renamed(self, rename_source=None, rename_layer=None):
        """A copy whose source / layer names went through the given functions."""
        rs = rename_source or (lambda s: s)
        rl = rename_layer or (lambda s: s)
        return WeightTable((rs(s), rl(l), v, t) for s, l, v, t in self.rows)

    @property
    def sources(self):
        return [row[0] for row in self.rows]

    def __len__(self):
        return len(self.rows)

    def __iter__(self):
        return iter(self.rows)

    def __repr__(self):
        return f"WeightTable({len(self.rows)} rows)"


def _variables_by_path(model):
    """`{"layer_name/variable_name": variable}` over every layer of `model`, nested models included."""
    out = {}

    def visit(layer):
        sub = getattr(layer, "layers", None)
        if sub:
            for s in sub:
                visit(s)
        for v in layer.weights:
            name = v.path.split("/")[-1] if hasattr(v, "path") else v.name
            out.setdefault(f"{layer.name}/{name}", v)
            if hasattr(v, "path"):
                # Sublayers of a layer (not of a model) by their full path, e.g.
                # "cgd/gem_projection/kernel" inside CombinedGlobalDescriptor.
                out.setdefault(v.path, v)

    visit(model)
    return out


def _summary(names, limit=8):
    names = sorted(names)
    text = ", ".join(names[:limit])
    return text + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def port_weights(model, tensors, table, ignore=(), source="the state dict"):
    """Assign `tensors` (a dict name → array) to `model`'s variables as `table` says.

    Args:
        model: a built `keras.Model` (or layer) holding the table's layers.
        tensors: `{source_name: array-like}` (NumPy arrays; torch tensors are converted).
        table: a `WeightTable`.
        ignore: source-name prefixes (or exact names) to leave unused without error, e.g.
            `("fc.",)` for a headless backbone. `*.num_batches_tracked` is always ignored.
        source: how to name the tensors' origin in errors (a file path).

    Returns:
        The number of variables assigned.

    Raises:
        WeightMappingError: naming every source tensor the table does not use
        ("unexpected"), every table row whose tensor is absent ("missing"), every table
        row whose layer/variable the model lacks, and every shape mismatch (expected vs
        received), before any variable is changed.
    """
    ignore = tuple(ignore)
    variables = _variables_by_path(model)
    used = set()
    missing, no_variable, misshapen, plan = [], [], [], []
    for src, layer, var, transform in table:
        path = f"{layer}/{var}"
        if src not in tensors:
            missing.append(src)
            continue
        used.add(src)
        if path not in variables:
            no_variable.append(path)
            continue
        value = TRANSFORMS[transform](np.asarray(tensors[src]))
        target = variables[path]
        if tuple(value.shape) != tuple(target.shape):
            misshapen.append(f"{src} {tuple(np.shape(tensors[src]))} -> {path} expects "
                             f"{tuple(target.shape)} after {transform!r}")
            continue
        plan.append((target, value))
    unexpected = [
        k for k in tensors
        if k not in used
        and not k.endswith(DEFAULT_IGNORED_SUFFIXES)
        and not any(k == p or k.startswith(p) for p in ignore)
    ]
    problems = []
    if missing:
        problems.append(f"missing tensors: {_summary(missing)}")
    if unexpected:
        problems.append(f"unexpected tensors: {_summary(unexpected)}")
    if misshapen:
        problems.append(f"misshapen tensors: {_summary(misshapen, 4)}")
    if no_variable:
        problems.append(f"the model has no variable {_summary(no_variable)}")
    if problems:
        raise WeightMappingError(
            f"The weights in {source} do not fit {getattr(model, 'name', 'the model')!r}: "
            + "; ".join(problems)
        )
    for target, value in plan:
        target.assign(value.astype(target.dtype))
    return len(plan)
