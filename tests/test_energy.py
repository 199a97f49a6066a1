"""Tests of analogff.energy: hand-computed energies, validation, calibration and sanity bounds."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest

from analogff.energy import (
    COMPONENTS,
    MURMANN_POINTS,
    WALDEN_POINTS,
    EnergyConfigError,
    EnergyConstants,
    EnergyModel,
    EnergyReport,
    OpCounts,
)


def approx(x, rel=1e-12):
    return pytest.approx(x, rel=rel, abs=0.0)


# -- hand-computed energies ------------------------------------------------------------------------

def test_energy_of_known_counts_by_hand():
    c = EnergyConstants(t_read_s=100e-9, pulse_energy_J=2e-12)
    m = EnergyModel(c, dac_bits=4, adc_bits=8)
    counts = OpCounts(mvms=3, dac_conversions=10, adc_conversions=20, backward_dac_conversions=5,
                      backward_adc_conversions=7, read_v2g_W=2e-3, update_pulses=1000, digital_macs=100,
                      digital_ops=50, sram_bytes=64, dram_bytes=8)
    dac = 1.95e-15 * 2**4
    e0, k = MURMANN_POINTS["median"]
    adc = e0 + k * 4**8
    want = {
        "dac": 10 * dac, "adc": 20 * adc, "backward_dac": 5 * dac, "backward_adc": 7 * adc,
        "array_read": 100e-9 * 2e-3, "programming": 1000 * 2e-12,
        "digital_mac": 100 * (3.7e-12 + 0.9e-12), "digital_ops": 50 * 0.9e-12,
        "sram": 64 * 100e-12 / 8, "dram": 8 * 1.3e-9 / 8,  # 1 MiB SRAM: Horowitz's 1 MB read
    }
    r = m.energy(counts)
    assert set(r.breakdown_J) == set(COMPONENTS)
    for name, joules in want.items():
        assert r.breakdown_J[name] == approx(joules), name
    assert r.total_J == approx(sum(want.values()))
    # the median-point 8-bit ADC is the survey's ENOB 7-9 median, 38.6 pJ, by construction
    assert adc == approx(38.6e-12, rel=1e-9)


def test_sram_is_priced_by_its_capacity():
    """Horowitz's 64-bit reads: 8 KB 10 pJ, 32 KB 20 pJ, 1 MB 100 pJ; linear in log2(capacity) between."""
    from analogff.energy import sram_J_per_byte_for

    assert sram_J_per_byte_for(8 << 10) == approx(10e-12 / 8)
    assert sram_J_per_byte_for(32 << 10) == approx(20e-12 / 8)
    assert sram_J_per_byte_for(1 << 20) == approx(100e-12 / 8)
    assert sram_J_per_byte_for(128 << 10) == approx((20e-12 + 80e-12 * 2 / 5) / 8)  # 2 of 5 doublings
    assert sram_J_per_byte_for(1 << 10) == approx(10e-12 / 8)  # clamped below 8 KB
    assert sram_J_per_byte_for(2 << 20) == approx(116e-12 / 8)  # +16 pJ per doubling above 1 MB (stated)
    c = EnergyConstants()
    assert c.sram_capacity_bytes == 1 << 20 and c.sram_J_per_byte == approx(100e-12 / 8)
    small = c.with_overrides(sram_capacity_bytes=32 << 10)
    assert small.sram_model == "horowitz" and small.sram_J_per_byte == approx(20e-12 / 8)
    own = c.with_overrides(sram_J_per_byte=1e-12)
    assert own.sram_model == "custom" and own.sram_J_per_byte == 1e-12
    with pytest.raises(EnergyConfigError, match="sram_J_per_byte"):
        EnergyConstants(sram_J_per_byte=1e-12)  # a price that contradicts the Horowitz capacity
    with pytest.raises(EnergyConfigError, match="sram_capacity_bytes"):
        EnergyConstants().with_overrides(sram_capacity_bytes=0)


def test_element_wise_ops_are_priced_by_kind():
    m = EnergyModel()
    r = m.energy(OpCounts(digital_ops=10, digital_mults=10, digital_special_ops=10))
    want = 10 * (0.9e-12 + 3.7e-12 + 7.1 * 3.7e-12)
    assert r.breakdown_J["digital_ops"] == approx(want)
    assert m.constants.special_J() == approx(26.27e-12)  # the measured fp32 divide (Front. Neurol. 2022)
    fp16 = EnergyModel(EnergyConstants(digital_precision="fp16"))
    assert fp16.energy(OpCounts(digital_special_ops=1)).total_J == approx(7.1 * 1.1e-12)


