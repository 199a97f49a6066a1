"""Pulsed-update physics in batched torch: aihwkit's stochastic pulse trains, in expectation.

aihwkit updates ``w <- w - lr * d^T x`` by streaming, for each sample, ``BL`` stochastic pulses on
every row (probability ``B_x * |x_i|``) and every column (probability ``A_d * |d_j|``); a device moves
by one step of its device model where a row pulse and a column pulse coincide. The pulse-train
constants follow aihwkit's C++ ``PulsedUpdateMetaParameter::performUpdateManagement``
(``rpu_pulsed_meta_parameter.cpp``):

* ``k = lr * max|x| * um_grad_scale * max|d| / dw_min``;
* with ``update_bl_management``: ``BL = min(ceil(k), desired_bl)``, otherwise ``BL = desired_bl``;
* ``A = B = sqrt(lr / (dw_min * BL))``;
* with ``update_management``: ``d_val = um_grad_scale * max|d|`` (times ``desired_bl / k`` when
  ``k > desired_bl``), ``A_d = A * sqrt(max|x| / d_val)``, ``B_x = B * sqrt(d_val / max|x|)``.

The expected number of coincidences of one sample is ``BL * sum_i p_x,i * sum_j p_d,j``: that is how
analogff counts programming pulses on CPU, where aihwkit's own pulse counters do not exist.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor


def weight_granularity(device_config: Any) -> float:
    """The device step aihwkit uses as ``weight_granularity`` (``dw_min``), in device weight units."""
    for attr in ("device", "unit_cell_devices"):
        inner = getattr(device_config, attr, None)
        if isinstance(inner, list):
            inner = inner[0]
        if inner is not None and inner is not device_config and hasattr(inner, "dw_min"):
            return weight_granularity(inner)
    if not hasattr(device_config, "dw_min"):
        raise ValueError(f"{type(device_config).__name__} has no dw_min; cannot derive pulse trains")
    return float(device_config.dw_min)


@dataclass
class PulseTrains:
    """Per-sample pulse-train constants (each a (B,) tensor) and pulse probabilities."""

    bl: Tensor  #: pulses per train, (B,)
    p_x: Tensor  #: row pulse probabilities, (B, in), in [0, 1]
    p_d: Tensor  #: column pulse probabilities, (B, out), in [0, 1]


def pulse_trains(x: Tensor, d: Tensor, lr: float, rpu_config: Any) -> PulseTrains:
    """aihwkit's stochastic pulse trains for a batch, sample by sample (see the module docstring)."""
    up = rpu_config.update
    dw_min = weight_granularity(rpu_config.device)
    x = x.detach().to(torch.float64)
    d = d.detach().to(torch.float64)
    x_max = x.abs().amax(dim=1)
    d_max = d.abs().amax(dim=1)
    desired = int(up.desired_bl)
    grad_scale = float(getattr(up, "um_grad_scale", 1.0))
    active = (x_max > 0) & (d_max > 0) & (lr > 0)
    x_max_s = x_max.clamp(min=1e-30)
    d_val = (grad_scale * d_max).clamp(min=1e-30)
    k = lr * x_max_s * d_val / dw_min
    if up.update_bl_management:
        bl = torch.ceil(k).clamp(min=1, max=desired)
    elif dw_min * desired < lr:
        bl = torch.full_like(k, max(int(torch.tensor(lr / dw_min).ceil()), 1))
    else:
        bl = torch.full_like(k, desired)
    a = torch.sqrt(lr / (dw_min * bl))
    b = a.clone()
    if up.update_management or up.update_bl_management:
        if up.update_management:
            d_val = torch.where(k > desired, d_val * desired / k, d_val)
            a = a * torch.sqrt(x_max_s / d_val)
            b = b * torch.sqrt(d_val / x_max_s)
    bl = torch.where(active, bl, torch.zeros_like(bl))
    p_x = (x.abs() * b[:, None]).clamp(max=1.0)
    p_d = (d.abs() * a[:, None]).clamp(max=1.0)
    return PulseTrains(bl=bl, p_x=p_x, p_d=p_d)


def expected_pulses(x: Tensor, d: Tensor, lr: float, rpu_config: Any) -> Tensor:
    """Expected programming pulses (row/column coincidences) per sample, (B,)."""
    t = pulse_trains(x, d, lr, rpu_config)
    return t.bl * t.p_x.sum(1) * t.p_d.sum(1)
