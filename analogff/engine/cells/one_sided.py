"""aihwkit's OneSidedUnitCell (the PCM preset's pair): two devices only pulsed up, with refresh."""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import Tensor

from ..device_array import DeviceArray
from ..aot import static
from ..kernels import Kernels
from ..moments import _coincidence_moments, rowwise_signed, split_by_sign
from ..mvm import _seeded
from ..pulse_trains import _check_pulse_type, _probabilities, _train_constants, weight_granularity
from ..reads import Reads
from ..refuse import _refuse
from ..rng import _Rng, _bits, _unpack


@static("res")
def _k_refresh_read(wp: Tensor, wm: Tensor, key: Tensor, out_noise: float, res: float, bound: float,
                    w_max: float, w_min: float, hi: float, lo: float):
    """OneSided refresh: read both arrays through the refresh forward with unit inputs (each output
    is ``w + out_noise xi``, ADC-quantised and clipped, as aihwkit's output stage), and decide which
    pairs to refresh (both devices large): ``(refresh, diff_plus, diff_minus)``, ``refresh`` a 0 / 1
    float mask (compiled CPU kernels store bool tensors several times slower). ``key``: the call's
    random key."""
    _, za, zb = _unpack(_bits(key, wp))
    rp = wp + out_noise * za
    rm = wm + out_noise * zb
    if res > 0:
        rp = torch.round(rp / res) * res
        rm = torch.round(rm / res) * res
    rp = rp.clamp(min=-bound, max=bound)
    rm = rm.clamp(min=-bound, max=bound)
    bigger = rp > rm
    crit = torch.where(bigger, (rp / w_max > hi) & (rm / w_min > lo), (rp / w_max > lo) & (rm / w_min > hi))
    return crit.to(wp.dtype), torch.where(crit & bigger, rp - rm, 0.0), torch.where(crit & ~bigger, rm - rp, 0.0)


def _k_refresh_scan(wp: Tensor, wm: Tensor, inv_p: Tensor, inv_m: Tensor, lim_p: float, lim_m: float):
    """One pass over both device arrays before a refresh: the read power of the refresh's column
    reads (the sum over both arrays of each device's weight over its own bound, clipped to [0, 1]:
    its relative conductance, float64) and the candidate mask (1.0 where both devices are above
    ``lim_p`` / ``lim_m``, the pairs the refresh read can find over its thresholds) with its count:
    ``(g_rel, cand, n_cand)``."""
    g_rel = (wp * inv_p).clamp(0, 1).sum(dtype=torch.float64) + (wm * inv_m).clamp(0, 1).sum(dtype=torch.float64)
    cand = (torch.minimum(wp - lim_p, wm - lim_m) > 0).to(wp.dtype)
    return g_rel, cand, cand.sum()