def test_ff_like_counts_have_zero_backward_conversion_energy_and_bp_like_do_not():
    m = EnergyModel()
    ff = OpCounts(mvms=2, dac_conversions=2 * 784, adc_conversions=2 * 500, read_v2g_W=1e-3, update_pulses=100)
    bp = ff + OpCounts(backward_mvms=1, backward_dac_conversions=500, backward_adc_conversions=784)
    r_ff, r_bp = m.energy(ff), m.energy(bp)
    assert r_ff.breakdown_J["backward_adc"] == 0.0 and r_ff.breakdown_J["backward_dac"] == 0.0
    assert r_bp.breakdown_J["backward_adc"] > 0 and r_bp.breakdown_J["backward_dac"] > 0
    assert r_bp.breakdown_J["backward_adc"] == approx(784 * m.adc_J)
    assert r_bp.total_J > r_ff.total_J


@pytest.mark.parametrize("point", ["min", "p10", "median"])
def test_doubling_adc_bits_follows_the_cited_models(point):
    walden = EnergyConstants.at_adc_point(point, adc_model="walden")
    # Walden: E = FOM * 2^bits  ->  E(2b) / E(b) = 2^b exactly
    for b in (4, 5, 6):
        assert walden.adc_J(2 * b) / walden.adc_J(b) == approx(2.0**b)
    assert walden.adc_J(8) == approx(WALDEN_POINTS[point] * 256)
    # Murmann survey envelope: E = E0 + k 4^bits
    murmann = EnergyConstants.at_adc_point(point, adc_model="murmann")
    e0, k = MURMANN_POINTS[point]
    for b in (4, 5, 6):
        assert murmann.adc_J(2 * b) / murmann.adc_J(b) == approx((e0 + k * 4.0 ** (2 * b)) / (e0 + k * 4.0**b))
        assert murmann.adc_J(2 * b) > murmann.adc_J(b)
    # model through a whole EnergyModel: the adc component scales the same way
    counts = OpCounts(adc_conversions=1000)
    r4 = EnergyModel(murmann, adc_bits=4).energy(counts).breakdown_J["adc"]
    r8 = EnergyModel(murmann, adc_bits=8).energy(counts).breakdown_J["adc"]
    assert r8 / r4 == approx((e0 + k * 4.0**8) / (e0 + k * 4.0**4))


def test_survey_points_reproduce_the_survey_statistics():
    # the p10 / median curves pass through the ENOB 5-7 (at 6) and ENOB 7-9 (at 8) bin statistics
    for point, (at6, at8) in {"p10": (1.5789474e-12, 2.58e-12), "median": (8.8333333e-12, 38.6e-12)}.items():
        c = EnergyConstants.at_adc_point(point)
        assert c.adc_J(6) == approx(at6, rel=1e-9) and c.adc_J(8) == approx(at8, rel=1e-9)
    # ordering of the points
    for b in (4, 8, 10):
        e = [EnergyConstants.at_adc_point(p).adc_J(b) for p in ("min", "p10", "median")]
        assert e[0] < e[1] < e[2]


def test_dac_energy_by_bits_matches_isaac_table():
    c = EnergyConstants()
    for bits, joules in {1: 3.9e-15, 4: 31.2e-15, 6: 124.8e-15}.items():
        assert c.dac_J(bits) == approx(joules, rel=1e-9)
    assert c.dac_J(4) == pytest.approx(31e-15, rel=0.01)
    assert c.dac_J(6) == pytest.approx(125e-15, rel=0.01)
    assert c.dac_J(8) / c.dac_J(7) == approx(2.0)
    counts = OpCounts(dac_conversions=3)
    assert EnergyModel(c, dac_bits=6).energy(counts).breakdown_J["dac"] == approx(3 * 124.8e-15, rel=1e-9)


