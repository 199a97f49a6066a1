"""The engine's random streams (:class:`_Rng`) and the unpacking of 63 random bits into a uniform
and two normals inside the fused kernels (:func:`_unpack`)."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor


class _Rng:
    """All randomness of one engine: a generator on the engine's device, one on the CPU for seeds.

    Bulk randomness comes as raw 63-bit integers (``bits``): one ``int64`` per device gives a
    24-bit uniform and two standard normals (Box-Muller, 24-bit radius, 15-bit angle) inside the
    fused kernels, a third of the cost of drawing them one by one.
    """

    def __init__(self, seed: int, device: torch.device):
        self.device = torch.device(device)
        self.gen = torch.Generator(device=self.device)
        self.gen.manual_seed(int(seed))
        self.cpu = torch.Generator()
        self.cpu.manual_seed(int(seed) * 2654435761 % (2**63) + 1)

    def bits(self, shape: tuple[int, ...]) -> Tensor:
        return torch.empty(shape, dtype=torch.int64, device=self.device).random_(generator=self.gen)

    def randn(self, shape: tuple[int, ...]) -> Tensor:
        return torch.randn(shape, generator=self.gen, device=self.device)

    def rand(self, shape: tuple[int, ...]) -> Tensor:
        return torch.rand(shape, generator=self.gen, device=self.device)

    def seed(self) -> int:
        return int(torch.randint(0, 2**62, (1,), generator=self.cpu))

    def to(self, device: torch.device) -> "_Rng":
        return _Rng(self.seed(), device)

    def get_state(self) -> dict[str, Any]:
        return {"device": str(self.device), "gen": self.gen.get_state(), "cpu": self.cpu.get_state()}

    def set_state(self, state: dict[str, Any]) -> None:
        self.cpu.set_state(state["cpu"])
        if torch.device(state["device"]) == self.device:
            self.gen.set_state(state["gen"])
        else:  # a state saved on another device: continue deterministically from the CPU stream
            self.gen.manual_seed(self.seed())



_TWO_PI = 2 * math.pi


def _unpack(bits: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """63 random bits -> a uniform in (0, 1) and two independent standard normals."""
    u = ((bits & 0xFFFFFF).to(torch.float32) + 0.5) * (2.0**-24)
    u_r = (((bits >> 24) & 0xFFFFFF).to(torch.float32) + 0.5) * (2.0**-24)
    ang = (((bits >> 48) & 0x7FFF).to(torch.float32) + 0.5) * (_TWO_PI * 2.0**-15)
    rad = torch.sqrt(-2.0 * torch.log(u_r))
    return u, rad * torch.cos(ang), rad * torch.sin(ang)
