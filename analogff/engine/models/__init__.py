"""The device models, one module per aihwkit device class, found through :data:`MODELS`.

``MODELS`` maps the aihwkit class name to the model class (:class:`base.DeviceModel`), which is
built with that name (one model class may serve several aihwkit classes: SoftBoundsDevice is a
LinearStep in aihwkit's C++). :func:`model_for` walks the device config's class hierarchy and takes
the nearest registered class (so a preset's device subclass, e.g. ``ReRamESPresetDevice``, finds its
model); names in :data:`REFUSED` are refused first (a subclass of a registered model that changes
its physics). A new model: one new module with a :class:`base.DeviceModel` subclass and one line
here; the refusal message lists the registry.
"""

from __future__ import annotations

from typing import Any

from ..refuse import _refuse
from .base import DeviceModel
from .constant_step import ConstantStep
from .exp_step import ExpStep
from .linear_step import LinearStep
from .soft_bounds_reference import SoftBoundsReference

MODELS: dict[str, type[DeviceModel]] = {
    "ConstantStepDevice": ConstantStep,
    "LinearStepDevice": LinearStep,
    "SoftBoundsDevice": LinearStep,  # C++ SoftBounds = LinearStep with fixed settings
    "SoftBoundsReferenceDevice": SoftBoundsReference,
    "ExpStepDevice": ExpStep,
}

#: aihwkit classes refused although a parent class is registered
REFUSED: dict[str, str] = {
    "SoftBoundsPmaxDevice": "SoftBoundsPmaxDevice is not implemented",
}


def supported() -> str:
    """The registered device models and unit cells, for refusal messages."""
    from ..cells import CELLS

    return f"{', '.join(MODELS)}, {', '.join(n for n, c in CELLS.items() if c is not None)}"


def model_for(cfg: Any, where: str) -> DeviceModel:
    """The model of the aihwkit device config ``cfg`` (ValueError naming ``where`` if none)."""
    mro = [c.__name__ for c in type(cfg).__mro__]
    for name, problem in REFUSED.items():
        if name in mro:
            raise _refuse(where, problem)
    for name in mro:
        if name in MODELS:
            return MODELS[name](name)
    raise _refuse(where, f"device model {type(cfg).__name__} is not implemented (supported: {supported()})")


__all__ = ["MODELS", "REFUSED", "DeviceModel", "model_for", "supported"]
