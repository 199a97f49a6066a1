"""Device profiles: an aihwkit preset plus the physical constants of one analog memory technology.

A profile is a TOML file in ``devices/``::

    name = "reram_es"
    description = "ReRAM, exponential-step model fitted to Gong et al. 2018"

    [aihwkit]
    preset = "ReRamESPreset"              # a class in aihwkit.simulator.presets
    [aihwkit.overrides]                   # any dataclass field of the preset, by dotted path
    "forward.out_res" = 0.0019685         # e.g. an 8-bit ADC instead of the preset's 9 bits

    [physics]                             # every constant with its unit and a cited source
    read_voltage_V = 0.2
    g_min_S = 0.0
    g_max_S = 25e-6
    t_read_s = 128e-9
    pulse_energy_J = 2.5e-12

    [inference]                           # optional: conductance noise and drift after programming
    noise_model = "PCMLikeNoiseModel"     # a class in aihwkit.inference (or "none")

    [energy]                              # optional: overrides of analogff.energy.EnergyConstants

The aihwkit preset object is the source of truth for all device and periphery non-idealities; the
profile only names it and overrides fields. :func:`load_device` validates everything and raises one
:class:`DeviceProfileError` naming the file, the field and what is allowed.
"""

from __future__ import annotations

import copy
import dataclasses
import enum
import importlib
import math
import sys
import tomllib
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class _DeferredModule(types.ModuleType):
    """A stand-in for a module that a dependency imports but whose functions a run seldom calls.

    While it sits in ``sys.modules``, ``from <name> import f`` for a name of ``lazy`` binds a thin
    function that imports the real module on its first call and calls the real ``f``; any other
    name imports the real module at once (correct, only not deferred)."""

    def __init__(self, name: str, lazy: tuple[str, ...]):
        super().__init__(name)
        self._lazy = lazy

    def _real(self) -> types.ModuleType:
        if sys.modules.get(self.__name__) is self:
            del sys.modules[self.__name__]
        return importlib.import_module(self.__name__)

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("__"):  # the import system's questions (__path__, ...): a plain module
            raise AttributeError(attr)
        if attr not in self._lazy:
            return getattr(self._real(), attr)
        stand_in = self

        def deferred(*args: Any, **kwargs: Any) -> Any:
            return getattr(stand_in._real(), attr)(*args, **kwargs)

        deferred.__name__ = deferred.__qualname__ = attr
        deferred.__doc__ = f"{self.__name__}.{attr}, imported on its first call"
        return deferred


def _import_aihwkit() -> tuple[types.ModuleType, types.ModuleType]:
    """``aihwkit.simulator.presets`` and ``aihwkit.inference``, with ``scipy.optimize`` deferred.

    aihwkit's rpu configs import its digital low-precision quantisation helpers, whose range
    estimator imports ``scipy.optimize.minimize_scalar`` at import time (about 0.3 s of a fresh
    process here: aihwkit's import through this function 0.16-0.21 s against 0.48 s,
    ``benchmarks/first_step.py``). No analog tile of this project calls
    it; the stand-in imports the real scipy.optimize on its first call, and after this import
    ``import scipy.optimize`` is the real module again."""
    stand_in = None  # already imported (by aihwkit or anyone): nothing left to defer
    if "scipy.optimize" not in sys.modules and "aihwkit.simulator.presets" not in sys.modules:
        stand_in = sys.modules["scipy.optimize"] = _DeferredModule("scipy.optimize", ("minimize_scalar",))
    try:
        return importlib.import_module("aihwkit.simulator.presets"), importlib.import_module("aihwkit.inference")
    finally:
        if stand_in is not None and sys.modules.get("scipy.optimize") is stand_in:
            del sys.modules["scipy.optimize"]


aihwkit_presets, aihwkit_inference = _import_aihwkit()

#: Preset classes a profile may name: every class aihwkit exports from ``simulator.presets``
#: whose name ends in "Preset" and that is a training (pulsed) configuration.
PRESETS: dict[str, type] = {
    name: obj
    for name, obj in vars(aihwkit_presets).items()
    if name.endswith("Preset") and isinstance(obj, type) and dataclasses.is_dataclass(obj)
    and "update" in {f.name for f in dataclasses.fields(obj)}
}

