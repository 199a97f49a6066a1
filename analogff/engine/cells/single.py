"""One device per cross-point (ConstantStep, LinearStep, SoftBounds(Reference), ExpStep)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..device_array import DeviceArray
from ..kernels import Kernels
from ..moments import _SECOND_MOMENT_SAMPLES, _coincidence_moments, rowwise_signed
from ..pulse_trains import weight_granularity
from ..reads import Reads
from ..refuse import _refuse
from ..rng import _Rng


class SingleCell:
    """One device per cross-point (ConstantStep, LinearStep, SoftBounds(Reference), ExpStep)."""

    reads: Reads | None = None  #: the engine's read tally (set by the engine)

    def __init__(self, cfg: Any, shape: tuple[int, int], rng: _Rng, where: str, up: Any, kernels: Kernels):
        self.arr = DeviceArray(cfg, shape, rng, where, kernels)
        if self.arr.kind == "ExpStepDevice" and self.arr.exact_pulses:
            raise _refuse(where, "an ExpStep device with large nonlinear steps pulsed in both directions "
                                 "(only the one-sided PCM pair is implemented for it)")
        self.up = up
        self.gran = weight_granularity(cfg)
        # two parts in order: FF's [positive; negative] batch is exact (see update)
        self.chunks = 2

    def weights(self) -> Tensor:
        return self.arr.w

    def set_weights(self, w: Tensor, rng: _Rng) -> None:
        self.arr.set_weights(w, rng)

    def update_rows(self, u: Tensor, lr: float, rng: _Rng) -> float:
        """Row-by-row transfer of u (out, in); every device gets one sample's pulses."""
        return self.arr.pulse_signed(rowwise_signed(u, lr, self.up, self.gran, self.arr.k), rng, post=True)

    def update(self, x: Tensor, d: Tensor, lr: float, rng: _Rng) -> float:
        # aihwkit pulses sample after sample: where the step depends on the weight or a bound is
        # reached, the order of the raising and lowering samples matters (FF's [positive; negative]
        # batch: hundreds of pulses up, then as many down). The batch is applied in order, in
        # ``chunks`` parts.
        b = x.shape[0]
        k = min(self.chunks, b)
        pulses = 0.0
        for i in range(k):
            lo, hi = i * b // k, (i + 1) * b // k
            mu_u, mu_d, m2_u, m2_d, sc = _coincidence_moments(x[lo:hi], d[lo:hi], lr, self.up, self.gran, rng,
                                                              max(_SECOND_MOMENT_SAMPLES // k, 16))
            pulses += self.arr.pulse(mu_u, mu_d, m2_u, m2_d, rng, m2_scale=sc, post=i == k - 1)
        return pulses

    def hidden_parameters(self) -> dict[str, Tensor]:
        return self.arr.hidden_parameters()

    def load_hidden_parameters(self, state: dict[str, Tensor], weights: Tensor | None) -> None:
        self.arr.load_hidden_parameters(state)
        if weights is not None:
            self.arr.set_apparent(weights)

    def to(self, device: torch.device) -> None:
        self.arr.to(device)

    def extra_state(self) -> dict[str, Any]:
        return {"calls": self.arr.calls}

    def load_extra_state(self, s: dict[str, Any]) -> None:
        self.arr.calls = int(s["calls"])


_SingleCell = SingleCell  # the name of analogff.pulsed
