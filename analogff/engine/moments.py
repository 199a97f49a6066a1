"""Moments of the pulse coincidence counts per device: a mini-batch's (GEMMs over the batch,
:func:`_coincidence_moments`) and a row-by-row transfer's (element-wise, :func:`_rowwise_moments`)."""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import Tensor

from .aot import static
from .kernels import Kernels
from .pulse_trains import _probabilities, _probability_step, _train_constants
from .rng import _Rng

_SECOND_MOMENT_SAMPLES = 64


def _coincidence_moments(x: Tensor, d: Tensor, lr: float, up: Any, gran: float, rng: _Rng,
                         max_second: int = _SECOND_MOMENT_SAMPLES, col_sign: Tensor | None = None,
                         signed: bool = False):
    """Moments of the up and down coincidence counts per device over the batch.

    Returns ``(mu_up, mu_down, m2_up, m2_down, m2_scale)``, each (out, in): the means
    ``sum_b BL_b p_x p_d`` split by the sign of ``x d`` (positive lowers the weight), and ``m2 *
    m2_scale = sum_b BL_b p^2`` (the binomial variance is ``mu - m2``), estimated from at most
    ``max_second`` samples of the batch (unbiased; it only corrects a Poisson variance).
    ``col_sign`` (in,) of +-1: the input choppers, x's column i multiplied by ``col_sign[i]``.

    The GEMMs: FF's activations are >= 0 and each half of its [positive; negative] batch has errors
    of one sign, so every device's count has one sign: one GEMM over ``out`` rows, split by column
    sign. Otherwise one GEMM over ``2 out`` rows (``[d > 0, d < 0]``), two when x has both signs.
    ``signed``: in the one-sign case return :class:`SignedMoments` instead of the four arrays, the
    column signs folded into ``p_x`` before the GEMM (negating a column negates its sums exactly).
    """
    bl, a, b = _train_constants(x.abs().amax(dim=1), d.abs().amax(dim=1), lr, up, gran)
    px = _probabilities(x, b, up)  # (B, in)
    pd = _probabilities(d, a, up)  # (B, out)
    dd = pd * bl[:, None]
    bsz = x.shape[0]
    if max_second > 0 and bsz > max_second:
        idx = torch.randperm(bsz, generator=rng.cpu)[:max_second].to(x.device)
        scale2 = bsz / max_second
    else:
        idx, scale2 = None, 1.0

    def sample(t: Tensor) -> Tensor:
        return t if idx is None else t[idx]

    x_nonneg = bool((x >= 0).all())
    d_sign = 1 if bool((d >= 0).all()) else -1 if bool((d <= 0).all()) else 0
    if x_nonneg and d_sign != 0:  # every x d has the sign of d (times the column's chopper)
        px_s = sample(px)
        m2 = (sample(dd) * sample(pd)).T @ (px_s * px_s)
        if signed or col_sign is not None:  # +1 where a column's pulses lower the weight (x d > 0)
            sign = col_sign * d_sign if col_sign is not None else float(d_sign)
            mom = SignedMoments(dd.T @ (px * sign), m2, scale2)
            return mom if signed else (*split_by_sign(mom.mu, mom.m2), scale2)
        mu = dd.T @ px  # (out, in)
        z_mu, z_m2 = torch.zeros_like(mu), torch.zeros_like(m2)
        return (z_mu, mu, z_m2, m2, scale2) if d_sign > 0 else (mu, z_mu, m2, z_m2, scale2)
    if col_sign is not None:
        x = x * col_sign
    zero = torch.zeros((), device=x.device)
    n_out = d.shape[1]
    d_pos = torch.where(d > 0, dd, zero)
    d_neg = torch.where(d < 0, dd, zero)
    pd_s = sample(pd)
    if bool((x >= 0).all()):  # one sign of x, one GEMM for both signs of d
        left = torch.cat((d_pos, d_neg), 1)  # (B, 2 out)
        mu = left.T @ px  # (2 out, in): rows [down; up]
        px_s = sample(px)
        m2 = (sample(left) * torch.cat((pd_s, pd_s), 1)).T @ (px_s * px_s)
    else:
        x_pos = torch.where(x > 0, px, zero)
        x_neg = torch.where(x < 0, px, zero)
        left = torch.cat((torch.cat((d_pos, d_neg), 1), torch.cat((d_neg, d_pos), 1)), 0)  # (2B, 2 out)
        right = torch.cat((x_pos, x_neg), 0)  # (2B, in)
        mu = left.T @ right
        if idx is not None:
            idx2 = torch.cat((idx, idx + bsz))
            left, right = left[idx2], right[idx2]
        pd2 = torch.cat((pd_s, pd_s), 0)
        m2 = (left * torch.cat((pd2, pd2), 1)).T @ (right * right)
    return mu[n_out:], mu[:n_out], m2[n_out:], m2[:n_out], scale2