#: Inference noise models a profile may name in ``[inference] noise_model``.
NOISE_MODELS: tuple[str, ...] = (
    "PCMLikeNoiseModel",
    "ReRamWan2022NoiseModel",
    "ReRamCMONoiseModel",
    "HermesNoiseModel",
)

_TOP_KEYS = {"name", "description", "aihwkit", "physics", "inference", "energy", "mapping", "periphery"}


class DeviceProfileError(ValueError):
    """A device profile is malformed. The message names the file, the field and what is allowed."""

    def __init__(self, source: str | Path | None, field_name: str, problem: str):
        where = f"device profile {source}" if source else "device profile"
        super().__init__(f"{where}: field '{field_name}': {problem}")
        self.source, self.field_name, self.problem = source, field_name, problem


@dataclass(frozen=True)
class PhysicalParams:
    """Physical constants of the crossbar built from this device (all SI units)."""

    read_voltage_V: float  #: read voltage applied to a row at full-scale DAC input, V
    g_min_S: float  #: conductance of a device programmed to weight 0 (low state), S
    g_max_S: float  #: conductance of a device at the largest weight magnitude, S
    t_read_s: float  #: integration time of one analog MVM, s
    pulse_energy_J: float  #: energy of one programming pulse on one device, J

    def validate(self, source: str | Path | None = None) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise DeviceProfileError(source, f"physics.{f.name}", f"must be a number, got {value!r}")
            if not math.isfinite(value) or value < 0:
                raise DeviceProfileError(
                    source, f"physics.{f.name}", f"must be a finite number >= 0, got {value!r}"
                )
        for name in ("read_voltage_V", "g_max_S", "t_read_s"):
            if getattr(self, name) <= 0:
                raise DeviceProfileError(source, f"physics.{name}", "must be > 0")
        if self.g_min_S >= self.g_max_S:
            raise DeviceProfileError(
                source, "physics.g_min_S",
                f"must be smaller than g_max_S ({self.g_max_S} S), got {self.g_min_S} S",
            )


