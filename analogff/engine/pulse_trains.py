"""aihwkit's stochastic pulse trains: the constants ``BL``, ``A``, ``B`` per sample and the pulse
probabilities (C++ ``PulsedUpdateMetaParameter::calculateBlAB`` / ``performUpdateManagement``,
``SparseBitLineMaker::makeCounts``); the rules are listed in :mod:`analogff.engine`."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .refuse import _refuse


def weight_granularity(device_config: Any) -> float:
    """aihwkit's ``getWeightGranularity()``: the ``dw_min`` its update management divides by.

    It is ``dw_min`` for most devices, but the C++ ``calcWeightGranularity`` of some models differs:
    ExpStep takes the down step at ``w = 0`` (``dw_min (1 - up_down) (1 - A_down exp(-gamma_down b))``),
    PowStep ``dw_min 0.5^gamma``, PiecewiseStep ``dw_min`` times the middle up factor; a vector or
    one-sided unit cell averages its devices (one-sided: its first device, twice), a transfer
    compound takes its first (fast) device and a mixed-precision cell its ``granularity`` if set.
    """
    cfg = device_config
    name = type(cfg).__name__
    if hasattr(cfg, "unit_cell_devices"):
        devs = list(cfg.unit_cell_devices)
        if not devs:
            raise ValueError(f"{name} has no unit_cell_devices; cannot derive pulse trains")
        if hasattr(cfg, "transfer_every") or "OneSided" in [c.__name__ for c in type(cfg).__mro__]:
            return weight_granularity(devs[0])
        return sum(weight_granularity(d) for d in devs) / len(devs)
    inner = getattr(cfg, "device", None)
    if inner is not None and inner is not cfg and not hasattr(cfg, "dw_min"):
        gran = float(getattr(cfg, "granularity", 0.0) or 0.0)
        return gran if gran > 0 else weight_granularity(inner)
    if not hasattr(cfg, "dw_min"):
        raise ValueError(f"{name} has no dw_min; cannot derive pulse trains")
    dw_min = float(cfg.dw_min)
    mro = [c.__name__ for c in type(cfg).__mro__]
    if "ExpStepDevice" in mro:
        up_down = float(cfg.up_down)
        down_bias = -up_down if up_down > 0 else 0.0
        scale_down = (down_bias + 1.0) * dw_min
        z = float(cfg.b)  # "just take at zero": 2 * 0 / (w_max - w_min) * a + b
        dw_down = scale_down * max(1.0 - float(cfg.A_down) * math.exp(float(cfg.gamma_down) * (-z)), 0.0)
        return dw_down if dw_down > 0 else dw_min  # C++ averages (dw_down + dw_down) / 2
    if "PowStepDevice" in mro or "PowStepReferenceDevice" in mro:
        return dw_min * 0.5 ** float(cfg.pow_gamma)
    if "PiecewiseStepDevice" in mro:
        up = list(getattr(cfg, "piecewise_up", []) or [])
        down = list(getattr(cfg, "piecewise_down", []) or [])
        return dw_min * float(up[len(up) // 2]) if up and down else dw_min
    return dw_min


@dataclass
class PulseTrains:
    """Per-sample pulse-train constants (each a (B,) tensor) and pulse probabilities."""

    bl: Tensor  #: pulses per train, (B,)
    p_x: Tensor  #: row pulse probabilities, (B, in), in [0, 1]
    p_d: Tensor  #: column pulse probabilities, (B, out), in [0, 1]


def _train_constants(x_max: Tensor, d_max: Tensor, lr: float, up: Any, gran: float) -> tuple[Tensor, Tensor, Tensor]:
    """(BL, A, B) per sample from the abs-max of x and d (C++ calculateBlAB + performUpdateManagement).

    ``A`` scales the column (d) probabilities and ``B`` the row (x) probabilities. Inactive samples
    (``max|x| = 0`` or ``max|d| = 0``) get ``BL = 0``.
    """
    desired = int(up.desired_bl)
    ublm = bool(up.update_bl_management)
    um = bool(up.update_management) or ublm  # C++ initialize(): UBLM always turns UM on
    fixed = bool(getattr(up, "fixed_bl", True))
    ones = torch.ones_like(x_max)
    if lr <= 0:
        return torch.zeros_like(x_max), torch.zeros_like(x_max), torch.zeros_like(x_max)
    if fixed or ublm:
        bl0, a0 = desired, math.sqrt(lr / (gran * desired))
    elif gran * desired < lr:
        bl0, a0 = max(int(math.ceil(lr / gran)), 1), 1.0
    else:
        bl0, a0 = desired, math.sqrt(lr / (gran * desired))
    bl = ones * bl0
    a = ones * a0
    b = ones * a0
    active = (x_max > 0) & (d_max > 0)
    if um:
        x_val = x_max.clamp(min=1e-30)
        d_val = (float(getattr(up, "um_grad_scale", 1.0)) * d_max).clamp(min=1e-30)
        k = lr * x_val * d_val / gran
        if ublm:
            bl = torch.ceil(k).clamp(min=1, max=desired)
            a = torch.sqrt(lr / (gran * bl))
            b = a
        d_val = torch.where(k > desired, d_val * desired / k, d_val)
        a = a * torch.sqrt(x_val / d_val)
        b = b * torch.sqrt(d_val / x_val)
    bl = torch.where(active, bl, torch.zeros_like(bl))
    return bl, a, b


def _check_pulse_type(up: Any, where: str) -> None:
    name = str(getattr(up.pulse_type, "name", up.pulse_type)).upper()
    if name not in ("STOCHASTIC_COMPRESSED", "STOCHASTIC"):
        raise _refuse(where, f"update.pulse_type {name} (only stochastic pulse trains are implemented)")


def _probability_step(up: Any) -> float:
    """The step pulse probabilities are rounded to (C++ getDiscretizedValue), or 0 for none:
    ``res`` given as a step or as a number of steps; stochastic rounding keeps the mean."""
    res = float(getattr(up, "res", 0) or 0)
    if res <= 0 or bool(getattr(up, "sto_round", False)):
        return 0.0
    return 1.0 / res if res > 1.0 else res


def _probabilities(v: Tensor, scale: Tensor, up: Any) -> Tensor:
    """|v| * scale per sample, discretised like C++ getDiscretizedValue, clipped to 1."""
    p = v.abs() * scale[:, None]
    res = _probability_step(up)
    if res > 0:
        p = torch.round(p / res) * res
    return p.clamp(max=1.0)


def pulse_trains(x: Tensor, d: Tensor, lr: float, rpu_config: Any) -> PulseTrains:
    """aihwkit's stochastic pulse trains for a batch, sample by sample (see the module docstring)."""
    up = rpu_config.update
    gran = weight_granularity(rpu_config.device)
    x = x.detach().to(torch.float64)
    d = d.detach().to(torch.float64)
    bl, a, b = _train_constants(x.abs().amax(dim=1), d.abs().amax(dim=1), float(lr), up, gran)
    return PulseTrains(bl=bl, p_x=_probabilities(x, b, up), p_d=_probabilities(d, a, up))


def expected_pulses(x: Tensor, d: Tensor, lr: float, rpu_config: Any) -> Tensor:
    """Expected programming pulses (row/column coincidences) per sample, (B,)."""
    t = pulse_trains(x, d, lr, rpu_config)
    return t.bl * t.p_x.sum(1) * t.p_d.sum(1)
