"""The engine: :class:`TorchPulsedEngine`, the fast engine of :class:`analogff.crossbar.Crossbar`."""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import Tensor

from .cells import build_cell
from .kernels import Kernels, _compile_default
from .mvm import _analog_mvm, _seeded
from .pulse_trains import _check_pulse_type
from .reads import Reads
from .refuse import _refuse
from .rng import _Rng


class TorchPulsedEngine:
    """The fast engine of :class:`analogff.crossbar.Crossbar`: aihwkit preset physics in batched torch.

    Args:
        in_features: rows (x size).
        out_features: columns (d size).
        rpu_config: the aihwkit preset (a SingleRPUConfig / UnitCellRPUConfig / DigitalRankUpdateRPUConfig).
        seed: seeds every random draw (device-to-device variations, pulses, MVM noise).
        device: torch device of the state (``"cpu"`` or ``"cuda"``); :meth:`to` moves it.
        compile: fuse the per-device kernels with ``torch.compile`` (compiled once per process, a
            few seconds to a minute; then several times faster). None: ``ANALOGFF_COMPILE``
            (``0``/``1``/``auto``), auto compiling tiles of >= 65536 devices.

    Raises:
        ValueError: the preset uses a device model or option this engine does not simulate
            (naming the preset and the device class; use ``engine="aihwkit"``).
    """

    def __init__(self, in_features: int, out_features: int, rpu_config: Any, seed: int = 0,
                 device: str | torch.device = "cpu", compile: bool | None = None):
        from aihwkit.exceptions import ConfigError
        from aihwkit.simulator.tiles.analog_mvm import AnalogMVM

        self.in_features, self.out_features = int(in_features), int(out_features)
        self.rpu_config = rpu_config
        self.preset = type(rpu_config).__name__
        self.device = torch.device(device)
        self.rng = _Rng(seed, self.device)
        #: reads in evaluation (``is_test``) draw their noise from a stream of their own, so that
        #: evaluating a net (how often, with which readout) never changes how it trains
        self.eval_rng = _Rng((int(seed) * 0x9E3779B97F4A7C15 + 0x7F4A7C15) % 2**63, self.device)
        self._mvm = _analog_mvm()
        where = f"preset {self.preset} (device {type(rpu_config.device).__name__})"
        up = rpu_config.update
        _check_pulse_type(up, where)
        self.f_io = copy.deepcopy(rpu_config.forward)
        self.b_io = copy.deepcopy(getattr(rpu_config, "backward", rpu_config.forward))
        # C++ IOMetaParameter::initializeForBackward switches bound management off for the backward
        from aihwkit.simulator.parameters.enums import BoundManagementType

        self.b_io.bound_management = BoundManagementType.NONE
        try:
            AnalogMVM.check_support(self.f_io)
            AnalogMVM.check_support(self.b_io)
        except ConfigError as exc:
            raise _refuse(where, f"its periphery: {exc}") from None
        if compile is None:
            compile = _compile_default(self.in_features * self.out_features, self.device)
        self.kernels = Kernels(bool(compile))
        self.cell = build_cell(rpu_config.device, (self.out_features, self.in_features), self.rng, self.preset, up,
                                self.kernels)
        self.reads = Reads()  # extra array reads (retries, refresh), see take_reads
        self.cell.reads = self.reads

    # -- MVMs --------------------------------------------------------------------------------
    def forward(self, x: Tensor, is_test: bool = False) -> Tensor:
        x = x.detach().to(self.device, torch.float32)
        with torch.no_grad(), _seeded(self.eval_rng if is_test else self.rng):
            return self._mvm.matmul(self.cell.weights(), x, self.f_io, False, is_test=is_test, reads=self.reads,
                                    kernels=self.kernels)

    def backward(self, d: Tensor) -> Tensor:
        d = d.detach().to(self.device, torch.float32)
        with torch.no_grad(), _seeded(self.rng):
            return self._mvm.matmul(self.cell.weights(), d, self.b_io, True, is_test=False, reads=self.reads)

    def take_reads(self) -> Reads:
        """The array reads performed beyond one pass per vector of :meth:`forward` / :meth:`backward`
        since the last call (bound-management retries, PCM refresh reads, reads a cell adds), as a
        :class:`~analogff.engine.reads.Reads`; the tally is reset. The crossbar adds it to its counters."""
        return self.reads.take()

    # -- update ------------------------------------------------------------------------------
    def update(self, x: Tensor, d: Tensor, lr: float) -> int:
        """``w <- w - lr d^T x`` as device pulses; returns the number of pulses applied."""
        if lr < 0:
            raise ValueError(f"lr must be >= 0, got {lr}")
        x = x.detach().to(self.device, torch.float32).reshape(-1, self.in_features)
        d = d.detach().to(self.device, torch.float32).reshape(-1, self.out_features)
        if x.shape[0] == 0 or lr == 0:
            return 0
        with torch.no_grad():
            return int(round(self.cell.update(x, d, float(lr), self.rng)))

    def update_rows(self, u: Tensor, lr: float) -> int:
        """``w <- w - lr u`` for a dense update matrix u (out, in), transferred row by row: row i is
        driven alone (value 1) with the column errors ``u[:, i]``, as ``update(I, u.T, lr)`` does
        (same pulse statistics), without its (in x in) GEMMs. Returns the number of pulses."""
        if lr < 0:
            raise ValueError(f"lr must be >= 0, got {lr}")
        u = u.detach().to(self.device, torch.float32).reshape(self.out_features, self.in_features).contiguous()
        if lr == 0:
            return 0
        with torch.no_grad():
            return int(round(self.cell.update_rows(u, float(lr), self.rng)))

    # -- weights and state -------------------------------------------------------------------
    def get_weights(self) -> Tensor:
        return self.cell.weights().clone()

    def set_weights(self, w: Tensor) -> None:
        w = torch.as_tensor(w).detach().to(self.device, torch.float32).reshape(self.out_features, self.in_features)
        self.cell.set_weights(w, self.rng)

    def device_state(self) -> dict[str, Tensor]:
        """Per-device hidden parameters under aihwkit's ``get_hidden_parameters()`` names.

        The tensors are the engine's own (read them, do not modify them; clone to keep a copy:
        :meth:`state` does). Cheap: the crossbar reads the bounds after every update."""
        return self.cell.hidden_parameters()

    def load_device_state(self, state: dict[str, Tensor], weights: Tensor | None = None) -> None:
        """Load hidden parameters (e.g. an aihwkit tile's); ``weights`` sets the apparent weights as is."""
        self.cell.load_hidden_parameters(state, None if weights is None else torch.as_tensor(weights))

    def state(self) -> dict[str, Any]:
        """Everything needed to continue bit for bit: weights, device state, counters, RNG."""
        return {"weights": self.get_weights().cpu().clone(),
                "device_state": {k: v.detach().cpu().clone() for k, v in self.device_state().items()},
                "cell": self.cell.extra_state(), "rng": self.rng.get_state(), "eval_rng": self.eval_rng.get_state()}

    def load_state(self, state: dict[str, Any]) -> None:
        self.load_device_state(state["device_state"], weights=state["weights"])
        self.cell.load_extra_state(state["cell"])
        self.rng.set_state(state["rng"])
        if "eval_rng" in state:
            self.eval_rng.set_state(state["eval_rng"])

    def to(self, device: str | torch.device) -> "TorchPulsedEngine":
        device = torch.device(device)
        if device != self.device:
            self.cell.to(device)
            self.rng = self.rng.to(device)
            self.eval_rng = self.eval_rng.to(device)
            self.device = device
        return self
