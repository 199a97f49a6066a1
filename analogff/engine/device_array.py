"""One aihwkit pulsed device per cross-point: :class:`DeviceArray`, what every device model shares
(aihwkit's ``PulsedRPUDevice``: device-to-device parameters, write noise, bounds, reset, decay and
diffusion); the model's own parameters, constants and pulse response come from its
:mod:`analogff.engine.models` module."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .kernels import Kernels
from .models import model_for
from .moments import SignedMoments
from .refuse import _refuse
from .rng import _Rng


class DeviceArray:
    """One aihwkit pulsed device per cross-point: its hidden parameters and its pulse response.

    ``p`` holds the per-device parameters under aihwkit's ``get_hidden_parameters()`` names
    (``max_bound``, ``min_bound``, ``dwmin_up``, ``dwmin_down``, ``decay_scales``,
    ``diffusion_rates``, ``reset_bias``, ``drift_nu`` and ``slope_up``/``slope_down`` or
    ``reference``); ``hidden`` is the weight the pulses act on (aihwkit's persistent weight when
    ``write_noise_std > 0``) and ``w`` the apparent weight the MVM reads. ``model`` is the device
    model (:func:`analogff.engine.models.model_for`), ``kind`` its aihwkit class name.
    """

    def __init__(self, cfg: Any, shape: tuple[int, int], rng: _Rng, where: str, kernels: Kernels,
                 exact_pulses: int | None = None):
        self.model = model_for(cfg, where)
        self.kind = self.model.name
        self.cfg = cfg
        self.where = where
        self.shape = shape
        self.device = rng.device
        self.k = kernels
        c = cfg
        if float(c.corrupt_devices_prob) > 0:
            raise _refuse(where, "corrupt_devices_prob > 0 is not implemented")
        if bool(getattr(c, "adjust_bounds_with_up_down", False)):
            raise _refuse(where, "adjust_bounds_with_up_down is not implemented")
        drift = getattr(c, "drift", None)
        if drift is not None and float(getattr(drift, "nu", 0.0)) > 0:
            raise _refuse(where, "device drift (drift.nu > 0) during training is not implemented")
        self.sigma = float(c.dw_min_std)
        wn = float(getattr(c, "write_noise_std", 0.0) or 0.0)
        self.model.check_write_noise(wn, where)
        self.persistent = wn > 0
        self.write_noise = wn * float(c.dw_min)  # getScaledWriteNoise()
        self.noise_on_set = bool(getattr(c, "apply_write_noise_on_set", True))
        # model options: mult_noise, ExpStep's complex noise (per-pulse std dw_min_std (|dw| + add +
        # slope |w|); zeros without it)
        self.mult, self.complex_noise, self.noise_add_slope = True, False, (0.0, 0.0)
        self.model.configure(self, c, where)
        self.has_decay = float(c.lifetime) > 0
        self.has_diffusion = float(c.diffusion) > 0
        self.exact_pulses = exact_pulses
        self.calls = 0
        self.p = self._populate(rng)
        self.hidden = torch.zeros(shape, device=self.device)
        self.w = self.hidden
        self._derive()

    # -- construction --------------------------------------------------------------------------
    def _populate(self, rng: _Rng) -> dict[str, Tensor]:
        """PulsedRPUDevice::populate and the model's own populate, drawn from ``rng``."""
        c, shape = self.cfg, self.shape

        def g() -> Tensor:
            return rng.randn(shape)

        w_max, w_min = float(c.w_max), float(c.w_min)
        if w_min > 0 or w_max < 0:
            raise _refuse(self.where, "[w_min, w_max] must contain 0 (aihwkit refuses it too)")
        max_bound = w_max * (1 + float(c.w_max_dtod) * g())
        min_bound = w_min * (1 + float(c.w_min_dtod) * g())
        dtod = float(c.dw_min_dtod)
        gain = torch.exp(dtod * g()) if bool(c.dw_min_dtod_log_normal) else 1 + dtod * g()
        r = float(c.up_down_dtod) * g()
        up_down = float(c.up_down)
        up_bias = 0.0 if up_down > 0 else up_down
        down_bias = -up_down if up_down > 0 else 0.0
        dw_min = float(c.dw_min)
        scale_up = (up_bias + gain + r) * dw_min
        scale_down = (down_bias + gain - r) * dw_min
        if bool(c.enforce_consistency):
            scale_up, scale_down = scale_up.abs(), scale_down.abs()
            swap = min_bound > max_bound
            max_bound, min_bound = torch.where(swap, min_bound, max_bound), torch.where(swap, max_bound, min_bound)
            max_bound, min_bound = max_bound.abs(), -min_bound.abs()
        else:
            off = min_bound > max_bound
            mid = max_bound + (min_bound - max_bound) / 2
            max_bound, min_bound = torch.where(off, mid, max_bound), torch.where(off, mid, min_bound)
        if bool(c.perfect_bias):
            last = torch.zeros(shape, dtype=torch.bool, device=self.device)
            last[:, -1] = True
            scale_up = torch.where(last, dw_min, scale_up)
            scale_down = torch.where(last, dw_min, scale_down)
            min_bound = torch.where(last, 100 * w_min, min_bound)
            max_bound = torch.where(last, 100 * w_max, max_bound)
        diffusion = (float(c.diffusion) * (1 + float(c.diffusion_dtod) * g())).abs()
        reset_bias = float(c.reset) + float(c.reset_dtod) * g()
        if float(c.lifetime) > 0:
            t = float(c.lifetime) * (1 + float(c.lifetime_dtod) * g())
            decay = torch.where(t > 1, 1 - 1 / t, torch.zeros_like(t))
        else:
            decay = torch.ones(shape, device=self.device)
        p = {"max_bound": max_bound, "min_bound": min_bound, "dwmin_up": scale_up, "dwmin_down": scale_down,
             "decay_scales": decay, "diffusion_rates": diffusion, "reset_bias": reset_bias,
             "drift_nu": torch.zeros(shape, device=self.device)}
        self.model.populate(self, p, g)
        return p

    def _derive(self) -> None:
        """Per-device constants of the closed forms, from ``p`` (the model's :meth:`derive`)."""
        p = self.p
        self.bmax, self.bmin = p["max_bound"], p["min_bound"]
        # 1 / |bound|: a weight over its own bound is the device's relative conductance (read power)
        self.inv_bmax = 1.0 / self.bmax.abs().clamp(min=1e-12)
        self.inv_bmin = 1.0 / self.bmin.abs().clamp(min=1e-12)
        # the reference of w (SoftBoundsReference); a 0-d zero without one: nothing to gather or read
        self.ref = p["reference"] if "reference" in p else torch.zeros((), device=self.device)
        self.model.derive(self)

    # -- state ---------------------------------------------------------------------------------
    def hidden_parameters(self) -> dict[str, Tensor]:
        out = dict(self.p)
        if self.persistent:
            out["persistent_weights"] = self.hidden
        return out

    def load_hidden_parameters(self, state: dict[str, Tensor]) -> None:
        for k in self.p:
            if k in state:
                self.p[k] = state[k].detach().to(self.device, torch.float32).clone().reshape(self.shape)
        if self.persistent and "persistent_weights" in state:
            self.hidden = state["persistent_weights"].detach().to(self.device, torch.float32).clone().reshape(self.shape)
        self._derive()

    def to(self, device: torch.device) -> None:
        self.device = device
        self.p = {k: v.to(device) for k, v in self.p.items()}
        self.hidden = self.hidden.to(device)
        self.w = self.w.to(device) if self.persistent else self.hidden
        self._derive()

    def set_weights(self, w: Tensor, rng: _Rng) -> None:
        """onSetWeights: clip to the bounds; with write noise the apparent weight gets fresh noise."""
        w = torch.minimum(torch.maximum(w, self.bmin), self.bmax)
        self.hidden = w.clone()
        if self.persistent:
            self.w = self.hidden + self.write_noise * rng.randn(self.shape) if self.noise_on_set else self.hidden.clone()
        else:
            self.w = self.hidden

    def set_apparent(self, w: Tensor) -> None:
        w = w.detach().to(self.device, torch.float32).clone().reshape(self.shape)
        if self.persistent:
            self.w = w
        else:
            self.hidden = w
            self.w = self.hidden

    def pulse(self, mu_u: Tensor, mu_d: Tensor | None, m2_u: Tensor, m2_d: Tensor | None, rng: _Rng,
              m2_scale: float = 1.0, post: bool = False, index: Tensor | None = None, one_sign: bool = False) -> float:
        """Apply a batch's pulses from the moments of the up / down coincidence counts: mean ``mu``
        and ``m2 * m2_scale = sum_b BL_b p^2`` (variance ``mu - m2``); ``mu_d None``: up only.
        ``post`` also does the once-per-batch decay. ``index`` (flat indices): only those devices
        (the moments are then given for them only). ``one_sign``: no device has both up and down
        moments (a transfer; ``mu_d None`` implies it). Returns the number of pulses."""
        shape = self.shape if index is None else (int(index.numel()),)
        zero = torch.zeros((), device=self.device)
        if mu_d is None:
            mu_d = m2_d = zero.expand(shape)
            one_sign = True

        def at(t: Tensor) -> Tensor:
            return t if index is None else t.reshape(-1).index_select(0, index)

        decay = post and self.has_decay and index is None
        self.calls += 1
        apply_at = getattr(self.model, "apply_at", None)
        if index is not None and apply_at is not None:  # the kernel reads the devices in place
            h, w, n, decay = apply_at(self, index, mu_u, mu_d, m2_u, m2_d, m2_scale, rng)
            return self._store(h, w, n, index, rng, post, decay)
        hidden = at(self.hidden)
        app = hidden if self.w is self.hidden else at(self.w)  # one gather when they are one array
        h, w, n, decay = self.model.apply(self, hidden, app, at, shape, mu_u, mu_d, m2_u, m2_d, m2_scale, rng,
                                          decay=decay, one_sign=one_sign)
        return self._store(h, w, n, index, rng, post, decay)

    def pulse_signed(self, moments: SignedMoments, rng: _Rng, post: bool = False) -> float:
        """:meth:`pulse` of the whole array with moments of one sign per device
        (:class:`analogff.engine.moments.SignedMoments`: a row-by-row transfer, or FF's half batch on
        a transfer compound's fast array), through the model's ``apply_signed`` (its kernel splits
        them by sign: no four moment arrays written)."""
        self.calls += 1
        h, w, n, decay = self.model.apply_signed(self, moments, rng, post and self.has_decay)
        return self._store(h, w, n, None, rng, post, decay)

    def _store(self, h: Tensor, w: Tensor, n: Tensor, index: Tensor | None, rng: _Rng, post: bool,
               decay: bool) -> float:
        """The end of a pulse: the new hidden and apparent weights (of the devices ``index``, or all),
        then the once-per-batch step (``post``; ``decay``: the decay the kernel left to do)."""
        if index is None:
            self.hidden = h
            self.w = w if self.persistent else h
        else:
            self.hidden = _put(self.hidden, index, h)
            if self.persistent:
                self.w = _put(self.w, index, w)
            else:
                self.w = self.hidden
        if post:
            self.post_update(rng, decay=decay)
        return float(n.sum())

    def pairs_with(self, other: "DeviceArray") -> bool:
        """Whether a one-sided pair of self (plus) and other (minus) can take a transfer in one kernel
        (:meth:`pulse_pair`; only models with a pair kernel, ExpStep with exact pulses)."""
        return self.model.pairs_with(self, other)

    def pulse_pair(self, minus: "DeviceArray", mu_u: Tensor, mu_d: Tensor, m2_u: Tensor, m2_d: Tensor, rng: _Rng,
                   m2_scale: float = 1.0) -> float:
        """``self.pulse(mu_u, ..., post=True)`` then ``minus.pulse(mu_d, ..., post=True)`` for a transfer
        (no pair gets both), in one kernel with the same random draws: the same values at half the
        work. Needs :meth:`pairs_with`. Returns the number of pulses."""
        return self.model.pulse_pair(self, minus, mu_u, mu_d, m2_u, m2_d, rng, m2_scale)

    def pulse_pair_signed(self, minus: "DeviceArray", moments: SignedMoments, rng: _Rng) -> float:
        """:meth:`pulse_pair` with :class:`analogff.engine.moments.SignedMoments` (``mu > 0``
        raises the minus device): the four moment arrays formed in the pair's kernel."""
        return self.model.pulse_pair_signed(self, minus, moments, rng)

    def reset_at(self, index: Tensor, rng: _Rng) -> None:
        """resetAtIndices: w = reset_bias + reset_std * xi, clipped, at the flat ``index``."""
        if self.persistent:
            raise _refuse(self.where, "reset of a device with write noise (aihwkit refuses it too)")

        def at(t: Tensor) -> Tensor:
            return t.reshape(-1).index_select(0, index)

        new = at(self.p["reset_bias"]) + float(self.cfg.reset_std) * rng.randn((int(index.numel()),))
        new = torch.minimum(torch.maximum(new, at(self.bmin)), at(self.bmax))
        self.hidden = _put(self.hidden, index, new)
        self.w = self.hidden

    def post_update(self, rng: _Rng, decay: bool | None = None) -> None:
        """Once per mini-batch (aihwkit's post_update_step): diffusion, then decay (lifetime)."""
        decay = self.has_decay if decay is None else decay
        if not (self.has_diffusion or decay):
            return
        if self.has_diffusion:
            self.hidden = self.hidden + self.p["diffusion_rates"] * rng.randn(self.shape)
            self.hidden = torch.minimum(torch.maximum(self.hidden, self.bmin), self.bmax)
        if decay:
            b = self.p["reset_bias"]
            self.hidden = torch.minimum(torch.maximum((self.hidden - b) * self.p["decay_scales"] + b, self.bmin),
                                        self.bmax)
        if self.persistent:  # applyUpdateWriteNoise: all apparent weights redrawn
            self.w = self.hidden + self.write_noise * rng.randn(self.shape)
        else:
            self.w = self.hidden


def _put(t: Tensor, index: Tensor, v: Tensor) -> Tensor:
    """``t`` with ``t.flat[index] = v``, written in place into the array's own tensor: no copy of
    the whole array per write (a few per step on PCM's refresh and on a transfer's writes onto C).
    In place bumps the tensor's version, which the pair's cached difference checks; callers that
    keep the engine's tensors as snapshots must clone them
    (:meth:`analogff.engine.engine.TorchPulsedEngine.device_state` says so)."""
    if t.is_contiguous():
        t.view(-1).index_copy_(0, index, v)
        return t
    return t.reshape(-1).index_copy(0, index, v).reshape(t.shape)


_DeviceArray = DeviceArray  # the name of analogff.pulsed