class OneSidedCell:
    """aihwkit's OneSidedUnitCell: w = w_1 - w_0, both devices only pulsed up, with refresh."""

    reads: Reads | None = None  #: the engine's read tally (set by the engine)

    def __init__(self, cfg: Any, shape: tuple[int, int], rng: _Rng, where: str, up: Any, kernels: Kernels):
        devs = list(cfg.unit_cell_devices)
        if not devs:
            raise _refuse(where, "OneSidedUnitCell without unit_cell_devices")
        if bool(getattr(cfg, "copy_inverted", False)):
            raise _refuse(where, "OneSidedUnitCell.copy_inverted is not implemented")
        inner = devs[0]  # C++ uses the first device for both (OneSidedRPUDeviceMetaParameter::initialize)
        self.devs = [DeviceArray(copy.deepcopy(inner), shape, rng, where, kernels) for _ in range(2)]
        if any(a.persistent for a in self.devs) and int(cfg.refresh_every) > 0:
            raise _refuse(where, "refresh of devices with write noise (aihwkit refuses it too)")
        self.cfg = cfg
        self.up = up
        self.gran = weight_granularity(cfg)
        self.refresh_up = cfg.refresh_update
        _check_pulse_type(self.refresh_up, where)
        self.refresh_io = cfg.refresh_forward
        from aihwkit.simulator.tiles.analog_mvm import AnalogMVM

        self._mvm = AnalogMVM
        self.n_samples = 0  # current_update_idx_
        self.refreshes = 0
        self._w_cache: tuple | None = None  # (w_1, w_0, their versions, w_1 - w_0, its version)

    def weights(self) -> Tensor:
        """w_1 - w_0, computed once per state of the two arrays (the forward reads it every MVM;
        the arrays change only when pulsed, reset or loaded). Read-only, as every cell's."""
        a, b = self.devs[1].w, self.devs[0].w
        key = (a._version, b._version)
        c = self._w_cache
        if c is None or c[0] is not a or c[1] is not b or c[2] != key or c[3]._version != c[4]:
            w = a - b
            c = self._w_cache = (a, b, key, w, w._version)
        return c[3]

    def set_weights(self, w: Tensor, rng: _Rng) -> None:
        self.devs[1].set_weights(w.clamp(min=0), rng)
        self.devs[0].set_weights((-w).clamp(min=0), rng)
        self.n_samples = 0

    def update_rows(self, u: Tensor, lr: float, rng: _Rng) -> float:
        """Row-by-row transfer of u (out, in), as ``in`` samples."""
        moments = rowwise_signed(u, lr, self.up, self.gran, self.devs[0].k)
        plus, minus = self.devs[1], self.devs[0]
        if plus.pairs_with(minus):  # one kernel for the pair, the four moment arrays formed in it
            return self._refresh_after(plus.pulse_pair_signed(minus, moments, rng), u.shape[1], rng)
        return self._apply_moments((*split_by_sign(moments.mu, moments.m2), moments.m2_scale), u.shape[1], rng,
                                   one_sign=True)

    def update(self, x: Tensor, d: Tensor, lr: float, rng: _Rng) -> float:
        return self._apply_moments(_coincidence_moments(x, d, lr, self.up, self.gran, rng), x.shape[0], rng)

    def _apply_moments(self, moments: tuple, b: int, rng: _Rng, one_sign: bool = False) -> float:
        """Pulse the pair, then refresh. ``one_sign``: no pair has both up and down moments (a
        row-by-row transfer), so one kernel can serve both devices (:meth:`_DeviceArray.pulse_pair`)."""
        mu_u, mu_d, m2_u, m2_d, sc = moments
        plus, minus = self.devs[1], self.devs[0]
        if one_sign and plus.pairs_with(minus):
            pulses = plus.pulse_pair(minus, mu_u, mu_d, m2_u, m2_d, rng, m2_scale=sc)
        else:
            pulses = plus.pulse(mu_u, None, m2_u, None, rng, m2_scale=sc, post=True)  # raise w: g_plus up
            pulses += minus.pulse(mu_d, None, m2_d, None, rng, m2_scale=sc, post=True)  # lower w: g_minus up
        return self._refresh_after(pulses, b, rng)

    def _refresh_after(self, pulses: float, b: int, rng: _Rng) -> float:
        """The refreshes due after ``b`` more samples; returns ``pulses`` plus their pulses."""
        every = int(self.cfg.refresh_every)
        if every > 0:
            if bool(self.cfg.units_in_mbatch):
                every *= b
            crossings = (self.n_samples + b) // every - self.n_samples // every
            for _ in range(min(crossings, 4)):
                pulses += self._refresh(rng)
        self.n_samples += b
        return pulses

    def _plain_read(self) -> tuple[float, float, float] | None:
        """(out_noise, absolute ADC step, out_bound) when the refresh read is output noise + ADC only."""
        io = self.refresh_io
        name = str(getattr(io.mv_type, "name", io.mv_type)).upper()
        if bool(io.is_perfect) or name == "IDEAL":
            return 0.0, 0.0, 1e30
        if name != "ONE_PASS" or float(io.inp_noise) > 0 or float(io.out_asymmetry) != 0 or \
                bool(io.out_sto_round) or float(io.w_noise) > 0 or float(getattr(io, "out_noise_std", 0.0)) > 0 \
                or float(getattr(io, "out_nonlinearity", 0.0)) > 0 or float(getattr(io, "ir_drop", 0.0)) > 0:
            return None
        bound = float(io.out_bound) if float(io.out_bound) > 0 else 1e30
        res = float(io.out_res)
        res = ((1.0 / res if res > 1.0 else res) * 2 * bound) if res > 0 else 0.0
        return float(io.out_noise), res, bound

    def _read(self, w: Tensor, rng: _Rng) -> Tensor:
        """A column-by-column read of one device array through the refresh forward (unit inputs),
        with aihwkit's AnalogMVM output stage (for refresh IO settings beyond noise + ADC)."""
        with _seeded(rng):
            _, out = self._mvm._finalize_output(out_values=w.clone(), io_pars=self.refresh_io)
        return out

    def _count_refresh_reads(self, g_rel: Tensor) -> None:
        """The refresh's reads, as the hardware does them: each device array is read column by
        column through the refresh forward (aihwkit's refreshWeights: input e_i on row i, every
        column through output noise and ADC), i.e. per array ``in`` MVMs, each driving one row (one
        DAC conversion; the other rows are held at 0 V and read nothing) at the read voltage (unit
        input) and converting ``out`` columns, reading the ``out`` devices of that row. Every device
        of both arrays is read, whatever the simulation then looks at: the candidate pre-filter of
        :meth:`_refresh` (pairs that cannot pass the thresholds are not simulated) is a shortcut of
        the simulation, not of the hardware, so it does not reduce the count."""
        if self.reads is None:
            return
        n_out, n_in = self.devs[1].shape
        self.reads.add(mvms=2 * n_in, dac_conversions=2 * n_in, adc_conversions=2 * n_in * n_out,
                       device_reads=2 * n_in * n_out, v2=2 * n_in * n_out, v2g_rel=g_rel)

    def _refresh(self, rng: _Rng) -> float:
        """OneSidedRPUDevice::refreshWeights, all columns at once."""
        plus, minus = self.devs[1], self.devs[0]
        w_max = abs(float(plus.cfg.w_max))
        w_min = abs(float(minus.cfg.w_max))  # also w_max, because of the one-sidedness
        hi, lo = float(self.cfg.refresh_upper_thres), float(self.cfg.refresh_lower_thres)
        plain = self._plain_read()
        # one pass over both arrays: the read power of the refresh's reads, which read every device
        # (relative conductances with the crossbar's mapping for a one-sided pair: each device's
        # weight over its own upper bound, clipped to [0, 1]), and, for a plain read, the pairs
        # whose devices are both near the lower threshold or above (7 sigma of read noise and one
        # ADC step of margin): only those can be refreshed, only those are simulated
        margin = 7 * plain[0] + plain[1] if plain is not None else 0.0
        g_rel, cand, n_cand = plus.k(_k_refresh_scan, plus.w, minus.w, plus.inv_bmax, minus.inv_bmax,
                                     lo * w_max - margin, lo * w_min - margin)
        self._count_refresh_reads(g_rel)
        if plain is not None:
            n_cand = int(n_cand)
            if n_cand == 0:
                return 0.0
            cidx = None if n_cand > cand.numel() // 4 else cand.reshape(-1).nonzero().squeeze(1)

            def at(t: Tensor) -> Tensor:
                return t if cidx is None else t.reshape(-1).index_select(0, cidx)

            crit, diff_p, diff_m = plus.k(_k_refresh_read, at(plus.w), at(minus.w),
                                          rng.key(), *plain,
                                          w_max=w_max, w_min=w_min, hi=hi, lo=lo)
        else:
            cidx = None
            wp, wm = self._read(plus.w, rng), self._read(minus.w, rng)
            crit, diff_p, diff_m = _k_refresh_read(wp, wm, torch.zeros((), dtype=torch.int64, device=wp.device), 0.0, 0.0,
                                                   1e30, w_max, w_min, hi, lo)
        # the refreshed pairs: flat device indices, and the entries of crit / diff_* (the candidates'
        # when cidx is given, else the full arrays') at them
        at_ref = crit.reshape(-1).nonzero().squeeze(1)
        n_ref = int(at_ref.numel())
        if n_ref == 0:
            return 0.0
        index = at_ref if cidx is None else cidx.index_select(0, at_ref)
        self.refreshes += n_ref
        plus.reset_at(index, rng)
        minus.reset_at(index, rng)
        pulses = 2.0 * n_ref  # the two RESETs of each refreshed pair
        n_in = plus.shape[1]
        for dev, diff in ((plus, diff_p), (minus, diff_m)):
            # per column j: x = e_j, d = diff[:, j], lr = 1 (sign: increase), refresh update params
            sub = diff.reshape(-1).index_select(0, at_ref)
            keep = sub > 0
            idx, sub = index[keep], sub[keep]
            if idx.numel() == 0:
                continue
            cols = idx % n_in
            # the column maxima of diff (0 off the refreshed pairs): over the kept entries, from 0
            d_max = torch.zeros(n_in, device=sub.device, dtype=sub.dtype).scatter_reduce_(0, cols, sub, "amax")
            ones = torch.ones_like(d_max)
            bl, a, b = _train_constants(ones, d_max, 1.0, self.refresh_up, self.gran)
            px = _probabilities(ones[:, None], b, self.refresh_up)[:, 0]  # (in,)
            p = _probabilities(sub[:, None], a[cols], self.refresh_up)[:, 0] * px[cols]
            mu = bl[cols] * p
            pulses += dev.pulse(mu, None, mu * p, None, rng, index=idx)
        return pulses

    def hidden_parameters(self) -> dict[str, Tensor]:
        out: dict[str, Tensor] = {}
        for k, dev in enumerate(self.devs):
            for name, v in dev.hidden_parameters().items():
                out[f"{name}_{k}"] = v
            out[f"hidden_weights_{k}"] = dev.w
        return out

    def load_hidden_parameters(self, state: dict[str, Tensor], weights: Tensor | None) -> None:
        for k, dev in enumerate(self.devs):
            sub = {name[: -len(f"_{k}")]: v for name, v in state.items() if name.endswith(f"_{k}")}
            dev.load_hidden_parameters(sub)
            if "hidden_weights" in sub:
                dev.set_apparent(sub["hidden_weights"])

    def to(self, device: torch.device) -> None:
        for dev in self.devs:
            dev.to(device)

    def extra_state(self) -> dict[str, Any]:
        return {"n_samples": self.n_samples, "refreshes": self.refreshes, "calls": [d.calls for d in self.devs]}

    def load_extra_state(self, s: dict[str, Any]) -> None:
        self.n_samples, self.refreshes = int(s["n_samples"]), int(s["refreshes"])
        for dev, c in zip(self.devs, s["calls"]):
            dev.calls = int(c)


_OneSidedCell = OneSidedCell  # the name of analogff.pulsed