@dataclass
class DeviceProfile:
    """One device technology: an aihwkit preset, overrides of its fields, and physical constants."""

    name: str
    preset: str
    physics: PhysicalParams
    description: str = ""
    overrides: dict[str, Any] = field(default_factory=dict)
    noise_model: str | None = None  #: aihwkit inference noise model for drift, or None
    energy: dict[str, float] = field(default_factory=dict)  #: EnergyConstants overrides
    source: str | None = None  #: the TOML file it came from
    #: weight mapping: initial weights reach this fraction of the device's weight bound (sets the
    #: crossbar's digital output scale; [mapping] init_range in the TOML file)
    init_range: float = 0.3
    #: bits of a transfer compound's digital buffer H ([periphery] buffer_bits; None: fp32 as
    #: aihwkit): an analogff extension, fixed point with stochastic rounding (engine/cells/transfer.py)
    buffer_bits: int | None = None

    def __post_init__(self) -> None:
        if self.buffer_bits is not None and (isinstance(self.buffer_bits, bool) or not isinstance(self.buffer_bits, int)
                                             or not 2 <= self.buffer_bits <= 32):
            raise DeviceProfileError(self.source, "periphery.buffer_bits",
                                     f"must be an integer in [2, 32], got {self.buffer_bits!r}")
        if isinstance(self.init_range, bool) or not isinstance(self.init_range, (int, float)) \
                or not 0 < self.init_range <= 1:
            raise DeviceProfileError(self.source, "mapping.init_range",
                                     f"must be a number in (0, 1], got {self.init_range!r}")
        if self.preset not in PRESETS:
            raise DeviceProfileError(
                self.source, "aihwkit.preset",
                f"unknown aihwkit preset {self.preset!r}; allowed: {', '.join(sorted(PRESETS))}",
            )
        if self.noise_model is not None and self.noise_model not in NOISE_MODELS:
            raise DeviceProfileError(
                self.source, "inference.noise_model",
                f"unknown noise model {self.noise_model!r}; allowed: none, {', '.join(NOISE_MODELS)}",
            )
        self.physics.validate(self.source)
        self.rpu_config()  # validates the overrides against the preset's dataclass fields
        from .energy import EnergyModel  # validates [energy] against EnergyConstants

        try:
            EnergyModel.from_profile(self)
        except ValueError as exc:
            key = next((k for k in self.energy if k in str(exc)), None)
            if key is None and self.overrides:  # the overrides made a periphery the energy model cannot price
                raise DeviceProfileError(self.source, "aihwkit.overrides", str(exc)) from None
            raise DeviceProfileError(self.source, f"energy.{key or '(energy)'}", str(exc)) from None

    # -- aihwkit -------------------------------------------------------------------------------
    def rpu_config(self) -> Any:
        """A fresh aihwkit rpu config: the preset with this profile's overrides applied."""
        config = PRESETS[self.preset]()
        for path, value in self.overrides.items():
            _set_field(config, path, value, self.source)
        return config

    def inference_noise_model(self) -> Any | None:
        """The aihwkit inference noise model referred to this profile's g_max (uS), or None."""
        if self.noise_model is None:
            return None
        return getattr(aihwkit_inference, self.noise_model)(g_max=self.physics.g_max_S * 1e6)

    # -- derived quantities --------------------------------------------------------------------
    @property
    def dac_bits(self) -> int | None:
        """Input DAC resolution in bits (sign included), or None for an unquantised input."""
        return _bits(self.rpu_config().forward.inp_res)

    @property
    def adc_bits(self) -> int | None:
        """Output ADC resolution in bits (sign included), or None for an unquantised output."""
        return _bits(self.rpu_config().forward.out_res)

    def weight_range(self) -> tuple[float, float]:
        """Nominal (w_min, w_max) of the device model, in aihwkit's normalised weight units."""
        dev = self.rpu_config().device
        for attr in ("device", "unit_cell_devices"):  # compounds wrap the physical device
            inner = getattr(dev, attr, None)
            if isinstance(inner, list):
                inner = inner[0]
            if inner is not None and hasattr(inner, "w_max"):
                dev = inner
                break
        w_max = float(getattr(dev, "w_max", 1.0))
        w_min = float(getattr(dev, "w_min", -w_max))
        if self.preset.startswith("PCM") or w_min >= 0:  # one-sided pair: G+ and G- both in [0, w_max]
            w_min = -w_max
        return w_min, w_max

    def with_overrides(self, **overrides: Any) -> "DeviceProfile":
        """A copy with more aihwkit overrides (dotted paths with '__' for '.'), e.g. forward__out_res=0."""
        extra = {k.replace("__", "."): v for k, v in overrides.items()}
        return dataclasses.replace(self, overrides={**self.overrides, **extra})

    def to_dict(self) -> dict[str, Any]:
        """Fully resolved, JSON-serialisable description (for results files)."""
        return {
            "name": self.name,
            "description": self.description,
            "source": self.source,
            "preset": self.preset,
            "overrides": {k: (v.name if isinstance(v, enum.Enum) else v) for k, v in self.overrides.items()},
            "physics": dataclasses.asdict(self.physics),
            "noise_model": self.noise_model,
            "energy": dict(self.energy),
            "dac_bits": self.dac_bits,
            "adc_bits": self.adc_bits,
            "weight_range": list(self.weight_range()),
            "init_range": self.init_range,
            "buffer_bits": self.buffer_bits,
            "resolved_rpu_config": str(self.rpu_config()),
        }


def _bits(res: float) -> int | None:
    """aihwkit resolution (1/(2^bits - 2), or <= 0 for none) -> bits."""
    if res is None or res <= 0:
        return None
    return int(round(math.log2(1.0 / res + 2)))


