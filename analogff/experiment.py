"""The main job: Forward-Forward on a crossbar vs digital FF vs digital (and analog) backprop.

``analogff run`` (analogff/cli.py; ``experiments/mnist_analog.py``, ``make demo``) trains every requested
method on the same real data and seed,
counts every operation, prices the counts with the energy model and writes, atomically:

* ``DIR/results.json``: ``{"config": {...}, "dataset": str, "methods": {NAME: {"test_accuracy",
  "train_energy_per_sample_J", "inference_energy_per_sample_J", "energy_breakdown_J", "counters",
  "drift": {t: accuracy}, ...}}}`` (see README, "results.json");
* ``DIR/metrics.csv``: one row per method and epoch.

Several ``--device`` profiles (or ``--adc-bits`` values) make a sweep: one sub-directory per
profile with its own files, and ``DIR/summary.csv``. ``--resume`` continues an interrupted run:
finished methods are read back, FF methods continue from their last epoch checkpoint, and the
end result equals an uninterrupted run with the same seed (torch engine; aihwkit's own engine
cannot be seeded).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import torch

from .ff import ANALOG_UPDATES, FFConfig
from .hybrid import HYBRID_METHODS

METHODS = ("analog_ff", "digital_ff", "digital_bp", "analog_bp", *HYBRID_METHODS)
DEFAULT_METHODS = ("analog_ff", "digital_ff", "digital_bp")
DEFAULT_DEVICE = "ecram"  #: a shipped profile (analogff.devices.shipped_profiles)
DATASETS = ("mnist", "fashion_mnist", "cifar10")  #: cifar10: the user's python batches in $ANALOGFF_DATA
#: the FF networks of the main job (``--variant``): the class of each, imported when it is used.
#: supervised: Hinton's label-overlay FF (analogff.ff); recurrent: his top-down recurrent net
#: (analogff.recurrent); unsupervised: hybrid negatives and a linear head (analogff.unsupervised)
VARIANTS = {"supervised": ("analogff.ff", "FFNet"), "recurrent": ("analogff.recurrent", "RecurrentFFNet"),
            "unsupervised": ("analogff.unsupervised", "UnsupervisedFFNet")}
#: readouts of an FF net (``--predict``); auto: the goodness of the label trials where the variant
#: has them (supervised, recurrent), the softmax head where it has only that (unsupervised)
PREDICTIONS = ("auto", "goodness", "softmax")


def keep_freed_memory() -> bool:
    """Have glibc's malloc keep freed memory for reuse rather than hand it back to the OS after every
    step (``mallopt``: mmap threshold 32 MiB, no trimming). A training step frees and reallocates
    arrays of a few MiB; memory fresh from the OS costs a page fault per 4 KiB (microseconds on a
    virtual machine), 7-11 % of an analog step here. The same results; the process keeps its peak
    memory. Returns whether it applied (Linux with glibc)."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        return libc.mallopt(m_mmap_threshold, 32 << 20) == 1 and libc.mallopt(m_trim_threshold, -1) == 1
    except (OSError, AttributeError):  # another C library
        return False


class ConfigError(ValueError):
    """A config value outside what the run supports; one line naming the field, the value and what is allowed."""

    def __init__(self, field_name: str, value: Any, allowed: str, message: str | None = None):
        super().__init__(message or f"{field_name}={value!r} is not allowed: {allowed}")
        self.field_name, self.value, self.allowed = field_name, value, allowed


#: ADC resolutions the model supports: aihwkit's out_res = 1 / (2^bits - 2) needs >= 2 bits, and the
#: energy model's ADC fit is extrapolated beyond its 6-8 bit data already at 16 (docs/energy.md, "ADC")
ADC_BITS_RANGE = (2, 16)
MAX_EPOCHS = 100_000
MAX_BATCH_SIZE = 60_000  #: the largest training set (MNIST, Fashion-MNIST)


def _int_in(name: str, value: Any, lo: int, hi: int, what: str = "an integer") -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ConfigError(name, value, f"{what} in {lo}..{hi}")