def test_array_read_is_t_v2_g_for_a_hand_case():
    # energy.md example: 0.2 V, 25 uS, 128 ns -> 0.128 pJ per cell
    v, g, t = 0.2, 25e-6, 128e-9
    m = EnergyModel(EnergyConstants(t_read_s=t))
    r = m.energy(OpCounts(device_reads=1, read_v2g_W=v**2 * g))
    assert r.breakdown_J["array_read"] == approx(v**2 * g * t)
    assert r.breakdown_J["array_read"] == approx(0.128e-12, rel=1e-9)
    # MNSIM default: 0.5 V, 30 kOhm, 3.16 ns -> ~26 fJ
    m2 = EnergyModel(EnergyConstants(t_read_s=3.16e-9))
    assert m2.energy(OpCounts(read_v2g_W=0.5**2 / 30e3)).total_J == pytest.approx(26e-15, rel=0.02)


def test_programming_energy_is_pulses_times_pulse_energy():
    m = EnergyModel(EnergyConstants(pulse_energy_J=0.675e-12))
    assert m.energy(OpCounts(update_pulses=4000)).breakdown_J["programming"] == approx(4000 * 0.675e-12)


def test_digital_precision_selects_horowitz_row():
    counts = OpCounts(digital_macs=10, digital_ops=10)
    for prec, (add, mult) in {"fp32": (0.9e-12, 3.7e-12), "fp16": (0.4e-12, 1.1e-12),
                              "int8": (0.03e-12, 0.2e-12), "int32": (0.1e-12, 3.1e-12)}.items():
        r = EnergyModel(EnergyConstants(digital_precision=prec)).energy(counts)
        assert r.breakdown_J["digital_mac"] == approx(10 * (add + mult))
        assert r.breakdown_J["digital_ops"] == approx(10 * add)


# -- reports ----------------------------------------------------------------------------------------

def test_report_helpers():
    m = EnergyModel()
    counts = OpCounts(adc_conversions=10, dram_bytes=100, sram_bytes=1)
    r = m.energy(counts)
    per = r.per_sample(10)
    assert per.total_J == approx(r.total_J / 10)
    assert per.counts.adc_conversions == 1.0
    top = r.top(2)
    assert [name for name, _ in top] == sorted(r.breakdown_J, key=r.breakdown_J.get, reverse=True)[:2]
    assert top[0][1] >= top[1][1]
    d = r.as_dict()
    assert d["total_J"] == approx(r.total_J) and d["counts"]["adc_conversions"] == 10
    assert sum(r.fractions().values()) == pytest.approx(1.0)
    assert (r + r).total_J == approx(2 * r.total_J)
    with pytest.raises(ValueError):
        r.per_sample(0)
    # the report keeps a snapshot: later changes to the counts do not alter it
    counts.adc_conversions = 999
    assert r.counts.adc_conversions == 10


def test_tile_helpers():
    m = EnergyModel(EnergyConstants(t_read_s=100e-9), dac_bits=8, adc_bits=8, read_voltage_V=0.2, g_min_S=0.0,
                    g_max_S=20e-6)
    counts = m.tile_mvm_counts(128, 64, mean_g_S=10e-6, input_activity=1.0)
    assert (counts.dac_conversions, counts.adc_conversions, counts.device_reads) == (128, 64, 128 * 64 * 2)
    assert counts.read_v2g_W == approx(128 * 64 * 2 * 0.04 * 10e-6)
    e = m.tile_mvm_energy(128, 64, mean_g_S=10e-6, input_activity=1.0)
    assert m.tops_per_W(128, 64, mean_g_S=10e-6, input_activity=1.0) == approx(2 * 128 * 64 / e.total_J / 1e12)


# -- validation ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("field,value,fragment", [
    ("t_read_s", -1e-9, ">= 0"),
    ("pulse_energy_J", float("nan"), "finite"),
    ("sram_J_per_byte", float("inf"), "finite"),
    ("dram_J_per_byte", None, "missing"),
    ("fp32_add_J", "0.9 pJ", "number"),
    ("dac_J_per_level", True, "number"),
    ("adc_model", "flash", "walden"),
    ("adc_point", "best", "median"),
    ("digital_precision", "fp64", "fp32"),
    ("adc_bits_default", 8.5, "integer"),
    ("dac_bits_default", 0, "1..24"),
])
def test_bad_constants_raise_naming_the_field(field, value, fragment):
    with pytest.raises(EnergyConfigError) as info:
        EnergyConstants(**{field: value})
    assert field in str(info.value) and fragment in str(info.value)
    assert isinstance(info.value, ValueError) and info.value.field_name == field


