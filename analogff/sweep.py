"""``analogff sweep``: a grid of runs over any config option, in parallel processes or on a Ray cluster.

    analogff sweep --recipe quick --grid device=ecram,pcm seed=0,1 --jobs 2 --out runs/grid
    analogff sweep --grid-file grid.toml --ray 10.0.0.1:6379 --out runs/grid

A grid is ``KEY=V1,V2,...`` per axis (KEY: any option of ``analogff run``, e.g. ``device``,
``seed``, ``ff_lr_analog``, ``analog_update``, ``adc_bits``, ``dataset``, ``ff.loss``; a JSON list
``KEY=[[500,500],[1000]]`` for list values), or a TOML/JSON file ``{KEY: [V1, V2, ...]}`` with an
optional ``[base]`` table of option values for every cell. The cells are the cross product, each
on top of the recipe and flags given. Each cell runs ``analogff run``'s job into ``OUT/CELL``
(its own results.json and metrics.csv, written atomically, and its log.txt); ``OUT/summary.csv``
(one row per cell and method, failed cells with their one-line reason) and ``OUT/report.md``
(analogff report) come at the end. A finished cell (results.json with the same config) is
skipped, so the same command continues an interrupted sweep.

Workers: ``--jobs N`` processes on this machine, each with ``--threads-per-cell`` torch threads
(default: the cores shared out, i.e. one per worker when --jobs fills the machine; two processes
that each spin two threads slow each other down badly on two cores). ``--ray ADDRESS`` sends the
cells to a Ray cluster (``--ray local`` starts one here); each cell asks for
``--threads-per-cell`` CPUs, runs in a temporary directory of its worker node and sends its
files back to this machine, which writes them into OUT.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import logging
import os
import re
import socket
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger("analogff")
RESULT_FILES = ("results.json", "metrics.csv", "log.txt")


class GridError(ValueError):
    """Bad sweep input: one line naming the problem and what is allowed."""


@dataclass
class Cell:
    name: str
    axes: dict[str, Any]  #: axis key -> value of this cell
    config: dict[str, Any] = field(default_factory=dict)  #: the resolved ExperimentConfig as a dict


# ---------------------------------------------------------------------------------------------
# the grid
# ---------------------------------------------------------------------------------------------
def parse_grid(items: list[str]) -> dict[str, list[Any]]:
    """``["device=ecram,pcm", "seed=0,1"]`` -> ``{"device": ["ecram", "pcm"], "seed": [0, 1]}``."""
    from .options import OptionError, options, resolve_key

    grid: dict[str, list[Any]] = {}
    for item in items:
        if "=" not in item:
            raise GridError(f"malformed grid item {item!r}: expected KEY=V1,V2,... (KEY: an option of "
                            f"analogff run, e.g. device=ecram,pcm or seed=0,1)")
        name, text = item.split("=", 1)
        try:
            key = resolve_key(name)
        except OptionError as exc:
            raise GridError(f"unknown sweep axis {name!r}; allowed: {_allowed()}") from exc
        if key in grid:
            raise GridError(f"sweep axis {key!r} given twice")
        opt = options()[key]
        try:
            if text.strip().startswith("["):
                try:
                    raw = json.loads(text)
                except json.JSONDecodeError as exc:
                    raise GridError(f"grid item {item!r}: not a JSON list ({exc.msg})") from None
                if not isinstance(raw, list):
                    raise GridError(f"grid item {item!r}: expected a JSON list of values")
                values = [opt.check(v) for v in raw]
            else:
                parts = [t for t in text.split(",")]
                if not text.strip() or any(not t.strip() for t in parts):
                    raise GridError(f"malformed grid item {item!r}: empty value; expected KEY=V1,V2,...")
                values = [opt.parse(t) for t in parts]
        except OptionError as exc:
            raise GridError(f"grid item {item!r}: {exc}") from None
        grid[key] = _dedup(values)
    return grid


def load_grid_file(path: str) -> tuple[dict[str, list[Any]], dict[str, Any]]:
    """(grid, base values) from a TOML or JSON file ``{KEY: [values], "base": {KEY: value}}``."""
    from .options import OptionError, load_table_file, options, resolve_key

    data = load_table_file(path, f"grid file {path}", GridError, "a table {KEY: [values]}")
    base_raw = data.pop("base", {})
    if not isinstance(base_raw, dict):
        raise GridError(f"grid file {path}: 'base' must be a table of option values")
    grid: dict[str, list[Any]] = {}
    base: dict[str, Any] = {}
    try:
        for name, value in base_raw.items():
            key = resolve_key(name)
            base[key] = options()[key].check(value)
        for name, values in data.items():
            try:
                key = resolve_key(name)
            except OptionError:
                raise GridError(f"grid file {path}: unknown sweep axis {name!r}; allowed: {_allowed()}") from None
            if not isinstance(values, list) or not values:
                raise GridError(f"grid file {path}: axis {name!r} must be a non-empty list of values")
            grid[key] = _dedup([options()[key].check(v) for v in values])
    except OptionError as exc:
        raise GridError(f"grid file {path}: {exc}") from None
    return grid, base


def _allowed() -> str:
    from .options import options

    return ", ".join(options())


def _dedup(values: list[Any]) -> list[Any]:
    out: list[Any] = []
    for v in values:
        if v not in out:
            out.append(v)
    return out


def _part(key: str, value: Any) -> str:
    if key == "device":
        return Path(str(value)).stem
    if key == "adc_bits":
        return f"adc{value}"
    text = ",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)
    return f"{key.replace('ff.', 'ff-')}-{text}"


def cell_name(axes: dict[str, Any]) -> str:
    name = "_".join(_part(k, v) for k, v in axes.items()) or "base"
    return re.sub(r"[^A-Za-z0-9._=+-]+", "x", name)[:150]


def make_cells(base: dict[str, Any], grid: dict[str, list[Any]], out: Path) -> list[Cell]:
    """Every cell of the grid, validated (configs, profiles): GridError before anything is written."""
    from .devices import DeviceProfileError, load_device
    from .options import OptionError, config_dict, make_config

    cells: list[Cell] = []
    names: set[str] = set()
    checked: set[str] = set()
    for combo in itertools.product(*grid.values()) if grid else [()]:
        axes = dict(zip(grid, combo))
        name = cell_name(axes)
        if name in names:
            i = 2
            while f"{name}_{i}" in names:
                i += 1
            name = f"{name}_{i}"
        names.add(name)
        values = {**base, **axes, "out": str(out / name)}
        values.setdefault("device", "ecram")
        try:
            cfg = make_config(values)
            if cfg.device not in checked:
                load_device(cfg.device)
                checked.add(cfg.device)
        except (OptionError, DeviceProfileError) as exc:
            raise GridError(f"cell {name}: {exc}") from None
        cells.append(Cell(name, axes, config_dict(cfg)))
    return cells


def _same_config(a: dict[str, Any], b: dict[str, Any]) -> bool:
    strip = lambda d: {k: v for k, v in d.items() if k not in ("out", "threads")}  # noqa: E731
    return json.dumps(strip(a), sort_keys=True) == json.dumps(strip(b), sort_keys=True)


def cell_state(cell: Cell, out: Path) -> str:
    """"done" (results.json of this config), "partial" (started with this config), "new"; a cell
    directory of another config raises GridError."""
    d = out / cell.name
    for fname, what in (("results.json", "finished"), ("cell.json", "started")):
        f = d / fname
        if f.is_file():
            try:
                cfg = json.loads(f.read_text()).get("config", {})
            except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
                raise GridError(f"{f} is corrupt; remove {d} or use another --out") from None
            if not _same_config(cfg, cell.config):
                diff = sorted(k for k in set(cfg) | set(cell.config)
                              if k not in ("out", "threads") and cfg.get(k) != cell.config.get(k))
                raise GridError(f"{d} holds a {what} run of another config (differs in {', '.join(diff)}); "
                                f"use another --out or remove it")
            return "done" if fname == "results.json" else "partial"
    return "new"


# ---------------------------------------------------------------------------------------------
# one cell (in a worker process, a Ray task or this process)
# ---------------------------------------------------------------------------------------------
def _init_worker(threads: int) -> None:
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(threads)
    import torch

    torch.set_num_threads(threads)
    from .experiment import keep_freed_memory

    keep_freed_memory()


def run_cell(config: dict[str, Any], threads: int, out_dir: str | None = None) -> dict[str, Any]:
    """Run one cell's job (analogff run, resumable) into ``out_dir`` (default its config's out);
    output goes to OUT/log.txt. Returns {"status": "done"|"failed", "error", "wall_s"}; never raises
    for a failing cell."""
    import torch

    from .options import config_from_dict

    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    t0 = time.perf_counter()
    out = Path(out_dir or config["out"])
    out.mkdir(parents=True, exist_ok=True)
    try:
        with open(out / "log.txt", "a") as fh, contextlib.redirect_stdout(fh), contextlib.redirect_stderr(fh):
            cfg = config_from_dict({**config, "out": str(out)})
            if "threads" in config:
                from dataclasses import replace

                cfg = replace(cfg, threads=threads)
            from .experiment import run_one

            run_one(cfg, resume=True)
        return {"status": "done", "error": None, "wall_s": time.perf_counter() - t0}
    except Exception as exc:  # noqa: BLE001: a failing cell is recorded, the others go on
        from .cli import one_line

        return {"status": "failed", "error": one_line(f"{type(exc).__name__}: {exc}")[:500],
                "wall_s": time.perf_counter() - t0}


def _ray_cell(config: dict[str, Any], threads: int) -> dict[str, Any]:
    """A Ray task: the cell in a temporary directory of the worker; its files come back."""
    _init_worker(threads)
    with tempfile.TemporaryDirectory(prefix="analogff-cell-") as tmp:
        outcome = run_cell(config, threads, out_dir=tmp)
        files = {}
        for name in RESULT_FILES:
            p = Path(tmp) / name
            if p.is_file():
                files[name] = p.read_text()
        outcome["files"] = files
        try:
            import ray

            outcome["node"] = ray.get_runtime_context().get_node_id()
        except Exception:  # noqa: BLE001
            outcome["node"] = socket.gethostname()
    return outcome


# ---------------------------------------------------------------------------------------------
# backends
# ---------------------------------------------------------------------------------------------
def _check_ray_address(address: str, threads: int):
    """Import ray and connect, or GridError in one line (nothing written yet)."""
    host = None
    if address != "local":
        m = re.fullmatch(r"(?:ray://)?\[?([A-Za-z0-9.:_-]+?)\]?:(\d{1,5})", address.strip())
        if not m or not 0 < int(m.group(2)) < 65536:
            raise GridError(f"--ray {address!r}: expected HOST:PORT of a running Ray cluster's head "
                            f"(ray start --head prints it) or 'local'")
        host, port = m.group(1), int(m.group(2))
    loopback = address == "local" or host in ("127.0.0.1", "localhost", "::1")
    if loopback:
        # a cluster on this machine's loopback: Ray would otherwise replace 127.0.0.1 by the host's
        # address (and, for 'local', listen on every interface)
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    try:
        import ray
    except ImportError:
        raise GridError("--ray needs the ray package: pip install 'analogff[ray]' (or pip install ray)") from None
    if loopback:  # ray may have been imported before the variable was set
        try:
            from ray._private import ray_constants

            ray_constants.ENABLE_RAY_CLUSTER = False
        except (ImportError, AttributeError):
            pass
    if host is not None:
        try:
            with socket.create_connection((host, port), timeout=5):
                pass
        except OSError as exc:
            raise GridError(f"--ray {address}: cannot reach a Ray cluster there ({exc.strerror or exc}); "
                            f"start one with 'ray start --head' or use --ray local") from None
    try:
        kw = dict(logging_level=logging.WARNING, log_to_driver=False)
        if address == "local":
            ray.init(include_dashboard=False, **kw)
        else:
            ray.init(address=address, **kw)
    except Exception as exc:  # noqa: BLE001: ray raises several kinds
        raise GridError(f"--ray {address}: could not connect: {str(exc).splitlines()[0]}") from None
    cpus = [n.get("Resources", {}).get("CPU", 0) for n in ray.nodes() if n.get("Alive")]
    if not cpus or threads > max(cpus):
        ray.shutdown()
        raise GridError(f"--threads-per-cell {threads}: no node of the Ray cluster at {address} has that many "
                        f"CPUs (largest: {max(cpus, default=0):g}); give at most that")
    log.info("Ray cluster %s: %d node(s), %g CPUs", address, len(cpus), sum(cpus))
    return ray


def _write_cell_files(d: Path, files: dict[str, str]) -> None:
    from .experiment import write_atomic

    for name in ("log.txt", "metrics.csv", "results.json"):  # results.json last: it marks the cell done
        if name in files:
            text = files[name]
            if name == "results.json":  # the worker wrote its temporary directory as out
                data = json.loads(text)
                data.setdefault("config", {})["out"] = str(d)
                text = json.dumps(data, indent=1)
            write_atomic(d / name, text)


def run_cells(cells: list[Cell], out: Path, jobs: int, threads: int, ray_address: str | None = None,
              ray_module=None) -> dict[str, dict[str, Any]]:
    """Run the cells that are not done; name -> outcome (status done/skipped/failed, error, wall_s)."""
    from .experiment import write_atomic

    outcomes: dict[str, dict[str, Any]] = {}
    pending: list[Cell] = []
    for cell in cells:
        if cell_state(cell, out) == "done":
            outcomes[cell.name] = {"status": "skipped", "error": None, "wall_s": 0.0}
            log.info("[skip] %s: finished before", cell.name)
        else:
            pending.append(cell)
    for cell in pending:  # marks a cell as started with its config (resume checks it)
        write_atomic(out / cell.name / "cell.json", json.dumps({"axes": cell.axes, "config": cell.config}, indent=1))
    total, t0 = len(pending), time.perf_counter()

    def done(cell: Cell, outcome: dict[str, Any]) -> None:
        outcomes[cell.name] = outcome
        n = sum(1 for c in pending if c.name in outcomes)
        extra = f": {outcome['error']}" if outcome["status"] == "failed" else ""
        log.info("[%d/%d] %s %s in %.0f s%s (sweep %.0f s)", n, total, cell.name, outcome["status"],
                 outcome["wall_s"], extra, time.perf_counter() - t0)

    if not pending:
        return outcomes
    if ray_module is not None:
        ray = ray_module
        task = ray.remote(num_cpus=threads, max_retries=0)(_ray_cell)
        refs = {task.remote(c.config, threads): c for c in pending}
        waiting = list(refs)
        while waiting:
            ready, waiting = ray.wait(waiting, num_returns=1)
            cell = refs[ready[0]]
            try:
                outcome = ray.get(ready[0])
                _write_cell_files(out / cell.name, outcome.pop("files", {}))
            except Exception as exc:  # noqa: BLE001: a worker died
                from .cli import one_line

                outcome = {"status": "failed", "error": one_line(f"{type(exc).__name__}: {exc}")[:500], "wall_s": 0.0}
            done(cell, outcome)
    elif jobs <= 1:
        _init_worker(threads)
        for cell in pending:
            done(cell, run_cell(cell.config, threads))
    else:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor, as_completed

        with ProcessPoolExecutor(max_workers=min(jobs, len(pending)), mp_context=mp.get_context("spawn"),
                                 initializer=_init_worker, initargs=(threads,)) as pool:
            futures = {pool.submit(run_cell, c.config, threads): c for c in pending}
            for fut in as_completed(futures):
                try:
                    outcome = fut.result()
                except Exception as exc:  # noqa: BLE001: the worker process died
                    from .cli import one_line

                    outcome = {"status": "failed", "error": one_line(f"worker died: {type(exc).__name__}: {exc}")[:500],
                               "wall_s": 0.0}
                done(futures[fut], outcome)
    return outcomes


# ---------------------------------------------------------------------------------------------
# summary
# ---------------------------------------------------------------------------------------------
def summary_rows(cells: list[Cell], outcomes: dict[str, dict[str, Any]], out: Path) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for cell in cells:
        oc = outcomes.get(cell.name, {"status": "not run", "error": None, "wall_s": None})
        head = {"cell": cell.name, **{k: _csv_value(v) for k, v in cell.axes.items()}, "status": oc["status"],
                "error": oc.get("error") or "", **({"node": oc["node"]} if oc.get("node") else {})}
        res_path = out / cell.name / "results.json"
        if oc["status"] in ("done", "skipped") and res_path.is_file():
            res = json.loads(res_path.read_text())
            dev = res.get("device_profile", {})
            for name, m in res.get("methods", {}).items():
                rows.append({**head, "device": dev.get("name"), "adc_bits": dev.get("adc_bits"), "method": name,
                             "test_accuracy": m.get("test_accuracy"),
                             "test_accuracy_goodness": m.get("test_accuracy_goodness"),
                             "test_accuracy_softmax": m.get("test_accuracy_softmax"),
                             "train_energy_per_sample_J": m.get("train_energy_per_sample_J"),
                             "inference_energy_per_sample_J": m.get("inference_energy_per_sample_J"),
                             "update_pulses": (m.get("counters") or {}).get("update_pulses"),
                             "wall_time_s": m.get("wall_time_s")})
        else:
            rows.append({**head, "device": None, "adc_bits": None, "method": None})
    return rows


def _csv_value(v: Any) -> Any:
    if isinstance(v, (list, tuple)):
        return " ".join(map(str, v))
    return Path(v).stem if isinstance(v, str) and v.endswith(".toml") else v


# ---------------------------------------------------------------------------------------------
# command line
# ---------------------------------------------------------------------------------------------
def add_parser(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    from .cli import add_config_flags

    p.epilog = ("Every flag of analogff run sets the base of all cells; --grid/--grid-file axes vary on top. "
                "Finished cells are skipped, so rerunning the same command resumes the sweep.")
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.description = __doc__
    s = p.add_argument_group("sweep")
    s.add_argument("--grid", nargs="+", default=[], metavar="KEY=V1,V2",
                   help="sweep axes: an option key and its values (JSON list for list values: "
                        "hidden=[[500,500],[1000]]); keys as in analogff run without the dashes "
                        "(device, seed, ff_lr_analog, analog_update, adc_bits, dataset, ff.loss, ...)")
    s.add_argument("--grid-file", metavar="FILE", help="TOML/JSON file {KEY: [values], base: {KEY: value}}")
    s.add_argument("--jobs", type=_positive_int, default=1, metavar="N",
                   help="parallel worker processes on this machine (default 1)")
    s.add_argument("--threads-per-cell", type=_positive_int, default=None, metavar="N",
                   help="torch threads (Ray: CPUs) per cell (default: --threads if given, else cores // jobs "
                        "and at least 1; on Ray 1)")
    s.add_argument("--ray", metavar="ADDRESS", help="run the cells on the Ray cluster at HOST:PORT, or 'local'")
    s.add_argument("--print-grid", action="store_true",
                   help="list the cells (name and axis values) and exit; nothing is written")
    add_config_flags(p)
    return p


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return v


def cmd_sweep(args: argparse.Namespace) -> int:
    from .cli import UsageError, collect_values
    from .experiment import _csv_text, write_atomic
    from .options import OptionError
    from .recipes import RecipeError

    try:
        base = collect_values(args)
        grid = parse_grid(args.grid)
        if args.grid_file:
            file_grid, file_base = load_grid_file(args.grid_file)
            twice = set(file_grid) & set(grid)
            if twice:
                raise GridError(f"sweep axis {sorted(twice)[0]!r} in both --grid and --grid-file")
            grid = {**file_grid, **grid}
            base = {**file_base, **base}
        if not grid:
            raise GridError("no sweep axes: give --grid KEY=V1,V2 ... or --grid-file FILE")
        out = Path(base.pop("out", None) or "runs/sweep")
        for key in grid:
            base.pop(key, None)
        cells = make_cells(base, grid, out)
        if args.print_grid:
            for c in cells:
                print(f"{c.name}\t{json.dumps(c.axes)}")
            return 0
        for c in cells:
            cell_state(c, out)  # another config in a cell's directory: error before anything runs
        jobs = args.jobs
        threads = (args.threads_per_cell or base.get("threads")
                   or (1 if args.ray else max(1, (os.cpu_count() or 1) // jobs)))
        ray = _check_ray_address(args.ray, threads) if args.ray else None
    except (GridError, OptionError, RecipeError) as exc:
        raise UsageError(str(exc)) from None

    write_atomic(out / "grid.json", json.dumps({"grid": grid, "base": base, "cells": [c.name for c in cells]},
                                               indent=1, default=str))
    where = f"Ray cluster {args.ray}" if ray else f"{jobs} process{'es' if jobs > 1 else ''}"
    log.info("sweep: %d cells (%s) on %s, %d thread%s per cell -> %s", len(cells), " x ".join(
        f"{k} {len(v)}" for k, v in grid.items()), where, threads, "s" if threads > 1 else "", out)
    t0 = time.perf_counter()
    try:
        outcomes = run_cells(cells, out, jobs, threads, args.ray, ray)
    finally:
        if ray is not None:
            ray.shutdown()
    wall = time.perf_counter() - t0
    rows = summary_rows(cells, outcomes, out)
    write_atomic(out / "summary.csv", _csv_text(rows))
    from .report import markdown_report

    finished = [out / c.name for c in cells if outcomes.get(c.name, {}).get("status") in ("done", "skipped")]
    failed = [(c.name, outcomes[c.name]["error"]) for c in cells if outcomes.get(c.name, {}).get("status") == "failed"]
    text = markdown_report(finished, title=f"Sweep {out}", failed=failed) if finished or failed else ""
    write_atomic(out / "report.md", text)
    counts = {s: sum(1 for o in outcomes.values() if o["status"] == s) for s in ("done", "skipped", "failed")}
    log.info("sweep finished in %.0f s: %d done, %d skipped, %d failed; wrote %s/summary.csv and %s/report.md",
             wall, counts["done"], counts["skipped"], counts["failed"], out, out)
    return 1 if counts["failed"] else 0


__all__ = ["parse_grid", "load_grid_file", "make_cells", "run_cells", "run_cell", "cmd_sweep", "GridError", "Cell"]