@dataclass
class ExperimentConfig:
    """Everything a run depends on (written into results.json so the run can be repeated)."""

    device: str = DEFAULT_DEVICE  #: device profile of the analog methods: a shipped name (pcm, ...) or a TOML path
    dataset: str = "mnist"  #: training and test data
    epochs: int = 3  #: training epochs of every method
    batch_size: int = 100  #: mini-batch size of every method
    hidden: list[int] = field(default_factory=lambda: [500, 500])  #: hidden layer sizes (the input is 784)
    methods: list[str] = field(default_factory=lambda: list(DEFAULT_METHODS))  #: methods to train, in order
    seed: int = 0  #: seed of weights, batch order, negatives and the torch engine's crossbars
    out: str = "runs/latest"  #: output directory (results.json, metrics.csv, state/)
    drift_times: list[float] = field(default_factory=lambda: [1.0, 3600.0, 86400.0, 31536000.0])  #: seconds
    #: after programming at which the trained analog nets are evaluated (empty: no drift)
    engine: str = "torch"  #: crossbar engine: "torch" (fast, seeded) or "aihwkit" (reference)
    adc_bits: int | None = None  #: override the profile's ADC resolution (forward and backward)
    ff_lr_digital: float = 1e-3  #: Adam learning rate of digital FF
    ff_lr_analog: float | None = None  #: analog FF learning rate (adam: step in weight units, 1e-3; sgd: lr of
    #: W - lr d^T x, 0.1; onarray: the transfer's gain, 0.01); None: the rule's default (analogff.ff.ANALOG_LR)
    analog_update: str = "auto"  #: analog FF update rule (analogff.ff.AnalogLayer): auto = onarray on a
    #: transfer-compound profile, else adam
    bp_lr: float = 1e-3  #: Adam learning rate of digital BP
    analog_bp_lr: float = 0.05  #: SGD learning rate of analog BP
    hybrid_split: float = 0.5  #: ff_then_bp / bp_then_ff (analogff.hybrid): the fraction of the epochs in
    #: the first algorithm (at least one epoch in each)
    predict: str = "auto"  #: FF prediction for test accuracy and inference energy: goodness | softmax |
    #: auto (goodness where the variant has label trials, else its softmax head)
    variant: str = "supervised"  #: FF network: supervised (label overlay) | recurrent (top-down) | unsupervised
    architecture: str | None = None  #: a named layer structure instead of hidden (unsupervised: hinton_local,
    #: local receptive fields; analogff.locally_connected.LOCAL_ARCHITECTURES)
    probe_samples: int = 10000  #: after training, a linear softmax probe per FF layer, trained on this many
    #: training images and tested on the test set (results.json layer_probe_accuracy); 0: none
    train_limit: int | None = None  #: use the first N training samples (smoke tests)
    test_limit: int | None = None  #: use the first N test samples (smoke tests)
    threads: int | None = None  #: torch.set_num_threads(threads) for the run; None: torch's default
    ff: FFConfig = field(default_factory=FFConfig)  #: Forward-Forward options (analogff.ff.FFConfig);
    #: its seed, engine and analog_update are those above, lr is ff_lr_analog / ff_lr_digital per method

    def __post_init__(self) -> None:
        if isinstance(self.ff, dict):  # read back from results.json
            self.ff = FFConfig(**self.ff)
        self.ff = replace(self.ff, seed=self.seed, engine=self.engine, analog_update=self.analog_update,
                          lr=self.ff.lr if self.ff_lr_analog is None else self.ff_lr_analog)

    def validate(self) -> "ExperimentConfig":
        """Check every field against what the run supports; raises :class:`ConfigError` (one line:
        the field, the value and what is allowed) on the first bad one. Returns self."""
        if not isinstance(self.device, str) or not self.device:
            raise ConfigError("device", self.device, "a profile name or TOML path")
        if self.dataset not in DATASETS:
            raise ConfigError("dataset", self.dataset, f"one of {', '.join(DATASETS)}")
        _int_in("epochs", self.epochs, 1, MAX_EPOCHS)
        _int_in("batch_size", self.batch_size, 1, self.train_limit or MAX_BATCH_SIZE,
                "an integer (at most the number of training samples)" if self.train_limit else "an integer")
        if not isinstance(self.hidden, (list, tuple)) or not self.hidden:
            raise ConfigError("hidden", self.hidden, "a non-empty list of layer widths")
        for w in self.hidden:
            _int_in("hidden", w, 1, 100_000, "layer widths, integers")
        if not self.methods or any(m not in METHODS for m in self.methods) or len(set(self.methods)) < len(self.methods):
            raise ConfigError("methods", self.methods, f"distinct names from {', '.join(METHODS)}")
        _int_in("seed", self.seed, 0, 2**63 - 1)
        for t in self.drift_times:
            if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or t < 0:
                raise ConfigError("drift_times", self.drift_times, "finite seconds >= 0")
        if self.engine not in ("torch", "aihwkit"):
            raise ConfigError("engine", self.engine, "torch or aihwkit")
        if self.adc_bits is not None:
            _int_in("adc_bits", self.adc_bits, *ADC_BITS_RANGE, "an integer number of bits")
        for name in ("ff_lr_digital", "ff_lr_analog", "bp_lr", "analog_bp_lr"):
            v = getattr(self, name)
            if v is None and name == "ff_lr_analog":  # the rule's default
                continue
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
                raise ConfigError(name, v, "a finite learning rate > 0")
        if self.analog_update not in ANALOG_UPDATES:
            raise ConfigError("analog_update", self.analog_update, f"one of {', '.join(ANALOG_UPDATES)}")
        if self.predict not in PREDICTIONS:
            raise ConfigError("predict", self.predict, " or ".join(PREDICTIONS))
        if self.variant not in VARIANTS:
            raise ConfigError("variant", self.variant, f"one of {', '.join(VARIANTS)}")
        readouts = {"recurrent": ("goodness",), "unsupervised": ("softmax",)}.get(self.variant)
        if readouts and self.predict not in ("auto", *readouts):
            raise ConfigError("predict", self.predict, f"{readouts[0]} or auto (the {self.variant} variant's readout)")
        for name, off in (("dropout", 0.0), ("collaborative", False)):
            if getattr(self.ff, name) != off and self.variant != "supervised":
                raise ConfigError(f"ff.{name}", getattr(self.ff, name), f"{off} ({name} is part of the supervised "
                                  f"net's step, not of the {self.variant} variant's)")
        if self.architecture is not None and self.variant != "unsupervised":
            raise ConfigError("architecture", self.architecture, "none (a named architecture needs --variant unsupervised)")
        hybrid = [m for m in self.methods if m in HYBRID_METHODS]
        if hybrid:
            if self.variant != "supervised":
                raise ConfigError("variant", self.variant, f"supervised ({hybrid[0]} copies weights between FF and BP MLPs)")
            if self.epochs < 2:
                raise ConfigError("epochs", self.epochs, f"an integer >= 2 ({hybrid[0]} trains one phase after the other)")
        if isinstance(self.hybrid_split, bool) or not isinstance(self.hybrid_split, (int, float)) \
                or not 0 < self.hybrid_split < 1:
            raise ConfigError("hybrid_split", self.hybrid_split, "a fraction of the epochs, 0 < split < 1")
        _int_in("probe_samples", self.probe_samples, 0, MAX_BATCH_SIZE, "an integer (0: no probes)")
        for name in ("train_limit", "test_limit"):
            if getattr(self, name) is not None:
                _int_in(name, getattr(self, name), 1, 10**9)
        if self.threads is not None:
            _int_in("threads", self.threads, 1, 4096)
        return self


