"""aihwkit's transfer compounds in batched torch: Tiki-Taka, TTv2, chopped TTv2 and AGAD.

A transfer compound keeps two arrays per weight: a fast array ``A`` that takes the SGD update as
pulses, and the weights ``C`` (aihwkit's ``gamma = 0``: the MVM reads ``C`` only). Every
``transfer_every`` samples one column of ``A`` (input row i driven alone with 1, in this project's
terms) is read through the transfer forward (its own output noise and ADC, no noise or bound
management) and written onto column i of ``C`` as pulses. What lies between the read and the write
is the algorithm (C++ ``rpu_transfer_device.cpp``, ``rpu_buffered_transfer_device.cpp``,
``rpu_chopped_transfer_device.cpp``, ``rpu_dynamic_transfer_device.cpp``, aihwkit 1.2.0):

* ``TransferCompound`` (Tiki-Taka, Gokmen & Haensch, Front. Neurosci. 14:103, 2020):
  ``C[:, i] += transfer_lr * lr * A_read`` as stochastic pulse trains (``transfer_update``).
* ``BufferedTransferCompound`` (TTv2, Gokmen, Front. Artif. Intell. 4:699148, 2021): a digital
  buffer ``H`` integrates ``lr * A_read``; where ``|H| >= thres_scale * dw_min(C)`` the periphery
  writes ``n = trunc(H / granularity)`` (at most ``transfer_update.desired_bl``) pulses of C's
  step and keeps ``H - (1 - momentum) n granularity`` (or ``momentum H`` with ``forget_buffer``).
* ``ChoppedTransferCompound`` (c-TTv2, Rasch et al., Nat. Commun. 15:7133, 2024; TTv2 when
  ``in_chop_prob = 0``): A's update is multiplied by chopper signs (one per input row, flipped with
  probability ``in_chop_prob`` after each read of its column; one per output column, never flipped
  by the presets), the read is multiplied back, and ``H += chop * A_read * lr / bg`` with the buffer
  granularity ``bg = dw_min(A) * auto_granularity / (n_in * transfer_every)``; one C pulse where
  ``|H| >= 1``. With ``auto_scale`` the pulse count learning rate of A is
  ``fast_lr * desired_bl * dw_min(A) / (m_x m_d)``, ``m_x``, ``m_d`` running means (momentum
  ``auto_momentum`` per mini-batch) of each sample's ``max|x|`` and ``max|d|``: the size of d
  does not matter, only its direction and relative size within the running scale. The SGD learning
  rate ``lr`` scales the transfer, not A's update.
* ``DynamicTransferCompound`` (AGAD, same paper): the chopper of a column flips deterministically
  every ``ceil(1 / in_chop_prob)`` reads; the periphery keeps a running mean of the reads
  (``tail_weightening``) and, at each flip, takes it as the column's reference: ``H += chop *
  (A_read - reference) * lr / bg``. No C pulses until every column has been read
  ``ceil(1 / in_chop_prob)`` times.

Batched like the single-device cells (:mod:`..cells.single`): a mini-batch's A update is applied
in two halves in order, with each sample's own count learning rate (folded into d: with update
management, scaling d by c is scaling the learning rate by c); after each half, the transfers due
within it, K = ``floor((n + hi) / every) - floor((n + lo) / every)`` consecutive columns, are read
together (aihwkit reads column k after sample k: FF's batch is [positive; negative], whose
contributions to A largely cancel, so a read after the positive half sees A as aihwkit's reads of
those columns do, not the whole batch's net update), and the choppers and the running means are
updated column by column as aihwkit does. C's writes of one
transfer are one sample per column (element-wise moments, exact).

Not implemented (refused, pointing to ``engine="aihwkit"``): more than 2 devices, ``gamma != 0``
(the MVM would read A too), ``n_reads_per_transfer != 1``, ``random_selection``,
``with_reset_prob``, row transfers (``transfer_columns = False``), ``transfer_every < 0`` (auto),
``transfer_every_vec``, ``out_chop_prob > 0``, AGAD's ``experimental_*`` options.

aihwkit behaviour worth knowing, read from the source:

* ``ChoppedTransferRPUDevice::reduceToWeights`` (rpu_chopped_transfer_device.cpp, the ``gamma != 0``
  branch) indexes A as ``d_idx = idx % d_size``, ``x_idx = idx / d_size``, while the weights are
  stored row-major ``[d][x]`` (``idx = d * x_size + x``): the chopper sign it applies belongs to
  another element unless x_size == d_size. Only matters for ``gamma != 0``, which no preset uses.
* ``TransferRPUDevice::onSetWeights`` zeroes A (without its ``onSetWeights``: no write noise) and
  restarts the column sweep, but keeps the buffer H and the choppers.
* The transfer forward's noise and bound management are switched off by the C++
  (``initializeWithSize``: "Transfer noise management turned off"), whatever the preset says.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from ..device_array import DeviceArray
from ..kernels import Kernels
from ..moments import _SECOND_MOMENT_SAMPLES, SignedMoments, _coincidence_moments, _rowwise_moments
from ..pulse_trains import _check_pulse_type, weight_granularity
from ..reads import DEVICES_PER_WEIGHT, Reads
from ..refuse import _refuse
from ..rng import _Rng

#: aihwkit compound class -> the algorithm this cell runs
ALGORITHMS = {"TransferCompound": "tiki_taka", "BufferedTransferCompound": "buffered",
              "ChoppedTransferCompound": "chopped", "DynamicTransferCompound": "dynamic"}


def algorithm_of(cfg: Any) -> str | None:
    """The transfer algorithm of an aihwkit device config (most derived class first), or None."""
    for cls in type(cfg).__mro__:
        if cls.__name__ in ALGORITHMS:
            return ALGORITHMS[cls.__name__]
    return None


def _plain_read(io: Any) -> tuple[float, float, float, float] | None:
    """(input value of a driven row, out_noise, ADC step, out_bound) when a read of one-hot inputs
    through ``io`` is the column plus output noise and the ADC, else None (aihwkit's full output stage)."""
    name = str(getattr(io.mv_type, "name", io.mv_type)).upper()
    if bool(io.is_perfect) or name == "IDEAL":
        return 1.0, 0.0, 0.0, math.inf
    if name != "ONE_PASS" or float(io.inp_noise) > 0 or float(io.w_noise) > 0 or float(io.out_asymmetry) != 0 or \
            bool(io.out_sto_round) or bool(io.inp_sto_round) or float(getattr(io, "out_nonlinearity", 0.0)) > 0 \
            or float(getattr(io, "ir_drop", 0.0)) > 0 or float(getattr(io, "out_noise_std", 0.0)) > 0:
        return None
    x = 1.0
    if float(io.inp_bound) > 0:
        x = min(x, float(io.inp_bound))
    if float(io.inp_res) > 0:
        r = float(io.inp_res)
        r = (1.0 / r if r > 1.0 else r) * 2 * float(io.inp_bound)
        x = round(x / r) * r
    bound = float(io.out_bound) if float(io.out_bound) > 0 else math.inf
    res = float(io.out_res)
    res = ((1.0 / res if res > 1.0 else res) * 2 * float(io.out_bound)) if res > 0 else 0.0
    return x, float(io.out_noise), res, bound


class TransferCell:
    """A transfer compound (see the module docstring): fast array A, weights C, digital H."""

    reads: Reads | None = None  #: the engine's read tally (set by the engine): the transfer reads

    def __init__(self, cfg: Any, shape: tuple[int, int], rng: _Rng, where: str, up: Any, kernels: Kernels):
        import copy

        from aihwkit.simulator.parameters.enums import BoundManagementType, NoiseManagementType

        self.alg = algorithm_of(cfg)
        devs = list(cfg.unit_cell_devices)
        if len(devs) != 2:
            raise _refuse(where, f"{type(cfg).__name__} with {len(devs)} devices (only 2: fast A, slow C)")
        gamma_vec = list(getattr(cfg, "gamma_vec", []) or [])
        if float(cfg.gamma) != 0 or (gamma_vec and (gamma_vec[0] != 0 or gamma_vec[-1] != 1)):
            raise _refuse(where, "gamma != 0 (the weights would read the fast array too)")
        for name, ok in (("n_reads_per_transfer", int(cfg.n_reads_per_transfer) == 1),
                         ("random_selection", not bool(cfg.random_selection)),
                         ("with_reset_prob", float(cfg.with_reset_prob) == 0),
                         ("transfer_columns", bool(cfg.transfer_columns)),
                         ("transfer_every < 0 (auto)", float(cfg.transfer_every) >= 0),
                         ("transfer_every_vec", not list(getattr(cfg, "transfer_every_vec", []) or [])),
                         ("transfer_lr_vec", not list(getattr(cfg, "transfer_lr_vec", []) or [])),
                         ("out_chop_prob", float(getattr(cfg, "out_chop_prob", 0.0)) == 0),
                         ("experimental_fast_lr_feedback", not bool(getattr(cfg, "experimental_fast_lr_feedback", False))),
                         ("experimental_correct_accumulation",
                          not bool(getattr(cfg, "experimental_correct_accumulation", False)))):
            if not ok:
                raise _refuse(where, f"{type(cfg).__name__}.{name} is not implemented")
        self.cfg = cfg
        self.shape = shape
        self.fast = DeviceArray(devs[0], shape, rng, where, kernels)
        self.slow = DeviceArray(devs[1], shape, rng, where, kernels)
        for arr in (self.fast, self.slow):
            if arr.kind == "ExpStepDevice" and arr.exact_pulses:
                raise _refuse(where, "a transfer compound over ExpStep devices with large nonlinear steps")
        self.up = up
        self.tup = cfg.transfer_update
        _check_pulse_type(self.tup, where)
        self.tio = copy.deepcopy(cfg.transfer_forward)  # C++: no noise / bound management on transfer reads
        self.tio.noise_management = NoiseManagementType.NONE
        self.tio.bound_management = BoundManagementType.NONE
        self.read_io = _plain_read(self.tio)
        self.gran_a = weight_granularity(devs[0])
        self.gran_c = weight_granularity(devs[1])
        n_out, n_in = shape
        dev = rng.device
        self.buffer = torch.zeros(shape, device=dev) if self.alg != "tiki_taka" else None  # H
        self.in_chop = torch.ones(n_in, device=dev)  # +1 / -1
        self.out_chop = torch.ones(n_out, device=dev)
        if self.alg == "dynamic":
            if float(cfg.in_chop_prob) <= 0:
                raise _refuse(where, "DynamicTransferCompound needs in_chop_prob > 0 (aihwkit refuses it too)")
            self.running_mean = torch.zeros(shape, device=dev)
            self.past_mean = torch.zeros(shape, device=dev)
            self.switched = torch.zeros(n_in, device=dev)  # 0 / 1
        #: bits of the digital buffer H (None: fp32, as aihwkit). An analogff extension: H is kept in
        #: fixed point over its threshold range with stochastic rounding (:meth:`_store_buffer`)
        self.buffer_bits: int | None = None
        self.n_updates = 0  # current_update_idx_
        self.slice = 0  # current_slice_indices_[0]
        self.transfer_counter = 0  # full sweeps over the columns
        self.m_x = 0.0
        self.m_d = 0.0
        self.count_lr = 0.0
        self.transfers = 0  # columns read so far
        self._pending: list[tuple[Tensor, Tensor, float, float]] = []  # C writes of this mini-batch
        self._new_tallies()

    def _new_tallies(self) -> None:
        # the digital periphery's work since the last take_periphery(): element-wise ops by kind and
        # bytes of its state (H, AGAD's references) read or written. (The transfer reads of A go
        # into the engine's read tally, ``reads``.)
        self.periphery = {"digital_ops": 0, "digital_mults": 0, "digital_special_ops": 0, "state_bytes": 0}

    # -- the algorithm's constants -------------------------------------------------------------
    @property
    def devs(self) -> tuple[DeviceArray, DeviceArray]:
        """The device arrays in aihwkit's order: 0 the fast array A, 1 the weights C."""
        return self.fast, self.slow

    @property
    def chopped(self) -> bool:
        return self.alg in ("chopped", "dynamic")

    def _every(self, b: int) -> int:
        te = float(self.cfg.transfer_every)
        if bool(self.cfg.units_in_mbatch):
            return max(int(math.ceil(te * b)), 0)
        return max(int(round(te)), 0)

    def _transfer_lr(self, lr: float) -> float:
        """getTransferLR: transfer_lr, times the SGD learning rate with scale_transfer_lr."""
        t = float(self.cfg.transfer_lr)
        return t * lr if bool(self.cfg.scale_transfer_lr) else t

    def _count_lrs(self, x: Tensor, d: Tensor, lr: float) -> Tensor:
        """A's pulse count learning rate for every sample (getPulseCountLearningRate), (B,)."""
        c = self.cfg
        fast_lr = float(c.fast_lr)
        b = x.shape[0]
        if self.chopped and bool(c.auto_scale) and fast_lr > 0:
            tau = (1.0 - float(c.auto_momentum)) / b
            mx = self._running(x.abs().amax(1), self.m_x, tau)
            md = self._running(d.abs().amax(1), self.m_d, tau)
            self.m_x, self.m_d = float(mx[-1]), float(md[-1])
            g = float(self.up.desired_bl) * self.gran_a * fast_lr
            both = (mx > 0) & (md > 0)
            lrs = torch.where(both, g / torch.where(both, mx * md, 1.0), g)
            # abs-max search of x and d, two running means (2 mults, 1 add each), count lr (2 mults, 1 divide)
            self._tally(ops=b * (x.shape[1] + d.shape[1] + 2), mults=6 * b, special=b)
            if bool(c.scale_fast_lr):
                lrs = lrs * lr
            return lrs.to(torch.float32)
        if fast_lr > 0:
            v = fast_lr * lr if bool(c.scale_fast_lr) else fast_lr
        else:
            v = lr
        return torch.full((b,), float(v), device=x.device)

    @staticmethod
    def _running(v: Tensor, m0: float, tau: float) -> Tensor:
        """updateAutoScale over the samples in order: m <- (1 - tau) m + tau v for v > 0 (m <= 0:
        m <- v). Returns m after each sample, (B,), float64."""
        v = v.detach().to(torch.float64)
        pos = v > 0
        if m0 <= 0:
            if not bool(pos.any()):
                return torch.zeros_like(v)
            first = int(torch.nonzero(pos)[0])
            m0 = float(v[first])
            pos = pos.clone()
            pos[first] = False
        a = torch.where(pos, 1.0 - tau, 1.0)
        bterm = torch.where(pos, tau * v, 0.0)
        p = torch.cumprod(a, 0)
        return p * (m0 + torch.cumsum(bterm / p, 0))

    # -- the update ----------------------------------------------------------------------------
    def weights(self) -> Tensor:
        return self.slow.w

    def set_weights(self, w: Tensor, rng: _Rng) -> None:
        self.slow.set_weights(w, rng)
        zero = torch.zeros(self.shape, device=self.slow.device)
        self.fast.hidden = zero
        self.fast.w = zero.clone() if self.fast.persistent else zero
        self.n_updates = 0
        self.slice = 0

    def update(self, x: Tensor, d: Tensor, lr: float, rng: _Rng) -> float:
        b = x.shape[0]
        lrs = self._count_lrs(x, d, lr)
        self.count_lr = float(lrs[-1])
        ref = float(lrs.mean())
        d = d * (lrs / ref)[:, None] if not bool((lrs == ref).all()) else d
        k = min(2, b)
        every = self._every(b)
        n0 = self.n_updates
        pulses = 0.0
        for i in range(k):  # each half's pulses, then the transfers due within it (aihwkit: after each sample)
            lo, hi = i * b // k, (i + 1) * b // k
            xi, di, col_sign = x[lo:hi], d[lo:hi], None
            if self.chopped:  # the choppers multiply A's update: x by the input's, d by the output's
                col_sign = self.in_chop if bool((self.in_chop < 0).any()) else None
                di = di * self.out_chop if bool((self.out_chop < 0).any()) else di
            mom = _coincidence_moments(xi, di, ref, self.up, self.gran_a, rng, max(_SECOND_MOMENT_SAMPLES // k, 16),
                                       col_sign, signed=True)
            if isinstance(mom, SignedMoments):  # FF's half batches: one sign per column
                pulses += self.fast.pulse_signed(mom, rng, post=i == k - 1)
            else:
                mu_u, mu_d, m2_u, m2_d, sc = mom
                pulses += self.fast.pulse(mu_u, mu_d, m2_u, m2_d, rng, m2_scale=sc, post=i == k - 1)
            if every > 0:
                left = (n0 + hi) // every - (n0 + lo) // every
                while left > 0:
                    kk = min(left, self.shape[1])
                    pulses += self._transfer(kk, lr, rng)
                    left -= kk
        self.n_updates = n0 + b
        pulses += self._flush_writes(rng)
        self.slow.post_update(rng)
        return pulses

    def update_rows(self, u: Tensor, lr: float, rng: _Rng) -> float:
        """``update(I, u^T)``: each input row a sample (what an update matrix written row by row
        into a transfer compound is in aihwkit)."""
        eye = torch.eye(self.shape[1], device=u.device, dtype=u.dtype)
        return self.update(eye, u.T.contiguous(), lr, rng)

    # -- the transfer --------------------------------------------------------------------------
    def _read(self, cols: Tensor | slice, rng: _Rng) -> Tensor:
        """Columns ``cols`` of A read through the transfer forward, (out, K) in device units."""
        self._count_read(cols)
        a = self.fast.w[:, cols]
        if self.read_io is not None:
            x, noise, res, bound = self.read_io
            v = a * x if x != 1.0 else a.clone()
            if noise > 0:
                v += noise * rng.randn(v.shape)
            if res > 0:
                v = torch.round(v / res) * res
            return v.clamp(-bound, bound) if math.isfinite(bound) else v
        from ..mvm import _analog_mvm, _seeded

        n_in = self.shape[1]
        idx = self._col_index(cols)
        onehot = torch.zeros(idx.numel(), n_in, device=a.device)
        onehot[torch.arange(idx.numel(), device=a.device), idx] = 1.0
        with _seeded(rng):
            out = _analog_mvm().matmul(self.fast.w, onehot, self.tio, False, is_test=False)
        return out.T

    def _n_cols(self, cols: Tensor | slice) -> int:
        return cols.stop - cols.start if isinstance(cols, slice) else int(cols.numel())

    def _col_index(self, cols: Tensor | slice) -> Tensor:
        if isinstance(cols, slice):
            return torch.arange(cols.start, cols.stop, device=self.slow.device)
        return cols

    def _count_read(self, cols: Tensor | slice) -> None:
        """Into the engine's read tally: the transfer reads of A's columns ``cols``, each one MVM with
        one driven row (the DAC's 1) and every column converted by the transfer ADC; read power from
        A's conductances with the crossbar's mapping (a weight over its own device's bound)."""
        if self.reads is None:
            return
        k, n_out = self._n_cols(cols), self.shape[0]
        a = self.fast.w[:, cols]
        g = (a * torch.where(a > 0, self.fast.inv_bmax[:, cols], self.fast.inv_bmin[:, cols].neg())).clamp(0, 1)
        x2 = (self.read_io[0] if self.read_io is not None else 1.0) ** 2
        self.reads.add(mvms=k, dac_conversions=k, adc_conversions=k * n_out, device_reads=DEVICES_PER_WEIGHT * k * n_out,
                       v2=x2 * DEVICES_PER_WEIGHT * k * n_out, v2g_rel=x2 * g.sum(dtype=torch.float64))

    def _transfer(self, k: int, lr: float, rng: _Rng) -> float:
        """Read k consecutive columns of A and write them onto C (one aihwkit transfer each)."""
        n_out, n_in = self.shape
        dev = self.slow.device
        # the columns: a slice (views, no gathers) unless the sweep wraps around within them
        cols = slice(self.slice, self.slice + k) if self.slice + k <= n_in else \
            (self.slice + torch.arange(k, device=dev)) % n_in
        v = self._read(cols, rng)  # (out, k)
        self.transfers += k
        # full sweeps completed before each column (aihwkit counts one after the last column)
        wrap = n_in - 1 - self.slice  # position of column n_in - 1 in this round (>= k: none)
        tc = self.transfer_counter + (torch.arange(k, device=dev) > wrap).to(torch.int64)
        write_cols = None
        if self.alg == "tiki_taka":
            u = -v  # C[:, i] += lr_t * A_read
            lr_t = self._transfer_lr(lr)
            gran = self.gran_c
        else:
            n_steps, write_cols = self._buffer_step(cols, v, tc, lr, rng)
            u = -n_steps
            lr_t = float(getattr(self.cfg, "step", 1.0)) * self.gran_c
            gran = self.gran_c
        if write_cols is not None:
            u = u * write_cols[None, :].to(u.dtype)
        # C is not read during the update: its writes wait for the end of the mini-batch, one kernel
        # for all of them (the columns of one mini-batch's transfers are distinct)
        self._pending.append((self._col_index(cols), u, lr_t, gran))
        self.transfer_counter += int(wrap < k)
        self.slice = (self.slice + k) % n_in
        return 0.0

    def _flush_writes(self, rng: _Rng) -> float:
        """Write the mini-batch's pending transfers onto C (see :meth:`_transfer`)."""
        pending, self._pending = self._pending, []
        if not pending:
            return 0.0
        if len({(lr, gran) for _, _, lr, gran in pending}) > 1 or \
                sum(int(c.numel()) for c, _, _, _ in pending) > self.shape[1]:  # cannot merge: one by one
            return sum(self._write(c, u, lr, gran, rng) for c, u, lr, gran in pending)
        cols = torch.cat([c for c, _, _, _ in pending])
        return self._write(cols, torch.cat([u for _, u, _, _ in pending], 1), pending[0][2], pending[0][3], rng)

    def _buffer_step(self, cols: Tensor | slice, v: Tensor, tc: Tensor, lr: float, rng: _Rng) -> tuple[Tensor, Tensor | None]:
        """H update and threshold of the buffered algorithms; returns the C steps n (out, k) and,
        for AGAD, which columns may write (None: all)."""
        c = self.cfg
        max_steps = float(self.tup.desired_bl)
        mom = min(max(float(c.momentum), 0.0), 1.0)
        forget = bool(c.forget_buffer)
        k = self._n_cols(cols)
        n_out = self.shape[0]
        h = self.buffer[:, cols]
        write_cols = None
        if self.alg == "buffered":
            lr_abs = abs(self._transfer_lr(lr))
            # BufferedTransferRPUDeviceMetaParameter::getTransferLR: times gamma_from / gamma_to (0 here)
            bg = float(c.thres_scale) * self.gran_c
            omega = h + v * lr_abs
            n = torch.trunc(omega / bg).clamp(-max_steps, max_steps)
            new_h = torch.where(n != 0, omega * mom, omega) if forget else \
                torch.where(n != 0, omega - (1.0 - mom) * n * bg, omega)
            self._store_buffer(cols, new_h, bg, rng)
            # per element: multiply, add, divide by the granularity, truncate, clip, select
            self._tally(ops=4 * n_out * k, mults=n_out * k, special=n_out * k, state_bytes=2 * self.h_bytes * n_out * k)
            return n, None
        lr_scale = self._lr_scale(lr)
        sign = self.out_chop[:, None] * self.in_chop[cols][None, :]
        if self.alg == "chopped":
            dw = v
        else:  # AGAD: the reference is the running mean of the reads taken at the last chopper flip
            n_s = self._chop_samples()
            sm = min(float(c.tail_weightening) / n_s, 1.0)
            prev = self.switched[cols][None, :] > 0
            run = self.running_mean[:, cols]
            past = torch.where(prev, run, self.past_mean[:, cols])
            self.past_mean[:, cols] = past
            self.switched[cols] = 0.0
            dw = v - past
            self.running_mean[:, cols] = run * (1.0 - sm) + v * sm
            # reference select, subtract, running mean (2 mults, 1 add); running and past means read
            # and written
            self._tally(ops=3 * n_out * k, mults=2 * n_out * k, state_bytes=2 * 2 * 4 * n_out * k)
            write_cols = tc > n_s  # aihwkit writes only after every column was read n_s times
        omega = (torch.zeros_like(h) if bool(getattr(c, "no_buffer", False)) else h) + sign * dw * lr_scale
        cross = omega.abs() >= 1.0
        n = torch.where(cross, torch.trunc(omega).clamp(-max_steps, max_steps), 0.0)
        if forget:
            new_h = torch.where(cross, omega * mom, omega)
        else:
            new_h = torch.where(cross, omega - (1.0 - mom) * n, omega)
            cap = max_steps * float(getattr(c, "buffer_cap", 0.0) or 0.0)
            if self.alg == "dynamic" and cap > 0:
                new_h = torch.where(cross, new_h.clamp(-cap, cap), new_h)
        self._store_buffer(cols, new_h, 1.0, rng)
        # per element: chopper sign, multiply by lr / bg, add, compare, truncate and clip, update H;
        # H read and written
        self._tally(ops=5 * n_out * k, mults=n_out * k, state_bytes=2 * self.h_bytes * n_out * k)
        self._flip_choppers(cols, tc, rng)
        return n, write_cols

    @property
    def h_bytes(self) -> float:
        """Bytes of one value of H: 4 (fp32), or buffer_bits / 8."""
        return 4.0 if self.buffer_bits is None else self.buffer_bits / 8.0

    def _store_buffer(self, cols: Tensor | slice, h: Tensor, threshold: float, rng: _Rng) -> None:
        """H[:, cols] = h; with ``buffer_bits``, in fixed point: steps of threshold / 2^(bits-1),
        stochastic rounding (unbiased), saturating at +-(2^(bits-1) - 1) steps."""
        if self.buffer_bits is not None:
            levels = 2 ** (int(self.buffer_bits) - 1)
            q = threshold / levels
            h = torch.floor(h / q + rng.rand(h.shape)).clamp(-(levels - 1), levels - 1) * q
            self._tally(ops=3 * h.numel(), mults=2 * h.numel())  # a random number, scale, round, clip
        self.buffer[:, cols] = h

    def _chop_samples(self) -> int:
        """getNumInChopSamples: reads of a column between two flips of its chopper (AGAD)."""
        p = float(self.cfg.in_chop_prob)
        return max(int(math.ceil(1.0 / p)), 2) if p > 0 else 2

    def _lr_scale(self, lr: float) -> float:
        """getTransferLRScale: |lr| / bg, bg the buffer granularity (auto_granularity)."""
        c = self.cfg
        lr_t = abs(self._transfer_lr(lr))
        bg = float(c.buffer_granularity) if float(c.buffer_granularity) > 0 else 1.0
        if float(c.auto_granularity) > 0:
            bg *= self.gran_a * float(c.auto_granularity) / (self.shape[1] * abs(float(c.transfer_every)))
        else:
            bg *= self.gran_a
        if bool(getattr(c, "correct_gradient_magnitudes", False)):
            bg *= self.gran_c / self.gran_a
            return lr_t / max(self.count_lr, 1e-30) / bg
        return lr_t / bg

    def _flip_choppers(self, cols: Tensor | slice, tc: Tensor, rng: _Rng) -> None:
        """The input choppers after each read of their column (chopped: random with in_chop_prob
        or every ceil(1/p) sweeps; AGAD: every ceil(1/p) sweeps, or also at random)."""
        c = self.cfg
        p = float(c.in_chop_prob)
        if p <= 0:
            return
        n_s = self._chop_samples()
        periodic = ((tc % n_s) + 1) == n_s
        k = self._n_cols(cols)
        if bool(c.in_chop_random):
            self._tally(ops=2 * k)  # a random number and a compare per column
        if self.alg == "chopped":
            flip = rng.rand((k,)) < p if bool(c.in_chop_random) else periodic
        else:
            flip = periodic | (rng.rand((k,)) < p) if bool(c.in_chop_random) else periodic
        self.in_chop[cols] = torch.where(flip, -self.in_chop[cols], self.in_chop[cols])
        if self.alg == "dynamic":
            self.switched[cols] = flip.to(self.switched.dtype)

    def _write(self, cols: Tensor, u: Tensor, lr: float, gran: float, rng: _Rng) -> float:
        """``C[:, cols] -= lr * u`` as pulses: each column one sample with x = e_i (transfer_update)."""
        n_in = self.shape[1]
        n_out = self.shape[0]
        mu_u, mu_d, m2_u, m2_d, sc = _rowwise_moments(u, lr, self.tup, gran, self.slow.k)
        active = (mu_u + mu_d).reshape(-1) > 0
        n_act = int(torch.count_nonzero(active))
        if n_act == 0:
            return 0.0
        if 3 * n_act > n_out * n_in:  # a third of the devices or more: the whole array's kernel, no gathers
            full = []
            for m in (mu_u, mu_d, m2_u, m2_d):
                f = torch.zeros(self.shape, device=u.device)
                f[:, cols] = m
                full.append(f)
            return self.slow.pulse(full[0], full[1], full[2], full[3], rng, m2_scale=sc, one_sign=True)
        sel = active.nonzero().squeeze(1)  # flat in (out, k)
        k = u.shape[1]
        idx = (sel // k) * n_in + self._col_index(cols).index_select(0, sel % k)  # flat in C

        def at(t: Tensor) -> Tensor:
            return t.reshape(-1).index_select(0, sel)

        return self.slow.pulse(at(mu_u), at(mu_d), at(m2_u), at(m2_d), rng, m2_scale=sc, index=idx, one_sign=True)

    # -- state -----------------------------------------------------------------------------------
    @property
    def state_bytes(self) -> int:
        """Digital state of the periphery, bytes: H (fp32 or ``buffer_bits``), AGAD's references
        (fp32), one bit per chopper."""
        n = self.shape[0] * self.shape[1]
        h = 0 if self.alg == "tiki_taka" else int(math.ceil(self.h_bytes * n))
        refs = 2 * 4 * n if self.alg == "dynamic" else 0  # AGAD's running and past means, fp32
        chop = (sum(self.shape) + 7) // 8 if self.chopped else 0
        return h + refs + chop

    def _tally(self, ops: int = 0, mults: int = 0, special: int = 0, state_bytes: int = 0) -> None:
        t = self.periphery
        t["digital_ops"] += int(ops)
        t["digital_mults"] += int(mults)
        t["digital_special_ops"] += int(special)
        t["state_bytes"] += int(state_bytes)

    def take_periphery(self) -> dict[str, int]:
        """The digital periphery's work since the last call: ``digital_ops``, ``digital_mults``,
        ``digital_special_ops`` and ``state_bytes`` (H and the references read or written)."""
        out = self.periphery
        self._new_tallies()
        return out

    def hidden_parameters(self) -> dict[str, Tensor]:
        out: dict[str, Tensor] = {}
        for k, arr in enumerate((self.fast, self.slow)):
            for name, v in arr.hidden_parameters().items():
                out[f"{name}_{k}"] = v
            out[f"hidden_weights_{k}"] = arr.w
        if self.alg == "dynamic":
            out.update(buffered_FP_weight=self.buffer, running_mean_weight=self.running_mean,
                       past_mean_weight=self.past_mean)
        elif self.buffer is not None:
            out["buffered_FP_weight_0"] = self.buffer
        return out

    def load_hidden_parameters(self, state: dict[str, Tensor], weights: Tensor | None) -> None:
        for k, arr in enumerate((self.fast, self.slow)):
            sub = {name[: -len(f"_{k}")]: v for name, v in state.items() if name.endswith(f"_{k}")}
            arr.load_hidden_parameters(sub)
            if "hidden_weights" in sub:
                arr.set_apparent(sub["hidden_weights"])
        dev = self.slow.device

        def take(name: str) -> Tensor | None:
            t = state.get(name)
            return None if t is None else t.detach().to(dev, torch.float32).clone().reshape(self.shape)

        if self.alg == "dynamic":
            for attr, name in (("buffer", "buffered_FP_weight"), ("running_mean", "running_mean_weight"),
                               ("past_mean", "past_mean_weight")):
                t = take(name)
                if t is not None:
                    setattr(self, attr, t)
        elif self.buffer is not None and take("buffered_FP_weight_0") is not None:
            self.buffer = take("buffered_FP_weight_0")
        if weights is not None:
            self.slow.set_apparent(weights)

    def to(self, device: torch.device) -> None:
        self.fast.to(device)
        self.slow.to(device)
        for attr in ("buffer", "in_chop", "out_chop", "running_mean", "past_mean", "switched"):
            t = getattr(self, attr, None)
            if t is not None:
                setattr(self, attr, t.to(device))

    _SCALARS = ("n_updates", "slice", "transfer_counter", "m_x", "m_d", "count_lr", "transfers")

    def extra_state(self) -> dict[str, Any]:
        s: dict[str, Any] = {k: getattr(self, k) for k in self._SCALARS}
        s["calls"] = [self.fast.calls, self.slow.calls]
        s["in_chop"], s["out_chop"] = self.in_chop.cpu().clone(), self.out_chop.cpu().clone()
        if self.alg == "dynamic":
            s["switched"] = self.switched.cpu().clone()
        return s

    def load_extra_state(self, s: dict[str, Any]) -> None:
        for k in self._SCALARS:
            setattr(self, k, type(getattr(self, k))(s[k]))
        self.fast.calls, self.slow.calls = (int(c) for c in s["calls"])
        dev = self.slow.device
        self.in_chop, self.out_chop = s["in_chop"].to(dev), s["out_chop"].to(dev)
        if self.alg == "dynamic":
            self.switched = s["switched"].to(dev)