def _set_field(config: Any, path: str, value: Any, source: str | None) -> None:
    """Set a dotted dataclass field of an aihwkit config, checking the name and the type."""
    parts = path.split(".")
    obj = config
    for i, part in enumerate(parts):
        here = ".".join(parts[: i + 1])
        if not dataclasses.is_dataclass(obj):
            raise DeviceProfileError(source, f"aihwkit.overrides.{path}", f"'{'.'.join(parts[:i])}' has no fields")
        names = [f.name for f in dataclasses.fields(obj)]
        if part not in names:
            raise DeviceProfileError(
                source, f"aihwkit.overrides.{path}",
                f"unknown field '{part}' of {type(obj).__name__} at '{here}'; allowed: {', '.join(names)}",
            )
        if i < len(parts) - 1:
            obj = getattr(obj, part)
    current = getattr(obj, parts[-1])
    setattr(obj, parts[-1], _coerce(current, value, path, source))


def _coerce(current: Any, value: Any, path: str, source: str | None) -> Any:
    where = f"aihwkit.overrides.{path}"
    if isinstance(current, enum.Enum):
        if isinstance(value, type(current)):
            return value
        allowed = [m.name for m in type(current)]
        if isinstance(value, str) and value.upper() in allowed:
            return type(current)[value.upper()]
        raise DeviceProfileError(source, where, f"must be one of {', '.join(allowed)}, got {value!r}")
    if isinstance(current, bool):
        if not isinstance(value, bool):
            raise DeviceProfileError(source, where, f"must be true or false, got {value!r}")
        return value
    if isinstance(current, (int, float)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise DeviceProfileError(source, where, f"must be a finite number, got {value!r}")
        return type(current)(value) if isinstance(current, float) or float(value).is_integer() else value
    if dataclasses.is_dataclass(current):
        raise DeviceProfileError(source, where, "is a group of fields; override its fields by dotted path")
    if current is None or isinstance(current, (str, list, tuple)):
        return copy.deepcopy(value)
    raise DeviceProfileError(source, where, f"cannot override a field of type {type(current).__name__}")


#: The profiles shipped with the package: the same files as ``devices/`` of a checkout
#: (``analogff/profiles`` is a link to it there; a wheel carries copies as package data).
PROFILE_DIR = Path(__file__).resolve().parent / "profiles"


def shipped_profiles() -> dict[str, Path]:
    """Name -> file of every profile shipped with the package, sorted by name."""
    return {p.stem: p for p in sorted(PROFILE_DIR.glob("*.toml"))}


def _looks_like_path(spec: str) -> bool:
    return spec.endswith(".toml") or "/" in spec or "\\" in spec or spec.startswith(".")


def resolve_device(spec: str | Path) -> Path:
    """A profile name (``"pcm"``: the shipped ``devices/pcm.toml``) or a path to a TOML file -> the file.

    A relative path ``devices/NAME.toml`` that does not exist here (outside a checkout) falls back to
    the shipped profile NAME. Anything else that does not resolve raises one :class:`DeviceProfileError`
    listing the shipped names."""
    shipped = shipped_profiles()
    names = ", ".join(shipped) or "(none found)"
    if isinstance(spec, Path) or _looks_like_path(str(spec)):
        path = Path(spec)
        if path.is_file():
            return path
        if not path.is_absolute() and path.parent == Path("devices") and path.stem in shipped:
            return shipped[path.stem]
        raise DeviceProfileError(str(spec), "(file)", f"not found (no such file); shipped profiles: {names} "
                                 "(by name), or a path to your own .toml file")
    if spec in shipped:
        return shipped[spec]
    raise DeviceProfileError(repr(spec), "(name)", f"unknown profile name; shipped profiles: {names}, "
                             "or a path to your own .toml file")


def load_device(path: str | Path) -> DeviceProfile:
    """Read and validate a device profile: a shipped profile's name (``"pcm"``) or a TOML file's path
    (see the module docstring for the format). The profile's ``name`` must match its file name."""
    path = resolve_device(path)
    src = str(path)
    try:
        data = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise DeviceProfileError(src, "(syntax)", f"not valid TOML: {exc}") from None
    profile = profile_from_dict(data, source=src)
    if profile.name != path.stem:
        raise DeviceProfileError(src, "name", f"{profile.name!r} must match the file name {path.stem!r} "
                                 f"(rename the file or set name = \"{path.stem}\")")
    return profile


def profile_from_dict(data: dict[str, Any], source: str | None = None) -> DeviceProfile:
    """Build a validated profile from the parsed TOML table (see :func:`load_device`)."""
    unknown = set(data) - _TOP_KEYS
    if unknown:
        raise DeviceProfileError(source, sorted(unknown)[0], f"unknown key; allowed: {', '.join(sorted(_TOP_KEYS))}")

    def table(key: str, required: bool) -> dict[str, Any]:
        value = data.get(key)
        if value is None:
            if required:
                raise DeviceProfileError(source, key, "missing table")
            return {}
        if not isinstance(value, dict):
            raise DeviceProfileError(source, key, f"must be a table, got {value!r}")
        return value

    name = data.get("name")
    if not isinstance(name, str) or not name:
        raise DeviceProfileError(source, "name", "missing or not a non-empty string")
    aih = table("aihwkit", required=True)
    bad = set(aih) - {"preset", "overrides"}
    if bad:
        raise DeviceProfileError(source, f"aihwkit.{sorted(bad)[0]}", "unknown key; allowed: preset, overrides")
    preset = aih.get("preset")
    if not isinstance(preset, str):
        raise DeviceProfileError(source, "aihwkit.preset", f"missing; allowed: {', '.join(sorted(PRESETS))}")
    overrides = aih.get("overrides", {})
    if not isinstance(overrides, dict):
        raise DeviceProfileError(source, "aihwkit.overrides", "must be a table of dotted field paths")
    overrides = _flatten(overrides)

    phys = table("physics", required=True)
    names = [f.name for f in dataclasses.fields(PhysicalParams)]
    for key in phys:
        if key not in names:
            raise DeviceProfileError(source, f"physics.{key}", f"unknown constant; allowed: {', '.join(names)}")
    for key in names:
        if key not in phys:
            raise DeviceProfileError(source, f"physics.{key}", "missing (a number with the unit in its name)")
    physics = PhysicalParams(**phys)

    inference = table("inference", required=False)
    bad = set(inference) - {"noise_model"}
    if bad:
        raise DeviceProfileError(source, f"inference.{sorted(bad)[0]}", "unknown key; allowed: noise_model")
    noise_model = inference.get("noise_model")
    if noise_model is not None and not isinstance(noise_model, str):
        raise DeviceProfileError(source, "inference.noise_model", "must be a string")
    if noise_model in ("none", ""):
        noise_model = None

    mapping = table("mapping", required=False)
    bad = set(mapping) - {"init_range"}
    if bad:
        raise DeviceProfileError(source, f"mapping.{sorted(bad)[0]}", "unknown key; allowed: init_range")

    periphery = table("periphery", required=False)
    bad = set(periphery) - {"buffer_bits"}
    if bad:
        raise DeviceProfileError(source, f"periphery.{sorted(bad)[0]}", "unknown key; allowed: buffer_bits")

    description = data.get("description", "")
    if not isinstance(description, str):
        raise DeviceProfileError(source, "description", "must be a string")
    return DeviceProfile(
        name=name, preset=preset, physics=physics, description=description, overrides=overrides,
        noise_model=noise_model, energy=dict(table("energy", required=False)), source=source,
        **({"init_range": mapping["init_range"]} if "init_range" in mapping else {}),
        **({"buffer_bits": periphery["buffer_bits"]} if "buffer_bits" in periphery else {}),
    )


def _flatten(table: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'forward': {'out_res': x}} and {'forward.out_res': x} both become {'forward.out_res': x}."""
    flat: dict[str, Any] = {}
    for key, value in table.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, path + "."))
        else:
            flat[path] = value
    return flat


def list_devices(directory: str | Path = "devices") -> list[Path]:
    """The profile files in a directory, sorted by name."""
    return sorted(Path(directory).glob("*.toml"))