# ---------------------------------------------------------------------------------------------
# atomic files
# ---------------------------------------------------------------------------------------------
def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file and ``os.replace``: never half-written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _csv_text(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return ""
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys, lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


# ---------------------------------------------------------------------------------------------
# the environment a run ran in (results.json "environment")
# ---------------------------------------------------------------------------------------------
def environment() -> dict[str, Any]:
    """What the numbers of a run depend on besides its config: code version, library versions,
    threads, CPU, GPU, compile mode. Same config + same environment gives the same numbers (torch
    engine); another thread count or CPU may move the last digits (README, "Reproducibility")."""
    import platform
    import subprocess
    from importlib import metadata

    root = Path(__file__).resolve().parents[1]

    def git(*args: str) -> str | None:
        try:
            r = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return r.stdout.strip() if r.returncode == 0 else None

    def version(pkg: str) -> str | None:
        try:
            return metadata.version(pkg)
        except metadata.PackageNotFoundError:
            return None

    cpu = platform.processor() or None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    status = git("status", "--porcelain", "--untracked-files=no")
    cuda = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "git_commit": git("rev-parse", "HEAD"), "git_dirty": None if status is None else bool(status),
        "python": platform.python_version(), "torch": torch.__version__, "aihwkit": version("aihwkit"),
        "numpy": version("numpy"), "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "omp_num_threads_env": os.environ.get("OMP_NUM_THREADS"), "cpu": cpu, "cpu_count": os.cpu_count(),
        "platform": platform.platform(), "cuda_device": cuda, "torch_cuda": torch.version.cuda,
        "analogff_compile": os.environ.get("ANALOGFF_COMPILE", "auto"),
        "analogff_compile_rule": "0: eager; 1: compiled; auto: compiled on tiles of >= 65536 devices",
    }


