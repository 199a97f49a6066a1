"""The engine's random streams (:class:`_Rng`), the counter-based bits the fused kernels make for
themselves (:func:`_bits`) and their unpacking into a uniform and two normals (:func:`_unpack`)."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor


class _Rng:
    """All randomness of one engine: a generator on the engine's device, one on the CPU for seeds.

    Bulk randomness of the device kernels is counter-based: the generator draws one 64-bit
    ``key`` per kernel call, and the kernel computes the bits of device ``i`` itself from
    ``(key, i)`` (:func:`_bits`), so no array of random numbers is written and read back. One
    ``int64`` per device gives a 24-bit uniform and two standard normals (:func:`_unpack`).
    """

    def __init__(self, seed: int, device: torch.device):
        self.device = torch.device(device)
        self.gen = torch.Generator(device=self.device)
        self.gen.manual_seed(int(seed))
        self.cpu = torch.Generator()
        self.cpu.manual_seed(int(seed) * 2654435761 % (2**63) + 1)

    def key(self) -> Tensor:
        """A 0-d ``int64`` key (on the engine's device) for one kernel call's :func:`_bits`."""
        return torch.randint(-2**63, 2**63 - 1, (), generator=self.gen, device=self.device, dtype=torch.int64)

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

# SplitMix64 (Steele, Lea & Flood, "Fast splittable pseudorandom number generators", OOPSLA 2014;
# the constants of Java's SplittableRandom): Weyl increment and the two multipliers of its
# finaliser, as signed int64 (torch has no uint64 arithmetic; products wrap modulo 2^64)
_GAMMA = 0x9E3779B97F4A7C15 - 2**64
_MIX1 = 0xBF58476D1CE4E5B9 - 2**64
_MIX2 = 0x94D049BB133111EB - 2**64


def _srl(z: Tensor, s: int) -> Tensor:
    """Logical right shift of int64 bits (torch's ``>>`` is arithmetic)."""
    return (z >> s) & ((1 << (64 - s)) - 1)


def _bits(key: Tensor, like: Tensor, draws: int = 1) -> Tensor:
    """64 random bits per element of ``like`` (``draws > 1``: shape ``(draws, *like.shape)``).

    Counter-based: element ``i`` gets ``mix((i xor key) * gamma)``, SplitMix64's Weyl state at
    position ``i xor key`` through its finaliser, a pure function of ``(key, i)``. Inside a fused
    kernel that is a few integer operations per element and no memory traffic; eager and compiled
    kernels make the same bits (integer arithmetic is exact). Keys are drawn at random from the
    engine's generator; the positions of one call fill an aligned block of ``2^k >= n`` Weyl
    states, so two calls' streams overlap only if their keys agree in all bits above ``k``
    (probability ~ 2^k / 2^64). (The index is xor-ed with the key before it is multiplied:
    torch 2.13's CPU inductor miscompiles ``arange * constant`` for constants this large.)
    """
    n = like.numel()
    i = torch.arange(draws * n, device=like.device, dtype=torch.int64)
    z = (i ^ key) * _GAMMA
    z = (z ^ _srl(z, 30)) * _MIX1
    z = (z ^ _srl(z, 27)) * _MIX2
    z = z ^ _srl(z, 31)
    return z.view((draws,) + tuple(like.shape)) if draws > 1 else z.view(like.shape)


def _unpack(bits: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """63 of 64 random bits -> a uniform in (0, 1) (24 bits) and two independent standard normals
    (Box-Muller: 24-bit radius, 15-bit angle)."""
    u = ((bits & 0xFFFFFF).to(torch.float32) + 0.5) * (2.0**-24)
    u_r = (((bits >> 24) & 0xFFFFFF).to(torch.float32) + 0.5) * (2.0**-24)
    ang = (((bits >> 48) & 0x7FFF).to(torch.float32) + 0.5) * (_TWO_PI * 2.0**-15)
    rad = torch.sqrt(-2.0 * torch.log(u_r))
    return u, rad * torch.cos(ang), rad * torch.sin(ang)
