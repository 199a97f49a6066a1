"""Alternated pairwise learning: the Trifecta's overlapping local updates, for FF layers.

Source: T. Dooms, I. J. Tsang, J. Oramas, "The Trifecta: Three simple techniques for training
deeper Forward-Forward networks" (arXiv 2311.18130), after LoCo (Xiong, Ren, Urtasun, NeurIPS 2020).
Their official code (github.com/tdooms/trifecta, ``should_detach``) alternates, step by step,
which layers compute their loss: on a step t, layer i learns from its own FF loss when
``(i even) xor (t even)``; the loss then also reaches the layer below it (its optimiser holds both
layers' parameters) through the upper layer's weights, normalisation and ReLU. The other layers
compute no loss that step; a layer is thus trained by its own loss on one step and by the loss of
the layer above on the next, which gives it an implicit error signal from above.

On an analog array, the error that reaches the lower layer crosses the upper layer's weights
backwards: a transposed MVM (:meth:`analogff.layers.AnalogLayer.error_through`), counted as
backward DAC/ADC conversions, which plain FF never needs. The normalisation's and ReLU's
derivatives are digital periphery work (:func:`analogff.accounting.norm_backward`).

Differences from the Trifecta: its blocks are conv layers and each block's Adam keeps separate
state for the lower block's parameters; here a layer keeps one optimiser state, fed by its own
loss on one step and the upper loss on the next.
"""

from __future__ import annotations

import torch


def learns_from_own_loss(i: int, step: int) -> bool:
    """Whether layer ``i`` (0-based) computes its own FF loss on training step ``step`` (0-based):
    the Trifecta's alternation, ``(i even) xor (step even)``."""
    return (i % 2 == 0) != (step % 2 == 0)


def length_norm_backward(h: torch.Tensor, g: torch.Tensor, eps: float) -> torch.Tensor:
    """dL/dh for y = h / (rms(h) + eps) (rms over each row of n), given g = dL/dy:
    g / s - h (g . h) / (n r s^2), r = rms(h), s = r + eps."""
    n = h.shape[1]
    r = h.pow(2).mean(1, keepdim=True).sqrt()
    s = r + eps
    gh = (g * h).sum(1, keepdim=True)
    live = r > 0  # an all-zero row: y = 0 / eps, its derivative g / eps (no second term)
    coef = torch.where(live, gh / (n * torch.where(live, r, 1.0) * s * s), 0.0)
    return g / s - h * coef


def batch_norm_backward(h: torch.Tensor, g: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """dL/dh for y = (h - mean) / sqrt(var + eps) with the batch's own statistics (over rows):
    (g - mean(g) - y mean(g y)) / sqrt(var + eps)."""
    mean, var = h.mean(0), h.var(0, unbiased=False)
    inv = (var + eps).rsqrt()
    y = (h - mean) * inv
    return (g - g.mean(0) - y * (g * y).mean(0)) * inv
