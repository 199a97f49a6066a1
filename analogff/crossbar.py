"""One analog crossbar tile: weights as conductance pairs, a DAC on the rows, an ADC on the columns.

The physics of the MVM (DAC/ADC quantisation, output noise, noise and bound management) and of the
pulsed update (stochastic pulse trains, device response with its variations) comes from the aihwkit
preset named by the device profile. Two engines execute it:

* ``engine="aihwkit"``: aihwkit's own C++ ``AnalogTile`` (the reference; CPU, sample by sample);
* ``engine="torch"``: :class:`analogff.engine.TorchPulsedEngine`, the same preset physics in batched
  torch code (fast, CPU and CUDA, seedable), validated against the reference in ``tests/``.

Units. The tile holds normalised device weights ``w`` in the device model's range (aihwkit units,
about [-1, 1]); the layer sees *logical* weights ``W = w_scale * w`` where the digital scale
``w_scale`` is fixed when the crossbar is built. A device at its upper bound has conductance
``g_max_S``; a device at weight 0 has ``g_min_S``. Inputs are applied as row voltages up to
``read_voltage_V``; outputs are ADC codes converted back to logical units.

Forward-Forward needs no transposed MVM: :meth:`Crossbar.update` takes the layer's own input and local
error and never reads the array backwards, so ``counters.backward_adc_conversions`` stays 0.
:meth:`Crossbar.backward` exists only for the analog backprop reference and is counted separately.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from .devices import DeviceProfile, load_device
from .accounting import BYTES_PER_VALUE, crossbar_forward, resident_state
from .energy import OpCounts
from .engine.reads import DEVICES_PER_WEIGHT
from .engine.mvm import _flush_tiny_vectors

ENGINES = ("aihwkit", "torch")


class CrossbarEngine(Protocol):
    """What an engine executes, all in normalised device-weight units (tile units)."""

    def forward(self, x: Tensor, is_test: bool) -> Tensor: ...
    def backward(self, d: Tensor) -> Tensor: ...
    def update(self, x: Tensor, d: Tensor, lr: float) -> None: ...
    def get_weights(self) -> Tensor: ...
    def set_weights(self, w: Tensor) -> None: ...
    def device_state(self) -> dict[str, Tensor]: ...
    def state(self) -> dict[str, Any]: ...
    def load_state(self, state: dict[str, Any]) -> None: ...


def _g_rel(w: Tensor, inv_p: Tensor, inv_m: Tensor) -> tuple[Tensor, Tensor]:
    """(G+, G-) per device as fractions of the span, for a weight carried by one device of a pair:
    w's positive part over the G+ device's bound, its negative part over the G- device's, each
    clipped to [0, 1]."""
    return w.clamp(min=0).mul(inv_p).clamp(0, 1), w.clamp(max=0).neg().mul(inv_m).clamp(0, 1)


def _g_rel_sum(w: Tensor, inv_p: Tensor, inv_m: Tensor) -> Tensor:
    """G+ + G- per device (:func:`_g_rel`), one fused pass where the engine compiles its kernels."""
    gp, gm = _g_rel(w, inv_p, inv_m)
    return gp + gm


class AihwkitEngine:
    """aihwkit's ``AnalogTile`` called directly: forward, backward and pulsed update, no autograd.

    aihwkit seeds its C++ random generator from the clock and does not expose the seed, so this
    engine is stochastic run to run; ``seed`` only fixes the device-to-device variations
    (``construction_seed``). Pulse counting is CUDA-only in aihwkit, so :class:`Crossbar` counts
    the expected pulses of the same pulse trains (:func:`analogff.engine.expected_pulses`).
    """

    def __init__(self, in_features: int, out_features: int, rpu_config: Any, seed: int):
        from aihwkit.simulator.tiles import AnalogTile

        _set_construction_seed(rpu_config.device, seed + 1)  # 0 means "random" in aihwkit
        self.rpu_config = rpu_config
        self.tile = AnalogTile(out_features, in_features, rpu_config, bias=False)

    def forward(self, x: Tensor, is_test: bool) -> Tensor:
        x = _flush_tiny_vectors(x.detach().float().cpu())  # as the torch engine reads them (no NaN)
        return self.tile.joint_forward(x.contiguous(), is_test=is_test)

    def backward(self, d: Tensor) -> Tensor:
        return self.tile.backward(_flush_tiny_vectors(d.detach().float().cpu()).contiguous())

    def update(self, x: Tensor, d: Tensor, lr: float) -> None:
        self.tile.set_learning_rate(lr)
        self.tile.update(x.detach().float().cpu().contiguous(), d.detach().float().cpu().contiguous())
        self.tile.post_update_step()  # once per mini-batch, as AnalogSGD does: decay (lifetime), diffusion

    def get_weights(self) -> Tensor:
        return self.tile.tile.get_weights().clone()

    def set_weights(self, w: Tensor) -> None:
        self.tile.tile.set_weights(w.detach().float().cpu().contiguous())

    def device_state(self) -> dict[str, Tensor]:
        return {k: v.clone() for k, v in self.tile.get_hidden_parameters().items()}

    def state(self) -> dict[str, Any]:
        """The whole tile (weights, device parameters, mixed-precision accumulator), as aihwkit pickles it."""
        import copy

        return {"tile": copy.deepcopy(self.tile.__getstate__())}

    def load_state(self, state: dict[str, Any]) -> None:
        import copy

        self.tile.__setstate__(copy.deepcopy(state["tile"]))


def _set_construction_seed(device_config: Any, seed: int) -> None:
    """Set ``construction_seed`` on a device config and every device it contains."""
    if hasattr(device_config, "construction_seed"):
        device_config.construction_seed = seed
    for attr in ("device", "unit_cell_devices"):
        inner = getattr(device_config, attr, None)
        for dev in inner if isinstance(inner, list) else [inner]:
            if dev is not None and dev is not device_config:
                _set_construction_seed(dev, seed)


class Crossbar(nn.Module):
    """An analog tile of ``out_features x in_features`` conductance pairs with DAC, ADC and counters.

    Args:
        in_features: rows (inputs, DAC channels).
        out_features: columns (outputs, ADC channels).
        device: a :class:`DeviceProfile` or the path of a profile TOML file.
        seed: seeds the initial weights and the device-to-device variations.
        engine: ``"torch"`` (default: fast, batched) or ``"aihwkit"`` (the reference).
        init_range: initial weights are drawn so that their largest magnitude is this fraction of the
            device's upper weight bound; it sets ``w_scale`` (logical weights per device unit).
            None: the profile's ``[mapping] init_range`` (default 0.3).
        w_scale: override the digital scale directly (logical units per normalised device unit).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        device: DeviceProfile | str | Path,
        seed: int = 0,
        engine: str = "torch",
        init_range: float | None = None,
        w_scale: float | None = None,
    ):
        super().__init__()
        if engine not in ENGINES:
            raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
        if in_features < 1 or out_features < 1:
            raise ValueError(f"in_features and out_features must be >= 1, got {in_features}, {out_features}")
        self.profile = device if isinstance(device, DeviceProfile) else load_device(device)
        self.in_features, self.out_features, self.engine_name = in_features, out_features, engine
        self.rpu_config = self.profile.rpu_config()
        self.mixed_precision = type(self.rpu_config.device).__name__ == "MixedPrecisionCompound"
        from .engine.cells.transfer import algorithm_of

        #: the on-array training algorithm of a transfer compound ("tiki_taka", "buffered", "chopped",
        #: "dynamic"), or None: the preset's weights are read from its second array C, the update
        #: pulses its first array A, and the compound moves A onto C (analogff.engine.cells.transfer)
        self.transfer = algorithm_of(self.rpu_config.device)
        #: set by the net's residency rule (analogff.accounting.state_in_dram): the periphery state
        #: of this tile (a transfer compound's H, a mixed-precision chi) streams from DRAM
        self.state_in_dram = False
        w_min, w_max = self.profile.weight_range()
        self.w_bound = min(abs(w_min), w_max)  # nominal usable magnitude, device units
        init_bound = 1.0 / math.sqrt(in_features)  # torch.nn.Linear's default init bound, logical
        init_range = self.profile.init_range if init_range is None else init_range
        self.w_scale = float(w_scale) if w_scale is not None else init_bound / (init_range * self.w_bound)
        self.seed = seed
        self._counters = OpCounts()
        self._read_pending: Tensor | None = None  # read energy not yet added to counters (no GPU sync)
        self._gsum_cache: Tensor | None = None
        self._gsum_out: tuple[Tensor, Tensor] | None = None  # (per-output sums, the _gsum_cache they go with)
        self._inv_bounds: tuple[Tensor, Tensor, bool] | None = None
        self._drift: dict[str, Any] | None = None

        if engine == "aihwkit":
            self.engine: CrossbarEngine = AihwkitEngine(in_features, out_features, self.rpu_config, seed)
        else:
            from .engine import TorchPulsedEngine

            self.engine = TorchPulsedEngine(in_features, out_features, self.rpu_config, seed)
            if self.transfer is not None and self.profile.buffer_bits is not None:
                self.engine.cell.buffer_bits = int(self.profile.buffer_bits)
        gen = torch.Generator().manual_seed(seed)
        w0 = (torch.rand(out_features, in_features, generator=gen) * 2 - 1) * init_bound
        self.set_weights(w0)

    # -- the three things a layer does -----------------------------------------------------------
    def forward(self, x: Tensor, rows: Tensor | None = None) -> Tensor:
        """Analog MVM: activities (B, in) -> ADC outputs in logical units (B, out).

        ``rows``: indices of the rows driven (distinct); x then holds their values, (B, len(rows)).
        The other rows are held at 0 V: they take no DAC conversion and draw no read current, and
        their devices are not counted as read. The noise management scales by the driven values
        only (their abs-max), so a read of a few small values has proportionally small output noise.
        """
        if rows is None:
            x2, n_driven = self._check_input(x, self.in_features, "x"), self.in_features
        else:
            idx = torch.as_tensor(rows, dtype=torch.long).flatten()
            if idx.numel() == 0 or int(idx.min()) < 0 or int(idx.max()) >= self.in_features \
                    or idx.unique().numel() != idx.numel():
                raise ValueError(f"rows must be distinct row indices in 0..{self.in_features - 1}, got {idx.tolist()}")
            xr = self._check_input(x, idx.numel(), "x")
            x2 = xr.new_zeros(xr.shape[0], self.in_features)
            x2[:, idx.to(x2.device)] = xr
            n_driven = idx.numel()
        self._count_forward(x2, n_driven)
        y = self.engine.forward(x2, is_test=not self.training)
        self._add_reads(n_driven=n_driven)  # bound-management retries
        return (y * self.w_scale).to(x.device).reshape(*x.shape[:-1], self.out_features)

    def update(self, x: Tensor, d: Tensor, lr: float) -> None:
        """Local rank-one update ``W <- W - lr * d^T x`` applied as device pulses (no transposed MVM).

        Args:
            x: the layer input of the forward pass, (B, in).
            d: the local error dLoss/dy per output unit, (B, out), in logical units.
            lr: learning rate in logical weight units.
        """
        x2 = self._check_input(x, self.in_features, "x")
        d2 = self._check_input(d, self.out_features, "d")
        if x2.shape[0] != d2.shape[0]:
            raise ValueError(f"x and d must have the same batch size, got {x2.shape[0]} and {d2.shape[0]}")
        self._pulse(x2, d2, lr)

    def update_rows(self, u: Tensor, lr: float) -> None:
        """``W <- W - lr * u`` for a dense update matrix u (out, in) from the digital periphery
        (momentum, Adam), transferred row by row: row i is driven alone (value 1) with the column
        errors ``u[:, i]``. Same pulses as ``update(I, u.T, lr)``; the torch engine computes them
        element-wise instead of through (in x in) products."""
        u2 = self._check_input(u, self.in_features, "u")
        if u2.shape[0] != self.out_features:
            raise ValueError(f"u must have shape {(self.out_features, self.in_features)}, got {tuple(u.shape)}")
        self._pulse(None, u2.T, lr)

    def _pulse(self, x2: Tensor | None, d2: Tensor, lr: float) -> None:
        """Apply ``W <- W - lr d^T x`` as pulses and count them; ``x2 None``: x = I (row by row)."""
        from .engine.pulse_trains import expected_pulses, weight_granularity

        if self._drift is not None:
            raise RuntimeError("this crossbar is in drift (inference) mode; call reset_drift() before training")
        if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr >= 0):
            raise ValueError(f"lr must be a finite number >= 0, got {lr!r}")
        tile_lr = lr / self.w_scale  # device units: w <- w - tile_lr * d^T x
        b = d2.shape[0]
        c = self._counters
        if self.mixed_precision:
            # aihwkit's MixedPrecisionCompound accumulates d^T x digitally in chi (one MAC per
            # device per sample, chi read and written once per batch in fp32) and pulses a device
            # only when |chi| passes its step: those pulses are |dw| / dw_min.
            c.digital_macs += b * self.in_features * self.out_features
            c += resident_state(2 * BYTES_PER_VALUE * self.in_features * self.out_features, self.state_in_dram)
        if self.engine_name == "torch":
            if x2 is None:
                c.update_pulses += int(self.engine.update_rows(d2.T, tile_lr))
            else:
                c.update_pulses += int(self.engine.update(x2, d2, tile_lr))
            self._add_reads()  # reads the update does (PCM refresh)
            if self.transfer is not None:
                self._count_periphery(self.engine.cell.take_periphery())
        elif self.transfer is not None:
            # aihwkit's CPU tile neither counts pulses nor exposes its transfer reads: the bill of this
            # run has the forward MVMs only (engine="torch" counts everything)
            if not getattr(self, "_warned_uncounted", False):
                import warnings

                warnings.warn(f"engine='aihwkit' does not report the pulses and transfer reads of {self.profile.preset}; "
                              "they are not counted (use engine='torch' for the full bill)", RuntimeWarning, stacklevel=3)
                self._warned_uncounted = True
            if x2 is None:
                x2 = torch.eye(self.in_features, dtype=d2.dtype, device=d2.device)
            self.engine.update(x2, d2, tile_lr)
        else:
            if x2 is None:
                x2 = torch.eye(self.in_features, dtype=d2.dtype, device=d2.device)
            if self.mixed_precision:
                w_before = self.engine.get_weights()
                self.engine.update(x2, d2, tile_lr)
                steps = (self.engine.get_weights() - w_before).abs().sum() / weight_granularity(self.rpu_config.device)
                c.update_pulses += int(round(float(steps)))
            else:
                c.update_pulses += int(round(float(expected_pulses(x2, d2, tile_lr, self.rpu_config).sum())))
                self.engine.update(x2, d2, tile_lr)
        c.updates += b
        self._gsum_cache = None

    def _count_periphery(self, w: dict[str, int]) -> None:
        """A transfer compound's digital periphery work (H, references: element-wise ops and state
        traffic, SRAM or DRAM by the net's residency rule). Its reads of A come with the engine's
        read tally (:meth:`_add_engine_reads`)."""
        c = self._counters
        c.digital_ops += w["digital_ops"]
        c.digital_mults += w["digital_mults"]
        c.digital_special_ops += w["digital_special_ops"]
        c += resident_state(w["state_bytes"], self.state_in_dram)

    @property
    def periphery_state_bytes(self) -> int:
        """Digital state this tile's unit cells keep in the periphery between updates, bytes: a
        transfer compound's H (and AGAD's references, the choppers), a mixed-precision chi."""
        if self.mixed_precision:
            return BYTES_PER_VALUE * self.in_features * self.out_features
        cell = getattr(self.engine, "cell", None)
        return int(getattr(cell, "state_bytes", 0)) if self.transfer is not None else 0

    def backward(self, d: Tensor) -> Tensor:
        """Transposed MVM d @ W (B, out) -> (B, in), through DAC and ADC. Only analog backprop uses it."""
        d2 = self._check_input(d, self.out_features, "d")
        b = d2.shape[0]
        c = self._counters
        c.backward_mvms += b
        c.backward_dac_conversions += b * self.out_features
        c.backward_adc_conversions += b * self.in_features
        c.device_reads += 2 * b * self.in_features * self.out_features
        # read power: the error drives the columns, scaled by the backward's noise management
        self._add_read_energy(self._drive_energy(d2, getattr(self.rpu_config, "backward", self.rpu_config.forward),
                                                 self._row_conductance_sums()))
        dx = self.engine.backward(d2) * self.w_scale
        self._add_reads(backward=True)
        return dx

    # -- weights and conductances ----------------------------------------------------------------
    def get_weights(self) -> Tensor:
        """Logical weights (out, in), as stored on the array (drifted, in drift mode)."""
        return self.engine.get_weights() * self.w_scale

    def set_weights(self, weights: Tensor) -> None:
        """Program logical weights (out, in) exactly (clipped to the device bounds)."""
        w = torch.as_tensor(weights, dtype=torch.float32).detach()
        if w.shape != (self.out_features, self.in_features):
            raise ValueError(f"weights must have shape {(self.out_features, self.in_features)}, got {tuple(w.shape)}")
        self.engine.set_weights(w / self.w_scale)
        self._gsum_cache = None

    def conductances(self) -> tuple[Tensor, Tensor]:
        """(G+, G-) in siemens (float64), each (out, in), within [g_min_S, g_max_S].

        Each device's own bound (device-to-device variation included) maps to ``g_max_S`` and weight
        0 to ``g_min_S``. For a one-sided pair (PCM preset) the two hidden device weights are used
        directly; otherwise the weight's sign selects the device that carries it.
        """
        p = self.profile.physics
        gp_rel, gm_rel = (g.double() for g in self._relative_conductances())
        span = p.g_max_S - p.g_min_S
        return (p.g_min_S + span * gp_rel).clamp(p.g_min_S, p.g_max_S), \
            (p.g_min_S + span * gm_rel).clamp(p.g_min_S, p.g_max_S)

    def _relative_conductances(self) -> tuple[Tensor, Tensor]:
        """(G+, G-) as fractions in [0, 1] of the programmable span g_max - g_min (fresh tensors)."""
        inv_p, inv_m, one_sided = self._inverse_bounds()
        if one_sided:  # aihwkit's OneSidedUnitCell: device 0 carries the negative part, device 1 the positive
            state = self.engine.device_state()
            return (state["hidden_weights_1"] * inv_p).clamp_(0, 1), (state["hidden_weights_0"] * inv_m).clamp_(0, 1)
        return _g_rel(self.engine.get_weights(), inv_p, inv_m)

    def _relative_conductance_sum(self) -> Tensor:
        """G+ + G- of every device as a fraction of the span (the values of
        :meth:`_relative_conductances` added), in one pass: a fused kernel on the torch engine."""
        inv_p, inv_m, one_sided = self._inverse_bounds()
        if one_sided:
            gp, gm = self._relative_conductances()
            return gp.add_(gm)
        kernels = getattr(self.engine, "kernels", None)
        w = self.engine.get_weights()
        return kernels(_g_rel_sum, w, inv_p, inv_m) if kernels is not None else _g_rel_sum(w, inv_p, inv_m)

    def _inverse_bounds(self) -> tuple[Tensor, Tensor, bool]:
        """1 / (each device's bound that maps to g_max) for G+ and G-, cached (device-to-device
        parameters are drawn once; a state load or a move clears the cache)."""
        if self._inv_bounds is None:
            state = self.engine.device_state()
            if self.transfer is not None:  # the weights are the second array's (C, index 1)
                up, lo, one_sided = state["max_bound_1"], state["min_bound_1"], False
            elif "hidden_weights_0" in state and "max_bound_0" in state:  # one-sided pair (PCM)
                up, lo, one_sided = state["max_bound_1"], state["max_bound_0"], True
            else:
                w = self.engine.get_weights()
                up = state.get("max_bound", torch.full_like(w, self.w_bound))
                lo = state.get("min_bound", torch.full_like(w, -self.w_bound))
                one_sided = False
            self._inv_bounds = (1.0 / up.abs().clamp(min=1e-12), 1.0 / lo.abs().clamp(min=1e-12), one_sided)
        return self._inv_bounds

    # -- drift: inference t seconds after programming ---------------------------------------------
    def drift_to(self, t_seconds: float, seed: int | None = None, compensate: bool = True) -> None:
        """Put the array in inference mode ``t_seconds`` after programming its current weights.

        Uses the profile's aihwkit inference noise model (``[inference] noise_model``): programming
        noise and drift coefficients are drawn once per programming, then conductance drift
        ``G(t) = G (t/t0)^-nu`` and accumulated read noise are applied for ``t_seconds``. With
        ``compensate`` a global digital gain restores the mean |W| (aihwkit's global drift
        compensation idea). :meth:`reset_drift` restores the trained weights.
        """
        model = self.profile.inference_noise_model()
        if model is None:
            raise ValueError(
                f"device profile {self.profile.name!r} has no [inference] noise_model; "
                "add e.g. noise_model = \"PCMLikeNoiseModel\" to its TOML file"
            )
        if t_seconds < 0 or not math.isfinite(t_seconds):
            raise ValueError(f"t_seconds must be a finite number >= 0, got {t_seconds!r}")
        gen_seed = self.seed + 7919 if seed is None else seed
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(gen_seed)
            if self._drift is None:
                trained = self.engine.get_weights()
                state = self.engine.device_state()
                gp_rel, gm_rel = self._relative_conductances()
                g_max_uS = self.profile.physics.g_max_S * 1e6
                g_target = torch.stack([gp_rel, gm_rel]) * g_max_uS  # uS, as aihwkit's models expect
                g_prog = model.apply_programming_noise_to_conductance(g_target)
                nu = model.generate_drift_coefficients(g_target)
                upper = state.get("max_bound", torch.full_like(trained, self.w_bound)).abs()
                lower = state.get("min_bound", torch.full_like(trained, -self.w_bound)).abs()
                self._drift = {"trained": trained, "g_prog": g_prog, "nu": nu, "upper": upper,
                               "lower": lower, "g_max_uS": g_max_uS}
            dr = self._drift
            g_t = model.apply_drift_noise_to_conductance(dr["g_prog"], dr["nu"], float(t_seconds))
            rel = (g_t / dr["g_max_uS"]).clamp(min=0)
            w_t = rel[0] * dr["upper"] - rel[1] * dr["lower"]
        if compensate:
            w_t = w_t * (dr["trained"].abs().sum() / w_t.abs().sum().clamp(min=1e-12))
        self.engine.set_weights(w_t)
        self._gsum_cache = None

    def reset_drift(self) -> None:
        """Leave drift mode: restore the weights as trained."""
        if self._drift is not None:
            self.engine.set_weights(self._drift["trained"])
            self._drift = None
            self._gsum_cache = None

    # -- counting ---------------------------------------------------------------------------------
    @property
    def counters(self) -> OpCounts:
        """Operations counted so far (analog MVMs, conversions, device reads, read V^2 G, pulses)."""
        self.flush_counters()
        return self._counters

    @counters.setter
    def counters(self, value: OpCounts) -> None:
        self._counters, self._read_pending = value, None

    def _column_conductance_sums(self) -> Tensor:
        """sum_j (G+_ji + G-_ji) for every input row i, (in,) float64 in S (cached until the next write)."""
        if self._gsum_cache is None:
            p = self.profile.physics
            rel = self._relative_conductance_sum().sum(0, dtype=torch.float64)
            self._gsum_cache = 2 * self.out_features * p.g_min_S + (p.g_max_S - p.g_min_S) * rel
        return self._gsum_cache

    def _row_conductance_sums(self) -> Tensor:
        """sum_i (G+_ji + G-_ji) for every output column j, (out,) float64 in S (cached like
        :meth:`_column_conductance_sums`; the transposed MVM drives the columns)."""
        gsum_in = self._column_conductance_sums()
        if self._gsum_out is None or self._gsum_out[1] is not gsum_in:
            p = self.profile.physics
            rel = self._relative_conductance_sum().sum(1, dtype=torch.float64)
            self._gsum_out = (2 * self.in_features * p.g_min_S + (p.g_max_S - p.g_min_S) * rel, gsum_in)
        return self._gsum_out[0]

    def _count_forward(self, x: Tensor, n_driven: int | None = None) -> None:
        # one pass per vector (the accounting's nominal forward; retries come with the engine's reads);
        # n_driven: rows driven (the others at 0 V), all by default
        rows = self.in_features if n_driven is None else n_driven
        self._counters += crossbar_forward(x.shape[0], rows, self.out_features)
        self._add_read_energy(self._drive_energy(x, self.rpu_config.forward, self._column_conductance_sums()))

    def _drive_energy(self, x: Tensor, io: Any, gsum: Tensor) -> Tensor:
        """Read power of one pass of the vectors x (B, lines) driving lines whose conductance sums
        are ``gsum`` (lines,): sum_i V_i^2 * gsum_i, the voltages being the DAC inputs scaled as the
        preset's noise management does (abs-max per vector) onto the read voltage. On the engine's
        device: added to the counters when they are read (no host sync per MVM)."""
        b = x.shape[0]
        xd = x.detach().to(gsum.device, torch.float64)
        if str(getattr(io.noise_management, "name", "")) == "ABS_MAX":
            scale = xd.abs().amax(dim=1, keepdim=True).clamp(min=1e-30)
        else:
            scale = torch.full((b, 1), float(io.inp_bound), dtype=torch.float64, device=xd.device)
        v = (xd / scale).clamp(-1, 1) * self.profile.physics.read_voltage_V
        return (v.pow(2).sum(0) * gsum).sum()

    def _add_read_energy(self, e: Tensor) -> None:
        self._read_pending = e if self._read_pending is None else self._read_pending + e

    def _add_reads(self, backward: bool = False, n_driven: int | None = None) -> None:
        """Add the reads the torch engine did beyond one pass per vector (bound-management retries,
        PCM refresh, reads a cell adds: :meth:`analogff.engine.TorchPulsedEngine.take_reads`): their
        MVMs, conversions and devices read (retries of a transposed MVM as backward ones), and their
        read power: passes through this array priced with its conductances (per driven line), reads
        of any array from their relative terms, V_read^2 (g_min v2 + (g_max - g_min) v2g_rel).
        (aihwkit's own tiles retry in C++, out of sight: the aihwkit engine adds nothing here.)
        ``n_driven``: after a forward that drove only that many rows, its retries convert and read
        those rows only (the tally counts every row of each pass)."""
        take = getattr(self.engine, "take_reads", None)
        if take is None:
            return
        r = take()
        if not r:
            return
        if n_driven is not None and n_driven != self.in_features:
            r.dac_conversions = r.mvms * n_driven
            r.device_reads = DEVICES_PER_WEIGHT * r.mvms * n_driven * self.out_features
        c = self._counters
        if backward:
            c.backward_mvms += r.mvms
            c.backward_dac_conversions += r.dac_conversions
            c.backward_adc_conversions += r.adc_conversions
        else:
            c.mvms += r.mvms
            c.dac_conversions += r.dac_conversions
            c.adc_conversions += r.adc_conversions
        c.device_reads += r.device_reads
        p = self.profile.physics
        v2 = p.read_voltage_V ** 2
        if r.rows_v2 is not None:
            gsum = self._column_conductance_sums()
            self._add_read_energy(v2 * (r.rows_v2.to(gsum.device, torch.float64) * gsum).sum())
        if r.cols_v2 is not None:
            gsum = self._row_conductance_sums()
            self._add_read_energy(v2 * (r.cols_v2.to(gsum.device, torch.float64) * gsum).sum())
        if isinstance(r.v2, Tensor) or isinstance(r.v2g_rel, Tensor) or r.v2 or r.v2g_rel:
            dev = next((t.device for t in (r.v2, r.v2g_rel) if isinstance(t, Tensor)), torch.device("cpu"))
            self._add_read_energy(v2 * (p.g_min_S * torch.as_tensor(r.v2, dtype=torch.float64, device=dev)
                                        + (p.g_max_S - p.g_min_S) * torch.as_tensor(r.v2g_rel, dtype=torch.float64,
                                                                                     device=dev)))

    @staticmethod
    def _check_input(t: Tensor, size: int, name: str) -> Tensor:
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.shape[-1] != size:
            raise ValueError(f"{name} must have last dimension {size}, got shape {tuple(t.shape)}")
        t2 = t.reshape(-1, size)
        # one pass (aminmax propagates NaN; +-inf shows in max / min), a tenth of isfinite().all()'s cost
        if t2.numel() and t2.is_floating_point() and not bool(torch.isfinite(torch.stack(torch.aminmax(t2))).all()):
            raise ValueError(f"{name} contains NaN or inf; lower the learning rate or check the data")
        return t2

    # -- torch conventions ------------------------------------------------------------------------
    def _apply(self, fn: Any, recurse: bool = True) -> "Crossbar":
        """``.to(device)``, ``.cuda()``, ``.cpu()`` (also through a parent module) move the torch
        engine's state (weights, device parameters, RNG); the aihwkit engine stays on the CPU."""
        target = fn(torch.zeros(())).device  # where this conversion sends a float tensor
        if hasattr(self.engine, "to") and getattr(self.engine, "device", target) != target:
            self.flush_counters()
            self.engine.to(target)
            self._gsum_cache = self._inv_bounds = None
        return super()._apply(fn, recurse)

    def flush_counters(self) -> None:
        """Add the read energy accumulated on the engine's device to the counters (one host sync)."""
        if self._read_pending is not None:
            self._counters.read_v2g_W += float(self._read_pending)
            self._read_pending = None

    def get_extra_state(self) -> dict[str, Any]:
        return {"engine": self.engine_name, "engine_state": self.engine.state(),
                "counters": self.counters.as_dict(), "w_scale": self.w_scale}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        if state["engine"] != self.engine_name:
            raise ValueError(f"state was saved with engine={state['engine']!r}, this crossbar uses {self.engine_name!r}")
        self.engine.load_state(state["engine_state"])
        self.w_scale = state["w_scale"]
        self.counters = OpCounts(**state["counters"])
        self._gsum_cache = self._inv_bounds = None

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"device={self.profile.name}, engine={self.engine_name}, w_scale={self.w_scale:.4g}")
