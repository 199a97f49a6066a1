"""Unit cells: how the devices of a cross-point make one weight, found through :data:`CELLS`.

A cell is built as ``Cell(device_cfg, shape, rng, where, up, kernels)`` (the aihwkit device config
of ``rpu_config.device``, ``(out, in)``, the engine's :class:`~analogff.engine.rng._Rng`, the
refusal's subject, ``rpu_config.update``, the engine's :class:`~analogff.engine.kernels.Kernels`)
and provides ``weights()``, ``set_weights(w, rng)``, ``update(x, d, lr, rng)``,
``update_rows(u, lr, rng)`` (both return the pulses applied), ``hidden_parameters()``,
``load_hidden_parameters(state, weights)``, ``to(device)``, ``extra_state()`` /
``load_extra_state(s)``, and ``reads`` (a :class:`~analogff.engine.reads.Reads` tally, when the cell
reads its arrays itself).

:func:`build_cell` walks the config's class hierarchy and takes the nearest class named in
:data:`CELLS`; a name mapped to None is refused (a subclass of a registered cell that changes its
physics); a compound without an entry is refused; a plain device gets a :class:`SingleCell`. A new
cell: one new module and one line here (subclasses with other physics need their own line, e.g.
``ChoppedTransferCompound`` and ``DynamicTransferCompound`` next to ``TransferCompound``).
"""

from __future__ import annotations

from typing import Any

from ..kernels import Kernels
from ..refuse import _refuse
from ..rng import _Rng
from .mixed_precision import MixedPrecisionCell
from .one_sided import OneSidedCell
from .single import SingleCell
from .transfer import TransferCell

CELLS: dict[str, type | None] = {
    "MixedPrecisionCompound": MixedPrecisionCell,
    "OneSidedUnitCell": OneSidedCell,
    "DifferenceUnitCell": None,  # a OneSidedUnitCell subclass with other semantics
    # the transfer compounds (Tiki-Taka, TTv2, c-TTv2, AGAD): one cell, the algorithm by class
    "TransferCompound": TransferCell,
    "BufferedTransferCompound": TransferCell,
    "ChoppedTransferCompound": TransferCell,
    "DynamicTransferCompound": TransferCell,
}


def build_cell(device_cfg: Any, shape: tuple[int, int], rng: _Rng, preset: str, up: Any, kernels: Kernels):
    """The unit cell simulating ``device_cfg`` (ValueError, naming the preset, if none)."""
    where = f"preset {preset} (device {type(device_cfg).__name__})"
    for name in (c.__name__ for c in type(device_cfg).__mro__):
        if name in CELLS:
            cell = CELLS[name]
            if cell is not None:
                return cell(device_cfg, shape, rng, where, up, kernels)
            break
    if hasattr(device_cfg, "unit_cell_devices") or hasattr(device_cfg, "device"):
        raise _refuse(where, f"compound device {type(device_cfg).__name__} (vector / reference cells) is not "
                             f"implemented (cells: {', '.join(k for k, v in CELLS.items() if v is not None)})")
    return SingleCell(device_cfg, shape, rng, where, up, kernels)


_build_cell = build_cell  # the name of analogff.pulsed

__all__ = ["CELLS", "MixedPrecisionCell", "OneSidedCell", "SingleCell", "TransferCell", "build_cell"]
