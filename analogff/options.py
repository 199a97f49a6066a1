"""The config tree: every option of a run, by key, derived from the config dataclasses.

``ExperimentConfig`` (analogff/experiment.py) holds the run; its ``ff`` field nests ``FFConfig``
(analogff/ff.py). Every dataclass field is an option, keyed ``epochs``, ``ff_lr_analog``,
``ff.loss``, ...; its type, default and help (the field's ``#:`` comment) come from the dataclass,
so a new field is a new flag of ``analogff run``, a new sweep axis and a new column of
results.json's config without further code. Four FF fields are set per method from experiment
fields and are not options of their own: ``lr`` (``ff_lr_analog`` / ``ff_lr_digital``; the key
``ff.lr`` sets both), ``seed``, ``engine`` and ``analog_update``.

    opts = options()                       # key -> Option
    cfg = make_config({"epochs": 1, "ff.loss": "hinton"})   # validated ExperimentConfig
    argv = config_argv(cfg)                # the flags that rebuild cfg: ["--epochs", "1", ...]
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import json
import re
import types
import typing
from dataclasses import dataclass
from typing import Any

#: FFConfig fields taken from experiment fields (the FF key -> the experiment keys it sets)
FF_FROM_EXPERIMENT = {"lr": ("ff_lr_analog", "ff_lr_digital"), "seed": ("seed",), "engine": ("engine",),
                      "analog_update": ("analog_update",)}
#: counts that must be >= 1 (a list: each element)
POSITIVE = {"epochs", "batch_size", "hidden", "train_limit", "test_limit", "adc_bits", "threads"}
#: known choices of experiment fields (FFConfig validates its own in __post_init__)
_NONE_WORDS = {"none", "null", ""}
_BOOL_WORDS = {"true": True, "yes": True, "on": True, "1": True, "false": False, "no": False, "off": False, "0": False}


class OptionError(ValueError):
    """A bad option name or value; the message is one line naming it and what is allowed."""


def load_table_file(path: str, label: str, error: type[Exception], table: str = "a table") -> dict[str, Any]:
    """The table of a TOML (by suffix) or JSON file, or ``error`` with one line naming ``label``
    (e.g. "--config FILE") and what is wrong: no such file, not valid TOML/JSON, not ``table``."""
    import tomllib
    from pathlib import Path

    p = Path(path)
    if not p.is_file():
        raise error(f"{label}: no such file")
    kind = "TOML" if p.suffix == ".toml" else "JSON"
    try:
        data = tomllib.loads(p.read_text()) if kind == "TOML" else json.loads(p.read_text())
    except (tomllib.TOMLDecodeError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise error(f"{label}: not valid {kind}: {str(exc).splitlines()[0] if str(exc) else exc}") from None
    if not isinstance(data, dict):
        raise error(f"{label}: expected {table}")
    return data


def _choices() -> dict[str, tuple[str, ...]]:
    from . import experiment
    from .ff import ANALOG_UPDATES

    return {"dataset": tuple(experiment.DATASETS), "engine": ("torch", "aihwkit"),
            "analog_update": tuple(ANALOG_UPDATES), "predict": tuple(experiment.PREDICTIONS),
            "variant": tuple(experiment.VARIANTS),
            "methods": tuple(experiment.METHODS)}


@dataclass(frozen=True)
class Option:
    key: str  #: "epochs", "ff.loss"
    field: str  #: the dataclass field name
    owner: type  #: ExperimentConfig or FFConfig
    type: Any  #: the resolved type hint
    default: Any
    help: str
    choices: tuple[str, ...] | None = None

    # -- type structure -------------------------------------------------------------------------
    @property
    def optional(self) -> bool:
        return type(None) in typing.get_args(self.type) and _is_union(self.type)

    @property
    def base(self) -> Any:
        """The type without ``| None``."""
        if _is_union(self.type):
            args = [a for a in typing.get_args(self.type) if a is not type(None)]
            return args[0] if len(args) == 1 else self.type
        return self.type

    @property
    def is_list(self) -> bool:
        return typing.get_origin(self.base) in (list, tuple)

    @property
    def element(self) -> Any:
        args = typing.get_args(self.base)
        return args[0] if args else str

    @property
    def flags(self) -> list[str]:
        """``--batch-size``; a nested key has two spellings: ``--ff.loss`` and ``--ff-loss``."""
        dashed = self.key.replace("_", "-")
        return [f"--{dashed}"] if "." not in dashed else [f"--{dashed}", f"--{dashed.replace('.', '-')}"]

    @property
    def metavar(self) -> str:
        if self.choices:
            return "NAME,..." if self.is_list else "{" + ",".join(self.choices) + "}"
        if self.key == "out":
            return "DIR"
        names = {int: "N", float: "X", str: "TEXT", bool: "BOOL"}
        if self.is_list:
            return f"{names.get(self.element, 'V')},..."
        return names.get(self.base, "V")

    # -- values ---------------------------------------------------------------------------------
    def parse(self, text: str) -> Any:
        """A value from command-line text (lists: comma-separated; ``none`` for an optional field)."""
        text = text.strip()
        if self.optional and text.lower() in _NONE_WORDS and not self.is_list:
            return None
        if self.is_list:
            items = [t.strip() for t in text.split(",") if t.strip()]
            if self.element is int:  # "500x8": eight layers of 500 (a deep net in one token)
                items = [w for t in items for w in _repeat(t, self.key)]
            return self.check([self._scalar(t, self.element) for t in items])
        return self.check(self._scalar(text, self.base))

    def _scalar(self, text: str, kind: Any) -> Any:
        try:
            if kind is bool:
                return _BOOL_WORDS[text.lower()]
            if kind is int:
                return int(text)
            if kind is float:
                value = float(text)
                return value
            return text
        except (KeyError, ValueError):
            what = {bool: "true or false", int: "an integer", float: "a number"}.get(kind, "a value")
            raise OptionError(f"{self.key}: expected {what}, got {text!r}") from None

    def check(self, value: Any) -> Any:
        """Check the type of a value (from the command line, a grid file or a recipe); returns it,
        lists normalised (a tuple field gets a tuple)."""
        if value is None:
            if self.optional:
                return None
            raise OptionError(f"{self.key}: may not be none")
        if self.is_list:
            if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
                value = [value]
            out = [self._check_scalar(v, self.element) for v in value]
            if typing.get_origin(self.base) is tuple:
                n = len(typing.get_args(self.base))
                if len(out) != n:
                    raise OptionError(f"{self.key}: expected {n} values, got {len(out)}")
                return tuple(out)
            if not out and self.key in ("hidden", "methods"):
                raise OptionError(f"{self.key}: needs at least one value")
            return out
        return self._check_scalar(value, self.base)

    def _check_scalar(self, value: Any, kind: Any) -> Any:
        bad = OptionError(f"{self.key}: expected {getattr(kind, '__name__', kind)}, got {value!r}")
        if kind is bool:
            if not isinstance(value, bool):
                raise bad
        elif kind is int:
            if isinstance(value, bool) or not isinstance(value, int):
                raise bad
        elif kind is float:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise bad
            value = float(value)  # range checks (finite, > 0, ...): ExperimentConfig.validate()
        elif kind is str:
            if not isinstance(value, str):
                raise bad
        if self.choices and value not in self.choices:
            raise OptionError(f"{self.key}: unknown value {value!r}; choose from {', '.join(self.choices)}")
        if self.field in POSITIVE and isinstance(value, int) and value < 1:
            raise OptionError(f"{self.key}: must be a positive integer, got {value!r}")
        if self.key == "drift_times" and value < 0:
            raise OptionError(f"{self.key}: drift times must be >= 0 s, got {value!r}")
        return value

    def format(self, value: Any) -> list[str]:
        """Command-line tokens for a value (the inverse of :meth:`parse`)."""
        if value is None:
            return ["none"]
        if isinstance(value, (list, tuple)):
            if self.element is int:  # [500] * 8 -> "500x8" (parse reads it back)
                return [",".join(_runs(list(value)))]
            return [",".join(_fmt(v) for v in value)]
        return [_fmt(value)]


def _repeat(token: str, key: str) -> list[str]:
    """``"500x8"`` -> eight ``"500"``; any other token as it is."""
    m = re.fullmatch(r"(\d+)\s*[x*]\s*(\d+)", token)
    if m is None:
        return [token]
    if not 1 <= int(m.group(2)) <= 1000:
        raise OptionError(f"{key}: {token!r} repeats a width {m.group(2)} times; use 1 to 1000")
    return [m.group(1)] * int(m.group(2))


def _runs(values: list[int]) -> list[str]:
    """Integers with runs of three or more equal values written ``NxK``."""
    out: list[str] = []
    i = 0
    while i < len(values):
        j = i
        while j < len(values) and values[j] == values[i]:
            j += 1
        out += [f"{values[i]}x{j - i}"] if j - i >= 3 else [_fmt(v) for v in values[i:j]]
        i = j
    return out


def _fmt(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return repr(v) if isinstance(v, float) else str(v)


def _is_union(t: Any) -> bool:
    return typing.get_origin(t) in (typing.Union, types.UnionType)


@functools.lru_cache(maxsize=None)
def field_docs(cls: type) -> dict[str, str]:
    """The ``#:`` comments of a dataclass's fields (continued on following ``#:`` lines)."""
    try:
        lines = inspect.getsource(cls).splitlines()
    except (OSError, TypeError):
        return {}
    docs: dict[str, str] = {}
    current = None
    for line in lines:
        m = re.match(r"\s+(\w+)\s*:[^#]*(?:#:\s*(.*))?$", line)
        cont = re.match(r"\s+#:\s*(.*)$", line)
        if cont and current is not None:
            docs[current] = (docs.get(current, "") + " " + cont.group(1)).strip()
        elif m and not line.strip().startswith(("def ", "return", "@")):
            current = m.group(1)
            if m.group(2):
                docs[current] = m.group(2).strip()
        elif line.strip().startswith("def "):
            break
    return docs


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return None