# ---------------------------------------------------------------------------------------------
# one run: every method on one device profile
# ---------------------------------------------------------------------------------------------
def _profile(cfg: ExperimentConfig):
    from .devices import load_device

    dev = load_device(cfg.device)
    if cfg.adc_bits is not None:
        res = 1.0 / (2 ** cfg.adc_bits - 2)
        dev = dev.with_overrides(forward__out_res=res, backward__out_res=res)
    return dev


def _data(cfg: ExperimentConfig) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    from .data import load_dataset

    out = {}
    for split, limit in (("train", cfg.train_limit), ("test", cfg.test_limit)):
        x, y = load_dataset(cfg.dataset, split)
        if limit is not None:
            x, y = x[:limit], y[:limit]
        out[split] = (torch.from_numpy(x), torch.from_numpy(y))
    return out


def _crossbars(net: torch.nn.Module) -> list:
    from .crossbar import Crossbar

    return [m for m in net.modules() if isinstance(m, Crossbar)]


def _drift(net, evaluate: Callable[[], float], times: list[float]) -> dict[str, Any]:
    """Accuracy t seconds after programming the trained arrays (aihwkit inference noise + drift)."""
    from .energy import measured

    xbars = _crossbars(net)
    if not xbars or not times:
        return {}
    if xbars[0].profile.noise_model is None:
        return {"skipped": f"profile {xbars[0].profile.name!r} has no [inference] noise_model"}
    result: dict[str, Any] = {}
    unsupported: dict[str, str] = {}
    try:
        for t in times:
            try:
                for xb in xbars:
                    xb.drift_to(t)
            except Exception as exc:  # e.g. ReRamWan2022NoiseModel is measured at 1 s, 1 day, 2 days only
                unsupported[_tkey(t)] = f"{type(exc).__name__}: {exc}".splitlines()[0]
                continue
            with measured(net):  # drift checks are neither training nor the run's evaluation
                result[_tkey(t)] = evaluate()
        if unsupported:
            result["unsupported"] = unsupported
    finally:
        for xb in xbars:
            xb.reset_drift()
    return result


def _tkey(t: float) -> str:
    return str(int(t)) if float(t).is_integer() else repr(t)


