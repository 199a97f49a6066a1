"""aihwkit's MixedPrecisionCompound: a digital chi accumulator, thresholded pulsed transfer."""

from __future__ import annotations

import copy
from typing import Any, Callable

import torch
from torch import Tensor

from ..device_array import DeviceArray
from ..aot import static
from ..kernels import Kernels
from ..moments import SignedMoments, split_by_sign
from ..pulse_trains import _probabilities, _train_constants, weight_granularity
from ..reads import Reads
from ..refuse import _refuse
from ..rng import _Rng


@static("res")
def _k_mp_prepare(chi: Tensor, gran: float, bl: Tensor, b: Tensor, pd: Tensor, res: float):
    """Mixed-precision transfer: ``n = trunc(chi / granularity)`` leaves chi, and the coincidence
    moments of the row-wise pulse trains (x = n[j], d = e_j; per-row ``BL``, ``B``, ``p_d``), one
    sign per device (:class:`~analogff.engine.moments.SignedMoments`: positive chi lowers the weight)."""
    n = torch.trunc(chi / gran)
    chi = chi - n * gran
    px = n.abs() * b
    if res > 0:
        px = torch.round(px / res) * res
    p = px.clamp(max=1.0) * pd
    mu = bl * p
    m2 = mu * p
    return chi, torch.where(n > 0, mu, -mu), m2


