"""Compile dispatch (analogff.engine.kernels): kernels are passed as functions; small subsets run eagerly."""

from __future__ import annotations

import math

import pytest
import torch



def test_small_flat_subsets_run_eagerly(monkeypatch):
    """Compiled kernels: a small flat subset of devices (sparse refresh / transfer) never reaches
    torch.compile (sizes 0 and 1 would recompile, seconds each on CUDA); full tiles do."""
    from analogff.engine import kernels as K

    compiled: list[str] = []

    def fake_compile(fn, dynamic=True):
        compiled.append(fn.__name__)
        return fn

    monkeypatch.setattr(K.torch, "compile", fake_compile)
    monkeypatch.setattr(K.Kernels, "_compiled", {})
    k = K.Kernels(compile=True)
    for n in (0, 1, 7):  # flat subsets: eager
        k(K._log1p_ratio, torch.rand(n))
    assert compiled == []
    k(K._log1p_ratio, torch.rand(3, 5))  # a tile (2-D): compiled
    k(K._log1p_ratio, torch.rand(K._COMPILE_MIN_DEVICES))  # a big flat subset: compiled
    assert compiled == ["_log1p_ratio"]
    assert torch.allclose(k(K._log1p_ratio, torch.tensor([0.0, 1.0])), torch.tensor([1.0, math.log(2.0)]))


def test_kernels_take_the_function_not_its_name():
    from analogff.engine.kernels import Kernels

    with pytest.raises(TypeError, match="kernel function itself"):
        Kernels(compile=False)("_log1p_ratio", torch.zeros(2))
