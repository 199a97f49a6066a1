"""analogff: Forward-Forward training on simulated analog in-memory-computing crossbars.

    import analogff as aff
    dev = aff.load_device("devices/reram_es.toml")
    xbar = aff.Crossbar(784, 500, device=dev, seed=0)
    y = xbar.forward(x); xbar.update(x, d, lr); gp, gm = xbar.conductances()

Names are imported lazily so that ``python -m analogff.data`` works without importing aihwkit.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "load_device": "devices", "DeviceProfile": "devices", "DeviceProfileError": "devices",
    "PhysicalParams": "devices",
    "Crossbar": "crossbar",
    "OpCounts": "energy", "EnergyModel": "energy", "EnergyConstants": "energy",
    "load_mnist": "data", "load_fashion_mnist": "data", "load_dataset": "data",
}
_MODULES = ("data", "devices", "crossbar", "pulsed", "energy", "ff", "reference", "experiment", "plots")


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    if name in _MODULES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'analogff' has no attribute {name!r}")


__all__ = sorted(_EXPORTS) + list(_MODULES)
