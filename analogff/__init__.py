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



def _version() -> str:
    """The one version string, pyproject.toml's: read from it in a checkout (an editable install's
    metadata can be stale), else from the installed package's metadata."""
    import re
    from importlib.metadata import PackageNotFoundError, version
    from pathlib import Path

    pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
    if pyproject.is_file():
        m = re.search(r'^version\s*=\s*"([^"]+)"', pyproject.read_text(), re.M)
        if m:
            return m.group(1)
    try:
        return version("analogff")
    except PackageNotFoundError:
        return "unknown"


__version__ = _version()

_EXPORTS = {
    "load_device": "devices", "DeviceProfile": "devices", "DeviceProfileError": "devices",
    "PhysicalParams": "devices",
    "Crossbar": "crossbar",
    "OpCounts": "energy", "EnergyModel": "energy", "EnergyConstants": "energy",
    "load_mnist": "data", "load_fashion_mnist": "data", "load_dataset": "data",
}
_MODULES = ("data", "devices", "crossbar", "engine", "energy", "ff", "reference", "experiment", "plots")


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    if name in _MODULES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'analogff' has no attribute {name!r}")


__all__ = sorted(_EXPORTS) + list(_MODULES)
