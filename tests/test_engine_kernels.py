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

    monkeypatch.setenv("ANALOGFF_KERNEL_CACHE", "off")  # the torch.compile path (packages: below)
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


def test_cpu_tiles_run_packages_and_a_failed_package_falls_back_to_torch_compile(monkeypatch):
    """On the CPU a compiled tile goes to the package cache (small flat subsets stay eager); a
    package that cannot be built warns once and the kernel is torch.compiled instead."""
    from analogff.engine import kernels as K

    packaged: list[str] = []
    compiled: list[str] = []

    class FakePackages:
        def __call__(self, fn, args, kwargs):
            packaged.append(fn.__name__)
            if fn is K._bridge:
                raise RuntimeError("no C++ compiler")
            return fn(*args, **kwargs)

    monkeypatch.setattr(K, "_packages", lambda: FakePackages())
    monkeypatch.setattr(K.torch, "compile", lambda fn, dynamic=True: compiled.append(fn.__name__) or fn)
    monkeypatch.setattr(K.Kernels, "_compiled", {})
    monkeypatch.setattr(K.Kernels, "_no_package", set())
    k = K.Kernels(compile=True)
    k(K._log1p_ratio, torch.rand(7))
    k(K._log1p_ratio, torch.rand(3, 5))
    assert packaged == ["_log1p_ratio"] and compiled == []
    args = [torch.rand(4, 4) for _ in range(8)]
    with pytest.warns(RuntimeWarning, match="no compiled package for the kernel _bridge"):
        k(K._bridge, *args)
    k(K._bridge, *args)  # the fallback is remembered: no second try, no second warning
    assert packaged == ["_log1p_ratio", "_bridge"] and compiled == ["_bridge"]


def test_kernels_take_the_function_not_its_name():
    from analogff.engine.kernels import Kernels

    with pytest.raises(TypeError, match="kernel function itself"):
        Kernels(compile=False)("_log1p_ratio", torch.zeros(2))
