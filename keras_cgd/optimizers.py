"""Optimizers of the paper recipes: SGD with weight decay added to the gradient (PyTorch's rule)."""

from keras import ops
from keras import optimizers

from keras_cgd.api_export import keras_cgd_export


@keras_cgd_export
class CoupledWeightDecaySGD(optimizers.SGD):
    r"""SGD with momentum whose weight decay is added to the gradient (`torch.optim.SGD`).

    With gradient `g_t`, weight `w_t`, weight decay λ, momentum μ and learning rate η_t:

        g'_t = g_t + λ·w_t                       (only for decayed variables)
        b_t  = μ·b_{t-1} + g'_t                  (b_0 = 0; nesterov: g'_t + μ·b_t)
        w_{t+1} = w_t − η_t·b_t

    The decay goes through the momentum, so with zero loss gradient a weight shrinks
    by the factor of the linear recursion above, about `(1 − ηλ/(1−μ))` per step
    (1000 steps at η 0.2, μ 0.9, λ 1e-4: 0.980 → 0.820 of Keras' decoupled
    `SGD(weight_decay=...)`, which subtracts only `ηλ·w` once per step). This is L2
    regularisation `λ/2·|w|²` of the loss, as MultiGrain's reference code trains
    (`torch.optim.SGD(..., weight_decay=1e-4)`). The buffer `b` is PyTorch's (it is
    multiplied by the current η at every step), so a learning-rate drop acts at once,
    as in PyTorch, rather than through a velocity scaled by past rates.

    Variables excluded with `exclude_from_weight_decay` (MultiGrain's β) get no decay.

    Args:
        learning_rate: float, schedule or callable (η).
        momentum: μ in [0, 1] (0.9 in MultiGrain).
        nesterov: Nesterov momentum as in PyTorch.
        weight_decay: λ (1e-4 in MultiGrain) or None.
        **kwargs: other `keras.optimizers.Optimizer` arguments (`clipnorm`, ...).

    Example:

    >>> opt = CoupledWeightDecaySGD(learning_rate=0.2, momentum=0.9, weight_decay=1e-4)
    >>> model.compile(optimizer=opt, loss=...)  # doctest: +SKIP

    Reference: Berman et al., "MultiGrain", arXiv:1902.05509, `scripts/train.py`
    (SGD lr 0.2, momentum 0.9, weight decay 1e-4); PyTorch `torch.optim.SGD`.
    """

    def __init__(self, learning_rate=0.01, momentum=0.0, nesterov=False, weight_decay=None,
                 name="coupled_weight_decay_sgd", **kwargs):
        if weight_decay is not None and not (isinstance(weight_decay, (int, float)) and weight_decay >= 0):
            raise ValueError(
                "Invalid value received for argument `weight_decay`. Expected a float >= 0 "
                f"or None. Received: weight_decay={weight_decay!r}"
            )
        super().__init__(learning_rate=learning_rate, momentum=float(momentum), nesterov=nesterov,
                         weight_decay=weight_decay, name=name, **kwargs)

    def _apply_weight_decay(self, variables):
        # The decay is part of the gradient (`update_step`), not a separate shrink.
        return

    def update_step(self, gradient, variable, learning_rate):
        learning_rate = ops.cast(learning_rate, variable.dtype)
        gradient = ops.cast(gradient, variable.dtype)
        if self.weight_decay and self._use_weight_decay(variable):
            gradient = gradient + ops.cast(self.weight_decay, variable.dtype) * variable
        if self.momentum == 0:
            self.assign_sub(variable, learning_rate * gradient)
            return
        momentum = ops.cast(self.momentum, variable.dtype)
        buffer = self.momentums[self._get_variable_index(variable)]
        new_buffer = momentum * buffer + gradient
        self.assign(buffer, new_buffer)
        step = gradient + momentum * new_buffer if self.nesterov else new_buffer
        self.assign_sub(variable, learning_rate * step)
