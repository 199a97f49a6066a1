"""Helpers shared by the FF tests: a digital fake crossbar, a synthetic ten-class task, tiny nets."""

from __future__ import annotations

import math

import torch

from analogff.energy import OpCounts
from analogff.ff import FFConfig, FFNet


class FakeCrossbar:
    """A digital stand-in for analogff.crossbar.Crossbar: exact MVM and exact W <- W - lr d^T x."""

    def __init__(self, n_in, n_out, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.w = (torch.rand(n_out, n_in, generator=g) * 2 - 1) / math.sqrt(n_in)
        self.counters = OpCounts()
        self.calls = []

    def forward(self, x):
        self.counters.mvms += x.shape[0]
        return x @ self.w.t()

    def update(self, x, d, lr):
        self.calls.append((x.shape[0], lr))
        self.counters.updates += x.shape[0]
        self.w -= lr * d.t() @ x

    def backward(self, d):
        self.counters.backward_mvms += d.shape[0]
        self.counters.backward_adc_conversions += d.shape[0] * self.w.shape[1]
        return d @ self.w

    def update_rows(self, u, lr):
        self.calls.append((u.shape[1], lr))
        self.counters.updates += u.shape[1]
        self.w -= lr * u


def synthetic(n=300, dim=784, seed=0):
    """Ten well-separated classes: class k lights up its own block of pixels (away from the label)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 10, (n,), generator=g)
    x = torch.rand(n, dim, generator=g) * 0.2
    block = (dim - 10) // 10
    for k in range(10):
        x[y == k, 10 + k * block:10 + (k + 1) * block] += 0.8
    return x.clamp(0, 1), y


def tiny_data():
    xtr, ytr = synthetic(1000, seed=0)
    xte, yte = synthetic(200, seed=1)
    return {"train": (xtr, ytr), "test": (xte, yte)}


def tiny_net(**cfg):
    return FFNet([784, 32, 32], config=FFConfig(**{"lr": 1e-2, "head_lr": 1e-2, "cooldown": 0.0, **cfg}))


def assert_same_state(a: dict, b: dict, where: str = ""):
    """Equal state dicts: tensors bit-equal, nested dicts (a crossbar's extra state) compared key by key."""
    assert a.keys() == b.keys(), where
    for k in a:
        x, y = a[k], b[k]
        if isinstance(x, dict):
            assert_same_state(x, y, f"{where}{k}.")
        elif isinstance(x, torch.Tensor):
            assert isinstance(y, torch.Tensor) and torch.equal(x, y), f"{where}{k}"
        elif isinstance(x, (list, tuple)):
            assert len(x) == len(y), f"{where}{k}"
            assert_same_state(dict(enumerate(x)), dict(enumerate(y)), f"{where}{k}.")
        else:
            assert x == y, f"{where}{k}"