class MixedPrecisionCell:
    """aihwkit's MixedPrecisionCompound: digital chi accumulator, thresholded pulsed transfer."""

    reads: Reads | None = None  #: the engine's read tally (set by the engine)

    def __init__(self, cfg: Any, shape: tuple[int, int], rng: _Rng, where: str, up: Any, kernels: Kernels):
        inner = cfg.device
        if hasattr(inner, "unit_cell_devices") or not hasattr(inner, "dw_min"):
            raise _refuse(where, f"MixedPrecisionCompound over {type(inner).__name__} is not implemented "
                                 "(only over a single pulsed device)")
        self.arr = DeviceArray(inner, shape, rng, where, kernels)
        if self.arr.kind == "ExpStepDevice" and self.arr.exact_pulses:
            raise _refuse(where, "mixed precision over an ExpStep device with large nonlinear steps")
        self.cfg = cfg
        self.shape = shape
        gran = float(getattr(cfg, "granularity", 0.0) or 0.0)
        self.gran = gran if gran > 0 else weight_granularity(inner)
        self.up = copy.deepcopy(up)
        self.up.update_management = True  # MixedPrecRPUDeviceBase::setUpPar
        self.up.update_bl_management = True
        self.chi = torch.zeros(shape, device=rng.device)
        self.n_samples = 0  # current_update_index_
        self.row = 0  # current_row_index_

    def weights(self) -> Tensor:
        return self.arr.w

    def set_weights(self, w: Tensor, rng: _Rng) -> None:
        self.arr.set_weights(w, rng)
        self.chi = torch.zeros_like(self.chi)
        self.n_samples = 0
        self.row = 0

    def _quantize(self, v: Tensor, bins: int, sto: bool, rng: _Rng) -> Tensor:
        if bins <= 0:
            return v
        half = float(bins // 2)
        width = v.abs().amax(dim=1, keepdim=True) / half
        width = torch.where(width == 0, 1.0, width)
        shift = (rng.rand(v.shape) - 0.5) if sto else 0.0
        return torch.round(v / width + shift).clamp(-half, half) * width

    def update(self, x: Tensor, d: Tensor, lr: float, rng: _Rng) -> float:
        c = self.cfg
        x = self._quantize(x, int(c.n_x_bins), bool(c.stoc_round_x), rng)
        d = self._quantize(d, int(c.n_d_bins), bool(c.stoc_round_d), rng)
        return self._accumulate(lambda lo, hi: self.chi.addmm_(d[lo:hi].T, x[lo:hi], alpha=lr), x.shape[0], rng)

    def update_rows(self, u: Tensor, lr: float, rng: _Rng) -> float:
        """Row-by-row transfer of u (out, in): ``update(I, u^T)`` without the identity product. Sample
        i adds lr u[:, i] to chi's column i (x = I is unchanged by the x quantisation: each row's one
        non-zero is its maximum, and stochastic rounding never moves a value by half a bin)."""
        c = self.cfg
        d = self._quantize(u.T, int(c.n_d_bins), bool(c.stoc_round_d), rng)  # (in, out), per sample

        def add(lo: int, hi: int) -> None:
            self.chi[:, lo:hi] += lr * d[lo:hi].T

        return self._accumulate(add, u.shape[1], rng)

    def _accumulate(self, add: Callable[[int, int], Any], b: int, rng: _Rng) -> float:
        """Accumulate b samples into chi (``add(lo, hi)`` adds samples lo..hi-1), transferring where
        aihwkit does: after every ``transfer_every * b`` samples counted over all updates."""
        every = int(self.cfg.transfer_every) * b
        # samples s (0-based in this batch) after whose accumulation aihwkit transfers
        stops: list[int] = []
        if every > 0:
            s = (-self.n_samples) % every
            while s < b:
                if self.n_samples + s > 0:
                    stops.append(s)
                s += every
        pulses, start = 0.0, 0
        for s in stops:
            add(start, s + 1)
            start = s + 1
            pulses += self._transfer(rng)
        if start < b:
            add(start, b)
        self.n_samples += b
        self.arr.post_update(rng)
        return pulses

    def _transfer(self, rng: _Rng) -> float:
        """MixedPrecRPUDeviceBase::transfer + MixedPrecRPUDevice::forwardUpdate, all rows at once."""
        c = self.cfg
        lr = float(c.transfer_lr)
        n_rows = self.shape[0]
        n_tr = int(c.n_rows_per_transfer)
        if n_tr == 0 or lr == 0:
            return 0.0
        n_tr = n_rows if n_tr < 0 else min(n_tr, n_rows)
        start = self.row
        if bool(c.random_row) and n_tr < n_rows:
            start = int(torch.randint(0, n_rows, (1,), generator=rng.cpu))
        self.row = (start + n_tr) % n_rows
        chi = self.chi
        n_in = self.shape[1]
        rows_mask = None
        if n_tr < n_rows:
            sel = ((torch.arange(n_tr) + start) % n_rows).to(chi.device)
            rows_mask = torch.zeros(n_rows, dtype=torch.bool, device=chi.device)
            rows_mask[sel] = True
        chi_abs = chi.abs()
        big = chi_abs >= self.gran  # only these devices get pulses (|trunc(chi / granularity)| >= 1)
        if rows_mask is not None:
            big = big & rows_mask[:, None]
        n_big = int(torch.count_nonzero(big))
        if n_big == 0:
            return 0.0
        n_max = torch.trunc(chi_abs.amax(dim=1) / self.gran)  # max_i |trunc(chi_ji / granularity)|
        # pulse trains of row j: x = n[j, :], d = e_j, lr = granularity * transfer_lr
        bl, a, b = _train_constants(n_max, torch.ones_like(n_max), self.gran * lr, self.up, self.gran)
        pd = _probabilities(torch.ones_like(a)[:, None], a, self.up)[:, 0]
        res = float(getattr(self.up, "res", 0) or 0)
        res = (1.0 / res if res > 1.0 else res) if not bool(getattr(self.up, "sto_round", False)) else 0.0
        if n_big > chi.numel() // 4:  # dense: every device through the kernels
            left, mu, m2 = self.arr.k(_k_mp_prepare, chi, self.gran, bl[:, None], b[:, None], pd[:, None], res=res)
            self.chi = left if rows_mask is None else torch.where(rows_mask[:, None], left, chi)
            return self.arr.pulse_signed(SignedMoments(mu, m2), rng)
        index = big.reshape(-1).nonzero().squeeze(1)  # sparse: only the devices that pass their step
        rows = index // n_in
        flat = chi.reshape(-1)
        left, mu, m2 = self.arr.k(_k_mp_prepare, flat[index], self.gran, bl[rows], b[rows], pd[rows], res=res)
        mu_u, mu_d, m2_u, m2_d = split_by_sign(mu, m2)
        self.chi = flat.index_copy(0, index, left).reshape(self.shape)
        return self.arr.pulse(mu_u, mu_d, m2_u, m2_d, rng, index=index, one_sign=True)

    def hidden_parameters(self) -> dict[str, Tensor]:
        out = self.arr.hidden_parameters()
        out["hidden_weights_chi"] = self.chi
        return out

    def load_hidden_parameters(self, state: dict[str, Tensor], weights: Tensor | None) -> None:
        self.arr.load_hidden_parameters(state)
        if "hidden_weights_chi" in state:
            self.chi = state["hidden_weights_chi"].detach().to(self.chi.device, torch.float32).clone()
        if weights is not None:
            self.arr.set_apparent(weights)

    def to(self, device: torch.device) -> None:
        self.arr.to(device)
        self.chi = self.chi.to(device)

    def extra_state(self) -> dict[str, Any]:
        return {"n_samples": self.n_samples, "row": self.row, "calls": self.arr.calls}

    def load_extra_state(self, s: dict[str, Any]) -> None:
        self.n_samples, self.row, self.arr.calls = int(s["n_samples"]), int(s["row"]), int(s["calls"])


_MixedPrecisionCell = MixedPrecisionCell  # the name of analogff.pulsed
