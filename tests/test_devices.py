"""Device profiles: every shipped profile loads; broken profiles fail with one clear error."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import aihwkit.simulator.presets as presets
from analogff.devices import (
    PRESETS, DeviceProfile, DeviceProfileError, PhysicalParams, list_devices, load_device,
    profile_from_dict,
)

DEVICES = Path(__file__).resolve().parents[1] / "devices"
PROFILES = list_devices(DEVICES)
REQUIRED = {"reram_es", "reram_sb", "pcm", "ecram", "ecram_mo", "capacitor", "idealized", "gokmen_vlasov"}

VALID = {
    "name": "t",
    "aihwkit": {"preset": "ReRamSBPreset"},
    "physics": {"read_voltage_V": 0.2, "g_min_S": 1e-6, "g_max_S": 25e-6, "t_read_s": 1e-7,
                "pulse_energy_J": 1e-12},
}


def test_required_profiles_exist_and_a_compound_variant():
    names = {p.stem for p in PROFILES}
    assert REQUIRED <= names
    presets_used = {load_device(p).preset for p in PROFILES}
    assert any(n.startswith(("MixedPrecision", "TikiTaka", "TTv2")) for n in presets_used)


@pytest.mark.parametrize("path", PROFILES, ids=lambda p: p.stem)
def test_every_profile_loads(path):
    dev = load_device(path)
    assert dev.name == path.stem
    config = dev.rpu_config()
    assert isinstance(config, getattr(presets, dev.preset))
    assert dev.dac_bits == 7 and dev.adc_bits == 9  # the presets' periphery, unless overridden
    assert dev.physics.g_max_S > dev.physics.g_min_S >= 0
    w_min, w_max = dev.weight_range()
    assert w_min < 0 < w_max
    d = dev.to_dict()
    assert d["preset"] == dev.preset and d["physics"]["g_max_S"] == dev.physics.g_max_S


def test_override_changes_preset_field_and_adc_bits():
    data = copy.deepcopy(VALID)
    data["aihwkit"]["overrides"] = {"forward.out_res": 1 / 254, "device": {"dw_min": 0.01},
                                    "forward.bound_management": "none"}
    dev = profile_from_dict(data)
    cfg = dev.rpu_config()
    assert dev.adc_bits == 8
    assert cfg.device.dw_min == 0.01
    assert cfg.forward.bound_management.name == "NONE"
    assert PRESETS["ReRamSBPreset"]().device.dw_min != 0.01  # the preset itself is untouched


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "broken.toml"
    p.write_text(text)
    return p


def toml_of(data: dict) -> str:
    lines = [f'name = "{data["name"]}"', "[aihwkit]", f'preset = "{data["aihwkit"]["preset"]}"', "[physics]"]
    lines += [f"{k} = {v!r}" for k, v in data["physics"].items()]
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize(
    "mutate, field, words",
    [
        (lambda d: d["aihwkit"].update(preset="NoSuchPreset"), "aihwkit.preset", "ReRamSBPreset"),
        (lambda d: d["aihwkit"].update(overrides={"device.no_such_field": 1.0}), "no_such_field", "dw_min"),
        (lambda d: d["aihwkit"].update(overrides={"forward.out_res": "high"}), "forward.out_res", "number"),
        (lambda d: d["aihwkit"].update(overrides={"forward.bound_management": "SOMETIMES"}),
         "bound_management", "ITERATIVE"),
        (lambda d: d["physics"].update(g_min_S=-1e-6), "physics.g_min_S", ">= 0"),
        (lambda d: d["physics"].update(g_min_S=1e-3), "physics.g_min_S", "smaller than g_max_S"),
        (lambda d: d["physics"].update(t_read_s=float("nan")), "physics.t_read_s", "finite"),
        (lambda d: d["physics"].pop("pulse_energy_J"), "physics.pulse_energy_J", "missing"),
        (lambda d: d["physics"].update(volts=1.0), "physics.volts", "allowed"),
        (lambda d: d.update(colour="red"), "colour", "allowed"),
        (lambda d: d.update(energy={"dram_J_per_byte": -1.0}), "energy.dram_J_per_byte", "dram_J_per_byte"),
        (lambda d: d.update(energy={"adc_J": 1.0}), "energy.adc_J", "unknown"),
        (lambda d: d.update(inference={"noise_model": "Magic"}), "inference.noise_model", "PCMLikeNoiseModel"),
        (lambda d: d.update(mapping={"init_range": 1.5}), "mapping.init_range", "(0, 1]"),
        (lambda d: d.update(mapping={"init_range": "wide"}), "mapping.init_range", "(0, 1]"),
        (lambda d: d.update(mapping={"omega": 0.5}), "mapping.omega", "init_range"),
    ],
)
def test_broken_profile_names_field_and_allowed(mutate, field, words):
    data = copy.deepcopy(VALID)
    mutate(data)
    with pytest.raises(DeviceProfileError) as err:
        profile_from_dict(data, source="devices/broken.toml")
    msg = str(err.value)
    assert "devices/broken.toml" in msg and field in msg and words in msg


def test_malformed_toml_and_missing_file(tmp_path):
    with pytest.raises(DeviceProfileError, match=r"broken.toml.*not valid TOML"):
        load_device(write(tmp_path, "name = [unclosed\n"))
    with pytest.raises(DeviceProfileError, match=r"nowhere.toml.*no such file"):
        load_device(tmp_path / "nowhere.toml")


def test_toml_round_trip(tmp_path):
    path = tmp_path / f"{VALID['name']}.toml"  # the profile's name is its file name
    path.write_text(toml_of(VALID))
    dev = load_device(path)
    assert dev.physics == PhysicalParams(**VALID["physics"])


def test_name_must_match_file_name(tmp_path):
    path = tmp_path / "other.toml"
    path.write_text(toml_of(VALID))
    with pytest.raises(DeviceProfileError) as err:
        load_device(path)
    msg = str(err.value)
    assert "other.toml" in msg and "'name'" in msg and "must match the file name" in msg
    assert len(msg.splitlines()) == 1


def test_profiles_by_name_and_shipped_copy():
    from analogff.devices import resolve_device, shipped_profiles

    shipped = shipped_profiles()
    assert set(shipped) == {p.stem for p in PROFILES}  # the package carries devices/
    for name, path in shipped.items():
        assert path.read_bytes() == (DEVICES / f"{name}.toml").read_bytes()
    assert load_device("pcm").name == "pcm" and load_device("pcm").preset == load_device(DEVICES / "pcm.toml").preset
    assert resolve_device(DEVICES / "ecram.toml") == DEVICES / "ecram.toml"  # a path still works


def test_profile_lookup_outside_checkout(tmp_path, monkeypatch):
    from analogff.devices import resolve_device, shipped_profiles

    monkeypatch.chdir(tmp_path)  # no devices/ here: the old default path falls back to the shipped file
    assert resolve_device("devices/ecram.toml") == shipped_profiles()["ecram"]


@pytest.mark.parametrize("spec, words", [("pcmm", "unknown profile name"), ("devices/nope.toml", "no such file"),
                                         ("/nowhere/x.toml", "no such file")])
def test_unknown_profile_name_lists_shipped(spec, words):
    with pytest.raises(DeviceProfileError) as err:
        load_device(spec)
    msg = str(err.value)
    assert words in msg and "reram_sb" in msg and "ecram_mo" in msg and len(msg.splitlines()) == 1


numbers = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True, width=64), st.integers(-10, 10),
    st.text(max_size=3), st.booleans(),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(physics=st.fixed_dictionaries({k: numbers for k in VALID["physics"]}))
def test_random_physics_loads_or_fails_cleanly(physics):
    data = copy.deepcopy(VALID)
    data["physics"] = physics
    try:
        dev = profile_from_dict(data, source="x.toml")
    except DeviceProfileError as err:
        assert "x.toml" in str(err) and "physics." in str(err)
        return
    p = dev.physics
    assert all(math.isfinite(v) and v >= 0 for v in vars(p).values())
    assert p.g_min_S < p.g_max_S and p.read_voltage_V > 0 and p.t_read_s > 0


field_paths = st.lists(st.sampled_from(["device", "forward", "update", "dw_min", "out_res", "inp_res",
                                        "desired_bl", "w_max", "zzz", "out_noise"]), min_size=1, max_size=3)


@settings(max_examples=150, deadline=None)
@given(path=field_paths, value=numbers)
def test_random_overrides_load_or_fail_cleanly(path, value):
    data = copy.deepcopy(VALID)
    data["aihwkit"]["overrides"] = {".".join(path): value}
    try:
        dev = profile_from_dict(data, source="x.toml")
    except DeviceProfileError as err:
        assert "x.toml" in str(err) and "aihwkit.overrides" in str(err)
        return
    cfg = dev.rpu_config()
    obj = cfg
    for part in path[:-1]:
        obj = getattr(obj, part)
    assert getattr(obj, path[-1]) == value or (isinstance(value, float) and math.isclose(getattr(obj, path[-1]), value))


def test_mapping_init_range_sets_the_crossbar_scale():
    """[mapping] init_range: the initial weights reach that fraction of the device bound."""
    from analogff.crossbar import Crossbar

    data = copy.deepcopy(VALID)
    data["aihwkit"]["preset"] = "IdealizedPreset"  # no write noise: the programmed weights are exact
    narrow = profile_from_dict(data)
    data["mapping"] = {"init_range": 0.6}
    wide = profile_from_dict(data)
    assert narrow.init_range == 0.3 and wide.init_range == 0.6 and wide.to_dict()["init_range"] == 0.6
    a = Crossbar(50, 10, device=narrow, engine="torch")
    b = Crossbar(50, 10, device=wide, engine="torch")
    assert a.w_scale == pytest.approx(2 * b.w_scale)  # same logical weights on twice the device range
    wa, wb = a.get_weights(), b.get_weights()
    same = (wa - wb).abs() < 1e-5
    assert same.float().mean() > 0.9  # the rest: clipped by a device whose bound varies (w_max_dtod)
    assert (wb.abs() <= wa.abs() + 1e-6).all()
    assert Crossbar(50, 10, device=wide, engine="torch", init_range=0.3).w_scale == pytest.approx(a.w_scale)


def test_override_beyond_the_energy_models_adc_range_blames_the_override():
    """A tiny forward.out_res (hundreds of ADC bits) is an override the energy model cannot price: the
    one-line error names aihwkit.overrides (it said energy.(energy), found by the fuzz test)."""
    data = copy.deepcopy(VALID)
    data["aihwkit"]["overrides"] = {"forward.out_res": 1e-125}
    with pytest.raises(DeviceProfileError, match=r"x\.toml.*aihwkit\.overrides"):
        profile_from_dict(data, source="x.toml")


def _fresh(code: str) -> str:
    """Run ``code`` in a fresh interpreter (this one has imported scipy long ago); its stdout."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_aihwkit_import_defers_scipy_optimize_and_its_function_still_works():
    out = _fresh(
        "import sys\n"
        "import analogff.devices\n"
        "print('after import', 'scipy.optimize' in sys.modules)\n"
        "from aihwkit.simulator.digital_low_precision import range_estimators as r\n"
        "print('minimum', round(float(r.minimize_scalar(lambda v: (v - 1.5) ** 2).x), 4))\n"
        "import scipy.optimize\n"
        "print('real', type(scipy.optimize).__name__, scipy.optimize.minimize_scalar.__module__)\n")
    assert "after import False" in out  # the deferral: fails when aihwkit's import pulls scipy.optimize
    assert "minimum 1.5" in out  # aihwkit's binding calls the real function
    assert "real module scipy.optimize" in out  # afterwards the module is the real one


def test_deferred_module_binds_lazy_names_and_imports_the_rest_at_once():
    out = _fresh(
        "import sys\n"
        "from analogff.devices import _DeferredModule\n"
        "stand_in = _DeferredModule('colorsys', ('rgb_to_hsv',))\n"
        "sys.modules['colorsys'] = stand_in\n"
        "from colorsys import rgb_to_hsv\n"
        "print('lazy bound', sys.modules['colorsys'] is stand_in)\n"
        "from colorsys import hls_to_rgb\n"
        "print('other name imports', sys.modules['colorsys'] is not stand_in, hls_to_rgb.__module__)\n"
        "print('value', rgb_to_hsv(1.0, 0.0, 0.0))\n")
    assert "lazy bound True" in out
    assert "other name imports True colorsys" in out
    assert "value (0.0, 1.0, 1.0)" in out