def analog_rule(cfg: ExperimentConfig, profile) -> tuple[str, float]:
    """(update rule, learning rate) of analog FF on ``profile``: "auto" resolved by the profile's
    preset (onarray on a transfer compound, else adam), the rule's default lr when unset."""
    from .engine.cells.transfer import algorithm_of
    from .ff import ANALOG_LR, resolve_analog_update

    rule = resolve_analog_update(cfg.analog_update, algorithm_of(profile.rpu_config().device))
    return rule, (ANALOG_LR[rule] if cfg.ff_lr_analog is None else float(cfg.ff_lr_analog))


def readout(cfg: ExperimentConfig) -> str:
    """The readout the run reports: ``cfg.predict``, "auto" resolved by the variant."""
    if cfg.predict != "auto":
        return cfg.predict
    return "softmax" if cfg.variant == "unsupervised" else "goodness"


def build_ff_net(cfg: ExperimentConfig, ffcfg, n_in: int, profile=None):
    """The FF net of ``cfg.variant`` (analogff.experiment.VARIANTS): ``n_in`` inputs, then
    ``cfg.hidden`` (or the named ``cfg.architecture``); analog layers on ``profile`` when given."""
    import importlib

    module, name = VARIANTS[cfg.variant]
    cls = getattr(importlib.import_module(module), name)
    kind = "analog" if profile is not None else "digital"
    if cfg.architecture is not None:
        return cls.from_architecture(cfg.architecture, layer=kind, device=profile, config=ffcfg)
    top = [ffcfg.num_classes] if cfg.variant == "recurrent" else []  # its label is the top layer
    return cls([n_in, *cfg.hidden, *top], layer=kind, device=profile, config=ffcfg)


def _run_ff(name: str, cfg: ExperimentConfig, profile, data, ckpt: Path, resume: bool,
            on_epoch: Callable[[dict], None]) -> tuple[Any, dict[str, Any]]:
    from .energy import measured
    from .probes import layer_probe_accuracy
    from .train import train_ff

    analog = name == "analog_ff"
    rule, lr = analog_rule(cfg, profile) if analog else (cfg.analog_update, cfg.ff_lr_digital)
    ffcfg = replace(cfg.ff, lr=lr, seed=cfg.seed, engine=cfg.engine, analog_update=rule,
                    image_side=32 if cfg.dataset == "cifar10" else cfg.ff.image_side)  # 3 x 32 x 32 images
    net = build_ff_net(cfg, ffcfg, data["train"][0].shape[1], profile if analog else None)
    history = train_ff(net, data, ffcfg, epochs=cfg.epochs, batch_size=cfg.batch_size, seed=cfg.seed,
                       checkpoint=str(ckpt), resume=resume, on_epoch=on_epoch, progress=True)
    x_test, y_test = data["test"]
    predict = readout(cfg)
    with measured(net) as inf:
        acc = net.accuracy(x_test, y_test, predict)
    probes = layer_probe_accuracy(net, data["train"], data["test"], samples=cfg.probe_samples, seed=cfg.seed) \
        if cfg.probe_samples else []
    extra = {
        "test_accuracy": acc,
        "test_accuracy_goodness": history[-1]["test_acc_goodness"] if history else None,
        "test_accuracy_softmax": history[-1]["test_acc_softmax"] if history else None,
        "predict": predict,
        "variant": cfg.variant,
        "layer_probe_accuracy": probes,
        **({"analog_update": rule, "lr": lr, "analog_reads": _layer_reads(net)} if analog else {}),
        "inference_counts": inf.counts,
        "periphery_state_bytes": int(getattr(net, "periphery_state_bytes", 0)),
        "history": history,
        "drift": _drift(net, lambda: net.accuracy(x_test, y_test, predict), cfg.drift_times) if analog else {},
    }
    return net, extra


