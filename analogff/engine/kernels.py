"""Compile dispatch of the fused per-device kernels, and the kernel helpers every device model shares.

Kernels are pure element-wise functions of tensors and python scalars. :class:`Kernels` calls
them (the function object itself: ``kernels(fn, *args)``) eagerly or compiled (on tiles of >= 65536
devices, ``ANALOGFF_COMPILE=0/1/auto``: on the CPU an AOTInductor package from the disk cache of
:mod:`.aot`, elsewhere ``torch.compile``); small flat subsets run eagerly.
The shared helpers: :func:`_pulse_draw` (which devices are pulsed, how many pulses of each sign)
and :func:`_bridge` (the end point of a noisy run clipped at the bounds after every pulse).
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor

_BGK = 0.5826  # Broadie-Glasserman-Kou continuity correction, -zeta(1/2) / sqrt(2 pi)


def _pulse_draw(mu_u: Tensor, mu_d: Tensor, m2_u: Tensor, m2_d: Tensor, m2_scale: float, u: Tensor):
    """Which devices are pulsed this batch, and how many pulses of each sign (one uniform).

    ``m2 * m2_scale`` is ``sum_b BL_b p^2`` (the count variance is ``mu - m2``). A device is pulsed
    with probability ``q = min(mu_up + mu_down, 1)``; then it gets
    ``mu / q`` pulses of each sign (exact means; integers below one pulse per batch, the mean count
    above). The count variance this does not carry, ``var - mu^2 (1 - q) / q``, is returned per
    pulsed device (``r``) and added as Gaussian weight noise of ``r`` steps squared. ``u / q`` is
    again uniform on a pulsed device and is handed on.
    """
    var_u = (mu_u - m2_u * m2_scale).clamp(min=0.0)  # binomial: sum_b BL p (1 - p)
    var_d = (mu_d - m2_d * m2_scale).clamp(min=0.0)
    q = (mu_u + mu_d).clamp(max=1.0)
    pulsed = u < q
    inv = torch.where(pulsed, 1.0 / q.clamp(min=1e-30), 0.0)
    nu = mu_u * inv
    nd = mu_d * inv
    keep = (1.0 - q) * inv
    r_u = (var_u - mu_u * mu_u * keep).clamp(min=0.0) * inv
    r_d = (var_d - mu_d * mu_d * keep).clamp(min=0.0) * inv
    ub = torch.where(pulsed, (u * inv).clamp(max=1.0), 1.0)
    # the two signs come together on a pulsed device; their covariance mu_u mu_d (1 - q) / q is
    # given back as noise (``r_ud``, in units of step_up * step_down) so that n_up - n_down keeps
    # the variance of independent counts
    r_ud = 2.0 * mu_u * mu_d * keep * inv
    return pulsed, nu, nd, r_u, r_d, ub, r_ud


def _bridge(w0: Tensor, w1: Tensor, var: Tensor, n: Tensor, lo: Tensor, hi: Tensor, z: Tensor, ub: Tensor) -> Tensor:
    """End point of ``n`` noisy pulses that aihwkit clips at the bounds after *every* pulse.

    The free (unclipped) path goes from ``w0`` to ``w1 + sqrt(var) z`` (``w1`` the deterministic end
    point). Clipping after every pulse is a reflection (Skorokhod): the end point is the free end
    point minus how far the path's maximum went past the upper bound, plus how far its minimum went
    below the lower one. Given its end points a Brownian bridge of variance v reaches
    ``(a + b + sqrt((b - a)^2 - 2 v log U)) / 2`` (U uniform, ``ub``); a walk of n discrete steps of
    std s overshoots like the continuous path with the bound moved out by ``0.5826 s`` (Broadie,
    Glasserman & Kou 1997). Without noise this is plain clipping.
    """
    free = w1 + var.sqrt() * z
    half = 0.5 * ((free - w0).square() - 2.0 * var * torch.log(ub)).sqrt()
    mid = 0.5 * (w0 + free)
    shift = _BGK * (var / n.clamp(min=1.0)).sqrt()
    out = free - (mid + half - hi - shift).clamp(min=0.0) + (lo - shift - mid + half).clamp(min=0.0)
    return torch.minimum(torch.maximum(out, lo), hi)


def _log1p_ratio(s: Tensor) -> Tensor:
    """log(1 + s) / s, 1 at s = 0 (the per-pulse rate of a geometric approach)."""
    small = s.abs() < 1e-3
    return torch.where(small, 1 - s / 2 + s * s / 3, torch.log1p(s.clamp(min=-0.999)) / torch.where(small, 1.0, s))


class Kernels:
    """The fused kernels, eager or compiled.

    ``kernels(fn, *args, **kwargs)`` runs the kernel function ``fn`` (a function object). Compiled, on
    the CPU it runs the kernel's AOTInductor package from the disk cache (:mod:`.aot`: compiled once
    per machine, loaded in milliseconds by every later process, no Dynamo); on other devices, or
    with ``ANALOGFF_KERNEL_CACHE=off``, through ``torch.compile`` (dynamic shapes, traced once per
    process). A package that cannot be built falls back to ``torch.compile`` with a warning; if
    that fails too (no C++ compiler, no triton), the engine warns once and stays eager: same results
    up to float rounding, a few times slower.
    """

    _compiled: dict[str, Callable] = {}
    _no_package: set[Callable] = set()  # kernels whose package failed: torch.compile in this process
    _broken = False

    def __init__(self, compile: bool):
        self.compile = compile

    def __call__(self, fn: Callable, *args: Any, **kwargs: Any):
        if not callable(fn):
            raise TypeError(f"Kernels: pass the kernel function itself, got {fn!r}")
        if not self.compile or Kernels._broken or _small_call(args):
            return fn(*args, **kwargs)
        packages = _packages() if _on_cpu(args) and fn not in Kernels._no_package else None
        if packages is not None:
            try:
                return packages(fn, args, kwargs)
            except Exception as exc:  # no C++ compiler, a kernel export cannot take: torch.compile it
                import warnings

                warnings.warn(f"analogff: no compiled package for the kernel {fn.__qualname__} "
                              f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
                              "it runs through torch.compile in this process", RuntimeWarning, stacklevel=3)
                Kernels._no_package.add(fn)
        name = f"{fn.__module__}.{fn.__qualname__}"
        if name not in Kernels._compiled:
            Kernels._compiled[name] = torch.compile(fn, dynamic=True)
        try:
            return Kernels._compiled[name](*args, **kwargs)
        except Exception as exc:  # pragma: no cover - depends on the toolchain
            import warnings

            warnings.warn(f"analogff: torch.compile failed ({type(exc).__name__}: {exc}); the torch engine "
                          "runs its device kernels eagerly (slower)", RuntimeWarning, stacklevel=3)
            Kernels._broken = True
            return fn(*args, **kwargs)


_Kernels = Kernels  # the name of analogff.pulsed

_PACKAGES: dict[Any, Any] = {}


def _packages():
    """The process's :class:`~.aot.PackageCache` for ``$ANALOGFF_KERNEL_CACHE`` (None: ``off``)."""
    import os

    env = os.environ.get("ANALOGFF_KERNEL_CACHE")  # by the variable's value: no paths built per call
    if env not in _PACKAGES:
        from .aot import PackageCache, cache_dir

        root = cache_dir()
        _PACKAGES[env] = None if root is None else PackageCache(root)
    return _PACKAGES[env]


def _on_cpu(args: tuple) -> bool:
    for a in args:
        if isinstance(a, Tensor):
            return a.device.type == "cpu"
    return False


_COMPILE_MIN_DEVICES = 65536


def _small_call(args: tuple) -> bool:
    """A call on a small subset of devices (the sparse refresh and transfer paths pass flat 1-D
    subsets of varying, often tiny size) runs eagerly: compiling gains little there, and sizes 0
    and 1 would each recompile the kernel (seconds per recompile on CUDA, on random steps)."""
    for a in args:
        if isinstance(a, Tensor) and a.dim() > 0:
            return a.dim() == 1 and a.numel() < _COMPILE_MIN_DEVICES // 4
    return False


def _compile_default(n_devices: int, device: torch.device) -> bool:
    """Compile the kernels for big tiles (>= 65536 devices) unless ANALOGFF_COMPILE says otherwise."""
    import os

    env = os.environ.get("ANALOGFF_COMPILE", "auto").strip().lower()
    if env in ("0", "false", "no", "off"):
        return False
    if env in ("1", "true", "yes", "on"):
        return True
    return n_devices >= _COMPILE_MIN_DEVICES