@functools.lru_cache(maxsize=1)
def _options() -> dict[str, Option]:
    from .experiment import ExperimentConfig
    from .ff import FFConfig

    choices = _choices()
    out: dict[str, Option] = {}
    hints = typing.get_type_hints(ExperimentConfig)
    docs = field_docs(ExperimentConfig)
    for f in dataclasses.fields(ExperimentConfig):
        if dataclasses.is_dataclass(hints[f.name]):
            continue  # the nested FF config, below
        out[f.name] = Option(f.name, f.name, ExperimentConfig, hints[f.name], _default(f),
                             docs.get(f.name, ""), choices.get(f.name))
    if nested_ff():
        ff_hints = typing.get_type_hints(FFConfig)
        ff_docs = field_docs(FFConfig)
        for f in dataclasses.fields(FFConfig):
            if f.name in FF_FROM_EXPERIMENT and f.name != "lr":
                continue
            doc = ff_docs.get(f.name, "")
            if f.name == "lr":
                doc = "learning rate of both FF methods: sets ff_lr_analog and ff_lr_digital"
            choices = _ff_choices(f.name) if ff_hints[f.name] is str else None
            out[f"ff.{f.name}"] = Option(f"ff.{f.name}", f.name, FFConfig, ff_hints[f.name], _default(f), doc, choices)
    return out