def test_missing_constant_in_a_full_dict_raises():
    full = EnergyConstants().as_dict()
    assert EnergyConstants.from_dict(full, partial=False) == EnergyConstants()
    del full["sram_J_per_byte"]
    with pytest.raises(EnergyConfigError, match="sram_J_per_byte.*missing"):
        EnergyConstants.from_dict(full, partial=False)


def test_unknown_override_key_raises():
    with pytest.raises(EnergyConfigError, match="adc_energy_J.*unknown"):
        EnergyConstants().with_overrides(adc_energy_J=1e-12)


def test_adc_point_consistency():
    with pytest.raises(EnergyConfigError, match="custom"):
        EnergyConstants(adc_murmann_E0_J=1e-12)  # numbers that are not the named (default) point
    c = EnergyConstants().with_overrides(adc_murmann_E0_J=1e-12)
    assert c.adc_point == "custom" and c.adc_murmann_E0_J == 1e-12
    p = EnergyConstants().with_overrides(adc_point="p10")
    assert (p.adc_murmann_E0_J, p.adc_murmann_k_J) == MURMANN_POINTS["p10"]


def _profile(energy=None, dac_bits=7, adc_bits=9, **physics):
    phys = dict(read_voltage_V=0.2, g_min_S=0.0, g_max_S=25e-6, t_read_s=128e-9, pulse_energy_J=2.5e-12)
    phys.update(physics)
    return SimpleNamespace(physics=SimpleNamespace(**phys), energy=energy or {}, dac_bits=dac_bits,
                           adc_bits=adc_bits)


def test_from_profile_uses_physics_bits_and_overrides():
    m = EnergyModel.from_profile(_profile({"sram_J_per_byte": 1e-12}, t_read_s=50e-9, pulse_energy_J=1e-15))
    assert (m.dac_bits, m.adc_bits) == (7, 9)
    assert m.constants.t_read_s == 50e-9 and m.constants.pulse_energy_J == 1e-15
    assert m.constants.sram_J_per_byte == 1e-12
    assert m.g_max_S == 25e-6 and m.read_voltage_V == 0.2
    r = m.energy(OpCounts(read_v2g_W=1.0, update_pulses=2))
    assert r.breakdown_J["array_read"] == approx(50e-9) and r.breakdown_J["programming"] == approx(2e-15)
    # unquantised periphery (None bits) falls back to the defaults
    m2 = EnergyModel.from_profile(_profile(dac_bits=None, adc_bits=None))
    assert (m2.dac_bits, m2.adc_bits) == (8, 8)


def test_from_profile_errors_name_the_key():
    with pytest.raises(EnergyConfigError, match="adc_fom"):
        EnergyModel.from_profile(_profile({"adc_fom": 1e-15}))
    with pytest.raises(EnergyConfigError, match="dram_J_per_byte"):
        EnergyModel.from_profile(_profile({"dram_J_per_byte": -1.0}))
    with pytest.raises(EnergyConfigError, match="t_read_s"):
        EnergyModel.from_profile(_profile({"t_read_s": 1e-9}))  # conflicts with physics
    with pytest.raises(EnergyConfigError, match="adc_bits"):
        EnergyModel.from_profile(_profile(adc_bits=0))
    with pytest.raises(EnergyConfigError, match="physics"):
        EnergyModel.from_profile(SimpleNamespace(energy={}))


def test_model_rejects_bad_bits_and_constants():
    with pytest.raises(EnergyConfigError, match="dac_bits"):
        EnergyModel(dac_bits=2.5)
    with pytest.raises(EnergyConfigError, match="constants"):
        EnergyModel(constants={"t_read_s": 1e-9})


def test_every_constant_has_a_unit_in_its_name():
    units = ("_J", "_s", "_V", "_S", "_W", "_J_per_byte", "_J_per_step", "_J_per_level", "_bytes", "_in_mults")
    for name in EnergyConstants.field_names():
        if name in ("adc_model", "adc_point", "digital_precision", "sram_model") or name.endswith("_bits_default"):
            continue
        assert any(name.endswith(u) for u in units), name
    assert math.isclose(EnergyConstants().dac_J_per_level, 1.95e-15)


def test_energy_report_is_a_dataclass_with_total():
    r = EnergyReport({"adc": 1.0, "dac": 2.0})
    assert r.total_J == 3.0 and r.top(1) == [("dac", 2.0)]