def _run_bp(name: str, cfg: ExperimentConfig, profile, data, on_epoch: Callable[[dict], None]):
    from .reference import AnalogBPNet, BPNet, evaluate, evaluate_analog, train_analog_bp, train_bp

    (x, y), (x_test, y_test) = data["train"], data["test"]
    dims = [x.shape[1], *cfg.hidden, 10]
    if name == "digital_bp":
        net = BPNet(dims, seed=cfg.seed)
        history = train_bp(net, x, y, x_test, y_test, epochs=cfg.epochs, batch_size=cfg.batch_size,
                           lr=cfg.bp_lr, seed=cfg.seed, on_epoch=on_epoch)
        acc = evaluate(net, x_test, y_test, count=False)["acc"]
        inf_counts = net.inference_counts(len(x_test), batch_size=1000)  # what evaluate() ran
        extra = {"peak_memory_bytes": net.peak_memory(cfg.batch_size)}
        drift: dict[str, Any] = {}
    else:
        net = AnalogBPNet(dims, device=profile, seed=cfg.seed, engine=cfg.engine)
        history = train_analog_bp(net, x, y, x_test, y_test, epochs=cfg.epochs, batch_size=cfg.batch_size,
                                  lr=cfg.analog_bp_lr, seed=cfg.seed, on_epoch=on_epoch, progress=True)
        ev, inf_counts = evaluate_analog(net, x_test, y_test)
        acc = ev["acc"]
        extra = {}
        drift = _drift(net, lambda: evaluate_analog(net, x_test, y_test)[0]["acc"], cfg.drift_times)
    extra.update({"test_accuracy": acc, "inference_counts": inf_counts, "history": history, "drift": drift})
    return net, extra


def _run_hybrid(name: str, cfg: ExperimentConfig, data, on_epoch: Callable[[dict], None]):
    """FF then BP, or BP then FF, on the same digital widths (analogff.hybrid)."""
    from .hybrid import train_hybrid
    from .reference import BPNet

    ffcfg = replace(cfg.ff, lr=cfg.ff_lr_digital, seed=cfg.seed, engine=cfg.engine,
                    image_side=32 if cfg.dataset == "cifar10" else cfg.ff.image_side)
    n_in = data["train"][0].shape[1]
    ff = build_ff_net(cfg, ffcfg, n_in)
    bp = BPNet([n_in, *cfg.hidden, ffcfg.num_classes], seed=cfg.seed)
    return train_hybrid(name, ff, bp, data, epochs=cfg.epochs, split=cfg.hybrid_split, ff_config=ffcfg,
                        batch_size=cfg.batch_size, bp_lr=cfg.bp_lr, seed=cfg.seed, predict=readout(cfg),
                        on_epoch=on_epoch)


def _layer_reads(net: Any) -> int | None:
    """Reads per forward MVM of the net's analog layers (FFConfig.analog_reads resolved by rule)."""
    for mod in net.modules():
        if hasattr(mod, "reads") and hasattr(mod, "xbar"):
            return int(mod.reads)
    return None


