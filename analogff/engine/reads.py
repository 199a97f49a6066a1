"""The read tally: array reads the engine performs beyond the one pass per vector a caller asks for.

A :class:`Reads` collects, between two :meth:`analogff.engine.TorchPulsedEngine.take_reads` calls,
the energy-bearing operations of every extra read: bound-management retries of the MVM
(:mod:`analogff.engine.mvm`), the PCM refresh's column reads (:mod:`analogff.engine.cells.one_sided`)
and any read a cell adds (a transfer cell reading its fast array). Integer counts are python ints
(known on the host without a sync); the voltage terms are tensors on the engine's device (or
floats), converted only when the crossbar's counters are read.

Two ways to give the read energy, both in units of the read voltage ``V_read`` and of the
programmable conductance span, so that the engine needs no conductance model:

* ``v2`` and ``v2g_rel``: sums over every read device of ``(V / V_read)^2`` and of
  ``(V / V_read)^2 * g / g_span`` (``g / g_span`` the relative conductance in [0, 1] with the
  crossbar's mapping, ``Crossbar._g_rel``: a device's weight over its own bound, clipped). The
  crossbar adds ``V_read^2 * (g_min * v2 + (g_max - g_min) * v2g_rel)`` to ``read_v2g_W``. Use these
  for any array (a cell knows its devices' weights and bounds).
* ``rows_v2`` (``cols_v2``): for extra passes through the engine's *own* weight array driven from
  its rows (columns), per row the sum over passes of ``(V_i / V_read)^2``; the crossbar prices them
  with the conductances of that array (its cached per-row sums, as for the first pass).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

DEVICES_PER_WEIGHT = 2  #: devices read per weight of the engine's own array (the G+ / G- pair)


@dataclass
class Reads:
    """Extra array reads since the last :meth:`take` (see the module docstring)."""

    mvms: int = 0  #: analog MVM passes (one per input vector per pass)
    dac_conversions: int = 0  #: rows driven, per pass
    adc_conversions: int = 0  #: columns converted, per pass
    device_reads: int = 0  #: devices read, per pass
    v2: Tensor | float = 0.0  #: sum over read devices of (V / V_read)^2
    v2g_rel: Tensor | float = 0.0  #: sum over read devices of (V / V_read)^2 * g / g_span
    rows_v2: Tensor | None = field(default=None)  #: (in,) own-array passes driven from the rows
    cols_v2: Tensor | None = field(default=None)  #: (out,) own-array passes driven from the columns

    def add(self, mvms: int = 0, dac_conversions: int = 0, adc_conversions: int = 0, device_reads: int = 0,
            v2: Tensor | float = 0.0, v2g_rel: Tensor | float = 0.0) -> None:
        """Add reads of any array (``v2``, ``v2g_rel`` as in the module docstring)."""
        self.mvms += int(mvms)
        self.dac_conversions += int(dac_conversions)
        self.adc_conversions += int(adc_conversions)
        self.device_reads += int(device_reads)
        self.v2 = self.v2 + v2
        self.v2g_rel = self.v2g_rel + v2g_rel

    def add_own_pass(self, u: Tensor, n_out: int, trans: bool = False) -> None:
        """One more pass of the vectors ``u`` (k, n_lines), already normalised to the read voltage
        (``V / V_read``), through the engine's own array of ``n_out`` outputs per vector."""
        k, n_lines = int(u.shape[0]), int(u.shape[1])
        self.mvms += k
        self.dac_conversions += k * n_lines
        self.adc_conversions += k * n_out
        self.device_reads += DEVICES_PER_WEIGHT * k * n_lines * n_out
        line = u.square().sum(0, dtype=torch.float64)
        if trans:
            self.cols_v2 = line if self.cols_v2 is None else self.cols_v2 + line
        else:
            self.rows_v2 = line if self.rows_v2 is None else self.rows_v2 + line

    def take(self) -> "Reads":
        """A copy of the tally, which is then reset (in place: cells keep their reference)."""
        out = Reads(self.mvms, self.dac_conversions, self.adc_conversions, self.device_reads, self.v2, self.v2g_rel,
                    self.rows_v2, self.cols_v2)
        self.mvms = self.dac_conversions = self.adc_conversions = self.device_reads = 0
        self.v2 = self.v2g_rel = 0.0
        self.rows_v2 = self.cols_v2 = None
        return out

    def __bool__(self) -> bool:
        return bool(self.mvms or self.dac_conversions or self.adc_conversions or self.device_reads
                    or self.rows_v2 is not None or self.cols_v2 is not None
                    or isinstance(self.v2, Tensor) or self.v2 or isinstance(self.v2g_rel, Tensor) or self.v2g_rel)


def normalised_input(x: Tensor, scale: Tensor | float, io_pars: Any) -> Tensor:
    """Row voltages over ``V_read`` of the DAC inputs ``x * scale`` (the MVM's noise-management
    scale and bound-management reduction): with abs-max noise management the scaled input is
    already in [-1, 1]; otherwise it is taken over the DAC bound ``inp_bound``, as
    ``Crossbar._count_forward`` does for the first pass."""
    u = x * scale
    if str(getattr(io_pars.noise_management, "name", "")) != "ABS_MAX":
        bound = float(io_pars.inp_bound)
        u = u / (bound if bound > 0 else 1.0)
    return u.clamp(-1.0, 1.0)
