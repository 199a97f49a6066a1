"""The affine-step models' shared kernel: ConstantStep, LinearStep, SoftBounds(Reference).

The step is affine in the weight (``up: v += au v + bu``, ``down: v -= ad v + bd``, ``v = w +
reference``), so a batch of pulses has a closed form (:func:`_k_affine`); the models differ only in
their slopes (:meth:`AffineModel.slopes`).
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor

from ..kernels import _bridge, _log1p_ratio, _pulse_draw
from ..moments import SignedMoments, split_by_sign
from ..rng import _bits, _unpack
from .base import DeviceModel


def _k_affine_signed(hidden: Tensor, app: Tensor, ref: Tensor, mu: Tensor, m2: Tensor, m2_scale: float, key: Tensor,
                     cu: Tensor, cd: Tensor, lu: Tensor, ld: Tensor, au: Tensor, ad: Tensor, bu: Tensor, bd: Tensor,
                     lo: Tensor, hi: Tensor, decay: Tensor, reset_bias: Tensor, sigma: float, wn: float, constant: bool,
                     mult: bool, persistent: bool, has_decay: bool):
    """:func:`_k_affine` on :class:`analogff.engine.moments.SignedMoments`: the four moment arrays
    are formed here, element by element (:func:`split_by_sign`), instead of being written and read
    back."""
    mu_u, mu_d, m2_u, m2_d = split_by_sign(mu, m2)
    return _k_affine(hidden, app, ref, mu_u, mu_d, m2_u, m2_d, m2_scale, key, cu, cd, lu, ld, au, ad, bu, bd, lo, hi,
                     decay, reset_bias, sigma, wn, constant, mult, persistent, has_decay)


def _k_affine_at(index: Tensor, hidden: Tensor, app: Tensor, ref: Tensor, mu_u: Tensor, mu_d: Tensor, m2_u: Tensor,
                 m2_d: Tensor, m2_scale: float, key: Tensor, cu: Tensor, cd: Tensor, lu: Tensor, ld: Tensor, au: Tensor,
                 ad: Tensor, bu: Tensor, bd: Tensor, lo: Tensor, hi: Tensor, sigma: float, wn: float, constant: bool,
                 mult: bool, persistent: bool):
    """:func:`_k_affine` on the devices ``index`` (flat) of whole arrays: the kernel reads each
    device's state and constants where it is (one loop, no gathered copies written and read back);
    the moments are given for those devices only. No decay (it is once per mini-batch, on every
    device). Returns the new hidden and apparent weights and the counts of those devices."""

    def at(t: Tensor) -> Tensor:
        return t.reshape(-1)[index]

    zero = mu_u.new_zeros(())
    return _k_affine(at(hidden), at(app), at(ref) if ref.dim() else ref, mu_u, mu_d, m2_u, m2_d, m2_scale, key,
                     at(cu), at(cd), at(lu), at(ld), at(au), at(ad), at(bu), at(bd), at(lo), at(hi), zero, zero,
                     sigma, wn, constant, mult, persistent, False)


def _k_affine(hidden: Tensor, app: Tensor, ref: Tensor, mu_u: Tensor, mu_d: Tensor, m2_u: Tensor, m2_d: Tensor,
              m2_scale: float, key: Tensor, cu: Tensor, cd: Tensor, lu: Tensor, ld: Tensor, au: Tensor, ad: Tensor, bu: Tensor,
              bd: Tensor, lo: Tensor, hi: Tensor, decay: Tensor, reset_bias: Tensor, sigma: float, wn: float,
              constant: bool, mult: bool, persistent: bool, has_decay: bool):
    """ConstantStep / LinearStep / SoftBounds(Reference): a batch of pulses in closed form.

    Up: ``v += au v + bu``, down: ``v -= ad v + bd`` (``v = w + reference``). n pulses of one sign
    are a geometric approach to the fixed point; both signs together integrate
    ``dv/dt = nu (au v + bu) - nd (ad v + bd)`` with per-pulse rates ``log(1 + a) / a`` (``lu``,
    ``ld``, ``cu = bu log(1 + au) / au``, ...), exact for one sign. ``key``: the call's random key
    (:func:`analogff.engine.rng._bits`).
    """
    u, z1, z2 = _unpack(_bits(key, hidden))
    pulsed, nu, nd, r_u, r_d, ub, r_ud = _pulse_draw(mu_u, mu_d, m2_u, m2_d, m2_scale, u)
    v = hidden + ref
    b = nu * cu - nd * cd
    if constant:
        v1 = v + b
        su2, sd2 = bu * bu, bd * bd
        var = (nu * su2 + nd * sd2) * (sigma * sigma) + r_u * su2 + r_d * sd2 + r_ud * bu * bd
    else:
        a = nu * lu + nd * ld
        small = a.abs() < 1e-4
        a_safe = torch.where(small, 1.0, a)
        phi = torch.where(small, 1.0 + 0.5 * a, torch.expm1(a) / a_safe)
        v1 = v * torch.exp(a) + b * phi
        vm = 0.5 * (v + v1)
        su = au * vm + bu
        sd = ad * vm + bd
        su2, sd2 = su * su, sd * sd
        c2c = (nu * su2 + nd * sd2) if mult else (nu * bu * bu + nd * bd * bd)
        # noise of the early pulses contracts with the geometric approach: weight exp(2 a (1 - t))
        phi2 = torch.where(small, 1.0 + a, torch.expm1(2.0 * a) / (2.0 * a_safe))
        var = (c2c * (sigma * sigma) + r_u * su2 + r_d * sd2 + r_ud * su * sd) * phi2
    out = _bridge(v, v1, var, nu + nd, lo, hi, z1, ub)
    h = out - ref
    if has_decay:  # PulsedRPUDevice::decayWeights, once per mini-batch (aihwkit post_update_step)
        h = torch.minimum(torch.maximum((h - reset_bias) * decay + reset_bias, lo), hi)
    if persistent:  # write noise: redrawn where pulsed (everywhere after a decay)
        app = h + wn * z2 if has_decay else torch.where(pulsed, h + wn * z2, app)
    else:
        app = h
    return h, app, nu + nd


class AffineModel(DeviceModel):
    """A model whose step is affine in the weight; subclasses give the slopes ``(au, ad)``."""

    constant = False  #: zero slopes (ConstantStep): the kernel skips the geometric approach

    def configure(self, arr: Any, cfg: Any, where: str) -> None:
        arr.mult = bool(cfg.mult_noise)

    def slopes(self, arr: Any) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def derive(self, arr: Any) -> None:
        p = arr.p
        su, sd = p["dwmin_up"], p["dwmin_down"]
        au, ad = self.slopes(arr)
        arr.au, arr.ad, arr.bu, arr.bd = au, ad, su, sd
        arr.lu = torch.log1p(au.clamp(min=-0.999))
        arr.ld = torch.log1p((-ad).clamp(min=-0.999))
        arr.cu = su * _log1p_ratio(au)
        arr.cd = sd * _log1p_ratio(-ad)

    def _device_args(self, arr: Any, at: Callable[[Tensor], Tensor], decay: bool) -> tuple[Tensor, tuple, dict]:
        """The kernels' per-device inputs restricted by ``at``: the reference (0-d: none, nothing to
        gather or read), the closed form's constants and the bounds, the decay's two parameters only
        when the decay is done in the kernel (else a 0-d stand-in, not read), and the flags."""
        ref = at(arr.ref) if arr.ref.dim() else arr.ref
        dec, rb = (at(arr.p["decay_scales"]), at(arr.p["reset_bias"])) if decay else (arr.ref.new_zeros(()),) * 2
        consts = (at(arr.cu), at(arr.cd), at(arr.lu), at(arr.ld), at(arr.au), at(arr.ad), at(arr.bu), at(arr.bd),
                  at(arr.bmin), at(arr.bmax), dec, rb)
        flags = dict(sigma=arr.sigma, wn=arr.write_noise, constant=self.constant, mult=arr.mult,
                     persistent=arr.persistent, has_decay=decay)
        return ref, consts, flags

    def apply(self, arr: Any, hidden: Tensor, app: Tensor, at: Callable[[Tensor], Tensor], shape: tuple[int, ...],
              mu_u: Tensor, mu_d: Tensor, m2_u: Tensor, m2_d: Tensor, m2_scale: float, rng: Any, decay: bool,
              one_sign: bool) -> tuple[Tensor, Tensor, Tensor, bool]:
        ref, consts, flags = self._device_args(arr, at, decay)
        h, w, n = arr.k(_k_affine, hidden, app, ref, mu_u, mu_d, m2_u, m2_d, m2_scale, rng.key(), *consts, **flags)
        return h, w, n, False

    def apply_at(self, arr: Any, index: Tensor, mu_u: Tensor, mu_d: Tensor, m2_u: Tensor, m2_d: Tensor,
                 m2_scale: float, rng: Any) -> tuple[Tensor, Tensor, Tensor, bool]:
        """:meth:`apply` on the devices ``index`` (flat), read in place by the kernel
        (:func:`_k_affine_at`); the moments are those devices'. No decay."""
        ref, consts, flags = self._device_args(arr, lambda t: t, False)
        flags.pop("has_decay")
        # consts[:10]: the closed form's eight constants and the two bounds, not the decay's two
        h, w, n = arr.k(_k_affine_at, index, arr.hidden, arr.w, ref, mu_u, mu_d, m2_u, m2_d, m2_scale, rng.key(),
                        *consts[:10], **flags)
        return h, w, n, False

    def apply_signed(self, arr: Any, moments: SignedMoments, rng: Any, decay: bool) -> tuple[Tensor, Tensor, Tensor, bool]:
        """:meth:`apply` on the whole array with moments of one sign per device
        (:class:`analogff.engine.moments.SignedMoments`; :func:`_k_affine_signed`)."""
        ref, consts, flags = self._device_args(arr, lambda t: t, decay)
        h, w, n = arr.k(_k_affine_signed, arr.hidden, arr.w, ref, moments.mu, moments.m2, moments.m2_scale, rng.key(),
                        *consts, **flags)
        return h, w, n, False