def run_one(cfg: ExperimentConfig, resume: bool = False,
            _interrupt_after: tuple[str, int] | None = None) -> dict[str, Any]:
    """Train every method of ``cfg`` on one device profile; write results.json and metrics.csv."""
    from .energy import EnergyModel, OpCounts, total_counts

    cfg.validate()
    from .engine.aot import limit_bytes

    limit_bytes()  # a bad $ANALOGFF_KERNEL_CACHE_MB stops the run here, not at its first compile
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    profile = _profile(cfg)
    out = Path(cfg.out)
    state = out / "state"
    run_spec = _run_spec(cfg, profile)
    if resume:
        _check_resume(out, run_spec)  # before anything is read or written
    data = _data(cfg)
    state.mkdir(parents=True, exist_ok=True)
    write_atomic(state / "config.json", json.dumps(run_spec, indent=1))
    analog_model = EnergyModel.from_profile(profile)
    digital_model = EnergyModel()
    n_train, n_test = len(data["train"][1]), len(data["test"][1])
    results: dict[str, Any] = {
        "config": asdict(cfg), "dataset": cfg.dataset, "device_profile": profile.to_dict(),
        "energy_model": {"analog": analog_model.as_dict(), "digital": digital_model.as_dict()},
        "n_train": n_train, "n_test": n_test, "environment": environment(), "methods": {},
    }
    rows: list[dict[str, Any]] = []
    for name in cfg.methods:
        done = state / f"{name}.json"
        if resume and done.exists():
            entry = json.loads(done.read_text())
        else:
            t0 = time.perf_counter()

            def on_epoch(m: dict, _name: str = name) -> None:
                if _interrupt_after is not None and _interrupt_after == (_name, m["epoch"]):
                    raise KeyboardInterrupt(f"simulated interruption after {_name} epoch {m['epoch']}")

            if name in HYBRID_METHODS:
                net, extra = _run_hybrid(name, cfg, data, on_epoch)
            elif name.endswith("_ff"):
                net, extra = _run_ff(name, cfg, profile, data, state / f"{name}.ckpt", resume, on_epoch)
            else:
                net, extra = _run_bp(name, cfg, profile, data, on_epoch)
            model = analog_model if name.startswith("analog") else digital_model
            train_counts = total_counts(net)  # training only: evaluation went to net.eval_counters
            samples = n_train * cfg.epochs
            train = model.energy(train_counts).per_sample(samples)
            inf_counts = extra.pop("inference_counts")
            infer = model.energy(inf_counts).per_sample(n_test)
            history = extra.pop("history")
            eval_counts = getattr(net, "eval_counters", None) or OpCounts()
            eval_samples = sum(int(h.get("eval_samples") or 0) for h in history)
            evaluation = model.energy(eval_counts)  # priced as inference, with the same model
            eval_ps = evaluation.per_sample(eval_samples) if eval_samples else None
            entry = {
                "test_accuracy": float(extra.pop("test_accuracy")),
                "train_energy_per_sample_J": train.total_J,
                "inference_energy_per_sample_J": infer.total_J,
                "energy_breakdown_J": train.breakdown_J,
                "inference_energy_breakdown_J": infer.breakdown_J,
                "counters": train_counts.as_dict(),
                "inference_counters": inf_counts.as_dict(),
                "resident_state_bytes": _resident_state(net, cfg.batch_size),
                "samples_trained": samples,
                "eval_counters": eval_counts.as_dict(),
                "eval_samples": eval_samples,
                "eval_energy_J": evaluation.total_J,
                "eval_energy_per_sample_J": eval_ps.total_J if eval_ps else 0.0,
                "eval_energy_breakdown_J": eval_ps.breakdown_J if eval_ps else {k: 0.0 for k in evaluation.breakdown_J},
                "drift": extra.pop("drift"),
                "wall_time_s": time.perf_counter() - t0,
                **extra,
                "epochs": [_epoch_row(h) for h in history],
            }
            write_atomic(done, json.dumps(entry, indent=1, default=_json_default))
        results["methods"][name] = entry
        rows += [{"method": name, **row} for row in entry["epochs"]]
    write_atomic(out / "results.json", json.dumps(results, indent=1, default=_json_default))
    write_atomic(out / "metrics.csv", _csv_text(rows))
    return results


#: config fields a resumed run may change: where it is written, how many threads compute it
RESUMABLE_FIELDS = ("out", "threads")


def _run_spec(cfg: ExperimentConfig, profile) -> dict[str, Any]:
    """What a resumed run must share with the run it continues (JSON-normalised)."""
    conf = {k: v for k, v in asdict(cfg).items() if k not in RESUMABLE_FIELDS}
    return json.loads(json.dumps({"config": conf, "device_profile": profile.to_dict()}, default=_json_default))


def _check_resume(out: Path, spec: dict[str, Any]) -> None:
    """Refuse to resume a run made with another config: ConfigError naming the first differing field."""
    from .train import first_difference

    saved = out / "state" / "config.json"
    if saved.exists():
        old = json.loads(saved.read_text())
    elif (out / "results.json").exists():  # a run from before state/config.json
        res = json.loads((out / "results.json").read_text())
        old = {"config": {k: v for k, v in res.get("config", {}).items() if k not in RESUMABLE_FIELDS},
               "device_profile": res.get("device_profile")}
    else:
        return
    diff = first_difference(old, spec)
    if diff is not None:
        key, was, now = diff
        key = key.removeprefix("config.")
        raise ConfigError(key, now, "the value of the run it resumes",
                          f"--resume: {out} was run with {key}={was!r}; now {key}={now!r}: resume with the same "
                          "settings, or start afresh with another --out")