class SignedMoments(NamedTuple):
    """Moments of pulses of one sign per device: a row-by-row transfer (each device sees one
    sample), or one of FF's half batches (the sign set by the column, :func:`_coincidence_moments`
    with ``signed``). ``mu > 0`` is a mean count of down pulses (x d > 0 lowers the weight), ``mu <
    0`` of up pulses, ``m2 * m2_scale`` the second-moment sum. Two arrays instead of the four of
    :func:`split_by_sign`: a kernel that takes this form
    (:meth:`analogff.engine.device_array.DeviceArray.pulse_signed`) splits them element by element."""

    mu: Tensor  #: (out, in) signed mean coincidence count
    m2: Tensor  #: (out, in) second-moment sum (times ``m2_scale``)
    m2_scale: float = 1.0  #: the batch over the samples ``m2`` was estimated from


def split_by_sign(mu: Tensor, m2: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(mu_up, mu_down, m2_up, m2_down)`` of a :class:`SignedMoments`' ``mu`` and ``m2``:
    element-wise, so a kernel can call it on its inputs."""
    zero = torch.zeros((), device=mu.device, dtype=mu.dtype)
    up, down = mu < 0, mu > 0
    return torch.where(up, -mu, zero), torch.where(down, mu, zero), torch.where(up, m2, zero), \
        torch.where(down, m2, zero)


@static("res")
def _k_rowwise_signed(u: Tensor, a: Tensor, px: Tensor, bl: Tensor, res: float):
    """Element-wise core of :func:`rowwise_signed`: column probabilities |u| a (discretised to
    ``res`` when > 0, clipped to 1), coincidence mean BL p_x p_d with the sign of u (positive
    errors lower the weight) and second moment."""
    p = u.abs() * a
    if res > 0:
        p = torch.round(p / res) * res
    p = p.clamp(max=1.0)
    dd = p * (bl * px)
    m2 = dd * p * px
    zero = torch.zeros((), device=u.device)
    return torch.where(u > 0, dd, torch.where(u < 0, -dd, zero)), m2


@static("res")
def _k_rowwise(u: Tensor, a: Tensor, px: Tensor, bl: Tensor, res: float):
    """:func:`_k_rowwise_signed` split by sign (:func:`split_by_sign`): the four moment arrays."""
    return split_by_sign(*_k_rowwise_signed(u, a, px, bl, res))


def _rowwise_drive(u: Tensor, lr: float, up: Any, gran: float) -> tuple[Tensor, Tensor, Tensor, float]:
    """Per driven row i (x = I, d = u^T): the column scale ``a``, pulse probability ``px`` and
    train length ``bl`` (each (in,)) and the probability step ``res``."""
    n_in = u.shape[1]
    ones = torch.ones(n_in, device=u.device, dtype=u.dtype)
    bl, a, b = _train_constants(ones, u.abs().amax(dim=0), lr, up, gran)  # per row i (sample)
    px = _probabilities(ones[:, None], b, up)[:, 0]  # (in,): the driven row's pulse probability
    return a, px, bl, _probability_step(up)


def rowwise_signed(u: Tensor, lr: float, up: Any, gran: float, kernels: Kernels | None = None) -> SignedMoments:
    """:func:`_rowwise_moments` as :class:`SignedMoments` (two arrays written, not four)."""
    run = kernels if kernels is not None else (lambda fn, *args: fn(*args))
    return SignedMoments(*run(_k_rowwise_signed, u, *_rowwise_drive(u, lr, up, gran)))


def _rowwise_moments(u: Tensor, lr: float, up: Any, gran: float, kernels: Kernels | None = None):
    """:func:`_coincidence_moments` of ``x = I, d = u^T``: row i driven alone (value 1) with the
    column errors ``u[:, i]``, the row-by-row transfer of a digital update matrix u (out, in). Each
    device sees one sample, so the moments are element-wise and exact (no GEMM). Same return value."""
    run = kernels if kernels is not None else (lambda fn, *args: fn(*args))
    return (*run(_k_rowwise, u, *_rowwise_drive(u, lr, up, gran)), 1.0)