def _ff_choices(name: str) -> tuple[str, ...] | None:
    """The values FFConfig accepts for a string field, read from its own check (its error message
    lists them: "choose one of (...)"), so that they are stated in one place."""
    import ast

    from .ff import FFConfig

    try:
        FFConfig(**{name: "\x00?"})
    except ValueError as exc:
        m = re.search(r"choose one of (\(.*\))", str(exc))
        if m:
            try:
                values = ast.literal_eval(m.group(1))
                return tuple(values) if all(isinstance(v, str) for v in values) else None
            except (ValueError, SyntaxError):
                return None
    return None


def options() -> dict[str, Option]:
    """Every option, by key, in dataclass order (ExperimentConfig, then ``ff.*``)."""
    return dict(_options())


def nested_ff() -> bool:
    """Whether ExperimentConfig nests FFConfig (its ``ff`` field)."""
    from .experiment import ExperimentConfig

    return "ff" in {f.name for f in dataclasses.fields(ExperimentConfig)}


def resolve_key(name: str) -> str:
    """An option key from any spelling: ``batch_size``, ``batch-size``, ``--batch-size``, ``ff.loss``,
    ``ff-loss``. Unknown: one-line :class:`OptionError` listing the keys."""
    opts = _options()
    raw = name.strip().lstrip("-")
    key = raw.replace("-", "_")
    if key in opts:
        return key
    if key.startswith("ff_") and f"ff.{key[3:]}" in opts:
        return f"ff.{key[3:]}"
    if key.startswith("ff.") and key in opts:
        return key
    raise OptionError(f"unknown option {name!r}; allowed: {', '.join(opts)}")