def _resident_state(net, batch_size: int) -> dict[str, int]:
    """The residency rule's input (analogff.accounting): bytes kept between steps in training and
    in inference (for benchmarks/energy_sensitivity.py to move them between SRAM and DRAM)."""
    if hasattr(net, "resident_bytes"):  # FFNet
        return {"training": int(net.resident_bytes), "inference": int(net.inference_resident_bytes)}
    if hasattr(net, "peak_memory"):  # BPNet
        pm = net.peak_memory(batch_size)
        return {"training": int(pm["weights_bytes"] + pm["gradients_bytes"] + pm["optimizer_state_bytes"]),
                "inference": int(pm["weights_bytes"])}
    return {"training": 0, "inference": 0}  # analog BP: weights on the arrays, plain SGD


def _epoch_row(h: dict[str, Any]) -> dict[str, Any]:
    acc = h.get("test_acc")
    if acc is None:
        acc = h.get("test_acc_goodness") if h.get("test_acc_goodness") is not None else h.get("test_acc_softmax")
    row = {"epoch": h["epoch"], "train_loss": h.get("train_loss"), "test_accuracy": acc}
    for k in ("test_acc_goodness", "test_acc_softmax", "wall_time_s"):
        if k in h:
            row[k] = h[k]
    return row


def _json_default(o: Any) -> Any:
    if hasattr(o, "as_dict"):
        return o.as_dict()
    if isinstance(o, torch.Tensor):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


# ---------------------------------------------------------------------------------------------
# reporting
# ---------------------------------------------------------------------------------------------
def format_table(results: dict[str, Any]) -> str:
    """The final table: method, accuracy, energies, top energy components."""
    head = f"{'method':<11} {'test acc':>8} {'train J/sample':>15} {'infer J/sample':>15}  top training energy components"
    lines = [head, "-" * len(head)]
    for name, m in results["methods"].items():
        br = m["energy_breakdown_J"]
        total = sum(br.values()) or 1.0
        top = sorted(br.items(), key=lambda kv: -kv[1])[:3]
        tops = ", ".join(f"{k} {100 * v / total:.0f}%" for k, v in top if v > 0)
        lines.append(f"{name:<11} {100 * m['test_accuracy']:>7.2f}% {m['train_energy_per_sample_J']:>15.3e} "
                     f"{m['inference_energy_per_sample_J']:>15.3e}  {tops}")
    return "\n".join(lines)


def summary_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    dev = results["device_profile"]
    return [{"device": dev["name"], "adc_bits": dev["adc_bits"], "method": name,
             "test_accuracy": m["test_accuracy"], "train_energy_per_sample_J": m["train_energy_per_sample_J"],
             "inference_energy_per_sample_J": m["inference_energy_per_sample_J"]}
            for name, m in results["methods"].items()]


# ---------------------------------------------------------------------------------------------
# command line
# ---------------------------------------------------------------------------------------------
def _default_out(stem: str, resume: bool) -> str:
    """Without --out: a new run takes the first free of stem, stem_2, ...; --resume the latest used."""
    used = [stem] + [f"{stem}_{i}" for i in range(2, 1000)]
    taken = [p for p in used if Path(p).exists()]
    if resume:
        return taken[-1] if taken else stem
    return next(p for p in used if not Path(p).exists())


def build_parser():
    """The main job's parser: ``analogff run``'s (analogff.cli), derived from ExperimentConfig."""
    from .cli import run_parser

    return run_parser(prog="mnist_analog.py")


def main(argv: list[str] | None = None) -> int:
    """The main job from the command line: ``analogff run`` (analogff.cli) under the name of
    experiments/mnist_analog.py. Returns the exit code."""
    from .cli import run_main

    return run_main(argv, prog="mnist_analog.py")
