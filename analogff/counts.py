"""Operation counts: what a run actually performed, and how to total them over a module tree.

:class:`OpCounts` is the one record of counts: every simulated component (crossbar, layer,
periphery) adds what it does into one; :mod:`analogff.accounting` holds the cost rules that say what
a piece of work counts, and :class:`analogff.energy.EnergyModel` turns counts into joules.
:func:`total_counts` sums a module tree's training counters; :class:`measured` and
:class:`evaluation` keep inference apart from the training bill.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

__all__ = ["OpCounts", "EVAL_PREFIX", "counters_in", "total_counts", "measured", "evaluation"]


@dataclass
class OpCounts:
    """Operations a run actually performed. All counts are integers except ``read_v2g_W``."""

    mvms: int = 0  #: forward analog MVMs (one per input vector per tile)
    dac_conversions: int = 0  #: forward DAC conversions (one per row driven per MVM)
    adc_conversions: int = 0  #: forward ADC conversions (one per column read per MVM)
    backward_mvms: int = 0  #: transposed analog MVMs (0 for Forward-Forward)
    backward_dac_conversions: int = 0  #: DAC conversions of transposed MVMs (0 for FF)
    backward_adc_conversions: int = 0  #: ADC conversions of transposed MVMs (0 for FF)
    device_reads: int = 0  #: cells read by MVMs (both devices of each pair)
    read_v2g_W: float = 0.0  #: sum over MVMs and read cells of V^2 * G, W; energy = t_read * this
    update_pulses: int = 0  #: programming pulses delivered to devices
    updates: int = 0  #: rank-one updates applied to an array (one per sample of a mini-batch)
    digital_macs: int = 0  #: digital multiply-accumulates
    digital_ops: int = 0  #: other digital element-wise operations: adds, subtractions, compares
    digital_mults: int = 0  #: digital element-wise multiplies (not part of a MAC)
    digital_special_ops: int = 0  #: digital divides, square roots, exponentials, logarithms
    sram_bytes: int = 0  #: bytes moved to or from on-chip SRAM
    dram_bytes: int = 0  #: bytes moved to or from off-chip DRAM

    def __add__(self, other: "OpCounts") -> "OpCounts":
        return OpCounts(**{f.name: getattr(self, f.name) + getattr(other, f.name) for f in fields(self)})

    def __iadd__(self, other: "OpCounts") -> "OpCounts":
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))
        return self

    def scaled(self, factor: float) -> "OpCounts":
        """Counts multiplied by ``factor`` (e.g. 1/samples for per-sample figures; floats)."""
        return OpCounts(**{f.name: getattr(self, f.name) * factor for f in fields(self)})

    def reset(self) -> None:
        """Set every counter back to zero."""
        for f in fields(self):
            setattr(self, f.name, type(f.default)(0))

    def as_dict(self) -> dict[str, float]:
        return asdict(self)

    def copy(self) -> "OpCounts":
        """An independent copy (a snapshot of the counters)."""
        return OpCounts(**asdict(self))


#: attribute-name prefix of counters that hold evaluation, not training (``BPNet.eval_counters``,
#: ``FFNet.eval_counters``): :func:`counters_in` and :func:`total_counts` leave them out.
EVAL_PREFIX = "eval_"


def counters_in(module: Any) -> list[OpCounts]:
    """Every :class:`OpCounts` held as an attribute by ``module`` or its submodules (nn.Module tree),
    except evaluation counters (attributes named ``eval_*``): these are the training counters."""
    found: list[OpCounts] = []
    mods = module.modules() if hasattr(module, "modules") else [module]
    for m in mods:
        if hasattr(m, "flush_counters"):  # a crossbar sums read energy on its device until asked
            m.flush_counters()
        for k, v in vars(m).items():
            if k.startswith(EVAL_PREFIX):
                continue
            if not isinstance(v, OpCounts) and not hasattr(v, "modules"):  # e.g. a test's fake crossbar
                v = getattr(v, "counters", None) if hasattr(v, "forward") else None
            if isinstance(v, OpCounts) and all(v is not f for f in found):
                found.append(v)
    return found


def total_counts(module: Any) -> OpCounts:
    """The sum of every counter in a module tree (digital periphery and crossbars alike)."""
    total = OpCounts()
    for c in counters_in(module):
        total += c
    return total


class measured:
    """Context manager: count what the block does in ``module``, then restore the counters.

        with measured(net) as m:
            net.accuracy(x_test, y_test)
        m.counts  # the inference counts; net's own counters are as before the block


    Blocks nest: an inner block's work stays visible to an enclosing block, which restores the
    counters when it ends.
    """

    _depth = 0  #: how many measured blocks are open

    def __init__(self, module: Any):
        self.module = module
        self.counts = OpCounts()

    def __enter__(self) -> "measured":
        self._saved = [(c, c.copy()) for c in counters_in(self.module)]
        for c, _ in self._saved:
            c.reset()
        measured._depth += 1
        return self

    def __exit__(self, *exc: Any) -> None:
        measured._depth -= 1
        self.counts = total_counts(self.module)
        nested = measured._depth > 0
        for c, saved in self._saved:
            if not nested:
                c.reset()  # outermost block: the counters are as before it
            c += saved  # nested: saved + this block's work, for the enclosing block to see


class evaluation(measured):
    """Context manager: what the block does in ``module`` is evaluation, not training. The counts go
    to ``into`` (e.g. ``net.eval_counters``) and the training counters are as before the block.

        with evaluation(net, net.eval_counters):
            net.accuracy(x_test, y_test)
    """

    def __init__(self, module: Any, into: OpCounts):
        super().__init__(module)
        self.into = into

    def __exit__(self, *exc: Any) -> None:
        measured._depth -= 1
        self.counts = total_counts(self.module)
        for c, saved in self._saved:  # even inside another block: evaluation never counts as training
            c.reset()
            c += saved
        self.into += self.counts