def make_config(values: dict[str, Any]):
    """A validated ExperimentConfig from option values (keys of :func:`options`, any spelling;
    missing keys keep their defaults). Raises one-line :class:`OptionError` on a bad key, value or
    combination (FFConfig's own checks and ExperimentConfig.validate() where it exists)."""
    from .experiment import ExperimentConfig
    from .ff import FFConfig

    opts = _options()
    top: dict[str, Any] = {}
    ff: dict[str, Any] = {}
    both_lr = None
    for name, value in values.items():
        key = resolve_key(name)
        value = opts[key].check(value)
        if key == "ff.lr":
            both_lr = value
        elif key.startswith("ff."):
            ff[key[3:]] = value
        else:
            top[key] = value
    if both_lr is not None:  # explicit per-method rates win over ff.lr
        for k in FF_FROM_EXPERIMENT["lr"]:
            top.setdefault(k, both_lr)
    try:
        if nested_ff():
            base = ExperimentConfig(**top)
            ffcfg = FFConfig(**{**dataclasses.asdict(base.ff), **ff, "seed": base.seed, "engine": base.engine,
                                "analog_update": base.analog_update,
                                "lr": base.ff.lr if base.ff_lr_analog is None else base.ff_lr_analog})
            cfg = dataclasses.replace(base, ff=ffcfg)
        else:
            cfg = ExperimentConfig(**top)
            FFConfig(seed=cfg.seed, engine=cfg.engine, analog_update=cfg.analog_update)
        validate = getattr(cfg, "validate", None)
        if callable(validate):
            validate()
    except OptionError:
        raise
    except (ValueError, TypeError) as exc:
        raise OptionError(str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from None
    return cfg


def config_values(cfg) -> dict[str, Any]:
    """Option key -> value of a config (the inverse of :func:`make_config`)."""
    d = config_dict(cfg)
    out: dict[str, Any] = {}
    for key, opt in _options().items():
        if key == "ff.lr":
            continue
        src = d.get("ff", {}) if key.startswith("ff.") else d
        if opt.field in src:
            out[key] = src[opt.field]
    return out


def config_dict(cfg) -> dict[str, Any]:
    """The config as results.json holds it (JSON types; tuples as lists)."""
    if isinstance(cfg, dict):
        return json.loads(json.dumps(cfg))
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


#: FFConfig fields added after runs were recorded, with the value such a run used (a results.json
#: without the field ran with it): the reconstructed config, and its command, stay the run's own
FF_LEGACY = {"label_readout": "overlay", "pairwise": False, "analog_reads": 1}


def with_legacy(ff: dict[str, Any]) -> dict[str, Any]:
    """A results.json's FFConfig dict with the :data:`FF_LEGACY` values of the fields it predates."""
    return {**{k: v for k, v in FF_LEGACY.items() if k not in ff}, **ff} if ff else ff


def config_from_dict(d: dict[str, Any]):
    """An ExperimentConfig from results.json's config dict (unknown keys: OptionError)."""
    values = {k: v for k, v in config_dict(d).items() if k != "ff"}
    ff = d.get("ff") or {}
    for k, v in with_legacy(ff).items():
        if k not in FF_FROM_EXPERIMENT:
            values[f"ff.{k}"] = v
    return make_config(values)


def config_argv(cfg, skip: tuple[str, ...] = (), base: dict[str, Any] | None = None) -> list[str]:
    """The flags of ``analogff run`` that rebuild ``cfg`` from the defaults, or from the option
    values ``base`` (a recipe's), giving only those that differ."""
    from .experiment import readout

    default_cfg = make_config(base or {})
    defaults = config_values(default_cfg)
    argv: list[str] = []
    for key, value in config_values(cfg).items():
        if key in skip or same_value(value, defaults.get(key)):
            continue
        if key == "predict" and cfg.variant == default_cfg.variant and readout(cfg) == readout(default_cfg):
            continue  # e.g. "goodness" where "auto" means goodness: the same run
        opt = _options()[key]
        if opt.base is bool and not opt.optional:
            argv.append(opt.flags[0] if value else "--no-" + opt.flags[0][2:])
        else:
            argv += [opt.flags[0], *opt.format(value)]
    return argv


def same_value(a: Any, b: Any) -> bool:
    """Two option values are the same (as their JSON: a list and a tuple of equal items agree)."""
    return json.dumps(a) == json.dumps(b)
