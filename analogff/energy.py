"""The energy model that turns operation counts into joules.

Every simulated component counts what it does into an :class:`analogff.counts.OpCounts`; the :class:`EnergyModel`
multiplies the counts by per-operation energies (:class:`EnergyConstants`), each with a unit in its
name and a cited source, and returns an :class:`EnergyReport` with a per-component breakdown.

Model
-----
``energy = sum over components of count x energy per operation``, with

=================  ===========================================================================
component          energy
=================  ===========================================================================
``dac``            ``dac_conversions x E_DAC(dac_bits)``,  E_DAC(b) = ``dac_J_per_level`` x 2^b
``adc``            ``adc_conversions x E_ADC(adc_bits)``, Walden or Murmann-survey model (below)
``backward_dac``   the same per conversion, for the transposed MVMs of analog backprop (0 for FF)
``backward_adc``   the same per conversion, for the transposed MVMs of analog backprop (0 for FF)
``array_read``     ``t_read_s x read_v2g_W`` (sum of V^2 G over read cells, from the simulation)
``programming``    ``update_pulses x pulse_energy_J``
``digital_mac``    ``digital_macs x (mult + add)`` at ``digital_precision`` (Horowitz, 45 nm)
``digital_ops``    ``digital_ops x add + digital_mults x mult + digital_special_ops x special``
                   at ``digital_precision`` (Horowitz, 45 nm; special = ``special_op_in_mults``
                   x mult, 7.1: a measured fp32 divide; docs/energy.md "Element-wise operations")
``sram``           ``sram_bytes x sram_J_per_byte``, the price following ``sram_capacity_bytes``
                   (Horowitz's 8 KB / 32 KB / 1 MB reads, linear in log capacity; docs/energy.md
                   "Memory")
``dram``           ``dram_bytes x dram_J_per_byte``
=================  ===========================================================================

ADC models (``adc_model``), with ENOB taken equal to the nominal ADC bits:

* ``"walden"``: ``E = FOM_W x 2^bits`` (Walden figure of merit, J per conversion step).
* ``"murmann"``: ``E = E0 + k x 4^bits``, the shape of the energy envelope in B. Murmann's ADC
  Performance Survey (github.com/bmurmann/ADC-survey, ``plots/energy_plot.ipynb``). ``E0`` and ``k``
  are set by ``adc_point``:

  - ``"min"``: the survey's own envelope (E0 = mean of the 3 smallest P/fs_nyq, k = mean of the 3
    smallest P/fs_nyq / 4^ENOB over all designs): a lower bound, the best converters ever published.
  - ``"p10"`` / ``"median"``: the same curve shape drawn through the 10th-percentile / median
    energy of the designs with ENOB in [5, 7) (plotted at ENOB 6) and in [7, 9) (plotted at ENOB 8).

  All numbers were recomputed by us from ``xls/ADCsurvey_rev20250609.xlsx`` (ISSCC + VLSI sheets,
  725 designs with a power figure): ENOB 7-9 (123 designs): min 0.42 pJ, 10th pct 2.58 pJ, median
  38.6 pJ; ENOB 5-7 (81 designs): min 0.30 pJ, 10th pct 1.58 pJ, median 8.83 pJ. The Walden points
  are the Walden FOM (``FOMW_hf``) of the ENOB 7-9 designs: min 0.85, 10th pct 16.6, median 181
  fJ/conversion-step.

Default and calibration
-----------------------
The default ADC point is the Murmann-survey **median** (8-bit: 38.6 pJ per conversion), the point
that reproduces measured silicon (IBM HERMES, and independently IBM's 14 nm speech chip):
:mod:`analogff.calibration` configures the model like each chip and compares; docs/energy.md
("Constants", "Calibration") gives every constant and its source.

Digital energies are Horowitz's 45 nm, 0.9 V figures (ISSCC 2014) and are *not* scaled to another
node: reports state "45 nm". The digital MAC energy at the default precision (fp32: 4.6 pJ) is
checked against the NVIDIA H100's peak (bf16 dense, ~1.41 pJ per MAC at 700 W): a per-MAC digital
cost below what a real GPU achieves at peak would flatter the digital baseline (see
:func:`analogff.calibration.digital_mac_bound`). Note that Horowitz's int8 MAC (0.23 pJ, arithmetic only, no operand
movement) *is* below the H100's int8 peak (0.71 pJ/MAC); the bound holds for fp32 and fp16 only.

The analog backprop counts (``backward_*``) use the same DAC/ADC resolution as the forward pass.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import asdict, dataclass, fields
from typing import Any, Mapping

from analogff.counts import EVAL_PREFIX, OpCounts, counters_in, evaluation, measured, total_counts  # noqa: F401 (re-exported)

__all__ = [
    "OpCounts",
    "EnergyConstants",
    "EnergyConfigError",
    "EnergyModel",
    "EnergyReport",
    "MURMANN_POINTS",
    "WALDEN_POINTS",
    "HOROWITZ_45NM_J",
    "sram_J_per_byte_for",
    "COMPONENTS",
    "measured",
    "evaluation",
    "total_counts",
]


# ---------------------------------------------------------------------------------------------
# Published figures (each with its source and how far we verified it)
# ---------------------------------------------------------------------------------------------

#: Horowitz, "Computing's energy problem (and what we can do about it)", ISSCC 2014, 45 nm, 0.9 V:
#: (add, multiply) energy per operation, J. Cross-checked against two independent tabulations of the
#: same table (Front. Neurol. 2022 PMC8934428 Table 3 for int32/fp32; stillwater-sc "generic_45nm"
#: for int8/fp16/int32/fp32); the ISSCC paper itself was not read.
HOROWITZ_45NM_J: dict[str, tuple[float, float]] = {
    "int8": (0.03e-12, 0.2e-12),
    "int32": (0.1e-12, 3.1e-12),
    "fp16": (0.4e-12, 1.1e-12),
    "fp32": (0.9e-12, 3.7e-12),
}
#: Horowitz 2014: 64-bit read from an 8 KB SRAM cache, 10 pJ (cross-checked as above) -> per byte.
HOROWITZ_SRAM_8KB_J_PER_BYTE = 10e-12 / 8
#: Horowitz 2014: 64-bit read from a 32 KB SRAM cache, 20 pJ -> per byte (docs/energy.md, "Memory":
#: the 32 KB and 1 MB entries are Horowitz's table as widely reproduced; not checked in the original).
HOROWITZ_SRAM_32KB_J_PER_BYTE = 20e-12 / 8
#: Horowitz 2014: 64-bit read from a 1 MB SRAM cache, 100 pJ -> per byte (docs/energy.md, "Memory").
HOROWITZ_SRAM_1MB_J_PER_BYTE = 100e-12 / 8
#: (capacity in bytes, J per byte) of Horowitz's three SRAM sizes, for :func:`sram_J_per_byte_for`.
HOROWITZ_SRAM_POINTS: tuple[tuple[int, float], ...] = (
    (8 << 10, HOROWITZ_SRAM_8KB_J_PER_BYTE), (32 << 10, HOROWITZ_SRAM_32KB_J_PER_BYTE),
    (1 << 20, HOROWITZ_SRAM_1MB_J_PER_BYTE))
#: on-chip SRAM of the digital accelerator and of the analog chip's periphery, bytes (1 MiB): the
#: capacity of the residency rule (analogff.accounting) and of the SRAM price
DEFAULT_SRAM_CAPACITY_BYTES = 1 << 20
#: energy of an fp32 divide in fp32 multiplies: 7.1, measured on an ARM Cortex-M4F (Front. Neurol.
#: 2022, PMC8934428, Table 3, note b: 26.3 pJ = 7.1 x Horowitz's 3.7 pJ). analogff prices every
#: divide, square root, exponential and logarithm ("special" op) so; an assumption for sqrt/exp/log.
SPECIAL_OP_IN_MULTS = 7.1


def sram_J_per_byte_for(capacity_bytes: float) -> float:
    """Horowitz's SRAM energy per byte for an SRAM of ``capacity_bytes``: linear in log2(capacity)
    between his 8 KB (10 pJ), 32 KB (20 pJ) and 1 MB (100 pJ) 64-bit reads; 10 pJ below 8 KB; above
    1 MB extrapolated on the 32 KB - 1 MB slope (+16 pJ per doubling; stated, not measured)."""
    if not capacity_bytes > 0:
        raise EnergyConfigError("sram_capacity_bytes", f"must be > 0; got {capacity_bytes!r}")
    pts = HOROWITZ_SRAM_POINTS
    x = math.log2(capacity_bytes)
    if capacity_bytes <= pts[0][0]:
        return pts[0][1]
    for (c0, e0), (c1, e1) in zip(pts[:-1], pts[1:]):
        if capacity_bytes <= c1:
            return e0 + (e1 - e0) * (x - math.log2(c0)) / (math.log2(c1) - math.log2(c0))
    (c0, e0), (c1, e1) = pts[-2], pts[-1]
    return e1 + (e1 - e0) * (x - math.log2(c1)) / (math.log2(c1) - math.log2(c0))
#: Horowitz 2014: 64-bit DRAM access 1.3-2.6 nJ (cross-checked as above); we take the low end,
#: 1.3 nJ / 8 bytes = 162.5 pJ/byte (the same 160 pJ/byte as the often-quoted 640 pJ per 32-bit word).
HOROWITZ_DRAM_J_PER_BYTE = 1.3e-9 / 8

#: MNSIM-2.0 (github.com/thu-nics/MNSIM-2.0, ``MNSIM/Hardware_Model/DAC.py``) tabulates DAC power at
#: 1 GS/s "from ISAAC (Shafiee et al., ISCA 2016)": 1-bit 3.9 uW, 2-bit 7.8, 3-bit 15.6, 4-bit 31.2,
#: 6-bit 124.8, 8-bit 499.2 uW, i.e. 3.9 / 31.2 / 124.8 fJ per conversion at 1 / 4 / 6 bits (read in
#: MNSIM's source; ISAAC's own table not read). These are exactly E = 1.95 fJ x 2^bits.
MNSIM_ISAAC_DAC_J: dict[int, float] = {1: 3.9e-15, 2: 7.8e-15, 3: 15.6e-15, 4: 31.2e-15, 6: 124.8e-15, 8: 499.2e-15}
DAC_J_PER_LEVEL = 1.95e-15  #: fit E_DAC(b) = DAC_J_PER_LEVEL * 2^b, exact for every MNSIM entry

#: ISAAC's 8-bit ADC: 8 ADCs per in-situ multiply-accumulate unit draw 16 mW at 1.2 GS/s, i.e.
#: 16e-3 / (8 x 1.2e9) = 1.67 pJ per conversion (as derived from ISAAC's table by Accelergy's
#: hwcomponents-library, ``library/isaac.py``; MNSIM tabulates the same ADC as 2 mW at 1 GS/s, 2 pJ).
#: Not verified against ISAAC's paper. Used for reference only.
ISAAC_ADC_8BIT_J = 16e-3 / (8 * 1.2e9)

# Murmann ADC survey, rev. 2025-06-09 (xls/ADCsurvey_rev20250609.xlsx), recomputed by us.
_MURMANN_ENVELOPE_E0_J = 0.2672222e-12  # mean of the 3 smallest P/fs_nyq over all 725 designs
_MURMANN_ENVELOPE_K_J = 1.445631e-19  # mean of the 3 smallest (P/fs_nyq) / 4^ENOB
_MURMANN_PERCENTILES_J = {  # (ENOB 5-7 bin, plotted at 6; ENOB 7-9 bin, plotted at 8)
    "p10": (1.5789474e-12, 2.58e-12),
    "median": (8.8333333e-12, 38.6e-12),
}


def _through(e6: float, e8: float) -> tuple[float, float]:
    """(E0, k) of E = E0 + k 4^b passing through (6, e6) and (8, e8)."""
    k = (e8 - e6) / (4**8 - 4**6)
    return e6 - k * 4**6, k


#: adc_point -> (E0_J, k_J) of the Murmann-survey model E = E0 + k * 4^bits.
MURMANN_POINTS: dict[str, tuple[float, float]] = {
    "min": (_MURMANN_ENVELOPE_E0_J, _MURMANN_ENVELOPE_K_J),
    "p10": _through(*_MURMANN_PERCENTILES_J["p10"]),
    "median": _through(*_MURMANN_PERCENTILES_J["median"]),
}
#: adc_point -> Walden FOM, J per conversion step: FOMW_hf of the survey designs with ENOB in [7, 9)
#: (min / 10th percentile / median), recomputed by us from the same survey file.
WALDEN_POINTS: dict[str, float] = {"min": 0.8501e-15, "p10": 16.64e-15, "median": 181.0e-15}

# NVIDIA H100 SXM5: 989.4 TFLOPS bf16 and 1978.9 TOPS int8 dense tensor-core peak (the datasheet's
# 1,979 TFLOPS bf16 / 3,958 TOPS int8 are "with sparsity"), up to 700 W. Checked against the
# per-type table at glennklockwood.com/garden/processors/h100 and NVIDIA product pages as reproduced
# by third parties; the NVIDIA PDF itself was not read.
H100_PEAK_OPS_PER_S = {"bf16": 989.4e12, "fp16": 989.4e12, "int8": 1978.9e12, "tf32": 494.7e12}
H100_TDP_W = 700.0

_ADC_MODELS = ("walden", "murmann")
_SRAM_MODELS = ("horowitz", "custom")
_ADC_POINTS = ("min", "p10", "median", "custom")
_PRECISIONS = tuple(HOROWITZ_45NM_J)
_ADC_NUMBER_FIELDS = ("adc_walden_fom_J_per_step", "adc_murmann_E0_J", "adc_murmann_k_J")


class EnergyConfigError(ValueError):
    """An energy constant or override is missing or invalid; the message names the field."""

    def __init__(self, field_name: str, problem: str):
        super().__init__(f"energy constant '{field_name}': {problem}")
        self.field_name, self.problem = field_name, problem


@dataclass(frozen=True)
class EnergyConstants:
    """Per-operation energies and the choices that select them. Units are in the field names.

    Construct with no arguments for the defaults; override any field by keyword, or use
    :meth:`with_overrides` (which keeps ``adc_point`` consistent) or :meth:`from_dict`.
    """

    # -- ADC ---------------------------------------------------------------------------------
    #: "murmann" (E = E0 + k 4^bits, survey envelope shape) or "walden" (E = FOM 2^bits).
    adc_model: str = "murmann"
    #: which survey point the ADC numbers are: "min", "p10", "median" or "custom" (see module doc).
    adc_point: str = "median"
    #: Walden FOM, J per conversion step (default: survey median of ENOB 7-9 designs, 181 fJ/step).
    adc_walden_fom_J_per_step: float = WALDEN_POINTS["median"]
    #: Murmann-survey model constant term E0, J per conversion (default: median point).
    adc_murmann_E0_J: float = MURMANN_POINTS["median"][0]
    #: Murmann-survey model coefficient k of 4^bits, J per conversion (default: median point).
    adc_murmann_k_J: float = MURMANN_POINTS["median"][1]
    #: ADC resolution (bits, = ENOB) used when neither the model nor the profile gives one.
    adc_bits_default: int = 8
    # -- DAC ---------------------------------------------------------------------------------
    #: E_DAC(b) = dac_J_per_level * 2^b; 1.95 fJ reproduces MNSIM's ISAAC-derived table exactly.
    dac_J_per_level: float = DAC_J_PER_LEVEL
    #: DAC resolution (bits) used when neither the model nor the profile gives one.
    dac_bits_default: int = 8
    # -- array ---------------------------------------------------------------------------------
    #: integration (read) time of one analog MVM, s. Default 128 ns, an assumption (docs/energy.md,
    #: "Array read": 0.2 V, 25 uS, 128 ns -> 0.13 pJ per cell, pessimistic); profiles override it.
    t_read_s: float = 128e-9
    #: energy of one programming pulse on one device, J. Default 2.5 pJ = V_w^2 G t_p for 1 V,
    #: 50 uS, 50 ns (a formula-based ReRAM estimate, not a measurement: docs/energy.md,
    #: "Programming pulses"); profiles override it.
    pulse_energy_J: float = 2.5e-12
    # -- digital (Horowitz ISSCC 2014, 45 nm, 0.9 V; not node-scaled) ----------------------------
    #: precision of digital arithmetic: "fp32", "fp16", "int32" or "int8".
    digital_precision: str = "fp32"
    fp32_add_J: float = HOROWITZ_45NM_J["fp32"][0]  #: 0.9 pJ
    fp32_mult_J: float = HOROWITZ_45NM_J["fp32"][1]  #: 3.7 pJ
    fp16_add_J: float = HOROWITZ_45NM_J["fp16"][0]  #: 0.4 pJ
    fp16_mult_J: float = HOROWITZ_45NM_J["fp16"][1]  #: 1.1 pJ
    int32_add_J: float = HOROWITZ_45NM_J["int32"][0]  #: 0.1 pJ
    int32_mult_J: float = HOROWITZ_45NM_J["int32"][1]  #: 3.1 pJ
    int8_add_J: float = HOROWITZ_45NM_J["int8"][0]  #: 0.03 pJ
    int8_mult_J: float = HOROWITZ_45NM_J["int8"][1]  #: 0.2 pJ
    #: a divide, square root, exponential or logarithm costs this many multiplies of the same
    #: precision (7.1: measured fp32 divide / multiply, docs/energy.md "Element-wise operations")
    special_op_in_mults: float = SPECIAL_OP_IN_MULTS
    # -- memory (Horowitz ISSCC 2014, 45 nm) -----------------------------------------------------
    #: on-chip SRAM capacity, bytes (the SRAM price follows it when ``sram_model="horowitz"``)
    sram_capacity_bytes: int = DEFAULT_SRAM_CAPACITY_BYTES
    #: "horowitz": ``sram_J_per_byte`` = :func:`sram_J_per_byte_for` (capacity); "custom": your own
    sram_model: str = "horowitz"
    #: on-chip SRAM, J per byte: Horowitz's 100 pJ per 64-bit access of a 1 MB SRAM (default capacity).
    sram_J_per_byte: float = HOROWITZ_SRAM_1MB_J_PER_BYTE
    #: off-chip DRAM, J per byte: 1.3 nJ per 64-bit access (low end of Horowitz's 1.3-2.6 nJ).
    dram_J_per_byte: float = HOROWITZ_DRAM_J_PER_BYTE

    def __post_init__(self) -> None:
        choices = {"adc_model": _ADC_MODELS, "adc_point": _ADC_POINTS, "digital_precision": _PRECISIONS,
                   "sram_model": _SRAM_MODELS}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None:
                raise EnergyConfigError(f.name, "is missing (None); give a value")
            if f.name in choices:
                if not isinstance(value, str) or value not in choices[f.name]:
                    raise EnergyConfigError(f.name, f"must be one of {', '.join(choices[f.name])}; got {value!r}")
            elif f.name.endswith("_bits_default"):
                if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 24:
                    raise EnergyConfigError(f.name, f"must be an integer number of bits in 1..24; got {value!r}")
            else:
                if isinstance(value, bool) or not isinstance(value, (int, float)):
                    raise EnergyConfigError(f.name, f"must be a number (float) >= 0; got {type(value).__name__} {value!r}")
                if math.isnan(value) or math.isinf(value):
                    raise EnergyConfigError(f.name, f"must be a finite number >= 0; got {value!r}")
                if value < 0:
                    raise EnergyConfigError(f.name, f"must be >= 0 (an energy/time cannot be negative); got {value!r}")
        if isinstance(self.sram_capacity_bytes, float) or self.sram_capacity_bytes < 1:
            raise EnergyConfigError("sram_capacity_bytes", f"must be an integer number of bytes >= 1; got {self.sram_capacity_bytes!r}")
        if self.sram_model == "horowitz":
            want = sram_J_per_byte_for(self.sram_capacity_bytes)
            if not math.isclose(self.sram_J_per_byte, want, rel_tol=1e-9):
                raise EnergyConfigError(
                    "sram_J_per_byte", f"is {self.sram_J_per_byte!r} but sram_model='horowitz' at "
                                       f"{self.sram_capacity_bytes} bytes means {want!r}; set sram_model='custom' "
                                       "for your own figure, or override sram_capacity_bytes alone")
        if self.adc_point != "custom":
            e0, k = MURMANN_POINTS[self.adc_point]
            expected = {"adc_walden_fom_J_per_step": WALDEN_POINTS[self.adc_point],
                        "adc_murmann_E0_J": e0, "adc_murmann_k_J": k}
            for name, want in expected.items():
                if not math.isclose(getattr(self, name), want, rel_tol=1e-9):
                    raise EnergyConfigError(
                        name, f"is {getattr(self, name)!r} but adc_point={self.adc_point!r} means {want!r}; "
                              "set adc_point='custom' to use your own ADC numbers, or build with "
                              "EnergyConstants.at_adc_point(point) / .with_overrides(adc_point=point)")

    # -- construction helpers ------------------------------------------------------------------
    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    @classmethod
    def at_adc_point(cls, point: str, **overrides: Any) -> "EnergyConstants":
        """Defaults with the ADC numbers of survey point ``point`` ("min", "p10", "median")."""
        return cls().with_overrides(adc_point=point, **overrides)

    def with_overrides(self, **overrides: Any) -> "EnergyConstants":
        """A copy with fields replaced. Unknown names raise :class:`EnergyConfigError`.

        Naming a survey ``adc_point`` fills in its ADC numbers; giving ADC numbers without naming a
        point marks them ``adc_point='custom'``.
        """
        known = set(self.field_names())
        for key in overrides:
            if key not in known:
                raise EnergyConfigError(key, f"unknown field; allowed: {', '.join(sorted(known))}")
        values = dict(overrides)
        point = values.get("adc_point")
        if isinstance(point, str) and point in MURMANN_POINTS:
            e0, k = MURMANN_POINTS[point]
            defaults = {"adc_walden_fom_J_per_step": WALDEN_POINTS[point], "adc_murmann_E0_J": e0,
                        "adc_murmann_k_J": k}
            for name, v in defaults.items():
                values.setdefault(name, v)
        elif point is None and any(name in values for name in _ADC_NUMBER_FIELDS):
            values["adc_point"] = "custom"
        sram_model = values.get("sram_model", self.sram_model if "sram_J_per_byte" not in values else None)
        if sram_model is None:
            values["sram_model"] = "custom"  # an SRAM price given without naming a model
        elif sram_model == "horowitz" and "sram_J_per_byte" not in values:
            cap = values.get("sram_capacity_bytes", self.sram_capacity_bytes)
            if isinstance(cap, int) and not isinstance(cap, bool) and cap >= 1:
                values["sram_J_per_byte"] = sram_J_per_byte_for(cap)
        return dataclasses.replace(self, **values)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], partial: bool = True) -> "EnergyConstants":
        """Build from a mapping. With ``partial=False`` every field must be present (else an error
        names the missing one); with ``partial=True`` absent fields keep their defaults."""
        if not partial:
            for name in cls.field_names():
                if name not in data:
                    raise EnergyConfigError(name, "is missing from the given constants")
        return cls().with_overrides(**dict(data))

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    # -- per-operation energies -------------------------------------------------------------------
    def adc_J(self, bits: int) -> float:
        """Energy of one ADC conversion at ``bits`` (= ENOB), J."""
        if self.adc_model == "walden":
            return self.adc_walden_fom_J_per_step * 2.0**bits
        return self.adc_murmann_E0_J + self.adc_murmann_k_J * 4.0**bits

    def dac_J(self, bits: int) -> float:
        """Energy of one DAC conversion at ``bits``, J."""
        return self.dac_J_per_level * 2.0**bits

    def add_J(self, precision: str | None = None) -> float:
        """Energy of one digital add at ``precision`` (default ``digital_precision``), J."""
        return getattr(self, f"{precision or self.digital_precision}_add_J")

    def mult_J(self, precision: str | None = None) -> float:
        return getattr(self, f"{precision or self.digital_precision}_mult_J")

    def mac_J(self, precision: str | None = None) -> float:
        """Energy of one digital multiply-accumulate (multiply + add), J."""
        return self.mult_J(precision) + self.add_J(precision)

    def special_J(self, precision: str | None = None) -> float:
        """Energy of one divide, square root, exponential or logarithm: ``special_op_in_mults`` multiplies."""
        return self.special_op_in_mults * self.mult_J(precision)


# ---------------------------------------------------------------------------------------------
# Reports
# ---------------------------------------------------------------------------------------------

COMPONENTS = ("dac", "adc", "backward_dac", "backward_adc", "array_read", "programming",
              "digital_mac", "digital_ops", "sram", "dram")


@dataclass
class EnergyReport:
    """Energy of a set of operation counts, J, by component (see :data:`COMPONENTS`)."""

    breakdown_J: dict[str, float]
    counts: OpCounts | None = None  #: the counts behind the figures (for redoing the arithmetic)
    n_samples: float | None = None  #: set by :meth:`per_sample`

    @property
    def total_J(self) -> float:
        return float(sum(self.breakdown_J.values()))

    def per_sample(self, n: float) -> "EnergyReport":
        """Everything divided by ``n`` samples (counts become floats)."""
        if not n or n <= 0:
            raise ValueError(f"per_sample needs a positive number of samples, got {n!r}")
        return EnergyReport(
            breakdown_J={k: v / n for k, v in self.breakdown_J.items()},
            counts=self.counts.scaled(1.0 / n) if self.counts is not None else None,
            n_samples=n,
        )

    def top(self, k: int = 3) -> list[tuple[str, float]]:
        """The ``k`` largest components, as (name, joules), largest first."""
        return sorted(self.breakdown_J.items(), key=lambda kv: kv[1], reverse=True)[:k]

    def fractions(self) -> dict[str, float]:
        total = self.total_J
        return {k: (v / total if total > 0 else 0.0) for k, v in self.breakdown_J.items()}

    def __add__(self, other: "EnergyReport") -> "EnergyReport":
        keys = list(dict.fromkeys([*self.breakdown_J, *other.breakdown_J]))
        counts = self.counts + other.counts if self.counts is not None and other.counts is not None else None
        return EnergyReport({k: self.breakdown_J.get(k, 0.0) + other.breakdown_J.get(k, 0.0) for k in keys}, counts)

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"total_J": self.total_J, "breakdown_J": dict(self.breakdown_J)}
        if self.counts is not None:
            out["counts"] = self.counts.as_dict()
        if self.n_samples is not None:
            out["n_samples"] = self.n_samples
        return out


# ---------------------------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------------------------

def _check_bits(name: str, bits: Any) -> int:
    if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= 24:
        raise EnergyConfigError(name, f"must be an integer number of bits in 1..24; got {bits!r}")
    return bits


class EnergyModel:
    """Turns :class:`OpCounts` into an :class:`EnergyReport`.

    ``dac_bits`` / ``adc_bits`` default to the constants' ``*_bits_default``. ``read_voltage_V``,
    ``g_min_S`` and ``g_max_S`` are only used by the tile-level estimates (:meth:`tile_mvm_energy`,
    :meth:`tops_per_W`); simulated runs supply V^2 G through ``OpCounts.read_v2g_W``.
    """

    def __init__(self, constants: EnergyConstants | None = None, dac_bits: int | None = None,
                 adc_bits: int | None = None, read_voltage_V: float = 0.2, g_min_S: float = 0.0,
                 g_max_S: float = 25e-6):
        self.constants = constants if constants is not None else EnergyConstants()
        if not isinstance(self.constants, EnergyConstants):
            raise EnergyConfigError("constants", f"must be an EnergyConstants, got {type(constants).__name__}")
        self.dac_bits = _check_bits("dac_bits", self.constants.dac_bits_default if dac_bits is None else dac_bits)
        self.adc_bits = _check_bits("adc_bits", self.constants.adc_bits_default if adc_bits is None else adc_bits)
        for name, value in (("read_voltage_V", read_voltage_V), ("g_min_S", g_min_S), ("g_max_S", g_max_S)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise EnergyConfigError(name, f"must be a finite number >= 0; got {value!r}")
        self.read_voltage_V, self.g_min_S, self.g_max_S = float(read_voltage_V), float(g_min_S), float(g_max_S)

    @classmethod
    def from_profile(cls, profile: Any, constants: EnergyConstants | None = None) -> "EnergyModel":
        """Model for a DeviceProfile-like object (duck-typed).

        Uses ``profile.physics`` (``read_voltage_V, g_min_S, g_max_S, t_read_s, pulse_energy_J``),
        ``profile.energy`` (EnergyConstants overrides; unknown keys or bad values raise
        :class:`EnergyConfigError` naming the key) and ``profile.dac_bits`` / ``profile.adc_bits``
        (None -> the constants' defaults). The physics' ``t_read_s`` and ``pulse_energy_J`` replace
        the constants' defaults; an ``energy`` override of the same field must agree with them.
        """
        physics = getattr(profile, "physics", None)
        if physics is None:
            raise EnergyConfigError("physics", "the profile has no .physics")
        base = constants if constants is not None else EnergyConstants()
        phys_over: dict[str, Any] = {}
        for name in ("t_read_s", "pulse_energy_J"):
            if not hasattr(physics, name):
                raise EnergyConfigError(f"physics.{name}", "is missing from the profile")
            phys_over[name] = getattr(physics, name)
        energy = dict(getattr(profile, "energy", None) or {})
        for name in phys_over:
            if name in energy and energy[name] != phys_over[name]:
                raise EnergyConfigError(name, f"given twice with different values: physics {phys_over[name]!r}, "
                                              f"energy {energy[name]!r}")
        known = set(EnergyConstants.field_names())
        for key in energy:
            if key not in known:
                raise EnergyConfigError(key, f"unknown energy override in the profile; allowed: {', '.join(sorted(known))}")
        c = base.with_overrides(**phys_over).with_overrides(**energy)

        def phys(name: str) -> Any:
            if not hasattr(physics, name):
                raise EnergyConfigError(f"physics.{name}", "is missing from the profile")
            return getattr(physics, name)

        return cls(c, dac_bits=getattr(profile, "dac_bits", None), adc_bits=getattr(profile, "adc_bits", None),
                   read_voltage_V=phys("read_voltage_V"), g_min_S=phys("g_min_S"), g_max_S=phys("g_max_S"))

    # -- per-operation energies ---------------------------------------------------------------
    @property
    def dac_J(self) -> float:
        """One DAC conversion at this model's ``dac_bits``, J."""
        return self.constants.dac_J(self.dac_bits)

    @property
    def adc_J(self) -> float:
        """One ADC conversion at this model's ``adc_bits``, J."""
        return self.constants.adc_J(self.adc_bits)

    @property
    def mac_J(self) -> float:
        return self.constants.mac_J()

    @property
    def op_J(self) -> float:
        return self.constants.add_J()

    # -- the main entry point ---------------------------------------------------------------------
    def energy(self, counts: OpCounts) -> EnergyReport:
        """Energy of ``counts`` with the breakdown of :data:`COMPONENTS`."""
        c = self.constants
        b = {
            "dac": counts.dac_conversions * self.dac_J,
            "adc": counts.adc_conversions * self.adc_J,
            "backward_dac": counts.backward_dac_conversions * self.dac_J,
            "backward_adc": counts.backward_adc_conversions * self.adc_J,
            "array_read": c.t_read_s * counts.read_v2g_W,
            "programming": counts.update_pulses * c.pulse_energy_J,
            "digital_mac": counts.digital_macs * self.mac_J,
            "digital_ops": (counts.digital_ops * self.op_J + counts.digital_mults * self.constants.mult_J()
                            + counts.digital_special_ops * self.constants.special_J()),
            "sram": counts.sram_bytes * c.sram_J_per_byte,
            "dram": counts.dram_bytes * c.dram_J_per_byte,
        }
        return EnergyReport({k: float(v) for k, v in b.items()}, counts=counts.copy())

    __call__ = energy

    # -- tile-level estimates ------------------------------------------------------------------------
    def tile_mvm_counts(self, rows: int, cols: int, *, devices_per_weight: int = 2,
                        mean_g_S: float | None = None, input_activity: float = 0.5,
                        digital_macs_per_output: int = 0, digital_ops_per_output: int = 0,
                        sram_bytes_per_value: int | None = None, phases: int = 1) -> OpCounts:
        """Operation counts of one analog MVM on a ``rows x cols`` tile, without a simulation.

        ``mean_g_S``: mean conductance of a read device (default: ``g_min + 0.25 (g_max - g_min)``,
        i.e. one device of a pair at a mean |w|/w_max of 0.5 and the other at g_min; an assumption).
        ``input_activity``: mean of V_i^2 / V_read^2 over rows for amplitude-coded inputs, or the mean
        duty cycle for pulse-width-coded inputs (0.5: uniform inputs, PWM). ``phases``: full reads
        (DAC, array, ADC) per MVM. ``sram_bytes_per_value``: if given, the input vector is read from
        and the output vector written to SRAM at this width.
        """
        for name, v in (("rows", rows), ("cols", cols), ("devices_per_weight", devices_per_weight), ("phases", phases)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        g = self.g_min_S + 0.25 * (self.g_max_S - self.g_min_S) if mean_g_S is None else float(mean_g_S)
        cells = rows * cols * devices_per_weight
        sram = 0 if sram_bytes_per_value is None else (rows + cols) * sram_bytes_per_value
        return OpCounts(
            mvms=phases, dac_conversions=rows * phases, adc_conversions=cols * phases,
            device_reads=cells * phases,
            read_v2g_W=phases * cells * self.read_voltage_V**2 * g * input_activity,
            digital_macs=cols * digital_macs_per_output, digital_ops=cols * digital_ops_per_output,
            sram_bytes=sram,
        )

    def tile_mvm_energy(self, rows: int, cols: int, **kwargs: Any) -> EnergyReport:
        """Energy of one analog MVM on a ``rows x cols`` tile (see :meth:`tile_mvm_counts`)."""
        return self.energy(self.tile_mvm_counts(rows, cols, **kwargs))

    def tops_per_W(self, rows: int, cols: int, **kwargs: Any) -> float:
        """Energy efficiency of one MVM, counting 2 operations per multiply-accumulate, TOPS/W."""
        return 2.0 * rows * cols / self.tile_mvm_energy(rows, cols, **kwargs).total_J / 1e12

    def as_dict(self) -> dict[str, Any]:
        """JSON-serialisable description (for results files)."""
        return {
            "constants": self.constants.as_dict(), "dac_bits": self.dac_bits, "adc_bits": self.adc_bits,
            "dac_J": self.dac_J, "adc_J": self.adc_J, "digital_mac_J": self.mac_J, "digital_op_J": self.op_J,
            "digital_mult_J": self.constants.mult_J(), "digital_special_op_J": self.constants.special_J(),
            "sram_J_per_byte": self.constants.sram_J_per_byte,
            "read_voltage_V": self.read_voltage_V, "g_min_S": self.g_min_S, "g_max_S": self.g_max_S,
        }
